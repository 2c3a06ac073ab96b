// libvirt save images built here around a real QEMU 10 stream (test/fixtures/qemu10-vfio):
// the header codec against libvirt's layout, every compression libvirt offers read through
// its own programs, and refusals that name the file offset. The real-libvirt proof is
// test/libvirt/real-libvirt.test.ts.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { cli, scratch, ONE_MTTY } from '../qemu/codec-helpers.js';
import {
  decodeLibvirtHeader, encodeLibvirtHeader, LibvirtImageError, LIBVIRT_FORMATS, LIBVIRT_HEADER_SIZE, readLibvirtImageHeader, type LibvirtFormat,
} from '../../src/libvirt/index.js';
import { inspectStreamFile } from '../../src/qemu/summary.js';

const XML = "<domain type='qemu'>\n  <name>t&amp;1</name>\n  <uuid>0b9e9c58-5a64-4a4c-9d8c-1f6f1b0c2a11</uuid>\n  <os>\n    <type arch='x86_64' machine='pc-i440fx-10.0'>hvm</type>\n  </os>\n</domain>\n";
const COOKIE = '<cookie>\n  <cpu mode="custom"/>\n</cookie>\n';

/** A libvirt image of `stream` stored as `format` (compressed with the program libvirt uses). */
function image(stream: Buffer, format: LibvirtFormat, version = 2): Buffer {
  const head = encodeLibvirtHeader({ version, wasRunning: true, format, xml: XML, cookie: COOKIE });
  const body = format === 'raw' || format === 'sparse' || version === 1 ? stream : execFileSync(format, ['-c'], { input: stream, maxBuffer: 64 << 20 });
  return Buffer.concat([head, body]);
}

function libvirtError(t: { throws: (fn: () => unknown, e: object) => unknown }, fn: () => unknown): LibvirtImageError {
  return t.throws(fn, { instanceOf: LibvirtImageError }) as LibvirtImageError;
}

test('header: the layout libvirt writes (92 bytes, native-endian fields, XML + cookie + 64 KiB padding)', (t) => {
  const b = encodeLibvirtHeader({ wasRunning: true, format: 'gzip', xml: XML, cookie: COOKIE });
  t.is(b.toString('latin1', 0, 16), 'LibvirtQemudSave');
  t.is(b.readUInt32LE(16), 2);
  const xmlLen = Buffer.byteLength(XML) + 1;
  t.is(b.readUInt32LE(20), xmlLen + Buffer.byteLength(COOKIE) + 1 + 65536);
  t.is(b.readUInt32LE(24), 1);
  t.is(b.readUInt32LE(28), 1);
  t.is(b.readUInt32LE(32), xmlLen);
  t.is(b.length, LIBVIRT_HEADER_SIZE + b.readUInt32LE(20));
  const h = decodeLibvirtHeader(b, 'x');
  t.like(h, { version: 2, format: 'gzip', wasRunning: true, cookieOffset: xmlLen, littleEndian: true });
  // Written on a big-endian host: libvirt swaps when the version looks too large; so do we.
  const be = Buffer.from(b);
  for (const at of [16, 20, 24, 28, 32]) be.writeUInt32BE(b.readUInt32LE(at), at);
  t.like(decodeLibvirtHeader(be, 'x'), { version: 2, format: 'gzip', dataLen: h.dataLen, cookieOffset: xmlLen, littleEndian: false });
});

test('header: bad headers are refused with a typed error naming the file and offset', (t) => {
  const good = encodeLibvirtHeader({ wasRunning: false, format: 'raw', xml: XML });
  const part = Buffer.from(good);
  part.write('LibvirtQemudPart', 0, 'latin1');
  t.like(libvirtError(t, () => decodeLibvirtHeader(part, 'img')), { code: 'ELIBVIRT_INCOMPLETE', offset: 0 });
  t.like(libvirtError(t, () => decodeLibvirtHeader(good.subarray(0, 50), 'img')), { code: 'ELIBVIRT_TRUNCATED', offset: 50 });
  const v = Buffer.from(good);
  v.writeUInt32LE(0, 16);
  t.like(libvirtError(t, () => decodeLibvirtHeader(v, 'img')), { code: 'ELIBVIRT_FORMAT', offset: 16 });
  const f = Buffer.from(good);
  f.writeUInt32LE(LIBVIRT_FORMATS.length, 28);
  const fe = libvirtError(t, () => decodeLibvirtHeader(f, 'img'));
  t.like(fe, { code: 'ELIBVIRT_FORMAT', offset: 28 });
  t.regex(fe.message, /^img: unknown libvirt save image format 7 at offset 28/);
  const c = Buffer.from(good);
  c.writeUInt32LE(c.readUInt32LE(20) + 1, 32);
  t.like(libvirtError(t, () => decodeLibvirtHeader(c, 'img')), { code: 'ELIBVIRT_FORMAT', offset: 32 });
});

test('image: a truncated XML area and an XML without its NUL are refused at their offsets', async (t) => {
  const dir = await scratch(t);
  const good = image(await readFile(ONE_MTTY), 'raw');
  const short = join(dir, 'short.sav');
  await writeFile(short, good.subarray(0, 1000));
  t.like(await t.throwsAsync(readLibvirtImageHeader(short), { instanceOf: LibvirtImageError }), { code: 'ELIBVIRT_TRUNCATED', offset: 1000 });
  const noNul = Buffer.from(good);
  const dataLen = noNul.readUInt32LE(20);
  noNul.fill(0x20, LIBVIRT_HEADER_SIZE, LIBVIRT_HEADER_SIZE + dataLen);
  const bad = join(dir, 'nonul.sav');
  await writeFile(bad, noNul);
  const e = await t.throwsAsync(readLibvirtImageHeader(bad), { instanceOf: LibvirtImageError });
  t.like(e, { code: 'ELIBVIRT_FORMAT' });
  t.regex(e!.message, /not NUL-terminated/);
});

for (const format of ['raw', 'gzip', 'bzip2', 'xz', 'lzop', 'zstd'] as const) {
  test(`inspect: a ${format} libvirt image decodes to the same records as the plain stream, with header and domain`, async (t) => {
    const dir = await scratch(t);
    const stream = await readFile(ONE_MTTY);
    const file = join(dir, `${format}.sav`);
    await writeFile(file, image(stream, format));
    const plain = await inspectStreamFile(ONE_MTTY);
    const r = await inspectStreamFile(file);
    t.deepEqual(r.records, plain.records);
    t.deepEqual(r.vfio, plain.vfio);
    t.is(r.size, stream.length);
    t.like(r.libvirt, {
      version: 2, format, wasRunning: true, byteOrder: 'little', streamOffset: LIBVIRT_HEADER_SIZE + (await readFile(file)).readUInt32LE(20),
      xmlBytes: Buffer.byteLength(XML), cookieBytes: Buffer.byteLength(COOKIE),
      domain: { name: 't&1', uuid: '0b9e9c58-5a64-4a4c-9d8c-1f6f1b0c2a11', machine: 'pc-i440fx-10.0', domainType: 'qemu' },
    });
  });
}

test('inspect: a version 1 image is read as stored whatever its format says (libvirt decompresses only version 2)', async (t) => {
  const dir = await scratch(t);
  const file = join(dir, 'v1.sav');
  await writeFile(file, image(await readFile(ONE_MTTY), 'gzip', 1));
  const r = await inspectStreamFile(file);
  t.deepEqual(r.records, (await inspectStreamFile(ONE_MTTY)).records);
  t.like(r.libvirt, { version: 1, format: 'gzip' });
});

test('a truncated compressed image fails naming the decompressor and the file; nothing is written by rewrite', async (t) => {
  const dir = await scratch(t);
  const whole = image(await readFile(ONE_MTTY), 'gzip');
  const file = join(dir, 'cut.sav');
  await writeFile(file, whole.subarray(0, whole.length - 5000));
  const out = join(dir, 'out.sav');
  const r = await cli(['rewrite', file, out]);
  t.is(r.code, 1, r.stderr);
  t.regex(r.stderr, /cut\.sav: "gzip -dc" failed \(exit 1\)/);
  t.notRegex(r.stderr, /\n\s+at /, 'no stack trace');
  t.deepEqual((await readdir(dir)).sort(), ['cut.sav']);
});

test('a corrupt stream inside a raw image names the stream offset and where the stream starts in the file', async (t) => {
  const dir = await scratch(t);
  const img = image(await readFile(ONE_MTTY), 'raw');
  const at = img.readUInt32LE(20) + LIBVIRT_HEADER_SIZE;
  img.writeUInt32BE(0xdeadbeef, at); // the QEVM magic
  const file = join(dir, 'bad.sav');
  await writeFile(file, img);
  const r = await cli(['inspect', file]);
  t.is(r.code, 1);
  t.regex(r.stderr, new RegExp(`at offset 0 .*QEMU stream starts at file offset ${at} of this libvirt raw image`));
});

test('rewrite: a raw image comes back byte-identical; a compressed one as a raw image with the same XML', async (t) => {
  const dir = await scratch(t);
  const stream = await readFile(ONE_MTTY);
  for (const format of ['raw', 'xz'] as const) {
    const file = join(dir, `${format}.sav`);
    const out = join(dir, `${format}.out.sav`);
    const img = image(stream, format);
    await writeFile(file, img);
    const r = await cli(['rewrite', file, out]);
    t.is(r.code, 0, r.stderr);
    const got = await readFile(out);
    if (format === 'raw') t.true(got.equals(img), 'raw image rewritten byte for byte');
    else {
      const h = await readLibvirtImageHeader(out);
      t.like(h, { format: 'raw', xml: XML, cookie: COOKIE, wasRunning: true, dataLen: img.readUInt32LE(20) });
      t.true(got.subarray(h!.streamOffset).equals(stream), 'the stream after the header is the decompressed stream');
    }
  }
});

test('inspect --dump xml prints the domain XML and the cookie (json: both fields)', async (t) => {
  const dir = await scratch(t);
  const file = join(dir, 'x.sav');
  await writeFile(file, image(await readFile(ONE_MTTY), 'zstd'));
  const human = await cli(['inspect', file, '--dump', 'xml']);
  t.is(human.code, 0, human.stderr);
  t.is(human.stdout.trimEnd(), `${XML}\n${COOKIE}`.trimEnd());
  const json = await cli(['inspect', file, '--dump', 'xml', '--output=json']);
  t.like(JSON.parse(json.stdout), { xml: XML, cookie: COOKIE, libvirt: { format: 'zstd' } });
  const plain = await cli(['inspect', ONE_MTTY, '--dump', 'xml']);
  t.is(plain.code, 2);
  t.regex(plain.stderr, /needs a libvirt save image/);
});

test('rewrite --xml replaces the domain XML (kept in place when it fits, the data length grown when not); refused on a plain stream', async (t) => {
  const dir = await scratch(t);
  const stream = await readFile(ONE_MTTY);
  const file = join(dir, 'in.sav');
  const img = image(stream, 'gzip');
  await writeFile(file, img);
  for (const [label, xml] of [['small', XML.replace('t&amp;1', 'renamed')], ['large', XML.replace('</domain>', `<description>${'x'.repeat(100_000)}</description></domain>`)]] as const) {
    const xmlFile = join(dir, `${label}.xml`);
    await writeFile(xmlFile, xml);
    const out = join(dir, `${label}.sav`);
    const r = await cli(['rewrite', file, out, '--xml', xmlFile]);
    t.is(r.code, 0, r.stderr);
    const h = await readLibvirtImageHeader(out);
    t.like(h, { xml, cookie: COOKIE, format: 'raw' });
    if (label === 'small') t.is(h!.dataLen, img.readUInt32LE(20));
    else t.true(h!.dataLen >= Buffer.byteLength(xml) + 1 + Buffer.byteLength(COOKIE) + 1);
    t.true((await readFile(out)).subarray(h!.streamOffset).equals(stream));
  }
  const notXml = join(dir, 'bad.xml');
  await writeFile(notXml, 'hello');
  const bad = await cli(['rewrite', file, join(dir, 'bad.sav'), '--xml', notXml]);
  t.is(bad.code, 2);
  const plain = await cli(['rewrite', ONE_MTTY, join(dir, 'plain.mig'), '--xml', join(dir, 'small.xml')]);
  t.is(plain.code, 2);
  t.regex(plain.stderr, /not a libvirt save image/);
  t.deepEqual((await readdir(dir)).filter((f) => f.startsWith('bad.sav') || f.startsWith('plain')), []);
});
