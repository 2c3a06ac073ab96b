// libvirt's save image header ("virsh save", "managedsave"): a fixed 92-byte
// header, the domain XML (NUL-terminated), an optional save cookie
// (NUL-terminated), zero padding, then the QEMU migration stream, possibly piped
// through a compressor. Layout learned from libvirt's qemu_saveimage.{c,h}:
//
//   0  char[16] magic       "LibvirtQemudSave" when complete,
//                           "LibvirtQemudPart" while libvirt is still writing
//  16  u32 version          1 or 2 (native byte order of the writing host)
//  20  u32 data_len         bytes of XML + cookie + padding after the header
//  24  u32 was_running      1 when the domain ran when saved
//  28  u32 format           0 raw, 1 gzip, 2 bzip2, 3 xz, 4 lzop, 5 zstd, 6 sparse
//  32  u32 cookieOffset     XML length incl. its NUL when a cookie follows, else 0
//  36  u32 unused[14]
//
// libvirt reads the integers in host order and byte-swaps them when the version
// looks larger than it knows; so do we. Only version 2 images are decompressed
// by libvirt: a version 1 image's stream is read as it is whatever `format` says.
import { LibvirtImageError } from './errors.js';

export const LIBVIRT_MAGIC = 'LibvirtQemudSave';
export const LIBVIRT_PARTIAL_MAGIC = 'LibvirtQemudPart';
export const LIBVIRT_HEADER_SIZE = 92;
export const LIBVIRT_MAX_VERSION = 2;
/** libvirt leaves this much zero padding after XML + cookie so the XML can be edited in place. */
export const LIBVIRT_XML_PADDING = 64 * 1024;

/** On-disk format numbers, in order (the index is the number). */
export const LIBVIRT_FORMATS = ['raw', 'gzip', 'bzip2', 'xz', 'lzop', 'zstd', 'sparse'] as const;
export type LibvirtFormat = (typeof LIBVIRT_FORMATS)[number];

/** Refuse absurd data_len before allocating it (libvirt's own XML is far below this). */
const MAX_DATA_LEN = 64 << 20;

export interface LibvirtHeader {
  version: number;
  /** Bytes after the 92-byte header before the QEMU stream (XML + cookie + padding). */
  dataLen: number;
  wasRunning: boolean;
  format: LibvirtFormat;
  formatNumber: number;
  cookieOffset: number;
  /** False when the integers were stored big-endian (written on a big-endian host). */
  littleEndian: boolean;
}

export interface LibvirtImageHeader extends LibvirtHeader {
  /** The domain XML without its NUL. */
  xml: string;
  /** The save cookie XML without its NUL, or undefined. */
  cookie: string | undefined;
  /** File offset where the QEMU stream (or its compressed form) starts. */
  streamOffset: number;
  /** How the stream bytes are stored: the decompression program, or undefined when stored as is. */
  compression: Exclude<LibvirtFormat, 'raw' | 'sparse'> | undefined;
}

/** True when the first bytes carry libvirt's magic (complete or partial). */
export function hasLibvirtMagic(head: Buffer): boolean {
  if (head.length < 16) return false;
  const m = head.toString('latin1', 0, 16);
  return m === LIBVIRT_MAGIC || m === LIBVIRT_PARTIAL_MAGIC;
}

/** Decodes the fixed 92-byte header. `path` names the file in errors. */
export function decodeLibvirtHeader(buf: Buffer, path: string): LibvirtHeader {
  if (buf.length < LIBVIRT_HEADER_SIZE) {
    throw new LibvirtImageError('ELIBVIRT_TRUNCATED', path, buf.length, `the ${LIBVIRT_HEADER_SIZE}-byte libvirt header is cut short (${buf.length} bytes)`);
  }
  const magic = buf.toString('latin1', 0, 16);
  if (magic === LIBVIRT_PARTIAL_MAGIC) {
    throw new LibvirtImageError('ELIBVIRT_INCOMPLETE', path, 0, 'libvirt save image is incomplete (magic "LibvirtQemudPart": libvirt did not finish writing it)');
  }
  if (magic !== LIBVIRT_MAGIC) throw new LibvirtImageError('ELIBVIRT_FORMAT', path, 0, `not a libvirt save image (magic ${JSON.stringify(magic)})`);
  let le = true;
  let version = buf.readUInt32LE(16);
  if (version > LIBVIRT_MAX_VERSION) {
    le = false;
    version = buf.readUInt32BE(16);
  }
  const u32 = (at: number): number => (le ? buf.readUInt32LE(at) : buf.readUInt32BE(at));
  if (version < 1 || version > LIBVIRT_MAX_VERSION) {
    throw new LibvirtImageError('ELIBVIRT_FORMAT', path, 16, `unsupported libvirt save image version ${buf.readUInt32LE(16)} (known: 1, 2)`);
  }
  const dataLen = u32(20);
  if (dataLen === 0 || dataLen > MAX_DATA_LEN) throw new LibvirtImageError('ELIBVIRT_FORMAT', path, 20, `invalid libvirt header data length ${dataLen}`);
  const formatNumber = u32(28);
  const format = LIBVIRT_FORMATS[formatNumber];
  if (format === undefined) throw new LibvirtImageError('ELIBVIRT_FORMAT', path, 28, `unknown libvirt save image format ${formatNumber}`);
  const cookieOffset = u32(32);
  if (cookieOffset > dataLen) throw new LibvirtImageError('ELIBVIRT_FORMAT', path, 32, `libvirt cookie offset ${cookieOffset} beyond the data length ${dataLen}`);
  return { version, dataLen, wasRunning: u32(24) !== 0, format, formatNumber, cookieOffset, littleEndian: le };
}

/** Splits the data area (XML, cookie, padding) that follows the header. */
export function decodeLibvirtData(h: LibvirtHeader, data: Buffer, path: string): LibvirtImageHeader {
  const at = LIBVIRT_HEADER_SIZE;
  if (data.length < h.dataLen) {
    throw new LibvirtImageError('ELIBVIRT_TRUNCATED', path, at + data.length, `libvirt domain XML area cut short: ${data.length} of ${h.dataLen} bytes`);
  }
  const xmlLen = h.cookieOffset || h.dataLen;
  const xmlEnd = data.indexOf(0);
  if (xmlEnd < 0 || xmlEnd >= xmlLen) throw new LibvirtImageError('ELIBVIRT_FORMAT', path, at + xmlLen - 1, 'libvirt domain XML is not NUL-terminated');
  let cookie: string | undefined;
  if (h.cookieOffset) {
    const end = data.indexOf(0, h.cookieOffset);
    if (end < 0 || end >= h.dataLen) throw new LibvirtImageError('ELIBVIRT_FORMAT', path, at + h.dataLen - 1, 'libvirt save cookie is not NUL-terminated');
    cookie = data.toString('utf8', h.cookieOffset, end);
  }
  const compression = h.version === 2 && h.format !== 'raw' && h.format !== 'sparse' ? h.format : undefined;
  return { ...h, xml: data.toString('utf8', 0, xmlEnd), cookie, streamOffset: at + h.dataLen, compression };
}

/**
 * Encodes header + data area as libvirt writes them: XML and cookie each with a NUL,
 * zero padding up to `dataLen` (default: what they need plus libvirt's 64 KiB), the
 * complete magic. Little-endian integers (x86 and arm64 hosts).
 */
export function encodeLibvirtHeader(h: { version?: number; wasRunning: boolean; format: LibvirtFormat; xml: string; cookie?: string | undefined; dataLen?: number }): Buffer {
  const xml = Buffer.from(h.xml + '\0', 'utf8');
  const cookie = h.cookie !== undefined ? Buffer.from(h.cookie + '\0', 'utf8') : Buffer.alloc(0);
  const need = xml.length + cookie.length;
  const dataLen = h.dataLen ?? need + LIBVIRT_XML_PADDING;
  if (need > dataLen) throw new RangeError(`libvirt XML and cookie (${need} bytes) do not fit the data length ${dataLen}`);
  const out = Buffer.alloc(LIBVIRT_HEADER_SIZE + dataLen);
  out.write(LIBVIRT_MAGIC, 0, 'latin1');
  out.writeUInt32LE(h.version ?? LIBVIRT_MAX_VERSION, 16);
  out.writeUInt32LE(dataLen, 20);
  out.writeUInt32LE(h.wasRunning ? 1 : 0, 24);
  out.writeUInt32LE(LIBVIRT_FORMATS.indexOf(h.format), 28);
  out.writeUInt32LE(h.cookie !== undefined ? xml.length : 0, 32);
  xml.copy(out, LIBVIRT_HEADER_SIZE);
  cookie.copy(out, LIBVIRT_HEADER_SIZE + xml.length);
  return out;
}
