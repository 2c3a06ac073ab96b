// mapped-ram (§6.7) on hand-built streams: reframe --format sparse lays a plain stream's RAM
// out as QEMU does (header after each MEM_SIZE entry, bitmap, 1 MiB-aligned page area, the
// records going on after it); the decoder skips those areas; extract reads the pages back by
// offset and gives the plain stream's images; sparse -> raw -> sparse is byte-identical; bad
// headers and cut files are refused with their offset and nothing is written. The same in a
// libvirt image (stream offsets vs file offsets). Real QEMU/libvirt files: real-libvirt.test.ts.
import test from 'ava';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { StreamWriter, type WriterSink } from '../../src/qemu/writer.js';
import { MAPPED_RAM_ALIGNMENT, RamFlag } from '../../src/qemu/constants.js';
import { StreamError } from '../../src/qemu/errors.js';
import { extractStreamFile } from '../../src/qemu/extract.js';
import { reframeStreamFile } from '../../src/qemu/reframe.js';
import { readStreamFile } from '../../src/qemu/reader.js';
import type { SectionRef, StreamEvent } from '../../src/qemu/records.js';
import { encodeLibvirtHeader } from '../../src/libvirt/header.js';
import { cli, scratch } from './codec-helpers.js';

const P = 4096;
const RAM_SEC: SectionRef = { sectionId: 2, idstr: 'ram', instanceId: 0, versionId: 4, handler: 'ram' };
const RAM_PAGES = 64;
const ROM_PAGES = 4;

class Collect implements WriterSink {
  parts: Buffer[] = [];
  write(b: Buffer): void {
    this.parts.push(Buffer.from(b));
  }
}

function pattern(seed: number): Buffer {
  const b = Buffer.alloc(P);
  for (let i = 0; i < P; i++) b[i] = (i * 7 + seed * 13) & 0xff;
  return b;
}

/** A plain stream: pages 0, 5, 6 of pc.ram (5 written twice, 6 zeroed after), page 1 of the rom. */
async function plainStream(): Promise<Buffer> {
  const sink = new Collect();
  const w = new StreamWriter(sink);
  const rec = (ev: Record<string, unknown>): Promise<void> => w.event({ offset: 0, section: RAM_SEC, ...ev } as unknown as StreamEvent);
  await w.header();
  await w.configuration('pc-i440fx-10.0');
  await w.sectionStart(2, 'ram', 0, 4);
  await rec({ type: 'ram-mem-size', flags: RamFlag.MEM_SIZE, address: (RAM_PAGES + ROM_PAGES) * P, blocks: [{ name: 'pc.ram', usedLength: RAM_PAGES * P }, { name: 'pc.rom', usedLength: ROM_PAGES * P }] });
  await rec({ type: 'ram-eos', flags: RamFlag.EOS, address: 0 });
  await w.endSection();
  await w.sectionPart(2);
  await w.ramPages('pc.ram', [{ address: 0, data: pattern(1) }, { address: 5 * P, data: pattern(2) }, { address: 6 * P, data: pattern(3) }]);
  await w.ramPages('pc.rom', [{ address: P, data: pattern(4) }], [0]);
  await rec({ type: 'ram-eos', flags: RamFlag.EOS, address: 0 });
  await w.endSection();
  await w.sectionEnd(2);
  await w.ramPages('pc.ram', [{ address: 5 * P, data: pattern(5) }], [6 * P]);
  await rec({ type: 'ram-eos', flags: RamFlag.EOS, address: 0 });
  await w.endSection();
  await w.eof();
  await w.flush();
  return Buffer.concat(sink.parts);
}

/** The guest RAM the plain stream describes. */
function expectedRam(): Buffer {
  const ram = Buffer.alloc(RAM_PAGES * P);
  pattern(1).copy(ram, 0);
  pattern(5).copy(ram, 5 * P);
  return ram;
}

async function events(path: string): Promise<StreamEvent[]> {
  const out: StreamEvent[] = [];
  for await (const ev of readStreamFile(path)) out.push(ev);
  return out;
}

async function ramImages(path: string, dir: string): Promise<Buffer[]> {
  await extractStreamFile(path, { ramDir: dir });
  return Promise.all(['pc.ram', 'pc.rom'].map((f) => readFile(join(dir, f))));
}

/** Where the first block's mapped-ram header sits in `bytes` (right after "pc.ram" + be64 length). */
function headerAt(bytes: Buffer): number {
  return bytes.indexOf(Buffer.from('\x06pc.ram', 'latin1')) + 7 + 8;
}

test('reframe --format sparse lays RAM out as mapped-ram; extract gives the plain stream\'s images; sparse -> raw -> sparse is byte-identical', async (t) => {
  const dir = await scratch(t);
  const plain = join(dir, 'plain.mig');
  await writeFile(plain, await plainStream());
  const sparse = join(dir, 'sparse.mig');
  const r = await reframeStreamFile(plain, sparse, { format: 'sparse' });
  t.regex(r.changes.map((c) => c.why).join('\n'), /3 pages at their file offsets/);
  const bytes = await readFile(sparse);
  t.is((await stat(sparse)).mode & 0o777, 0o600);
  t.true(bytes.includes(Buffer.from('\x0amapped-ram', 'latin1')), 'the capability is listed');
  const h = headerAt(bytes);
  t.is(bytes.readUInt32BE(h), 1, 'header version');
  t.is(bytes.readBigUInt64BE(h + 4), BigInt(P));
  const bitmapAt = Number(bytes.readBigUInt64BE(h + 12));
  const pagesAt = Number(bytes.readBigUInt64BE(h + 20));
  t.is(bitmapAt, h + 28, 'the bitmap follows the header');
  t.is(pagesAt % MAPPED_RAM_ALIGNMENT, 0);
  t.true(pagesAt >= bitmapAt + RAM_PAGES / 8);
  // Pages 0 and 5 saved; 6 was zeroed after it was sent, so its bit is clear (its old bytes may stay).
  t.deepEqual([...bytes.subarray(bitmapAt, bitmapAt + 8)], [0b0010_0001, 0, 0, 0, 0, 0, 0, 0]);
  t.true(bytes.subarray(pagesAt + 5 * P, pagesAt + 6 * P).equals(pattern(5)), 'the later copy of page 5');
  // The next block's entry comes right after this block's page area.
  t.is(bytes.toString('latin1', pagesAt + RAM_PAGES * P, pagesAt + RAM_PAGES * P + 7), '\x06pc.rom');

  const memSize = (await events(sparse)).find((e) => e.type === 'ram-mem-size') as Extract<StreamEvent, { type: 'ram-mem-size' }>;
  t.deepEqual(memSize.blocks[0]!.mappedRam, { version: 1, pageSize: BigInt(P), bitmapOffset: BigInt(bitmapAt), pagesOffset: BigInt(pagesAt) });
  const [ram, rom] = await ramImages(sparse, join(dir, 'from-sparse'));
  const [plainRam, plainRom] = await ramImages(plain, join(dir, 'from-plain'));
  t.true(ram!.equals(expectedRam()));
  t.true(ram!.equals(plainRam!));
  t.true(rom!.equals(plainRom!));

  const back = join(dir, 'back.mig');
  const r2 = await reframeStreamFile(sparse, back, { format: 'raw' });
  t.deepEqual(r2.changes.map((c) => `${c.what} ${c.action}`), ['capability mapped-ram dropped', 'mapped-ram RAM blocks (pc.ram, pc.rom) replaced']);
  t.false((await readFile(back)).includes(Buffer.from('mapped-ram')));
  const [ram2] = await ramImages(back, join(dir, 'from-back'));
  t.true(ram2!.equals(expectedRam()));
  const again = join(dir, 'again.mig');
  await reframeStreamFile(back, again, { format: 'sparse' });
  // Byte-identical but for page 6's stale bytes, which the plain stream no longer carries.
  const stale = Buffer.from(bytes);
  stale.fill(0, pagesAt + 6 * P, pagesAt + 7 * P);
  t.true((await readFile(again)).equals(stale), 'sparse -> raw -> sparse is byte-identical (the cleared page aside)');
});

test('mapped-ram refusals: a newer header version, a bitmap behind the header, a cut page area; rewrite and reframe without --format refuse to re-encode it; nothing is written', async (t) => {
  const dir = await scratch(t);
  const plain = join(dir, 'plain.mig');
  await writeFile(plain, await plainStream());
  const sparse = join(dir, 'sparse.mig');
  await reframeStreamFile(plain, sparse, { format: 'sparse' });
  const good = await readFile(sparse);
  const h = headerAt(good);
  const bad = join(dir, 'bad.mig');

  const v2 = Buffer.from(good);
  v2.writeUInt32BE(2, h);
  await writeFile(bad, v2);
  await t.throwsAsync(events(bad), { instanceOf: StreamError, code: 'ESTREAM_UNSUPPORTED', message: new RegExp(`mapped-ram header version .*expected <= 1: found 2 at offset ${h} `) });

  const behind = Buffer.from(good);
  behind.writeBigUInt64BE(BigInt(h), h + 12);
  await writeFile(bad, behind);
  await t.throwsAsync(events(bad), { code: 'ESTREAM_FORMAT', message: new RegExp(`bitmap offset .*at offset ${h + 12} `) });

  await writeFile(bad, good.subarray(0, h + 28 + 4096));
  await t.throwsAsync(events(bad), { code: 'ESTREAM_TRUNCATED', message: new RegExp(`mapped-ram bitmap and pages of RAM block "pc.ram".*at offset ${h + 28} `) });
  const out = join(dir, 'out.mig');
  await t.throwsAsync(reframeStreamFile(bad, out, { format: 'raw' }), { code: 'ESTREAM_TRUNCATED' });
  await t.throwsAsync(extractStreamFile(bad, { ramDir: join(dir, 'ram') }), { code: 'ESTREAM_TRUNCATED' });

  const keep = await cli(['reframe', sparse, out]);
  t.is(keep.code, 1);
  t.regex(keep.stderr, /mapped-ram .*convert it \(reframe --format raw\)/);
  const rw = await cli(['rewrite', sparse, out, '--format', 'sparse']);
  t.is(rw.code, 2, 'rewrite does not write sparse');
  t.deepEqual((await readdir(dir)).filter((f) => f !== 'ram').sort(), ['bad.mig', 'plain.mig', 'sparse.mig']);
  t.deepEqual(await readdir(join(dir, 'ram')).catch(() => []), []);
});

test('a libvirt image: --format sparse writes format 6 with file offsets past the header; --format gzip and --xml on reframe; gzip refused for a plain stream', async (t) => {
  const dir = await scratch(t);
  const xml = "<domain type='qemu'>\n  <name>vm1</name>\n</domain>\n";
  const img = join(dir, 'vm.sav');
  const header = encodeLibvirtHeader({ wasRunning: false, format: 'raw', xml, cookie: '<qemuCookie/>' });
  await writeFile(img, Buffer.concat([header, await plainStream()]));
  const sparse = join(dir, 'vm.sparse.sav');
  const r = await cli(['reframe', img, sparse, '--format', 'sparse']);
  t.is(r.code, 0, r.stderr);
  const bytes = await readFile(sparse);
  t.is(bytes.readUInt32LE(28), 6, 'libvirt format sparse');
  t.true(bytes.subarray(0, header.length).subarray(32).equals(header.subarray(32)), 'same XML, cookie and data length');
  const h = headerAt(bytes);
  t.is(Number(bytes.readBigUInt64BE(h + 12)), h + 28, 'the bitmap offset is a file offset, past the libvirt header');
  const [ram] = await ramImages(sparse, join(dir, 'ram'));
  t.true(ram!.equals(expectedRam()));
  const insp = JSON.parse((await cli(['inspect', sparse, '--output=json'])).stdout) as { libvirt: { format: string }; configuration: { capabilities: string[] } };
  t.is(insp.libvirt.format, 'sparse');

  const xmlFile = join(dir, 'new.xml');
  await writeFile(xmlFile, xml.replace('vm1', 'vm2'));
  const gz = join(dir, 'vm.gz.sav');
  const r2 = await cli(['reframe', sparse, gz, '--format', 'gzip', '--xml', xmlFile]);
  t.is(r2.code, 0, r2.stderr);
  const gzBytes = await readFile(gz);
  t.is(gzBytes.readUInt32LE(28), 1, 'libvirt format gzip');
  t.is((await stat(gz)).mode & 0o777, 0o600);
  const dump = await cli(['inspect', gz, '--dump', 'xml']);
  t.regex(dump.stdout, /<name>vm2<\/name>/);
  const [ram2] = await ramImages(gz, join(dir, 'ram2'));
  t.true(ram2!.equals(expectedRam()), 'the gzip image decompresses to the plain stream');

  const plain = join(dir, 'plain.mig');
  await writeFile(plain, await plainStream());
  const gzPlain = await cli(['reframe', plain, join(dir, 'x.mig'), '--format', 'gzip']);
  t.is(gzPlain.code, 2);
  t.regex(gzPlain.stderr, /QEMU stream, not a libvirt save image/);
});
