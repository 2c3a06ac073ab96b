// The simulator's saving session (PRE_COPY* and STOP_COPY): one pipe whose read end is
// the data_fd, fed in rounds by the worker. See device.ts for how the rounds and the
// session end look to a reader.
import { constants as fsc, openSync, readSync } from 'node:fs';
import { closeSync, ioctlSync, setPipeSize } from '../../native/index.js';
import type { DataFd } from '../device.js';
import { VfioDeviceError } from '../device.js';
import { Errno } from '../uapi.js';
import { BLOCK_SIZE, END_RECORD_BYTES, NOT_SENT, REGS_RECORD_BYTES, blockRecordBytes, encodeEndRecord, encodeHeader, encodeRegsRecord } from './content.js';
import { CTRL_CANCELLED, CTRL_WRITING, type JobDoneMsg, type SaveJobMsg } from './protocol.js';
import { ArcFailure, PIPE_SIZE, type SessionCtl, SimDataFd, type SimContent, delay, newCtl, newPipe, setupErrno, signal } from './session.js';
import type { SimConfig } from './spec.js';
import { InternalError } from '../../errors.js';

const FIONREAD = 0x541b;

/** What a saving session needs from its device. */
export interface SaveHost {
  readonly id: string;
  readonly config: SimConfig;
  readonly content: SimContent;
  stateDigest(): bigint;
  /** Hands a round to the worker (it closes `msg.fd` when done); resolves with its outcome. */
  postSaveJob(msg: Omit<SaveJobMsg, 'job'>): Promise<JobDoneMsg>;
}

export class SimSaveSession {
  readonly ctl: SessionCtl;
  /** Generation of each block as queued in this session (NOT_SENT = never). */
  readonly #queuedGen: Uint32Array;
  #neverQueuedBytes: number;
  readonly #dirty = new Set<number>();
  #dirtyBytes = 0;
  #headerQueued = false;
  #queuedTotal = 0;
  #initialEnd = 0;
  #consumed = 0;
  #pendingJobs = 0;
  #jobsIdle: (() => void)[] = [];
  #finalJob: Promise<JobDoneMsg> | undefined;
  #stopCopyBytes = 0;
  /** The producer failed (EIO injected, worker lost): reads and PRECOPY_INFO report it. */
  fault: { errno: number; message: string } | undefined;
  #ended = false;
  /** The worker died during this session: write ends it was given may never be closed. */
  workerDied = false;

  private constructor(
    private readonly host: SaveHost,
    id: number,
    /** The data_fd: the read end handed to the caller. */
    readonly readFd: number,
    /** The device's own non-blocking read end: unread bytes, new write ends, the drain at the end. */
    private readonly privR: number,
  ) {
    this.ctl = newCtl(id);
    const nb = host.content.gens.length;
    this.#queuedGen = new Uint32Array(nb).fill(NOT_SENT);
    this.#neverQueuedBytes = nb * 16 + host.content.size;
  }

  /** Opens a session (the SET's new data_fd): the initial precopy round, or with !precopy the final one. */
  static open(host: SaveHost, id: number, precopy: boolean): { session: SimSaveSession; dataFd: DataFd } {
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
    // The producer's write end is reopened non-blocking; the pipe's own one goes first (no
    // reader has the data_fd yet, and the private read end keeps the pipe), so a session
    // needs no more fds than before.
    closeSync(w);
    let wNonBlocking: number;
    try {
      wNonBlocking = nonBlockingWriteEnd(privR);
    } catch (e) {
      closeSync(r);
      closeSync(privR);
      throw new ArcFailure(setupErrno(e), `cannot set up the data pipe: ${(e as Error).message}`);
    }
    const s = new SimSaveSession(host, id, r, privR);
    if (precopy) {
      const blocks = s.#takeBlocks(Math.ceil(host.config.precopy / BLOCK_SIZE), false);
      s.#initialEnd = s.#queue(wNonBlocking, blocks, false);
    } else {
      s.#queueFinal(wNonBlocking);
    }
    return { session: s, dataFd: new SimDataFd(r, 'save', host.id, () => s.#verifyEnd()) };
  }

  /** The running device dirtied block `b`: resent in a later round if it was queued already. */
  markDirty(b: number): void {
    if (this.#queuedGen[b] !== NOT_SENT && !this.#dirty.has(b)) {
      this.#dirty.add(b);
      this.#dirtyBytes += blockRecordBytes(this.host.content.size, b);
    }
  }

  /** PRECOPY_INFO: queues a round of the blocks dirtied since the last, then counts what is unread. */
  precopyInfo(): { initialBytes: number; dirtyBytes: number } {
    if (this.#dirty.size > 0) {
      const blocks = this.#takeBlocks(0, true);
      if (blocks.length) this.#queue(this.#newWriteEnd(), blocks, false);
    }
    this.#consumed = Math.max(this.#consumed, this.#consumedBytes());
    return {
      initialBytes: Math.max(0, this.#initialEnd - this.#consumed),
      dirtyBytes: Math.max(0, this.#queuedTotal - Math.max(this.#consumed, this.#initialEnd)),
    };
  }

  /**
   * MIG_DATA_SIZE: the final round's bytes once in STOP_COPY; before, what a reader would
   * still have to read after the stop: the precopy data queued and not read yet (the data_fd
   * carries it on into STOP_COPY, as a kernel driver's does) plus what the final round would
   * carry now. Leaving the unread part out made save's downtime estimate 3x too low.
   */
  stopCopySize(inStopCopy: boolean): number {
    if (inStopCopy) return this.#stopCopyBytes;
    this.#consumed = Math.max(this.#consumed, this.#consumedBytes());
    const unread = Math.max(0, this.#queuedTotal - this.#consumed);
    return unread + this.#neverQueuedBytes + this.#dirtyBytes + REGS_RECORD_BYTES + END_RECORD_BYTES;
  }

  /** PRE_COPY* -> STOP_COPY: the final round, on a new write end of the same pipe. */
  stopCopy(): void {
    this.#queueFinal(this.#newWriteEnd());
  }

  /**
   * Bytes of the session stream the reader has taken: written - unread (FIONREAD on the
   * private read end). The producer's counter lags only inside one non-blocking write()
   * (CTRL_WRITING 1), which never waits for the reader, so the figure is read as a seqlock:
   * flag clear and counter unchanged around FIONREAD. The deadline only guards against a
   * producer thread descheduled inside that window on a loaded machine.
   */
  #consumedBytes(): number {
    const { ctrl, counter } = this.ctl;
    const unread = Buffer.alloc(4);
    const deadline = performance.now() + 2000;
    for (;;) {
      const writing = Atomics.load(ctrl, CTRL_WRITING);
      const written = Atomics.load(counter, 0);
      ioctlSync(this.privR, FIONREAD, unread);
      const pending = unread.readInt32LE(0);
      const stable = writing === 0 && Atomics.load(ctrl, CTRL_WRITING) === 0 && Atomics.load(counter, 0) === written;
      if (stable || performance.now() > deadline) return Number(written) - pending;
      Atomics.wait(ctrl, CTRL_WRITING, 1, 0.1);
    }
  }

  /** Picks blocks to queue: the first `limit` never-sent ones, or (dirty) the dirtied ones; records them as queued. */
  #takeBlocks(limit: number, dirtyOnly: boolean): Uint32Array {
    const { gens, size } = this.host.content;
    const out: number[] = [];
    const take = (b: number): void => {
      const g = gens[b]!;
      if (this.#queuedGen[b] === NOT_SENT) this.#neverQueuedBytes -= blockRecordBytes(size, b);
      this.#queuedGen[b] = g;
      out.push(b, g);
    };
    for (const b of [...this.#dirty].sort((a, c) => a - c)) take(b);
    this.#dirty.clear();
    this.#dirtyBytes = 0;
    if (!dirtyOnly) {
      for (let b = 0; b < gens.length && out.length / 2 < limit; b++) if (this.#queuedGen[b] === NOT_SENT) take(b);
    }
    return Uint32Array.from(out);
  }

  /** Queues one round on write end `fd` (closed by the worker when written); returns the new queued total. */
  #queue(fd: number, blocks: Uint32Array, final: boolean, suffix: Buffer | null = null): number {
    const { config, content } = this.host;
    const prefix = this.#headerQueued ? null : encodeHeader({ seed: content.seed, size: content.size, flags: config.flags });
    this.#headerQueued = true;
    let bytes = (prefix?.length ?? 0) + (suffix?.length ?? 0);
    for (let i = 0; i < blocks.length; i += 2) bytes += blockRecordBytes(content.size, blocks[i]!);
    this.#queuedTotal += bytes;
    if (final) this.#stopCopyBytes = bytes;
    this.#pendingJobs++;
    const done = this.host
      .postSaveJob({
        type: 'save',
        session: this.ctl.id,
        ctrl: this.ctl.sab,
        fd,
        seed: content.seed,
        size: content.size,
        prefix,
        blocks,
        suffix,
        rate: config.rate,
        latencyMs: config.latencyMs,
        chunk: config.chunk,
        eioAt: config.faults.find((f) => f.kind === 'eio')?.at ?? -1,
        stallAt: config.faults.find((f) => f.kind === 'stall')?.at ?? -1,
      })
      .then((m) => {
        this.#pendingJobs--;
        if (this.#pendingJobs === 0) for (const w of this.#jobsIdle.splice(0)) w();
        return m;
      });
    if (final) this.#finalJob = done;
    return this.#queuedTotal;
  }

  /** Everything not yet queued at its current generation, the register snapshot and END. */
  #queueFinal(fd: number): void {
    const all = this.#takeBlocks(this.host.content.gens.length, false);
    const suffix = Buffer.concat([encodeRegsRecord(this.host.content.regs), encodeEndRecord(this.host.stateDigest(), this.host.content.gens.length)]);
    this.#queue(fd, all, true, suffix);
  }

  /** A new write end on the session pipe, opened through the device's private read end. */
  #newWriteEnd(): number {
    return nonBlockingWriteEnd(this.privR);
  }

  async #verifyEnd(): Promise<void> {
    const id = this.host.id;
    if (this.#finalJob) {
      const r = await this.#finalJob;
      if (r.status === 'ok') return;
      if (r.status === 'cancelled') {
        throw new VfioDeviceError(id, 'read', Errno.ENODEV, { message: `the saving session ended after ${r.written} bytes, before the state was complete` });
      }
      throw new VfioDeviceError(id, 'read', this.fault?.errno ?? Errno.EIO, { message: r.message ?? 'device failed while producing its state' });
    }
    if (this.fault) throw new VfioDeviceError(id, 'read', this.fault.errno, { message: this.fault.message });
    if (this.#ended) throw new VfioDeviceError(id, 'read', Errno.ENODEV, { message: 'the saving session ended before STOP_COPY' });
  }

  /** The session ends: the worker stops, unread data is discarded, reads get EOF. */
  async end(): Promise<void> {
    this.#ended = true;
    signal(this.ctl, CTRL_CANCELLED);
    const scratch = Buffer.allocUnsafe(PIPE_SIZE);
    const drain = (): boolean => {
      // Returns true at EOF (no write end left and nothing buffered).
      for (;;) {
        try {
          if (readSync(this.privR, scratch, 0, scratch.length, null) === 0) return true;
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return false;
          throw e;
        }
      }
    };
    // A worker blocked in write() on a full pipe needs room to notice the cancel.
    while (this.#pendingJobs > 0) {
      drain();
      await Promise.race([new Promise<void>((r) => this.#jobsIdle.push(r)), delay(2)]);
    }
    // A worker that died after it started may have taken write ends of this pipe with it
    // (its 'error' can arrive before or after it began loading, so which ends it closed is
    // not known and closing them here could close a reused fd number): no EOF is coming,
    // and the pipe goes with its read end. Measured under load: an EMFILE while the worker
    // loaded its modules, after its 'online' event.
    for (let i = 0; !this.workerDied && !drain(); i++) {
      if (i > 1000) throw new InternalError(`saving pipe of ${this.host.id} still has a writer after the session ended`);
      await delay(1);
    }
    closeSync(this.privR);
  }
}

/** A write end of the session pipe with its own O_NONBLOCK file description (see the worker's write loop). */
function nonBlockingWriteEnd(privR: number): number {
  return openSync(`/proc/self/fd/${privR}`, fsc.O_WRONLY | fsc.O_NONBLOCK);
}
