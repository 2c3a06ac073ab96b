// StreamWriter: emits a migration stream record by record to an async sink,
// checking the order of calls (no body outside a section, DATA_STATE payload
// exactly as long as declared). Small records are coalesced in a buffer; large
// payload chunks are passed to the sink as they are, without copying.
import type { Writable } from 'node:stream';
import { Writer } from './bytes.js';
import {
  FILE_MAGIC,
  FILE_VERSION,
  RamFlag,
  RecordType,
  VmCommand,
  VFIO_MARKERS,
  VFIO_MIG_FLAG_DEV_DATA_STATE,
  VFIO_SECTION_VERSION,
  CONFIG_SUBSECTION_CAPABILITIES,
  CONFIG_SUBSECTION_TARGET_PAGE_BITS,
  CONFIG_SUBSECTION_UUID,
  UUID_BYTES,
  DEFAULT_TARGET_PAGE_SIZE,
  type SectionKind,
  type VfioMarkerName,
} from './constants.js';
import { encodeEventInto, ramWord } from './encode.js';
import { StreamError } from './errors.js';
import type { StreamEvent } from './records.js';
import type { VmDesc, VmDescDevice } from './vmdesc.js';

/** Where a StreamWriter's bytes go. `write` may return a promise to apply backpressure. */
export interface WriterSink {
  write(chunk: Buffer): Promise<void> | void;
  /**
   * Optional zero-copy path: the sink owns `bufs` (written in order, as one record) until it
   * calls `done`, which it does exactly once, also on failure; the promise resolves when the
   * caller may go on (backpressure), possibly before the bytes are out, so a sink can keep
   * several writes in flight.
   */
  writeOwned?(bufs: Buffer[], done: () => void): Promise<void>;
}

/** A sink over a Node Writable that waits for 'drain' when its buffer is full. */
export function writableSink(stream: Writable): WriterSink {
  // A stream that failed emits 'error' once and is destroyed: later writes get no event at
  // all, so each write checks first and a waiting one also ends on 'close'.
  const failed = (): Error => stream.errored ?? new Error('the output stream was closed');
  return {
    write(chunk) {
      if (stream.destroyed || stream.errored) return Promise.reject(failed());
      if (stream.write(chunk)) return;
      return new Promise<void>((resolve, reject) => {
        const done = (e?: Error): void => {
          stream.off('drain', onDrain);
          stream.off('error', onError);
          stream.off('close', onClose);
          if (e) reject(e);
          else resolve();
        };
        const onDrain = (): void => done();
        const onError = (e: Error): void => done(e);
        const onClose = (): void => done(failed());
        stream.once('drain', onDrain);
        stream.once('error', onError);
        stream.once('close', onClose);
      });
    },
  };
}

export interface ConfigurationOptions {
  /** "configuration/capabilities" subsection (e.g. ["x-ignore-shared"]). */
  capabilities?: string[];
  /** "configuration/target-page-bits" subsection. */
  targetPageBits?: number;
  /** "configuration/uuid" subsection (16 bytes). */
  uuid?: Buffer;
}

export interface StreamWriterOptions {
  /** Write section footers (QEMU's send-section-footer, on for every machine type after 2.3). Default true. */
  footers?: boolean;
  /** Coalescing buffer size (default 64 KiB). */
  bufferBytes?: number;
}

interface OpenSection {
  sectionId: number;
  kind: SectionKind;
}

export class StreamWriter {
  private readonly w = new Writer(4096);
  private readonly footers: boolean;
  private readonly bufferBytes: number;
  private open: OpenSection | undefined;
  private payloadLeft = 0;
  private written = 0;

  constructor(
    private readonly sink: WriterSink,
    opts: StreamWriterOptions = {},
  ) {
    this.footers = opts.footers ?? true;
    this.bufferBytes = opts.bufferBytes ?? 64 << 10;
  }

  /** Bytes emitted so far, buffered ones included (= stream offset of the next byte). */
  get offset(): number {
    return this.written + this.w.length;
  }

  /** The section whose body is being written, if any. */
  get openSection(): Readonly<OpenSection> | undefined {
    return this.open;
  }

  private misuse(what: string): StreamError {
    return new StreamError('ESTREAM_WRITER', what, { offset: this.offset, ...(this.open ? { sectionId: this.open.sectionId } : {}) });
  }

  private checkNoPayload(): void {
    if (this.payloadLeft > 0) throw this.misuse(`${this.payloadLeft} DATA_STATE payload bytes still owed`);
  }

  private inSection(): void {
    this.checkNoPayload();
    if (!this.open) throw this.misuse('section body written outside a section');
  }

  private outsideSection(what: string): void {
    this.checkNoPayload();
    if (this.open) throw this.misuse(`${what} while section ${this.open.sectionId} is open (call endSection first)`);
  }

  private async maybeFlush(): Promise<void> {
    if (this.w.length >= this.bufferBytes) await this.flush();
  }

  /** Hands everything buffered to the sink. */
  async flush(): Promise<void> {
    if (this.w.length === 0) return;
    const n = this.w.length;
    const buf = this.w.take();
    this.written += n;
    await this.sink.write(buf);
  }

  /** "QEVM", version 3. */
  async header(): Promise<void> {
    this.outsideSection('header');
    this.w.be32(FILE_MAGIC).be32(FILE_VERSION);
    await this.maybeFlush();
  }

  /** QEMU_VM_CONFIGURATION: machine type (the resolved name, e.g. "pc-i440fx-10.0") and optional subsections. */
  async configuration(machineType: string, opts: ConfigurationOptions = {}): Promise<void> {
    this.outsideSection('configuration');
    const name = Buffer.from(machineType, 'latin1');
    this.w.u8(RecordType.CONFIGURATION).be32(name.length).bytes(name);
    if (opts.targetPageBits !== undefined) {
      this.w.u8(RecordType.SUBSECTION).string8(CONFIG_SUBSECTION_TARGET_PAGE_BITS).be32(1).be32(opts.targetPageBits);
    }
    if (opts.capabilities && opts.capabilities.length > 0) {
      this.w.u8(RecordType.SUBSECTION).string8(CONFIG_SUBSECTION_CAPABILITIES).be32(1).be32(opts.capabilities.length);
      for (const c of opts.capabilities) this.w.string8(c);
    }
    if (opts.uuid) {
      if (opts.uuid.length !== UUID_BYTES) throw this.misuse(`uuid must be ${UUID_BYTES} bytes`);
      this.w.u8(RecordType.SUBSECTION).string8(CONFIG_SUBSECTION_UUID).be32(1).bytes(opts.uuid);
    }
    await this.maybeFlush();
  }

  private async beginSection(kind: SectionKind, sectionId: number, full?: { idstr: string; instanceId: number; versionId: number }): Promise<void> {
    this.outsideSection(`${kind} section`);
    const type = { START: RecordType.SECTION_START, PART: RecordType.SECTION_PART, END: RecordType.SECTION_END, FULL: RecordType.SECTION_FULL }[kind];
    this.w.u8(type).be32(sectionId);
    if (full) this.w.string8(full.idstr).be32(full.instanceId).be32(full.versionId);
    this.open = { sectionId, kind };
    await this.maybeFlush();
  }

  sectionStart(sectionId: number, idstr: string, instanceId: number, versionId: number): Promise<void> {
    return this.beginSection('START', sectionId, { idstr, instanceId, versionId });
  }
  sectionPart(sectionId: number): Promise<void> {
    return this.beginSection('PART', sectionId);
  }
  sectionEnd(sectionId: number): Promise<void> {
    return this.beginSection('END', sectionId);
  }
  sectionFull(sectionId: number, idstr: string, instanceId: number, versionId: number): Promise<void> {
    return this.beginSection('FULL', sectionId, { idstr, instanceId, versionId });
  }

  /** Closes the open section with its footer (0x7e be32 id) when footers are on. */
  async endSection(): Promise<void> {
    this.inSection();
    if (this.footers) this.w.u8(RecordType.SECTION_FOOTER).be32(this.open!.sectionId);
    this.open = undefined;
    await this.maybeFlush();
  }

  /** One bare VFIO marker (END_OF_STATE, DEV_SETUP_STATE, DEV_INIT_DATA_SENT, ...). */
  async vfioMarker(marker: Exclude<VfioMarkerName, 'DEV_DATA_STATE'>): Promise<void> {
    this.inSection();
    this.w.be64(VFIO_MARKERS[marker]);
    await this.maybeFlush();
  }

  /** DATA_STATE + be64 size; exactly `size` bytes must follow through payload(). */
  async vfioDataHeader(size: number): Promise<void> {
    this.inSection();
    if (!Number.isSafeInteger(size) || size < 0) throw this.misuse(`bad DATA_STATE size ${size}`);
    this.w.be64(VFIO_MIG_FLAG_DEV_DATA_STATE).be64(size);
    this.payloadLeft = size;
    await this.maybeFlush();
  }

  /** Part of the current DATA_STATE payload. Chunks of 16 KiB and more go to the sink uncopied. */
  async payload(chunk: Buffer): Promise<void> {
    if (chunk.length > this.payloadLeft) throw this.misuse(`payload of ${chunk.length} bytes exceeds the ${this.payloadLeft} declared bytes left`);
    this.payloadLeft -= chunk.length;
    if (chunk.length >= 16 << 10) {
      await this.flush();
      this.written += chunk.length;
      await this.sink.write(chunk);
    } else {
      this.w.bytes(chunk);
      await this.maybeFlush();
    }
  }

  /** One whole DATA_STATE record. */
  async vfioData(data: Buffer): Promise<void> {
    await this.vfioDataHeader(data.length);
    await this.payload(data);
  }

  /**
   * One whole DATA_STATE record whose payload buffer is handed over: `release` is called once
   * the sink no longer needs it. A sink with writeOwned gets the bytes buffered so far, the
   * record header and the payload as one write of three buffers, without copying the payload.
   */
  async vfioDataOwned(data: Buffer, release: () => void): Promise<void> {
    if (!this.sink.writeOwned || data.length < 16 << 10) {
      try {
        await this.vfioData(data);
      } finally {
        release();
      }
      return;
    }
    try {
      this.inSection();
    } catch (e) {
      release();
      throw e;
    }
    this.w.be64(VFIO_MIG_FLAG_DEV_DATA_STATE).be64(data.length);
    const head = this.w.take();
    this.written += head.length + data.length;
    await this.sink.writeOwned([head, data], release);
  }

  /** DEV_CONFIG_STATE, the config vmstate bytes, END_OF_STATE. */
  async vfioConfig(blob: Buffer): Promise<void> {
    this.inSection();
    this.w.be64(VFIO_MARKERS.DEV_CONFIG_STATE).bytes(blob).be64(VFIO_MARKERS.END_OF_STATE);
    await this.maybeFlush();
  }

  /** A whole VFIO START chunk as every QEMU version writes it: SETUP_STATE, END_OF_STATE. */
  async vfioStartSection(sectionId: number, idstr: string, instanceId = 0): Promise<void> {
    await this.sectionStart(sectionId, idstr, instanceId, VFIO_SECTION_VERSION);
    await this.vfioMarker('DEV_SETUP_STATE');
    await this.vfioMarker('END_OF_STATE');
    await this.endSection();
  }

  /** A whole VFIO FULL chunk carrying the config blob (QEMU 10.0 without multifd). */
  async vfioConfigSection(sectionId: number, idstr: string, blob: Buffer, instanceId = 0): Promise<void> {
    await this.sectionFull(sectionId, idstr, instanceId, VFIO_SECTION_VERSION);
    await this.vfioConfig(blob);
    await this.endSection();
  }

  /**
   * RAM PAGE records and then ZERO records (fill 0) of one block, inside the open RAM
   * section: the first names the block, the rest carry CONTINUE, as QEMU writes pages of the
   * same block in a row. One buffer-size check for the lot (a batch is at most what one
   * multifd packet carries, 512 KiB of pages).
   */
  async ramPages(block: string, pages: readonly { address: number; data: Buffer }[], zeroPages: readonly number[] = []): Promise<void> {
    this.inSection();
    let named = false;
    const word = (address: number, flags: number): void => {
      ramWord(this.w, address, named ? flags | RamFlag.CONTINUE : flags);
      if (!named) this.w.string8(block);
      named = true;
    };
    for (const p of pages) {
      word(p.address, RamFlag.PAGE);
      this.w.bytes(p.data);
    }
    for (const address of zeroPages) {
      word(address, RamFlag.ZERO);
      this.w.u8(0);
    }
    await this.maybeFlush();
  }

  /** QEMU_VM_COMMAND with its payload. */
  async command(command: VmCommand, data: Buffer = Buffer.alloc(0)): Promise<void> {
    this.outsideSection('command');
    this.w.u8(RecordType.COMMAND).be16(command).be16(data.length).bytes(data);
    await this.maybeFlush();
  }

  /** `08 000b 0000`, written by QEMU 10.0+ before the END sections. */
  switchoverStart(): Promise<void> {
    return this.command(VmCommand.SWITCHOVER_START);
  }

  async eof(): Promise<void> {
    this.outsideSection('EOF');
    this.w.u8(RecordType.EOF);
    await this.maybeFlush();
  }

  /** The VMDESCRIPTION trailer (JSON text or object); call right after eof(). */
  async vmdesc(desc: VmDesc | string | Buffer): Promise<void> {
    this.outsideSection('vmdesc');
    const json = Buffer.isBuffer(desc) ? desc : Buffer.from(typeof desc === 'string' ? desc : JSON.stringify(desc), 'utf8');
    this.w.u8(RecordType.VMDESCRIPTION).be32(json.length).bytes(json);
    await this.maybeFlush();
  }

  /**
   * Writes a decoded event back as its exact bytes (used by rewrite and inject).
   * Tracks the open section and DATA_STATE payload like the typed methods, so
   * decoded events and typed calls can be mixed.
   */
  async event(ev: StreamEvent): Promise<void> {
    switch (ev.type) {
      case 'vfio-data-chunk':
        return this.payload(ev.data);
      case 'section':
        this.checkNoPayload();
        this.open = { sectionId: ev.section.sectionId, kind: ev.kind };
        break;
      case 'footer':
      case 'header':
      case 'configuration':
      case 'command':
      case 'eof':
      case 'vmdesc':
        this.checkNoPayload();
        this.open = undefined;
        break;
      default:
        this.checkNoPayload();
    }
    encodeEventInto(this.w, ev);
    if (ev.type === 'vfio-data') this.payloadLeft = ev.size;
    await this.maybeFlush();
  }
}

/** The vmdesc entry QEMU writes for a VFIO FULL part: an old-style "data" buffer (§9.1). */
export function vfioVmDescEntry(idstr: string, instanceId: number, configBytes: number): VmDescDevice {
  const size = 8 + configBytes + 8;
  return { name: idstr, instance_id: instanceId, size, fields: [{ name: 'data', size, type: 'buffer' }] };
}

/** A minimal vmdesc describing only the given FULL sections. */
export function buildVmDesc(devices: VmDescDevice[], pageSize = DEFAULT_TARGET_PAGE_SIZE): VmDesc {
  return { page_size: pageSize, devices };
}
