// Typed errors of the stream codec. Every StreamError names the byte offset, the
// section (id and idstr) when inside one, and what was expected versus found.
import { MigbridgeError } from '../errors.js';

export type StreamErrorCode =
  /** The input ended before a complete record. */
  | 'ESTREAM_TRUNCATED'
  /** A value in the stream breaks the format (bad magic, marker, footer, flag...). */
  | 'ESTREAM_FORMAT'
  /** A length exceeds what remains of the input or a configured cap. */
  | 'ESTREAM_LIMIT'
  /** A section's body cannot be delimited without a vmdesc (never guessed). */
  | 'ESTREAM_CANNOT_DELIMIT'
  /** A valid QEMU feature this codec does not handle (named in the message). */
  | 'ESTREAM_UNSUPPORTED'
  /** The writer was used out of order. */
  | 'ESTREAM_WRITER'
  /** The reader was given input after its end. */
  | 'ESTREAM_READER';

export interface StreamErrorWhere {
  offset?: number;
  sectionId?: number;
  idstr?: string;
  expected?: string;
  found?: string;
  cause?: unknown;
}

export class StreamError extends MigbridgeError<StreamErrorCode> {
  readonly sectionId?: number;
  readonly idstr?: string;
  readonly expected?: string;
  readonly found?: string;

  constructor(code: StreamErrorCode, what: string, where: StreamErrorWhere = {}) {
    // "truncated" is the word a user looks for when a capture was cut (a killed proxy's tee).
    const parts = [code === 'ESTREAM_TRUNCATED' && !/truncated/i.test(what) ? `truncated: ${what}` : what];
    if (where.expected !== undefined) parts.push(`expected ${where.expected}`);
    if (where.found !== undefined) parts.push(`found ${where.found}`);
    const loc: string[] = [];
    if (where.offset !== undefined) loc.push(`at offset ${where.offset} (0x${where.offset.toString(16)})`);
    if (where.sectionId !== undefined || where.idstr !== undefined) {
      loc.push(`in section ${where.sectionId ?? '?'}${where.idstr !== undefined ? ` "${where.idstr}"` : ''}`);
    }
    const message = parts.join(': ') + (loc.length ? ' ' + loc.join(' ') : '');
    const section = where.idstr ?? (where.sectionId !== undefined ? String(where.sectionId) : undefined);
    super(code, message, {
      ...(where.offset !== undefined ? { offset: where.offset } : {}),
      ...(section !== undefined ? { section } : {}),
      ...(where.cause !== undefined ? { cause: where.cause } : {}),
    });
    if (where.sectionId !== undefined) this.sectionId = where.sectionId;
    if (where.idstr !== undefined) this.idstr = where.idstr;
    if (where.expected !== undefined) this.expected = where.expected;
    if (where.found !== undefined) this.found = where.found;
  }

  override toJSON(): Record<string, unknown> {
    const out = super.toJSON();
    if (this.sectionId !== undefined) out.sectionId = this.sectionId;
    if (this.idstr !== undefined) out.idstr = this.idstr;
    if (this.expected !== undefined) out.expected = this.expected;
    if (this.found !== undefined) out.found = this.found;
    return out;
  }
}

export function hex(value: number | bigint, width = 0): string {
  return '0x' + value.toString(16).padStart(width, '0');
}
