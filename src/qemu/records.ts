// Typed events of a decoded migration stream. Each event stands for one
// contiguous run of bytes starting at `offset`, and encode.ts turns every event
// back into exactly those bytes; so "decode then encode every event" is the
// byte-exact rewrite. Payloads (RAM pages, VFIO DATA_STATE chunks) are slices of
// the input, never the whole stream.
import type { SectionKind, VfioMarkerName } from './constants.js';
import type { VmDesc, VmDescDevice } from './vmdesc.js';

/** The section a body event belongs to (shared object per section id). */
export interface SectionRef {
  readonly sectionId: number;
  readonly idstr: string;
  readonly instanceId: number;
  readonly versionId: number;
  /** How the body is decoded. */
  readonly handler: 'ram' | 'vfio' | 'vmstate';
}

export interface ConfigSubsection {
  name: string;
  version: number;
  /** Raw body bytes (exact). */
  body: Buffer;
  /** Decoded "configuration/capabilities" list. */
  capabilities?: string[];
  /** Decoded "configuration/target-page-bits". */
  targetPageBits?: number;
}

export interface MappedRamHeader {
  version: number;
  pageSize: bigint;
  bitmapOffset: bigint;
  pagesOffset: bigint;
}

export interface RamBlockInfo {
  name: string;
  usedLength: number;
  /** Present only with postcopy-ram when the block's page size differs from the host's (§6.2). */
  pageSize?: number;
  /** Present only with x-ignore-shared: the block's guest physical address (§6.2). */
  gpa?: bigint;
  /** Present only with mapped-ram (§6.7). */
  mappedRam?: MappedRamHeader;
}

interface At {
  /** Byte offset of the first byte of this event in the stream. */
  offset: number;
}

interface InSection extends At {
  section: SectionRef;
}

export type HeaderEvent = At & { type: 'header'; magic: number; version: number };
export type ConfigurationEvent = At & { type: 'configuration'; machineType: string; subsections: ConfigSubsection[] };
/** Section header of START/PART/END/FULL; PART/END carry only the id in the bytes. */
export type SectionEvent = At & { type: 'section'; kind: SectionKind; section: SectionRef };
export type FooterEvent = InSection & { type: 'footer' };
export type CommandEvent = At & { type: 'command'; command: number; name: string; data: Buffer };
export type EofEvent = At & { type: 'eof' };
export type VmdescEvent = At & { type: 'vmdesc'; json: Buffer; desc: VmDesc };

/** Fields common to RAM records: the be64 word is `address | flags`. */
interface RamBase extends InSection {
  flags: number;
  address: number;
}
/** A page-carrying RAM record: block id written only when CONTINUE is clear. */
interface RamPageBase extends RamBase {
  /** The block the page belongs to (resolved through CONTINUE). */
  block: string;
  /** CONTINUE flag set: no block id in the bytes. */
  continued: boolean;
}
export type RamMemSizeEvent = RamBase & { type: 'ram-mem-size'; blocks: RamBlockInfo[] };
export type RamPageEvent = RamPageBase & { type: 'ram-page'; data: Buffer };
export type RamZeroEvent = RamPageBase & { type: 'ram-zero'; fill: number };
export type RamXbzrleEvent = RamPageBase & { type: 'ram-xbzrle'; data: Buffer };
export type RamCompressedEvent = RamPageBase & { type: 'ram-compressed'; data: Buffer };
export type RamEosEvent = RamBase & { type: 'ram-eos' };
export type RamMultifdFlushEvent = RamBase & { type: 'ram-multifd-flush' };
export type RamEvent =
  | RamMemSizeEvent
  | RamPageEvent
  | RamZeroEvent
  | RamXbzrleEvent
  | RamCompressedEvent
  | RamEosEvent
  | RamMultifdFlushEvent;

/** A bare VFIO be64 marker (not DATA_STATE, which is VfioDataEvent). */
export type VfioMarkerEvent = InSection & { type: 'vfio-marker'; marker: Exclude<VfioMarkerName, 'DEV_DATA_STATE'> };
/** DATA_STATE marker + be64 size; `size` payload bytes follow as vfio-data-chunk events. */
export type VfioDataEvent = InSection & { type: 'vfio-data'; size: number; sectionKind: SectionKind };
/** A piece of a DATA_STATE payload, as it arrived (streamed, not buffered whole). */
export type VfioDataChunkEvent = InSection & { type: 'vfio-data-chunk'; data: Buffer };
/** The config vmstate bytes between DEV_CONFIG_STATE and its END_OF_STATE. */
export type VfioConfigEvent = InSection & { type: 'vfio-config'; data: Buffer };
/**
 * A VFIO FULL section whose body is only END_OF_STATE (10.0) or DEV_CONFIG_LOAD_READY (10.1):
 * QEMU's multifd device-state transfer sent the device's stop-copy data and config over the
 * multifd channels, and this marker stands in for them. The one event every consumer
 * (inspect, extract, reframe, restore) recognises such a section by; it encodes as the marker.
 */
export type VfioMultifdPlaceholderEvent = InSection & { type: 'vfio-multifd-placeholder'; marker: 'END_OF_STATE' | 'DEV_CONFIG_LOAD_READY' };
export type VfioEvent = VfioMarkerEvent | VfioDataEvent | VfioDataChunkEvent | VfioConfigEvent | VfioMultifdPlaceholderEvent;

/** A whole FULL vmstate body, framed by the vmdesc entry `desc`. */
export type VmstateEvent = InSection & { type: 'vmstate'; data: Buffer; desc: VmDescDevice };

export type StreamEvent =
  | HeaderEvent
  | ConfigurationEvent
  | SectionEvent
  | FooterEvent
  | CommandEvent
  | EofEvent
  | VmdescEvent
  | RamEvent
  | VfioEvent
  | VmstateEvent;
