// Shared by the output-safety tests: running the CLI with a chosen umask and cwd, acting as an
// unprivileged user (nobody) beside a root migbridge, small tmpfs mounts, and the rule for a
// prerequisite that is missing (fail in CI, loud note elsewhere).
import type { ExecutionContext } from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { repoRoot } from './qemu-binary.js';

export const CLI = join(repoRoot(), 'bin', 'migbridge.js');
export const TWO_MTTY = join(repoRoot(), 'test/fixtures/qemu10-vfio/two-mtty.mig');

export interface CliRun { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }

export interface Spawned {
  done: Promise<CliRun>;
  pid: number;
  stderr: () => string;
  kill: (signal?: NodeJS.Signals) => void;
}

/** Starts `migbridge ARGS` under `umask` (octal string) in `cwd`; killed at teardown and after 120 s. */
export function startCli(t: ExecutionContext, args: string[], opts: { umask?: string; cwd?: string } = {}): Spawned {
  const child = spawn('sh', ['-c', `umask ${opts.umask ?? '022'}; exec "$0" "$@"`, process.execPath, CLI, ...args], {
    cwd: opts.cwd ?? process.cwd(),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (s: string) => { stdout += s; });
  child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr += s; });
  const kill = (signal: NodeJS.Signals = 'SIGKILL'): void => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
  };
  const timer = setTimeout(kill, 120_000);
  t.teardown(() => kill());
  const done = new Promise<CliRun>((resolve) => {
    child.on('close', (code, signal) => { clearTimeout(timer); resolve({ code, signal, stdout, stderr }); });
  });
  return { done, pid: child.pid!, stderr: () => stderr, kill };
}

export function runCli(t: ExecutionContext, args: string[], opts: { umask?: string; cwd?: string } = {}): Promise<CliRun> {
  return startCli(t, args, opts).done;
}

export function describeRun(r: CliRun): string {
  return `exit ${String(r.code)}${r.signal ? ` (${r.signal})` : ''}\nstderr: ${r.stderr.slice(-3000)}\nstdout: ${r.stdout.slice(0, 1500)}`;
}

/** A fresh directory under /tmp (mode as given), removed at teardown. */
export function scratchDir(t: ExecutionContext, mode?: number): string {
  const dir = mkdtempSync(join(tmpdir(), 'migbridge-sec-'));
  if (mode !== undefined) spawnSync('chmod', [mode.toString(8), dir]);
  t.teardown(() => {
    spawnSync('umount', ['-l', ...mountsUnder(dir)]);
    rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

function mountsUnder(dir: string): string[] {
  const lines = spawnSync('findmnt', ['-rn', '-o', 'TARGET'], { encoding: 'utf8' }).stdout.split('\n');
  return lines.filter((l) => l.startsWith(dir + '/'));
}

/**
 * A prerequisite the test cannot arrange: in CI (CI set) that is a failure; elsewhere the
 * test says so loudly and stops. Returns true when the test must stop.
 */
export function missing(t: ExecutionContext, what: string | null): boolean {
  if (what === null) return false;
  if (process.env.CI) t.fail(`prerequisite missing: ${what}`);
  else {
    t.log(`NOT RUN: prerequisite missing: ${what}`);
    t.pass();
  }
  return true;
}

export function isRoot(): boolean {
  return process.getuid?.() === 0;
}

/** Why the unprivileged-user steps cannot run here, or null. */
export function cannotActAsNobody(): string | null {
  if (!isRoot()) return 'root (to run migbridge as root and act as nobody beside it)';
  const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'true']);
  return r.status === 0 ? null : `setpriv (util-linux) acting as uid 65534: ${r.stderr?.toString() ?? r.error?.message}`;
}

/** Runs a shell command as nobody (uid/gid 65534, no groups); throws on failure. */
export function asNobody(script: string): void {
  const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'sh', '-c', script], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`as nobody: ${script}: ${r.stderr}`);
}

/** Mounts a tmpfs at a new directory under `parent` (e.g. size=1m, or ro); unmounted at teardown. */
export function tmpfsAt(t: ExecutionContext, parent: string, name: string, options: string): string | null {
  const dir = join(parent, name);
  spawnSync('mkdir', ['-p', dir]);
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', options, 'tmpfs', dir], { encoding: 'utf8' });
  if (r.status !== 0) return null;
  t.teardown(() => { spawnSync('umount', ['-l', dir]); });
  return dir;
}

/** Names in `dir` that look like our temporary outputs. */
export function temporaries(dir: string): string[] {
  return readdirSync(dir).filter((f) => f.includes('.partial-'));
}

export function modeOf(path: string): number {
  return statSync(path).mode & 0o777;
}
