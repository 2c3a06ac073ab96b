// Typed errors for libvirt save images: every one names the file and the byte offset.
import { MigbridgeError } from '../errors.js';

export type LibvirtImageErrorCode =
  /** The header or the XML area ends before its declared size. */
  | 'ELIBVIRT_TRUNCATED'
  /** A header field or the XML area breaks libvirt's format. */
  | 'ELIBVIRT_FORMAT'
  /** The image still has libvirt's "being written" magic. */
  | 'ELIBVIRT_INCOMPLETE'
  /** The decompression program is missing or failed. */
  | 'ELIBVIRT_DECOMPRESS'
  /** The compression program is missing or failed (writing a compressed image). */
  | 'ELIBVIRT_COMPRESS';

export class LibvirtImageError extends MigbridgeError {
  constructor(code: LibvirtImageErrorCode, path: string, offset: number | undefined, what: string, cause?: unknown) {
    super(code, `${path}: ${what}${offset !== undefined ? ` at offset ${offset} (0x${offset.toString(16)})` : ''}`, {
      ...(offset !== undefined ? { offset } : {}),
      ...(cause !== undefined ? { cause } : {}),
      path,
    });
  }
}
