// IoEngine: the TypeScript half of the native I/O core. The addon only prepares
// and submits single operations and reports (id, result) pairs; everything
// with a rule lives here: short writes resubmitted, EAGAIN -> poll -> retry,
// timeouts across retries, cancellation, the fixed buffer pool and its cap.
import { Errno } from '../errno.js';
import { MigbridgeError, SysError } from '../errors.js';
import { addon, type RawEngine, type RawStats } from './addon.js';

export type IoBackendKind = 'io_uring' | 'threadpool';

export interface IoEngineInfo {
  io: IoBackendKind;
  /** Why this backend: setup result, errno of a failed io_uring_setup, or forced. */
  reason: string;
  bufferCount: number;
  bufferSize: number;
  ringEntries?: number;
  /** io_uring only: the pool is registered as fixed buffers (READ_FIXED). */
  fixedBuffers?: boolean;
}

/** A Buffer arg is in/out: the kernel may write results into it. */
export interface IoctlRequest {
  fd: number;
  request: number;
  arg: Buffer | number | null;
}

/** errno is 0 on success; ret is -1 on failure. */
export interface IoctlResult {
  ret: number;
  errno: number;
}

/** `data` views the bytes read in a pool buffer (length 0 = EOF); release() returns it to the pool. */
export interface PooledBuffer {
  readonly data: Buffer;
  release(): void;
}

export interface IoOptions {
  /** File offset; omitted = the fd's current position (streams). */
  offset?: number;
  /** Whole-operation deadline (across EAGAIN waits and short-write resubmissions). */
  timeoutMs?: number;
}

export interface IoEngineOptions {
  /** Submission queue entries (default 256). */
  entries?: number;
  /** Fixed buffers in the read pool (default 32): the hard cap on read memory. */
  bufferCount?: number;
  /** Bytes per pool buffer (default 1 MiB, QEMU's data_fd read size). */
  bufferSize?: number;
  force?: IoBackendKind;
  /** Ops in flight at once (default 1024); more wait in a queue. */
  maxOps?: number;
  /** Fallback backend I/O threads (default 4). */
  ioWorkers?: number;
  /** ioctl threads, started on demand (default 8). */
  ioctlWorkers?: number;
}

export type IoStats = RawStats;

const { EIO, EAGAIN, ENOENT, ETIME, ETIMEDOUT, ECANCELED } = Errno;
export const POLLIN = 0x001;
export const POLLOUT = 0x004;

const DEFAULTS = { entries: 256, bufferCount: 32, bufferSize: 1 << 20, maxOps: 1024, ioWorkers: 4, ioctlWorkers: 8 };

interface OpRecord {
  fd: number;
  timed: boolean;
  userCancelled: boolean;
  keep: unknown; // buffers the kernel/worker still references
  resolve(res: number): void;
}

interface Waiter {
  fd: number;
  resolve(v: number): void;
  reject(e: Error): void;
}

class Pooled implements PooledBuffer {
  #engine: IoEngine | undefined;
  constructor(
    engine: IoEngine,
    readonly index: number,
    readonly data: Buffer,
  ) {
    this.#engine = engine;
  }
  release(): void {
    const e = this.#engine;
    this.#engine = undefined; // second release is a no-op
    e?.releaseBuffer(this.index);
  }
}

export class IoEngine {
  readonly #native: RawEngine;
  readonly #info: IoEngineInfo;
  readonly #pool: Buffer;
  readonly #bufferSize: number;
  readonly #completions: Int32Array;
  readonly #ops: (OpRecord | undefined)[];
  readonly #freeIds: number[];
  readonly #freeBuffers: number[];
  /** Holders of each pool buffer (the read that filled it, then every retain()); free at 0. */
  readonly #bufferRefs: Uint32Array;
  #idWaiters: Waiter[] = [];
  #bufferWaiters: Waiter[] = [];
  #cancelEpoch = new Map<number, number>();
  #pending = 0;
  #idleWaiters: (() => void)[] = [];
  #flushScheduled = false;
  #callerBytes = 0;
  #closed = false;
  #shutdown: Promise<void> | undefined;

  private constructor(opts: IoEngineOptions) {
    const o = { ...DEFAULTS, ...opts };
    for (const k of ['entries', 'bufferCount', 'bufferSize', 'maxOps', 'ioWorkers', 'ioctlWorkers'] as const) {
      if (!Number.isInteger(o[k]) || o[k] < 1) throw new MigbridgeError('EINVAL', `IoEngine option ${k} must be a positive integer, got ${o[k]}`);
    }
    this.#bufferSize = o.bufferSize;
    this.#pool = Buffer.allocUnsafeSlow(o.bufferCount * o.bufferSize);
    this.#completions = new Int32Array(2 * 4096);
    this.#ops = new Array<OpRecord | undefined>(o.maxOps).fill(undefined);
    this.#freeIds = Array.from({ length: o.maxOps }, (_, i) => o.maxOps - 1 - i);
    this.#freeBuffers = Array.from({ length: o.bufferCount }, (_, i) => o.bufferCount - 1 - i);
    this.#bufferRefs = new Uint32Array(o.bufferCount);
    const Native = addon().Engine;
    this.#native = new Native(
      { entries: o.entries, maxOps: o.maxOps, forceThreadpool: o.force === 'threadpool', ioWorkers: o.ioWorkers, ioctlWorkers: o.ioctlWorkers },
      this.#pool,
      o.bufferCount,
      o.bufferSize,
      this.#completions,
      (n) => this.#onComplete(n),
    );
    const raw = this.#native.info();
    if (o.force === 'io_uring' && raw.io !== 'io_uring') {
      this.#native.destroy();
      throw new MigbridgeError('ENOIOURING', `io_uring was required but is unavailable: ${raw.reason}`);
    }
    this.#info = { io: raw.io, reason: raw.reason, bufferCount: o.bufferCount, bufferSize: o.bufferSize };
    pools.set(this.#pool.buffer, this);
    if (raw.io === 'io_uring') {
      this.#info.ringEntries = raw.ringEntries;
      this.#info.fixedBuffers = raw.fixedBuffers;
    }
  }

  /** Sets up io_uring, or the worker-pool fallback when that fails (or when forced). */
  static open(opts: IoEngineOptions = {}): IoEngine {
    return new IoEngine(opts);
  }

  info(): IoEngineInfo {
    return { ...this.#info };
  }

  /** Counters of the completion path: io_uring_enter calls, SQEs, eventfd wakeups, completions, largest batch. */
  stats(): IoStats {
    return this.#native.stats();
  }

  /** Pool bytes checked out (in-flight reads and unreleased PooledBuffers) plus caller bytes in pending ops. */
  inFlightBytes(): number {
    return (this.#info.bufferCount - this.#freeBuffers.length) * this.#bufferSize + this.#callerBytes;
  }

  /** Pool buffers free right now (none checked out by a read or held by a retain()). */
  freeBufferCount(): number {
    return this.#freeBuffers.length;
  }

  /**
   * One more holder of the pool buffer `view` lies in (e.g. a write of a slice of a
   * pooled read that must outlive the reader's release); the buffer returns to the pool
   * when every holder released it. Undefined when `view` is not inside the pool.
   */
  retain(view: Buffer): (() => void) | undefined {
    const index = this.#poolIndexOf(view);
    if (index < 0 || this.#bufferRefs[index] === 0) return undefined;
    this.#bufferRefs[index]!++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.releaseBuffer(index);
    };
  }

  // ---- data ops ------------------------------------------------------------

  /** One read into a pool buffer (short reads are normal; EOF gives data.length 0). */
  async read(fd: number, opts: IoOptions & { length?: number } = {}): Promise<PooledBuffer> {
    const length = opts.length ?? this.#bufferSize;
    if (!Number.isInteger(length) || length < 1 || length > this.#bufferSize) {
      throw new MigbridgeError('EINVAL', `read length must be 1..${this.#bufferSize}, got ${length}`);
    }
    const ctx = this.#begin('read', fd, opts);
    const index = await this.#takeBuffer(fd, ctx);
    try {
      const view = this.#pool.subarray(index * this.#bufferSize, index * this.#bufferSize + length);
      const n = await this.#retrying(ctx, POLLIN, (id, t) => this.#native.submitRead(id, fd, view, ctx.offset, t, index), view);
      return new Pooled(this, index, view.subarray(0, n));
    } catch (e) {
      this.releaseBuffer(index);
      throw e;
    }
  }

  /** One read into a caller buffer; resolves the byte count (0 = EOF). */
  async readInto(fd: number, buf: Buffer, opts: IoOptions = {}): Promise<number> {
    const ctx = this.#begin('read', fd, opts);
    return this.#withCallerBytes(buf.length, () =>
      this.#retrying(ctx, POLLIN, (id, t) => this.#native.submitRead(id, fd, buf, ctx.offset, t, -1), buf),
    );
  }

  /** One readv; resolves the byte count (0 = EOF). */
  async readv(fd: number, bufs: Buffer[], opts: IoOptions = {}): Promise<number> {
    const ctx = this.#begin('readv', fd, opts);
    const total = bufs.reduce((s, b) => s + b.length, 0);
    return this.#withCallerBytes(total, () =>
      this.#retrying(ctx, POLLIN, (id, t) => this.#native.submitReadv(id, fd, bufs, ctx.offset, t), bufs),
    );
  }

  /** Writes all of data, resubmitting the rest after short writes; resolves data.length. */
  async write(fd: number, data: Buffer, opts: IoOptions = {}): Promise<number> {
    const ctx = this.#begin('write', fd, opts);
    return this.#withCallerBytes(data.length, async () => {
      let done = 0;
      while (done < data.length) {
        const rest = data.subarray(done);
        const at = ctx.offset < 0 ? -1 : ctx.offset + done;
        const fixed = this.#poolIndexOf(rest);
      const n = await this.#retrying(ctx, POLLOUT, (id, t) => this.#native.submitWrite(id, fd, rest, at, t, fixed), rest);
        if (n === 0) throw new SysError('write', EIO, `write returned 0 with ${data.length - done} bytes left on fd ${fd}`, { fd });
        done += n;
      }
      return done;
    });
  }

  /** Writes all bytes of bufs (in order), resubmitting the rest after short writes. */
  async writev(fd: number, bufs: Buffer[], opts: IoOptions = {}): Promise<number> {
    const ctx = this.#begin('writev', fd, opts);
    const total = bufs.reduce((s, b) => s + b.length, 0);
    return this.#withCallerBytes(total, async () => {
      let rest = bufs.filter((b) => b.length > 0);
      let done = 0;
      while (done < total) {
        const iov = rest;
        const at = ctx.offset < 0 ? -1 : ctx.offset + done;
        let n = await this.#retrying(ctx, POLLOUT, (id, t) => this.#native.submitWritev(id, fd, iov, at, t), iov);
        if (n === 0) throw new SysError('writev', EIO, `writev returned 0 with ${total - done} bytes left on fd ${fd}`, { fd });
        done += n;
        let i = 0;
        while (i < rest.length && n >= rest[i]!.length) n -= rest[i++]!.length;
        rest = rest.slice(i);
        if (n > 0) rest[0] = rest[0]!.subarray(n);
      }
      return done;
    });
  }

  /** Waits until fd reports one of `events` (POLLIN, POLLOUT, ...); resolves revents, or 0 on timeout. */
  async poll(fd: number, events: number, opts: { timeoutMs?: number } = {}): Promise<number> {
    const ctx = this.#begin('poll', fd, opts);
    const res = await this.#raw(ctx, ctx.timeoutMs(), (id, t) => this.#native.submitPoll(id, fd, events, t), null);
    if (res === -ETIMEDOUT) return 0;
    if (res < 0) throw this.#error(ctx, res);
    return res;
  }

  async close(fd: number): Promise<void> {
    const ctx = this.#begin('close', fd, {});
    const res = await this.#raw(ctx, 0, (id) => this.#native.submitClose(id, fd), null);
    if (res < 0) throw this.#error(ctx, res);
  }

  /** Cancels every pending op on fd (they reject with ECANCELED); resolves how many were cancelled. */
  async cancel(fd: number): Promise<number> {
    this.#assertOpen('cancel', fd);
    this.#cancelEpoch.set(fd, (this.#cancelEpoch.get(fd) ?? 0) + 1);
    let count = this.#rejectWaiters((w) => w.fd === fd, 'cancel');
    for (const rec of this.#ops) if (rec && rec.fd === fd) rec.userCancelled = true;
    const ctx = this.#begin('cancel', fd, {});
    const res = await this.#raw(ctx, 0, (id) => this.#native.submitCancelFd(id, fd), null, -1);
    if (res < 0 && res !== -ENOENT) throw this.#error(ctx, res);
    if (res > 0) count += res;
    return count;
  }

  // ---- ioctls --------------------------------------------------------------

  /** Issues every request at once on the ioctl worker pool; each resolves with its own result. */
  async ioctlBatch(reqs: IoctlRequest[]): Promise<IoctlResult[]> {
    return Promise.all(
      reqs.map(async (r) => {
        const ctx = this.#begin('ioctl', r.fd, {});
        const res = await this.#raw(ctx, 0, (id) => this.#native.submitIoctl(id, r.fd, r.request, r.arg), r.arg);
        return res < 0 ? { ret: -1, errno: -res } : { ret: res, errno: 0 };
      }),
    );
  }

  /** One ioctl off the JS thread; resolves its non-negative result or throws SysError(op 'ioctl'). */
  async ioctl(fd: number, request: number, arg: Buffer | number | null): Promise<number> {
    const [r] = await this.ioctlBatch([{ fd, request, arg }]);
    if (r!.errno !== 0) throw new SysError('ioctl', r!.errno, undefined, { fd });
    return r!.ret;
  }

  // ---- lifecycle -----------------------------------------------------------

  /** Cancels everything pending, waits for it to settle, then releases ring, buffers and threads. */
  shutdown(): Promise<void> {
    this.#shutdown ??= (async () => {
      this.#closed = true;
      this.#rejectWaiters(() => true, 'shutdown');
      const fds = new Set<number>();
      for (const rec of this.#ops) {
        if (rec) {
          rec.userCancelled = true;
          fds.add(rec.fd);
        }
      }
      for (const fd of fds) {
        this.#cancelEpoch.set(fd, (this.#cancelEpoch.get(fd) ?? 0) + 1);
        this.#submitCancel(fd);
      }
      if (this.#pending > 0) await new Promise<void>((r) => this.#idleWaiters.push(r));
      this.#native.destroy();
      pools.delete(this.#pool.buffer);
      if (defaultInstance === this) defaultInstance = undefined;
    })();
    return this.#shutdown;
  }

  /** @internal Drops one holder of a pool buffer (PooledBuffer.release, retain()'s release). */
  releaseBuffer(index: number): void {
    if (this.#bufferRefs[index] === 0) return;
    if (--this.#bufferRefs[index]! > 0) return;
    const w = this.#bufferWaiters.shift();
    if (w) {
      this.#bufferRefs[index] = 1;
      w.resolve(index);
    } else this.#freeBuffers.push(index);
  }

  // ---- internals -----------------------------------------------------------

  #assertOpen(op: string, fd: number): void {
    if (this.#closed) throw new MigbridgeError('ESHUTDOWN', `${op} on fd ${fd}: the I/O engine is shut down`);
  }

  #begin(op: string, fd: number, opts: IoOptions): OpContext {
    this.#assertOpen(op, fd);
    if (!Number.isInteger(fd) || fd < 0) throw new SysError(op, 9 /* EBADF */, `${op}: invalid fd ${fd}`, { fd });
    return new OpContext(op, fd, opts, this.#cancelEpoch.get(fd) ?? 0);
  }

  #error(ctx: OpContext, res: number): SysError {
    return new SysError(ctx.op, -res, undefined, { fd: ctx.fd });
  }

  #checkCancelled(ctx: OpContext): void {
    if ((this.#cancelEpoch.get(ctx.fd) ?? 0) !== ctx.epoch) throw new SysError(ctx.op, ECANCELED, undefined, { fd: ctx.fd });
  }

  /** One op with EAGAIN handled (poll for readiness, then resubmit) within the op's deadline. */
  async #retrying(ctx: OpContext, events: number, submit: (id: number, timeoutMs: number) => void, keep: unknown): Promise<number> {
    for (;;) {
      this.#checkCancelled(ctx);
      const res = await this.#raw(ctx, ctx.timeoutMs(), submit, keep);
      if (res >= 0) return res;
      if (res !== -EAGAIN) throw this.#error(ctx, res);
      this.#checkCancelled(ctx);
      const ready = await this.#raw(ctx, ctx.timeoutMs(), (id, t) => this.#native.submitPoll(id, ctx.fd, events, t), null);
      if (ready < 0 && ready !== -ETIMEDOUT) throw this.#error(ctx, ready);
      if (ready <= 0) throw this.#error(ctx, -ETIMEDOUT);
    }
  }

  async #withCallerBytes<T>(bytes: number, fn: () => Promise<T>): Promise<T> {
    this.#callerBytes += bytes;
    try {
      return await fn();
    } finally {
      this.#callerBytes -= bytes;
    }
  }

  /**
   * Submits one native op and resolves its raw result (>= 0, or -errno). A
   * linked-timeout cancellation becomes -ETIMEDOUT; the fallback reports -ETIME.
   */
  async #raw(ctx: OpContext, timeoutMs: number, submit: (id: number, timeoutMs: number) => void, keep: unknown, fdForCancel?: number): Promise<number> {
    if (timeoutMs < 0) return -ETIMEDOUT; // deadline already passed
    const id = this.#freeIds.pop() ?? (await this.#waitForId(ctx.fd));
    this.#checkCancelled(ctx);
    const timed = timeoutMs > 0;
    const res = await new Promise<number>((resolve) => {
      // a cancel op is keyed to fd -1 so that cancelling never cancels itself
      this.#ops[id] = { fd: fdForCancel ?? ctx.fd, timed, userCancelled: false, keep, resolve };
      this.#pending++;
      try {
        submit(id, timeoutMs);
      } catch (e) {
        this.#ops[id] = undefined;
        this.#pending--;
        this.#freeId(id);
        throw e;
      }
      this.#scheduleFlush();
    }).catch((e: unknown) => {
      throw e instanceof MigbridgeError ? e : new MigbridgeError('ENATIVE', `${ctx.op} on fd ${ctx.fd}: ${(e as Error).message}`);
    });
    return res;
  }

  #onComplete(n: number): void {
    const c = this.#completions;
    for (let i = 0; i < n; i++) {
      const id = c[2 * i]!;
      let res = c[2 * i + 1]!;
      const rec = this.#ops[id];
      if (!rec) continue; // cannot happen: ids are ours
      this.#ops[id] = undefined;
      this.#pending--;
      this.#freeId(id);
      if (res === -ETIME || (res === -ECANCELED && rec.timed && !rec.userCancelled)) res = -ETIMEDOUT;
      rec.resolve(res);
    }
    if (this.#pending === 0) for (const w of this.#idleWaiters.splice(0)) w();
  }

  #scheduleFlush(): void {
    if (this.#flushScheduled || this.#info.io !== 'io_uring') return;
    this.#flushScheduled = true;
    // One io_uring_enter per event-loop turn for everything queued in it
    // (check phase, right after the poll phase that delivered completions).
    setImmediate(() => {
      this.#flushScheduled = false;
      if (this.#closed && this.#pending === 0) return;
      const rc = this.#native.flush();
      if (rc < 0) this.#scheduleFlush(); // e.g. EBUSY: the kernel wants completions reaped first
    });
  }

  #submitCancel(fd: number): void {
    const id = this.#freeIds.pop();
    if (id === undefined) return; // all ids busy: the pending ops themselves will settle
    this.#ops[id] = { fd: -1, timed: false, userCancelled: false, keep: null, resolve: () => {} };
    this.#pending++;
    this.#native.submitCancelFd(id, fd);
    this.#scheduleFlush();
  }

  #freeId(id: number): void {
    const w = this.#idWaiters.shift();
    if (w) w.resolve(id);
    else this.#freeIds.push(id);
  }

  #waitForId(fd: number): Promise<number> {
    return new Promise((resolve, reject) => this.#idWaiters.push({ fd, resolve, reject }));
  }

  /** Which pool buffer `view` lies inside (its registered index for a fixed op), or -1. */
  #poolIndexOf(view: Buffer): number {
    if (view.buffer !== this.#pool.buffer || view.length === 0) return -1;
    const at = view.byteOffset - this.#pool.byteOffset;
    const index = Math.floor(at / this.#bufferSize);
    if (at < 0 || index >= this.#info.bufferCount) return -1;
    // a fixed op must stay inside its one registered buffer
    return at + view.length <= (index + 1) * this.#bufferSize ? index : -1;
  }

  async #takeBuffer(fd: number, ctx: OpContext): Promise<number> {
    const index = this.#freeBuffers.pop();
    if (index !== undefined) {
      this.#bufferRefs[index] = 1;
      return index;
    }
    const got = await new Promise<number>((resolve, reject) => this.#bufferWaiters.push({ fd, resolve, reject }));
    try {
      this.#checkCancelled(ctx);
    } catch (e) {
      this.releaseBuffer(got);
      throw e;
    }
    return got;
  }

  #rejectWaiters(match: (w: Waiter) => boolean, why: string): number {
    let count = 0;
    for (const list of [this.#idWaiters, this.#bufferWaiters]) {
      for (let i = list.length - 1; i >= 0; i--) {
        const w = list[i]!;
        if (!match(w)) continue;
        list.splice(i, 1);
        count++;
        w.reject(new SysError(why === 'shutdown' ? 'shutdown' : 'cancel', ECANCELED, undefined, { fd: w.fd }));
      }
    }
    return count;
  }
}

/** Per-call context: op name, fd, deadline, offset and the cancel epoch seen at start. */
class OpContext {
  readonly deadline: number;
  readonly offset: number;
  constructor(
    readonly op: string,
    readonly fd: number,
    opts: IoOptions,
    readonly epoch: number,
  ) {
    if (opts.offset !== undefined && (!Number.isSafeInteger(opts.offset) || opts.offset < 0)) {
      throw new MigbridgeError('EINVAL', `${op}: offset must be a non-negative integer, got ${opts.offset}`);
    }
    this.offset = opts.offset ?? -1;
    const t = opts.timeoutMs;
    if (t !== undefined && !(t > 0)) throw new MigbridgeError('EINVAL', `${op}: timeoutMs must be > 0, got ${t}`);
    this.deadline = t === undefined ? 0 : performance.now() + t;
  }
  /** Remaining ms (0 = no timeout, negative = expired). */
  timeoutMs(): number {
    if (this.deadline === 0) return 0;
    const left = this.deadline - performance.now();
    return left > 0 ? left : -1;
  }
}

let defaultInstance: IoEngine | undefined;

/** Each open engine by the memory of its buffer pool. */
const pools = new Map<ArrayBufferLike, IoEngine>();

/**
 * IoEngine.retain on whichever engine's pool `view` lies in (a consumer of decoded
 * payloads need not know which engine read them); undefined for memory of no pool.
 */
export function retainPooled(view: Buffer): (() => void) | undefined {
  return pools.get(view.buffer)?.retain(view);
}

/** The process-wide engine, created on first use; MIGBRIDGE_IO=threadpool|io_uring forces a backend. */
export function defaultEngine(): IoEngine {
  if (!defaultInstance) defaultInstance = IoEngine.open(envForce());
  return defaultInstance;
}

/** Backend forced by MIGBRIDGE_IO (unset or empty: automatic). */
export function envForce(): { force?: IoBackendKind } {
  const v = process.env.MIGBRIDGE_IO;
  if (v === undefined || v === '' || v === 'auto') return {};
  if (v === 'threadpool' || v === 'io_uring') return { force: v };
  throw new MigbridgeError('EINVAL', `MIGBRIDGE_IO must be io_uring, threadpool or auto, got ${JSON.stringify(v)}`);
}
