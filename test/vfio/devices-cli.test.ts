// `migbridge devices` through the real CLI entry point.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import test from 'ava';
import { fullStreamBytes } from '../../src/vfio/sim/index.js';

const run = promisify(execFile);
const bin = fileURLToPath(new URL('../../../bin/migbridge.js', import.meta.url));

async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, [bin, ...args]);
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
}

test('devices --sim 8 lists eight simulated devices like real ones', async (t) => {
  const r = await cli('devices', '--sim', '8', '--sim-spec', 'sim:size=3MiB,flags=5', '--output=json');
  t.is(r.code, 0, r.stderr);
  const { devices } = JSON.parse(r.stdout) as { devices: { id: string; kind: string; flags: number; state: string; stopCopyBytes: number }[] };
  t.is(devices.length, 8);
  t.is(new Set(devices.map((d) => d.id)).size, 8);
  for (const d of devices) {
    t.is(d.kind, 'sim');
    t.is(d.flags, 5);
    t.is(d.state, 'RUNNING');
    t.is(d.stopCopyBytes, fullStreamBytes(3 * 1024 * 1024));
  }
  const h = await cli('devices', '--sim', '2');
  t.is(h.code, 0);
  t.regex(h.stdout, /^ID +KIND +FLAGS +STATE +STOP-COPY BYTES\n/);
  t.regex(h.stdout, /stop-copy,p2p,pre-copy \(0x7\) +RUNNING +67125616/);
});

test('devices: a device that cannot be opened is reported with its error, exit 1; a bad spec is a usage error', async (t) => {
  const r = await cli('devices', '--device', 'mdev:00000000-0000-0000-0000-000000000000', '--device', 'sim:id=ok,size=0', '--output=json');
  t.is(r.code, 1);
  const { devices } = JSON.parse(r.stdout) as { devices: { spec: string; id?: string; error?: { code: string; message: string } }[] };
  t.is(devices[0]!.error?.code, 'ENOENT');
  t.regex(devices[0]!.error!.message, /no such device in sysfs/);
  t.is(devices[1]!.id, 'ok');
  t.is(devices[1]!.error, undefined);
  const u = await cli('devices', '--device', 'sim:nope=1');
  t.is(u.code, 2);
  t.regex(u.stderr, /unknown key "nope"/);
});
