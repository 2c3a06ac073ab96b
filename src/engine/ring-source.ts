// A restore's input read through the io engine into its registered buffer pool: the pool
// buffers themselves go to the decoder, so DATA_STATE payloads are slices of them and go
// out to the data_fds from the same memory (WRITE_FIXED on io_uring; no copy in
// JavaScript, no Buffer allocated per read, no fstat per read: a file is read at explicit
// offsets, a pipe or socket at its position). A pool buffer goes back to the pool once the
// decoder moved past it (RecyclingByteSource.held) and every write of a slice of it
// completed (IoEngine.retain), so the one pool bounds the reads and the writes together.
import { closeSync, constants, openSync } from 'node:fs';
import type { IoEngine } from '../native/index.js';
import type { RecyclingByteSource } from '../qemu/reader.js';

interface Held {
  readonly data: Buffer;
  release(): void;
}

export interface RingSourceOptions {
  /** Bytes per read (at most the pool's buffer size; default 1 MiB). */
  readonly chunkSize?: number;
  /** A seekable file read at explicit offsets from here; omitted: the fd's position (pipes, sockets). */
  readonly offset?: number;
  /**
   * Pool buffers the decoder may hold at once (default 8). A record that needs more in
   * one piece (a large config blob) is read on into the heap, so the pool is never
   * exhausted by one waiting record while writes need it.
   */
  readonly maxHeld?: number;
  /** Closes the fd when the source ends or is destroyed. */
  readonly closeFd?: boolean;
  /**
   * Called once the source ended or was destroyed and no read of it is pending any more:
   * the owner of the fd (a socket's handle) closes it then, never under a read in flight.
   */
  readonly onClosed?: () => void;
}

export class RingByteSource implements RecyclingByteSource {
  readonly #io: IoEngine;
  readonly #fd: number;
  readonly #chunkSize: number;
  readonly #maxHeld: number;
  readonly #closeFd: boolean;
  readonly #onClosed: (() => void) | undefined;
  #offset: number | undefined;
  /** What was yielded and not yet released, oldest first. */
  #yielded: Held[] = [];
  #closed = false;
  #reading: Promise<Held> | undefined;

  constructor(io: IoEngine, fd: number, opts: RingSourceOptions = {}) {
    this.#io = io;
    this.#fd = fd;
    this.#chunkSize = Math.min(opts.chunkSize ?? 1 << 20, io.info().bufferSize);
    this.#maxHeld = opts.maxHeld ?? 8;
    this.#closeFd = opts.closeFd ?? false;
    this.#onClosed = opts.onClosed;
    this.#offset = opts.offset;
  }

  /** Opens a stream file read-only for reading through the ring. */
  static openFile(io: IoEngine, path: string, chunkSize?: number): RingByteSource {
    const fd = openSync(path, constants.O_RDONLY);
    return new RingByteSource(io, fd, { offset: 0, closeFd: true, ...(chunkSize ? { chunkSize } : {}) });
  }

  held(bytes: number): void {
    let keep = 0;
    let k = this.#yielded.length;
    while (k > 0 && keep < bytes) keep += this.#yielded[--k]!.data.length;
    for (const h of this.#yielded.splice(0, k)) h.release();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer, void, undefined> {
    try {
      for (;;) {
        const piece = await this.#readOne();
        if (piece.data.length === 0 || this.#closed) {
          piece.release();
          return;
        }
        if (this.#offset !== undefined) this.#offset += piece.data.length;
        this.#yielded.push(piece);
        yield piece.data;
      }
    } finally {
      this.destroy();
    }
  }

  /** Cancels a read in flight, returns every buffer to the pool and closes the fd (when owned). Idempotent. */
  destroy(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.held(0);
    const fd = this.#fd;
    const close = (): void => {
      if (this.#closeFd) closeSync(fd);
      this.#onClosed?.();
    };
    // A read still waiting (a pipe whose writer stopped, on a cancel) is cancelled first,
    // and the fd closed once it settled, so its number is not reused under it.
    if (this.#reading) void this.#reading.catch(() => undefined).then(close);
    else close();
    if (this.#reading) void this.#io.cancel(fd).catch(() => undefined);
  }

  #readOne(): Promise<Held> {
    const at = this.#offset !== undefined ? { offset: this.#offset } : {};
    const read = this.#yielded.length < this.#maxHeld ? this.#io.read(this.#fd, { length: this.#chunkSize, ...at }) : this.#readHeap(at);
    this.#reading = read;
    return read.finally(() => (this.#reading = undefined));
  }

  async #readHeap(at: { offset?: number }): Promise<Held> {
    const heap = Buffer.allocUnsafe(this.#chunkSize);
    const n = await this.#io.readInto(this.#fd, heap, at);
    return { data: heap.subarray(0, n), release: () => undefined };
  }
}
