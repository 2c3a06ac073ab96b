// Writing a converted stream back as a libvirt save image when its input was one:
// the same header fields, domain XML, cookie and data length (so the XML area keeps
// libvirt's room for edits), with the format the stream is written in: raw unless
// asked for (a compressed format pipes the stream through its program, compress.ts).
import type { Writable } from 'node:stream';
import { stat } from 'node:fs/promises';
import { UsageError } from '../errors.js';
import { OutputFile, writeFileAtomically } from '../util/atomic-file.js';
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
  const img = await libvirtInput(inPath, opts);
  const format = opts.format ?? 'raw';
  if (format === 'sparse') throw new UsageError('--format sparse (mapped-ram) is written by reframe only');
  if (!img && format !== 'raw') throw new UsageError(`--format ${format} writes a compressed libvirt save image; ${inPath} is a QEMU stream, not a libvirt save image`);
  return writeFileAtomically(outPath, async (out) => {
    if (img) out.write(rawImageHeaderFor(img, opts.xml, format));
    if (format === 'raw') return fill(out);
    return writeCompressed(format, out, outPath, fill);
  });
}

/** The input's libvirt header when it is a libvirt image; checks the output options against it. */
async function libvirtInput(inPath: string, opts: LibvirtOutputOptions): Promise<LibvirtImageHeader | undefined> {
  const img = (await stat(inPath)).isFile() ? await readLibvirtImageHeader(inPath) : undefined;
  if (opts.xml !== undefined) {
    if (!img) throw new UsageError(`--xml replaces a libvirt save image's domain XML; ${inPath} is not a libvirt save image`);
    if (!/^\s*<domain[\s>]/.test(opts.xml) || opts.xml.includes('\0')) throw new UsageError('--xml wants a libvirt domain XML (starting with <domain>, no NUL bytes)');
  }
  return img;
}

/**
 * writeStreamOutput for a stream written by file offset (the mapped-ram layout): `fill` gets
 * the output file and the offset where the stream starts (after the libvirt header, format
 * sparse, when `inPath` is a libvirt image). Atomic and 0600 like every output.
 */
export async function writePositionalOutput<T>(inPath: string, outPath: string, fill: (file: OutputFile, start: number) => Promise<T>, opts: LibvirtOutputOptions = {}): Promise<T> {
  const img = await libvirtInput(inPath, opts);
  const file = await OutputFile.create(outPath);
  try {
    const header = img ? rawImageHeaderFor(img, opts.xml, 'sparse') : Buffer.alloc(0);
    await file.write(header, 0);
    const result = await fill(file, header.length);
    await file.commit();
    return result;
  } catch (e) {
    await file.abort();
    throw e;
  }
}
