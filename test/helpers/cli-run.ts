// Running the migbridge CLI from tests as a child process, and waiting on what it says,
// shared by the host proxy tests and the kernel-lane guest tests.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { repoRoot } from './qemu-binary.js';

const CLI = join(repoRoot(), 'bin', 'migbridge.js');

export interface CliResult { code: number | null; stdout: string; stderr: string }

export interface RunningCli {
  /** Settles when the process exits (SIGKILLed after the timeout). */
  done: Promise<CliResult>;
  kill: () => void;
  /** Sends a signal (SIGINT, SIGTERM, ...) to the running CLI. */
  signal: (sig: NodeJS.Signals) => void;
  /** stderr so far. */
  stderr: () => string;
}

/**
 * Starts the CLI; `done` settles when it exits (killed after timeoutMs, and at teardown).
 * `fds` are handed to it as its fds 3, 4, ... (for fd:N endpoints). `wrapper` runs it under
 * a command that execs it in place (e.g. `ip netns exec NS`).
 */
export function runningCli(args: string[], timeoutMs: number, teardown?: (fn: () => void) => void, fds: readonly number[] = [], wrapper: readonly string[] = []): RunningCli {
  const argv = [...wrapper, process.execPath, CLI, ...args];
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe', ...fds] });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (s: string) => { stdout += s; });
  child.stderr!.setEncoding('utf8').on('data', (s: string) => { stderr += s; });
  const kill = (): void => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); };
  const timer = setTimeout(kill, timeoutMs);
  teardown?.(kill);
  const done = new Promise<CliResult>((resolve) => {
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
  });
  const signal = (sig: NodeJS.Signals): void => { if (child.exitCode === null && child.signalCode === null) child.kill(sig); };
  return { done, kill, signal, stderr: () => stderr };
}

/** Polls `ok` every 25 ms; throws naming `what` after timeoutMs. */
export async function waitFor(what: string, ok: () => boolean | Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(25);
  }
}

export interface ProxyNote { type: string; kind?: string; command?: string; offset?: number; side?: string }

/** A command's JSON notes on stderr, `{"note": ...}` lines (complete lines only: the last one may still be arriving). */
export function cliNotes<T = { type: string } & Record<string, unknown>>(stderr: string): T[] {
  return stderr.split('\n').slice(0, -1).filter((l) => l.startsWith('{"note"')).map((l) => (JSON.parse(l) as { note: T }).note);
}

/** The proxy's JSON notes on stderr. */
export function proxyNotes(stderr: string): ProxyNote[] {
  return cliNotes<ProxyNote>(stderr);
}

/** Waits until the CLI (run with --progress --output=json) printed a note of `type`. */
export async function noteSeen(cli: Pick<RunningCli, 'stderr'>, type: string, timeoutMs = 60_000): Promise<void> {
  await waitFor(`a "${type}" note`, () => cliNotes(cli.stderr()).some((n) => n.type === type), timeoutMs);
}

/**
 * Waits for the proxy's "listening" note (run it with --progress --output=json). Not the
 * socket file: that exists from bind(), and a connect before listen() is refused.
 */
export async function proxyListening(proxy: Pick<RunningCli, 'stderr'>, timeoutMs = 10_000): Promise<void> {
  await waitFor('the proxy listening', () => proxyNotes(proxy.stderr()).some((n) => n.type === 'listening'), timeoutMs);
}
