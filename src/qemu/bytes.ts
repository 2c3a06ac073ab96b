// The one Reader and one Writer for QEMU's big-endian primitives (§1: be16/32/64,
// string8 = u8 length + bytes, no NUL, no padding).
//
// Reader is a queue of input chunks with an absolute byte offset. Its read
// methods are synchronous and assume the caller checked `available` first; the
// stream decoder suspends (see decoder.ts) until enough bytes have been pushed.
// Reads that fit inside one chunk return zero-copy slices.
import { StreamError } from './errors.js';

export class Reader {
  private chunks: Buffer[] = [];
  /** Read position inside chunks[0]. */
  private head = 0;
  private avail = 0;
  private pos: number;
  private done = false;

  constructor(startOffset = 0) {
    this.pos = startOffset;
  }

  /** A finished Reader over one in-memory buffer. */
  static of(buf: Buffer, startOffset = 0): Reader {
    const r = new Reader(startOffset);
    r.push(buf);
    r.end();
    return r;
  }

  push(chunk: Buffer): void {
    if (this.done) throw new StreamError('ESTREAM_READER', 'Reader.push after end: the input was already complete', { offset: this.pos + this.avail });
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.avail += chunk.length;
  }

  end(): void {
    this.done = true;
  }

  get ended(): boolean {
    return this.done;
  }

  /** Bytes pushed and not yet consumed. */
  get available(): number {
    return this.avail;
  }

  /** Absolute offset of the next unread byte. */
  get offset(): number {
    return this.pos;
  }

  private consume(n: number): void {
    this.avail -= n;
    this.pos += n;
    this.head += n;
    while (this.chunks.length > 0 && this.head >= this.chunks[0]!.length) {
      this.head -= this.chunks[0]!.length;
      this.chunks.shift();
    }
  }

  /** Byte at `i` past the read position, without consuming. */
  peekU8(i = 0): number {
    let idx = this.head + i;
    for (const c of this.chunks) {
      if (idx < c.length) return c[idx]!;
      idx -= c.length;
    }
    throw new RangeError(`peekU8(${i}) beyond the ${this.avail} available bytes`);
  }

  /** `n` bytes without consuming (a slice when inside one chunk, else a copy). */
  peek(n: number): Buffer {
    if (n > this.avail) throw new RangeError(`peek(${n}) beyond the ${this.avail} available bytes`);
    const first = this.chunks[0];
    if (n === 0 || first === undefined) return Buffer.alloc(0);
    if (this.head + n <= first.length) return first.subarray(this.head, this.head + n);
    const out = Buffer.allocUnsafe(n);
    let copied = 0;
    let start = this.head;
    for (const c of this.chunks) {
      const m = Math.min(n - copied, c.length - start);
      c.copy(out, copied, start, start + m);
      copied += m;
      start = 0;
      if (copied === n) break;
    }
    return out;
  }

  take(n: number): Buffer {
    const out = this.peek(n);
    this.consume(n);
    return out;
  }

  /** Up to `max` bytes from the current chunk only: never copies, never waits. */
  takeUpTo(max: number): Buffer {
    const first = this.chunks[0];
    if (first === undefined || max <= 0) return Buffer.alloc(0);
    const n = Math.min(max, first.length - this.head);
    const out = first.subarray(this.head, this.head + n);
    this.consume(n);
    return out;
  }

  skip(n: number): void {
    if (n > this.avail) throw new RangeError(`skip(${n}) beyond the ${this.avail} available bytes`);
    this.consume(n);
  }

  u8(): number {
    const v = this.peekU8(0);
    this.consume(1);
    return v;
  }

  be16(): number {
    return this.take(2).readUInt16BE(0);
  }

  be32(): number {
    return this.take(4).readUInt32BE(0);
  }

  be64(): bigint {
    return this.take(8).readBigUInt64BE(0);
  }

  peekBe64(): bigint {
    return this.peek(8).readBigUInt64BE(0);
  }

  /** string8 body of `len` bytes (the length byte already read). Latin-1 keeps bytes exact. */
  str(len: number): string {
    return this.take(len).toString('latin1');
  }
}

/** Growable big-endian output buffer. Strings are written as Latin-1 (byte-exact with Reader.str). */
export class Writer {
  private buf: Buffer;
  private len = 0;

  constructor(initial = 256) {
    this.buf = Buffer.allocUnsafe(initial);
  }

  private ensure(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const nb = Buffer.allocUnsafe(size);
    this.buf.copy(nb, 0, 0, this.len);
    this.buf = nb;
  }

  get length(): number {
    return this.len;
  }

  u8(v: number): this {
    this.ensure(1);
    this.buf.writeUInt8(v, this.len);
    this.len += 1;
    return this;
  }

  be16(v: number): this {
    this.ensure(2);
    this.buf.writeUInt16BE(v, this.len);
    this.len += 2;
    return this;
  }

  be32(v: number): this {
    this.ensure(4);
    this.buf.writeUInt32BE(v, this.len);
    this.len += 4;
    return this;
  }

  be64(v: bigint | number): this {
    this.ensure(8);
    this.buf.writeBigUInt64BE(BigInt(v), this.len);
    this.len += 8;
    return this;
  }

  bytes(b: Uint8Array): this {
    this.ensure(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
    return this;
  }

  /** u8 length + Latin-1 bytes; QEMU strings are at most 255 bytes. */
  string8(s: string): this {
    const b = Buffer.from(s, 'latin1');
    if (b.length > 255) throw new RangeError(`string8 longer than 255 bytes: ${s.length}`);
    return this.u8(b.length).bytes(b);
  }

  /** The bytes written so far (a copy), and resets the writer. */
  take(): Buffer {
    const out = Buffer.from(this.buf.subarray(0, this.len));
    this.len = 0;
    return out;
  }
}
