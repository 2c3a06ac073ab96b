// What the kernel-lane guest (test/kernel-lane/guest.sh) hands to the guest tests: the mtty
// mdev UUIDs it created and a directory for figures the lane reports. Outside the guest
// there are no mtty devices, so every guest test FAILS (never skips) with the command to
// run instead.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';

export interface LaneEnv {
  /** UUIDs of the mtty-1 instances (one UART port, 60-byte stream). */
  readonly mtty1: readonly string[];
  /** UUIDs of the mtty-2 instances (two UART ports, 96-byte stream). */
  readonly mtty2: readonly string[];
}

export const RUN_LANE = 'npm run test:kernel   (bash test/kernel-lane/run.sh: boots a guest kernel with mtty)';

function uuids(name: string): string[] {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: guest.sh exports it; run the lane with: ${RUN_LANE}`);
  return v.split(',');
}

/** The lane's devices; throws (failing the test) when not inside the lane's guest. */
export function laneEnv(): LaneEnv {
  if (process.env.MIGBRIDGE_KERNEL_LANE !== '1') {
    throw new Error(`MIGBRIDGE_KERNEL_LANE is not set: this test needs the kernel lane's guest. Run: ${RUN_LANE}`);
  }
  return { mtty1: uuids('MIGBRIDGE_MTTY1_UUIDS'), mtty2: uuids('MIGBRIDGE_MTTY2_UUIDS') };
}

/**
 * Records a figure (e.g. transition cost) for run.sh to print in the lane summary.
 * Also returned so the test can t.log it.
 */
export function reportFigure(name: string, text: string): string {
  const dir = process.env.MIGBRIDGE_LANE_OUT;
  if (dir) fs.writeFileSync(path.join(dir, 'figures', `${name}.txt`), text.endsWith('\n') ? text : `${text}\n`);
  return text;
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  /** Wall time of the call. */
  ms: number;
}

const execFileAsync = promisify(execFile);

/** Runs the project's CLI (bin/migbridge.js) to completion; a non-zero exit is a result, not an error. */
export async function migbridge(...args: string[]): Promise<CliResult> {
  const t0 = performance.now();
  try {
    const r = await execFileAsync(process.execPath, [path.resolve('bin/migbridge.js'), ...args], { timeout: 60_000, maxBuffer: 16 << 20 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr, ms: performance.now() - t0 };
  } catch (e) {
    const x = e as { code?: number | string; stdout?: string; stderr?: string };
    if (typeof x.code !== 'number') throw e;
    return { code: x.code, stdout: x.stdout ?? '', stderr: x.stderr ?? '', ms: performance.now() - t0 };
  }
}
