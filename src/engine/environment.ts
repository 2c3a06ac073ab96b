// The I/O environment a process gets (`migbridge env`): which backend the io engine chose
// (io_uring, or the worker-pool fallback) and why, its buffer pool, and the kernel facts
// that decide it.
import { readFileSync } from 'node:fs';
import { release } from 'node:os';
import { defaultEngine, type IoEngineInfo } from '../native/index.js';

export interface IoEnvironment extends IoEngineInfo {
  /** MIGBRIDGE_IO when set (forces a backend), else null. */
  forced: string | null;
  /** uname release. */
  kernel: string;
  /** kernel.io_uring_disabled (0, 1 or 2); null on kernels before 6.6, which have no such sysctl. */
  ioUringDisabledSysctl: number | null;
  node: string;
}

function ioUringDisabled(): number | null {
  try {
    return Number(readFileSync('/proc/sys/kernel/io_uring_disabled', 'utf8').trim());
  } catch {
    return null;
  }
}

/** Sets up the default io engine (as a save or restore would), reports it, and shuts it down. */
export async function ioEnvironment(): Promise<IoEnvironment> {
  const engine = defaultEngine();
  const info = engine.info();
  await engine.shutdown();
  return { ...info, forced: process.env.MIGBRIDGE_IO || null, kernel: release(), ioUringDisabledSysctl: ioUringDisabled(), node: process.version };
}
