// reframe's mapped-ram conversions. Given --format, a mapped-ram input is first turned into
// the equivalent plain stream, each block's saved pages read from their file offsets
// (mapped-ram.ts); --format sparse then lays the plain stream out as mapped-ram again
// (mapped-ram-writer.ts), any other format writes it as it is. Without --format the input's
// layout stays (a mapped-ram stream then passes only when nothing moves).
import { stat } from 'node:fs/promises';
import { flattenMappedRam } from './mapped-ram.js';
import { probeStreamFile, readStreamFile } from './reader.js';
import { DEFAULT_TARGET_PAGE_SIZE } from './constants.js';
import { MappedRamStreamWriter } from './mapped-ram-writer.js';
import type { StreamWriter } from './writer.js';
import { writePositionalOutput, type LibvirtOutputOptions } from '../libvirt/output.js';
import type { StreamEvent } from './records.js';
import type { ReframeChange, ReframeOptions } from './reframe-types.js';

/** The events reframe writes: the input's, mapped-ram blocks turned into PAGE records. */
export async function* plainStreamEvents(inPath: string, opts: ReframeOptions, changes: ReframeChange[]): AsyncGenerator<StreamEvent, void, undefined> {
  if (opts.format === undefined) {
    yield* readStreamFile(inPath, opts);
    return;
  }
  // Compressed libvirt images have no file offsets to read pages at: flattenMappedRam refuses
  // them (libvirt never compresses a sparse image).
  const seekable = (await stat(inPath)).isFile();
  const why = `the output format ${opts.format} is a plain stream`;
  const flattened = opts.format === 'sparse' ? undefined : (m: Extract<StreamEvent, { type: 'ram-mem-size' | 'configuration' }>, pages: number): void => {
    if (m.type === 'configuration') {
      changes.push({ offset: m.offset, what: 'capability mapped-ram', action: 'dropped', why });
      return;
    }
    const blocks = m.blocks.filter((b) => b.mappedRam).map((b) => b.name).join(', ');
    changes.push({ offset: m.offset, what: `mapped-ram RAM blocks (${blocks})`, action: 'replaced', why: `by ${pages} PAGE records after the block list: ${why} (pages never saved stay zero, as on a mapped-ram load)`, sectionId: m.section.sectionId, idstr: m.section.idstr });
  };
  yield* flattenMappedRam(readStreamFile(inPath, opts), inPath, seekable, flattened);
}

/**
 * Writes reframe's output as mapped-ram (--format sparse): `fill` runs reframe's event loop on
 * the MappedRamStreamWriter given; the bitmaps follow. Returns the output's size.
 */
export async function writeMappedRamOutput(inPath: string, outPath: string, opts: ReframeOptions, output: LibvirtOutputOptions, fill: (w: StreamWriter) => Promise<number>, changes: ReframeChange[]): Promise<number> {
  const pageSize = opts.pageSize ?? (await probeStreamFile(inPath, opts)).vmdesc?.page_size ?? DEFAULT_TARGET_PAGE_SIZE;
  return writePositionalOutput(inPath, outPath, async (file, start) => {
    const w = new MappedRamStreamWriter(file, start, pageSize);
    await fill(w);
    await w.finish();
    changes.push({ offset: 0, what: 'RAM pages', action: 'replaced', why: `laid out as mapped-ram (output format sparse): ${w.pagesStored} pages at their file offsets, capability mapped-ram on` });
    return w.end;
  }, output);
}
