// `migbridge check` through the real CLI binary: JSON shape, human findings, exit codes.
import test from 'ava';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const bin = fileURLToPath(new URL('../../../bin/migbridge.js', import.meta.url));

function run(...args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    c.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    c.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

test('clean sim pair: exit 0, JSON {devices, results, findings}', async (t) => {
  const r = await run('check', '--device', 'sim:id=a,size=256KiB', '--device', 'sim:id=b,size=256KiB', '--destructive', '--only', 'fsm,resume', '--output=json');
  t.is(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout) as { devices: { id: string }[]; results: { group: string; status: string }[]; findings: number };
  t.deepEqual(Object.keys(j), ['devices', 'results', 'findings']);
  t.deepEqual(j.devices.map((d) => d.id), ['a', 'b']);
  t.is(j.findings, 0);
  t.deepEqual([...new Set(j.results.map((x) => x.group))], ['fsm', 'resume']);
});

test('a finding: exit 1, one human line saying what was expected, observed and why it matters', async (t) => {
  const r = await run('check', '--device', 'sim:id=a,size=256KiB,fail=data-size@100', '--destructive', '--only', 'sizes');
  t.is(r.status, 1, r.stderr);
  const lines = r.stdout.split('\n').filter((l) => l.includes('FINDING'));
  t.is(lines.length, 1);
  t.regex(lines[0]!, /FINDING \[a\] MIG_DATA_SIZE covers the stop-copy bytes: expected .*; observed MIG_DATA_SIZE 100, stream \d+ bytes .*; matters because QEMU stops the VM/);
  t.regex(r.stdout, /\n1 finding$/m);
});

test('read-only without --destructive, and usage errors exit 2', async (t) => {
  const ro = await run('check', '--device', 'sim:id=a,size=64KiB');
  t.is(ro.status, 0, ro.stderr);
  t.regex(ro.stdout, /read-only checks only: add --destructive/);
  t.is((await run('check')).status, 2);
  const bad = await run('check', '--device', 'sim:', '--only', 'bogus');
  t.is(bad.status, 2);
  t.regex(bad.stderr, /unknown group "bogus"/);
  t.is((await run('check', '--device', 'sim:', 'extra')).status, 2);
});
