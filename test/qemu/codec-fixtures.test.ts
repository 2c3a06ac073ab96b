// The codec on real QEMU 10.0.2 streams with two real mtty VFIO devices
// (test/fixtures/qemu10-vfio, see its README): inspect, rewrite, extract and
// inject through the CLI, and the streaming decoder's invariants.
import test from 'ava';
import { readFile, writeFile, readdir, stat } from 'node:fs/promises';
import { PassThrough } from 'node:stream';
import { join } from 'node:path';
import { cli, scratch, decodeBuffer, encodeAll, ONE_MTTY, TWO_MTTY } from './codec-helpers.js';
import { readStream } from '../../src/qemu/reader.js';
import { readTailVmDesc } from '../../src/qemu/vmdesc.js';
import { StreamError } from '../../src/qemu/errors.js';
import { encodeEvent } from '../../src/qemu/encode.js';
import type { StreamEvent } from '../../src/qemu/records.js';
import type { InspectReport } from '../../src/qemu/summary.js';
import type { ExtractManifest } from '../../src/qemu/extract.js';

const DEVICES: Record<string, { file: string; scr: number; fifo: string; bar0: number }> = {
  '0000:00:04.0/vfio': { file: '0000:00:04.0%2Fvfio', scr: 0x5a, fifo: 'hello-mtty0', bar0: 0xc000 },
  '0000:00:05.0/vfio': { file: '0000:00:05.0%2Fvfio', scr: 0x5b, fifo: 'hello-mtty1', bar0: 0xc100 },
};
const FIXTURES = [
  { path: ONE_MTTY, devices: ['0000:00:04.0/vfio'] },
  { path: TWO_MTTY, devices: ['0000:00:04.0/vfio', '0000:00:05.0/vfio'] },
];

/** mtty's migration stream (docs/vfio-migration.md §8.4): header, then one 36-byte port. */
function parseMtty(data: Buffer): { magic: bigint; major: number; minor: number; ports: number; flags: number; scr: number; fifo: string } {
  const port = data.subarray(24, 60);
  const fifo = port.subarray(8, 24);
  const head = port[24]!;
  const tail = port[25]!;
  const count = port[26]!;
  let s = '';
  for (let i = 0; i < count; i++) s += String.fromCharCode(fifo[(tail + i) % 16]!);
  void head;
  return {
    magic: data.readBigUInt64LE(0),
    major: data.readUInt32LE(8),
    minor: data.readUInt32LE(12),
    ports: data.readUInt32LE(16),
    flags: data.readUInt32LE(20),
    scr: port[7]!,
    fifo: s,
  };
}

for (const fx of FIXTURES) {
  const name = fx.path.split('/').pop()!;

  test(`${name}: inspect --output=json frames every record and summarises RAM and VFIO`, async (t) => {
    const bytes = await readFile(fx.path);
    const r = await cli(['inspect', fx.path, '--output=json']);
    t.is(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout) as InspectReport;
    t.is(j.header.magic, 0x5145564d);
    t.is(j.header.version, 3);
    t.is(j.configuration?.machineType, 'pc-i440fx-10.0');
    const recs = j.records;
    t.is(recs[0]!.offset, 8);
    t.is(recs[0]!.kind, 'CONFIGURATION');
    for (let i = 0; i + 1 < recs.length; i++) t.is(recs[i]!.offset + recs[i]!.length, recs[i + 1]!.offset, `record ${i}`);
    t.is(recs.at(-1)!.offset + recs.at(-1)!.length, bytes.length);
    t.deepEqual(recs.slice(-2).map((x) => x.kind), ['EOF', 'VMDESCRIPTION']);
    // Every record starts with its type byte at the reported offset.
    const typeByte: Record<string, number> = { CONFIGURATION: 7, START: 1, PART: 2, END: 3, FULL: 4, COMMAND: 8, EOF: 0, VMDESCRIPTION: 6 };
    for (const x of recs) t.is(bytes[x.offset], typeByte[x.kind], `${x.kind} at ${x.offset}`);
    // QEMU 10.0: one SWITCHOVER_START (08 000b 0000) before the first END.
    const cmds = recs.filter((x) => x.kind === 'COMMAND');
    t.is(cmds.length, 1);
    t.is(bytes.subarray(cmds[0]!.offset, cmds[0]!.offset + 5).toString('hex'), '08000b0000');
    t.true(recs.indexOf(cmds[0]!) < recs.findIndex((x) => x.kind === 'END'));
    t.is(j.switchoverStart, cmds[0]!.offset);

    t.is(j.ram?.pageSize, 4096);
    t.true(j.ram!.blocks.some((b) => b.name === 'pc.ram' && b.usedLength === 64 << 20));
    t.true(j.ram!.pages.ZERO > 0 && j.ram!.pages.PAGE > 0);

    t.deepEqual(j.vfio.map((d) => d.idstr), fx.devices);
    for (const d of j.vfio) {
      t.is(d.dataBytes, 60);
      t.is(d.chunks, 2);
      t.deepEqual(d.dataChunks.map((c) => [c.section, c.size]), [['PART', 24], ['END', 36]]);
      // QEMU's SWITCHOVER_START places the phases: mtty's 24-byte header was read in PRE_COPY.
      t.deepEqual(d.dataChunks.map((c) => c.phase), ['precopy', 'stop-copy']);
      t.deepEqual([d.precopyBytes, d.stopCopyBytes, d.phaseUnknownBytes], [24, 36, 0]);
      t.is(d.configBytes, 4116);
      t.is(d.flavour, 'qemu-10.0+ v2 precopy');
      // The FULL record: header (1+4+1+17+4+4) + 4132-byte body (vmdesc) + footer (5).
      const full = recs.find((x) => x.kind === 'FULL' && x.idstr === d.idstr)!;
      t.is(full.length, 31 + 4132 + 5);
      t.is(full.versionId, 1);
      t.is(full.instanceId, 0);
    }
  });

  test(`${name}: rewrite is byte-identical`, async (t) => {
    const dir = await scratch(t);
    const out = join(dir, 'out.mig');
    const r = await cli(['rewrite', fx.path, out]);
    t.is(r.code, 0, r.stderr);
    t.true((await readFile(out)).equals(await readFile(fx.path)));
  });

  test(`${name}: extract --out gives each mtty device's 60 bytes, its config blob and a manifest`, async (t) => {
    const dir = await scratch(t);
    const bytes = await readFile(fx.path);
    const r = await cli(['extract', fx.path, '--out', join(dir, 'vfio'), '--ram', join(dir, 'ram')]);
    t.is(r.code, 0, r.stderr);
    const manifest = JSON.parse(await readFile(join(dir, 'vfio', 'manifest.json'), 'utf8')) as ExtractManifest;
    t.deepEqual(manifest.devices.map((d) => d.idstr), fx.devices);
    for (const d of manifest.devices) {
      const exp = DEVICES[d.idstr]!;
      // Names relative to manifest.json, so the directory can move as a whole.
      t.is(d.dataFile, exp.file + '.data');
      const data = await readFile(join(dir, 'vfio', d.dataFile));
      t.is(data.length, 60);
      // The data is exactly the DATA_STATE payloads at the offsets the manifest gives.
      t.true(data.equals(Buffer.concat(d.chunks.map((c) => bytes.subarray(c.payloadOffset, c.payloadOffset + c.size)))));
      const m = parseMtty(data);
      t.is(m.magic, 0x7e9d09898c3e2c4en);
      t.deepEqual([m.major, m.minor, m.ports, m.flags], [1, 0, 1, 0]);
      t.is(m.scr, exp.scr);
      t.is(m.fifo, exp.fifo);
      // Config blob: VFIOPCIDevice vmstate = int32 version, 4096 bytes of config space, irq state.
      t.is(d.configFile, exp.file + '.config');
      const cfg = await readFile(join(dir, 'vfio', d.configFile!));
      t.is(cfg.length, 4116);
      t.true(cfg.equals(bytes.subarray(d.configOffset!, d.configOffset! + 4116)));
      t.is(bytes.readBigUInt64BE(d.configOffset! - 8), 0xffffffffef100002n, 'DEV_CONFIG_STATE before the blob');
      t.is(bytes.readBigUInt64BE(d.configOffset! + 4116), 0xffffffffef100001n, 'END_OF_STATE after the blob');
      const space = cfg.subarray(4, 4100);
      t.is(space.readUInt16LE(0), 0x4348, 'mtty vendor id');
      t.is(space.readUInt16LE(2), 0x3253, 'mtty device id');
      t.is(space.readUInt32LE(0x10) & ~3, exp.bar0, 'BAR0 as programmed before migrating');
    }
    const ramFiles = await readdir(join(dir, 'ram'));
    t.true(ramFiles.includes('pc.ram') && ramFiles.includes('%2From@etc%2Facpi%2Ftables'), ramFiles.join(', '));
    t.is((await stat(join(dir, 'ram', 'pc.ram'))).size, 64 << 20);
    // The halt firmware's reset vector (fa f4 eb fd at 0xfff0 of pc.bios, see the fixture README).
    const bios = await readFile(join(dir, 'ram', 'pc.bios'));
    t.is(bios.subarray(0xfff0, 0xfff4).toString('hex'), 'faf4ebfd');
  });

  test(`${name}: inject of unmodified data reproduces the file byte for byte`, async (t) => {
    const dir = await scratch(t);
    t.is((await cli(['extract', fx.path, '--out', dir])).code, 0);
    const args = ['inject', fx.path, '-o', join(dir, 'out.mig')];
    for (const id of fx.devices) args.push('--device-data', `${id}=${join(dir, DEVICES[id]!.file + '.data')}`);
    const r = await cli(args);
    t.is(r.code, 0, r.stderr);
    t.true((await readFile(join(dir, 'out.mig'))).equals(await readFile(fx.path)));
    t.deepEqual((await readdir(dir)).filter((f) => f.includes('.partial-')), [], 'no temporary file left');
  });
}

test('two-mtty.mig: inject of modified data changes only that device\'s payload bytes', async (t) => {
  const dir = await scratch(t);
  t.is((await cli(['extract', TWO_MTTY, '--out', dir])).code, 0);
  const orig = await readFile(TWO_MTTY);
  const manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as ExtractManifest;
  const dev = manifest.devices[0]!;
  const data = await readFile(join(dir, dev.dataFile));
  data[24 + 7] = 0x77; // SCR
  data[30] = 0x41; // port byte inside the END chunk
  data[3] ^= 0xff; // header byte inside the PART chunk
  const mod = join(dir, 'mod.data');
  await writeFile(mod, data);
  const out = join(dir, 'out.mig');
  const r = await cli(['inject', TWO_MTTY, '--device-data', `${dev.idstr}=${mod}`, '-o', out, '--output=json']);
  t.is(r.code, 0, r.stderr);
  const res = await readFile(out);
  t.is(res.length, orig.length);
  const allowed = new Set<number>();
  for (const c of dev.chunks) for (let i = 0; i < c.size; i++) allowed.add(c.payloadOffset + i);
  const diffs: number[] = [];
  for (let i = 0; i < orig.length; i++) if (orig[i] !== res[i]) diffs.push(i);
  t.is(diffs.length, 3);
  t.true(diffs.every((i) => allowed.has(i)), `differences at ${diffs.join(', ')}`);
  // Reading the result back gives the new data for that device and the old for the other.
  const back = join(dir, 'back');
  t.is((await cli(['extract', out, '--out', back])).code, 0);
  t.true((await readFile(join(back, '0000:00:04.0%2Fvfio.data'))).equals(data));
  t.true((await readFile(join(back, '0000:00:05.0%2Fvfio.data'))).equals(await readFile(join(dir, '0000:00:05.0%2Fvfio.data'))));
});

test('two-mtty.mig: inject of longer or shorter data rewrites only that device\'s DATA_STATE records', async (t) => {
  const dir = await scratch(t);
  t.is((await cli(['extract', TWO_MTTY, '--out', dir])).code, 0);
  const orig = await readFile(TWO_MTTY);
  const vmdesc = (await readTailVmDesc(TWO_MTTY))!.desc;
  const before = decodeBuffer(orig, { vmdesc });
  const isTarget = (ev: StreamEvent): boolean => ev.type !== 'section' && 'section' in ev && ev.section.idstr === '0000:00:05.0/vfio' && (ev.type === 'vfio-data' || ev.type === 'vfio-data-chunk');
  const untouched = (evs: StreamEvent[]): Buffer[] => evs.filter((e) => !isTarget(e)).map(encodeEvent);
  for (const len of [100, 30, 0]) {
    const raw = Buffer.alloc(len);
    for (let i = 0; i < len; i++) raw[i] = (i * 7 + 3) & 0xff;
    const file = join(dir, `d${len}.data`);
    await writeFile(file, raw);
    const out = join(dir, `out${len}.mig`);
    const r = await cli(['inject', TWO_MTTY, '--device-data', `0000:00:05.0/vfio=${file}`, '-o', out]);
    t.is(r.code, 0, r.stderr);
    const res = await readFile(out);
    const after = decodeBuffer(res, { vmdesc });
    t.deepEqual(untouched(after), untouched(before), `len ${len}: everything but that device's data records is unchanged`);
    const sizes = after.filter((e) => e.type === 'vfio-data' && e.section.idstr === '0000:00:05.0/vfio').map((e) => (e as { size: number }).size);
    t.deepEqual(sizes, len === 100 ? [24, 76] : len === 30 ? [24, 6] : []);
    const payload = Buffer.concat(after.filter((e) => e.type === 'vfio-data-chunk' && e.section.idstr === '0000:00:05.0/vfio').map((e) => (e as { data: Buffer }).data));
    t.true(payload.equals(raw));
    t.is(res.length, orig.length + (len - 60) - (len === 0 ? 32 : 0));
  }
});

test('inject names a missing device and leaves no output', async (t) => {
  const dir = await scratch(t);
  const f = join(dir, 'x.data');
  await writeFile(f, Buffer.alloc(60));
  const r = await cli(['inject', ONE_MTTY, '--device-data', `0000:00:09.0/vfio=${f}`, '-o', join(dir, 'o.mig'), '--output=json']);
  t.is(r.code, 1);
  const err = (JSON.parse(r.stderr) as { error: { code: string; message: string } }).error;
  t.is(err.code, 'ESTREAM_FORMAT');
  t.regex(err.message, /0000:00:09\.0\/vfio.*0000:00:04\.0\/vfio/);
  t.deepEqual(await readdir(dir), ['x.data']);
});

test('decoding is independent of how the input is chunked (1 MiB, 4 KiB, 7 bytes)', async (t) => {
  const bytes = await readFile(TWO_MTTY);
  const vmdesc = (await readTailVmDesc(TWO_MTTY))!.desc;
  const big = decodeBuffer(bytes, { vmdesc }, 1 << 20);
  t.true(encodeAll(big).equals(bytes));
  for (const size of [4096, 7]) {
    const evs = decodeBuffer(bytes, { vmdesc }, size);
    t.true(encodeAll(evs).equals(bytes), `chunk ${size}`);
    // Payload chunks may split differently; every other event is the same.
    const key = (e: StreamEvent): string => `${e.type}@${e.offset}`;
    t.deepEqual(evs.filter((e) => e.type !== 'vfio-data-chunk').map(key), big.filter((e) => e.type !== 'vfio-data-chunk').map(key));
  }
});

test('a pipe without the vmdesc: FULL vmstate sections cannot be delimited (typed error), with it they can', async (t) => {
  const bytes = await readFile(ONE_MTTY);
  const pipe = (): PassThrough => {
    const p = new PassThrough();
    p.end(bytes);
    return p;
  };
  const err = await t.throwsAsync(
    async () => {
      for await (const _ of readStream(pipe())) void _;
    },
    { instanceOf: StreamError },
  );
  t.is(err!.code, 'ESTREAM_CANNOT_DELIMIT');
  t.is(err!.idstr, 'timer');
  // The error points at the first FULL section's type byte.
  t.is(bytes[err!.offset!], 0x04);
  const vmdesc = (await readTailVmDesc(ONE_MTTY))!.desc;
  const parts: Buffer[] = [];
  for await (const ev of readStream(pipe(), { vmdesc })) parts.push(encodeEvent(ev));
  t.true(Buffer.concat(parts).equals(bytes));
});

test('without a vmdesc the VFIO config blob is delimited by its VFIOPCIDevice layout (real config bytes)', (t) => {
  // A VFIO-only stream made of the fixture's own VFIO records (header, configuration, EOF added).
  return (async () => {
    const bytes = await readFile(TWO_MTTY);
    const vmdesc = (await readTailVmDesc(TWO_MTTY))!.desc;
    const evs = decodeBuffer(bytes, { vmdesc });
    const keep = evs.filter((e) => e.type === 'header' || e.type === 'configuration' || e.type === 'eof' || ('section' in e && e.section.handler === 'vfio'));
    const stream = encodeAll(keep);
    const again = decodeBuffer(stream, {}, 1000);
    t.true(encodeAll(again).equals(stream));
    const cfgs = again.filter((e) => e.type === 'vfio-config').map((e) => (e as { data: Buffer }).data.length);
    t.deepEqual(cfgs, [4116, 4116]);
  })();
});
