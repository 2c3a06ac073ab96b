// What the per-format body decoders (ram.ts, vfio.ts, vmstate.ts) share with the
// stream decoder: the input Reader, the suspension points, limits and errors.
//
// Decoders are generator functions: `yield* ctx.need(n, what)` suspends until n
// bytes are buffered (resumed by the next push), which makes the whole decoder a
// resumable state machine over input chunks without buffering the stream.
import type { Reader } from './bytes.js';
import { StreamError, type StreamErrorCode } from './errors.js';
import type { SectionRef, StreamEvent } from './records.js';

/** One suspension step: the generator yields when it needs more input. */
export type Step<T = void> = Generator<undefined, T, undefined>;

/** Caps on what the decoder will buffer or accept (checked before allocating). */
export interface StreamLimits {
  /** Largest item ever held in memory at once: a FULL vmstate body, a VFIO config blob, the vmdesc JSON. */
  maxBufferedBytes: number;
  /** Largest DATA_STATE record size accepted (the payload itself streams through). */
  maxDataStateBytes: number;
  /** Largest number of RAM blocks in a MEM_SIZE list. */
  maxRamBlocks: number;
  /** Largest machine-type / capability name or count accepted in CONFIGURATION. */
  maxConfigItems: number;
}

export const DEFAULT_LIMITS: Readonly<StreamLimits> = {
  maxBufferedBytes: 64 << 20,
  maxDataStateBytes: Number.MAX_SAFE_INTEGER,
  maxRamBlocks: 4096,
  maxConfigItems: 1024,
};

export interface Where {
  offset?: number;
  section?: SectionRef;
  expected?: string;
  found?: string;
  cause?: unknown;
}

export class DecodeContext {
  constructor(
    readonly r: Reader,
    readonly limits: StreamLimits,
    /** Total input size when known (seekable file), to check lengths against what remains. */
    readonly totalSize: number | undefined,
    private readonly sink: (ev: StreamEvent) => void,
  ) {}

  emit(ev: StreamEvent): void {
    this.sink(ev);
  }

  error(code: StreamErrorCode, what: string, where: Where = {}): StreamError {
    return new StreamError(code, what, {
      offset: where.offset ?? this.r.offset,
      ...(where.section ? { sectionId: where.section.sectionId, idstr: where.section.idstr } : {}),
      ...(where.expected !== undefined ? { expected: where.expected } : {}),
      ...(where.found !== undefined ? { found: where.found } : {}),
      ...(where.cause !== undefined ? { cause: where.cause } : {}),
    });
  }

  /** Suspends until `n` bytes are buffered; a typed truncation error if the input ends first. */
  *need(n: number, what: string, section?: SectionRef): Step {
    while (this.r.available < n) {
      if (this.r.ended) {
        throw this.error('ESTREAM_TRUNCATED', `stream ends inside ${what}`, {
          ...(section ? { section } : {}),
          expected: `${n} more bytes`,
          found: `${this.r.available}`,
        });
      }
      yield;
    }
  }

  /**
   * Consumes `n` bytes as they arrive without holding them (an area the stream skips,
   * such as mapped-ram's bitmap and pages); a typed truncation error if the input ends first.
   */
  *skip(n: number, what: string, section?: SectionRef): Step {
    const start = this.r.offset;
    let left = n;
    while (left > 0) {
      if (this.r.available === 0) {
        if (this.r.ended) {
          throw this.error('ESTREAM_TRUNCATED', `stream ends inside ${what}`, {
            ...(section ? { section } : {}),
            offset: start,
            expected: `${n} bytes`,
            found: `${n - left}`,
          });
        }
        yield;
        continue;
      }
      const k = Math.min(left, this.r.available);
      this.r.skip(k);
      left -= k;
    }
  }

  /** Suspends until `n` bytes are buffered or the input ended; returns what is available. */
  *upTo(n: number): Step<number> {
    while (this.r.available < n && !this.r.ended) yield;
    return Math.min(n, this.r.available);
  }

  /** True when the input ended with nothing left; waits for at least one byte otherwise. */
  *atEnd(): Step<boolean> {
    while (this.r.available === 0) {
      if (this.r.ended) return true;
      yield;
    }
    return false;
  }

  /**
   * Validates a length read from the stream before anything is allocated for it:
   * must fit in 2^53, under `cap`, and within what remains of a sized input.
   */
  length(value: bigint | number, cap: number, what: string, section?: SectionRef, offset?: number): number {
    const where = { ...(section ? { section } : {}), ...(offset !== undefined ? { offset } : {}) };
    if (BigInt(value) > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw this.error('ESTREAM_LIMIT', `${what} is beyond 2^53`, { ...where, found: String(value) });
    }
    const n = Number(value);
    if (n > cap) throw this.error('ESTREAM_LIMIT', `${what} exceeds the configured cap`, { ...where, expected: `<= ${cap}`, found: String(n) });
    if (this.totalSize !== undefined) {
      const remaining = this.totalSize - this.r.offset;
      if (n > remaining) {
        // A file cut short and a corrupt length look alike here: name both.
        throw this.error('ESTREAM_LIMIT', `${what} runs past the end of the input (truncated, or a corrupt length)`, { ...where, expected: `<= ${remaining} remaining bytes`, found: String(n) });
      }
    }
    return n;
  }
}
