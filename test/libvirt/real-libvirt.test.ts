// libvirt save images from real libvirt (11.3 from bookworm-backports, QEMU 10): a private
// libvirtd + virtlogd (test/helpers/libvirt.ts) saves the tiny TCG test guest with
// `virsh save` in every format, sparse (mapped-ram, 2 channels) included; migbridge reads
// each image and its RAM image equals QEMU's own pmemsave of the same paused domain; images
// migbridge converted (sparse <-> raw, raw -> zstd with new XML, gzip -> raw with new XML)
// restore with `virsh restore` and the guest goes on from the saved counter. Needs root; fails (never
// skips) when libvirt is missing. Run under `flock /tmp/migbridge-heavy.lock`.
import test, { type ExecutionContext } from 'ava';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { cli } from '../qemu/codec-helpers.js';
import { PrivateLibvirt } from '../helpers/libvirt.js';
import { waitFor } from '../helpers/cli-run.js';
import { COUNTER_GPA } from '../helpers/qemu-guest.js';
import type { InspectReport } from '../../src/qemu/summary.js';

const RAM_MIB = 64;
let lv: PrivateLibvirt | undefined;

test.before(async () => {
  lv = await PrivateLibvirt.start();
});
test.after.always(async () => {
  await lv?.stop();
});

function libvirt(): PrivateLibvirt {
  if (!lv) throw new Error('the private libvirt did not start');
  return lv;
}

interface Saved { name: string; uuid: string; file: string; ram: Buffer }

/** Starts a guest, pauses it, dumps its RAM (pmemsave) and `virsh save`s it in `format`. */
async function saveGuest(format: string, extra: string[] = []): Promise<Saved> {
  const l = libvirt();
  const { name } = await l.createGuest(RAM_MIB);
  const uuid = (await l.virsh('domuuid', name)).trim();
  const ram = await l.pauseAndDumpRam(name, RAM_MIB);
  const file = join(l.dir, `${name}.${format}.sav`);
  await l.virsh('save', name, file, '--image-format', format, ...extra);
  return { name, uuid, file, ram };
}

async function extractedRam(t: { teardown(fn: () => void): void }, file: string): Promise<Buffer> {
  const dir = join(libvirt().dir, `ram-${Date.now()}-${Math.random().toString(16).slice(2)}`);
  const r = await cli(['extract', file, '--ram', dir]);
  if (r.code !== 0) throw new Error(`extract ${file} failed: ${r.stderr}`);
  return readFile(join(dir, 'pc.ram'));
}

for (const format of ['raw', 'gzip', 'bzip2', 'xz', 'lzop', 'zstd'] as const) {
  test.serial(`virsh save --image-format ${format}: inspect shows libvirt's header and domain; extract --ram equals pmemsave of the paused domain`, async (t) => {
    const s = await saveGuest(format);
    const head = await readFile(s.file);
    t.is(head.toString('latin1', 0, 16), 'LibvirtQemudSave');
    const r = await cli(['inspect', s.file, '--output=json']);
    t.is(r.code, 0, r.stderr);
    const rep = JSON.parse(r.stdout) as InspectReport;
    t.like(rep.libvirt, { version: 2, format, formatNumber: head.readUInt32LE(28), wasRunning: false, dataLen: head.readUInt32LE(20), domain: { name: s.name, uuid: s.uuid, domainType: 'qemu' } });
    t.regex(rep.libvirt!.domain.machine ?? '', /^pc-i440fx-/);
    t.is(rep.configuration?.machineType, rep.libvirt!.domain.machine ?? undefined);
    t.true(rep.libvirt!.cookieBytes > 0, 'libvirt 11 writes a save cookie');
    const ram = await extractedRam(t, s.file);
    t.is(ram.length, RAM_MIB << 20);
    t.true(ram.equals(s.ram), 'RAM image from the libvirt image equals QEMU pmemsave of the same paused guest');
    t.not(ram.readUInt32LE(COUNTER_GPA), 0, 'the guest ran (its counter is in the image)');
  });
}

test.serial('rewrite --xml of a gzip image gives a raw libvirt image that virsh restore loads with the new XML; the guest resumes from the saved counter', async (t) => {
  const l = libvirt();
  const s = await saveGuest('gzip');
  const out = join(l.dir, `${s.name}.rewritten.sav`);
  // The XML libvirt itself offers for editing, with a description added.
  const xml = (await l.virsh('save-image-dumpxml', s.file)).replace(/<\/name>/, '</name>\n  <description>rewritten by migbridge</description>');
  const xmlFile = join(l.dir, `${s.name}.new.xml`);
  await writeFile(xmlFile, xml);
  const r = await cli(['rewrite', s.file, out, '--xml', xmlFile]);
  t.is(r.code, 0, r.stderr);
  t.regex(await l.virsh('save-image-dumpxml', out), /<description>rewritten by migbridge<\/description>/);
  const insp = JSON.parse((await cli(['inspect', out, '--output=json'])).stdout) as InspectReport;
  t.like(insp.libvirt, { format: 'raw', domain: { name: s.name, uuid: s.uuid } });
  await l.virsh('restore', out, '--paused');
  t.regex(await l.virsh('domstate', s.name), /paused/);
  const saved = s.ram.readUInt32LE(COUNTER_GPA);
  t.is(await l.counter(s.name), saved, 'restored memory holds the counter as saved');
  await l.virsh('resume', s.name);
  await waitFor('the restored guest counting on', async () => (await l.counter(s.name)) !== saved, 60_000);
  t.regex(await l.virsh('domstate', s.name), /running/);
  t.regex(await l.virsh('dumpxml', s.name), /<description>rewritten by migbridge<\/description>/);
});

test.serial('rewrite of a raw image from virsh save is byte-identical', async (t) => {
  const s = await saveGuest('raw');
  const out = `${s.file}.rewritten`;
  const r = await cli(['rewrite', s.file, out]);
  t.is(r.code, 0, r.stderr);
  t.true((await readFile(out)).equals(await readFile(s.file)));
});

test.serial('a corrupted header or a truncated image from virsh save is refused with the offset; nothing is written', async (t) => {
  const l = libvirt();
  const s = await saveGuest('raw');
  const img = await readFile(s.file);
  const dir = join(l.dir, 'bad');
  await mkdir(dir);
  const badFormat = Buffer.from(img);
  badFormat.writeUInt32LE(99, 28);
  await writeFile(join(dir, 'format.sav'), badFormat);
  const r1 = await cli(['rewrite', join(dir, 'format.sav'), join(dir, 'out1.sav')]);
  t.is(r1.code, 1);
  t.regex(r1.stderr, /unknown libvirt save image format 99 at offset 28/);
  await writeFile(join(dir, 'cut.sav'), img.subarray(0, img.length - 100_000));
  const r2 = await cli(['extract', join(dir, 'cut.sav'), '--ram', join(dir, 'ram')]);
  t.is(r2.code, 1);
  t.regex(r2.stderr, /at offset \d+ .*QEMU stream starts at file offset \d+ of this libvirt raw image/);
  t.notRegex(r1.stderr + r2.stderr, /\n\s+at /, 'no stack trace');
  // extract creates --ram DIR before decoding (src/qemu/extract.ts); no file may be left in it.
  t.deepEqual((await readdir(dir)).filter((f) => f !== 'ram').sort(), ['cut.sav', 'format.sav']);
  t.deepEqual(await readdir(join(dir, 'ram')).catch(() => []), []);
});

/** Every RAM block image extract writes from `file`, by file name. */
async function extractedBlocks(file: string): Promise<Map<string, Buffer>> {
  const dir = join(libvirt().dir, `ram-${Date.now()}-${Math.random().toString(16).slice(2)}`);
  const r = await cli(['extract', file, '--ram', dir]);
  if (r.code !== 0) throw new Error(`extract ${file} failed: ${r.stderr}`);
  const out = new Map<string, Buffer>();
  for (const f of (await readdir(dir)).sort()) out.set(f, await readFile(join(dir, f)));
  return out;
}

/** `virsh restore --paused` of `file`; the restored memory holds the counter saved in `s`; resumed, the guest counts on. */
async function restoresAndRuns(t: ExecutionContext, file: string, s: Saved, extra: string[] = []): Promise<void> {
  const l = libvirt();
  await l.virsh('restore', file, '--paused', ...extra);
  t.regex(await l.virsh('domstate', s.name), /paused/);
  const saved = s.ram.readUInt32LE(COUNTER_GPA);
  t.is(await l.counter(s.name), saved, `${file}: restored memory holds the counter as saved`);
  await l.virsh('resume', s.name);
  await waitFor('the restored guest counting on', async () => (await l.counter(s.name)) !== saved, 60_000);
  t.regex(await l.virsh('domstate', s.name), /running/);
}

function reframe(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return cli(['reframe', ...args]);
}

test.serial('virsh save --image-format sparse (mapped-ram, 2 channels): extract --ram equals pmemsave, and every block equals a raw virsh save of the same paused domain', async (t) => {
  const l = libvirt();
  const s = await saveGuest('sparse', ['--parallel-channels', '2']);
  const head = await readFile(s.file);
  t.is(head.readUInt32LE(28), 6, 'libvirt format sparse');
  const rep = JSON.parse((await cli(['inspect', s.file, '--output=json'])).stdout) as InspectReport;
  t.like(rep.libvirt, { format: 'sparse', domain: { name: s.name } });
  t.deepEqual(rep.configuration?.capabilities, ['mapped-ram']);
  const fromSparse = await extractedBlocks(s.file);
  t.true(fromSparse.get('pc.ram')!.equals(s.ram), 'RAM image from the sparse image equals pmemsave');
  // The same paused guest saved again without mapped-ram: every block image is the same.
  await l.virsh('restore', s.file, '--paused', '--parallel-channels', '2');
  const raw = join(l.dir, `${s.name}.again.raw.sav`);
  await l.virsh('save', s.name, raw, '--image-format', 'raw');
  const fromRaw = await extractedBlocks(raw);
  t.deepEqual([...fromSparse.keys()], [...fromRaw.keys()]);
  for (const [name, img] of fromRaw) t.true(fromSparse.get(name)!.equals(img), `block ${name}: sparse and raw saves give the same image`);
});

test.serial('reframe --format raw of a sparse virsh save restores with virsh restore and the guest runs', async (t) => {
  const s = await saveGuest('sparse', ['--parallel-channels', '2']);
  const out = join(libvirt().dir, `${s.name}.raw.sav`);
  const r = await reframe(s.file, out, '--format', 'raw');
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /capability mapped-ram dropped/);
  t.is((await readFile(out)).readUInt32LE(28), 0, 'libvirt format raw');
  t.true((await extractedBlocks(out)).get('pc.ram')!.equals(s.ram));
  await restoresAndRuns(t, out, s);
});

test.serial('reframe --format sparse of a raw virsh save restores with virsh restore (2 channels) and the guest runs', async (t) => {
  const s = await saveGuest('raw');
  const out = join(libvirt().dir, `${s.name}.sparse.sav`);
  const r = await reframe(s.file, out, '--format', 'sparse');
  t.is(r.code, 0, r.stderr);
  t.is((await readFile(out)).readUInt32LE(28), 6, 'libvirt format sparse');
  t.true((await extractedBlocks(out)).get('pc.ram')!.equals(s.ram));
  await restoresAndRuns(t, out, s, ['--parallel-channels', '2']);
});

test.serial('reframe --format zstd --xml of a raw virsh save: a compressed image with the new XML that virsh restore loads', async (t) => {
  const l = libvirt();
  const s = await saveGuest('raw');
  const xml = (await l.virsh('save-image-dumpxml', s.file)).replace(/<\/name>/, '</name>\n  <description>reframed by migbridge</description>');
  const xmlFile = join(l.dir, `${s.name}.new.xml`);
  await writeFile(xmlFile, xml);
  const out = join(l.dir, `${s.name}.zst.sav`);
  const r = await reframe(s.file, out, '--format', 'zstd', '--xml', xmlFile);
  t.is(r.code, 0, r.stderr);
  t.is((await readFile(out)).readUInt32LE(28), 5, 'libvirt format zstd');
  t.regex(await l.virsh('save-image-dumpxml', out), /<description>reframed by migbridge<\/description>/);
  await restoresAndRuns(t, out, s);
  t.regex(await l.virsh('dumpxml', s.name), /<description>reframed by migbridge<\/description>/);
});

test.serial('a truncated or corrupted sparse virsh save is refused with the offset; nothing is written', async (t) => {
  const l = libvirt();
  const s = await saveGuest('sparse', ['--parallel-channels', '2']);
  const img = await readFile(s.file);
  const dir = join(l.dir, 'bad-sparse');
  await mkdir(dir);
  // Cut inside pc.ram's page area (it starts at the first 1 MiB boundary after the header).
  await writeFile(join(dir, 'cut.sav'), img.subarray(0, 2 << 20));
  const r1 = await cli(['extract', join(dir, 'cut.sav'), '--ram', join(dir, 'ram')]);
  t.is(r1.code, 1);
  t.regex(r1.stderr, /truncated: stream ends inside the mapped-ram bitmap and pages of RAM block "pc.ram" .*at offset \d+ .*QEMU stream starts at file offset \d+ of this libvirt sparse image/);
  const bad = Buffer.from(img);
  const at = bad.indexOf(Buffer.from('\x06pc.ram', 'latin1')) + 7 + 8;
  bad.writeUInt32BE(7, at);
  await writeFile(join(dir, 'version.sav'), bad);
  const r2 = await reframe(join(dir, 'version.sav'), join(dir, 'out.sav'), '--format', 'raw');
  t.is(r2.code, 1);
  t.regex(r2.stderr, new RegExp(`mapped-ram header version of RAM block "pc.ram": expected <= 1: found 7 at offset ${at - (92 + img.readUInt32LE(20))} `));
  t.notRegex(r1.stderr + r2.stderr, /\n\s+at /, 'no stack trace');
  t.deepEqual((await readdir(dir)).filter((f) => f !== 'ram').sort(), ['cut.sav', 'version.sav']);
  t.deepEqual(await readdir(join(dir, 'ram')).catch(() => []), []);
});
