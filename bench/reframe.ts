// Merging a multifd capture (reframe) vs copying the same bytes, in the same process.
// Builds a capture the shape QEMU 10.0 writes (a main channel with MEM_SIZE and three
// MULTIFD_FLUSH rounds; `--channels` channel files of 128-page RAM packets with one SYNC per
// round, packet_num one sequence), filled with non-zero pages, then times
//   - the baseline: a plain 1 MiB read/write loop copying every channel file into one file
//     (the least I/O any merge needs), and
//   - reframeStreamFile with the channels merged in.
//   node dist/bench/run.js reframe [--size 1GiB] [--channels 4] [--repeat 2]
import { closeSync, createWriteStream, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { RamFlag } from '../src/qemu/constants.js';
import { MULTIFD_MAGIC, MULTIFD_PACKET_BYTES, MULTIFD_RAM_FIXED_SIZE, MultifdFlag } from '../src/qemu/multifd.js';
import { reframeStreamFile } from '../src/qemu/reframe.js';
import { StreamWriter, writableSink } from '../src/qemu/writer.js';
import { parseSize } from '../src/vfio/sim/index.js';

const PAGE = 4096;
const PAGES_PER_PACKET = MULTIFD_PACKET_BYTES / PAGE;
const HEADER = MULTIFD_RAM_FIXED_SIZE + 8 * PAGES_PER_PACKET;
const BLOCK = 'pc.ram';

function ramPacket(num: number, flags: number, offsets: number[], fillSeed: number): Buffer {
  const b = Buffer.alloc(HEADER + offsets.length * PAGE);
  b.writeUInt32BE(MULTIFD_MAGIC, 0);
  b.writeUInt32BE(1, 4);
  b.writeUInt32BE(flags, 8);
  b.writeUInt32BE(offsets.length > 0 ? PAGES_PER_PACKET : 0, 12);
  b.writeUInt32BE(offsets.length, 16);
  b.writeUInt32BE(offsets.length * PAGE, 20);
  b.writeBigUInt64BE(BigInt(num), 24);
  if (offsets.length > 0) b.write(BLOCK, 64, 'latin1');
  offsets.forEach((o, i) => b.writeBigUInt64BE(BigInt(o), MULTIFD_RAM_FIXED_SIZE + 8 * i));
  for (let i = 0; i < offsets.length; i++) b.fill((fillSeed + i) & 0xff || 1, HEADER + i * PAGE, HEADER + (i + 1) * PAGE);
  return b;
}

/** Writes main.mig and main.mig.multifd-N into `dir`; returns the channel paths and page bytes. */
async function buildCapture(dir: string, size: number, channels: number): Promise<{ main: string; chans: string[]; pageBytes: number }> {
  const pages = Math.floor(size / PAGE);
  const main = path.join(dir, 'main.mig');
  const out = createWriteStream(main);
  const w = new StreamWriter(writableSink(out));
  await w.header();
  await w.configuration('pc-i440fx-10.0');
  const sec = { sectionId: 1, idstr: 'ram', instanceId: 0, versionId: 4, handler: 'ram' as const };
  const rec = { offset: 0, section: sec, address: 0 };
  await w.sectionStart(1, 'ram', 0, 4);
  await w.event({ ...rec, type: 'ram-mem-size', flags: RamFlag.MEM_SIZE, address: pages * PAGE, blocks: [{ name: BLOCK, usedLength: pages * PAGE }] });
  for (const kind of ['START', 'PART', 'END'] as const) {
    if (kind === 'PART') await w.sectionPart(1);
    if (kind === 'END') await w.sectionEnd(1);
    await w.event({ ...rec, type: 'ram-multifd-flush', flags: RamFlag.MULTIFD_FLUSH });
    await w.event({ ...rec, type: 'ram-eos', flags: RamFlag.EOS });
    await w.endSection();
  }
  await w.eof();
  await w.flush();
  await new Promise<void>((resolve, reject) => out.end((e?: Error | null) => (e ? reject(e) : resolve())));

  // Round 1: a SYNC on each channel; round 2: the pages, round-robin, then SYNCs; round 3: SYNCs.
  const fhs = await Promise.all(Array.from({ length: channels }, (_, c) => open(path.join(dir, `main.mig.multifd-${c}`), 'w')));
  const init = (c: number): Buffer => {
    const b = Buffer.alloc(64);
    b.writeUInt32BE(MULTIFD_MAGIC, 0);
    b.writeUInt32BE(1, 4);
    b[24] = c;
    return b;
  };
  let num = 0;
  for (let c = 0; c < channels; c++) await fhs[c]!.write(init(c));
  const syncs = async (): Promise<void> => {
    for (let c = 0; c < channels; c++) await fhs[c]!.write(ramPacket(num++, MultifdFlag.SYNC, [], 0));
  };
  await syncs();
  for (let p = 0, n = 0; p < pages; p += PAGES_PER_PACKET, n++) {
    const offsets = Array.from({ length: Math.min(PAGES_PER_PACKET, pages - p) }, (_, i) => (p + i) * PAGE);
    await fhs[n % channels]!.write(ramPacket(num++, 0, offsets, n));
  }
  await syncs();
  await syncs();
  for (const fh of fhs) await fh.close();
  return { main, chans: Array.from({ length: channels }, (_, c) => path.join(dir, `main.mig.multifd-${c}`)), pageBytes: pages * PAGE };
}

/** The same bytes read in 1 MiB chunks and written to one file: the I/O floor of a merge. */
function copyBaseline(files: string[], out: string): number {
  const t0 = process.hrtime.bigint();
  const fd = openSync(out, 'w');
  const buf = Buffer.allocUnsafe(1 << 20);
  try {
    for (const f of files) {
      const src = openSync(f, 'r');
      try {
        for (let n; (n = readSync(src, buf, 0, buf.length, null)) > 0;) writeSync(fd, buf, 0, n);
      } finally {
        closeSync(src);
      }
    }
  } finally {
    closeSync(fd);
  }
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

export async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { size: { type: 'string', default: '1GiB' }, channels: { type: 'string', default: '4' }, repeat: { type: 'string', default: '2' } } });
  const size = parseSize(values.size);
  const channels = Number(values.channels);
  const dir = mkdtempSync(path.join(process.env.MIGBRIDGE_BENCH_DIR ?? (process.platform === 'linux' ? '/dev/shm' : tmpdir()), 'migbridge-bench-reframe-'));
  try {
    const cap = await buildCapture(dir, size, channels);
    const mib = cap.pageBytes / (1 << 20);
    process.stdout.write(`reframe merge of a ${mib} MiB multifd capture (${channels} channels, 4 KiB pages, 128 per packet) in ${dir}\n`);
    for (let r = 0; r < Number(values.repeat); r++) {
      const base = copyBaseline([cap.main, ...cap.chans], path.join(dir, 'copy.bin'));
      rmSync(path.join(dir, 'copy.bin'));
      const t0 = process.hrtime.bigint();
      const res = await reframeStreamFile(cap.main, path.join(dir, 'merged.mig'), { multifd: cap.chans });
      const secs = Number(process.hrtime.bigint() - t0) / 1e9;
      rmSync(path.join(dir, 'merged.mig'));
      process.stdout.write(`  run ${r + 1}: copy baseline ${(mib / base).toFixed(0)} MiB/s, merge ${(mib / secs).toFixed(0)} MiB/s (${res.bytesOut} bytes out), ratio merge/copy ${(base / secs).toFixed(2)}\n`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
