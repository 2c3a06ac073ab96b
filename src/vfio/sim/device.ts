// A simulated VFIO migration device that behaves like a kernel driver: the FSM and
// errnos come from src/fsm (EINVAL for bad arcs, SET to the current state is a no-op,
// ERROR is left only by reset), data_fds are real pipe fds, fed (save) or drained
// (resume) by a worker thread (worker.ts). See README "Devices" for the spec keys and
// for what differs from a kernel data_fd.
//
// Save pipe. The caller gets the read end. The device keeps a private non-blocking read
// end (opened through /proc/self/fd) to measure unread bytes (FIONREAD), to open new
// write ends, and to drain the pipe when a session ends. Every "round" of data has its
// own write end, closed by the worker when the round is written:
//  - PRE_COPY: the initial round (header + `precopy` bytes) then, at each precopyInfo()
//    call, a round with the blocks dirtied since; when all rounds are written and read,
//    no write end is open and read() returns 0: the temporary end, as mtty does. A new
//    round opens a new write end on the same pipe, so later reads get data again.
//  - STOP_COPY: the final round (write end opened inside the SET, before it returns, so
//    a reader never sees a 0 before the real end); read() == 0 is then the final EOF.
//  - session end (STOP_COPY->STOP, PRE_COPY->RUNNING, reset, close): the worker stops,
//    unread data is discarded and reads get 0 (EOF). Kernel drivers give ENODEV here; a
//    pipe cannot, and the spec allows "EOF or an error".
// Resume pipe. The caller gets the write end; the worker reads the other end, verifies
// every record and reports when asked at the exit from RESUMING. A rejected stream
// closes the read end, so later writes fail with EPIPE (mtty: EFAULT on a bad header).
// fail=write-error@SIZE reproduces mtty's hazard instead: the worker stops reading at
// SIZE (writes then fail with EPIPE) but the exit from RESUMING succeeds and loads the
// bytes it took, so only a reset keeps the damaged data out (see #finishResume).
import { constants as fsc, openSync, readSync, writeFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { FsmError, MigState, endsSession, opensDataFd, path, stateName, stopsDevice } from '../../fsm/index.js';
import { closeSync, ioctlSync, pipe, setNonBlocking, setPipeSize } from '../../native/index.js';
import type { DataFd, MigrationDevice, PrecopyInfo, RegionInfoSummary } from '../device.js';
import { VfioDeviceError } from '../device.js';
import { Errno } from '../uapi.js';
import {
  BLOCK_SIZE,
  END_RECORD_BYTES,
  NOT_SENT,
  REGS_RECORD_BYTES,
  REGS_SIZE,
  blockCount,
  blockRecordBytes,
  encodeEndRecord,
  encodeHeader,
  encodeRegsRecord,
  fillBlock,
  fullStreamBytes,
  stateDigest,
} from './content.js';
import { type SimConfig, parseSimSpec } from './spec.js';
import {
  CTRL_BYTES,
  CTRL_BYTES_OFFSET,
  CTRL_CANCELLED,
  CTRL_FINISH_REQ,
  CTRL_SIGNAL,
  CTRL_WRITING,
  type JobDoneMsg,
  type ResumeStatusMsg,
  type SaveJobMsg,
  type WorkerReply,
} from './protocol.js';

const PIPE_SIZE = 1 << 20;
const FIONREAD = 0x541b;

/** Outcome of the last exit from RESUMING, for restores that verify integrity. */
export interface SimResumeResult {
  verified: boolean;
  /** Stream bytes the device consumed. */
  bytes: number;
  /** State digest carried by the stream and recomputed from what arrived (when verified). */
  digest?: bigint;
  /** The seed of the source device whose state the stream carried (when verified). */
  sourceSeed?: bigint;
  /** This device's spec named a seed (seed=): the source it was meant to receive, to compare with sourceSeed. */
  givenSeed?: bigint;
  reason?: string;
  /** The exit from RESUMING succeeded and the device's state is now what the stream carried (damaged when !verified). */
  loaded: boolean;
}

class ArcFailure extends Error {
  constructor(
    readonly errno: number,
    message: string,
    readonly toError = false,
  ) {
    super(message);
  }
}

interface SessionCtl {
  readonly id: number;
  readonly sab: SharedArrayBuffer;
  readonly ctrl: Int32Array;
  readonly counter: BigInt64Array;
}

function newCtl(id: number): SessionCtl {
  const sab = new SharedArrayBuffer(CTRL_BYTES);
  return { id, sab, ctrl: new Int32Array(sab, 0, 4), counter: new BigInt64Array(sab, CTRL_BYTES_OFFSET, 1) };
}

function signal(c: SessionCtl, index: number): number {
  const v = Atomics.add(c.ctrl, index, 1) + 1;
  Atomics.add(c.ctrl, CTRL_SIGNAL, 1);
  Atomics.notify(c.ctrl, CTRL_SIGNAL);
  return v;
}

const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function newPipe(): [number, number] {
  try {
    return pipe();
  } catch (e) {
    throw new ArcFailure(setupErrno(e), `cannot create the data pipe: ${(e as Error).message}`);
  }
}

/** A data_fd that cannot be created for want of fds fails with EMFILE, as the kernel's SET does (get_unused_fd_flags); anything else EIO. */
function setupErrno(e: unknown): number {
  return (e as NodeJS.ErrnoException).code === 'EMFILE' ? Errno.EMFILE : Errno.EIO;
}

interface SaveSession extends SessionCtl {
  readonly readFd: number;
  readonly privR: number;
  /** Generation of each block as queued in this session (NOT_SENT = never). */
  readonly queuedGen: Uint32Array;
  neverQueuedBytes: number;
  readonly dirty: Set<number>;
  dirtyBytes: number;
  headerQueued: boolean;
  queuedTotal: number;
  initialEnd: number;
  consumed: number;
  pendingJobs: number;
  jobsIdle: (() => void)[];
  finalJob?: Promise<JobDoneMsg>;
  stopCopyBytes: number;
  fault?: { errno: number; message: string };
  ended: boolean;
  /** The worker died during this session: write ends it was given may never be closed. */
  workerDied?: boolean;
}

interface ResumeSession extends SessionCtl {
  readonly writeFd: number;
  waiters: ((m: ResumeStatusMsg) => void)[];
  done: Promise<void>;
  markDone: () => void;
}

class SimDataFd implements DataFd {
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

let ordinal = 0;

/**
 * Devices with a state-file, recorded once more when the process exits: as a kernel
 * driver does when its device fd is released (mtty, mlx5, hisi: sessions end, state
 * RUNNING), so a process killed mid-migration shows what the kernel would leave.
 */
const published = new Set<SimDevice>();
let exitHook = false;
function onExitRelease(): void {
  for (const d of published) d.releaseAtExit();
}

export class SimDevice implements MigrationDevice {
  readonly kind = 'sim' as const;
  readonly id: string;
  readonly config: SimConfig;
  #state: MigState = MigState.RUNNING;
  #seed: bigint;
  readonly #size: number;
  readonly #gens: Uint32Array;
  readonly #regs = new Uint8Array(REGS_SIZE);
  #rng: number;
  #dirtyCarry = 0;
  #lastAccrue = 0;
  #worker: Worker | undefined;
  /** The worker thread started (ran its module): it owns the fds posted to it from then on. */
  #workerOnline = false;
  /** Pipe ends handed to the worker and not yet closed by it (save write ends, resume read ends). */
  readonly #posted = new Map<number, number>();
  #save: SaveSession | undefined;
  #resume: ResumeSession | undefined;
  #sessions = 0;
  #jobs = 0;
  #jobWaiters = new Map<number, (m: JobDoneMsg) => void>();
  #lock: Promise<unknown> = Promise.resolve();
  #closed = false;
  #lastResume: SimResumeResult | undefined;
  #loads = 0;

  constructor(config: SimConfig) {
    const n = ordinal++;
    this.config = config;
    this.id = config.id ?? `sim${n}`;
    this.#seed = config.seedGiven ? config.seed : BigInt(n + 1);
    this.#size = config.size;
    this.#gens = new Uint32Array(blockCount(config.size));
    const r = Buffer.alloc(REGS_SIZE);
    fillBlock(r, this.#seed, 0xfffffffe, 0, REGS_SIZE);
    this.#regs.set(r);
    this.#rng = Number(this.#seed & 0x7fffffffn) | 1;
  }

  /** Seed of the current content (a successful resume adopts the stream's). */
  get seed(): bigint {
    return this.#seed;
  }
  get size(): number {
    return this.#size;
  }
  /** Digest of the current state (seed, size, block generations, registers): equal on source and restored device. */
  stateDigest(): bigint {
    return stateDigest(this.#seed, this.#size, this.#gens, this.#regs);
  }
  /** Result of the last exit from RESUMING (undefined if none yet). */
  get resumeResult(): SimResumeResult | undefined {
    return this.#lastResume;
  }
  /** Exits from RESUMING that replaced the device's state (verified or, with fail=write-error, damaged). */
  get loads(): number {
    return this.#loads;
  }

  // ------------------------------------------------------------------ MigrationDevice

  async migrationFlags(): Promise<number> {
    this.#check('migrationFlags');
    if (this.config.flags === 0) throw new VfioDeviceError(this.id, 'migrationFlags', Errno.ENOTTY, { message: 'no migration support (flags=0)' });
    return this.config.flags;
  }

  /** Writes the state file (config stateFile): the device's state as `GET` would report it. */
  #publish(extra: Record<string, unknown> = {}): void {
    const file = this.config.stateFile;
    if (!file) return;
    if (!exitHook) {
      exitHook = true;
      process.on('exit', onExitRelease);
    }
    published.add(this);
    const body = { id: this.id, state: stateName(this.#state), digest: this.stateDigest().toString(16), loads: this.#loads, ...extra };
    try {
      writeFileSync(file, JSON.stringify(body) + '\n');
    } catch {
      // an observation aid: never a reason for the device to fail
    }
  }

  /** Process exit with the device still open: the release a kernel driver does (sessions end, RUNNING). */
  releaseAtExit(): void {
    if (this.#closed) return;
    const from = stateName(this.#state);
    this.#state = MigState.RUNNING;
    this.#publish({ releasedAtExit: true, releasedFrom: from });
  }

  state(): Promise<MigState> {
    // Waits for a transition in progress, as GET waits for the driver's state mutex.
    return this.#locked(async () => {
      this.#check('state');
      this.#noMigration('state');
      return this.#state;
    });
  }

  setState(target: MigState): Promise<DataFd | null> {
    return this.#locked(async () => {
      try {
        return await this.#setState(target);
      } finally {
        this.#publish();
      }
    });
  }

  async #setState(target: MigState): Promise<DataFd | null> {
    this.#check('setState');
    this.#noMigration('setState');
    const from = this.#state;
    if (target === from) return null; // drivers loop while (cur != target): no-op, even ERROR->ERROR
    let steps: MigState[];
    try {
      steps = path(this.config.flags, from, target);
    } catch (e) {
      if (e instanceof FsmError) throw new VfioDeviceError(this.id, 'setState', Errno.EINVAL, { requested: target, state: from, message: e.message, cause: e });
      throw e;
    }
    let fd: DataFd | null = null;
    for (const next of steps) {
      if (fd) throw new Error(`internal: FSM opened a data_fd on an interior arc ${stateName(from)} -> ${stateName(target)}`);
      try {
        fd = await this.#arc(this.#state, next);
      } catch (e) {
        if (!(e instanceof ArcFailure)) throw e;
        if (e.toError) {
          this.#state = MigState.ERROR;
          await this.#endSessions();
        }
        throw new VfioDeviceError(this.id, 'setState', e.errno, { requested: target, state: this.#state, message: e.message });
      }
      this.#state = next;
    }
    return fd;
}

  precopyInfo(): Promise<PrecopyInfo> {
    return this.#locked(async () => {
      this.#check('precopyInfo');
      // mtty order: the state check comes first (EINVAL outside PRE_COPY*).
      if (this.#state !== MigState.PRE_COPY && this.#state !== MigState.PRE_COPY_P2P) {
        throw new VfioDeviceError(this.id, 'precopyInfo', Errno.EINVAL, { message: `device is in ${stateName(this.#state)}, not PRE_COPY*` });
      }
      const s = this.#save!;
      if (s.fault) throw new VfioDeviceError(this.id, 'precopyInfo', s.fault.errno, { message: s.fault.message });
      this.#accrueDirty();
      if (s.dirty.size > 0) this.#queueDirtyRound(s);
      s.consumed = Math.max(s.consumed, this.#consumed(s));
      const initial = Math.max(0, s.initialEnd - s.consumed);
      const dirty = Math.max(0, s.queuedTotal - Math.max(s.consumed, s.initialEnd));
      return { initialBytes: BigInt(initial), dirtyBytes: BigInt(dirty) };
    });
  }

  /**
   * Bytes of the session stream the reader has taken: written - unread (FIONREAD on the
   * private read end). The producer's counter lags while it is inside write(); if the
   * pipe is empty then, the write is about to land or just landed, so wait for it briefly
   * (an empty pipe never blocks a writer for long) to report an exact figure.
   */
  #consumed(s: SaveSession): number {
    const unread = Buffer.alloc(4);
    const deadline = performance.now() + 50;
    for (;;) {
      const writing = Atomics.load(s.ctrl, CTRL_WRITING);
      const written = Atomics.load(s.counter, 0);
      ioctlSync(s.privR, FIONREAD, unread);
      const pending = unread.readInt32LE(0);
      const stable = writing === 0 && Atomics.load(s.ctrl, CTRL_WRITING) === 0 && Atomics.load(s.counter, 0) === written;
      if (stable || pending > 0 || performance.now() > deadline) return Number(written) - pending;
      Atomics.wait(s.ctrl, CTRL_WRITING, 1, 0.1);
    }
  }

  stopCopySize(): Promise<bigint> {
    return this.#locked(async () => {
      this.#check('stopCopySize');
      this.#noMigration('stopCopySize');
      const wrong = this.config.faults.find((f) => f.kind === 'data-size');
      if (wrong) return BigInt(wrong.bytes);
      const s = this.#save;
      if (s && this.#state === MigState.STOP_COPY) return BigInt(s.stopCopyBytes);
      if (s) {
        this.#accrueDirty();
        return BigInt(s.neverQueuedBytes + s.dirtyBytes + REGS_RECORD_BYTES + END_RECORD_BYTES);
      }
      return BigInt(fullStreamBytes(this.#size));
    });
  }

  reset(): Promise<void> {
    return this.#locked(async () => {
      this.#check('reset');
      await this.#endSessions();
      this.#state = MigState.RUNNING;
      this.#publish({ reset: true });
    });
  }

  async regionInfo(index: number): Promise<RegionInfoSummary> {
    this.#check('regionInfo');
    if (index !== 0) throw new VfioDeviceError(this.id, 'regionInfo', Errno.EINVAL, { message: `region ${index} does not exist (the simulator has region 0 only)` });
    return { index: 0, size: REGS_SIZE, readable: true, writable: true };
  }

  async regionRead(index: number, offset: number, length: number): Promise<Buffer> {
    this.#check('regionRead');
    this.#regionCheck('regionRead', index, offset, length);
    return Buffer.from(this.#regs.subarray(offset, offset + length));
  }

  async regionWrite(index: number, offset: number, data: Buffer): Promise<void> {
    this.#check('regionWrite');
    this.#regionCheck('regionWrite', index, offset, data.length);
    this.#regs.set(data, offset);
  }

  close(): Promise<void> {
    return this.#locked(async () => {
      if (this.#closed) return;
      await this.#endSessions();
      this.#publish({ closed: true });
      this.#closed = true;
      published.delete(this);
      const w = this.#worker;
      this.#worker = undefined;
      if (w) await w.terminate();
    });
  }

  // ------------------------------------------------------------------ internals

  #check(op: string): void {
    if (this.#closed) throw new VfioDeviceError(this.id, op, Errno.EBADF, { message: 'device is closed' });
  }
  #noMigration(op: string): void {
    if (this.config.flags === 0) throw new VfioDeviceError(this.id, op, Errno.ENOTTY, { message: 'no migration support (flags=0)' });
  }
  #regionCheck(op: string, index: number, offset: number, length: number): void {
    if (index !== 0) throw new VfioDeviceError(this.id, op, Errno.EINVAL, { message: `region ${index} does not exist` });
    if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length < 0 || offset + length > REGS_SIZE) {
      throw new VfioDeviceError(this.id, op, Errno.EINVAL, { message: `access [${offset}, +${length}) outside region 0 (${REGS_SIZE} bytes)` });
    }
  }

  /** Serialises state-changing operations, like the driver's state mutex. */
  #locked<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#lock.then(fn, fn);
    this.#lock = run.catch(() => undefined);
    return run;
  }

  #ensureWorker(): Worker {
    if (!this.#worker) {
      // trackUnmanagedFds off: the worker closes fds the main thread created.
      const w = new Worker(new URL('./worker.js', import.meta.url), { trackUnmanagedFds: false });
      w.on('message', (m: WorkerReply) => this.#onWorker(m));
      w.on('online', () => (this.#workerOnline = true));
      w.on('error', (e) => this.#onWorkerError(e));
      this.#worker = w;
    }
    return this.#worker;
  }

  /** Keeps the process alive only while a session needs the worker. */
  #refWorker(): void {
    if (this.#save || this.#resume) this.#worker?.ref();
    else this.#worker?.unref();
  }

  #onWorker(m: WorkerReply): void {
    if (m.type === 'jobDone') {
      const s = this.#save;
      if (s && s.id === m.session && (m.status === 'eio' || m.status === 'failed') && !s.fault) {
        s.fault = { errno: Errno.EIO, message: m.message ?? 'producer failed' };
      }
      this.#posted.delete(m.job);
      this.#jobWaiters.get(m.job)?.(m);
      this.#jobWaiters.delete(m.job);
    } else if (m.type === 'resumeStatus') {
      const r = this.#resume;
      if (r && r.id === m.session) {
        const ws = r.waiters;
        r.waiters = [];
        for (const w of ws) w(m);
      }
    } else if (m.type === 'resumeDone') {
      this.#posted.delete(-m.session);
      if (this.#resume?.id === m.session) this.#resume.markDone();
    }
  }

  #onWorkerError(e: Error): void {
    // The data engine died: fail every session and wake every waiter. A worker that never
    // started (EMFILE while loading it, under a low fd limit) never closes the pipe ends it
    // was given: close them here, so readers see the end instead of waiting for a timeout.
    if (!this.#workerOnline) for (const fd of this.#posted.values()) closeSync(fd);
    this.#posted.clear();
    this.#workerOnline = false;
    const errno = (e as NodeJS.ErrnoException).code === 'EMFILE' || /EMFILE/.test(e.message) ? Errno.EMFILE : Errno.EIO;
    const s = this.#save;
    if (s) {
      s.fault ??= { errno, message: `simulator worker failed: ${e.message}` };
      s.workerDied = true;
    }
    for (const [job, w] of this.#jobWaiters) w({ type: 'jobDone', session: s?.id ?? -1, job, status: 'failed', written: 0, message: e.message });
    this.#jobWaiters.clear();
    const r = this.#resume;
    if (r) {
      for (const w of r.waiters) w({ type: 'resumeStatus', session: r.id, req: -1, phase: 'failed', bytes: 0, errno, reason: e.message });
      r.waiters = [];
      r.markDone();
    }
    this.#worker = undefined;
  }

  /** One arc of a SET: which sessions it opens and ends comes from src/fsm. */
  async #arc(from: MigState, to: MigState): Promise<DataFd | null> {
    if (stopsDevice(from, to)) {
      this.#accrueDirty();
      for (const f of this.config.faults) if (f.kind === 'slow-stop') await delay(f.ms);
    }
    for (const f of this.config.faults) {
      if (f.kind === 'error' && f.state === to) {
        throw new ArcFailure(Errno.EIO, `injected failure on the arc ${stateName(from)} -> ${stateName(to)} (fail=error@${stateName(to).toLowerCase().replace(/_/g, '-')})`, true);
      }
    }
    if (opensDataFd(from, to)) return to === MigState.RESUMING ? this.#openResume() : this.#openSave(to !== MigState.STOP_COPY);
    if (endsSession(from, to)) {
      await (from === MigState.RESUMING ? this.#finishResume() : this.#endSave());
    } else if (to === MigState.STOP_COPY) {
      // PRE_COPY* -> STOP_COPY: the same session goes on with its final round.
      this.#queueFinal(this.#save!, this.#newWriteEnd(this.#save!));
    }
    return null;
  }

  // ---- dirtying (only while a PRE_COPY session is open and the device runs)

  #accrueDirty(): void {
    const now = performance.now();
    const s = this.#save;
    const running = this.#state === MigState.PRE_COPY || this.#state === MigState.PRE_COPY_P2P;
    if (!s || !running || this.config.dirtyRate <= 0 || this.#gens.length === 0) {
      this.#lastAccrue = now;
      return;
    }
    const bytes = (this.config.dirtyRate * (now - this.#lastAccrue)) / 1000 + this.#dirtyCarry;
    this.#lastAccrue = now;
    let n = Math.floor(bytes / BLOCK_SIZE);
    this.#dirtyCarry = bytes - n * BLOCK_SIZE;
    n = Math.min(n, this.#gens.length);
    for (let i = 0; i < n; i++) {
      let x = this.#rng;
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      this.#rng = x;
      const b = (x >>> 0) % this.#gens.length;
      this.#gens[b] = this.#gens[b]! + 1;
      if (s.queuedGen[b] !== NOT_SENT && !s.dirty.has(b)) {
        s.dirty.add(b);
        s.dirtyBytes += blockRecordBytes(this.#size, b);
      }
    }
  }

  // ---- save sessions

  #openSave(precopy: boolean): DataFd {
    const [r, w] = newPipe();
    let privR = -1;
    try {
      setPipeSize(r, PIPE_SIZE);
      privR = openSync(`/proc/self/fd/${r}`, fsc.O_RDONLY | fsc.O_NONBLOCK);
    } catch (e) {
      closeSync(r);
      closeSync(w);
      if (privR >= 0) closeSync(privR);
      throw new ArcFailure(setupErrno(e), `cannot set up the data pipe: ${(e as Error).message}`);
    }
    const nb = this.#gens.length;
    const s: SaveSession = {
      ...newCtl(++this.#sessions),
      readFd: r,
      privR,
      queuedGen: new Uint32Array(nb).fill(NOT_SENT),
      neverQueuedBytes: nb * 16 + this.#size,
      dirty: new Set(),
      dirtyBytes: 0,
      headerQueued: false,
      queuedTotal: 0,
      initialEnd: 0,
      consumed: 0,
      pendingJobs: 0,
      jobsIdle: [],
      stopCopyBytes: 0,
      ended: false,
    };
    this.#save = s;
    this.#lastAccrue = performance.now();
    this.#ensureWorker();
    this.#refWorker();
    if (precopy) {
      const blocks = this.#takeBlocks(s, Math.ceil(this.config.precopy / BLOCK_SIZE), false);
      s.initialEnd = this.#queue(s, w, blocks, false);
    } else {
      this.#queueFinal(s, w);
    }
    return new SimDataFd(r, 'save', this.id, () => this.#verifySaveEnd(s));
  }

  /** Picks blocks to queue: the first `limit` never-sent ones, or (dirty) the dirtied ones; records them as queued. */
  #takeBlocks(s: SaveSession, limit: number, dirtyOnly: boolean): Uint32Array {
    const out: number[] = [];
    const take = (b: number): void => {
      const g = this.#gens[b]!;
      if (s.queuedGen[b] === NOT_SENT) s.neverQueuedBytes -= blockRecordBytes(this.#size, b);
      s.queuedGen[b] = g;
      out.push(b, g);
    };
    for (const b of [...s.dirty].sort((a, c) => a - c)) take(b);
    s.dirty.clear();
    s.dirtyBytes = 0;
    if (!dirtyOnly) {
      for (let b = 0; b < this.#gens.length && out.length / 2 < limit; b++) if (s.queuedGen[b] === NOT_SENT) take(b);
    }
    return Uint32Array.from(out);
  }

  /** Queues one round on write end `fd` (closed by the worker when written); returns the new queued total. */
  #queue(s: SaveSession, fd: number, blocks: Uint32Array, final: boolean, suffix: Buffer | null = null): number {
    const prefix = s.headerQueued ? null : encodeHeader({ seed: this.#seed, size: this.#size, flags: this.config.flags });
    s.headerQueued = true;
    let bytes = (prefix?.length ?? 0) + (suffix?.length ?? 0);
    for (let i = 0; i < blocks.length; i += 2) bytes += blockRecordBytes(this.#size, blocks[i]!);
    s.queuedTotal += bytes;
    if (final) s.stopCopyBytes = bytes;
    const job = ++this.#jobs;
    const msg: SaveJobMsg = {
      type: 'save',
      session: s.id,
      job,
      ctrl: s.sab,
      fd,
      seed: this.#seed,
      size: this.#size,
      prefix,
      blocks,
      suffix,
      rate: this.config.rate,
      latencyMs: this.config.latencyMs,
      chunk: this.config.chunk,
      eioAt: this.config.faults.find((f) => f.kind === 'eio')?.at ?? -1,
      stallAt: this.config.faults.find((f) => f.kind === 'stall')?.at ?? -1,
    };
    s.pendingJobs++;
    const done = new Promise<JobDoneMsg>((resolve) => {
      this.#jobWaiters.set(job, (m) => {
        s.pendingJobs--;
        if (s.pendingJobs === 0) for (const w of s.jobsIdle.splice(0)) w();
        resolve(m);
      });
    });
    if (final) s.finalJob = done;
    this.#posted.set(job, fd);
    this.#worker!.postMessage(msg);
    return s.queuedTotal;
  }

  #queueDirtyRound(s: SaveSession): void {
    const blocks = this.#takeBlocks(s, 0, true);
    if (blocks.length) this.#queue(s, this.#newWriteEnd(s), blocks, false);
  }

  /** Everything not yet queued at its current generation, the register snapshot and END. */
  #queueFinal(s: SaveSession, fd: number): void {
    const all = this.#takeBlocks(s, this.#gens.length, false);
    const suffix = Buffer.concat([encodeRegsRecord(this.#regs), encodeEndRecord(this.stateDigest(), this.#gens.length)]);
    this.#queue(s, fd, all, true, suffix);
  }

  /** A new write end on the session pipe, opened through the device's private read end. */
  #newWriteEnd(s: SaveSession): number {
    return openSync(`/proc/self/fd/${s.privR}`, fsc.O_WRONLY);
  }

  async #verifySaveEnd(s: SaveSession): Promise<void> {
    if (s.finalJob) {
      const r = await s.finalJob;
      if (r.status === 'ok') return;
      if (r.status === 'cancelled') {
        throw new VfioDeviceError(this.id, 'read', Errno.ENODEV, { message: `the saving session ended after ${r.written} bytes, before the state was complete` });
      }
      throw new VfioDeviceError(this.id, 'read', s.fault?.errno ?? Errno.EIO, { message: r.message ?? 'device failed while producing its state' });
    }
    if (s.fault) throw new VfioDeviceError(this.id, 'read', s.fault.errno, { message: s.fault.message });
    if (s.ended) throw new VfioDeviceError(this.id, 'read', Errno.ENODEV, { message: 'the saving session ended before STOP_COPY' });
  }

  async #endSave(): Promise<void> {
    const s = this.#save;
    if (!s) return;
    s.ended = true;
    signal(s, CTRL_CANCELLED);
    const scratch = Buffer.allocUnsafe(PIPE_SIZE);
    const drain = (): boolean => {
      // Returns true at EOF (no write end left and nothing buffered).
      for (;;) {
        try {
          if (readSync(s.privR, scratch, 0, scratch.length, null) === 0) return true;
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return false;
          throw e;
        }
      }
    };
    // A worker blocked in write() on a full pipe needs room to notice the cancel.
    while (s.pendingJobs > 0) {
      drain();
      await Promise.race([new Promise<void>((r) => s.jobsIdle.push(r)), delay(2)]);
    }
    // A worker that died after it started may have taken write ends of this pipe with it
    // (its 'error' can arrive before or after it began loading, so which ends it closed is
    // not known and closing them here could close a reused fd number): no EOF is coming,
    // and the pipe goes with its read end. Measured under load: an EMFILE while the worker
    // loaded its modules, after its 'online' event.
    for (let i = 0; !s.workerDied && !drain(); i++) {
      if (i > 1000) throw new Error(`internal: saving pipe of ${this.id} still has a writer after the session ended`);
      await delay(1);
    }
    closeSync(s.privR);
    this.#save = undefined;
    this.#refWorker();
  }

  // ---- resume sessions

  #openResume(): DataFd {
    const [r, w] = newPipe();
    const cutAt = this.config.faults.find((f) => f.kind === 'write-error')?.at ?? -1;
    try {
      // fail=write-error: one page of pipe, so a writer can get at most 4 KiB past the
      // point where the device stops reading before its writes fail.
      setPipeSize(w, cutAt >= 0 ? 4096 : PIPE_SIZE);
      setNonBlocking(r, true);
    } catch (e) {
      closeSync(r);
      closeSync(w);
      throw new ArcFailure(setupErrno(e), `cannot set up the data pipe: ${(e as Error).message}`);
    }
    let markDone!: () => void;
    const done = new Promise<void>((res) => (markDone = res));
    const s: ResumeSession = { ...newCtl(++this.#sessions), writeFd: w, waiters: [], done, markDone };
    this.#resume = s;
    // Keyed by the negated session id (save jobs use positive job numbers); the worker closes it when the session ends.
    this.#posted.set(-s.id, r);
    this.#ensureWorker().postMessage({
      type: 'resume',
      session: s.id,
      ctrl: s.sab,
      fd: r,
      size: this.#size,
      eioAt: this.config.faults.find((f) => f.kind === 'eio')?.at ?? -1,
      cutAt,
    });
    this.#refWorker();
    return new SimDataFd(w, 'resume', this.id, async () => undefined);
  }

  /** RESUMING -> STOP: load and validate what was written so far (mtty: EINVAL and stay in RESUMING if short). */
  async #finishResume(): Promise<void> {
    const s = this.#resume!;
    const status = await new Promise<ResumeStatusMsg>((resolve) => {
      s.waiters.push(resolve);
      signal(s, CTRL_FINISH_REQ);
    });
    if (status.phase === 'complete' && !this.config.faults.some((f) => f.kind === 'bad-resume')) {
      const givenSeed = this.config.seedGiven ? { givenSeed: this.config.seed } : {};
      this.#seed = status.seed!;
      this.#gens.set(status.gens!);
      this.#regs.set(status.regs!);
      this.#loads++;
      this.#lastResume = { verified: true, bytes: status.bytes, digest: status.digest!, sourceSeed: status.seed!, ...givenSeed, loaded: true };
      await this.#endResume();
      return;
    }
    if (status.cut && (status.phase === 'header' || status.phase === 'records')) {
      this.#loadDamaged(status);
      await this.#endResume();
      return;
    }
    const reason =
      status.phase === 'complete'
        ? 'injected rejection of a valid stream (fail=bad-resume)'
        : status.phase === 'corrupt' || status.phase === 'failed'
          ? status.reason ?? status.phase
          : `stream incomplete: ${status.bytes} bytes received, ${status.phase === 'header' ? 'no header yet' : 'no END record yet'}`;
    this.#lastResume = { verified: false, bytes: status.bytes, reason, loaded: false };
    throw new ArcFailure(status.phase === 'failed' ? status.errno ?? Errno.EIO : Errno.EINVAL, reason);
  }

  /**
   * fail=write-error: the exit from RESUMING succeeds on an incomplete stream and the device
   * takes it as its state, as mtty loads a header it failed with EFAULT: the stream's seed
   * (once its header arrived), the blocks that arrived whole; every other block is lost
   * (generation NOT_SENT: its content is garbage and a later save cannot be restored), and
   * the registers are zero unless their record arrived.
   */
  #loadDamaged(status: ResumeStatusMsg): void {
    const gens = status.gens;
    if (status.seed !== undefined) this.#seed = status.seed;
    this.#gens.fill(NOT_SENT);
    if (gens && gens.length === this.#gens.length) this.#gens.set(gens);
    this.#regs.fill(0);
    if (status.regs) this.#regs.set(status.regs);
    let whole = 0;
    for (const g of this.#gens) if (g !== NOT_SENT) whole++;
    this.#loads++;
    const at = this.config.faults.find((f) => f.kind === 'write-error')!.at;
    this.#lastResume = {
      verified: false,
      loaded: true,
      bytes: status.bytes,
      reason:
        `loaded a damaged state (fail=write-error@${at}): writes failed after ${at} bytes, the exit from RESUMING took the ${status.bytes} bytes received ` +
        `(${status.phase === 'header' ? 'no header' : `${whole} of ${this.#gens.length} blocks whole`}, registers ${status.regs ? 'received' : 'zeroed'}, no END record)`,
    };
  }

  async #endResume(): Promise<void> {
    const s = this.#resume;
    if (!s) return;
    signal(s, CTRL_CANCELLED);
    await s.done;
    this.#resume = undefined;
    this.#refWorker();
  }

  async #endSessions(): Promise<void> {
    await this.#endSave();
    await this.#endResume();
  }
}

/** Creates a simulated device from `sim:key=value,...` (or a parsed config). */
export function createSimDevice(spec: string | SimConfig): SimDevice {
  // Flags without STOP_COPY are allowed, as mdev registration allows them: every SET
  // but the current state then fails with EINVAL (docs/vfio-migration.md §3a).
  return new SimDevice(typeof spec === 'string' ? parseSimSpec(spec) : spec);
}
