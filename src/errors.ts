// Typed errors shared by every layer. Each carries a stable `code` and, where it
// applies, the errno, byte offset, section and device it concerns, so callers
// (and the CLI's JSON output) never have to parse messages.
import { errnoName, errnoNumber } from './errno.js';

// The errno table lives in errno.ts; its helpers stay importable from here.
export { errnoName, errnoNumber } from './errno.js';

/** A thrown value's `code` (Node's "ECONNRESET", ...), else its message: for reports. */
export function errorCode(e: unknown): string {
  const c = (e as NodeJS.ErrnoException | undefined)?.code;
  return typeof c === 'string' ? c : e instanceof Error ? e.message : String(e);
}

export interface ErrorDetails {
  errno?: number;
  /** The file-system path the error concerns. */
  path?: string;
  offset?: number;
  section?: string;
  device?: string;
  cause?: unknown;
}

/**
 * The root of every error the library throws. `C` narrows `code` to an area's union
 * (StreamErrorCode for the codec, 'EINVAL' for the FSM, 'EUSAGE' for usage); errno names
 * (SysError, VfioDeviceError) and the other areas' E… names are plain strings.
 */
export class MigbridgeError<C extends string = string> extends Error {
  readonly code: C;
  readonly errno?: number;
  readonly path?: string;
  readonly offset?: number;
  readonly section?: string;
  readonly device?: string;
  /**
   * What was done to bring devices back after the failure (save: each source's step back
   * to RUNNING), set by the engine that recovered them; printed with the error.
   */
  recovery?: readonly unknown[];

  constructor(code: C, message: string, details: ErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = new.target.name;
    this.code = code;
    if (details.errno !== undefined) this.errno = details.errno;
    if (details.path !== undefined) this.path = details.path;
    if (details.offset !== undefined) this.offset = details.offset;
    if (details.section !== undefined) this.section = details.section;
    if (details.device !== undefined) this.device = details.device;
  }

  /** Names the file the error concerns, unless it names one already; returns this (for `throw e.inFile(p)`). */
  inFile(path: string): this {
    if (this.path === undefined) (this as { path?: string }).path = path;
    return this;
  }

  /** Plain object for --output=json error reports. */
  toJSON(): Record<string, unknown> {
    const out: Record<string, unknown> = { name: this.name, code: this.code, message: this.message };
    if (this.errno !== undefined) out.errno = this.errno;
    if (this.path !== undefined) out.path = this.path;
    if (this.offset !== undefined) out.offset = this.offset;
    if (this.section !== undefined) out.section = this.section;
    if (this.device !== undefined) out.device = this.device;
    if (this.recovery !== undefined) out.recovery = this.recovery;
    return out;
  }
}

/** A failed system call or I/O operation; `code` is the errno name (EIO, EINVAL, ...). */
export class SysError extends MigbridgeError {
  readonly op: string;
  readonly fd?: number;
  constructor(op: string, errno: number, message?: string, details: Omit<ErrorDetails, 'errno'> & { fd?: number } = {}) {
    const name = errnoName(errno);
    super(name, message ?? `${op} failed: ${name} (errno ${errno})${details.fd !== undefined ? ` on fd ${details.fd}` : ''}`, {
      ...details,
      errno,
    });
    this.op = op;
    if (details.fd !== undefined) this.fd = details.fd;
  }
}

/**
 * A Node file-system failure on `path` (ENOENT, EACCES, ...) as a SysError that names it;
 * typed errors pass unchanged. For the places that read a file the user named.
 */
export function fileError(e: unknown, path: string): MigbridgeError {
  if (e instanceof MigbridgeError) return e;
  const n = e as NodeJS.ErrnoException | undefined;
  const errno = typeof n?.errno === 'number' ? Math.abs(n.errno) : typeof n?.code === 'string' ? errnoNumber(n.code) : undefined;
  const message = e instanceof Error ? e.message : String(e);
  if (errno !== undefined) return new SysError(n?.syscall ?? 'open', errno, message, { path, cause: e });
  return new MigbridgeError('EIO', `${path}: ${message}`, { path, cause: e });
}

/** A broken invariant of migbridge itself (a bug): never expected, still typed. */
export class InternalError extends MigbridgeError<'EINTERNAL'> {
  constructor(message: string) {
    super('EINTERNAL', `internal: ${message}`);
  }
}

/** Wrong command-line usage: the CLI exits with status 2. */
export class UsageError extends MigbridgeError<'EUSAGE'> {
  constructor(message: string) {
    super('EUSAGE', message);
  }
}

/**
 * The JSON shape of any thrown value, as the CLI reports it: always `name`, `code` and
 * `message`; a Node file-system error keeps its errno name as `code` and its `path`
 * and `syscall`; an error we did not expect is `EINTERNAL`.
 */
export function errorJSON(e: unknown): Record<string, unknown> {
  if (e instanceof MigbridgeError) return e.toJSON();
  const n = e as NodeJS.ErrnoException | undefined;
  if (e instanceof Error && typeof n?.code === 'string') {
    const out: Record<string, unknown> = { name: typeof n.errno === 'number' ? 'SysError' : e.name, code: n.code, message: e.message };
    if (typeof n.errno === 'number') out.errno = Math.abs(n.errno);
    if (n.syscall) out.syscall = n.syscall;
    if (n.path) out.path = n.path;
    return out;
  }
  return { name: e instanceof Error ? e.name : 'Error', code: 'EINTERNAL', message: e instanceof Error ? e.message : String(e) };
}
