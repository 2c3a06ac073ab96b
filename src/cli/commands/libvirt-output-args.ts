// --format and --xml: how a converted stream is written (libvirt image format, domain XML).
import { readFile } from 'node:fs/promises';
import { UsageError } from '../../errors.js';
import { LIBVIRT_FORMATS, type LibvirtFormat } from '../../libvirt/header.js';
import type { LibvirtOutputOptions } from '../../libvirt/output.js';

/** The formats a converted stream can be written in: every libvirt one but sparse (mapped-ram), which is read only. */
export const OUTPUT_FORMATS = LIBVIRT_FORMATS.filter((f) => f !== 'sparse');

export async function libvirtOutputArgs(values: { format?: unknown; xml?: unknown }): Promise<LibvirtOutputOptions> {
  const out: LibvirtOutputOptions = {};
  if (typeof values.format === 'string') {
    if (values.format === 'sparse') throw new UsageError('--format sparse: writing mapped-ram (sparse) images is not supported yet; sparse images are read, and converted with --format raw');
    if (!(OUTPUT_FORMATS as readonly string[]).includes(values.format)) throw new UsageError(`--format wants one of ${OUTPUT_FORMATS.join(', ')}; got ${JSON.stringify(values.format)}`);
    out.format = values.format as LibvirtFormat;
  }
  if (typeof values.xml === 'string') out.xml = await readFile(values.xml, 'utf8');
  return out;
}
