// A simulated VFIO migration device that behaves like a kernel driver: the FSM and
// errnos come from src/fsm (EINVAL for bad arcs, SET to the current state is a no-op,
// ERROR is left only by reset; which arcs open and end a data session too), data_fds are
// real pipe fds, fed (save) or drained (resume) by a worker thread (worker.ts). This file
// drives the FSM and owns the worker; the sessions are save-session.ts and
// resume-session.ts, the dirtying while it runs dirty.ts. See docs/devices.md for the
// spec keys and for what differs from a kernel data_fd.
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
import { writeFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { FsmError, MigState, endsSession, opensDataFd, path, stateName, stopsDevice } from '../../fsm/index.js';
import { closeSync } from '../../native/index.js';
import type { DataFd, MigrationDevice, PrecopyInfo, RegionInfoSummary } from '../device.js';
import { VfioDeviceError } from '../device.js';
import { Errno } from '../uapi.js';
import { REGS_SIZE, blockCount, fillBlock, fullStreamBytes, stateDigest } from './content.js';
import { DirtyModel } from './dirty.js';
import type { JobDoneMsg, ResumeMsg, SaveJobMsg, WorkerReply } from './protocol.js';
import { RefusedResume, type ResumeHost, SimResumeSession, type SimResumeResult } from './resume-session.js';
import { type SaveHost, SimSaveSession } from './save-session.js';
import { ArcFailure, type SimContent, delay } from './session.js';
import { type SimConfig, parseSimSpec } from './spec.js';
import { InternalError } from '../../errors.js';

export type { SimResumeResult } from './resume-session.js';

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

export class SimDevice implements MigrationDevice, SaveHost, ResumeHost {
  readonly kind = 'sim' as const;
  readonly id: string;
  readonly config: SimConfig;
  #state: MigState = MigState.RUNNING;
  /** The device's state (a save reads it, a resume replaces it). */
  readonly content: SimContent;
  readonly #dirty: DirtyModel;
  #worker: Worker | undefined;
  /** The worker thread started (ran its module): it owns the fds posted to it from then on. */
  #workerOnline = false;
  /** Pipe ends handed to the worker and not yet closed by it (save write ends, resume read ends). */
  readonly #posted = new Map<number, number>();
  #save: SimSaveSession | undefined;
  #resume: SimResumeSession | undefined;
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
    const seed = config.seedGiven ? config.seed : BigInt(n + 1);
    const regs = Buffer.alloc(REGS_SIZE);
    fillBlock(regs, seed, 0xfffffffe, 0, REGS_SIZE);
    this.content = { seed, size: config.size, gens: new Uint32Array(blockCount(config.size)), regs: new Uint8Array(regs) };
    this.#dirty = new DirtyModel(seed, config.dirtyRate);
  }

  /** Seed of the current content (a successful resume adopts the stream's). */
  get seed(): bigint {
    return this.content.seed;
  }
  get size(): number {
    return this.content.size;
  }
  /** Digest of the current state (seed, size, block generations, registers): equal on source and restored device. */
  stateDigest(): bigint {
    return stateDigest(this.content.seed, this.content.size, this.content.gens, this.content.regs);
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
      if (fd) throw new InternalError(`FSM opened a data_fd on an interior arc ${stateName(from)} -> ${stateName(target)}`);
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
      const info = s.precopyInfo();
      return { initialBytes: BigInt(info.initialBytes), dirtyBytes: BigInt(info.dirtyBytes) };
    });
  }

  stopCopySize(): Promise<bigint> {
    return this.#locked(async () => {
      this.#check('stopCopySize');
      this.#noMigration('stopCopySize');
      const wrong = this.config.faults.find((f) => f.kind === 'data-size');
      if (wrong) return BigInt(wrong.bytes);
      const s = this.#save;
      if (s && this.#state === MigState.STOP_COPY) return BigInt(s.stopCopySize(true));
      if (s) {
        this.#accrueDirty();
        return BigInt(s.stopCopySize(false));
      }
      return BigInt(fullStreamBytes(this.content.size));
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
    return Buffer.from(this.content.regs.subarray(offset, offset + length));
  }

  async regionWrite(index: number, offset: number, data: Buffer): Promise<void> {
    this.#check('regionWrite');
    this.#regionCheck('regionWrite', index, offset, data.length);
    this.content.regs.set(data, offset);
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
      if (s && s.ctl.id === m.session && (m.status === 'eio' || m.status === 'failed') && !s.fault) {
        s.fault = { errno: Errno.EIO, message: m.message ?? 'producer failed' };
      }
      this.#posted.delete(m.job);
      this.#jobWaiters.get(m.job)?.(m);
      this.#jobWaiters.delete(m.job);
    } else if (m.type === 'resumeStatus') {
      if (this.#resume?.ctl.id === m.session) this.#resume.status(m);
    } else if (m.type === 'resumeDone') {
      this.#posted.delete(-m.session);
      if (this.#resume?.ctl.id === m.session) this.#resume.markDone();
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
    for (const [job, w] of this.#jobWaiters) w({ type: 'jobDone', session: s?.ctl.id ?? -1, job, status: 'failed', written: 0, message: e.message });
    this.#jobWaiters.clear();
    const r = this.#resume;
    if (r) {
      r.status({ type: 'resumeStatus', session: r.ctl.id, req: -1, phase: 'failed', bytes: 0, errno, reason: e.message });
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
      this.#save!.stopCopy();
    }
    return null;
  }

  // ---- dirtying (only while a PRE_COPY session is open and the device runs)

  #accrueDirty(): void {
    const s = this.#save;
    const running = s !== undefined && (this.#state === MigState.PRE_COPY || this.#state === MigState.PRE_COPY_P2P);
    for (const b of this.#dirty.accrue(this.content.gens, running)) s!.markDirty(b);
  }

  // ---- sessions (save-session.ts, resume-session.ts); the worker runs their data

  postSaveJob(msg: Omit<SaveJobMsg, 'job'>): Promise<JobDoneMsg> {
    const job = ++this.#jobs;
    const done = new Promise<JobDoneMsg>((resolve) => this.#jobWaiters.set(job, resolve));
    this.#posted.set(job, msg.fd);
    // The worker starts with the first round, once the pipe exists (under an fd limit the pipe comes first).
    this.#ensureWorker().postMessage({ ...msg, job });
    return done;
  }

  postResume(msg: ResumeMsg): void {
    // Keyed by the negated session id (save jobs use positive job numbers); the worker closes it when the session ends.
    this.#posted.set(-msg.session, msg.fd);
    this.#ensureWorker().postMessage(msg);
  }

  #openSave(precopy: boolean): DataFd {
    try {
      const { session, dataFd } = SimSaveSession.open(this, ++this.#sessions, precopy);
      this.#save = session;
      this.#dirty.restart();
      return dataFd;
    } finally {
      // A worker started for a session that could not open must not keep the process alive.
      this.#refWorker();
    }
  }

  async #endSave(): Promise<void> {
    const s = this.#save;
    if (!s) return;
    await s.end();
    this.#save = undefined;
    this.#refWorker();
  }

  #openResume(): DataFd {
    const { session, dataFd } = SimResumeSession.open(this, ++this.#sessions);
    this.#resume = session;
    this.#refWorker();
    return dataFd;
  }

  /** RESUMING -> STOP: the session loads what it was given, or refuses it (the device stays in RESUMING). */
  async #finishResume(): Promise<void> {
    let result: SimResumeResult;
    try {
      result = await this.#resume!.finish();
    } catch (e) {
      if (e instanceof RefusedResume) this.#lastResume = e.result;
      throw e;
    }
    this.#lastResume = result;
    this.#loads++;
    this.#resume = undefined;
    this.#refWorker();
  }

  async #endResume(): Promise<void> {
    const s = this.#resume;
    if (!s) return;
    await s.end();
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
