// Reads one data_fd ahead of the stream writer into the io engine's registered buffer
// pool (READ_FIXED on io_uring): one read in flight per fd (reads of one pipe must stay
// in order), at most `quota` pool buffers held at once (being read, waiting to be
// written, or being written by the sink). The pool is the one bound on data memory for
// reads and writes alike; the caller sets quotas so that their sum fits the pool, which
// is what keeps one device's read-ahead from starving the device being written.
import { MigbridgeError } from '../errors.js';
import type { IoEngine, PooledBuffer } from '../native/index.js';

export interface Chunk {
  readonly data: Buffer;
  /** Returns the buffer to the pool (after the sink wrote it). Idempotent. */
  release(): void;
}

export interface ChunkReaderOptions {
  readonly chunkSize: number;
  /** Pool buffers this reader may hold at once (0 = none for now; raise it with setQuota). */
  readonly quota: number;
  /** Per-read deadline. */
  readonly timeoutMs: number;
  /** Stop after this many bytes (a precopy round reads what PRECOPY_INFO reported). Default: until EOF. */
  readonly limit?: number;
  /** ENOMSG ends the data like EOF (a PRE_COPY data_fd with nothing more for now). */
  readonly enomsgIsEnd?: boolean;
  /** Turns a read failure into the error the consumer sees (adds device context). */
  readonly onError: (e: unknown) => Error;
  /** Told every read's size as it completes (progress: what came off the data_fd, written or not yet). */
  readonly onRead?: (bytes: number) => void;
}

export class ChunkReader {
  private readonly filled: Chunk[] = [];
  private held = 0;
  private quota: number;
  private bufferedBytes = 0;
  private got = 0;
  private eof = false;
  private error: Error | undefined;
  private stopped = false;
  private wake: (() => void) | undefined;
  private roomWake: (() => void) | undefined;

  constructor(
    private readonly io: IoEngine,
    private readonly fd: number,
    private readonly opts: ChunkReaderOptions,
  ) {
    this.quota = opts.quota;
  }

  start(): void {
    void this.loop();
  }

  /** Changes how many pool buffers this reader may hold (e.g. when it becomes the one being written). */
  setQuota(quota: number): void {
    this.quota = quota;
    this.wakeRoom();
  }

  /** Pool buffers this reader may hold now. */
  get quotaNow(): number {
    return this.quota;
  }

  /** Bytes read so far. */
  get bytesRead(): number {
    return this.got;
  }

  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  private wakeRoom(): void {
    const fw = this.roomWake;
    this.roomWake = undefined;
    fw?.();
  }

  private async loop(): Promise<void> {
    const limit = this.opts.limit ?? Number.POSITIVE_INFINITY;
    try {
      while (!this.stopped && this.got < limit) {
        if (this.held >= this.quota) {
          await new Promise<void>((r) => (this.roomWake = r));
          continue;
        }
        this.held++;
        let piece: PooledBuffer;
        try {
          piece = await this.io.read(this.fd, { length: Math.min(this.opts.chunkSize, limit - this.got), timeoutMs: this.opts.timeoutMs });
        } catch (e) {
          this.held--;
          if (this.opts.enomsgIsEnd && e instanceof MigbridgeError && e.code === 'ENOMSG') break;
          throw e;
        }
        const n = piece.data.length;
        if (n === 0 || this.stopped) {
          piece.release();
          this.held--;
          if (n === 0) break;
          continue;
        }
        let released = false;
        this.filled.push({
          data: piece.data,
          release: () => {
            if (released) return;
            released = true;
            piece.release();
            this.held--;
            this.wakeRoom();
          },
        });
        this.got += n;
        this.bufferedBytes += n;
        this.opts.onRead?.(n);
        this.notify();
      }
      this.eof = true;
    } catch (e) {
      this.error = this.opts.onError(e);
    }
    this.notify();
  }

  /** How attractive this reader is to drain now: Infinity when complete, else bytes buffered. */
  score(): number {
    if (this.eof || this.error) return Number.POSITIVE_INFINITY;
    return this.bufferedBytes;
  }

  /** Resolves when something changed (data, EOF or an error). */
  ready(): Promise<void> {
    if (this.filled.length || this.eof || this.error) return Promise.resolve();
    return new Promise((r) => {
      const prev = this.wake;
      this.wake = () => {
        prev?.();
        r();
      };
    });
  }

  /** Next chunk in order, or null at EOF. Throws the read error, if any, once the data before it is consumed. */
  async next(): Promise<Chunk | null> {
    for (;;) {
      const c = this.filled.shift();
      if (c) {
        this.bufferedBytes -= c.data.length;
        return c;
      }
      if (this.error) throw this.error;
      if (this.eof) return null;
      await this.ready();
    }
  }

  /** Every chunk buffered now (possibly none); throws the read error once the data before it is taken. */
  takeReady(): Chunk[] {
    const out = this.filled.splice(0);
    for (const c of out) this.bufferedBytes -= c.data.length;
    if (!out.length && this.error) throw this.error;
    return out;
  }

  /** EOF (or the limit) reached and every chunk taken. */
  finished(): boolean {
    return this.eof && this.filled.length === 0;
  }

  /** Stops reading; chunks not taken yet go back to the pool. */
  stop(): void {
    this.stopped = true;
    for (const c of this.filled.splice(0)) c.release();
    this.bufferedBytes = 0;
    this.wakeRoom();
  }
}
