// Decodes the bytes the proxy forwards, beside the forwarding and never in its way:
// chunks are queued after they were handed to the destination and decoded in small
// batches on later event-loop turns; a decoding error (or a decoder that falls too far
// behind) only stops the decoding, and is reported with the offset where it stopped.
import { MigbridgeError } from '../errors.js';
import { StreamDecoder, type StreamEvent, type VmDesc } from '../qemu/index.js';
import { Inspector, type InspectReport } from '../qemu/summary.js';
import type { RecordKind, SectionKind } from '../qemu/constants.js';

/** Why and where live decoding stopped. */
export interface DecodeStop {
  /** Stream offset of the record that could not be decoded (or of the first byte not decoded). */
  offset: number;
  reason: 'error' | 'behind';
  code: string;
  message: string;
}

/** What the proxy reports about a decoded (part of a) stream. */
export interface StreamTally {
  /** Bytes the summary covers: the whole stream, or up to where decoding stopped. */
  bytes: number;
  /** Records per kind (CONFIGURATION, START, PART, END, FULL, COMMAND, EOF, VMDESCRIPTION). */
  records: Partial<Record<RecordKind, number>>;
  commands: { offset: number; name: string }[];
  ram: { pages: { PAGE: number; ZERO: number; XBZRLE: number; COMPRESS_PAGE: number }; records: { MEM_SIZE: number; EOS: number; MULTIFD_FLUSH: number } } | null;
  vfio: {
    idstr: string;
    sectionId: number;
    dataBytes: number;
    chunks: number;
    precopyBytes: number;
    stopCopyBytes: number;
    phaseUnknownBytes: number;
    configBytes: number | null;
    sections: Record<SectionKind, number>;
    flavour: string;
  }[];
  eofOffset: number | null;
  vmdescOffset: number | null;
}

/** The tally of an inspect report (the proxy's summary shape). */
export function tallyOf(r: InspectReport): StreamTally {
  const records: Partial<Record<RecordKind, number>> = {};
  const commands: StreamTally['commands'] = [];
  let eofOffset: number | null = null;
  for (const x of r.records) {
    records[x.kind] = (records[x.kind] ?? 0) + 1;
    if (x.kind === 'COMMAND') commands.push({ offset: x.offset, name: x.command ?? '?' });
    if (x.kind === 'EOF') eofOffset = x.offset;
  }
  return {
    bytes: r.size,
    records,
    commands,
    ram: r.ram ? { pages: { ...r.ram.pages }, records: { ...r.ram.records } } : null,
    vfio: r.vfio.map((d) => ({
      idstr: d.idstr, sectionId: d.sectionId, dataBytes: d.dataBytes, chunks: d.chunks, precopyBytes: d.precopyBytes,
      stopCopyBytes: d.stopCopyBytes, phaseUnknownBytes: d.phaseUnknownBytes, configBytes: d.configBytes, sections: { ...d.sections }, flavour: d.flavour,
    })),
    eofOffset,
    vmdescOffset: r.vmdesc?.offset ?? null,
  };
}

export interface LiveDecoderOptions {
  vmdesc?: VmDesc;
  /** Queued, not yet decoded bytes beyond which decoding gives up (default 64 MiB). */
  maxBacklog?: number;
  /** Bytes decoded per event-loop turn before yielding to the forwarding (default 1 MiB). */
  batchBytes?: number;
  /** Every decoded event, in order (live notes). */
  onEvent?: (ev: StreamEvent) => void;
  /** Called once when decoding stops early. */
  onStop?: (stop: DecodeStop) => void;
}

export class LiveDecoder {
  private readonly dec: StreamDecoder;
  private readonly insp: Inspector;
  private queue: Buffer[] = [];
  private queued = 0;
  private fed = 0;
  private scheduled = false;
  private stopInfo: DecodeStop | undefined;
  private eof: number | undefined;
  private readonly maxBacklog: number;
  private readonly batchBytes: number;

  constructor(private readonly opts: LiveDecoderOptions = {}) {
    this.dec = new StreamDecoder(opts.vmdesc ? { vmdesc: opts.vmdesc } : {});
    const pageSize = opts.vmdesc?.page_size;
    this.insp = new Inspector(pageSize ? { pageSize } : {});
    this.maxBacklog = opts.maxBacklog ?? 64 << 20;
    this.batchBytes = opts.batchBytes ?? 1 << 20;
  }

  get stopped(): DecodeStop | undefined {
    return this.stopInfo;
  }

  /** Offset of the EOF record once decoded. */
  get eofOffset(): number | undefined {
    return this.eof;
  }

  /** True once the whole stream (EOF, and the vmdesc when sent) was decoded. */
  get complete(): boolean {
    return this.stopInfo === undefined && this.dec.done;
  }

  /** Queues bytes for decoding; returns at once. */
  feed(chunk: Buffer): void {
    this.fed += chunk.length;
    if (this.stopInfo) return;
    this.queue.push(chunk);
    this.queued += chunk.length;
    if (this.queued > this.maxBacklog) {
      this.stop({ offset: this.fed - this.queued, reason: 'behind', code: 'EDECODE_BEHIND', message: `the decoder fell more than ${this.maxBacklog} bytes behind the forwarding` });
      return;
    }
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => {
        this.scheduled = false;
        this.drain(this.batchBytes);
      });
    }
  }

  /** Decodes everything queued now (before decisions that need the decoder caught up). */
  flush(): void {
    this.drain(Infinity);
  }

  private drain(budget: number): void {
    let done = 0;
    while (this.queue.length && !this.stopInfo && done < budget) {
      const chunk = this.queue.shift()!;
      this.queued -= chunk.length;
      done += chunk.length;
      this.push(chunk);
    }
    if (this.queue.length && !this.stopInfo && !this.scheduled) {
      this.scheduled = true;
      setImmediate(() => {
        this.scheduled = false;
        this.drain(this.batchBytes);
      });
    }
  }

  private push(chunk: Buffer): void {
    try {
      this.dec.push(chunk);
      this.take(Infinity);
    } catch (e) {
      const offset = e instanceof MigbridgeError && e.offset !== undefined ? e.offset : this.dec.offset;
      // Events of the record that failed (e.g. the FULL section header) are left out:
      // the live summary covers exactly the records that start before `offset`.
      this.take(offset);
      this.stop({
        offset, reason: 'error',
        code: e instanceof MigbridgeError ? e.code : 'ESTREAM_FORMAT',
        message: e instanceof Error ? e.message : String(e),
      });
    }
  }

  private take(before: number): void {
    for (const ev of this.dec.takeEvents()) {
      if (ev.offset >= before) continue;
      if (ev.type === 'eof') this.eof = ev.offset;
      this.insp.add(ev);
      this.opts.onEvent?.(ev);
    }
  }

  private stop(s: DecodeStop): void {
    this.stopInfo = s;
    this.queue = [];
    this.queued = 0;
    this.opts.onStop?.(s);
  }

  /**
   * Ends decoding at the end of the input (`ended`: the source closed cleanly) and
   * returns the summary of what was decoded.
   */
  finish(ended: boolean): StreamTally {
    this.flush();
    if (!this.stopInfo && ended && !this.dec.done) {
      try {
        this.dec.end();
      } catch (e) {
        this.stop({
          offset: e instanceof MigbridgeError && e.offset !== undefined ? e.offset : this.dec.offset, reason: 'error',
          code: e instanceof MigbridgeError ? e.code : 'ESTREAM_TRUNCATED', message: e instanceof Error ? e.message : String(e),
        });
      }
    }
    const bytes = this.stopInfo ? this.stopInfo.offset : this.dec.done ? this.fed : this.dec.offset;
    return tallyOf(this.insp.finish(bytes));
  }
}
