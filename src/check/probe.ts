// One device under check: every operation the groups issue, returning what happened
// (bytes, errno, state read back) instead of throwing, and tracking each data_fd it
// opened so a group (or an interrupted run) can close them all.
import { Errno } from '../errno.js';
import { errnoName, MigbridgeError } from '../errors.js';
import { MigState, stateName } from '../fsm/index.js';
import type { IoEngine } from '../native/index.js';
import { type DataFd, type MigrationDevice, VfioDeviceError } from '../vfio/device.js';

/** The errno a probe reports for a device that did not answer in time. */
export const ETIMEDOUT = Errno.ETIMEDOUT;

/** A read or write: bytes moved, or the errno it failed with (ETIMEDOUT: the device did not answer within the bound). */
export type IoOutcome = { n: number; data: Buffer } | { errno: number };

/** A SET MIG_DEVICE_STATE: the data_fd it returned, or its errno; and the state read back. */
export type SetOutcome = { ok: true; fd: DataFd | null; state: MigState | 'unreadable'; us: number } | { ok: false; errno: number; state: MigState | 'unreadable' };

/** A STOP_COPY stream read until read() returned 0, or where it failed. */
export type StreamOutcome = { ok: true; data: Buffer; reads: number; us: number } | { ok: false; step: string; errno?: number; bytes: number; reason: string };

export function outcomeText(o: IoOutcome): string {
  return 'errno' in o ? (o.errno === ETIMEDOUT ? 'no answer (timed out)' : `${errnoName(o.errno)} (errno ${o.errno})`) : `${o.n} bytes`;
}

export function setText(o: SetOutcome): string {
  const st = o.state === 'unreadable' ? 'state unreadable' : `state ${stateName(o.state)}`;
  return o.ok ? `ok${o.fd ? ', data_fd returned' : ', no data_fd'}, ${st}` : `${errnoName(o.errno)} (errno ${o.errno}), ${st}`;
}

export class Probe {
  readonly #fds: DataFd[] = [];

  constructor(
    public dev: MigrationDevice,
    readonly spec: string,
    readonly io: IoEngine,
    readonly timeoutMs: number,
    readonly maxStreamBytes: number,
  ) {}

  get id(): string {
    return this.dev.id;
  }

  async state(): Promise<MigState | 'unreadable'> {
    try {
      return await this.dev.state();
    } catch {
      return 'unreadable';
    }
  }

  async set(target: number): Promise<SetOutcome> {
    const t0 = process.hrtime.bigint();
    try {
      const fd = this.track(await this.dev.setState(target as MigState));
      const us = Number(process.hrtime.bigint() - t0) / 1000;
      return { ok: true, fd, state: await this.state(), us };
    } catch (e) {
      if (!(e instanceof VfioDeviceError)) throw e;
      return { ok: false, errno: e.errno ?? 0, state: e.state ?? (await this.state()) };
    }
  }

  /** Reset, then SET `target` from RUNNING. */
  async reach(target: MigState): Promise<SetOutcome> {
    await this.reset();
    return target === MigState.RUNNING ? { ok: true, fd: null, state: await this.state(), us: 0 } : this.set(target);
  }

  /** VFIO_DEVICE_RESET, closing every data_fd this probe handed out first. */
  async reset(): Promise<void> {
    await this.closeFds();
    await this.dev.reset();
  }

  /** Keeps `fd` to be closed by closeFds() (every data_fd a SET returned); returns it. */
  track(fd: DataFd | null): DataFd | null {
    if (fd) this.#fds.push(fd);
    return fd;
  }

  async closeFds(): Promise<void> {
    for (const fd of this.#fds.splice(0)) await fd.close().catch(() => undefined);
  }

  async read(fd: DataFd, length = 1 << 20): Promise<IoOutcome> {
    try {
      const b = await this.io.read(fd.fd, { length, timeoutMs: this.timeoutMs });
      const data = Buffer.from(b.data);
      b.release();
      return { n: data.length, data };
    } catch (e) {
      if (e instanceof MigbridgeError && e.errno !== undefined) return { errno: e.errno };
      throw e;
    }
  }

  async write(fd: DataFd, data: Buffer): Promise<IoOutcome> {
    try {
      const n = await this.io.write(fd.fd, data, { timeoutMs: this.timeoutMs });
      return { n, data };
    } catch (e) {
      if (e instanceof MigbridgeError && e.errno !== undefined) return { errno: e.errno };
      throw e;
    }
  }

  /** Reads until read() returns 0, then asks the device whether the stream was whole (verifyEnd). */
  async readToEnd(fd: DataFd, readLength = 1 << 20): Promise<StreamOutcome> {
    const parts: Buffer[] = [];
    let bytes = 0;
    let reads = 0;
    const t0 = process.hrtime.bigint();
    for (;;) {
      const r = await this.read(fd, readLength);
      reads++;
      if ('errno' in r) {
        return { ok: false, step: 'read', errno: r.errno, bytes, reason: `read() failed after ${bytes} bytes: ${outcomeText(r)}` };
      }
      if (r.n === 0) break;
      bytes += r.n;
      if (bytes > this.maxStreamBytes) return { ok: false, step: 'read', bytes, reason: `stream longer than ${this.maxStreamBytes} bytes (the check's buffer bound)` };
      parts.push(r.data);
    }
    const us = Number(process.hrtime.bigint() - t0) / 1000;
    try {
      await fd.verifyEnd();
    } catch (e) {
      const errno = e instanceof MigbridgeError ? e.errno : undefined;
      return { ok: false, step: 'end of stream', ...(errno !== undefined ? { errno } : {}), bytes, reason: `read() returned 0 after ${bytes} bytes but the device failed: ${(e as Error).message}` };
    }
    return { ok: true, data: Buffer.concat(parts), reads, us };
  }

  /** A complete STOP_COPY stream (reset before and after). */
  async capture(): Promise<StreamOutcome> {
    const s = await this.reach(MigState.STOP_COPY);
    if (!s.ok || !s.fd) {
      await this.reset();
      return { ok: false, step: 'SET STOP_COPY', ...(s.ok ? {} : { errno: s.errno }), bytes: 0, reason: `SET RUNNING -> STOP_COPY: ${setText(s)}` };
    }
    const out = await this.readToEnd(s.fd);
    await this.reset();
    return out;
  }
}
