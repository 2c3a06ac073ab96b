// Bad input: truncation at every record boundary and inside records, corrupted
// length fields, random corruption. Every failure must be a StreamError with a
// byte offset (never a crash, hang or large allocation), and every accepted
// mutated input must still re-encode to exactly its own bytes.
import test from 'ava';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { StreamDecoder } from '../../src/qemu/decoder.js';
import { StreamError } from '../../src/qemu/errors.js';
import { Inspector } from '../../src/qemu/summary.js';
import { readTailVmDesc, type VmDesc } from '../../src/qemu/vmdesc.js';
import type { StreamEvent } from '../../src/qemu/records.js';
import { StreamWriter } from '../../src/qemu/writer.js';
import { cli, decodeBuffer, encodeAll, scratch, ONE_MTTY, TWO_MTTY } from './codec-helpers.js';

async function fixture(path: string): Promise<{ bytes: Buffer; vmdesc: VmDesc; events: StreamEvent[] }> {
  const bytes = await readFile(path);
  const vmdesc = (await readTailVmDesc(path))!.desc;
  return { bytes, vmdesc, events: decodeBuffer(bytes, { vmdesc }) };
}

function expectStreamError(t: { fail(m: string): void }, fn: () => unknown, what: string): StreamError | undefined {
  try {
    fn();
  } catch (e) {
    if (e instanceof StreamError && typeof e.offset === 'number') return e;
    t.fail(`${what}: not a StreamError with an offset: ${String(e)}`);
    return undefined;
  }
  t.fail(`${what}: decoded without error`);
  return undefined;
}

test('truncation at every record boundary and inside every record: typed TRUNCATED error at or before the cut', async (t) => {
  const { bytes, vmdesc, events } = await fixture(TWO_MTTY);
  const insp = new Inspector();
  for (const e of events) insp.add(e);
  const records = insp.finish(bytes.length).records;
  const vmdescAt = records.at(-1)!.offset;
  const cuts = new Set<number>([0, 1, 4, 7]);
  for (const r of records) for (const d of [0, 1, 2, 5, 6, Math.floor(r.length / 2), r.length - 1]) if (d >= 0 && d < r.length) cuts.add(r.offset + d);
  // Every event boundary of the VFIO sections, and one byte into each event.
  for (const e of events) if ('section' in e && e.section.handler === 'vfio') cuts.add(e.offset).add(e.offset + 1);
  let checked = 0;
  for (const cut of [...cuts].sort((a, b) => a - b)) {
    const input = bytes.subarray(0, cut);
    if (cut === vmdescAt) {
      // EOF then end of input is a complete stream (the vmdesc is optional, §5).
      t.true(encodeAll(decodeBuffer(input, { vmdesc })).equals(input));
      continue;
    }
    const recStart = records.filter((r) => r.offset <= cut).at(-1)?.offset ?? 0;
    const err = expectStreamError(t, () => decodeBuffer(input, { vmdesc }, 4096), `cut at ${cut}`);
    if (!err) continue;
    t.is(err.code, 'ESTREAM_TRUNCATED', `cut at ${cut}: ${err.message}`);
    t.true(err.offset! <= cut && err.offset! >= Math.min(recStart, 8) - 8, `cut at ${cut}: error offset ${err.offset}, record at ${recStart}`);
    // As a file (size known), lengths are checked against the end too: TRUNCATED or LIMIT.
    const fileErr = expectStreamError(t, () => decodeBuffer(input, { vmdesc, totalSize: cut }, 1 << 20), `file cut at ${cut}`);
    if (fileErr) t.true(['ESTREAM_TRUNCATED', 'ESTREAM_LIMIT'].includes(fileErr.code), fileErr.message);
    checked++;
  }
  t.true(checked > 400, `${checked} truncations checked`);
});

test('truncated file through the CLI: exit 1 with a JSON error naming code, offset and section', async (t) => {
  const dir = await scratch(t);
  const { bytes, events } = await fixture(ONE_MTTY);
  const chunk = events.find((e) => e.type === 'vfio-data-chunk' && e.data.length === 36)!;
  const file = join(dir, 'cut.mig');
  await writeFile(file, bytes.subarray(0, chunk.offset + 10));
  const r = await cli(['inspect', file, '--output=json']);
  t.is(r.code, 1);
  const err = (JSON.parse(r.stderr) as { error: { code: string; offset: number; idstr: string; sectionId: number } }).error;
  // The file ends inside the DATA_STATE payload, whose size runs past the end of the file.
  t.is(err.code, 'ESTREAM_LIMIT');
  t.is(err.offset, chunk.offset - 8);
  t.is(err.idstr, '0000:00:04.0/vfio');
  const rw = await cli(['rewrite', file, join(dir, 'out.mig')]);
  t.is(rw.code, 1);
  t.false((await import('node:fs')).existsSync(join(dir, 'out.mig')), 'no output left by a failed rewrite');
});

test('corrupted length fields are refused before allocation (typed LIMIT/FORMAT errors with offsets)', async (t) => {
  const { bytes, vmdesc, events } = await fixture(ONE_MTTY);
  const data = events.find((e) => e.type === 'vfio-data')!;
  const vmd = events.find((e) => e.type === 'vmdesc')!;
  const cases: { what: string; patch: (b: Buffer) => void; codes: string[]; at?: number; opts?: object }[] = [
    { what: 'DATA_STATE size 2^63', patch: (b) => b.writeBigUInt64BE(1n << 63n, data.offset + 8), codes: ['ESTREAM_LIMIT'], at: data.offset + 8 },
    { what: 'DATA_STATE size 1 TiB in a file', patch: (b) => b.writeBigUInt64BE(1n << 40n, data.offset + 8), codes: ['ESTREAM_LIMIT'], at: data.offset + 8, opts: { totalSize: bytes.length } },
    { what: 'DATA_STATE size over the cap', patch: (b) => b.writeBigUInt64BE(1n << 30n, data.offset + 8), codes: ['ESTREAM_LIMIT'], at: data.offset + 8, opts: { limits: { maxDataStateBytes: 1 << 20 } } },
    { what: 'vmdesc length 4 GiB', patch: (b) => b.writeUInt32BE(0xffffffff, vmd.offset + 1), codes: ['ESTREAM_LIMIT'], at: vmd.offset + 1 },
    { what: 'machine type length 2^31', patch: (b) => b.writeUInt32BE(0x80000000, 9), codes: ['ESTREAM_LIMIT'], at: 9 },
    { what: 'FULL body over the buffering cap', patch: () => undefined, codes: ['ESTREAM_LIMIT'], opts: { limits: { maxBufferedBytes: 1000 } } },
    { what: 'first idstr length byte', patch: (b) => (b[8 + 19 + 5] = 200), codes: ['ESTREAM_FORMAT', 'ESTREAM_TRUNCATED', 'ESTREAM_CANNOT_DELIMIT'] },
    { what: 'command length', patch: (b) => b.writeUInt16BE(0xffff, events.find((e) => e.type === 'command')!.offset + 3), codes: ['ESTREAM_FORMAT', 'ESTREAM_TRUNCATED', 'ESTREAM_LIMIT', 'ESTREAM_CANNOT_DELIMIT'] },
    { what: 'section footer id', patch: (b) => b.writeUInt32BE(999, events.find((e) => e.type === 'footer')!.offset + 1), codes: ['ESTREAM_FORMAT'] },
    { what: 'file magic', patch: (b) => (b[0] = 0x51 ^ 1), codes: ['ESTREAM_FORMAT'], at: 0 },
    { what: 'file version 2', patch: (b) => b.writeUInt32BE(2, 4), codes: ['ESTREAM_UNSUPPORTED'], at: 4 },
    { what: 'VFIO marker', patch: (b) => b.writeBigUInt64BE(0xffffffffef100009n, data.offset), codes: ['ESTREAM_FORMAT'], at: data.offset },
  ];
  for (const c of cases) {
    const b = Buffer.from(bytes);
    c.patch(b);
    const before = process.memoryUsage().arrayBuffers;
    const err = expectStreamError(t, () => decodeBuffer(b, { vmdesc, ...c.opts }, 1 << 20), c.what);
    if (!err) continue;
    t.true(c.codes.includes(err.code), `${c.what}: ${err.code} ${err.message}`);
    if (c.at !== undefined) t.is(err.offset, c.at, c.what);
    t.true(process.memoryUsage().arrayBuffers - before < 64 << 20, `${c.what}: no large allocation`);
  }
});

/** Deterministic PRNG (mulberry32) so failures are reproducible. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

async function vfioStream(): Promise<Buffer> {
  const parts: Buffer[] = [];
  const w = new StreamWriter({ write: (b) => void parts.push(Buffer.from(b)) });
  await w.header();
  await w.configuration('pc-q35-10.0', { capabilities: ['x-ignore-shared'] });
  await w.vfioStartSection(7, 'a/vfio');
  await w.sectionPart(7);
  await w.vfioData(Buffer.alloc(300, 1));
  await w.vfioMarker('DEV_INIT_DATA_SENT');
  await w.endSection();
  await w.switchoverStart();
  await w.sectionEnd(7);
  await w.vfioData(Buffer.alloc(200, 2));
  await w.vfioMarker('END_OF_STATE');
  await w.endSection();
  const cfg = Buffer.alloc(4 + 256 + 16, 0);
  await w.vfioConfigSection(7, 'a/vfio', cfg);
  await w.eof();
  await w.flush();
  return Buffer.concat(parts);
}

test('random corruption (seeded): either a StreamError with an offset, or a stream that re-encodes to itself', async (t) => {
  const small = await vfioStream();
  const { bytes, vmdesc } = await fixture(ONE_MTTY);
  const inputs = [
    { name: 'hand-built VFIO stream', bytes: small, vmdesc: undefined, runs: 600, span: small.length },
    { name: 'one-mtty.mig', bytes, vmdesc, runs: 60, span: vmdesc ? bytes.length : 0 },
  ];
  const rand = rng(0x5eed);
  const t0 = Date.now();
  let failed = 0;
  let accepted = 0;
  for (const inp of inputs) {
    for (let i = 0; i < inp.runs; i++) {
      const b = Buffer.from(inp.bytes);
      const n = 1 + Math.floor(rand() * 4);
      for (let k = 0; k < n; k++) b[Math.floor(rand() * inp.span)] = Math.floor(rand() * 256);
      const cut = rand() < 0.3 ? Math.floor(rand() * b.length) : b.length;
      const input = b.subarray(0, cut);
      try {
        const d = new StreamDecoder({ ...(inp.vmdesc ? { vmdesc: inp.vmdesc } : {}), limits: { maxBufferedBytes: 8 << 20, maxDataStateBytes: 64 << 20 } });
        const evs: StreamEvent[] = [];
        for (let p = 0; p < input.length; p += 997) {
          d.push(input.subarray(p, p + 997));
          evs.push(...d.takeEvents());
        }
        d.end();
        evs.push(...d.takeEvents());
        t.true(encodeAll(evs).equals(input), `${inp.name} run ${i}: accepted input must re-encode exactly`);
        accepted++;
      } catch (e) {
        if (!(e instanceof StreamError) || typeof e.offset !== 'number' || e.offset > input.length) {
          t.fail(`${inp.name} run ${i}: ${String(e)}`);
        }
        failed++;
      }
    }
  }
  t.log(`${failed} rejected, ${accepted} accepted in ${Date.now() - t0} ms`);
  t.true(failed > 0);
});

test('DATA_STATE payloads stream through in constant memory (256 MiB claimed and fed in 1 MiB chunks)', async (t) => {
  const head = Buffer.from(await (async () => {
    const parts: Buffer[] = [];
    const w = new StreamWriter({ write: (b) => void parts.push(Buffer.from(b)) });
    await w.header();
    await w.vfioStartSection(1, 'big/vfio');
    await w.sectionEnd(1);
    await w.flush();
    return Buffer.concat(parts);
  })());
  const size = 256 << 20;
  const hdr = Buffer.alloc(16);
  hdr.writeBigUInt64BE(0xffffffffef100004n, 0);
  hdr.writeBigUInt64BE(BigInt(size), 8);
  const d = new StreamDecoder();
  d.push(Buffer.concat([head, hdr]));
  d.takeEvents();
  const chunk = Buffer.alloc(1 << 20, 0xab);
  const before = process.memoryUsage().rss;
  let got = 0;
  for (let i = 0; i < size; i += chunk.length) {
    d.push(chunk);
    for (const e of d.takeEvents()) if (e.type === 'vfio-data-chunk') got += e.data.length;
  }
  t.is(got, size);
  t.true(process.memoryUsage().rss - before < 64 << 20, `rss grew by ${(process.memoryUsage().rss - before) >> 20} MiB`);
  const tail = Buffer.alloc(8 + 5 + 1);
  tail.writeBigUInt64BE(0xffffffffef100001n, 0);
  tail[8] = 0x7e;
  tail.writeUInt32BE(1, 9);
  tail[13] = 0;
  d.push(tail);
  d.end();
  t.deepEqual(d.takeEvents().map((e) => e.type), ['vfio-marker', 'footer', 'eof']);
});
