// Cross-process locks made of files created with O_EXCL that hold the owner's pid, so that
// ava's worker processes (and other test files) share limits: at most N QEMUs at once on
// this 2-core machine, and one generator per cached stream. A lock whose owner died is
// taken over; every wait is bounded.
import { openSync, closeSync, writeSync, readFileSync, unlinkSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const held = new Set<string>();
process.once('exit', () => {
  for (const path of held) {
    try { unlinkSync(path); } catch { /* already gone */ }
  }
});

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Tries once to take `path`; removes it first if its owner process is dead. */
function tryTake(path: string): boolean {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(path, 'wx');
      writeSync(fd, String(process.pid));
      closeSync(fd);
      held.add(path);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      let owner = NaN;
      try { owner = Number(readFileSync(path, 'utf8')); } catch { /* vanished or half-written */ }
      if (Number.isInteger(owner) && owner > 0 && !pidAlive(owner)) {
        try { unlinkSync(path); } catch { /* someone else cleaned it */ }
        continue;
      }
      return false;
    }
  }
  return false;
}

export type Release = () => void;

function releaser(path: string): Release {
  let done = false;
  return () => {
    if (done) return;
    done = true;
    held.delete(path);
    try { unlinkSync(path); } catch { /* already gone */ }
  };
}

/** Takes one of `slots` lock files in `dir`, waiting at most `timeoutMs`. */
export async function acquireSlot(dir: string, slots: number, timeoutMs: number, what: string): Promise<Release> {
  mkdirSync(dir, { recursive: true });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    for (let i = 0; i < slots; i++) {
      const path = join(dir, `slot-${i}`);
      if (tryTake(path)) return releaser(path);
    }
    if (Date.now() > deadline) throw new Error(`waited ${timeoutMs} ms for a free slot in ${dir} (${what}); stale lock files there?`);
    await sleep(50);
  }
}

/** Takes the lock file `path`, waiting at most `timeoutMs`. */
export async function acquireLock(path: string, timeoutMs: number): Promise<Release> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (tryTake(path)) return releaser(path);
    if (Date.now() > deadline) throw new Error(`waited ${timeoutMs} ms for lock ${path}`);
    await sleep(100);
  }
}
