// What the CLI's devices, env and rewrite commands print comes from library functions the
// package exports: the same answers without the CLI.
import test from 'ava';
import { readFile } from 'node:fs/promises';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describeDevices, ioEnvironment, qemu } from '../../src/index.js';

const work = mkdtempSync(path.join(tmpdir(), 'migbridge-lib-'));
test.after.always(() => rmSync(work, { recursive: true, force: true }));
const fixture = fileURLToPath(new URL('../../../test/fixtures/qemu10-vfio/one-mtty.mig', import.meta.url));

test('describeDevices: the kind, state and stop-copy size; a device that cannot be opened is described by its error', async (t) => {
  const [ok, bad] = await describeDevices(['sim:id=lib0,size=2MiB', 'cdev:/dev/vfio/devices/no-such-device']);
  t.like(ok, { spec: 'sim:id=lib0,size=2MiB', id: 'lib0', kind: 'sim', state: 'RUNNING' });
  t.true(typeof ok!.stopCopyBytes === 'bigint' && ok!.stopCopyBytes >= 2n << 20n, String(ok!.stopCopyBytes));
  t.truthy(bad!.error?.code, JSON.stringify(bad));
});

test('ioEnvironment: the backend the io engine chose, with the facts behind it', async (t) => {
  const env = await ioEnvironment();
  t.true(env.io === 'io_uring' || env.io === 'threadpool');
  t.is(env.node, process.version);
  t.true(env.bufferCount > 0 && env.bufferSize > 0);
  t.is(env.forced, process.env.MIGBRIDGE_IO || null);
});

test('qemu.rewriteStreamFile: a real QEMU 10 stream comes back byte for byte', async (t) => {
  const out = path.join(work, 'rewritten.mig');
  const r = await qemu.rewriteStreamFile(fixture, out);
  const [a, b] = await Promise.all([readFile(fixture), readFile(out)]);
  t.true(a.equals(b));
  t.is(r.bytes, a.length);
  t.true(r.events > 10);
});
