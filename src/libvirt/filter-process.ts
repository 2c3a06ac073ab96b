// A (de)compression program run as a filter, stdin to stdout, the way libvirt runs them:
// what both directions need to judge how it ended (exit status, spawn failure, the tail
// of its stderr for the message).
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';

/** How much of a filter's stderr is kept for the error message. */
const STDERR_KEEP = 4096;

export interface FilterProcess {
  child: ChildProcessByStdio<Writable, Readable, Readable>;
  /** Resolves with the exit status (null when it could not be started or died by a signal). */
  exited: Promise<number | null>;
  /** Why it could not be started, once `exited` resolved. */
  spawnError(): Error | undefined;
  /** The last lines of its stderr, joined with "; ". */
  why(): string;
}

export function startFilter(prog: string, args: string[]): FilterProcess {
  const child = spawn(prog, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString('utf8')).slice(-STDERR_KEEP);
  });
  let spawnError: Error | undefined;
  const exited = new Promise<number | null>((resolve) => {
    child.once('error', (e) => {
      spawnError = e;
      resolve(null);
    });
    child.once('close', (code) => resolve(code));
  });
  return { child, exited, spawnError: () => spawnError, why: () => stderr.trim().split('\n').slice(-2).join('; ') };
}
