// The fuzz targets, run in-process: the CLI commands inspect, rewrite, extract and reframe
// (their own run(), so the code path is the CLI's), and restore through the library onto
// simulated devices. Each returns the outcome, or a finding when the outcome breaks the
// contract: an error that is not a typed MigbridgeError with a code, a rewrite whose output
// differs from its input, a restored device that is not verified, a device not RUNNING
// after a failed restore.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MigbridgeError } from '../../src/errors.js';
import type { Command, CommandIO } from '../../src/cli/command.js';
import { extractCommand } from '../../src/cli/commands/extract.js';
import { inspectCommand } from '../../src/cli/commands/inspect.js';
import { reframeCommand } from '../../src/cli/commands/reframe.js';
import { rewriteCommand } from '../../src/cli/commands/rewrite.js';
import { restore, type RestoreReport } from '../../src/engine/restore.js';
import { openEvents } from '../../src/engine/source.js';
import { MigState } from '../../src/fsm/index.js';
import { createSimDevice, type SimDevice } from '../../src/vfio/sim/index.js';

export const TARGETS = ['inspect', 'rewrite', 'extract', 'reframe', 'restore'] as const;
export type TargetName = (typeof TARGETS)[number];

/** One input: the main stream file, the multifd channel captures beside it, and the devices a restore needs. */
export interface FuzzInput {
  readonly file: string;
  readonly channels: readonly string[];
  /** idstr and sim state size of every destination device. */
  readonly devices: readonly { readonly idstr: string; readonly size: number }[];
  /** extract writes RAM block images too (--ram): the slow part of extract, so not every time. */
  readonly extractRam?: boolean;
  /** inspect decodes every vmstate field too (--dump state, driven by the vmdesc). */
  readonly dumpState?: boolean;
}

export interface Outcome {
  readonly target: TargetName;
  /** 'ok', or the typed error's code. */
  readonly result: string;
  /** Set when the contract was broken: what happened. */
  readonly finding?: string;
}

/** Milliseconds one target may take on one input. */
export const TARGET_TIME_LIMIT_MS = 20_000;

const silentIO: CommandIO = { output: 'json', isTTY: false, stdout: () => {}, stderr: () => {}, result: () => {} };

/** The programming errors a bug throws (a SyntaxError from JSON.parse is input, not a bug). */
const BUG_ERRORS = [TypeError, RangeError, ReferenceError];

function describe(kind: string, err: Error | undefined, e: unknown): string {
  return `${kind} ${err?.name ?? typeof e}: ${err?.message ?? String(e)}${err?.stack ? `\n${err.stack.split('\n').slice(1, 6).join('\n')}` : ''}`;
}

/**
 * A thrown value the contract accepts: typed, with a code, and not a bug in disguise (the
 * decoder reports an exception of its own code as ESTREAM_FORMAT "decoder failure" with the
 * exception as cause). Else what is wrong with it.
 */
export function untyped(e: unknown): string | undefined {
  if (!(e instanceof MigbridgeError && typeof e.code === 'string' && e.code.length > 0)) return describe('untyped', e as Error | undefined, e);
  for (let c: unknown = e.cause, depth = 0; c !== undefined && depth < 8; c = (c as Error).cause, depth++) {
    if (BUG_ERRORS.some((k) => c instanceof k)) return describe(`${e.code} "${e.message}" caused by`, c as Error, c);
  }
  return undefined;
}

async function runCommand(cmd: Command, positionals: string[], values: Record<string, string | string[]> = {}): Promise<void> {
  const code = await cmd.run({ positionals, values }, silentIO);
  if (code !== 0) throw new Error(`${cmd.name.join(' ')} returned ${code} without throwing`);
}

/** Destination simulators, kept per device list and reused (each restore must leave them RUNNING). */
export class SimPool {
  readonly #pools = new Map<string, SimDevice[]>();
  #seed = 1;
  get(devices: FuzzInput['devices']): SimDevice[] {
    const key = devices.map((d) => d.size).join(',');
    let pool = this.#pools.get(key);
    if (!pool) {
      pool = devices.map((d) => createSimDevice(`sim:size=${d.size},seed=${this.#seed++}`));
      this.#pools.set(key, pool);
    }
    return pool;
  }
  async close(): Promise<void> {
    for (const pool of this.#pools.values()) await Promise.all(pool.map((d) => d.close()));
    this.#pools.clear();
  }
}

async function restoreTarget(input: FuzzInput, sims: SimPool): Promise<string | undefined> {
  const devices = sims.get(input.devices);
  let failure: unknown;
  let report: RestoreReport | undefined;
  try {
    const events = await openEvents({ file: input.file, multifd: input.channels });
    report = await restore({ events, devices, idstrs: input.devices.map((d) => d.idstr) });
  } catch (e) {
    failure = e;
  }
  // Whatever happened, every destination must be RUNNING again (restored, or reset).
  const states = await Promise.all(devices.map(async (d) => [d.id, await d.state()] as const));
  const stuck = states.filter(([, s]) => s !== MigState.RUNNING);
  if (stuck.length) return `device(s) left ${stuck.map(([id, s]) => `${id} in ${MigState[s]}`).join(', ')} after ${failure ? 'a failed' : 'a'} restore`;
  if (failure !== undefined) throw failure;
  if (report?.ok) {
    for (const [i, d] of devices.entries()) {
      const r = d.resumeResult;
      // A restore that says ok gave each device a state it verified, and the device took
      // exactly the bytes the restore counted: none past the stream's declared sizes.
      const wrote = report.devices[i]!.bytes;
      if (!r?.verified || r.bytes !== wrote) return `restore said ok but ${d.id} took ${r?.bytes} bytes of the ${wrote} written, verified=${r?.verified}`;
    }
  }
  return undefined;
}

async function runTargetUnbounded(target: TargetName, input: FuzzInput, scratch: string, sims: SimPool): Promise<string | undefined> {
  const channels: Record<string, string[]> = input.channels.length ? { multifd: [...input.channels] } : {};
  switch (target) {
    case 'inspect':
      await runCommand(inspectCommand, [input.file], input.dumpState ? { dump: 'state' } : {});
      return undefined;
    case 'rewrite': {
      const out = join(scratch, 'rewrite.mig');
      await runCommand(rewriteCommand, [input.file, out]);
      // Byte-identical for every stream it accepts: a difference is a decode/encode mismatch.
      const [a, b] = await Promise.all([readFile(input.file), readFile(out)]);
      return a.equals(b) ? undefined : `rewrite accepted the input but wrote ${b.length} different bytes (input ${a.length})`;
    }
    case 'extract':
      await runCommand(extractCommand, [input.file], { ...(input.extractRam ? { ram: join(scratch, 'ram') } : {}), out: join(scratch, 'out') });
      return undefined;
    case 'reframe':
      await runCommand(reframeCommand, [input.file, join(scratch, 'reframed.mig')], channels);
      return undefined;
    case 'restore':
      return restoreTarget(input, sims);
  }
}

/** Runs one target on one input within TARGET_TIME_LIMIT_MS and judges the outcome. */
export async function runTarget(target: TargetName, input: FuzzInput, sims: SimPool): Promise<Outcome> {
  const scratch = await mkdtemp(join(tmpdir(), 'migbridge-fuzz-'));
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError()), TARGET_TIME_LIMIT_MS);
  });
  try {
    const finding = await Promise.race([runTargetUnbounded(target, input, scratch, sims), timeout]);
    return finding ? { target, result: 'ok', finding } : { target, result: 'ok' };
  } catch (e) {
    if (e instanceof TimeoutError) return { target, result: 'timeout', finding: `no answer within ${TARGET_TIME_LIMIT_MS} ms` };
    const bad = untyped(e);
    return bad ? { target, result: 'untyped', finding: bad } : { target, result: (e as MigbridgeError).code };
  } finally {
    clearTimeout(timer);
    await rm(scratch, { recursive: true, force: true });
  }
}

class TimeoutError extends Error {}
