// The multifd channel decoder on real QEMU 10.0.2 channels (test/fixtures/qemu10-multifd,
// see its README: captured by the proxy's tee) and on bad input. The counts it finds are
// checked against what QEMU itself reported for that migration (query-migrate, recorded in
// the README), and against the main channel's MULTIFD_FLUSH records.
import test from 'ava';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { StreamError, type StreamErrorCode } from '../../src/qemu/errors.js';
import {
  MULTIFD_INIT_SIZE, MULTIFD_MAGIC, MultifdDecoder, MultifdFlag, MultifdTallier,
  VFIO_PACKET_CONFIG_STATE, type MultifdEvent,
} from '../../src/qemu/multifd.js';
import { inspectStreamFile } from '../../src/qemu/summary.js';
import { ROOT } from './codec-helpers.js';
import { vfioStatePacket } from '../helpers/multifd-packets.js';

const DIR = join(ROOT, 'test/fixtures/qemu10-multifd');
const CHANNELS = [join(DIR, 'channel-0.bin'), join(DIR, 'channel-1.bin')];
/** The source's query-migrate after the capture (README): QEMU's numbers, not ours. */
const QEMU = { multifdBytes: 309824, normal: 51, duplicate: 8271, pageSize: 4096 };

function decode(bytes: Buffer, chunk = bytes.length, pageSize?: number): { events: MultifdEvent[]; dec: MultifdDecoder } {
  const events: MultifdEvent[] = [];
  const dec = new MultifdDecoder({ ...(pageSize ? { pageSize } : {}), onEvent: (e) => events.push(e) });
  for (let p = 0; p < bytes.length; p += chunk) dec.push(bytes.subarray(p, p + chunk));
  return { events, dec };
}

function packets(events: MultifdEvent[]): Exclude<MultifdEvent, { type: 'init' }>[] {
  return events.filter((e): e is Exclude<MultifdEvent, { type: 'init' }> => e.type !== 'init');
}

function stop(fn: () => void): StreamError {
  try {
    fn();
  } catch (e) {
    if (e instanceof StreamError) return e;
    throw e;
  }
  throw new Error('no error');
}

test('real channels: init, packets back to back to the last byte, page counts = QEMU\'s normal/duplicate, bytes = multifd-bytes, packet_num one sequence', async (t) => {
  let normal = 0;
  let zero = 0;
  let bytes = 0;
  const nums: number[] = [];
  const main = await inspectStreamFile(join(DIR, 'main.mig'));
  for (const [i, file] of CHANNELS.entries()) {
    const buf = await readFile(file);
    const { events, dec } = decode(buf);
    dec.end();
    t.true(dec.atBoundary);
    t.is(dec.offset, buf.length);
    const init = events[0]!;
    t.is(init.type, 'init');
    if (init.type === 'init') t.like(init.init, { offset: 0, version: 1, channelId: i, uuid: '0'.repeat(32) });
    // Each packet starts where the previous one ended: the fixed 1344-byte RAM header (4 KiB
    // pages) plus its page data, whatever its normal + zero page counts.
    let at = MULTIFD_INIT_SIZE;
    for (const p of packets(events)) {
      t.is(p.offset, at);
      at += p.size;
      if (p.type !== 'ram') t.fail('device state without VFIO');
      else {
        t.is(p.size, 1344 + p.normalPages * QEMU.pageSize);
        if (p.flags & MultifdFlag.SYNC) t.is(p.normalPages + p.zeroPages, 0, 'SYNC packets carry no page here');
        else t.is(p.pagesAlloc, 128);
        nums.push(p.packetNum);
      }
    }
    t.is(at, buf.length);
    const tally = new MultifdTallier();
    for (const e of events) tally.add(e);
    const r = tally.result(dec.offset);
    normal += r.ramPages.normal;
    zero += r.ramPages.zero;
    bytes += buf.length;
    t.is(r.channel, i);
    t.is(r.ramDataBytes, r.ramPages.normal * QEMU.pageSize);
    // One SYNC packet per channel for each MULTIFD_FLUSH on the main channel.
    t.is(r.syncs, main.ram!.records.MULTIFD_FLUSH);
    t.deepEqual(r.compression, [0]);
  }
  t.is(normal, QEMU.normal);
  t.is(zero, QEMU.duplicate);
  t.is(bytes, QEMU.multifdBytes);
  t.deepEqual(nums.sort((a, b) => a - b), nums.map((_, i) => i), 'packet_num 0..n-1 across both channels, each once');
  t.deepEqual(main.ram!.pages, { PAGE: 0, ZERO: 0, XBZRLE: 0, COMPRESS_PAGE: 0 }, 'no page on the main channel');
});

test('any chunking gives the same events (1, 7, 1000 and 64 KiB bytes at a time)', async (t) => {
  const buf = await readFile(CHANNELS[1]!);
  const whole = decode(buf).events;
  for (const n of [1, 7, 1000, 65536]) t.deepEqual(decode(buf, n).events, whole, `chunks of ${n}`);
});

test('a channel cut anywhere but between packets ends with a typed TRUNCATED error at the cut', async (t) => {
  const buf = await readFile(CHANNELS[0]!);
  const bounds = [0, MULTIFD_INIT_SIZE, ...packets(decode(buf).events).map((p) => p.offset + p.size)];
  for (const b of bounds) {
    const { dec } = decode(buf.subarray(0, b));
    t.notThrows(() => dec.end(), `cut at packet boundary ${b}`);
  }
  const cuts = bounds.slice(0, -1).flatMap((b) => [b + 1, b + 12, b + 700]).filter((c) => c < buf.length);
  for (const c of cuts) {
    const { dec } = decode(buf.subarray(0, c));
    const e = stop(() => dec.end());
    t.is(e.code, 'ESTREAM_TRUNCATED', `cut at ${c}`);
    t.is(e.offset, c);
  }
});

test('corrupted headers: typed errors at the packet\'s offset, and the decoder stays stopped', async (t) => {
  const orig = await readFile(CHANNELS[1]!);
  const ps = packets(decode(orig).events);
  const data = ps.find((p) => p.type === 'ram' && p.normalPages > 0)!;
  const cases: { what: string; edit: (b: Buffer) => void; code: StreamErrorCode; offset: number }[] = [
    { what: 'init magic', edit: (b) => b.writeUInt32BE(0x11223345, 0), code: 'ESTREAM_FORMAT', offset: 0 },
    { what: 'init version', edit: (b) => b.writeUInt32BE(2, 4), code: 'ESTREAM_UNSUPPORTED', offset: 4 },
    { what: 'packet magic', edit: (b) => b.writeUInt32BE(0xdeadbeef, ps[5]!.offset), code: 'ESTREAM_FORMAT', offset: ps[5]!.offset },
    { what: 'packet version', edit: (b) => b.writeUInt32BE(9, ps[5]!.offset + 4), code: 'ESTREAM_UNSUPPORTED', offset: ps[5]!.offset + 4 },
    { what: 'pages_alloc beyond a packet', edit: (b) => b.writeUInt32BE(129, data.offset + 12), code: 'ESTREAM_FORMAT', offset: data.offset + 12 },
    { what: 'page data size not normal x page size', edit: (b) => b.writeUInt32BE(4097, data.offset + 20), code: 'ESTREAM_FORMAT', offset: data.offset + 20 },
  ];
  for (const c of cases) {
    const b = Buffer.from(orig);
    c.edit(b);
    const dec = new MultifdDecoder();
    const e = stop(() => dec.push(b));
    t.is(e.code, c.code, c.what);
    t.is(e.offset, c.offset, c.what);
    t.is(stop(() => dec.push(Buffer.alloc(1))), e, `${c.what}: stays stopped`);
  }
});

test('device-state packets between real RAM packets: idstr, instance, VFIO idx and config flag, payload bytes; byte by byte too', async (t) => {
  const orig = await readFile(CHANNELS[0]!);
  const ps = packets(decode(orig).events);
  const cut = ps[3]!.offset;
  const dev = [
    vfioStatePacket('0000:00:04.0/vfio', 0, 0, Buffer.alloc(1000, 1), 0),
    vfioStatePacket('0000:00:05.0/vfio', 0, 0, Buffer.alloc(5, 2), 0),
    vfioStatePacket('0000:00:04.0/vfio', 1, 0, Buffer.alloc(0), 0),
    vfioStatePacket('0000:00:04.0/vfio', 2, VFIO_PACKET_CONFIG_STATE, Buffer.alloc(300, 3), 0),
  ];
  const buf = Buffer.concat([orig.subarray(0, cut), ...dev, orig.subarray(cut)]);
  for (const chunk of [buf.length, 1]) {
    const { events, dec } = decode(buf, chunk);
    dec.end();
    const ds = packets(events).filter((p) => p.type === 'device-state');
    t.deepEqual(ds.map((p) => p.type === 'device-state' && [p.idstr, p.instanceId, p.vfio?.idx, p.vfio?.flags, p.dataBytes]), [
      ['0000:00:04.0/vfio', 0, 0, 0, 1012], ['0000:00:05.0/vfio', 0, 0, 0, 17], ['0000:00:04.0/vfio', 0, 1, 0, 12], ['0000:00:04.0/vfio', 0, 2, 1, 312],
    ]);
    const tally = new MultifdTallier();
    for (const e of events) tally.add(e);
    const r = tally.result(dec.offset);
    t.deepEqual(r.deviceState, [
      { idstr: '0000:00:04.0/vfio', instanceId: 0, packets: 3, bytes: 1012 + 12 + 312, configPacket: true, idx: { min: 0, max: 2 } },
      { idstr: '0000:00:05.0/vfio', instanceId: 0, packets: 1, bytes: 17, configPacket: false, idx: { min: 0, max: 0 } },
    ]);
    t.is(r.packets, ps.length + 4);
    // The RAM packets after them are still found where they are.
    t.is(packets(events).at(-1)!.offset, ps.at(-1)!.offset + dev.reduce((n, d) => n + d.length, 0));
  }
});

test('page size: the RAM header follows it (64 KiB pages: 384 bytes); compressed packets skip the data-size check; bad sizes are refused', (t) => {
  t.is(new MultifdDecoder({ pageSize: 65536 }).ramHeaderSize, 320 + 8 * 8);
  t.is(new MultifdDecoder().ramHeaderSize, 1344);
  for (const ps of [0, 1000, 4095, 1 << 20]) t.is(stop(() => new MultifdDecoder({ pageSize: ps })).code, 'ESTREAM_FORMAT');
  // A zlib packet (flag 2) with 3 normal pages in 777 compressed bytes.
  const init = Buffer.alloc(MULTIFD_INIT_SIZE);
  init.writeUInt32BE(MULTIFD_MAGIC, 0);
  init.writeUInt32BE(1, 4);
  init[24] = 3;
  const p = Buffer.alloc(1344 + 777);
  p.writeUInt32BE(MULTIFD_MAGIC, 0);
  p.writeUInt32BE(1, 4);
  p.writeUInt32BE(2, 8);
  p.writeUInt32BE(128, 12);
  p.writeUInt32BE(3, 16);
  p.writeUInt32BE(777, 20);
  p.writeBigUInt64BE(42n, 24);
  p.write('pc.ram', 64, 'latin1');
  const { events, dec } = decode(Buffer.concat([init, p, p]));
  dec.end();
  const tally = new MultifdTallier();
  for (const e of events) tally.add(e);
  t.like(tally.result(dec.offset), { channel: 3, packets: 2, ramPackets: 2, ramPages: { normal: 6, zero: 0 }, ramDataBytes: 1554, compression: [2], packetNums: { min: 42, max: 42 } });
});
