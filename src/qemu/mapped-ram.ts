// mapped-ram RAM (§6.7): each block's saved pages sit at fixed file offsets, listed by a
// bitmap, outside the record stream. The decoder (ram.ts) reads the headers and skips those
// areas; this module reads them back by offset, with bounded memory (a slice of the bitmap
// and one run of pages at a time), and turns a mapped-ram stream into the equivalent plain
// one: the capability dropped, the headers gone, the saved pages as PAGE records right
// after the block list. Pages whose bit is clear were never written (QEMU does not store
// zero pages): a load leaves them as they are, zero in a new guest, and so do we.
import { open, type FileHandle } from 'node:fs/promises';
import { Writer } from './bytes.js';
import { CAP_MAPPED_RAM, CONFIG_SUBSECTION_CAPABILITIES, RamFlag } from './constants.js';
import { StreamError } from './errors.js';
import { mappedRamBitmapBytes } from './ram.js';
import type { ConfigurationEvent, RamBlockInfo, RamMemSizeEvent, StreamEvent } from './records.js';

/** Bitmap bytes read at once: 64 KiB covers 2 GiB of 4 KiB pages. */
const BITMAP_SLICE = 64 << 10;
/** Largest run of consecutive saved pages read at once. */
const MAX_RUN_BYTES = 1 << 20;

/** Consecutive saved pages of a block: `address` is the first page's offset in the block. */
export interface MappedRamRun {
  address: number;
  data: Buffer;
}

/** True when the block has a bitmap and pages in the file (x-ignore-shared blocks may not). */
function hasPages(b: RamBlockInfo): boolean {
  return b.mappedRam !== undefined && !(b.mappedRam.bitmapOffset === 0n && b.mappedRam.pagesOffset === 0n);
}

async function readFully(fh: FileHandle, path: string, length: number, fileOffset: number, what: string): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(length);
  let got = 0;
  while (got < length) {
    const { bytesRead } = await fh.read(buf, got, length - got, fileOffset + got);
    if (bytesRead === 0) {
      throw new StreamError('ESTREAM_TRUNCATED', `${path}: the file ends inside ${what} (file offset ${fileOffset + got}, ${length - got} bytes short)`);
    }
    got += bytesRead;
  }
  return buf;
}

/**
 * The saved pages of one mapped-ram block, in address order, as runs of at most 1 MiB.
 * `fh` is the stream file; the header's offsets are offsets in that file.
 */
export async function* mappedRamRuns(fh: FileHandle, path: string, block: RamBlockInfo): AsyncGenerator<MappedRamRun, void, undefined> {
  if (!hasPages(block)) return;
  const h = block.mappedRam!;
  const pageSize = Number(h.pageSize);
  const pages = Math.floor(block.usedLength / pageSize);
  const bitmapBytes = mappedRamBitmapBytes(block.usedLength, pageSize);
  const bitmapAt = Number(h.bitmapOffset);
  const pagesAt = Number(h.pagesOffset);
  const maxRunPages = Math.max(1, Math.floor(MAX_RUN_BYTES / pageSize));
  let runStart = 0;
  let runPages = 0;
  const flush = async (): Promise<MappedRamRun> => {
    const what = `the saved pages of RAM block "${block.name}"`;
    const run = { address: runStart * pageSize, data: await readFully(fh, path, runPages * pageSize, pagesAt + runStart * pageSize, what) };
    runPages = 0;
    return run;
  };
  for (let at = 0; at < bitmapBytes; at += BITMAP_SLICE) {
    const slice = await readFully(fh, path, Math.min(BITMAP_SLICE, bitmapBytes - at), bitmapAt + at, `the mapped-ram bitmap of RAM block "${block.name}"`);
    for (let i = 0; i < slice.length; i++) {
      const byte = slice[i]!;
      const first = (at + i) * 8;
      if (byte === 0) {
        if (runPages > 0) yield await flush();
        continue;
      }
      for (let bit = 0; bit < 8 && first + bit < pages; bit++) {
        const page = first + bit;
        if ((byte >> bit) & 1) {
          if (runPages > 0 && (runStart + runPages !== page || runPages === maxRunPages)) yield await flush();
          if (runPages === 0) runStart = page;
          runPages++;
        } else if (runPages > 0) {
          yield await flush();
        }
      }
    }
  }
  if (runPages > 0) yield await flush();
}

/** True when the CONFIGURATION record lists the mapped-ram capability. */
export function isMappedRam(ev: ConfigurationEvent): boolean {
  return ev.subsections.some((s) => s.capabilities?.includes(CAP_MAPPED_RAM));
}

/** The CONFIGURATION record without mapped-ram; a capability list left empty is dropped, as QEMU omits it. */
export function withoutMappedRamCapability(ev: ConfigurationEvent): ConfigurationEvent {
  const subsections = ev.subsections.flatMap((s) => {
    if (s.name !== CONFIG_SUBSECTION_CAPABILITIES || !s.capabilities?.includes(CAP_MAPPED_RAM)) return [s];
    const capabilities = s.capabilities.filter((c) => c !== CAP_MAPPED_RAM);
    if (capabilities.length === 0) return [];
    const w = new Writer(64).be32(capabilities.length);
    for (const c of capabilities) w.string8(c);
    return [{ ...s, body: w.take(), capabilities }];
  });
  return { ...ev, subsections };
}

/** The MEM_SIZE record of the plain stream: the same blocks without mapped-ram headers. */
function plainMemSize(ev: RamMemSizeEvent): RamMemSizeEvent {
  return { ...ev, blocks: ev.blocks.map(({ mappedRam: _dropped, ...b }) => b) };
}

/**
 * The events of the plain stream equivalent to a mapped-ram stream file: `events` decoded
 * from `path` (a regular file, read again by offset for the pages). A plain stream passes
 * through unchanged. The page events carry the MEM_SIZE record's offset (they come from it).
 */
export async function* flattenMappedRam(
  events: AsyncIterable<StreamEvent>,
  path: string,
  seekable: boolean,
  /** Told of each record changed: the CONFIGURATION (0 pages), each MEM_SIZE after its pages. */
  onFlattened?: (original: ConfigurationEvent | RamMemSizeEvent, pages: number) => void,
): AsyncGenerator<StreamEvent, void, undefined> {
  let fh: FileHandle | undefined;
  try {
    for await (const ev of events) {
      if (ev.type === 'configuration' && isMappedRam(ev)) {
        yield withoutMappedRamCapability(ev);
        onFlattened?.(ev, 0);
        continue;
      }
      if (ev.type !== 'ram-mem-size' || !ev.blocks.some((b) => b.mappedRam)) {
        yield ev;
        continue;
      }
      if (!seekable) {
        throw new StreamError('ESTREAM_UNSUPPORTED', 'mapped-ram pages lie at file offsets: they are read from a regular, uncompressed file only', { offset: ev.offset });
      }
      yield plainMemSize(ev);
      fh ??= await open(path, 'r');
      let pages = 0;
      for (const b of ev.blocks) {
        let named = false;
        for await (const run of mappedRamRuns(fh, path, b)) {
          const pageSize = Number(b.mappedRam!.pageSize);
          for (let i = 0; i < run.data.length; i += pageSize) {
            yield { type: 'ram-page', offset: ev.offset, section: ev.section, flags: named ? RamFlag.PAGE | RamFlag.CONTINUE : RamFlag.PAGE, address: run.address + i, block: b.name, continued: named, data: run.data.subarray(i, i + pageSize) };
            named = true;
            pages++;
          }
        }
      }
      onFlattened?.(ev, pages);
    }
  } finally {
    await fh?.close();
  }
}
