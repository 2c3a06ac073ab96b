// reframe at the codec level: on the real QEMU 10.0 mtty fixture (SWITCHOVER_START for an
// older target) and on HAND-BUILT streams for what real QEMU does not write here without a
// VFIO device on the host (switchover-ack INIT_DATA_SENT, multifd dummies; the kernel lane
// covers INIT_DATA_SENT with real QEMU and mtty), built from docs/stream-format.md §9 with
// the StreamWriter. Loads into real QEMU are in proxy.test.ts and the kernel lane.
import test from 'ava';
import { existsSync } from 'node:fs';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseQemuRelease, reframeStreamFile } from '../../src/qemu/reframe.js';
import { StreamError } from '../../src/qemu/errors.js';
import { VmCommand } from '../../src/qemu/constants.js';
import { StreamWriter, type WriterSink } from '../../src/qemu/writer.js';
import { Inspector } from '../../src/qemu/summary.js';
import { readStreamFile } from '../../src/qemu/reader.js';
import { extractStreamFile } from '../../src/qemu/extract.js';
import { ONE_MTTY, ROOT, cli, scratch } from './codec-helpers.js';
import { multifdInit, vfioStatePacket, writeMultifdVfioMainChannel } from '../helpers/multifd-packets.js';

class Collect implements WriterSink {
  parts: Buffer[] = [];
  write(b: Buffer): void {
    this.parts.push(Buffer.from(b));
  }
}

async function buildFile(path: string, fn: (w: StreamWriter) => Promise<void>): Promise<Buffer> {
  const sink = new Collect();
  const w = new StreamWriter(sink);
  await fn(w);
  await w.flush();
  const bytes = Buffer.concat(sink.parts);
  await writeFile(path, bytes);
  return bytes;
}

const DEV = '0000:00:04.0/vfio';
const END_OF_STATE = Buffer.from('ffffffffef100001', 'hex');
const INIT_DATA_SENT = Buffer.from('ffffffffef100005', 'hex');
/** The VFIOPCIDevice config vmstate of a 256-byte config space without MSI-X (§9.2). */
const CONFIG = Buffer.concat([Buffer.from([0, 0, 0, 1]), Buffer.alloc(256), Buffer.alloc(16)]);

async function inspectFile(path: string) {
  const insp = new Inspector();
  for await (const ev of readStreamFile(path)) insp.add(ev);
  return insp.finish();
}

async function leftovers(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((f) => f.includes('partial') || f === 'out.mig');
}

test('real QEMU 10.0 fixture: nothing to change without --to (byte-identical copy); --to 9.2 refuses the 10.0 machine type, and with force drops exactly the 5-byte SWITCHOVER_START', async (t) => {
  const dir = await scratch(t);
  const original = await readFile(ONE_MTTY);
  const same = await reframeStreamFile(ONE_MTTY, join(dir, 'same.mig'));
  t.deepEqual(same.changes, []);
  t.true((await readFile(join(dir, 'same.mig'))).equals(original));
  const keep = await reframeStreamFile(ONE_MTTY, join(dir, 'keep.mig'), { target: parseQemuRelease('10.0')! });
  t.deepEqual(keep.changes, [], 'a 10.0 destination takes SWITCHOVER_START');

  await t.throwsAsync(reframeStreamFile(ONE_MTTY, join(dir, 'old.mig'), { target: parseQemuRelease('9.2')! }), {
    code: 'ESTREAM_UNSUPPORTED',
    message: /machine type pc-i440fx-10.0 is new in QEMU 10.0; QEMU 9.2 has no such machine/,
  });
  t.false(existsSync(join(dir, 'old.mig')), 'a refusal writes nothing');
  const r = await reframeStreamFile(ONE_MTTY, join(dir, 'old.mig'), { target: parseQemuRelease('9.2')!, force: true });
  t.deepEqual(r.warnings, ['machine type pc-i440fx-10.0 is new in QEMU 10.0; QEMU 9.2 has no such machine and refuses the stream']);
  t.is(r.changes.length, 1);
  const at = r.changes[0]!.offset;
  t.like(r.changes[0], { what: 'command SWITCHOVER_START', action: 'dropped' });
  t.true(original.subarray(at, at + 5).equals(Buffer.from('08000b0000', 'hex')), 'the change names where the command was');
  const out = await readFile(join(dir, 'old.mig'));
  t.true(out.equals(Buffer.concat([original.subarray(0, at), original.subarray(at + 5)])));
  t.is(r.bytesOut, r.bytesIn - 5);
  // The device data and config are untouched.
  const [before, after] = [await inspectFile(ONE_MTTY), await inspectFile(join(dir, 'old.mig'))];
  t.deepEqual(after.vfio.map((d) => [d.idstr, d.dataBytes, d.configBytes]), before.vfio.map((d) => [d.idstr, d.dataBytes, d.configBytes]));
});

test('HAND-BUILT switchover-ack capture: INIT_DATA_SENT becomes END_OF_STATE in place, return-path commands dropped, device data unchanged', async (t) => {
  const dir = await scratch(t);
  const init = Buffer.alloc(300, 0xa5);
  const stop = Buffer.alloc(700, 0x5a);
  const input = join(dir, 'in.mig');
  const bytes = await buildFile(input, async (w) => {
    await w.header();
    await w.configuration('pc-q35-9.1');
    await w.command(VmCommand.OPEN_RETURN_PATH);
    await w.command(VmCommand.PING, Buffer.from([0, 0, 0, 1]));
    await w.vfioStartSection(41, DEV);
    await w.sectionPart(41);
    await w.vfioData(init);
    await w.vfioMarker('DEV_INIT_DATA_SENT');
    await w.endSection();
    await w.sectionEnd(41);
    await w.vfioData(stop);
    await w.vfioMarker('END_OF_STATE');
    await w.endSection();
    await w.vfioConfigSection(41, DEV, CONFIG);
    await w.eof();
  });
  const r = await reframeStreamFile(input, join(dir, 'out.mig'));
  t.deepEqual(r.changes.map((c) => [c.what, c.action]), [['command OPEN_RETURN_PATH', 'dropped'], ['command PING', 'dropped'], ['vfio DEV_INIT_DATA_SENT', 'replaced']]);
  const marker = r.changes[2]!;
  t.like(marker, { idstr: DEV, sectionId: 41 });
  t.true(bytes.subarray(marker.offset, marker.offset + 8).equals(INIT_DATA_SENT));
  // Expected bytes: the two commands (5 and 9 bytes) cut out, the marker overwritten.
  const [open, ping] = [r.changes[0]!.offset, r.changes[1]!.offset];
  t.is(ping, open + 5);
  const expected = Buffer.concat([bytes.subarray(0, open), bytes.subarray(ping + 9)]);
  END_OF_STATE.copy(expected, marker.offset - 14);
  t.true((await readFile(join(dir, 'out.mig'))).equals(expected));
  const d = (await inspectFile(join(dir, 'out.mig'))).vfio[0]!;
  t.is(d.dataBytes, 1000);
  t.is(d.markers.DEV_INIT_DATA_SENT ?? 0, 0);
});

test('HAND-BUILT multifd captures are refused at the VFIO FULL section (reframe) and by extract --out: the stop-copy data is not in the main channel; no output is left', async (t) => {
  const dir = await scratch(t);
  for (const [name, marker] of [['10.0 dummy END_OF_STATE', 'END_OF_STATE'], ['10.1 CONFIG_LOAD_READY', 'DEV_CONFIG_LOAD_READY']] as const) {
    const input = join(dir, 'in.mig');
    await buildFile(input, (w) => writeMultifdVfioMainChannel(w, 42, DEV, marker));
    const err = await t.throwsAsync(reframeStreamFile(input, join(dir, 'out.mig')), { instanceOf: StreamError }, name);
    t.like(err, { code: 'ESTREAM_UNSUPPORTED', idstr: DEV, sectionId: 42, found: marker }, name);
    t.regex(err!.message, /multifd/);
    t.deepEqual(await leftovers(dir), [], name);
    // extract --out refuses it too, and takes back the device file it had started (and its directory).
    const outDir = join(dir, 'extract');
    await t.throwsAsync(extractStreamFile(input, { outDir }), { code: 'ESTREAM_UNSUPPORTED', message: /multifd channels/ }, name);
    // The directory did not exist before: extract created it, and removes it again on failure.
    t.false(existsSync(outDir), `${name}: nothing left, not even the extract directory`);
  }
});

test('HAND-BUILT refusals: a postcopy command and an unknown command name their offset; mapped-ram refuses a change that would move its offsets', async (t) => {
  const dir = await scratch(t);
  const input = join(dir, 'in.mig');
  const bytes = await buildFile(input, async (w) => {
    await w.header();
    await w.configuration('pc-q35-10.0');
    await w.command(VmCommand.POSTCOPY_ADVISE, Buffer.alloc(16));
    await w.command(VmCommand.POSTCOPY_LISTEN);
    await w.eof();
  });
  const listenAt = bytes.indexOf(Buffer.from('0800040000', 'hex'));
  await t.throwsAsync(reframeStreamFile(input, join(dir, 'out.mig')), { instanceOf: StreamError, code: 'ESTREAM_UNSUPPORTED', message: new RegExp(`POSTCOPY_LISTEN.*at offset ${listenAt} `) });
  t.deepEqual(await leftovers(dir), []);

  await buildFile(input, async (w) => {
    await w.header();
    await w.configuration('pc-q35-10.0');
    await w.command(0x55 as VmCommand);
    await w.eof();
  });
  // The decoder already refuses a command number QEMU does not define.
  await t.throwsAsync(reframeStreamFile(input, join(dir, 'out.mig')), { code: 'ESTREAM_FORMAT', message: /unknown QEMU_VM_COMMAND.*found 85 at offset 25 / });

  await buildFile(input, async (w) => {
    await w.header();
    // An older machine type, so that the targets below refuse for mapped-ram alone.
    await w.configuration('pc-q35-8.2', { capabilities: ['mapped-ram'] });
    await w.switchoverStart();
    await w.eof();
  });
  await t.throwsAsync(reframeStreamFile(input, join(dir, 'out.mig'), { target: parseQemuRelease('8.2')! }), { code: 'ESTREAM_UNSUPPORTED', message: /mapped-ram is new in QEMU 9.0/ });
  await t.throwsAsync(reframeStreamFile(input, join(dir, 'out.mig'), { target: parseQemuRelease('9.2')! }), { code: 'ESTREAM_UNSUPPORTED', message: /mapped-ram records page offsets/ });
  t.deepEqual((await reframeStreamFile(input, join(dir, 'out.mig'))).changes, [], 'no change needed: passes');
});

test('CLI: a truncated stream fails with the offset and leaves no output; usage errors exit 2', async (t) => {
  const dir = await scratch(t);
  const original = await readFile(ONE_MTTY);
  const cut = join(dir, 'cut.mig');
  await writeFile(cut, original.subarray(0, 200_000));
  const r = await cli(['reframe', cut, join(dir, 'out.mig'), '--to', '9.2', '--force', '--output=json']);
  t.is(r.code, 1);
  const err = (JSON.parse(r.stderr) as { error: { code: string; offset: number } }).error;
  t.is(err.code, 'ESTREAM_TRUNCATED');
  t.true(err.offset > 0 && err.offset <= 200_000, JSON.stringify(err));
  t.deepEqual(await leftovers(dir), []);
  t.is((await cli(['reframe', ONE_MTTY, join(dir, 'out.mig'), '--to', '6.2'])).code, 2);
  t.is((await cli(['reframe', ONE_MTTY])).code, 2);
  const refused = await cli(['reframe', ONE_MTTY, join(dir, 'out.mig'), '--to', '9.2', '--output=json']);
  t.is(refused.code, 1);
  t.like(JSON.parse(refused.stderr).error, { code: 'ESTREAM_UNSUPPORTED', found: 'pc-i440fx-10.0', path: ONE_MTTY });
  t.deepEqual(await leftovers(dir), []);
  t.is((await cli(['reframe', ONE_MTTY, join(dir, 'out.mig'), '--force'])).code, 2, '--force without --to');
  const ok = await cli(['reframe', ONE_MTTY, join(dir, 'out.mig'), '--to', '9.2', '--force']);
  t.is(ok.code, 0, ok.stderr);
  t.regex(ok.stdout, /SWITCHOVER_START dropped/);
  t.regex(ok.stderr, /warning: machine type pc-i440fx-10.0 is new in QEMU 10.0; QEMU 9.2 has no such machine/);
});

// --- merging multifd channel captures (real QEMU 10.0.2 channels, test/fixtures/qemu10-multifd) ---

const MULTIFD = join(ROOT, 'test/fixtures/qemu10-multifd');
const MAIN = join(MULTIFD, 'main.mig');
const CHANNELS = [join(MULTIFD, 'channel-0.bin'), join(MULTIFD, 'channel-1.bin')];

test('real multifd capture: the main channel alone is refused at its first MULTIFD_FLUSH; merged with both channels, every page QEMU counted is in the RAM section', async (t) => {
  const dir = await scratch(t);
  const err = await t.throwsAsync(reframeStreamFile(MAIN, join(dir, 'out.mig')), { instanceOf: StreamError, code: 'ESTREAM_UNSUPPORTED' });
  t.like(err, { idstr: 'ram' });
  t.deepEqual(await leftovers(dir), []);

  const r = await reframeStreamFile(MAIN, join(dir, 'out.mig'), { multifd: CHANNELS });
  t.deepEqual(r.multifd.map((c) => c.channelId), [0, 1]);
  const before = await inspectFile(MAIN);
  const after = await inspectFile(join(dir, 'out.mig'));
  // QEMU's own count for this migration (fixture README): normal 51, duplicate 8271.
  t.is(after.ram!.pages.PAGE, 51);
  t.is(after.ram!.pages.ZERO, 8271);
  t.is(before.ram!.pages.PAGE, 0);
  // Every record of the main channel is still there, in order, with the pages in place of
  // the MULTIFD_FLUSH records (each one a change).
  const kinds = (x: typeof before) => x.records.map((rec) => `${rec.kind} ${rec.idstr ?? rec.command ?? ''}`);
  t.deepEqual(kinds(after), kinds(before));
  t.is(after.ram!.records.MULTIFD_FLUSH ?? 0, 0);
  t.is(r.changes.filter((c) => c.what === 'ram MULTIFD_FLUSH' && c.action === 'replaced').length, before.ram!.records.MULTIFD_FLUSH);
  // And the merged stream is an ordinary one: extract takes it.
  const images = await extractStreamFile(join(dir, 'out.mig'), { ramDir: join(dir, 'ram') });
  t.is(images.ram.reduce((n, img) => n + img.pagesWritten, 0), 51, 'the 51 data pages (zero pages of a fresh image are holes)');
});

test('multifd captures that do not add up are refused: a channel missing, a channel given twice, one from another migration', async (t) => {
  const dir = await scratch(t);
  await t.throwsAsync(reframeStreamFile(MAIN, join(dir, 'out.mig'), { multifd: [CHANNELS[1]!] }), { code: 'ESTREAM_FORMAT', message: /channel 0 is missing/ });
  await t.throwsAsync(reframeStreamFile(MAIN, join(dir, 'out.mig'), { multifd: [CHANNELS[0]!] }), { code: 'ESTREAM_FORMAT', message: /packet_num \d+ is on none of the 1 channel/ });
  await t.throwsAsync(reframeStreamFile(MAIN, join(dir, 'out.mig'), { multifd: [CHANNELS[0]!, CHANNELS[0]!] }), { code: 'ESTREAM_FORMAT', message: /channel id 0 given twice/ });
  const cut = join(dir, 'cut.bin');
  const ch1 = await readFile(CHANNELS[1]!);
  await writeFile(cut, ch1.subarray(0, ch1.length - 100));
  await t.throwsAsync(reframeStreamFile(MAIN, join(dir, 'out.mig'), { multifd: [CHANNELS[0]!, cut] }), { code: 'ESTREAM_TRUNCATED' });
  const other = join(dir, 'other.bin');
  const forged = Buffer.from(ch1);
  forged[8] = forged[8]! ^ 0xff; // the init packet's UUID
  await writeFile(other, forged);
  await t.throwsAsync(reframeStreamFile(MAIN, join(dir, 'out.mig'), { multifd: [CHANNELS[0]!, other] }), { code: 'ESTREAM_FORMAT', message: /comes from another QEMU/ });
  t.deepEqual(await leftovers(dir), []);
});

test('HAND-BUILT multifd VFIO device state: the stop-copy packets become DATA_STATE records of the END section, the config packet the FULL body, the vmdesc size follows; nothing else changes', async (t) => {
  const dir = await scratch(t);
  const a = Buffer.alloc(1000, 0xa1);
  const b = Buffer.alloc(500, 0xb2);
  const endMarker = Buffer.from('ffffffffef100001', 'hex');
  const configBody = Buffer.concat([Buffer.from('ffffffffef100002', 'hex'), CONFIG, endMarker]);
  const dummyDesc = { page_size: 4096, devices: [{ name: DEV, instance_id: 0, size: 8, fields: [{ name: 'data', type: 'buffer', size: 8 }] }] };
  const main = join(dir, 'main.mig');
  // The main channel of QEMU 10.0's multifd device-state transfer (§9.6): dummy END and FULL.
  await buildFile(main, async (w) => {
    await writeMultifdVfioMainChannel(w, 42, DEV);
    await w.vmdesc(dummyDesc);
  });
  // One channel; packets out of idx order (channels do not keep it).
  const channel = join(dir, 'main.mig.multifd-0');
  await writeFile(channel, Buffer.concat([multifdInit(0, 0x11), vfioStatePacket(DEV, 1, 0, b), vfioStatePacket(DEV, 0, 0, a), vfioStatePacket(DEV, 2, 1, configBody)]));

  const out = join(dir, 'out.mig');
  const r = await cli(['reframe', main, out, '--output=json']);
  t.is(r.code, 0, r.stderr);
  const report = JSON.parse(r.stdout) as { changes: { what: string; action: string; idstr?: string }[]; multifd: { channelId: number }[] };
  t.deepEqual(report.multifd.map((c) => c.channelId), [0], 'the channel tee beside the main one was found');
  t.deepEqual(report.changes.map((c) => [c.action, c.what, c.idstr]), [
    ['inserted', 'vfio stop-copy data from multifd: 1500 bytes in 2 packets', DEV],
    ['replaced', 'vfio END_OF_STATE (multifd dummy)', DEV],
    ['replaced', 'vmdesc', undefined],
  ]);
  // The expected stream, written the way QEMU writes it without multifd.
  const expected = await buildFile(join(dir, 'expected.mig'), async (w) => {
    await w.header();
    await w.configuration('pc-q35-10.0');
    await w.vfioStartSection(42, DEV);
    await w.switchoverStart();
    await w.sectionEnd(42);
    await w.vfioData(a);
    await w.vfioData(b);
    await w.vfioMarker('END_OF_STATE');
    await w.endSection();
    await w.vfioConfigSection(42, DEV, CONFIG);
    await w.eof();
    await w.vmdesc({ ...dummyDesc, devices: [{ ...dummyDesc.devices[0]!, size: configBody.length, fields: [{ name: 'data', type: 'buffer', size: configBody.length }] }] });
  });
  t.true((await readFile(out)).equals(expected));
  const d = (await inspectFile(out)).vfio[0]!;
  t.like(d, { dataBytes: 1500, configBytes: CONFIG.length, flavour: 'qemu-10.0+ v2' }, 'no longer the multifd flavour');

  // The config packet must be the last idx and carry DEV_CONFIG_STATE .. END_OF_STATE.
  await writeFile(channel, Buffer.concat([multifdInit(0, 0x11), vfioStatePacket(DEV, 0, 0, a), vfioStatePacket(DEV, 1, 1, Buffer.alloc(40))]));
  const bad = await cli(['reframe', main, out, '--output=json']);
  t.is(bad.code, 1);
  t.regex(bad.stderr, /ESTREAM_FORMAT.*config packet.*not DEV_CONFIG_STATE/);
  await writeFile(channel, Buffer.concat([multifdInit(0, 0x11), vfioStatePacket(DEV, 0, 0, a), vfioStatePacket(DEV, 2, 1, configBody)]));
  t.regex((await cli(['reframe', main, out, '--output=json'])).stderr, /packet idx 1 missing/);
});
