// Honest reports through the real CLI: the vmdesc dump, the config blob wording, in-place
// reframe sizes, --max-downtime without a measured rate, what the demo leaves behind.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { configText } from '../../src/cli/commands/inspect.js';

const bin = fileURLToPath(new URL('../../../bin/migbridge.js', import.meta.url));
const fixture = fileURLToPath(new URL('../../../test/fixtures/qemu10-vfio/one-mtty.mig', import.meta.url));
const run = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 120_000 });
const dir = mkdtempSync(path.join(tmpdir(), 'migbridge-reports-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

test('inspect --dump desc prints the JSON of the stream\'s VMDESCRIPTION record', (t) => {
  const bytes = readFileSync(fixture);
  const { vmdesc } = JSON.parse(run('inspect', fixture, '--output=json').stdout);
  // The record: type byte, be32 length, JSON (read here straight from the file).
  t.is(bytes[vmdesc.offset], 0x06);
  const json = JSON.parse(bytes.subarray(vmdesc.offset + 5, vmdesc.offset + 5 + vmdesc.bytes).toString('utf8'));
  const human = run('inspect', fixture, '--dump', 'desc');
  t.is(human.status, 0, human.stderr);
  t.deepEqual(JSON.parse(human.stdout), json);
  t.deepEqual(JSON.parse(run('inspect', fixture, '--dump', 'desc', '--output=json').stdout), json);
  // A saved stream (no FULL section, so it decodes without one) cut right after EOF.
  const saved = path.join(dir, 'saved.mig');
  t.is(run('save', '--device', 'sim:size=1MiB', '-o', saved).status, 0);
  const savedInfo = JSON.parse(run('inspect', saved, '--output=json').stdout);
  const cut = path.join(dir, 'no-vmdesc.mig');
  writeFileSync(cut, readFileSync(saved).subarray(0, savedInfo.vmdesc.offset));
  const none = run('inspect', cut, '--dump', 'desc', '--output=json');
  t.is(none.status, 1);
  t.like(JSON.parse(none.stderr).error, { code: 'ENOVMDESC', path: cut });
});

test('a seekable file cut before its vmdesc trailer is named truncated, with the report of what decoded before', (t) => {
  const bytes = readFileSync(fixture);
  const whole = JSON.parse(run('inspect', fixture, '--output=json').stdout);
  const cut = path.join(dir, 'cut-before-vmdesc.mig');
  writeFileSync(cut, bytes.subarray(0, whole.vmdesc.offset));
  const r = run('inspect', cut, '--output=json');
  t.is(r.status, 1);
  const err = JSON.parse(r.stderr).error;
  t.like(err, { code: 'ESTREAM_TRUNCATED', path: cut });
  t.regex(err.message, /ends without the vmdesc trailer QEMU writes last, so it looks truncated/);
  // The first FULL section (QEMU writes them after the iterable devices' END sections).
  const firstFull = whole.records.find((x: { kind: string }) => x.kind === 'FULL');
  t.is(err.offset, firstFull.offset);
  const partial = JSON.parse(r.stdout);
  t.false(partial.complete);
  t.deepEqual(partial.records.map((x: { offset: number }) => x.offset), whole.records.filter((x: { offset: number }) => x.offset <= err.offset).map((x: { offset: number }) => x.offset));
  t.is(partial.vfio[0].dataBytes, whole.vfio[0].dataBytes, 'the VFIO data (END section) decoded before the cut');
  const human = run('inspect', cut);
  t.regex(human.stdout, new RegExp(`incomplete: decoded up to offset ${err.offset}, then:`));
  t.regex(human.stderr, /looks truncated/);
});

test('inspect says "no config blob" for a device without one, never "config none bytes"', (t) => {
  t.is(configText(null), 'no config blob');
  t.is(configText(4116), 'config 4116 bytes');
  const r = run('inspect', fixture);
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /config 4116 bytes/);
  t.notRegex(r.stdout, /none bytes/);
});

test('in-place reframe reports the size of the input it read, not of its output', (t) => {
  const f = path.join(dir, 'in-place.mig');
  copyFileSync(fixture, f);
  const before = statSync(f).size;
  const r = run('reframe', f, f, '--to', '9.2', '--force', '--output=json');
  t.is(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  t.is(j.bytesIn, before);
  t.is(j.bytesOut, before - 5, 'SWITCHOVER_START dropped');
  t.is(statSync(f).size, before - 5);
});

test('--max-downtime without --precopy is refused (no measured rate); with --precopy it runs', (t) => {
  const out = path.join(dir, 'downtime.mig');
  const r = run('save', '--device', 'sim:size=64MiB,rate=16MiB/s', '-o', out, '--max-downtime', '100');
  t.is(r.status, 2);
  t.regex(r.stderr, /--max-downtime needs --precopy: the downtime estimate needs a transfer rate measured in PRE_COPY/);
  t.false(existsSync(out));
  const ok = run('save', '--device', 'sim:size=1MiB,precopy=512KiB', '-o', out, '--precopy', '--max-downtime', '100000', '--output=json');
  t.is(ok.status, 0, ok.stderr);
  t.regex(JSON.parse(ok.stdout).downtime.rateBasis, /measured|assumed/);
});

test('the demo says which files it leaves behind', (t) => {
  const own = run('demo', '--devices', '1', '--size', '1MiB', '--dir', dir);
  t.is(own.status, 0, own.stderr);
  const stream = path.join(dir, 'demo.mig');
  t.true(own.stdout.includes(`left behind: ${stream} (`), own.stdout);
  t.regex(own.stdout, /delete it when done/);
  t.true(existsSync(stream));
});

test('a sim restore says what "verified" checked, and a device given another seed than the source is not called verified', (t) => {
  const file = path.join(dir, 'seed11.mig');
  t.is(run('save', '--device', 'sim:seed=11,size=1MiB', '-o', file).status, 0);
  const same = run('restore', '-i', file, '--device', 'sim:seed=11,size=1MiB');
  t.is(same.status, 0, same.stderr);
  t.regex(same.stdout, /ok, verified against the state digest the stream carries, of a sim source with seed=0xb/);
  t.regex(same.stdout, /\(verified: the restored state matches the digest its source wrote into the stream, so it arrived intact/);
  const unseeded = JSON.parse(run('restore', '-i', file, '--device', 'sim:size=1MiB', '--output=json').stdout);
  t.like(unseeded.devices[0], { verified: true });
  t.is(unseeded.devices[0].sourceMismatch, undefined);
  const wrong = run('restore', '-i', file, '--device', 'sim:seed=99,size=1MiB');
  t.is(wrong.status, 1);
  t.notRegex(wrong.stdout, /ok, verified/);
  t.regex(wrong.stdout, /NOT the expected state: the stream holds the state of a seed=0xb source, this device was given seed=0x63/);
  const json = run('restore', '-i', file, '--device', 'sim:seed=99,size=1MiB', '--output=json');
  t.is(json.status, 1);
  t.like(JSON.parse(json.stderr).error, { code: 'ESOURCEMISMATCH', device: 'sim0' });
});

test('extract: manifest.json names its files relative to itself; a failed extract leaves no directory it made', (t) => {
  // Run from another directory with a relative --out: the manifest must not depend on the cwd.
  const r = spawnSync(process.execPath, [bin, 'extract', fixture, '--out', 'vfio-out'], { cwd: dir, encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  const outDir = path.join(dir, 'vfio-out');
  const manifest = JSON.parse(readFileSync(path.join(outDir, 'manifest.json'), 'utf8'));
  t.is(manifest.stream, path.relative(outDir, fixture));
  const d = manifest.devices[0];
  t.is(d.dataFile, '0000:00:04.0%2Fvfio.data');
  t.is(d.configFile, '0000:00:04.0%2Fvfio.config');
  t.is(readFileSync(path.join(outDir, d.dataFile)).length, d.dataBytes);
  t.is(readFileSync(path.join(outDir, d.configFile)).length, d.configBytes);

  const cut = path.join(dir, 'cut-for-extract.mig');
  writeFileSync(cut, readFileSync(fixture).subarray(0, 200_000));
  // extract creates a missing output directory (one level) and removes it again on failure.
  const ramDir = path.join(dir, 'new-ram');
  const bad = run('extract', cut, '--ram', ramDir);
  t.is(bad.status, 1);
  t.regex(bad.stderr, /stream ends inside/);
  t.false(existsSync(ramDir), 'no directory left behind');
});
