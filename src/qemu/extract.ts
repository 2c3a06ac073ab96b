// Extraction from a stream file, in one streaming pass:
//  - RAM: one raw image per block (zero pages as zeros, XBZRLE and compressed
//    pages applied), like analyze-migration.py -x;
//  - VFIO: per device its raw device data (DATA_STATE payloads in order), its
//    config blob, and a manifest.json saying where each piece came from.
import { mkdir, rmdir, stat, unlink } from 'node:fs/promises';
import { createHash, type Hash } from 'node:crypto';
import { dirname, join, relative, resolve } from 'node:path';
import { OutputFile, OutputFileError, outputFileError, syncDirectory } from '../util/atomic-file.js';
import { inflateSync } from 'node:zlib';
import { DEFAULT_TARGET_PAGE_SIZE } from './constants.js';
import { StreamError } from './errors.js';
import { probeStreamFile, readStreamFile, type FileReadOptions } from './reader.js';
import type { SectionKind } from './constants.js';
import { Inspector, type InspectReport } from './summary.js';
import { flattenMappedRam } from './mapped-ram.js';
import type { StreamEvent } from './records.js';

/**
 * File name for a RAM block id or device idstr: '%' -> "%25", '/' -> "%2F",
 * and a leading '.' -> "%2E" (so "..", "." and hidden names cannot occur).
 * Reversible with decodeURIComponent.
 */
export function safeFileName(name: string): string {
  const s = name.replace(/%/g, '%25').replace(/\//g, '%2F').replace(/\0/g, '%00');
  return s.startsWith('.') ? '%2E' + s.slice(1) : s === '' ? '%00' : s;
}

/**
 * Applies one XBZRLE delta to `page` in place (migration/xbzrle.c xbzrle_decode_buffer: zrun,
 * nzrun uleb128 pairs). A bad delta is a StreamError whose offset is within the delta.
 */
export function xbzrleDecode(delta: Buffer, page: Buffer): void {
  let i = 0;
  let d = 0;
  const uleb = (): number => {
    let v = 0;
    let shift = 0;
    for (;;) {
      if (i >= delta.length || shift > 28) throw new StreamError('ESTREAM_FORMAT', 'bad XBZRLE varint', { offset: i });
      const b = delta[i++]!;
      v |= (b & 0x7f) << shift;
      if ((b & 0x80) === 0) return v >>> 0;
      shift += 7;
    }
  };
  while (i < delta.length) {
    const zrun = uleb();
    d += zrun;
    // Every zero run is followed by a non-empty literal run (xbzrle_decode_buffer).
    if (d > page.length || i >= delta.length) throw new StreamError('ESTREAM_FORMAT', 'XBZRLE zero run out of bounds or not followed by data', { offset: i });
    const nzrun = uleb();
    if (nzrun === 0) throw new StreamError('ESTREAM_FORMAT', 'XBZRLE empty literal run', { offset: i });
    if (d + nzrun > page.length || i + nzrun > delta.length) throw new StreamError('ESTREAM_FORMAT', 'XBZRLE run out of bounds', { offset: i });
    delta.copy(page, d, i, i + nzrun);
    i += nzrun;
    d += nzrun;
  }
}

export interface ExtractOptions extends FileReadOptions {
  /** Directory for RAM block images. */
  ramDir?: string;
  /** Directory for VFIO device data, config blobs and manifest.json. */
  outDir?: string;
}

export interface RamImage {
  name: string;
  file: string;
  usedLength: number;
  pagesWritten: number;
}

export interface VfioExtractEntry {
  idstr: string;
  sectionId: number;
  instanceId: number;
  dataFile: string;
  dataBytes: number;
  dataSha256: string;
  chunks: { offset: number; payloadOffset: number; size: number; section: SectionKind }[];
  configFile: string | null;
  configBytes: number | null;
  configOffset: number | null;
  flavour: string;
}

export interface ExtractManifest {
  stream: string;
  streamBytes: number;
  machineType: string | null;
  devices: VfioExtractEntry[];
}

export interface ExtractResult {
  ram: RamImage[];
  vfio: ExtractManifest | null;
  report: InspectReport;
}

interface BlockOut {
  out: OutputFile;
  info: RamImage;
  /** One bit per page: already holds data (a later ZERO page must then write zeros). */
  dirty: Uint8Array;
}

/**
 * Extracts what `opts` asks for. Every file is written under a temporary name (OutputFile) and
 * the set is published only when the whole stream was extracted: the previous manifest is
 * removed first, then the data, config and image files are renamed into place, then the new
 * manifest. A failure before that leaves the directory as it was (earlier extractions
 * included); a kill during the renames leaves no manifest pointing at mismatched files.
 * An output directory that does not exist is created (one level, 0700); its parent must exist.
 */
export async function extractStreamFile(path: string, opts: ExtractOptions): Promise<ExtractResult> {
  const outputs: OutputFile[] = [];
  const madeDirs: string[] = [];
  let result: ExtractResult;
  try {
    result = await extractInto(path, opts, outputs, madeDirs);
    for (const o of outputs) await o.sync();
  } catch (e) {
    for (const o of outputs) await o.abort();
    // A directory this call created is removed again (only if empty: rmdir, never recursive).
    for (const d of madeDirs.reverse()) await rmdir(d).catch(() => undefined);
    throw e;
  }
  await publishSet(outputs, opts.outDir !== undefined ? join(opts.outDir, MANIFEST) : undefined);
  return result;
}

const MANIFEST = 'manifest.json';

/** Renames synced outputs into place, the manifest (when one is among them) last. */
async function publishSet(outputs: OutputFile[], manifest: string | undefined): Promise<void> {
  try {
    if (manifest !== undefined) {
      // An old manifest must never describe a mix of old and new files.
      await unlink(manifest).catch((e: NodeJS.ErrnoException) => { if (e.code !== 'ENOENT') throw outputFileError(e, manifest, 'cannot replace'); });
      // Durable before any file it described is replaced (a power loss, not only a kill).
      await syncDirectory(dirname(resolve(manifest)));
    }
    const last = outputs.filter((o) => o.path === manifest);
    for (const o of outputs.filter((x) => x.path !== manifest).concat(last)) await o.publish();
    for (const dir of new Set(outputs.map((o) => dirOf(o)))) await syncDirectory(dir);
  } catch (e) {
    for (const o of outputs) await o.abort();
    throw e;
  }
}

function dirOf(o: OutputFile): string {
  return dirname(resolve(o.path));
}

/** The output directory: created when missing (one level, owner only; listed in `made`); anything else in the way is an error. */
async function prepareOutputDir(dir: string, made: string[]): Promise<void> {
  try {
    await mkdir(dir, { mode: 0o700 });
    made.push(dir);
    return;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw outputFileError(e, dir, 'cannot create the output directory');
  }
  const st = await stat(dir).catch((e: unknown) => { throw outputFileError(e, dir, 'cannot use the output directory'); });
  if (!st.isDirectory()) throw new OutputFileError('ENOTDIR', `cannot use ${dir} as the output directory: it exists and is not a directory (ENOTDIR)`, { path: dir });
}

async function extractInto(path: string, opts: ExtractOptions, outputs: OutputFile[], madeDirs: string[]): Promise<ExtractResult> {
  const create = async (file: string, readable = false): Promise<OutputFile> => {
    const o = await OutputFile.create(file, { readable });
    outputs.push(o);
    return o;
  };
  const info = await probeStreamFile(path, opts);
  const pageSize = opts.pageSize ?? info.vmdesc?.page_size ?? DEFAULT_TARGET_PAGE_SIZE;
  const insp = new Inspector({ pageSize });
  const blocks = new Map<string, BlockOut>();
  const devs = new Map<number, { out: OutputFile; file: string; hash: Hash; config?: { file: string } }>();
  const zero = Buffer.alloc(pageSize);
  if (opts.ramDir) await prepareOutputDir(opts.ramDir, madeDirs);
  if (opts.outDir) await prepareOutputDir(opts.outDir, madeDirs);
  const ramOut: RamImage[] = [];
  // The report describes the stream as stored; the images come from its plain form (a
  // mapped-ram stream's pages read from their file offsets, mapped-ram.ts).
  async function* inspected(): AsyncGenerator<StreamEvent, void, undefined> {
    for await (const ev of readStreamFile(path, { ...opts, ...(info.vmdesc ? { vmdesc: info.vmdesc } : {}) })) {
      insp.add(ev);
      yield ev;
    }
  }
  for await (const ev of opts.ramDir ? flattenMappedRam(inspected(), path, info.size !== undefined) : inspected()) {
    if (opts.ramDir) {
      if (ev.type === 'ram-mem-size') {
        for (const b of ev.blocks) {
          if (blocks.has(b.name)) continue;
          const file = join(opts.ramDir, safeFileName(b.name));
          const out = await create(file, true);
          await out.truncate(b.usedLength);
          const img = { name: b.name, file, usedLength: b.usedLength, pagesWritten: 0 };
          ramOut.push(img);
          blocks.set(b.name, { out, info: img, dirty: new Uint8Array(Math.ceil(b.usedLength / pageSize / 8)) });
        }
      } else if (ev.type === 'ram-multifd-flush') {
        // The pages went over multifd channels: images from this stream alone would be
        // silently empty.
        throw new StreamError('ESTREAM_UNSUPPORTED', 'the RAM pages of this migration travelled on multifd channels, not in this stream: merge the channel captures first (migbridge reframe IN OUT --multifd CHANNELFILE...), then extract from that', { offset: ev.offset, sectionId: ev.section.sectionId, idstr: ev.section.idstr });
      } else if (ev.type === 'ram-page' || ev.type === 'ram-zero' || ev.type === 'ram-xbzrle' || ev.type === 'ram-compressed') {
        const img = blocks.get(ev.block)!;
        const pg = ev.address / pageSize;
        const wasDirty = (img.dirty[pg >>> 3]! & (1 << (pg & 7))) !== 0;
        let data: Buffer | undefined;
        if (ev.type === 'ram-page') data = ev.data;
        else if (ev.type === 'ram-zero') data = ev.fill !== 0 ? Buffer.alloc(pageSize, ev.fill) : wasDirty ? zero : undefined;
        else if (ev.type === 'ram-compressed') {
          try {
            data = inflateSync(ev.data, { maxOutputLength: pageSize });
          } catch (e) {
            throw new StreamError('ESTREAM_FORMAT', 'COMPRESS_PAGE does not inflate to a page', { offset: ev.offset, sectionId: ev.section.sectionId, idstr: ev.section.idstr, cause: e });
          }
          if (data.length !== pageSize) throw new StreamError('ESTREAM_FORMAT', 'COMPRESS_PAGE inflates to the wrong size', { offset: ev.offset, expected: String(pageSize), found: String(data.length) });
        } else {
          const page = Buffer.alloc(pageSize);
          if (wasDirty) await img.out.handle.read(page, 0, pageSize, ev.address);
          try {
            xbzrleDecode(ev.data, page);
          } catch (e) {
            throw new StreamError('ESTREAM_FORMAT', 'bad XBZRLE delta', { offset: ev.offset, sectionId: ev.section.sectionId, idstr: ev.section.idstr, cause: e });
          }
          data = page;
        }
        if (data) {
          await img.out.write(data, ev.address);
          img.info.pagesWritten++;
          img.dirty[pg >>> 3]! |= 1 << (pg & 7);
        }
      }
    }
    if (opts.outDir) {
      if (ev.type === 'vfio-multifd-placeholder') {
        throw new StreamError('ESTREAM_UNSUPPORTED', `device "${ev.section.idstr}" sent its stop-copy data and config over multifd channels, not in this stream: merge the channel captures first (migbridge reframe IN OUT --multifd CHANNELFILE...), then extract from that`, { offset: ev.offset, sectionId: ev.section.sectionId, idstr: ev.section.idstr, found: ev.marker });
      }
      if (ev.type === 'section' && ev.section.handler === 'vfio' && !devs.has(ev.section.sectionId)) {
        const file = join(opts.outDir, safeFileName(ev.section.idstr) + '.data');
        devs.set(ev.section.sectionId, { out: await create(file), file, hash: createHash('sha256') });
      } else if (ev.type === 'vfio-data-chunk') {
        const d = devs.get(ev.section.sectionId)!;
        d.hash.update(ev.data);
        await d.out.write(ev.data);
      } else if (ev.type === 'vfio-config') {
        const file = join(opts.outDir, safeFileName(ev.section.idstr) + '.config');
        await (await create(file)).write(ev.data);
        devs.get(ev.section.sectionId)!.config = { file };
      }
    }
  }
  const report = insp.finish(info.size ?? undefined);
  let manifest: ExtractManifest | null = null;
  if (opts.outDir) {
    manifest = {
      stream: path,
      streamBytes: report.size,
      machineType: report.configuration?.machineType ?? null,
      devices: report.vfio.map((v) => {
        const d = devs.get(v.sectionId)!;
        return {
          idstr: v.idstr,
          sectionId: v.sectionId,
          instanceId: v.instanceId,
          dataFile: d.file,
          dataBytes: v.dataBytes,
          dataSha256: d.hash.digest('hex'),
          chunks: v.dataChunks,
          configFile: d.config?.file ?? null,
          configBytes: v.configBytes,
          configOffset: v.configOffset,
          flavour: v.flavour,
        };
      }),
    };
    // The file names in manifest.json are relative to it, so the directory can move as a whole.
    const outDir = opts.outDir;
    const near = (f: string): string => relative(outDir, f);
    const onDisk: ExtractManifest = {
      ...manifest,
      stream: relative(outDir, path),
      devices: manifest.devices.map((d) => ({ ...d, dataFile: near(d.dataFile), configFile: d.configFile === null ? null : near(d.configFile) })),
    };
    await (await create(join(opts.outDir, MANIFEST))).write(Buffer.from(JSON.stringify(onDisk, null, 2) + '\n'));
  }
  return { ram: ramOut, vfio: manifest, report };
}
