// Counts the messages of QEMU's migration return path (destination -> source), as
// migration/migration.c frames them: be16 type, be16 length, `length` bytes. Only
// observes: the proxy forwards the bytes whatever this makes of them, and a framing
// problem is recorded, never thrown.

/** enum mig_rp_message_type (QEMU migration/migration.h). */
const RP_NAMES: Readonly<Record<number, string>> = {
  0: 'INVALID',
  1: 'SHUT',
  2: 'PONG',
  3: 'REQ_PAGES_ID',
  4: 'REQ_PAGES',
  5: 'RECV_BITMAP',
  6: 'RESUME_ACK',
  7: 'SWITCHOVER_ACK',
};

export interface ReturnPathMessage {
  offset: number;
  name: string;
  /** SHUT: its be32 status (0 = the destination finished without error); PONG: the ping id. */
  value?: number;
}

export interface ReturnPathSummary {
  bytes: number;
  /** Messages per type name. */
  messages: Record<string, number>;
  /** The first messages (at most 64), in order. */
  first: ReturnPathMessage[];
  /** Set when the bytes stopped making sense as return-path messages. */
  error: { offset: number; message: string } | null;
}

const KEEP_FIRST = 64;

export class ReturnPathObserver {
  private buf: Buffer = Buffer.alloc(0);
  private base = 0;
  private readonly summary: ReturnPathSummary = { bytes: 0, messages: {}, first: [], error: null };
  /** SHUT's status when one arrived. */
  shutStatus: number | undefined;

  push(chunk: Buffer): void {
    this.summary.bytes += chunk.length;
    if (this.summary.error) return;
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    let p = 0;
    while (this.buf.length - p >= 4) {
      const type = this.buf.readUInt16BE(p);
      const len = this.buf.readUInt16BE(p + 2);
      if (!(type in RP_NAMES) || type === 0) {
        this.summary.error = { offset: this.base + p, message: `unknown return-path message type ${type}` };
        this.buf = Buffer.alloc(0);
        return;
      }
      if (this.buf.length - p < 4 + len) break;
      const body = this.buf.subarray(p + 4, p + 4 + len);
      const name = RP_NAMES[type]!;
      const msg: ReturnPathMessage = { offset: this.base + p, name };
      if ((name === 'SHUT' || name === 'PONG') && len === 4) msg.value = body.readUInt32BE(0);
      if (name === 'SHUT') this.shutStatus = msg.value;
      this.summary.messages[name] = (this.summary.messages[name] ?? 0) + 1;
      if (this.summary.first.length < KEEP_FIRST) this.summary.first.push(msg);
      p += 4 + len;
    }
    // Keep only the incomplete tail (a message is at most 4 + 65535 bytes).
    this.base += p;
    this.buf = p === this.buf.length ? Buffer.alloc(0) : Buffer.from(this.buf.subarray(p));
  }

  result(): ReturnPathSummary {
    const s = this.summary;
    return { ...s, messages: { ...s.messages }, first: [...s.first], error: s.error ?? (this.buf.length ? { offset: this.base, message: `${this.buf.length} bytes of an incomplete message at the end` } : null) };
  }
}
