// Builds the `inspect` report from the event stream: every record with its
// offset and length, a RAM summary, and a per-device VFIO summary with the
// QEMU-version flavour the chunks show (§9.3-9.6).
import { machineTypeRelease } from './machine-type.js';
import { StreamError } from './errors.js';
import { type RecordKind, type SectionKind, CAP_X_IGNORE_SHARED, DEFAULT_TARGET_PAGE_SIZE } from './constants.js';
import type { StreamEvent, RamBlockInfo, SectionRef } from './records.js';
import { decodeVmstate, type DumpValue } from './vmstate.js';
import { probeStreamFile, readStreamFile, type FileReadOptions } from './reader.js';
import { summarizeLibvirtImage, type LibvirtImageSummary } from '../libvirt/image.js';

export interface RecordSummary {
  offset: number;
  kind: RecordKind;
  sectionId: number | null;
  idstr: string | null;
  instanceId: number | null;
  versionId: number | null;
  /** Bytes from this record's type byte up to the next record (or the end). */
  length: number;
  /** COMMAND records: the command name. */
  command?: string;
}

/**
 * When a DATA_STATE chunk was read off the device: before the source stopped (precopy) or
 * after (stop-copy). START chunks are setup, END and FULL ones are written after the stop;
 * a PART is placed by the stream's SWITCHOVER_START (QEMU 10.0+ machine types, and
 * migbridge saves with them); without that marker a PART's phase is unknown (QEMU itself
 * only writes precopy PARTs, but an interleaved save writes stop-copy data as PARTs too).
 */
export type DataPhase = 'precopy' | 'stop-copy' | 'unknown';

export interface VfioChunkSummary {
  /** Offset of the DATA_STATE marker. */
  offset: number;
  /** Offset of the first payload byte. */
  payloadOffset: number;
  size: number;
  section: SectionKind;
  phase: DataPhase;
}

export interface VfioDeviceSummary {
  idstr: string;
  sectionId: number;
  instanceId: number;
  /** Sum of DATA_STATE payload sizes. */
  dataBytes: number;
  /** Number of DATA_STATE records. */
  chunks: number;
  precopyBytes: number;
  stopCopyBytes: number;
  /** PART chunk bytes of a stream without SWITCHOVER_START: precopy or stop-copy, the stream does not say. */
  phaseUnknownBytes: number;
  /** Bytes of the config vmstate between DEV_CONFIG_STATE and END_OF_STATE (null if none). */
  configBytes: number | null;
  configOffset: number | null;
  sections: Record<SectionKind, number>;
  markers: Record<string, number>;
  dataChunks: VfioChunkSummary[];
  /** Which QEMU version's VFIO framing the chunks show, and why. */
  flavour: string;
  evidence: string[];
}

export interface RamSummary {
  pageSize: number;
  blocks: RamBlockInfo[];
  /** Page-carrying records by flag. */
  pages: { PAGE: number; ZERO: number; XBZRLE: number; COMPRESS_PAGE: number };
  /** Non-page records by flag. */
  records: { MEM_SIZE: number; EOS: number; MULTIFD_FLUSH: number };
  ignoreShared: boolean;
}

export interface InspectReport {
  size: number;
  header: { magic: number; magicText: string; version: number };
  configuration: { machineType: string; capabilities: string[]; subsections: { name: string; version: number; bytes: number }[] } | null;
  records: RecordSummary[];
  ram: RamSummary | null;
  vfio: VfioDeviceSummary[];
  vmdesc: { offset: number; bytes: number; devices: number; pageSize: number | null } | null;
  /** Offset of the COMMAND SWITCHOVER_START record (the source stopped there), null when the stream has none. */
  switchoverStart: number | null;
  /** Decoded sections, keyed "idstr (section id)" like analyze-migration.py -d state (with --dump state). */
  state?: Record<string, DumpValue>;
  /** Present when the file is a libvirt save image: its header and domain (offsets above count from the stream). */
  libvirt?: LibvirtImageSummary;
}

const SECTION_ZERO = (): Record<SectionKind, number> => ({ START: 0, PART: 0, END: 0, FULL: 0 });

/** Accumulates an InspectReport; feed every event, then call finish(total bytes). */
export class Inspector {
  private report: InspectReport = {
    size: 0,
    header: { magic: 0, magicText: '', version: 0 },
    configuration: null,
    records: [],
    ram: null,
    vfio: [],
    vmdesc: null,
    switchoverStart: null,
  };
  private vfio = new Map<number, VfioDeviceSummary>();
  private state: Record<string, DumpValue> | undefined;
  private hasSwitchover = false;
  /** Devices whose FULL section is a multifd placeholder. */
  private readonly viaMultifd = new Set<number>();
  private machineVersion: number | undefined;
  /** End of the stream: after EOF, or after the vmdesc. */
  private end = 0;

  private readonly pageSize: number;

  constructor(opts: { dumpState?: boolean; pageSize?: number } = {}) {
    if (opts.dumpState) this.state = {};
    this.pageSize = opts.pageSize ?? DEFAULT_TARGET_PAGE_SIZE;
  }

  private record(offset: number, kind: RecordKind, sec?: SectionRef, command?: string): void {
    this.report.records.push({
      offset,
      kind,
      sectionId: sec?.sectionId ?? null,
      idstr: sec?.idstr ?? null,
      instanceId: sec?.instanceId ?? null,
      versionId: sec?.versionId ?? null,
      length: 0,
      ...(command !== undefined ? { command } : {}),
    });
  }

  private ram(): RamSummary {
    if (!this.report.ram) {
      this.report.ram = {
        pageSize: this.pageSize,
        blocks: [],
        pages: { PAGE: 0, ZERO: 0, XBZRLE: 0, COMPRESS_PAGE: 0 },
        records: { MEM_SIZE: 0, EOS: 0, MULTIFD_FLUSH: 0 },
        ignoreShared: (this.report.configuration?.capabilities ?? []).includes(CAP_X_IGNORE_SHARED),
      };
    }
    return this.report.ram;
  }

  private device(sec: SectionRef): VfioDeviceSummary {
    let d = this.vfio.get(sec.sectionId);
    if (!d) {
      d = {
        idstr: sec.idstr,
        sectionId: sec.sectionId,
        instanceId: sec.instanceId,
        dataBytes: 0,
        chunks: 0,
        precopyBytes: 0,
        stopCopyBytes: 0,
        phaseUnknownBytes: 0,
        configBytes: null,
        configOffset: null,
        sections: SECTION_ZERO(),
        markers: {},
        dataChunks: [],
        flavour: '',
        evidence: [],
      };
      this.vfio.set(sec.sectionId, d);
      this.report.vfio.push(d);
    }
    return d;
  }

  private stateKey(sec: SectionRef): string {
    return `${sec.idstr} (${sec.sectionId})`;
  }

  add(ev: StreamEvent): void {
    switch (ev.type) {
      case 'header':
        this.report.header = { magic: ev.magic, magicText: Buffer.from([ev.magic >>> 24, (ev.magic >>> 16) & 255, (ev.magic >>> 8) & 255, ev.magic & 255]).toString('latin1'), version: ev.version };
        return;
      case 'configuration': {
        const caps = ev.subsections.flatMap((s) => s.capabilities ?? []);
        this.report.configuration = {
          machineType: ev.machineType,
          capabilities: caps,
          subsections: ev.subsections.map((s) => ({ name: s.name, version: s.version, bytes: s.body.length })),
        };
        const release = machineTypeRelease(ev.machineType);
        if (release) this.machineVersion = release.major + release.minor / 100;
        this.record(ev.offset, 'CONFIGURATION');
        return;
      }
      case 'section':
        this.record(ev.offset, ev.kind, ev.section);
        if (ev.section.handler === 'vfio') this.device(ev.section).sections[ev.kind]++;
        if (this.state && ev.section.handler === 'ram' && ev.kind === 'START') this.state[this.stateKey(ev.section)] = {};
        return;
      case 'command':
        if (ev.name === 'SWITCHOVER_START' && !this.hasSwitchover) this.switchover(ev.offset);
        this.record(ev.offset, 'COMMAND', undefined, ev.name);
        return;
      case 'eof':
        this.end = ev.offset + 1;
        this.record(ev.offset, 'EOF');
        return;
      case 'vmdesc':
        this.end = ev.offset + 5 + ev.json.length;
        this.record(ev.offset, 'VMDESCRIPTION');
        this.report.vmdesc = { offset: ev.offset, bytes: ev.json.length, devices: ev.desc.devices.length, pageSize: ev.desc.page_size ?? null };
        return;
      case 'footer':
        return;
      case 'ram-mem-size': {
        const ram = this.ram();
        ram.records.MEM_SIZE++;
        ram.blocks.push(...ev.blocks);
        if (this.state) {
          const sizes: Record<string, DumpValue> = {};
          for (const b of ev.blocks) sizes[b.name] = '0x' + b.usedLength.toString(16).padStart(16, '0');
          this.state[this.stateKey(ev.section)] = { 'section sizes': sizes };
        }
        return;
      }
      case 'ram-page':
        this.ram().pages.PAGE++;
        return;
      case 'ram-zero':
        this.ram().pages.ZERO++;
        return;
      case 'ram-xbzrle':
        this.ram().pages.XBZRLE++;
        return;
      case 'ram-compressed':
        this.ram().pages.COMPRESS_PAGE++;
        return;
      case 'ram-eos':
        this.ram().records.EOS++;
        return;
      case 'ram-multifd-flush':
        this.ram().records.MULTIFD_FLUSH++;
        return;
      case 'vfio-marker': {
        const d = this.device(ev.section);
        d.markers[ev.marker] = (d.markers[ev.marker] ?? 0) + 1;
        return;
      }
      case 'vfio-multifd-placeholder': {
        const d = this.device(ev.section);
        d.markers[ev.marker] = (d.markers[ev.marker] ?? 0) + 1;
        this.viaMultifd.add(ev.section.sectionId);
        if (ev.marker === 'END_OF_STATE') d.evidence.push('FULL chunk is a bare END_OF_STATE (config sent over multifd)');
        return;
      }
      case 'vfio-data': {
        const d = this.device(ev.section);
        d.markers.DEV_DATA_STATE = (d.markers.DEV_DATA_STATE ?? 0) + 1;
        d.chunks++;
        d.dataBytes += ev.size;
        const c: VfioChunkSummary = { offset: ev.offset, payloadOffset: ev.offset + 16, size: ev.size, section: ev.sectionKind, phase: this.phaseOf(ev.sectionKind) };
        if (c.phase === 'precopy') d.precopyBytes += ev.size;
        else if (c.phase === 'stop-copy') d.stopCopyBytes += ev.size;
        else d.phaseUnknownBytes += ev.size;
        if (ev.size === 0) d.evidence.push('zero-size DATA_STATE (only protocol v1 writes these)');
        d.dataChunks.push(c);
        return;
      }
      case 'vfio-data-chunk':
        return;
      case 'vfio-config': {
        const d = this.device(ev.section);
        d.configBytes = ev.data.length;
        d.configOffset = ev.offset;
        return;
      }
      case 'vmstate':
        if (this.state) this.state[this.stateKey(ev.section)] = decodeVmstate(ev.desc, ev.data);
        return;
    }
  }

  /** A chunk's phase as far as the stream has told so far (see DataPhase). */
  private phaseOf(section: SectionKind): DataPhase {
    if (section === 'START') return 'precopy';
    if (section === 'END' || section === 'FULL') return 'stop-copy';
    return this.hasSwitchover ? 'stop-copy' : 'unknown';
  }

  /** The source stopped here: every PART chunk before it was precopy. */
  private switchover(offset: number): void {
    this.hasSwitchover = true;
    this.report.switchoverStart = offset;
    for (const d of this.report.vfio) {
      for (const c of d.dataChunks) if (c.phase === 'unknown') c.phase = 'precopy';
      d.precopyBytes += d.phaseUnknownBytes;
      d.phaseUnknownBytes = 0;
    }
  }

  /** The report; `totalBytes` defaults to the end of the decoded stream. */
  finish(totalBytes: number = this.end): InspectReport {
    const recs = this.report.records;
    for (let i = 0; i < recs.length; i++) recs[i]!.length = (i + 1 < recs.length ? recs[i + 1]!.offset : totalBytes) - recs[i]!.offset;
    this.report.size = totalBytes;
    if (this.report.ram) this.report.ram.pageSize = this.pageSize;
    for (const d of this.report.vfio) this.classify(d);
    if (this.state) {
      for (const d of this.report.vfio) {
        this.state[`${d.idstr} (${d.sectionId})`] = {
          dataBytes: d.dataBytes,
          chunks: d.chunks,
          configBytes: d.configBytes ?? 0,
          flavour: d.flavour,
        };
      }
      this.report.state = this.state;
    }
    return this.report;
  }

  /** Names the QEMU VFIO framing the device's chunks match (docs §9.3-9.6). */
  private classify(d: VfioDeviceSummary): void {
    const ev = d.evidence;
    const m = d.markers;
    if (m.DEV_CONFIG_LOAD_READY) {
      ev.push('CONFIG_LOAD_READY marker (10.1+ multifd, load-config-after-iter)');
      d.flavour = 'qemu-10.1+ multifd';
    } else if (this.viaMultifd.has(d.sectionId)) {
      d.flavour = 'qemu-10.0+ multifd';
    } else if (m.DEV_INIT_DATA_SENT) {
      ev.push('INIT_DATA_SENT marker (8.1+ precopy with switchover-ack)');
      d.flavour = this.hasSwitchover ? 'qemu-10.0+ v2 precopy' : 'qemu-8.1+ v2 precopy';
    } else if (d.dataChunks.some((c) => c.size === 0) || (d.sections.PART > 0 && this.machineVersion !== undefined && this.machineVersion < 8)) {
      if (this.machineVersion !== undefined && this.machineVersion < 8) ev.push(`machine type ${this.report.configuration?.machineType} predates QEMU 8.0 (v1 removed)`);
      d.flavour = 'qemu-7.2 v1';
    } else if (this.hasSwitchover) {
      ev.push('SWITCHOVER_START command in the stream (10.0+)');
      d.flavour = d.sections.PART > 0 ? 'qemu-10.0+ v2 precopy' : 'qemu-10.0+ v2';
    } else if (d.sections.PART > 0) {
      ev.push('PART chunks without SWITCHOVER_START (8.1 to 9.2 precopy)');
      d.flavour = 'qemu-8.1+ v2 precopy';
    } else {
      ev.push('START/END/FULL only, no PART (8.0 v2 has no save_live_iterate)');
      d.flavour = 'qemu-8.0+ v2';
    }
  }
}

/** Decodes a whole stream file and returns its inspect report. */
export async function inspectStreamFile(path: string, opts: FileReadOptions & { dumpState?: boolean } = {}): Promise<InspectReport> {
  const { report, error } = await inspectStreamFileUpTo(path, opts);
  if (error) throw error;
  return report;
}

/**
 * Like inspectStreamFile, but a bad or truncated stream still gives the report of what
 * decoded before the error (its last record ends at the error's offset), with the error.
 */
export async function inspectStreamFileUpTo(path: string, opts: FileReadOptions & { dumpState?: boolean } = {}): Promise<{ report: InspectReport; error?: StreamError }> {
  const info = await probeStreamFile(path, opts);
  const pageSize = opts.pageSize ?? info.vmdesc?.page_size;
  const insp = new Inspector({ ...(opts.dumpState ? { dumpState: true } : {}), ...(pageSize ? { pageSize } : {}) });
  // A libvirt save image: its header and domain go into the report too.
  const withImage = (report: InspectReport): InspectReport => {
    if (info.libvirt) report.libvirt = summarizeLibvirtImage(info.libvirt);
    return report;
  };
  try {
    for await (const ev of readStreamFile(path, { ...opts, ...(info.vmdesc ? { vmdesc: info.vmdesc } : {}) })) insp.add(ev);
  } catch (e) {
    if (!(e instanceof StreamError)) throw e;
    return { report: withImage(insp.finish(e.offset ?? info.size ?? undefined)), error: e };
  }
  return { report: withImage(insp.finish(info.size ?? undefined)) };
}
