// Extraction from a stream file, in one streaming pass:
//  - RAM: one raw image per block (zero pages as zeros, XBZRLE and compressed
//    pages applied), like analyze-migration.py -x;
//  - VFIO: per device its raw device data (DATA_STATE payloads in order), its
//    config blob, and a manifest.json saying where each piece came from.
import { open, mkdir, rm, rmdir, writeFile, type FileHandle } from 'node:fs/promises';
import { createHash, type Hash } from 'node:crypto';
import { dirname, join, relative, resolve } from 'node:path';
import { inflateSync } from 'node:zlib';
import { DEFAULT_TARGET_PAGE_SIZE } from './constants.js';
import { StreamError } from './errors.js';
import { probeStreamFile, readStreamFile, type FileReadOptions } from './reader.js';
import type { SectionKind } from './constants.js';
import { Inspector, type InspectReport } from './summary.js';

/**
 * File name for a RAM block id or device idstr: '%' -> "%25", '/' -> "%2F",
 * and a leading '.' -> "%2E" (so "..", "." and hidden names cannot occur).
 * Reversible with decodeURIComponent.
 */
export function safeFileName(name: string): string {
  const s = name.replace(/%/g, '%25').replace(/\//g, '%2F').replace(/\0/g, '%00');
  return s.startsWith('.') ? '%2E' + s.slice(1) : s === '' ? '%00' : s;
}

/** Applies one XBZRLE delta to `page` in place (migration/xbzrle.c xbzrle_decode_buffer: zrun, nzrun uleb128 pairs). */
export function xbzrleDecode(delta: Buffer, page: Buffer): void {
  let i = 0;
  let d = 0;
  const uleb = (): number => {
    let v = 0;
    let shift = 0;
    for (;;) {
      if (i >= delta.length || shift > 28) throw new Error('bad XBZRLE varint');
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
    if (d > page.length || i >= delta.length) throw new Error('XBZRLE zero run out of bounds or not followed by data');
    const nzrun = uleb();
    if (nzrun === 0) throw new Error('XBZRLE empty literal run');
    if (d + nzrun > page.length || i + nzrun > delta.length) throw new Error('XBZRLE run out of bounds');
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
  fh: FileHandle;
  info: RamImage;
  /** One bit per page: already holds data (a later ZERO page must then write zeros). */
  dirty: Uint8Array;
}

/**
 * Extracts what `opts` asks for. A stream that fails part-way (truncated, corrupt, refused)
 * leaves none of the files this call created: a half-written image or device file must not
 * pass for the real thing.
 */
export async function extractStreamFile(path: string, opts: ExtractOptions): Promise<ExtractResult> {
  const created: string[] = [];
  const madeDirs: string[] = [];
  try {
    return await extractInto(path, opts, created, madeDirs);
  } catch (e) {
    for (const f of created) await rm(f, { force: true });
    // Directories this call made go too (deepest first), each only if nothing else is in it.
    for (const d of madeDirs.reverse()) await rmdir(d).catch(() => undefined);
    throw e;
  }
}

/** mkdir -p that notes the directories it made (for removal on failure). */
async function makeDir(dir: string, madeDirs: string[]): Promise<void> {
  const first = await mkdir(dir, { recursive: true });
  if (first === undefined) return;
  // mkdir names the topmost directory it made; every one from there down to `dir` is new.
  const made: string[] = [];
  for (let d = resolve(dir); d.length >= resolve(first).length; d = dirname(d)) made.unshift(d);
  madeDirs.push(...made);
}

async function extractInto(path: string, opts: ExtractOptions, created: string[], madeDirs: string[]): Promise<ExtractResult> {
  const info = await probeStreamFile(path, opts);
  const pageSize = opts.pageSize ?? info.vmdesc?.page_size ?? DEFAULT_TARGET_PAGE_SIZE;
  const insp = new Inspector({ pageSize });
  const blocks = new Map<string, BlockOut>();
  const devs = new Map<number, { fh: FileHandle; file: string; hash: Hash; config?: { file: string } }>();
  const zero = Buffer.alloc(pageSize);
  if (opts.ramDir) await makeDir(opts.ramDir, madeDirs);
  if (opts.outDir) await makeDir(opts.outDir, madeDirs);
  const ramOut: RamImage[] = [];
  try {
    for await (const ev of readStreamFile(path, { ...opts, ...(info.vmdesc ? { vmdesc: info.vmdesc } : {}) })) {
      insp.add(ev);
      if (opts.ramDir) {
        if (ev.type === 'ram-mem-size') {
          for (const b of ev.blocks) {
            if (blocks.has(b.name)) continue;
            const file = join(opts.ramDir, safeFileName(b.name));
            created.push(file);
            const fh = await open(file, 'w+');
            await fh.truncate(b.usedLength);
            const img = { name: b.name, file, usedLength: b.usedLength, pagesWritten: 0 };
            ramOut.push(img);
            blocks.set(b.name, { fh, info: img, dirty: new Uint8Array(Math.ceil(b.usedLength / pageSize / 8)) });
          }
        } else if (ev.type === 'ram-multifd-flush') {
          // The pages went over multifd channels: images from this stream alone would be
          // silently empty.
          throw new StreamError('ESTREAM_UNSUPPORTED', 'the RAM pages of this migration travelled on multifd channels, not in this stream: merge the channel captures first (migbridge reframe IN OUT --multifd CHANNELFILE...), then extract from that', { offset: ev.offset, sectionId: ev.section.sectionId, idstr: ev.section.idstr });
        } else if (ev.type === 'ram-page' || ev.type === 'ram-zero' || ev.type === 'ram-xbzrle' || ev.type === 'ram-compressed') {
          const out = blocks.get(ev.block)!;
          const pg = ev.address / pageSize;
          const wasDirty = (out.dirty[pg >>> 3]! & (1 << (pg & 7))) !== 0;
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
            if (wasDirty) await out.fh.read(page, 0, pageSize, ev.address);
            try {
              xbzrleDecode(ev.data, page);
            } catch (e) {
              throw new StreamError('ESTREAM_FORMAT', 'bad XBZRLE delta', { offset: ev.offset, sectionId: ev.section.sectionId, idstr: ev.section.idstr, cause: e });
            }
            data = page;
          }
          if (data) {
            await out.fh.write(data, 0, data.length, ev.address);
            out.info.pagesWritten++;
            out.dirty[pg >>> 3]! |= 1 << (pg & 7);
          }
        }
      }
      if (opts.outDir) {
        if (ev.type === 'section' && ev.section.handler === 'vfio' && !devs.has(ev.section.sectionId)) {
          const file = join(opts.outDir, safeFileName(ev.section.idstr) + '.data');
          created.push(file);
          devs.set(ev.section.sectionId, { fh: await open(file, 'w'), file, hash: createHash('sha256') });
        } else if (ev.type === 'vfio-data-chunk') {
          const d = devs.get(ev.section.sectionId)!;
          d.hash.update(ev.data);
          await d.fh.write(ev.data);
        } else if (ev.type === 'vfio-config') {
          const file = join(opts.outDir, safeFileName(ev.section.idstr) + '.config');
          created.push(file);
          await writeFile(file, ev.data);
          devs.get(ev.section.sectionId)!.config = { file };
        }
      }
    }
  } finally {
    for (const b of blocks.values()) await b.fh.close();
    for (const d of devs.values()) await d.fh.close();
  }
  const report = insp.finish(info.size ?? undefined);
  let manifest: ExtractManifest | null = null;
  if (opts.outDir) {
    const viaMultifd = report.vfio.find((v) => v.flavour.includes('multifd'));
    if (viaMultifd) {
      throw new StreamError('ESTREAM_UNSUPPORTED', `device "${viaMultifd.idstr}" sent its stop-copy data and config over multifd channels, not in this stream: merge the channel captures first (migbridge reframe IN OUT --multifd CHANNELFILE...), then extract from that`, { sectionId: viaMultifd.sectionId, idstr: viaMultifd.idstr });
    }
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
    await writeFile(join(outDir, 'manifest.json'), JSON.stringify(onDisk, null, 2) + '\n');
  }
  return { ram: ramOut, vfio: manifest, report };
}
