// Writing a converted stream back as a libvirt save image when its input was one:
// the same header fields, domain XML, cookie and data length (so the XML area keeps
// libvirt's room for edits), with the format set to raw because the stream that
// follows is written uncompressed.
import type { WriteStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { writeFileAtomically } from '../util/atomic-file.js';
import { encodeLibvirtHeader, type LibvirtImageHeader } from './header.js';
import { readLibvirtImageHeader } from './image.js';

/** The header + XML area an output of `img`'s stream starts with (format raw). */
export function rawImageHeaderFor(img: LibvirtImageHeader): Buffer {
  return encodeLibvirtHeader({ version: 2, wasRunning: img.wasRunning, format: 'raw', xml: img.xml, cookie: img.cookie, dataLen: img.dataLen });
}

/**
 * Writes `outPath` atomically like writeFileAtomically; when `inPath` is a libvirt save
 * image, the output is one too (its header first, then what `fill` writes). The one
 * place converted outputs of stream files are created.
 */
export async function writeStreamOutput<T>(inPath: string, outPath: string, fill: (out: WriteStream) => Promise<T>): Promise<T> {
  const img = (await stat(inPath)).isFile() ? await readLibvirtImageHeader(inPath) : undefined;
  return writeFileAtomically(outPath, async (out) => {
    if (img) out.write(rawImageHeaderFor(img));
    return fill(out);
  });
}
