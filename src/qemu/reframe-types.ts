// The types of reframe (options, changes, result), in their own file so that reframe.ts and
// the mapped-ram conversion it calls (reframe-mapped-ram.ts) can both use them without
// importing each other.
import type { FileReadOptions } from './reader.js';
import type { LibvirtFormat } from '../libvirt/header.js';

/** A QEMU version as major.minor. */
export interface QemuRelease {
  major: number;
  minor: number;
}

export interface ReframeOptions extends FileReadOptions {
  /** The destination's QEMU version; undefined keeps version-specific records. */
  target?: QemuRelease;
  /** Captures of the migration's multifd channels (the proxy's FILE.multifd-N tees), merged in. */
  multifd?: readonly string[];
  /** Write the stream even when `target` cannot load it (a newer machine type): a warning instead of a refusal. */
  force?: boolean;
  /** Output format (default raw): a mapped-ram input becomes a plain stream unless 'sparse'; compressed ones for libvirt images only. */
  format?: LibvirtFormat;
  /** A libvirt image's replacement domain XML. */
  xml?: string;
}

export type ReframeAction = 'dropped' | 'replaced' | 'inserted';

export interface ReframeChange {
  /** Offset of the changed record in the input. */
  offset: number;
  /** What was there, e.g. "command OPEN_RETURN_PATH" or "vfio DEV_INIT_DATA_SENT". */
  what: string;
  action: ReframeAction;
  /** Why the destination needs the change. */
  why: string;
  sectionId?: number;
  idstr?: string;
}

export interface ReframeResult {
  bytesIn: number;
  bytesOut: number;
  changes: ReframeChange[];
  /** What the target QEMU will refuse although --force wrote it anyway. */
  warnings: string[];
  /** The multifd channel captures merged in (channel id, file, bytes). */
  multifd: { channelId: number; path: string; bytes: number }[];
}
