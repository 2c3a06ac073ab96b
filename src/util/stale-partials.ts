// Temporary outputs left behind by a run that was killed (kill -9, a crash, a power cut):
// `.NAME.partial-<16 hex>` files that nothing will ever commit, up to the size of a whole
// save. A new output for NAME removes the ones for the same NAME, so an interrupted save
// costs disk space only until it is run again.
//
// A candidate is removed only when it is certainly stale and certainly ours:
//  - its name has exactly the temporary form for this NAME;
//  - lstat says regular file (a symlink or device planted under that name is left alone),
//    owned by our effective uid, with one link (unlink must not be how a second name of some
//    other file loses data; unlink only ever drops this directory entry in any case);
//  - no process has it open: every /proc/PID/fd entry is compared by device and inode. A run
//    still writing it (another migbridge, or a proxy tee being captured) keeps it open.
//    Processes in other PID namespaces are invisible here; the same file written from a
//    container sharing the directory is the case this cannot see.
// A killed proxy's tee is such a file too: it stays (inspectable, named partial) until the
// next output to the same name.
import { promises as fsp } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';

export interface StalePartial {
  /** The temporary file that was removed. */
  path: string;
  /** Its size when removed. */
  bytes: number;
  /** The output it was the unfinished copy of. */
  output: string;
}

const TEMPORARY_SUFFIX = /^\.partial-[0-9a-f]{16}$/;

/** Removes the stale temporaries of `output` (see above); resolves with what was removed. */
export async function removeStalePartials(output: string): Promise<StalePartial[]> {
  const final = resolve(output);
  const dir = dirname(final);
  const prefix = `.${temporaryBaseFor(final)}`;
  let names: string[];
  try {
    names = await fsp.readdir(dir);
  } catch {
    return []; // the create that follows reports the directory's problem
  }
  const candidates = names.filter((n) => n.startsWith(prefix) && TEMPORARY_SUFFIX.test(n.slice(prefix.length)));
  if (candidates.length === 0) return [];
  const uid = process.geteuid?.() ?? -1;
  const owned: { path: string; dev: number; ino: number; bytes: number }[] = [];
  for (const name of candidates) {
    const path = join(dir, name);
    const st = await fsp.lstat(path).catch(() => undefined);
    if (st?.isFile() && st.uid === uid && st.nlink === 1) owned.push({ path, dev: st.dev, ino: st.ino, bytes: st.size });
  }
  if (owned.length === 0) return [];
  const open = await openFileIds();
  const removed: StalePartial[] = [];
  for (const c of owned) {
    if (open.has(`${c.dev}:${c.ino}`)) continue;
    try {
      await fsp.unlink(c.path);
      removed.push({ path: c.path, bytes: c.bytes, output });
    } catch {
      // Gone already, or not ours to remove after all: not this output's problem.
    }
  }
  return removed;
}

/** `dev:ino` of every file some visible process has open. */
async function openFileIds(): Promise<Set<string>> {
  const ids = new Set<string>();
  const pids = (await fsp.readdir('/proc').catch(() => [] as string[])).filter((p) => /^\d+$/.test(p));
  for (const pid of pids) {
    const fdDir = `/proc/${pid}/fd`;
    const fds = await fsp.readdir(fdDir).catch(() => [] as string[]);
    for (const fd of fds) {
      // stat follows the magic link to the open file itself, even when it was unlinked or renamed.
      const st = await fsp.stat(`${fdDir}/${fd}`).catch(() => undefined);
      if (st) ids.add(`${st.dev}:${st.ino}`);
    }
  }
  return ids;
}

/** The NAME part of `.NAME.partial-XXXX` for an output path (kept within NAME_MAX). */
export function temporaryBaseFor(path: string): string {
  let base = basename(path);
  while (Buffer.byteLength(base) > 200) base = base.slice(0, -1);
  return base;
}
