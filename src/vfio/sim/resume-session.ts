// The simulator's resuming session (RESUMING): the data_fd is a pipe's write end; the
// worker reads the other end, verifies every record, and says at the exit from RESUMING
// whether the stream was complete. See device.ts for fail=write-error's damaged load.
import { closeSync, setNonBlocking, setPipeSize } from '../../native/index.js';
import type { DataFd } from '../device.js';
import { Errno } from '../uapi.js';
import { NOT_SENT } from './content.js';
import { CTRL_CANCELLED, CTRL_FINISH_REQ, type ResumeMsg, type ResumeStatusMsg } from './protocol.js';
import { ArcFailure, PIPE_SIZE, type SessionCtl, SimDataFd, type SimContent, newCtl, newPipe, setupErrno, signal } from './session.js';
import type { SimConfig } from './spec.js';

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

/** What a resuming session needs from its device. */
export interface ResumeHost {
  readonly id: string;
  readonly config: SimConfig;
  readonly content: SimContent;
  /** Hands the session's read end to the worker (it closes it when the session ends). */
  postResume(msg: ResumeMsg): void;
}

export class SimResumeSession {
  readonly ctl: SessionCtl;
  #waiters: ((m: ResumeStatusMsg) => void)[] = [];
  readonly #done: Promise<void>;
  #markDone!: () => void;

  private constructor(private readonly host: ResumeHost, id: number) {
    this.ctl = newCtl(id);
    this.#done = new Promise<void>((res) => (this.#markDone = res));
  }

  /** Opens a session (STOP -> RESUMING's new data_fd). */
  static open(host: ResumeHost, id: number): { session: SimResumeSession; dataFd: DataFd } {
    const [r, w] = newPipe();
    const cutAt = host.config.faults.find((f) => f.kind === 'write-error')?.at ?? -1;
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
    const s = new SimResumeSession(host, id);
    host.postResume({
      type: 'resume',
      session: id,
      ctrl: s.ctl.sab,
      fd: r,
      size: host.content.size,
      eioAt: host.config.faults.find((f) => f.kind === 'eio')?.at ?? -1,
      cutAt,
    });
    return { session: s, dataFd: new SimDataFd(w, 'resume', host.id, async () => undefined) };
  }

  /** The worker's answer to a finish request (or its failure). */
  status(m: ResumeStatusMsg): void {
    const ws = this.#waiters;
    this.#waiters = [];
    for (const w of ws) w(m);
  }

  /** The worker let go of the session (closed its read end). */
  markDone(): void {
    this.#markDone();
  }

  /**
   * RESUMING -> STOP: load and validate what was written so far (mtty: EINVAL and stay in
   * RESUMING if short). Returns what the device now holds; throws ArcFailure when refused.
   */
  async finish(): Promise<SimResumeResult> {
    const content = this.host.content;
    const faults = this.host.config.faults;
    const status = await new Promise<ResumeStatusMsg>((resolve) => {
      this.#waiters.push(resolve);
      signal(this.ctl, CTRL_FINISH_REQ);
    });
    if (status.phase === 'complete' && !faults.some((f) => f.kind === 'bad-resume')) {
      const givenSeed = this.host.config.seedGiven ? { givenSeed: this.host.config.seed } : {};
      content.seed = status.seed!;
      content.gens.set(status.gens!);
      content.regs.set(status.regs!);
      await this.end();
      return { verified: true, bytes: status.bytes, digest: status.digest!, sourceSeed: status.seed!, ...givenSeed, loaded: true };
    }
    if (status.cut && (status.phase === 'header' || status.phase === 'records')) {
      const result = this.#loadDamaged(status);
      await this.end();
      return result;
    }
    const reason =
      status.phase === 'complete'
        ? 'injected rejection of a valid stream (fail=bad-resume)'
        : status.phase === 'corrupt' || status.phase === 'failed'
          ? status.reason ?? status.phase
          : `stream incomplete: ${status.bytes} bytes received, ${status.phase === 'header' ? 'no header yet' : 'no END record yet'}`;
    throw new RefusedResume({ verified: false, bytes: status.bytes, reason, loaded: false }, status.phase === 'failed' ? status.errno ?? Errno.EIO : Errno.EINVAL);
  }

  /**
   * fail=write-error: the exit from RESUMING succeeds on an incomplete stream and the device
   * takes it as its state, as mtty loads a header it failed with EFAULT: the stream's seed
   * (once its header arrived), the blocks that arrived whole; every other block is lost
   * (generation NOT_SENT: its content is garbage and a later save cannot be restored), and
   * the registers are zero unless their record arrived.
   */
  #loadDamaged(status: ResumeStatusMsg): SimResumeResult {
    const { gens, regs } = this.host.content;
    if (status.seed !== undefined) this.host.content.seed = status.seed;
    gens.fill(NOT_SENT);
    if (status.gens && status.gens.length === gens.length) gens.set(status.gens);
    regs.fill(0);
    if (status.regs) regs.set(status.regs);
    let whole = 0;
    for (const g of gens) if (g !== NOT_SENT) whole++;
    const at = this.host.config.faults.find((f) => f.kind === 'write-error')!.at;
    return {
      verified: false,
      loaded: true,
      bytes: status.bytes,
      reason:
        `loaded a damaged state (fail=write-error@${at}): writes failed after ${at} bytes, the exit from RESUMING took the ${status.bytes} bytes received ` +
        `(${status.phase === 'header' ? 'no header' : `${whole} of ${gens.length} blocks whole`}, registers ${status.regs ? 'received' : 'zeroed'}, no END record)`,
    };
  }

  /** The session ends: the worker stops reading and closes its end. */
  async end(): Promise<void> {
    signal(this.ctl, CTRL_CANCELLED);
    await this.#done;
  }
}

/** The exit from RESUMING refused the stream: the arc fails with `errno`, `result` says why. */
export class RefusedResume extends ArcFailure {
  constructor(
    readonly result: SimResumeResult,
    errno: number,
  ) {
    super(errno, result.reason!);
  }
}
