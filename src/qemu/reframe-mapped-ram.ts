// reframe's mapped-ram conversion: asked for a format other than 'sparse' (mapped-ram), a
// mapped-ram input is written as the equivalent plain stream, each block's saved pages
// read from their file offsets (mapped-ram.ts). Without --format the input's layout stays
// (a mapped-ram stream then passes only when nothing moves).
import { stat } from 'node:fs/promises';
import { flattenMappedRam } from './mapped-ram.js';
import { readStreamFile } from './reader.js';
import type { StreamEvent } from './records.js';
import type { ReframeChange, ReframeOptions } from './reframe.js';

/** The events reframe writes: the input's, mapped-ram blocks turned into PAGE records. */
export async function* plainStreamEvents(inPath: string, opts: ReframeOptions, changes: ReframeChange[]): AsyncGenerator<StreamEvent, void, undefined> {
  if (opts.format === undefined || opts.format === 'sparse') {
    yield* readStreamFile(inPath, opts);
    return;
  }
  // Compressed libvirt images have no file offsets to read pages at: flattenMappedRam refuses
  // them (libvirt never compresses a sparse image).
  const seekable = (await stat(inPath)).isFile();
  const why = `the output format ${opts.format} is a plain stream`;
  const flattened = (m: Extract<StreamEvent, { type: 'ram-mem-size' | 'configuration' }>, pages: number): void => {
    if (m.type === 'configuration') {
      changes.push({ offset: m.offset, what: 'capability mapped-ram', action: 'dropped', why });
      return;
    }
    const blocks = m.blocks.filter((b) => b.mappedRam).map((b) => b.name).join(', ');
    changes.push({ offset: m.offset, what: `mapped-ram RAM blocks (${blocks})`, action: 'replaced', why: `by ${pages} PAGE records after the block list: ${why} (pages never saved stay zero, as on a mapped-ram load)`, sectionId: m.section.sectionId, idstr: m.section.idstr });
  };
  yield* flattenMappedRam(readStreamFile(inPath, opts), inPath, seekable, flattened);
}
