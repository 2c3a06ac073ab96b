// What the kernel-lane guest (test/kernel-lane/guest.sh) hands to the guest tests: the mtty
// mdev UUIDs it created and a directory for figures the lane reports. Outside the guest
// there are no mtty devices, so every guest test FAILS (never skips) with the command to
// run instead.
import fs from 'node:fs';
import path from 'node:path';

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
