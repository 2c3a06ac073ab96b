// save, inspect, restore and demo through the real CLI binary on simulated devices.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const bin = fileURLToPath(new URL('../../../bin/migbridge.js', import.meta.url));
const run = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 120_000 });
const dir = mkdtempSync(path.join(tmpdir(), 'migbridge-cli-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

test('demo --output=json: every device verified, stream file left for inspection', (t) => {
  const r = run('demo', '--devices', '3', '--size', '4MiB', '--dir', dir, '--output=json');
  t.is(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  t.is(j.devices.length, 3);
  for (const d of j.devices) {
    t.true(d.verified, d.id);
    t.true(d.bytes > 4 * 2 ** 20);
    t.is(typeof d.id, 'string');
  }
  t.is(j.totalBytes, j.devices.reduce((s: number, d: { bytes: number }) => s + d.bytes, 0));
  t.true(j.seconds > 0);
  t.true(existsSync(j.stream));
  t.is(j.inspect.vfioSections, 3);
});

test('save -o, inspect and restore -i through the CLI, sections matched by --map', (t) => {
  const file = path.join(dir, 'cli.mig');
  const s = run('save', '--device', 'sim:id=a,seed=11,size=3MiB', '--device', 'sim:id=b,seed=12,size=1MiB', '-o', file, '--precopy', '--output=json');
  t.is(s.status, 0, s.stderr);
  const saved = JSON.parse(s.stdout);
  t.deepEqual(saved.devices.map((d: { idstr: string }) => d.idstr), ['0000:00:04.0/vfio', '0000:00:05.0/vfio']);
  t.is(saved.stream, file);
  const i = run('inspect', file, '--output=json');
  t.is(i.status, 0, i.stderr);
  const inspected = JSON.parse(i.stdout);
  t.deepEqual(inspected.vfio.map((v: { idstr: string }) => v.idstr), ['0000:00:04.0/vfio', '0000:00:05.0/vfio']);
  t.is(inspected.vfio[0].dataBytes, saved.devices[0].bytes);
  // Swap: the 1 MiB section goes to the device listed first.
  const r = run('restore', '-i', file, '--device', 'sim:id=x,size=1MiB', '--device', 'sim:id=y,size=3MiB', '--map', '0000:00:05.0/vfio=sim:id=x,size=1MiB', '--output=json');
  t.is(r.status, 0, r.stderr);
  const restored = JSON.parse(r.stdout);
  t.deepEqual(
    restored.devices.map((d: { id: string; idstr: string; verified: boolean }) => [d.id, d.idstr, d.verified]),
    [
      ['x', '0000:00:05.0/vfio', true],
      ['y', '0000:00:04.0/vfio', true],
    ],
  );
});

test('a failing source device: exit 1, JSON error naming it, no output file', (t) => {
  const file = path.join(dir, 'fail.mig');
  const r = run('save', '--device', 'sim:id=good,size=1MiB', '--device', 'sim:id=bad,size=2MiB,fail=eio@1MiB', '-o', file, '--output=json');
  t.is(r.status, 1);
  const err = JSON.parse(r.stderr).error;
  t.is(err.device, 'bad');
  t.is(err.errno, 5);
  t.false(existsSync(file));
});

test('usage errors exit 2', (t) => {
  t.is(run('save', '-o', path.join(dir, 'x.mig')).status, 2);
  t.is(run('save', '--device', 'sim', '-o', 'a', '--to', 'unix:/tmp/x').status, 2);
  t.is(run('restore', '--device', 'sim').status, 2);
  t.is(run('demo', '--devices', '0').status, 2);
  t.is(run('save', '--device', 'sim:bogus=1', '-o', path.join(dir, 'y.mig')).status, 2);
});

test('the library example runs and restores both devices', (t) => {
  const example = fileURLToPath(new URL('../../examples/save-restore.js', import.meta.url));
  const r = spawnSync(process.execPath, [example, path.join(dir, 'example.mig')], { encoding: 'utf8', timeout: 120_000 });
  t.is(r.status, 0, r.stderr);
  t.is(r.stdout.match(/state matches/g)?.length, 2, r.stdout);
});

test('save --to unix:PATH streams into restore --from unix:PATH (QEMU-style migrate/incoming pair)', async (t) => {
  const sock = path.join(dir, 'mig.sock');
  const { spawn } = await import('node:child_process');
  const receiver = spawn(process.execPath, [bin, 'restore', '--from', `unix:${sock}`, '--device', 'sim:id=r0,size=2MiB', '--device', 'sim:id=r1,size=1MiB', '--output=json'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  receiver.stdout.on('data', (d) => (out += d));
  receiver.stderr.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((resolve) => receiver.on('exit', resolve));
  for (let i = 0; i < 100 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
  t.true(existsSync(sock), 'restore listens on the socket');
  const s = run('save', '--device', 'sim:id=s0,seed=5,size=2MiB', '--device', 'sim:id=s1,seed=6,size=1MiB', '--to', `unix:${sock}`, '--output=json');
  t.is(s.status, 0, s.stderr);
  t.is(await exited, 0, err);
  const restored = JSON.parse(out);
  t.deepEqual(restored.devices.map((d: { verified: boolean }) => d.verified), [true, true]);
});

test('save --fd N writes to a descriptor handed in; restore --fd N reads one', async (t) => {
  const { openSync, closeSync } = await import('node:fs');
  const file = path.join(dir, 'fd.mig');
  const wfd = openSync(file, 'w');
  const s = spawnSync(process.execPath, [bin, 'save', '--device', 'sim:seed=8,size=1MiB', '--fd', '3', '--output=json'], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe', wfd],
  });
  closeSync(wfd);
  t.is(s.status, 0, s.stderr);
  const rfd = openSync(file, 'r');
  const r = spawnSync(process.execPath, [bin, 'restore', '--fd', '3', '--device', 'sim:size=1MiB', '--output=json'], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe', rfd],
  });
  closeSync(rfd);
  t.is(r.status, 0, r.stderr);
  t.true(JSON.parse(r.stdout).devices[0].verified);
});

test('save --framing: qemu writes one END section with the data per device, interleave PART sections; both restore verified', (t) => {
  const kinds: Record<string, string[]> = {};
  for (const framing of ['qemu', 'interleave']) {
    const file = path.join(dir, `framing-${framing}.mig`);
    const s = run('save', '--device', 'sim:id=a,seed=21,size=3MiB', '--device', 'sim:id=b,seed=22,size=3MiB', '-o', file, '--framing', framing, '--output=json');
    t.is(s.status, 0, s.stderr);
    const i = JSON.parse(run('inspect', file, '--output=json').stdout) as { records: { kind: string; sectionId: number | null }[] };
    kinds[framing] = i.records.filter((r) => r.sectionId === 1).map((r) => r.kind);
    const r = run('restore', '-i', file, '--device', 'sim:id=x,size=3MiB', '--device', 'sim:id=y,size=3MiB', '--output=json');
    t.is(r.status, 0, r.stderr);
    t.deepEqual(JSON.parse(r.stdout).devices.map((d: { verified: boolean }) => d.verified), [true, true]);
  }
  t.deepEqual(kinds.qemu, ['START', 'END']);
  t.true(kinds.interleave!.filter((k) => k === 'PART').length >= 2, kinds.interleave!.join(','));
  t.is(kinds.interleave!.at(-1), 'END');
  t.is(run('save', '--device', 'sim', '-o', path.join(dir, 'z.mig'), '--framing', 'bogus').status, 2);
});
