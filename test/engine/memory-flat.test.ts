// Memory stays flat whatever the devices hold (#11: peak RSS overhead < 64 MiB for any
// state size): the same CLI command on the same devices peaks at about the same RSS for
// 1 MiB per device and for 64 MiB per device. Comparing the two runs takes out what does
// not depend on the state size (Node, the simulator's worker threads, the 32 MiB pool).
// Precopy rounds go through the same bounded reader as stop-copy (once 1.2-2.3 GB of peak
// RSS for 8 x 128 MiB with dirtying); a restore's input goes through the same pool.
// Peak RSS of the real CLI (GNU time), not a timing: the same on a busy machine.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const bin = fileURLToPath(new URL('../../../bin/migbridge.js', import.meta.url));
const base = existsSync('/dev/shm') ? '/dev/shm' : '/tmp';
const dir = mkdtempSync(path.join(base, 'migbridge-memory-flat-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

const DEVICES = 8;
/** Growth allowed from the small run to the big one: the 64 MiB budget. */
const BUDGET_MIB = 64;

function peakKiB(t: { is(a: unknown, b: unknown, m?: string): void }, args: string[]): number {
  const r = spawnSync('/usr/bin/time', ['-f', 'peak-rss-kib %M', process.execPath, bin, ...args], { encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  return Number(/peak-rss-kib (\d+)/.exec(r.stderr)?.[1]);
}

/** save --precopy of DEVICES sims of `size` (all of it precopy data, half of it dirtied again), then restore into as many. */
function roundTrip(t: Parameters<typeof peakKiB>[0], size: string, dirty: string): { save: number; restore: number } {
  const file = path.join(dir, `${size}.mig`);
  const src = Array.from({ length: DEVICES }, (_, i) => ['--device', `sim:id=s${i},seed=${i + 1},size=${size},precopy=${size},dirty=${dirty},flags=7`]).flat();
  const dst = Array.from({ length: DEVICES }, (_, i) => ['--device', `sim:id=d${i},size=${size}`]).flat();
  const save = peakKiB(t, ['save', ...src, '--precopy', '-o', file]);
  const restore = peakKiB(t, ['restore', '-i', file, ...dst]);
  rmSync(file, { force: true });
  return { save, restore };
}

test(`save --precopy with dirtying and restore of ${DEVICES} x 64 MiB peak within ${BUDGET_MIB} MiB of the same with ${DEVICES} x 1 MiB`, (t) => {
  if (!existsSync('/usr/bin/time')) return t.fail('GNU time is missing (scripts/setup.sh --test installs it)');
  const small = roundTrip(t, '1MiB', '512KiB');
  const big = roundTrip(t, '64MiB', '32MiB');
  const mib = (k: number) => (k / 1024).toFixed(0);
  t.log(`peak RSS MiB: save ${mib(small.save)} -> ${mib(big.save)}, restore ${mib(small.restore)} -> ${mib(big.restore)}`);
  for (const k of ['save', 'restore'] as const) {
    t.true(small[k] > 0 && big[k] > 0, `${k}: no RSS figure`);
    t.true(big[k] - small[k] < BUDGET_MIB * 1024, `${k}: peak RSS grew by ${mib(big[k] - small[k])} MiB with the state (${mib(small[k])} -> ${mib(big[k])} MiB)`);
  }
});
