// Writing a converted stream back as a libvirt save image when its input was one:
// the same header fields, domain XML, cookie and data length (so the XML area keeps
// libvirt's room for edits), with the format the stream is written in: raw unless
// asked for (a compressed format pipes the stream through its program, compress.ts).
import type { Writable } from 'node:stream';
import { stat } from 'node:fs/promises';
import { UsageError } from '../errors.js';
import { writeFileAtomically } from '../util/atomic-file.js';
import { encodeLibvirtHeader, type LibvirtFormat, type LibvirtImageHeader } from './header.js';
import { writeCompressed } from './compress.js';
import { readLibvirtImageHeader } from './image.js';

/**
 * The header + XML area an output of `img`'s stream starts with (format raw unless given).
 * `xml` replaces the domain XML (as `virsh save-image-define` does); the data length grows
 * when it no longer fits (libvirt would refuse, but we rewrite the whole file anyway).
 */
export function rawImageHeaderFor(img: LibvirtImageHeader, xml = img.xml, format: LibvirtFormat = 'raw'): Buffer {
  const need = Buffer.byteLength(xml) + 1 + (img.cookie === undefined ? 0 : Buffer.byteLength(img.cookie) + 1);
  const dataLen = need <= img.dataLen ? img.dataLen : undefined;
  return encodeLibvirtHeader({ version: 2, wasRunning: img.wasRunning, format, xml, cookie: img.cookie, ...(dataLen !== undefined ? { dataLen } : {}) });
}

/** Output options for a libvirt image written back. */
export interface LibvirtOutputOptions {
  /** Replacement domain XML; only for libvirt image inputs. */
  xml?: string;
  /** The output image's format (default raw); only for libvirt image inputs. 'sparse' is written by the caller's `fill`. */
  format?: LibvirtFormat;
}

/**
 * Writes `outPath` atomically like writeFileAtomically; when `inPath` is a libvirt save
 * image, the output is one too (its header first, then what `fill` writes). The one
 * place converted outputs of stream files are created.
 */
export async function writeStreamOutput<T>(inPath: string, outPath: string, fill: (out: Writable) => Promise<T>, opts: LibvirtOutputOptions = {}): Promise<T> {
  const img = (await stat(inPath)).isFile() ? await readLibvirtImageHeader(inPath) : undefined;
  if (opts.xml !== undefined) {
    if (!img) throw new UsageError(`--xml replaces a libvirt save image's domain XML; ${inPath} is not a libvirt save image`);
    if (!/^\s*<domain[\s>]/.test(opts.xml) || opts.xml.includes('\0')) throw new UsageError('--xml wants a libvirt domain XML (starting with <domain>, no NUL bytes)');
  }
  const format = opts.format ?? 'raw';
  if (!img && format !== 'raw' && format !== 'sparse') throw new UsageError(`--format ${format} writes a compressed libvirt save image; ${inPath} is a QEMU stream, not a libvirt save image`);
  return writeFileAtomically(outPath, async (out) => {
    if (img) out.write(rawImageHeaderFor(img, opts.xml, format));
    if (format === 'raw' || format === 'sparse') return fill(out);
    return writeCompressed(format, out, outPath, fill);
  });
}
