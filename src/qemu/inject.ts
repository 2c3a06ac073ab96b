// Replaces the device data of VFIO sections in a stream, keeping every other
// byte (RAM, other devices, the config blob, vmdesc) as it was. The new data is
// laid over the original DATA_STATE records in order, keeping their sizes: a
// same-length replacement changes only payload bytes, so unmodified data gives
// back the file byte for byte. Longer data extends the last record; shorter data
// drops trailing records. The output is written to a temporary name and renamed
// only when complete.
import { open, stat, type FileHandle } from 'node:fs/promises';
// A libvirt save image in gives a libvirt save image out.
import { MigbridgeError, fileError } from '../errors.js';
import { writeStreamOutput, type LibvirtOutputOptions } from '../libvirt/output.js';
import { StreamError } from './errors.js';
import { probeStreamFile, readStreamFile, type FileReadOptions } from './reader.js';
import { Inspector } from './summary.js';
import { StreamWriter, writableSink } from './writer.js';

export interface DeviceDataReplacement {
  idstr: string;
  /** Raw device data file (what `extract --out` writes as <idstr>.data). */
  file: string;
}

export interface InjectedDevice {
  idstr: string;
  oldBytes: number;
  newBytes: number;
  oldChunks: number[];
  newChunks: number[];
}

/** New DATA_STATE sizes over the original ones (see the file comment). */
export function planChunks(original: number[], total: number): number[] {
  if (original.length === 0) return total > 0 ? [total] : [];
  const out: number[] = [];
  let left = total;
  original.forEach((size, i) => {
    const n = i === original.length - 1 ? left : Math.min(size, left);
    left -= n;
    // Keep original zero-size records (protocol v1 writes them); drop emptied ones.
    if (n > 0 || size === 0) out.push(n);
    else out.push(-1);
  });
  return out;
}

class ChunkedFileReader {
  private pos = 0;
  constructor(
    private readonly fh: FileHandle,
    private readonly path: string,
  ) {}
  async read(n: number, each: (b: Buffer) => Promise<void>): Promise<void> {
    let left = n;
    const buf = Buffer.allocUnsafe(Math.min(n, 1 << 20));
    while (left > 0) {
      const { bytesRead } = await this.fh.read(buf, 0, Math.min(left, buf.length), this.pos);
      if (bytesRead === 0) {
        throw new MigbridgeError('EINJECT_SHRANK', `device data file ${this.path} shrank while injecting: it ended at byte ${this.pos}, ${left} bytes short`, { path: this.path, offset: this.pos });
      }
      this.pos += bytesRead;
      left -= bytesRead;
      await each(Buffer.from(buf.subarray(0, bytesRead)));
    }
  }
}

export async function injectDeviceData(inPath: string, outPath: string, replacements: DeviceDataReplacement[], opts: FileReadOptions = {}, output: LibvirtOutputOptions = {}): Promise<InjectedDevice[]> {
  const info = await probeStreamFile(inPath, opts);
  const readOpts = { ...opts, ...(info.vmdesc ? { vmdesc: info.vmdesc } : {}) };
  // Pass 1: each target device's section id and DATA_STATE sizes.
  const insp = new Inspector();
  for await (const ev of readStreamFile(inPath, readOpts)) insp.add(ev);
  const report = insp.finish(info.size ?? undefined);
  const plans = new Map<number, { rep: DeviceDataReplacement; sizes: number[]; result: InjectedDevice; fh?: FileHandle; reader?: ChunkedFileReader }>();
  for (const rep of replacements) {
    const dev = report.vfio.find((d) => d.idstr === rep.idstr);
    if (!dev) {
      throw new StreamError('ESTREAM_FORMAT', `no VFIO device "${rep.idstr}" in ${inPath}`, { expected: report.vfio.map((d) => d.idstr).join(', ') || 'a VFIO section', found: rep.idstr });
    }
    if (dev.chunks === 0 && dev.sections.END === 0) {
      throw new StreamError('ESTREAM_UNSUPPORTED', `device "${rep.idstr}" has no DATA_STATE record and no END chunk to carry data`, { idstr: rep.idstr });
    }
    const newBytes = (await stat(rep.file).catch((e: unknown): never => { throw fileError(e, rep.file); })).size;
    const oldChunks = dev.dataChunks.map((c) => c.size);
    const sizes = planChunks(oldChunks, newBytes);
    plans.set(dev.sectionId, {
      rep,
      sizes,
      result: { idstr: rep.idstr, oldBytes: dev.dataBytes, newBytes, oldChunks, newChunks: sizes.filter((s) => s >= 0) },
    });
  }

  // Pass 2: copy every event, replacing the target devices' DATA_STATE records.
  try {
    await writeStreamOutput(inPath, outPath, async (out) => {
      const w = new StreamWriter(writableSink(out));
      for (const p of plans.values()) {
        p.fh = await open(p.rep.file, 'r').catch((e: unknown): never => { throw fileError(e, p.rep.file); });
        p.reader = new ChunkedFileReader(p.fh, p.rep.file);
      }
      const chunkIndex = new Map<number, number>();
      let skipping = false;
      for await (const ev of readStreamFile(inPath, readOpts)) {
        const plan = 'section' in ev && ev.type !== 'section' ? plans.get(ev.section.sectionId) : undefined;
        if (!plan) {
          await w.event(ev);
          continue;
        }
        if (ev.type === 'vfio-data') {
          const i = chunkIndex.get(ev.section.sectionId) ?? 0;
          chunkIndex.set(ev.section.sectionId, i + 1);
          const n = plan.sizes[i]!;
          skipping = true;
          if (n < 0) continue;
          await w.vfioDataHeader(n);
          await plan.reader!.read(n, (b) => w.payload(b));
          continue;
        }
        if (ev.type === 'vfio-data-chunk') {
          if (!skipping) throw new StreamError('ESTREAM_FORMAT', 'payload chunk outside a DATA_STATE record', { offset: ev.offset, sectionId: ev.section.sectionId, idstr: ev.section.idstr });
          continue;
        }
        skipping = false;
        // A device with no DATA_STATE records at all: its data goes into the END chunk.
        if (ev.type === 'vfio-marker' && ev.marker === 'END_OF_STATE' && plan.result.oldChunks.length === 0 && w.openSection?.kind === 'END' && plan.sizes.length > 0) {
          const n = plan.sizes[0]!;
          await w.vfioDataHeader(n);
          await plan.reader!.read(n, (b) => w.payload(b));
          plan.sizes = [];
        }
        await w.event(ev);
      }
      await w.flush();
    }, output);
  } finally {
    for (const p of plans.values()) await p.fh?.close();
  }
  return [...plans.values()].map((p) => p.result);
}
