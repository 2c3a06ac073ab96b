// One real QEMU process driven over QMP (unix socket in a private temp dir). The process is
// killed when the test ends (teardown hook), when quit() times out, and when node exits;
// every wait is bounded. At most MIGBRIDGE_QEMU_SLOTS (default 2) QEMUs run at once across
// all test processes.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { qemuBinary, type QemuBinary, type QemuVersion } from './qemu-binary.js';
import { QmpClient } from '../../src/qmp/index.js';
import { acquireSlot, type Release } from './qemu-lock.js';

const SLOT_DIR = '/tmp/migbridge-qemu-slots';
const SLOTS = Math.max(1, Number(process.env.MIGBRIDGE_QEMU_SLOTS ?? 2) || 2);
const STDERR_CAP = 64 * 1024;

const live = new Set<QemuVm>();
// On any exit of node (even an uncaught exception) no QEMU and no VM dir is left behind.
process.once('exit', () => {
  for (const vm of live) {
    vm.killNow();
    rmSync(vm.dir, { recursive: true, force: true });
  }
});

/** Something that runs a cleanup when the test ends (ava's `t.teardown` fits). */
export type Teardown = (fn: () => Promise<void> | void) => void;

export interface QemuVmOptions {
  version: QemuVersion;
  /** Machine and device arguments; `{dir}` is replaced by the VM's private temp dir. */
  args: string[];
  /** Label used in error messages. */
  name?: string;
  /** Adds `-incoming defer` (then call migrateIncoming). */
  incomingDefer?: boolean;
  /** Default bound for each QMP command and wait (ms). */
  timeoutMs?: number;
  /** Registers the kill with the test (e.g. `t.teardown.bind(t)`). */
  teardown?: Teardown;
  /** Opens a second QMP monitor (`spareQmpPath`) for another client, e.g. `migbridge migrate`. */
  spareQmp?: boolean;
  /** A command QEMU runs under, e.g. `['ip', 'netns', 'exec', NS]` (it must exec QEMU in place: same pid). */
  wrapper?: string[];
  /** Runs in the VM's dir before QEMU starts (e.g. to copy disk images there). */
  beforeStart?: (dir: string) => Promise<void>;
}

export interface MigrateOptions {
  timeoutMs?: number;
  /** 'file' (QEMU 8.2+, default on 10.0) or 'exec' (`exec:cat > FILE`, default on 7.2). */
  transport?: 'file' | 'exec';
  /** Called with each query-migrate answer while the migration is not finished. */
  onPoll?: (info: MigrationInfo) => Promise<void>;
}

export interface MigrationInfo {
  status: string;
  'total-time'?: number;
  downtime?: number;
  ram?: Record<string, number>;
  'error-desc'?: string;
  [key: string]: unknown;
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

export class QemuVm {
  readonly dir: string;
  readonly name: string;
  readonly binary: QemuBinary;
  private qmpClient: QmpClient | null = null;
  private stderrText = '';
  private exited: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  private readonly exitWaiters: (() => void)[] = [];
  private released = false;

  private constructor(
    private readonly proc: ChildProcess,
    binary: QemuBinary,
    dir: string,
    name: string,
    private readonly releaseSlot: Release,
    readonly timeoutMs: number,
  ) {
    this.binary = binary;
    this.dir = dir;
    this.name = name;
    proc.stderr?.setEncoding('utf8');
    proc.stderr?.on('data', (s: string) => {
      if (this.stderrText.length < STDERR_CAP) this.stderrText += s.slice(0, STDERR_CAP - this.stderrText.length);
    });
    proc.stdout?.resume();
    // 'close' (not 'exit'): fires once stderr is drained too, so failures carry QEMU's last words.
    proc.on('close', (code, signal) => {
      this.exited = { code, signal };
      for (const w of this.exitWaiters.splice(0)) w();
      this.cleanup();
    });
  }

  /** Starts QEMU and connects QMP; fails with QEMU's stderr if it dies or never answers. */
  static async start(opts: QemuVmOptions): Promise<QemuVm> {
    const binary = await qemuBinary(opts.version);
    const timeoutMs = opts.timeoutMs ?? 30_000;
    const name = opts.name ?? `qemu-${opts.version}`;
    const release = await acquireSlot(SLOT_DIR, SLOTS, 10 * 60_000, name);
    // tmpfs when there is one: images, shared-memory RAM and logs stay off the disk.
    const base = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
    let dir = '';
    try {
      dir = mkdtempSync(join(base, 'migbridge-qemu-'));
      if (opts.beforeStart) await opts.beforeStart(dir);
    } catch (err) {
      if (dir) rmSync(dir, { recursive: true, force: true });
      release();
      throw err;
    }
    const sock = join(dir, 'qmp.sock');
    const args = [
      ...binary.args,
      '-nodefaults', '-no-user-config', '-display', 'none', '-accel', 'tcg',
      ...opts.args.map((a) => a.replaceAll('{dir}', dir)),
      ...(opts.incomingDefer ? ['-incoming', 'defer'] : []),
      '-qmp', `unix:${sock},server=on,wait=off`,
      ...(opts.spareQmp ? ['-qmp', `unix:${join(dir, 'qmp-spare.sock')},server=on,wait=off`] : []),
    ];
    const argv = [...(opts.wrapper ?? []), binary.bin, ...args];
    const proc = spawn(argv[0]!, argv.slice(1), { env: binary.env, stdio: ['ignore', 'pipe', 'pipe'] });
    const vm = new QemuVm(proc, binary, dir, name, release, timeoutMs);
    live.add(vm);
    opts.teardown?.(() => vm.kill());
    proc.on('error', () => { /* reported through exit/connect below */ });
    try {
      const deadline = Date.now() + timeoutMs;
      while (!existsSync(sock)) {
        if (vm.exited) throw new Error('exited before opening its QMP socket');
        if (Date.now() > deadline) throw new Error(`no QMP socket after ${timeoutMs} ms`);
        await sleep(20);
      }
      vm.qmpClient = await QmpClient.connect(sock, { label: name, connectTimeoutMs: Math.max(1000, deadline - Date.now()), commandTimeoutMs: timeoutMs });
      // MIGRATION events (capability `events`, not part of the stream) let the tests wait for a
      // migration's end without polling a QEMU whose main loop may be busy loading it.
      await vm.qmpClient.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] }, { timeoutMs: Math.max(1000, deadline - Date.now()) });
    } catch (err) {
      await vm.kill();
      throw vm.failure(`could not start (${(err as Error).message})`, args);
    }
    return vm;
  }

  /** The VM's QMP connection (for fd passing and event listeners). */
  get qmpConnection(): QmpClient {
    if (!this.qmpClient) throw this.failure('QMP not connected');
    return this.qmpClient;
  }

  /** The second monitor's socket (started with `spareQmp`), free for another client. */
  get spareQmpPath(): string {
    return join(this.dir, 'qmp-spare.sock');
  }

  /** QEMU's stderr so far (capped). */
  get stderr(): string {
    return this.stderrText;
  }

  get pid(): number | undefined {
    return this.proc.pid;
  }

  get hasExited(): boolean {
    return this.exited !== null;
  }

  /** An Error carrying the command line (optionally) and QEMU's stderr. */
  failure(what: string, args?: string[]): Error {
    const exit = this.exited ? ` [exit code ${this.exited.code ?? '-'} signal ${this.exited.signal ?? '-'}]` : '';
    const cmd = args ? `\ncommand: ${this.binary.bin} ${args.join(' ')}` : '';
    const err = this.stderrText.trim() ? `\nQEMU stderr:\n${this.stderrText.trim()}` : '\nQEMU stderr: (empty)';
    return new Error(`${this.name} (QEMU ${this.binary.version}): ${what}${exit}${cmd}${err}`);
  }

  async qmp(command: string, args?: Record<string, unknown>, timeoutMs = this.timeoutMs): Promise<unknown> {
    if (!this.qmpClient) throw this.failure(`QMP not connected for ${command}`);
    try {
      return await this.qmpClient.execute(command, args, { timeoutMs });
    } catch (err) {
      throw this.failure((err as Error).message);
    }
  }

  /** One HMP command line through QMP human-monitor-command; returns its output. */
  async hmp(line: string): Promise<string> {
    return (await this.qmp('human-monitor-command', { 'command-line': line })) as string;
  }

  async status(): Promise<string> {
    const r = (await this.qmp('query-status')) as { status: string };
    return r.status;
  }

  async setCapabilities(names: readonly string[]): Promise<void> {
    if (names.length === 0) return;
    await this.qmp('migrate-set-capabilities', { capabilities: names.map((capability) => ({ capability, state: true })) });
  }

  /** Polls query-status until `done(status)` holds; fails if QEMU exits or time runs out. */
  async waitStatus(done: (status: string) => boolean, timeoutMs = this.timeoutMs, what = 'status'): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    let last = '';
    for (;;) {
      if (this.exited) throw this.failure(`exited while waiting for ${what} (last status ${last || 'none'})`);
      try {
        last = await this.status();
      } catch (err) {
        // A QEMU that fails a load exits; the QMP error may come first: give the exit a moment.
        if (this.exited || (await this.waitExit(3_000))) throw this.failure(`exited while waiting for ${what} (last status ${last || 'none'})`);
        throw err;
      }
      if (done(last)) return last;
      if (Date.now() > deadline) throw this.failure(`timed out after ${timeoutMs} ms waiting for ${what}; status is ${last}`);
      await sleep(25);
    }
  }

  /** How many QMP events arrived so far: pass it as `since` to wait only for later ones. */
  get eventCount(): number {
    return this.qmpClient?.events.length ?? 0;
  }

  /**
   * Waits for this VM's migration (source or destination side) to end, as QEMU announces it
   * with a MIGRATION event: completed, failed or cancelled. No command is polled meanwhile, so
   * a destination whose main loop is blocked by the load (multifd, a slow device) is not
   * mistaken for a hung one; the wait ends at once when QEMU exits, and otherwise is bounded
   * by `timeoutMs` (generous: it only bounds a real hang). Returns query-migrate's answer.
   */
  async waitMigrationEnd(opts: { since?: number; timeoutMs?: number; what?: string } = {}): Promise<MigrationInfo> {
    if (!this.qmpClient) throw this.failure('QMP not connected');
    const timeoutMs = opts.timeoutMs ?? 300_000;
    const what = opts.what ?? 'the migration to end';
    const ended = this.qmpClient.waitEvent(
      (e) => e.event === 'MIGRATION' && ['completed', 'failed', 'cancelled'].includes((e.data as { status?: string } | undefined)?.status ?? ''),
      { since: opts.since ?? 0, timeoutMs, what: `MIGRATION event ending ${what}` },
    );
    const exited = new Promise<never>((_, reject) => {
      this.exitWaiters.push(() => reject(this.failure(`exited while waiting for ${what}`)));
    });
    exited.catch(() => undefined);
    let status: string;
    try {
      status = ((await Promise.race([ended, exited])).data as { status: string }).status;
    } catch (err) {
      if (this.exited || (await this.waitExit(3_000))) throw this.failure(`exited while waiting for ${what}`);
      throw this.failure((err as Error).message);
    }
    // A destination whose load failed exits right after the event: then the event is all there is.
    return ((await this.qmp('query-migrate').catch(() => undefined)) as MigrationInfo | undefined) ?? { status };
  }

  /** The default transport for this build: `file:` needs 8.2+. */
  defaultTransport(): 'file' | 'exec' {
    return this.binary.version.startsWith('7.') ? 'exec' : 'file';
  }

  /** Migrates the VM's state into `path` and waits (bounded) for query-migrate "completed". */
  async migrateToFile(path: string, opts: MigrateOptions = {}): Promise<MigrationInfo> {
    const transport = opts.transport ?? this.defaultTransport();
    const uri = transport === 'file' ? `file:${path}` : `exec:cat > ${shellQuote(path)}`;
    const timeoutMs = opts.timeoutMs ?? 60_000;
    await this.qmp('migrate', { uri });
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const info = (await this.qmp('query-migrate')) as MigrationInfo;
      if (info.status === 'completed') return info;
      if (info.status === 'failed' || info.status === 'cancelled') {
        throw this.failure(`migration to ${uri} ${info.status}: ${info['error-desc'] ?? 'no error-desc'}`);
      }
      if (Date.now() > deadline) {
        await this.qmp('migrate_cancel').catch(() => undefined);
        throw this.failure(`migration to ${uri} not completed after ${timeoutMs} ms (status ${info.status})`);
      }
      if (opts.onPoll) await opts.onPoll(info);
      await sleep(25);
    }
  }

  /** On a VM started with incomingDefer: loads `path` and waits until it leaves `inmigrate`. */
  async migrateIncomingFile(path: string, opts: MigrateOptions = {}): Promise<string> {
    const transport = opts.transport ?? this.defaultTransport();
    const uri = transport === 'file' ? `file:${path}` : `exec:cat ${shellQuote(path)}`;
    const since = this.eventCount;
    await this.qmp('migrate-incoming', { uri });
    const info = await this.waitMigrationEnd({ since, timeoutMs: opts.timeoutMs, what: `the incoming load of ${path}` });
    if (info.status !== 'completed') {
      if (this.exited || (await this.waitExit(3_000))) throw this.failure(`exited during the incoming load of ${path}`);
      throw this.failure(`the incoming load of ${path} ${info.status}: ${info['error-desc'] ?? 'no error-desc'}`);
    }
    // The MIGRATION event comes slightly before the runstate changes: poll the runstate (QEMU
    // answers promptly now that the load is over).
    return this.waitStatus((s) => s !== 'inmigrate', 20_000, `the runstate after the incoming load of ${path}`);
  }

  /** Asks QEMU to quit; SIGKILL if it has not exited within 5 s. */
  async quit(): Promise<void> {
    if (this.exited) return;
    const gone = this.waitExit(5_000);
    await this.qmpClient?.execute('quit', undefined, { timeoutMs: 5_000 }).catch(() => undefined);
    if (!(await gone)) await this.kill();
  }

  /** SIGKILL and wait (bounded) for the exit. Safe to call repeatedly. */
  async kill(): Promise<void> {
    if (!this.exited) {
      this.killNow();
      await this.waitExit(5_000);
    }
    this.cleanup();
  }

  /** Synchronous SIGKILL, for process-exit handlers. */
  killNow(): void {
    this.qmpClient?.close();
    if (!this.exited) {
      try { this.proc.kill('SIGKILL'); } catch { /* already gone */ }
    }
  }

  private waitExit(timeoutMs: number): Promise<boolean> {
    if (this.exited) return Promise.resolve(true);
    return new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.exitWaiters.push(() => { clearTimeout(timer); resolve(true); });
    });
  }

  private cleanup(): void {
    if (this.released || !this.exited) return;
    this.released = true;
    this.qmpClient?.close();
    live.delete(this);
    this.releaseSlot();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
