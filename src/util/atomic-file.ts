// Every file migbridge creates goes through here, so that an output never looks complete when
// it is not and a root migbridge cannot be turned against the files of others:
//  - the bytes go to a temporary name in the destination's own directory, with a random
//    suffix nobody can guess in advance, opened O_CREAT|O_EXCL|O_NOFOLLOW (a name planted
//    there, symlink or not, makes the open fail instead of being followed or reused);
//  - the file is 0600 whatever the umask (fchmod after the open: the mode given to open()
//    is only ANDed with the umask), since it holds guest or device state;
//  - commit: fsync, close, rename over the final name (rename replaces a symlink planted
//    there, it never writes through it), fsync the directory so the rename survives a crash;
//  - abort: close and unlink the temporary name.
// A kill -9 at any moment thus leaves the previous file or the complete new one under the
// final name, and at worst a `.NAME.partial-XXXX` beside it, which the next output to NAME
// removes (src/util/stale-partials.ts).
//
// Failures are OutputFileError: code the errno name, `path` the user's path (never the hidden
// temporary one), and a message saying what is wrong with it.
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { constants as fsc, createWriteStream, promises as fsp, type WriteStream } from 'node:fs';
import { constants as osc } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { finished } from 'node:stream/promises';
import { MigbridgeError, SysError } from '../errors.js';
import { removeStalePartials, temporaryBaseFor, type StalePartial } from './stale-partials.js';

/** Outputs hold guest RAM and device state: owner only, unless the caller widens it. */
export const OUTPUT_MODE = 0o600;

/** An output path problem: `code` is the errno name (ENOENT, EROFS, ENOSPC, ...). */
export class OutputFileError extends MigbridgeError {}

/** Why an errno stops an output at `path`, in words a user can act on. */
function reasonFor(code: string, path: string): string {
  const dir = dirname(path);
  switch (code) {
    case 'ENOENT': return `the directory ${dir} does not exist`;
    case 'ENOTDIR': return `a component of ${dir} is not a directory`;
    case 'EISDIR': return `${path} is a directory`;
    case 'EACCES':
    case 'EPERM': return `permission denied in ${dir}`;
    case 'EROFS': return `${dir} is on a read-only file system`;
    case 'ENOSPC': return 'no space left on the device';
    case 'EDQUOT': return 'disk quota exceeded';
    case 'EEXIST': return 'a file appeared under the temporary name (refusing to reuse it)';
    case 'ELOOP': return 'a symlink is in the way (refusing to follow it)';
    case 'ENAMETOOLONG': return 'the file name is too long';
    case 'EMFILE':
    case 'ENFILE': return 'too many open files';
    default: return code;
  }
}

/** Wraps a failed file-system call on the output `path` (user's spelling) as an OutputFileError. */
export function outputFileError(e: unknown, path: string, doing = 'cannot write', offset?: number): MigbridgeError {
  // A failed system call of the io engine (a SysError: ENOSPC, EIO on a writev) names an fd,
  // not the user's file: it is reported like Node's own fs errors. Other typed errors pass.
  if (e instanceof MigbridgeError && !(e instanceof SysError)) return e;
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  const name = typeof code === 'string' ? code : 'EIO';
  const errno = (e as NodeJS.ErrnoException | undefined)?.errno;
  return new OutputFileError(name, `${doing} ${path}${offset !== undefined ? ` at byte ${offset}` : ''}: ${reasonFor(name, path)} (${name})`, {
    path,
    ...(offset !== undefined ? { offset } : {}),
    ...(typeof errno === 'number' ? { errno: Math.abs(errno) } : {}),
    cause: e,
  });
}

/** `.NAME.partial-<16 random hex>` beside NAME: every temporary output name has this form. */
export function temporaryNameFor(path: string): string {
  return join(dirname(path), `.${temporaryBaseFor(path)}.partial-${randomBytes(8).toString('hex')}`);
}

/**
 * Temporary files of this process not yet committed or aborted. A second SIGINT/SIGTERM
 * exits at once, without the awaits of abort(): it removes them synchronously first.
 */
const liveTemporaries = new Set<string>();

/** Removes every temporary output of this process (for an immediate exit); never throws. */
export function removeLiveTemporariesSync(): void {
  for (const path of liveTemporaries) {
    try {
      fs.unlinkSync(path);
    } catch {
      // already gone
    }
  }
  liveTemporaries.clear();
}

type StaleListener = (removed: StalePartial) => void;
const staleListeners = new Set<StaleListener>();

/** Called for each stale temporary a new output removed (the CLI prints a note); returns the unsubscribe. */
export function onStalePartialRemoved(listener: StaleListener): () => void {
  staleListeners.add(listener);
  return () => staleListeners.delete(listener);
}

/** fsync of a directory: makes the renames and unlinks in it durable. */
export async function syncDirectory(dir: string): Promise<void> {
  const fh = await fsp.open(dir, fsc.O_RDONLY | fsc.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export interface OutputFileOptions {
  /** File mode (default 0600), applied with fchmod so the umask does not change it. */
  mode?: number;
  /** Open O_RDWR instead of O_WRONLY (outputs that read back what they wrote). */
  readable?: boolean;
}

/** One output being written: bytes go to `fd` (the temporary file) until commit or abort. */
export class OutputFile {
  private open = true;
  private published = false;

  private constructor(
    /** The final path, as the user spelled it (commitAs may pick another in the same directory). */
    public path: string,
    readonly tempPath: string,
    /** The temporary file, open until sync/commit/abort. */
    readonly handle: fsp.FileHandle,
  ) {}

  get fd(): number {
    return this.handle.fd;
  }

  /** Creates the temporary file for `path`; fails with OutputFileError naming `path`. */
  static async create(path: string, opts: OutputFileOptions = {}): Promise<OutputFile> {
    const final = resolve(path);
    // Found now rather than after all the bytes were written (rename would refuse then).
    // lstat: a symlink at the final name is replaced by the rename, whatever it points to.
    const st = await fsp.lstat(final).catch(() => undefined);
    if (st?.isDirectory()) throw outputFileError(Object.assign(new Error('EISDIR'), { code: 'EISDIR', errno: osc.errno.EISDIR }), path);
    for (const removed of await removeStalePartials(final)) {
      for (const l of staleListeners) l(removed);
    }
    const tempPath = temporaryNameFor(final);
    const flags = fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW | (opts.readable ? fsc.O_RDWR : fsc.O_WRONLY);
    const mode = opts.mode ?? OUTPUT_MODE;
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(tempPath, flags, mode);
    } catch (e) {
      throw outputFileError(e, path);
    }
    liveTemporaries.add(tempPath);
    try {
      await fh.chmod(mode);
    } catch (e) {
      await fh.close().catch(() => undefined);
      await fsp.unlink(tempPath).catch(() => undefined);
      liveTemporaries.delete(tempPath);
      throw outputFileError(e, path);
    }
    return new OutputFile(path, tempPath, fh);
  }

  /** Writes all of `data` (at `position`, or at the current offset); failures name the final path. */
  async write(data: Uint8Array, position: number | null = null): Promise<void> {
    try {
      for (let off = 0; off < data.length;) {
        const { bytesWritten } = await this.handle.write(data, off, data.length - off, position === null ? null : position + off);
        off += bytesWritten;
      }
    } catch (e) {
      throw outputFileError(e, this.path);
    }
  }

  /** Sets the file's size (sparse); failures name the final path. */
  async truncate(length: number): Promise<void> {
    await this.handle.truncate(length).catch((e: unknown) => { throw outputFileError(e, this.path); });
  }

  /** Flushes and closes the temporary file (first half of commit; extract syncs a set before renaming it). */
  async sync(): Promise<void> {
    if (!this.open) return;
    const fh = this.handle;
    try {
      await fh.sync();
    } catch (e) {
      throw outputFileError(e, this.path);
    } finally {
      this.open = false;
      await fh.close().catch(() => undefined);
    }
  }

  /** Renames the (synced) temporary file over the final name; the caller syncs the directory. */
  async publish(): Promise<void> {
    try {
      await fsp.rename(this.tempPath, resolve(this.path));
    } catch (e) {
      throw outputFileError(e, this.path);
    }
    this.published = true;
    liveTemporaries.delete(this.tempPath);
  }

  /** Everything written: fsync, rename over the final name, fsync the directory. */
  async commit(): Promise<void> {
    await this.commitAs(this.path);
  }

  /** commit() under a final name known only at the end (same directory: the rename stays atomic). */
  async commitAs(path: string): Promise<void> {
    this.path = path;
    try {
      await this.sync();
      await this.publish();
      await syncDirectory(dirname(resolve(this.path)));
    } catch (e) {
      await this.abort();
      throw outputFileError(e, this.path);
    }
  }

  /** The output failed: close and remove the temporary file (never the final name). */
  async abort(): Promise<void> {
    if (this.open) {
      this.open = false;
      await this.handle.close().catch(() => undefined);
    }
    if (!this.published) await fsp.unlink(this.tempPath).catch(() => undefined);
    liveTemporaries.delete(this.tempPath);
  }
}

/** An OutputFile written through a Node write stream (which never owns the fd). */
export class StreamedOutput {
  private ended: Promise<void> | undefined;

  private constructor(readonly file: OutputFile, readonly out: WriteStream) {}

  /** `highWaterMark`: how many bytes may queue before write() asks the producer to wait. */
  static async create(path: string, highWaterMark: number, opts: OutputFileOptions = {}): Promise<StreamedOutput> {
    const file = await OutputFile.create(path, opts);
    // The stream's close is a no-op: the OutputFile closes the fd (once) after the stream
    // settled. autoClose stays on so that a failed write destroys the stream, and later
    // writes fail at once instead of waiting for a 'drain' that never comes.
    const fsOps = { open: fs.open, write: fs.write, writev: fs.writev, close: (_fd: number, cb: (e: NodeJS.ErrnoException | null) => void) => cb(null) };
    return new StreamedOutput(file, createWriteStream('', { fd: file.fd, highWaterMark, fs: fsOps }));
  }

  /** Ends the stream; resolves once every byte reached the file, rejects with the write failure. */
  end(): Promise<void> {
    this.ended ??= (async () => {
      this.out.end();
      await finished(this.out);
    })();
    return this.ended;
  }

  /** All bytes written: end the stream, then commit the file (fsync, rename, directory fsync). */
  async commit(): Promise<void> {
    try {
      await this.end();
    } catch (e) {
      await this.abort();
      throw outputFileError(e, this.file.path);
    }
    await this.file.commit();
  }

  /** commit() under a final name known only at the end (a multifd tee's channel id). */
  async commitAs(path: string): Promise<void> {
    this.file.path = path;
    await this.commit();
  }

  /** Drops the output: writes still in flight settle first, then the temporary file goes. */
  async abort(): Promise<void> {
    if (!this.out.closed) {
      // Queued writes fail after destroy() (ERR_STREAM_DESTROYED): expected, not an 'error' to surface.
      this.out.on('error', () => undefined);
      const closed = new Promise<void>((r) => this.out.once('close', () => r()));
      this.out.destroy();
      await closed;
    }
    await this.file.abort();
  }
}

/**
 * Writes `path` through `fill` (an OutputFile behind a stream), committed only when `fill`
 * resolved; on any failure nothing is left. Write failures name `path`.
 */
export async function writeFileAtomically<T>(path: string, fill: (out: WriteStream) => Promise<T>): Promise<T> {
  // A 4 MiB write queue lets the producer go on while the previous writes are in the
  // threadpool (with the 16 KiB default every large write waited for its own completion);
  // still a bound on memory.
  const output = await StreamedOutput.create(path, 4 << 20);
  let writeError: unknown;
  output.out.on('error', (e) => { writeError ??= e; });
  let result: T;
  try {
    result = await fill(output.out);
  } catch (e) {
    // The write failure that made `fill` fail, if any (not those abort() itself causes).
    const failure = writeError !== undefined ? outputFileError(writeError, path) : e;
    await output.abort();
    throw failure;
  }
  await output.commit();
  return result;
}
