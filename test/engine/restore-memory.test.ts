// Restore's memory does not grow with the stream: every payload leaves once written to its
// device. (A cancel race attached per read to one long-lived promise once kept every payload
// of the stream alive: 670 MB of peak RSS for a 512 MiB stream, against about 250 MB.)
// The figure is peak RSS of the real CLI (GNU time), not a timing: it is the same on a busy
// machine.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const bin = fileURLToPath(new URL('../../../bin/migbridge.js', import.meta.url));
const base = existsSync('/dev/shm') ? '/dev/shm' : '/tmp';
const dir = mkdtempSync(path.join(base, 'migbridge-restore-mem-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

const sims = (prefix: string, extra = ''): string[] => [1, 2, 3, 4].flatMap((i) => ['--device', `sim:id=${prefix}${i},size=128MiB${extra && `,${extra}${i}`}`]);

test('restore of a 512 MiB stream (4 devices) from the CLI peaks under 448 MiB of RSS', (t) => {
  if (!existsSync('/usr/bin/time')) return t.fail('GNU time is missing (scripts/setup.sh --test installs it)');
  const file = path.join(dir, 's.mig');
  const s = spawnSync(process.execPath, [bin, 'save', ...sims('s', 'seed='), '-o', file], { encoding: 'utf8' });
  t.is(s.status, 0, s.stderr);
  const r = spawnSync('/usr/bin/time', ['-f', 'peak-rss-kib %M', process.execPath, bin, 'restore', '-i', file, ...sims('d')], { encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  const kib = Number(/peak-rss-kib (\d+)/.exec(r.stderr)?.[1]);
  t.log(`peak RSS ${(kib / 1024).toFixed(0)} MiB for a ${512} MiB stream`);
  t.true(kib > 0 && kib < 448 * 1024, `peak RSS ${kib} KiB`);
});
