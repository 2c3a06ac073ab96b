// What the simulator's save and resume sessions share: the device's content they read or
// replace, the control words shared with the worker, the pipe a session's data_fd is one
// end of, and the failure of an arc (a SET step) with the errno the device returns.
import { closeSync, pipe } from '../../native/index.js';
import type { DataFd } from '../device.js';
import { Errno } from '../uapi.js';
import { CTRL_BYTES, CTRL_BYTES_OFFSET, CTRL_SIGNAL } from './protocol.js';

/** Pipe capacity of a session's data_fd. */
export const PIPE_SIZE = 1 << 20;

/** The device's state: what a save reads and a resume replaces. */
export interface SimContent {
  seed: bigint;
  readonly size: number;
  /** Generation of each block (bumped when the running device dirties it). */
  readonly gens: Uint32Array;
  readonly regs: Uint8Array;
}

/** An arc that fails: the SET returns `errno`; `toError` puts the device in ERROR. */
export class ArcFailure extends Error {
  constructor(
    readonly errno: number,
    message: string,
    readonly toError = false,
  ) {
    super(message);
  }
}

/** The control words of one session, shared with the worker. */
export interface SessionCtl {
  readonly id: number;
  readonly sab: SharedArrayBuffer;
  readonly ctrl: Int32Array;
  readonly counter: BigInt64Array;
}

export function newCtl(id: number): SessionCtl {
  const sab = new SharedArrayBuffer(CTRL_BYTES);
  return { id, sab, ctrl: new Int32Array(sab, 0, 4), counter: new BigInt64Array(sab, CTRL_BYTES_OFFSET, 1) };
}

/** Bumps control word `index` and wakes the worker; returns the new value. */
export function signal(c: SessionCtl, index: number): number {
  const v = Atomics.add(c.ctrl, index, 1) + 1;
  Atomics.add(c.ctrl, CTRL_SIGNAL, 1);
  Atomics.notify(c.ctrl, CTRL_SIGNAL);
  return v;
}

export const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function newPipe(): [number, number] {
  try {
    return pipe();
  } catch (e) {
    throw new ArcFailure(setupErrno(e), `cannot create the data pipe: ${(e as Error).message}`);
  }
}

/** A data_fd that cannot be created for want of fds fails with EMFILE, as the kernel's SET does (get_unused_fd_flags); anything else EIO. */
export function setupErrno(e: unknown): number {
  return (e as NodeJS.ErrnoException).code === 'EMFILE' ? Errno.EMFILE : Errno.EIO;
}

export class SimDataFd implements DataFd {
  #closed = false;
  constructor(
    readonly fd: number,
    readonly direction: 'save' | 'resume',
    readonly device: string,
    private readonly verify: () => Promise<void>,
  ) {}
  get closed(): boolean {
    return this.#closed;
  }
  verifyEnd(): Promise<void> {
    return this.verify();
  }
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    closeSync(this.fd);
  }
}
