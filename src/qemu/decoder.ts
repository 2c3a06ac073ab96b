// The push-driven stream decoder: feed input chunks with push(), collect typed
// events with takeEvents(), call end() at end of input. It never needs the whole
// stream: it is a generator-based state machine that suspends whenever a record
// needs more bytes than have arrived (like ws's Receiver, one state per yield).
import { Reader } from './bytes.js';
import {
  FILE_MAGIC,
  FILE_VERSION,
  FILE_VERSION_COMPAT,
  RecordType,
  SECTION_KIND_OF,
  VmCommand,
  CONFIG_SUBSECTION_CAPABILITIES,
  CONFIG_SUBSECTION_TARGET_PAGE_BITS,
  CONFIG_SUBSECTION_UUID,
  UUID_BYTES,
  CAP_X_IGNORE_SHARED,
  CAP_MAPPED_RAM,
  RAM_IDSTR,
  DEFAULT_TARGET_PAGE_SIZE,
  isVfioIdstr,
  type SectionKind,
} from './constants.js';
import { DecodeContext, DEFAULT_LIMITS, type StreamLimits, type Step } from './context.js';
import { StreamError, hex } from './errors.js';
import { decodeRamBody, type RamContext } from './ram.js';
import type { ConfigSubsection, SectionRef, StreamEvent } from './records.js';
import { decodeVfioBody } from './vfio.js';
import { parseVmDesc, VmDescIndex, type VmDesc } from './vmdesc.js';
import { readVmstateBody } from './vmstate.js';

export interface DecoderOptions {
  /** The stream's vmdesc, needed to frame FULL vmstate sections (it is at the stream's end). */
  vmdesc?: VmDesc;
  /** Total input size when known: every length is also checked against what remains. */
  totalSize?: number;
  /** Target page size; defaults to the vmdesc's page_size, else 4096 (x86). */
  pageSize?: number;
  /** Postcopy only: block name -> page size, when the stream cannot tell (§6.2). */
  blockPageSizes?: ReadonlyMap<string, number>;
  limits?: Partial<StreamLimits>;
  /**
   * File offset of the stream's first byte (a libvirt image's header comes first): the
   * mapped-ram headers hold file offsets, which the decoder turns into stream offsets.
   */
  fileOffset?: number;
}

const COMMAND_NAMES: Readonly<Record<number, string>> = Object.fromEntries(
  Object.entries(VmCommand)
    .filter(([, v]) => typeof v === 'number')
    .map(([k, v]) => [v as number, k]),
);

export function commandName(cmd: number): string {
  return COMMAND_NAMES[cmd] ?? `UNKNOWN_${cmd}`;
}

/**
 * A TLS record header (content type 22 = handshake, protocol major version 3): what QEMU
 * sends when it migrates with tls-creds. The stream inside is encrypted, so nothing past
 * the handshake can be decoded; say so instead of "not a stream".
 */
function isTlsRecord(first4: number): boolean {
  return first4 >>> 16 === 0x1603 && ((first4 >>> 8) & 0xff) <= 4;
}

const TLS_REFUSAL =
  'a TLS stream (QEMU migrating with tls-creds): migbridge does not decode encrypted streams; ' +
  'let migbridge see the plain stream (e.g. a TLS or SSH tunnel that ends on each host, or an encrypted link) instead';

export class StreamDecoder {
  private readonly r = new Reader();
  private readonly ctx: DecodeContext;
  private events: StreamEvent[] = [];
  private readonly gen: Step;
  private finished = false;
  private failure: unknown;

  private readonly opts: DecoderOptions;
  private vmdescIndex: VmDescIndex | undefined;
  private readonly sections = new Map<number, SectionRef>();
  private readonly ram: RamContext;
  private footers: boolean | undefined;
  private recordCount = 0;

  constructor(opts: DecoderOptions = {}) {
    this.opts = opts;
    const limits = { ...DEFAULT_LIMITS, ...opts.limits };
    this.ctx = new DecodeContext(this.r, limits, opts.totalSize, (ev) => this.events.push(ev));
    this.vmdescIndex = opts.vmdesc ? new VmDescIndex(opts.vmdesc) : undefined;
    this.ram = {
      pageSize: opts.pageSize ?? opts.vmdesc?.page_size ?? DEFAULT_TARGET_PAGE_SIZE,
      ignoreShared: false,
      mappedRam: false,
      fileOffset: opts.fileOffset ?? 0,
      blocks: new Map(),
      ...(opts.blockPageSizes ? { blockPageSizes: opts.blockPageSizes } : {}),
    };
    this.gen = this.run();
  }

  /** Bytes consumed so far (offset of the next unread byte). */
  get offset(): number {
    return this.r.offset;
  }

  /** Bytes pushed and not consumed yet: the tail of the input the decoder still holds. */
  get buffered(): number {
    return this.r.available;
  }

  /** True once the stream was decoded to its end (EOF, plus vmdesc if any). */
  get done(): boolean {
    return this.finished;
  }

  push(chunk: Buffer): void {
    this.r.push(chunk);
    this.step();
  }

  /** Marks the end of input; throws a typed error if the stream is incomplete. */
  end(): void {
    this.r.end();
    this.step();
    if (!this.finished) throw this.ctx.error('ESTREAM_TRUNCATED', 'stream ended early');
  }

  /** Events decoded since the last call. */
  takeEvents(): StreamEvent[] {
    const out = this.events;
    this.events = [];
    return out;
  }

  private step(): void {
    if (this.failure !== undefined) throw this.failure;
    if (this.finished) {
      if (this.r.available > 0) this.fail(this.ctx.error('ESTREAM_FORMAT', 'trailing bytes after the end of the stream', { found: `${this.r.available}+ bytes` }));
      return;
    }
    try {
      if (this.gen.next().done) this.finished = true;
    } catch (e) {
      this.fail(e);
    }
  }

  private fail(e: unknown): never {
    this.failure = e instanceof StreamError ? e : this.ctx.error('ESTREAM_FORMAT', 'decoder failure', { cause: e });
    throw this.failure;
  }

  private *run(): Step {
    const { r, ctx } = this;
    yield* ctx.need(8, 'the file header');
    const magic = r.be32();
    if (isTlsRecord(magic)) throw ctx.error('ESTREAM_UNSUPPORTED', TLS_REFUSAL, { offset: 0, expected: hex(FILE_MAGIC), found: hex(magic) });
    if (magic !== FILE_MAGIC) throw ctx.error('ESTREAM_FORMAT', 'not a QEMU migration stream', { offset: 0, expected: hex(FILE_MAGIC), found: hex(magic) });
    const version = r.be32();
    if (version !== FILE_VERSION) {
      throw ctx.error(version === FILE_VERSION_COMPAT ? 'ESTREAM_UNSUPPORTED' : 'ESTREAM_FORMAT', 'unsupported stream version', { offset: 4, expected: String(FILE_VERSION), found: String(version) });
    }
    ctx.emit({ type: 'header', offset: 0, magic, version });
    for (;;) {
      if (yield* ctx.atEnd()) throw ctx.error('ESTREAM_TRUNCATED', 'stream ends before EOF', { expected: 'a record type byte' });
      const at = r.offset;
      const type = r.peekU8();
      this.recordCount++;
      switch (type) {
        case RecordType.CONFIGURATION:
          if (this.recordCount !== 1) throw ctx.error('ESTREAM_FORMAT', 'CONFIGURATION record not right after the header', { offset: at });
          yield* this.configuration();
          break;
        case RecordType.SECTION_START:
        case RecordType.SECTION_PART:
        case RecordType.SECTION_END:
        case RecordType.SECTION_FULL:
          yield* this.section(SECTION_KIND_OF[type]!);
          break;
        case RecordType.COMMAND:
          yield* this.command();
          break;
        case RecordType.EOF:
          r.skip(1);
          ctx.emit({ type: 'eof', offset: at });
          yield* this.trailer();
          return;
        default:
          throw ctx.error('ESTREAM_FORMAT', 'unknown record type', { offset: at, expected: 'a QEMU_VM_* record byte (0x00-0x04, 0x07, 0x08)', found: hex(type) });
      }
    }
  }

  private *configuration(): Step {
    const { r, ctx } = this;
    const at = r.offset;
    yield* ctx.need(5, 'the CONFIGURATION header');
    r.skip(1);
    const len = ctx.length(r.be32(), ctx.limits.maxConfigItems, 'machine type length', undefined, at + 1);
    yield* ctx.need(len, 'the machine type');
    const machineType = r.str(len);
    const subsections: ConfigSubsection[] = [];
    for (;;) {
      // Subsections end at the first byte that is not QEMU_VM_SUBSECTION (vmstate_subsection_load).
      if ((yield* ctx.upTo(1)) === 0 || r.peekU8() !== RecordType.SUBSECTION) break;
      const subAt = r.offset;
      yield* ctx.need(2, 'a configuration subsection header');
      r.skip(1);
      const nameLen = r.u8();
      yield* ctx.need(nameLen + 4, 'a configuration subsection header');
      const name = r.str(nameLen);
      const version = r.be32();
      const body: Buffer[] = [];
      const sub: ConfigSubsection = { name, version, body: Buffer.alloc(0) };
      if (name === CONFIG_SUBSECTION_CAPABILITIES) {
        yield* ctx.need(4, 'the capability count');
        const countBytes = r.take(4);
        body.push(countBytes);
        const count = ctx.length(countBytes.readUInt32BE(0), ctx.limits.maxConfigItems, 'capability count', undefined, r.offset - 4);
        sub.capabilities = [];
        for (let i = 0; i < count; i++) {
          yield* ctx.need(1, 'a capability name');
          const l = r.peekU8();
          yield* ctx.need(1 + l, 'a capability name');
          const b = r.take(1 + l);
          body.push(b);
          sub.capabilities.push(b.subarray(1).toString('latin1'));
        }
      } else if (name === CONFIG_SUBSECTION_TARGET_PAGE_BITS) {
        yield* ctx.need(4, 'target page bits');
        const b = r.take(4);
        body.push(b);
        sub.targetPageBits = b.readUInt32BE(0);
      } else if (name === CONFIG_SUBSECTION_UUID) {
        yield* ctx.need(UUID_BYTES, 'the uuid');
        body.push(r.take(UUID_BYTES));
      } else {
        throw ctx.error('ESTREAM_FORMAT', 'unknown configuration subsection', { offset: subAt, found: JSON.stringify(name) });
      }
      sub.body = Buffer.concat(body);
      subsections.push(sub);
    }
    for (const s of subsections) {
      if (s.capabilities?.includes(CAP_X_IGNORE_SHARED)) this.ram.ignoreShared = true;
      if (s.capabilities?.includes(CAP_MAPPED_RAM)) this.ram.mappedRam = true;
      if (s.targetPageBits !== undefined && this.opts.pageSize === undefined) this.ram.pageSize = 2 ** s.targetPageBits;
    }
    ctx.emit({ type: 'configuration', offset: at, machineType, subsections });
  }

  private *section(kind: SectionKind): Step {
    const { r, ctx } = this;
    const at = r.offset;
    let sec: SectionRef;
    if (kind === 'START' || kind === 'FULL') {
      yield* ctx.need(6, `a ${kind} section header`);
      r.skip(1);
      const sectionId = r.be32();
      const len = r.u8();
      yield* ctx.need(len + 8, `a ${kind} section header`);
      const idstr = r.str(len);
      const instanceId = r.be32();
      const versionId = r.be32();
      const handler = idstr === RAM_IDSTR && instanceId === 0 ? 'ram' : isVfioIdstr(idstr) ? 'vfio' : 'vmstate';
      sec = { sectionId, idstr, instanceId, versionId, handler };
      if (kind === 'START') {
        if (handler === 'vmstate') {
          throw ctx.error('ESTREAM_CANNOT_DELIMIT', 'iterative section of a kind this codec has no decoder for (block, dirty-bitmap, ...)', { offset: at, section: sec });
        }
        this.sections.set(sectionId, sec);
      }
    } else {
      yield* ctx.need(5, `a ${kind} section header`);
      r.skip(1);
      const sectionId = r.be32();
      const known = this.sections.get(sectionId);
      if (!known) throw ctx.error('ESTREAM_FORMAT', `${kind} for a section without START`, { offset: at, found: `section id ${sectionId}` });
      sec = known;
    }
    ctx.emit({ type: 'section', offset: at, kind, section: sec });

    if (sec.handler === 'ram') {
      if (kind === 'FULL') throw ctx.error('ESTREAM_FORMAT', 'FULL section for "ram"', { offset: at, section: sec });
      yield* decodeRamBody(ctx, sec, this.ram);
    } else if (sec.handler === 'vfio') {
      const desc = kind === 'FULL' ? this.vmdescIndex?.take(sec.idstr, sec.instanceId) : undefined;
      const bodyAt = r.offset;
      yield* decodeVfioBody(ctx, sec, kind, desc);
      if (desc) {
        const want = desc.fields ? desc.fields.reduce((n, f) => n + f.size * (f.array_len ?? 1), 0) : desc.size;
        if (want !== undefined && want !== r.offset - bodyAt) {
          throw ctx.error('ESTREAM_FORMAT', 'VFIO FULL body size differs from the vmdesc', { offset: bodyAt, section: sec, expected: String(want), found: String(r.offset - bodyAt) });
        }
      }
    } else {
      const desc = this.vmdescIndex?.take(sec.idstr, sec.instanceId);
      if (!desc) {
        throw ctx.error('ESTREAM_CANNOT_DELIMIT', this.vmdescIndex ? 'FULL section not described in the vmdesc' : 'FULL section needs the vmdesc to be delimited (read a seekable file or pass the vmdesc)', {
          offset: at,
          section: sec,
        });
      }
      const bodyAt = r.offset;
      const data = yield* readVmstateBody(ctx, sec, desc);
      ctx.emit({ type: 'vmstate', offset: bodyAt, section: sec, data, desc });
    }
    yield* this.footer(sec);
  }

  /** Optional footer 0x7e be32 id (send-section-footer); all sections agree on having one. */
  private *footer(sec: SectionRef): Step {
    const { r, ctx } = this;
    const at = r.offset;
    const have = yield* ctx.upTo(1);
    if (have === 0) throw ctx.error('ESTREAM_TRUNCATED', 'stream ends after a section body', { section: sec, expected: 'a section footer or the next record' });
    const present = r.peekU8() === RecordType.SECTION_FOOTER;
    if (this.footers === undefined) this.footers = present;
    if (present !== this.footers) {
      throw ctx.error('ESTREAM_FORMAT', present ? 'unexpected section footer' : 'missing section footer', {
        offset: at,
        section: sec,
        expected: present ? 'a record type byte' : `${hex(RecordType.SECTION_FOOTER)} + section id`,
        found: hex(r.peekU8()),
      });
    }
    if (!present) return;
    yield* ctx.need(5, 'a section footer', sec);
    r.skip(1);
    const id = r.be32();
    if (id !== sec.sectionId) {
      throw ctx.error('ESTREAM_FORMAT', 'section footer id mismatch', { offset: at, section: sec, expected: String(sec.sectionId), found: String(id) });
    }
    ctx.emit({ type: 'footer', offset: at, section: sec });
  }

  private *command(): Step {
    const { r, ctx } = this;
    const at = r.offset;
    yield* ctx.need(5, 'a COMMAND header');
    r.skip(1);
    const command = r.be16();
    const len = r.be16();
    if (command === VmCommand.INVALID || command > VmCommand.SWITCHOVER_START) {
      throw ctx.error('ESTREAM_FORMAT', 'unknown QEMU_VM_COMMAND', { offset: at + 1, expected: `1..${VmCommand.SWITCHOVER_START}`, found: String(command) });
    }
    ctx.length(len, 0xffff, 'COMMAND length', undefined, at + 3);
    yield* ctx.need(len, 'a COMMAND payload');
    const data = r.take(len);
    if (command === VmCommand.POSTCOPY_ADVISE && len === 16) {
      this.ram.postcopy = { pageSummary: data.readBigUInt64BE(0) };
    }
    ctx.emit({ type: 'command', offset: at, command, name: commandName(command), data });
  }

  /** After EOF: nothing, or 0x06 be32 len + JSON ending the input (§5). */
  private *trailer(): Step {
    const { r, ctx } = this;
    if (yield* ctx.atEnd()) return;
    const at = r.offset;
    const type = r.peekU8();
    if (type !== RecordType.VMDESCRIPTION) {
      throw ctx.error('ESTREAM_FORMAT', 'unexpected byte after EOF', { offset: at, expected: `${hex(RecordType.VMDESCRIPTION)} (vmdesc) or end of input`, found: hex(type) });
    }
    yield* ctx.need(5, 'the vmdesc header');
    r.skip(1);
    const len = ctx.length(r.be32(), ctx.limits.maxBufferedBytes, 'vmdesc length', undefined, at + 1);
    yield* ctx.need(len, 'the vmdesc JSON');
    const json = r.take(len);
    const desc = parseVmDesc(json, at + 5);
    ctx.emit({ type: 'vmdesc', offset: at, json, desc });
    if (!(yield* ctx.atEnd())) {
      throw ctx.error('ESTREAM_FORMAT', 'trailing bytes after the vmdesc', { expected: 'end of input' });
    }
  }
}
