// --format and --xml: how a converted stream is written (libvirt image format, domain XML).
import { readFile } from 'node:fs/promises';
import { UsageError } from '../../errors.js';
import { LIBVIRT_FORMATS, type LibvirtFormat } from '../../libvirt/header.js';
import type { LibvirtOutputOptions } from '../../libvirt/output.js';

/** The formats rewrite and inject write; reframe also writes sparse (mapped-ram). */
export const STREAM_OUTPUT_FORMATS = LIBVIRT_FORMATS.filter((f) => f !== 'sparse');

export async function libvirtOutputArgs(values: { format?: unknown; xml?: unknown }, formats: readonly LibvirtFormat[] = STREAM_OUTPUT_FORMATS): Promise<LibvirtOutputOptions> {
  const out: LibvirtOutputOptions = {};
  if (typeof values.format === 'string') {
    if (!(formats as readonly string[]).includes(values.format)) throw new UsageError(`--format wants one of ${formats.join(', ')}; got ${JSON.stringify(values.format)}${values.format === 'sparse' ? ' (reframe writes sparse)' : ''}`);
    out.format = values.format as LibvirtFormat;
  }
  if (typeof values.xml === 'string') out.xml = await readFile(values.xml, 'utf8');
  return out;
}
