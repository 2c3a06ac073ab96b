// Parallel multi-device restore: all devices enter RESUMING at once; every DATA_STATE
// chunk is written to its device's data_fd as soon as the stream delivers it, writes to
// different devices in flight together (bounded bytes in flight); then STOP and RUNNING,
// where the kernel validates each device's data on its exit from RESUMING.
import { MigbridgeError } from '../errors.js';
import { MigFlag, MigState } from '../fsm/index.js';
import { defaultEngine, type IoEngine } from '../native/index.js';
import { type ByteSource, type StreamEvent, StreamError, readStream } from '../qemu/index.js';
import { type DataFd, type MigrationDevice, VfioDeviceError, setStates } from '../vfio/device.js';
import { SectionMatcher } from './match.js';
import type { Progress, ProgressCounter } from './progress.js';
import { resetDevice } from './recover.js';

export interface RestoreOptions {
  /** Decoded stream events (e.g. readStreamFile(path)) or raw bytes to decode. */
  readonly events?: AsyncIterable<StreamEvent>;
  readonly source?: ByteSource;
  readonly devices: readonly MigrationDevice[];
  /** The idstr each device would save under (default `0000:00:<04+i>.0/vfio`), used to match sections. */
  readonly idstrs?: readonly string[];
  /** --map IDSTR=device index. */
  readonly map?: ReadonlyMap<string, number>;
  readonly io?: IoEngine;
  readonly progress?: Progress;
  /** Bytes written but not yet completed, over all devices (default 16 MiB: with the read-ahead of the stream, part of the 64 MiB memory budget). */
  readonly maxInFlight?: number;
}

export interface DeviceRestoreReport {
  readonly id: string;
  readonly idstr: string | null;
  readonly bytes: number;
  readonly chunks: number;
  readonly ok: boolean;
  readonly error?: Record<string, unknown>;
  /** What was done to a failed device (reset back to RUNNING). */
  readonly recovery?: string;
  /** Devices that check their own state on the exit from RESUMING (the simulator's digest) say whether it matched. */
  readonly verified?: boolean;
  /** What `verified` checked, in words (it proves the state arrived intact, not which source sent it). */
  readonly verifiedAgainst?: string;
  /** The state arrived intact but from another source than the device's spec names (sim seed=). */
  readonly sourceMismatch?: string;
  readonly seconds: number;
}

export interface RestoreReport {
  readonly devices: DeviceRestoreReport[];
  readonly totalBytes: number;
  readonly seconds: number;
  readonly ok: boolean;
}

/** Some devices failed to restore; `report` says which and what happened to each. */
export class RestoreFailedError extends MigbridgeError {
  constructor(
    message: string,
    readonly report: RestoreReport,
  ) {
    super('ERESTORE', message);
  }
}

interface Target {
  readonly dev: MigrationDevice;
  idstr: string | null;
  dataFd: DataFd | null;
  bytes: number;
  chunks: number;
  writes: Promise<void>;
  error: Error | undefined;
  recovery: string | undefined;
  started: bigint;
  finished: bigint;
  counter: ProgressCounter | undefined;
}

const now = () => process.hrtime.bigint();

export async function restore(opts: RestoreOptions): Promise<RestoreReport> {
  const io = opts.io ?? defaultEngine();
  const maxInFlight = opts.maxInFlight ?? 16 << 20;
  const t0 = now();
  if (opts.devices.length === 0) throw new MigbridgeError('EUSAGE', 'restore needs at least one device');
  const events = opts.events ?? (opts.source ? readStream(opts.source) : undefined);
  if (!events) throw new MigbridgeError('EUSAGE', 'restore needs a stream (events or source)');
  const targets: Target[] = opts.devices.map((dev) => ({
    dev,
    idstr: null,
    dataFd: null,
    bytes: 0,
    chunks: 0,
    writes: Promise.resolve(),
    error: undefined,
    recovery: undefined,
    started: t0,
    finished: t0,
    counter: opts.progress?.counter(dev.id),
  }));
  const matcher = new SectionMatcher(
    opts.devices.map((d, i) => ({ name: d.id, idstr: opts.idstrs?.[i] ?? null })),
    opts.map ?? new Map(),
  );

  const bySection = new Map<number, Target>();
  try {
    await loadSetup(targets);
    await loadState(targets, events, matcher, io, maxInFlight, bySection);
    matcher.finish();
  } catch (e) {
    // The stream itself is bad (truncated, corrupt, unmatched): no device may keep half a
    // state, so every one is reset (a SET out of RESUMING would load what it was given).
    await Promise.all(
      targets.map(async (t) => {
        await t.writes;
        await t.dataFd?.close();
        await resetDevice(t.dev);
      }),
    );
    throw nameDevices(e, targets, bySection);
  }
  await loadCleanupAndStart(targets);
  // A device whose write or validation failed is reset: a SET out of RESUMING could load
  // bytes it reported as bad (mtty keeps a header it rejected with EFAULT).
  for (const t of targets.filter((x) => x.error)) {
    const step = await resetDevice(t.dev);
    t.recovery = `${step.action}${step.ok ? '' : ` failed: ${step.error}`}`;
  }
  const report: RestoreReport = {
    devices: targets.map((t) => ({
      id: t.dev.id,
      idstr: t.idstr,
      bytes: t.bytes,
      chunks: t.chunks,
      ok: !t.error,
      ...(t.error ? { error: t.error instanceof MigbridgeError ? t.error.toJSON() : { message: t.error.message } } : {}),
      ...(t.recovery ? { recovery: t.recovery } : {}),
      ...selfCheck(t.dev),
      seconds: Number(t.finished - t.started) / 1e9,
    })),
    totalBytes: targets.reduce((s, t) => s + t.bytes, 0),
    seconds: Number(now() - t0) / 1e9,
    ok: targets.every((t) => !t.error),
  };
  opts.progress?.stop();
  if (!report.ok) {
    const failed = targets.filter((t) => t.error);
    throw new RestoreFailedError(
      `${failed.length} of ${targets.length} devices failed to restore: ${failed.map((t) => t.error!.message).join('; ')}`,
      report,
    );
  }
  return report;
}

/** A stream failure names the device whose section it hit (or every device), keeping offset and section. */
function nameDevices(e: unknown, targets: Target[], bySection: Map<number, Target>): unknown {
  if (!(e instanceof MigbridgeError) || e.device !== undefined) return e;
  const sectionId = (e as MigbridgeError & { sectionId?: number }).sectionId;
  const hit = sectionId !== undefined ? bySection.get(sectionId) : undefined;
  const names = hit ? hit.dev.id : targets.map((t) => t.dev.id).join(', ');
  return new MigbridgeError(e.code, `${e.message}; restoring device ${names}${hit ? ` from ${hit.idstr}` : ''}: every device was reset to RUNNING`, {
    ...(e.offset !== undefined ? { offset: e.offset } : {}),
    ...(e.section !== undefined ? { section: e.section } : hit?.idstr ? { section: hit.idstr } : {}),
    ...(e.errno !== undefined ? { errno: e.errno } : {}),
    device: names,
    cause: e,
  });
}

/** The simulator verifies a digest when it leaves RESUMING; kernel devices validate inside the SET itself. */
function selfCheck(dev: MigrationDevice): { verified?: boolean; verifiedAgainst?: string; sourceMismatch?: string } {
  const result = (dev as { resumeResult?: { verified: boolean; sourceSeed?: bigint; givenSeed?: bigint } }).resumeResult;
  if (!result) return {};
  if (!result.verified || result.sourceSeed === undefined) return { verified: result.verified };
  const hex = (n: bigint): string => `0x${n.toString(16)}`;
  return {
    verified: true,
    verifiedAgainst: `the state digest the stream carries, of a sim source with seed=${hex(result.sourceSeed)}`,
    ...(result.givenSeed !== undefined && result.givenSeed !== result.sourceSeed
      ? { sourceMismatch: `the stream holds the state of a seed=${hex(result.sourceSeed)} source, this device was given seed=${hex(result.givenSeed)}` }
      : {}),
  };
}

/** load_setup: every device to RESUMING in parallel (a new data_fd each). */
async function loadSetup(targets: Target[]): Promise<void> {
  const results = await setStates(
    targets.map((t) => t.dev),
    MigState.RESUMING,
  );
  results.forEach((r, i) => {
    const t = targets[i]!;
    if (r.ok) {
      t.dataFd = r.dataFd;
      if (!t.dataFd) t.error = new VfioDeviceError(t.dev.id, 'RESUMING', 9, { message: 'device entered RESUMING without a data_fd (was it already RESUMING?)' });
    } else t.error = r.error;
  });
  const failed = targets.find((t) => t.error);
  if (failed) throw failed.error;
  const t = now();
  for (const x of targets) x.started = t;
}

/** load_state: route each DATA_STATE chunk to its device's data_fd without waiting for other devices. */
async function loadState(
  targets: Target[],
  events: AsyncIterable<StreamEvent>,
  matcher: SectionMatcher,
  io: IoEngine,
  maxInFlight: number,
  bySection: Map<number, Target>,
): Promise<void> {
  let inFlight = 0;
  const waiters: (() => void)[] = [];
  let fullOpen = false;
  for await (const ev of events) {
    // A VFIO FULL section that is only END_OF_STATE (or CONFIG_LOAD_READY) is QEMU 10's
    // multifd dummy: the device's stop-copy data went over multifd channels, not in here.
    const fullDummy = fullOpen && ev.type === 'vfio-marker' && (ev.marker === 'END_OF_STATE' || ev.marker === 'DEV_CONFIG_LOAD_READY');
    fullOpen = ev.type === 'section' && ev.kind === 'FULL' && ev.section.handler === 'vfio';
    if (fullDummy) {
      throw new StreamError('ESTREAM_UNSUPPORTED', `the state of ${ev.section.idstr} went over multifd channels, not in this stream: give the channel captures (restore -i FILE --multifd CH..., found by default as FILE.multifd-N)`, { offset: ev.offset, sectionId: ev.section.sectionId, idstr: ev.section.idstr, found: ev.marker });
    }
    if (ev.type === 'section' && ev.section.handler === 'vfio' && !bySection.has(ev.section.sectionId)) {
      const index = matcher.assign(ev.section.idstr);
      const t = targets[index]!;
      t.idstr = ev.section.idstr;
      bySection.set(ev.section.sectionId, t);
      continue;
    }
    if (ev.type !== 'vfio-data-chunk') continue;
    const t = bySection.get(ev.section.sectionId);
    if (!t || t.error || ev.data.length === 0) continue;
    const data = ev.data;
    while (inFlight >= maxInFlight) await new Promise<void>((r) => waiters.push(r));
    inFlight += data.length;
    t.chunks++;
    t.writes = t.writes.then(async () => {
      try {
        if (!t.error) {
          await io.write(t.dataFd!.fd, data);
          t.bytes += data.length;
          if (t.counter) t.counter.bytes += data.length;
        }
      } catch (e) {
        // Any write error is fatal for that device (mtty returns EFAULT on a bad header yet keeps the bytes).
        t.error =
          e instanceof MigbridgeError
            ? new VfioDeviceError(t.dev.id, 'write resume data', e.errno ?? 5, { message: `after ${t.bytes} bytes of ${t.idstr}`, cause: e })
            : (e as Error);
      } finally {
        inFlight -= data.length;
        waiters.shift()?.();
      }
    });
  }
  await Promise.all(targets.map((t) => t.writes));
}

/**
 * load_cleanup + VM start: close the resume fds (QEMU does so while still RESUMING), then
 * RUNNING_P2P (when every device has P2P) and RUNNING; the exit from RESUMING is where the
 * device validates what it was given.
 */
async function loadCleanupAndStart(targets: Target[]): Promise<void> {
  await Promise.all(targets.map((t) => t.dataFd?.close()));
  const live = targets.filter((t) => !t.error);
  if (live.length === 0) return;
  const flags = await Promise.all(live.map((t) => t.dev.migrationFlags().catch(() => 0)));
  const steps = flags.every((f) => f & MigFlag.P2P) ? [MigState.RUNNING_P2P, MigState.RUNNING] : [MigState.RUNNING];
  let current = live;
  for (const step of steps) {
    const results = await setStates(
      current.map((t) => t.dev),
      step,
    );
    results.forEach((r, i) => {
      if (!r.ok) current[i]!.error = r.error;
    });
    current = current.filter((t) => !t.error);
  }
  const t = now();
  for (const x of targets) x.finished = t;
}
