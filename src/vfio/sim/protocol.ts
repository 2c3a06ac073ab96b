// Messages and shared control words between a simulated device and its worker thread.
// Control is a SharedArrayBuffer per session: [SIGNAL, CANCELLED, FINISH_REQ, WRITING] Int32 +
// one BigInt64 byte counter at offset 16 (bytes written / consumed).
export const CTRL_SIGNAL = 0;
export const CTRL_CANCELLED = 1;
export const CTRL_FINISH_REQ = 2;
/** 1 while the producer is inside one non-blocking write() (its byte counter lags the pipe until it is 0 again). */
export const CTRL_WRITING = 3;
export const CTRL_BYTES_OFFSET = 16;
export const CTRL_BYTES = 24;

export interface SaveJobMsg {
  type: 'save';
  session: number;
  job: number;
  ctrl: SharedArrayBuffer;
  fd: number;
  seed: bigint;
  size: number;
  prefix: Uint8Array | null;
  /** [block, gen] pairs. */
  blocks: Uint32Array;
  suffix: Uint8Array | null;
  rate: number;
  latencyMs: number;
  chunk: number;
  /** Stream offset where the device fails with EIO / stalls; -1 = never. */
  eioAt: number;
  stallAt: number;
}

export interface ResumeMsg {
  type: 'resume';
  session: number;
  ctrl: SharedArrayBuffer;
  fd: number;
  /** The device's state size: a stream for another size is rejected. */
  size: number;
  eioAt: number;
  /** fail=write-error@SIZE: stream bytes the device takes before it stops reading (-1 = never). */
  cutAt: number;
}

export type JobStatus = 'ok' | 'cancelled' | 'eio' | 'failed';
export interface JobDoneMsg {
  type: 'jobDone';
  session: number;
  job: number;
  status: JobStatus;
  /** Session stream bytes written when the job ended. */
  written: number;
  message?: string;
}

export type ResumePhase = 'header' | 'records' | 'complete' | 'corrupt' | 'failed';
export interface ResumeStatusMsg {
  type: 'resumeStatus';
  session: number;
  /** FINISH_REQ value this answers. */
  req: number;
  phase: ResumePhase;
  bytes: number;
  reason?: string;
  errno?: number;
  /**
   * fail=write-error tripped: the device stopped reading at cutAt (writes now fail) and
   * reports what it parsed so far (seed/size once the header arrived, gens with NOT_SENT
   * for blocks that did not arrive, regs if their record did), for a damaged load.
   */
  cut?: boolean;
  seed?: bigint;
  size?: number;
  gens?: Uint32Array;
  regs?: Uint8Array;
  digest?: bigint;
}
export interface ResumeDoneMsg {
  type: 'resumeDone';
  session: number;
}
export type WorkerReply = JobDoneMsg | ResumeStatusMsg | ResumeDoneMsg;

