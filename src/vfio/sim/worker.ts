// The simulated device's data engine, one worker thread per device, beside the JS thread:
// - save jobs: generate stream bytes and write them with blocking writes into the write
//   end of the session pipe (rate, per-chunk latency, EIO and stall faults), then close
//   that write end (a temporary end in PRE_COPY, the final EOF in STOP_COPY);
// - resume: drain the read end of the resume pipe (non-blocking reads with a short
//   backoff, so it can answer the device's "finish" request once everything written so
//   far is consumed), check every record against the seed, report a verdict.
// Control: see protocol.ts.
import { closeSync, readSync, writeSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import {
  BLOCK_SIZE,
  END_PAYLOAD_SIZE,
  HEADER_SIZE,
  NOT_SENT,
  RECORD_HEADER_SIZE,
  REGS_SIZE,
  Tag,
  blockCount,
  blockLength,
  decodeHeader,
  encodeRecordHeader,
  fillBlock,
  stateDigest,
} from './content.js';
import {
  CTRL_BYTES_OFFSET,
  CTRL_CANCELLED,
  CTRL_FINISH_REQ,
  CTRL_SIGNAL,
  CTRL_WRITING,
  type JobStatus,
  type ResumeMsg,
  type ResumePhase,
  type ResumeStatusMsg,
  type SaveJobMsg,
  type WorkerReply,
} from './protocol.js';

class Cancelled extends Error {}
class Failed extends Error {
  constructor(
    readonly errno: number,
    message: string,
  ) {
    super(message);
  }
}

function post(m: WorkerReply): void {
  parentPort!.postMessage(m);
}

function sleep(ctrl: Int32Array, ms: number): void {
  if (ms <= 0) return;
  const s = Atomics.load(ctrl, CTRL_SIGNAL);
  if (Atomics.load(ctrl, CTRL_CANCELLED)) return;
  Atomics.wait(ctrl, CTRL_SIGNAL, s, ms);
}

// ---------------------------------------------------------------------------- save

interface SaveSession {
  id: number;
  t0: number;
  written: number;
  failed?: { errno: number; message: string };
}
let saveSession: SaveSession | undefined;
let staging: Buffer | undefined;
const scratch = Buffer.from(new ArrayBuffer(BLOCK_SIZE));

function runSave(m: SaveJobMsg): void {
  const ctrl = new Int32Array(m.ctrl, 0, 4);
  const counter = new BigInt64Array(m.ctrl, CTRL_BYTES_OFFSET, 1);
  if (!saveSession || saveSession.id !== m.session) saveSession = { id: m.session, t0: -1, written: 0 };
  const st = saveSession;
  let status: JobStatus = 'ok';
  let message: string | undefined;
  try {
    if (Atomics.load(ctrl, CTRL_CANCELLED)) throw new Cancelled();
    if (st.failed) throw new Failed(st.failed.errno, st.failed.message);
    if (!staging || staging.length !== m.chunk) staging = Buffer.from(new ArrayBuffer(m.chunk));
    const buf = staging;
    let fill = 0;

    const flush = (): void => {
      if (fill === 0) return;
      if (Atomics.load(ctrl, CTRL_CANCELLED)) throw new Cancelled();
      if (m.latencyMs > 0) sleep(ctrl, m.latencyMs);
      if (st.t0 < 0) st.t0 = performance.now();
      if (m.rate > 0) {
        const due = st.t0 + ((st.written + fill) / m.rate) * 1000;
        for (let now = performance.now(); now < due && !Atomics.load(ctrl, CTRL_CANCELLED); now = performance.now()) sleep(ctrl, due - now);
      }
      if (Atomics.load(ctrl, CTRL_CANCELLED)) throw new Cancelled();
      let n = fill;
      let fault: 'eio' | 'stall' | undefined;
      if (m.stallAt >= 0 && st.written + n > m.stallAt) {
        n = Math.max(0, m.stallAt - st.written);
        fault = 'stall';
      }
      if (m.eioAt >= 0 && st.written + n > m.eioAt) {
        n = Math.max(0, m.eioAt - st.written);
        fault = 'eio';
      }
      // The write end is non-blocking: a write deposits what fits and returns at once, so the
      // counter is exact whenever CTRL_WRITING is 0 (a blocking write could sit with part of
      // its bytes in the pipe and none counted, and the device's unread-byte figures came
      // out too high). A full pipe is waited out with CTRL_WRITING at 0.
      let off = 0;
      let backoffMs = 0.05;
      while (off < n) {
        let k = 0;
        Atomics.store(ctrl, CTRL_WRITING, 1);
        try {
          k = writeSync(m.fd, buf, off, n - off);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
        } finally {
          st.written += k;
          Atomics.store(counter, 0, BigInt(st.written));
          Atomics.store(ctrl, CTRL_WRITING, 0);
        }
        off += k;
        if (k > 0) {
          backoffMs = 0.05;
          continue;
        }
        if (Atomics.load(ctrl, CTRL_CANCELLED)) throw new Cancelled();
        sleep(ctrl, backoffMs);
        backoffMs = Math.min(1, backoffMs * 2);
      }
      fill = 0;
      if (fault === 'eio') {
        st.failed = { errno: 5, message: `injected EIO at stream offset ${st.written} (fail=eio@${m.eioAt})` };
        throw new Failed(5, st.failed.message);
      }
      if (fault === 'stall') {
        // A hung device: keep the write end open, produce nothing until the session ends.
        while (!Atomics.load(ctrl, CTRL_CANCELLED)) sleep(ctrl, 1000);
        throw new Cancelled();
      }
    };
    const put = (src: Buffer | Uint8Array): void => {
      let at = 0;
      while (at < src.length) {
        const n = Math.min(src.length - at, buf.length - fill);
        buf.set(src.subarray(at, at + n), fill);
        fill += n;
        at += n;
        if (fill === buf.length) flush();
      }
    };

    if (m.prefix) put(m.prefix);
    const hdr = Buffer.alloc(RECORD_HEADER_SIZE);
    for (let i = 0; i < m.blocks.length; i += 2) {
      const b = m.blocks[i]!;
      const g = m.blocks[i + 1]!;
      const len = blockLength(m.size, b);
      encodeRecordHeader(hdr, 0, Tag.BLOK, b, g, len);
      put(hdr);
      fillBlock(scratch, m.seed, b, g, len);
      put(scratch.subarray(0, len));
    }
    if (m.suffix) put(m.suffix);
    flush();
  } catch (e) {
    if (e instanceof Cancelled) status = 'cancelled';
    else if (e instanceof Failed) {
      status = e.errno === 5 ? 'eio' : 'failed';
      message = e.message;
    } else {
      status = 'failed';
      message = (e as Error).message;
    }
  } finally {
    try {
      closeSync(m.fd);
    } catch {
      /* already closed */
    }
  }
  post({ type: 'jobDone', session: m.session, job: m.job, status, written: st.written, ...(message ? { message } : {}) });
}

// ---------------------------------------------------------------------------- resume

class ResumeParser {
  phase: ResumePhase = 'header';
  bytes = 0;
  reason?: string;
  errno?: number;
  seed = 0n;
  size = 0;
  gens: Uint32Array = new Uint32Array(0);
  regs: Uint8Array | undefined;
  digest?: bigint;
  #pending = Buffer.alloc(HEADER_SIZE);
  #pendingFill = 0;
  #need = HEADER_SIZE;
  #rec: { tag: number; index: number; gen: number; length: number; at: number } | undefined;
  #payloadPos = 0;
  #expected = Buffer.from(new ArrayBuffer(BLOCK_SIZE));
  #small = Buffer.alloc(Math.max(REGS_SIZE, END_PAYLOAD_SIZE));

  constructor(readonly deviceSize: number) {}

  corrupt(reason: string): void {
    this.phase = 'corrupt';
    this.errno = 22;
    this.reason = reason;
  }

  /** Consumes bytes; stops early (and records why) on the first bad byte. */
  feed(data: Buffer): void {
    let at = 0;
    while (at < data.length && (this.phase === 'header' || this.phase === 'records' || this.phase === 'complete')) {
      if (this.phase === 'complete') {
        this.corrupt(`trailing data at stream offset ${this.bytes} after the END record`);
        return;
      }
      if (this.#rec && this.#payloadPos < this.#rec.length) {
        const n = Math.min(data.length - at, this.#rec.length - this.#payloadPos);
        const chunk = data.subarray(at, at + n);
        if (this.#rec.tag === Tag.BLOK) {
          const exp = this.#expected.subarray(this.#payloadPos, this.#payloadPos + n);
          if (!chunk.equals(exp)) {
            let k = 0;
            while (chunk[k] === exp[k]) k++;
            this.corrupt(`block ${this.#rec.index} gen ${this.#rec.gen}: content differs at stream offset ${this.bytes + k}`);
            return;
          }
        } else {
          chunk.copy(this.#small, this.#payloadPos);
        }
        this.#payloadPos += n;
        this.bytes += n;
        at += n;
        if (this.#payloadPos === this.#rec.length) this.#endRecord();
        continue;
      }
      const n = Math.min(data.length - at, this.#need - this.#pendingFill);
      data.copy(this.#pending, this.#pendingFill, at, at + n);
      this.#pendingFill += n;
      this.bytes += n;
      at += n;
      if (this.#pendingFill < this.#need) continue;
      this.#pendingFill = 0;
      if (this.phase === 'header') this.#header();
      else this.#recordHeader();
    }
  }

  #header(): void {
    try {
      const h = decodeHeader(this.#pending.subarray(0, HEADER_SIZE));
      if (h.size !== this.deviceSize) {
        this.corrupt(`stream holds a ${h.size}-byte state, this device has ${this.deviceSize} bytes`);
        return;
      }
      this.seed = h.seed;
      this.size = h.size;
      this.gens = new Uint32Array(blockCount(h.size)).fill(NOT_SENT);
      this.phase = 'records';
      this.#need = RECORD_HEADER_SIZE;
    } catch (e) {
      this.corrupt((e as Error).message);
    }
  }

  #recordHeader(): void {
    const p = this.#pending;
    const rec = { tag: p.readUInt32LE(0), index: p.readUInt32LE(4), gen: p.readUInt32LE(8), length: p.readUInt32LE(12), at: this.bytes - RECORD_HEADER_SIZE };
    const where = `record at stream offset ${rec.at}`;
    if (rec.tag === Tag.BLOK) {
      if (rec.index >= this.gens.length) return this.corrupt(`${where}: block ${rec.index} out of range (${this.gens.length} blocks)`);
      if (rec.length !== blockLength(this.size, rec.index)) return this.corrupt(`${where}: block ${rec.index} length ${rec.length}`);
      if (rec.gen === NOT_SENT) return this.corrupt(`${where}: invalid generation`);
      const prev = this.gens[rec.index]!;
      if (prev !== NOT_SENT && rec.gen < prev) return this.corrupt(`${where}: block ${rec.index} generation went back from ${prev} to ${rec.gen}`);
      fillBlock(this.#expected, this.seed, rec.index, rec.gen, rec.length);
    } else if (rec.tag === Tag.REGS) {
      if (rec.length !== REGS_SIZE) return this.corrupt(`${where}: register record length ${rec.length}`);
    } else if (rec.tag === Tag.END) {
      if (rec.length !== END_PAYLOAD_SIZE) return this.corrupt(`${where}: END record length ${rec.length}`);
    } else {
      return this.corrupt(`${where}: unknown record tag 0x${rec.tag.toString(16)}`);
    }
    this.#rec = rec;
    this.#payloadPos = 0;
    if (rec.length === 0) this.#endRecord();
  }

  #endRecord(): void {
    const rec = this.#rec!;
    this.#rec = undefined;
    if (rec.tag === Tag.BLOK) {
      this.gens[rec.index] = rec.gen;
    } else if (rec.tag === Tag.REGS) {
      this.regs = new Uint8Array(this.#small.subarray(0, REGS_SIZE));
    } else {
      const digest = this.#small.readBigUInt64LE(0);
      const blocks = this.#small.readUInt32LE(8);
      if (blocks !== this.gens.length) return this.corrupt(`END record: ${blocks} blocks, stream header implies ${this.gens.length}`);
      const missing = this.gens.indexOf(NOT_SENT);
      if (missing >= 0) return this.corrupt(`END record at stream offset ${rec.at}: block ${missing} never received`);
      if (!this.regs) return this.corrupt(`END record at stream offset ${rec.at}: no register record`);
      const mine = stateDigest(this.seed, this.size, this.gens, this.regs);
      if (mine !== digest) return this.corrupt(`END record: state digest ${mine.toString(16)} != source's ${digest.toString(16)}`);
      this.digest = digest;
      this.phase = 'complete';
    }
  }
}

function runResume(m: ResumeMsg): void {
  const ctrl = new Int32Array(m.ctrl, 0, 4);
  const counter = new BigInt64Array(m.ctrl, CTRL_BYTES_OFFSET, 1);
  const p = new ResumeParser(m.size);
  const buf = Buffer.allocUnsafeSlow(1 << 20);
  let fdOpen = true;
  let handled = 0;
  // fail=write-error@SIZE: bytes taken from the pipe; at cutAt the device stops reading.
  let taken = 0;
  let cut = false;
  let backoff = 0.02;
  const closeFd = (): void => {
    if (!fdOpen) return;
    fdOpen = false;
    try {
      closeSync(m.fd);
    } catch {
      /* already closed */
    }
  };
  const report = (req: number): void => {
    handled = req;
    const msg: ResumeStatusMsg = { type: 'resumeStatus', session: m.session, req, phase: p.phase, bytes: p.bytes };
    if (p.reason !== undefined) msg.reason = p.reason;
    if (p.errno !== undefined) msg.errno = p.errno;
    if (p.phase === 'complete') {
      msg.seed = p.seed;
      msg.size = p.size;
      msg.gens = p.gens.slice();
      msg.regs = p.regs!.slice();
      msg.digest = p.digest!;
    } else if (cut && p.phase === 'records') {
      // What a damaged load takes: the header's seed, the blocks that arrived whole.
      msg.seed = p.seed;
      msg.size = p.size;
      msg.gens = p.gens.slice();
      if (p.regs) msg.regs = p.regs.slice();
    }
    if (cut) msg.cut = true;
    post(msg);
  };
  // Stops reading for good: bytes still in the pipe are dropped and every later write
  // fails with EPIPE (the pipe has one page under this fault, so at most 4 KiB written
  // past cutAt are accepted without an error).
  const cutHere = (): void => {
    cut = true;
    closeFd();
  };
  if (m.cutAt === 0) cutHere();
  for (;;) {
    if (Atomics.load(ctrl, CTRL_CANCELLED)) break;
    const req = Atomics.load(ctrl, CTRL_FINISH_REQ);
    let n = 0;
    if (fdOpen) {
      try {
        n = readSync(m.fd, buf, 0, m.cutAt >= 0 ? Math.min(buf.length, m.cutAt - taken) : buf.length, null);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') {
          p.phase = 'failed';
          p.errno = 5;
          p.reason = `resume pipe read failed: ${(e as Error).message}`;
          closeFd();
        }
        n = 0;
      }
    }
    if (n > 0) {
      let data = buf.subarray(0, n);
      if (m.eioAt >= 0 && p.bytes + n > m.eioAt) data = data.subarray(0, Math.max(0, m.eioAt - p.bytes));
      p.feed(data);
      if (p.phase !== 'corrupt' && data.length < n) {
        p.phase = 'failed';
        p.errno = 5;
        p.reason = `injected EIO at stream offset ${p.bytes} (fail=eio@${m.eioAt})`;
      }
      Atomics.store(counter, 0, BigInt(p.bytes));
      // A rejected stream: stop taking bytes, so the writer gets EPIPE at once (mtty
      // fails the write that carries a bad header with EFAULT).
      if (p.phase === 'corrupt' || p.phase === 'failed') closeFd();
      taken += n;
      if (fdOpen && m.cutAt >= 0 && taken >= m.cutAt) cutHere();
      backoff = 0.02;
      continue;
    }
    // Nothing readable now (EAGAIN, or 0 when the writer closed its end).
    if (req !== handled) {
      report(req);
      continue;
    }
    // Idle: poll again soon while the pipe is open (writers give no wake-up); once the
    // fd is closed only a finish or cancel request (which notify SIGNAL) matters.
    sleep(ctrl, fdOpen ? backoff : 1000);
    backoff = Math.min(backoff * 2, 2);
  }
  closeFd();
  post({ type: 'resumeDone', session: m.session });
}

parentPort!.on('message', (m: SaveJobMsg | ResumeMsg) => {
  if (m.type === 'save') runSave(m);
  else if (m.type === 'resume') runResume(m);
});
