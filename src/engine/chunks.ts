// Reads one data_fd ahead of the stream writer: up to `readAhead` chunks in buffers owned
// by this reader (allocated once), so a device whose END section is not being written yet
// keeps its data flowing without unbounded memory, and no reader can starve another of
// buffers (each has its own).
import type { IoEngine } from '../native/index.js';

export interface Chunk {
  readonly data: Buffer;
  release(): void;
}

export interface ChunkReaderOptions {
  readonly chunkSize: number;
  readonly readAhead: number;
  /** Per-read deadline. */
  readonly timeoutMs: number;
  /** Turns a read failure into the error the consumer sees (adds device context). */
  readonly onError: (e: unknown) => Error;
}

export class ChunkReader {
  private readonly free: Buffer[] = [];
  private readonly filled: Chunk[] = [];
  private bufferedBytes = 0;
  private eof = false;
  private error: Error | undefined;
  private stopped = false;
  private wake: (() => void) | undefined;
  private freeWake: (() => void) | undefined;

  constructor(
    private readonly io: IoEngine,
    private readonly fd: number,
    private readonly opts: ChunkReaderOptions,
  ) {
    for (let i = 0; i < Math.max(1, opts.readAhead); i++) this.free.push(Buffer.allocUnsafe(opts.chunkSize));
  }

  start(): void {
    void this.loop();
  }

  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  private async loop(): Promise<void> {
    try {
      while (!this.stopped) {
        let buf = this.free.pop();
        if (!buf) {
          await new Promise<void>((r) => (this.freeWake = r));
          continue;
        }
        const n = await this.io.readInto(this.fd, buf, { timeoutMs: this.opts.timeoutMs });
        if (n === 0) {
          this.free.push(buf);
          this.eof = true;
          break;
        }
        const owned = buf;
        this.filled.push({
          data: owned.subarray(0, n),
          release: () => {
            this.free.push(owned);
            const fw = this.freeWake;
            this.freeWake = undefined;
            fw?.();
          },
        });
        this.bufferedBytes += n;
        buf = undefined;
        this.notify();
      }
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

  /** EOF reached and every chunk taken. */
  finished(): boolean {
    return this.eof && this.filled.length === 0;
  }

  stop(): void {
    this.stopped = true;
    const fw = this.freeWake;
    this.freeWake = undefined;
    fw?.();
  }
}
