// A private libvirt for the real-libvirt tests: virtlogd and libvirtd started here as
// root in the foreground (children of the test, told to die with it), libvirtd's
// sockets in a scratch directory, one transient TCG domain running the tiny test guest
// (test/helpers/qemu-guest.ts) from a private copy of its boot disk. Everything is torn
// down by `stop()`: the domain destroyed, the daemons terminated and waited for.
//
// Missing libvirt is a failure, never a skip: `scripts/setup.sh --test` installs it.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chmod, chown, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { waitFor } from './cli-run.js';
import { bootSector, COUNTER_GPA } from './qemu-guest.js';


export class LibvirtMissingError extends Error {
  constructor(detail: string) {
    super(`libvirt is not available (${detail}). Install it with: bash scripts/setup.sh --test (libvirt 11 from bookworm-backports)`);
    this.name = 'LibvirtMissingError';
  }
}

function run(cmd: string, args: string[], timeoutMs = 120_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, stdout, stderr: stderr || (err && code === -1 ? String(err) : '') });
    });
  });
}

/** The unprivileged user libvirt runs QEMU as (Debian: libvirt-qemu), for files QEMU writes. */
async function qemuUid(): Promise<number> {
  const r = await run('id', ['-u', 'libvirt-qemu']);
  if (r.code !== 0) throw new LibvirtMissingError('no libvirt-qemu user');
  return Number(r.stdout.trim());
}

/**
 * A root libvirtd keeps its drivers' pid files in /run/libvirt whatever its config says, so
 * a second private libvirtd on the host (another test run, the 1 GiB bench) fails to start.
 * They take turns: this host-wide lock is held (by a `flock` child, released when it exits)
 * from before the daemons start until they are gone. Waits for the holder, not for a time.
 */
const HOST_LOCK = '/run/lock/migbridge-private-libvirt.lock';

async function takeHostLock(): Promise<ChildProcess> {
  const holder = spawn('flock', [HOST_LOCK, 'sh', '-c', 'echo locked; exec cat >/dev/null'], { stdio: ['pipe', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    holder.once('error', (e) => reject(new LibvirtMissingError(`cannot run flock for ${HOST_LOCK}: ${e.message}`)));
    holder.once('exit', (code) => reject(new Error(`flock ${HOST_LOCK} exited (${code}) before taking the lock`)));
    holder.stdout!.once('data', () => resolve());
  });
  return holder;
}

async function releaseHostLock(holder: ChildProcess): Promise<void> {
  const done = exited(holder);
  holder.stdin!.end();
  await done;
}

function exited(p: ChildProcess): Promise<void> {
  return p.exitCode !== null || p.signalCode !== null ? Promise.resolve() : new Promise((resolve) => p.once('exit', () => resolve()));
}

export class PrivateLibvirt {
  private daemons: ChildProcess[] = [];
  private hostLock: ChildProcess | undefined;
  private domains = new Set<string>();
  readonly dir: string;
  /** Directory QEMU (as libvirt-qemu) may write into: pmemsave output. */
  readonly qemuOut: string;
  private readonly uri: string;
  private log = '';

  private constructor(dir: string) {
    this.dir = dir;
    this.qemuOut = join(dir, 'qemu-out');
    this.uri = `qemu+unix:///system?socket=${join(dir, 'sock', 'libvirt-sock')}`;
  }

  static async start(): Promise<PrivateLibvirt> {
    for (const bin of ['libvirtd', 'virtlogd', 'virsh']) {
      const r = await run('sh', ['-c', `command -v ${bin}`]);
      if (r.code !== 0) throw new LibvirtMissingError(`${bin} not found`);
    }
    const ver = await run('virsh', ['--version']);
    if (!/^(\d+)\./.test(ver.stdout) || Number(/^(\d+)\./.exec(ver.stdout)![1]) < 10) throw new LibvirtMissingError(`virsh ${ver.stdout.trim()} is older than 10 (no --image-format)`);
    const dir = await mkdtemp(join(tmpdir(), 'migbridge-libvirt-'));
    const lv = new PrivateLibvirt(dir);
    try {
      lv.hostLock = await takeHostLock();
      // A libvirt started by something that does not take the lock (an older checkout's
      // tests, a system libvirtd) would share the same fixed paths: wait until it is gone.
      for (const deadline = Date.now() + 30 * 60_000; (await run('pidof', ['libvirtd', 'virtlogd'])).code === 0;) {
        if (Date.now() > deadline) throw new Error('another libvirtd or virtlogd kept running for 30 min');
        await sleep(500);
      }
      // QEMU runs as libvirt-qemu: it must reach the boot disk (libvirt chowns the file
      // itself) and write pmemsave output; traversal only, no listing, for the rest.
      await chmod(dir, 0o711);
      await mkdir(join(dir, 'sock'), { mode: 0o700 });
      await mkdir(lv.qemuOut, { mode: 0o700 });
      await chown(lv.qemuOut, await qemuUid(), 0);
      const conf = join(dir, 'libvirtd.conf');
      await writeFile(conf, `unix_sock_dir = "${join(dir, 'sock')}"\nunix_sock_rw_perms = "0700"\nauth_unix_rw = "none"\nauth_unix_ro = "none"\n`, { mode: 0o600 });
      lv.spawnDaemon('virtlogd', ['-p', join(dir, 'virtlogd.pid')]);
      lv.spawnDaemon('libvirtd', ['-f', conf, '-p', join(dir, 'libvirtd.pid')]);
      await waitFor('libvirtd answering on its socket', async () => (await lv.virshRaw(['version'])).code === 0, 60_000);
      return lv;
    } catch (e) {
      await lv.stop();
      throw e;
    }
  }

  private spawnDaemon(cmd: string, args: string[]): void {
    // setpriv --pdeathsig: the daemon gets SIGTERM when this test process dies, however it
    // dies. Without it, a killed test run left libvirtd and virtlogd running, and every later
    // run waited for them (the wait below) until ava gave up.
    const p = spawn('setpriv', ['--pdeathsig', 'SIGTERM', '--', cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    p.stdout!.setEncoding('utf8').on('data', (s: string) => { this.log = (this.log + s).slice(-8000); });
    p.stderr!.setEncoding('utf8').on('data', (s: string) => { this.log = (this.log + s).slice(-8000); });
    p.once('exit', (code, sig) => { this.log += `\n${cmd} exited (${code ?? sig})`; });
    this.daemons.push(p);
  }

  private virshRaw(args: string[], timeoutMs?: number): Promise<{ code: number; stdout: string; stderr: string }> {
    return run('virsh', ['-c', this.uri, ...args], timeoutMs);
  }

  /** Runs virsh against the private daemon; throws with its stderr (and the daemons' log) on failure. */
  async virsh(...args: string[]): Promise<string> {
    const r = await this.virshRaw(args);
    if (r.code !== 0) throw new Error(`virsh ${args.join(' ')} failed (exit ${r.code}): ${r.stderr.trim()}\ndaemon log: ${this.log.slice(-2000)}`);
    return r.stdout;
  }

  /** QMP through libvirt; the `return` value. */
  async qmp(domain: string, execute: string, args?: Record<string, unknown>): Promise<unknown> {
    const out = await this.virsh('qemu-monitor-command', domain, JSON.stringify({ execute, ...(args ? { arguments: args } : {}) }));
    return (JSON.parse(out) as { return: unknown }).return;
  }

  /** The guest's counter dword (COUNTER_GPA), read through HMP `xp`. */
  async counter(domain: string): Promise<number> {
    const out = String(await this.qmp(domain, 'human-monitor-command', { 'command-line': `xp /1wx ${COUNTER_GPA}` }));
    const m = /:\s*0x([0-9a-f]+)/i.exec(out);
    if (!m) throw new Error(`cannot parse xp output ${JSON.stringify(out)}`);
    return parseInt(m[1]!, 16);
  }

  /**
   * Creates a transient TCG domain (64 MiB, no network, the tiny guest's boot disk) and waits
   * until its guest ran (wrote to the serial log). Returns its name and serial log path.
   */
  async createGuest(ramMiB = 64): Promise<{ name: string; serial: string }> {
    const name = `migbridge-lv-${randomBytes(4).toString('hex')}`;
    const disk = join(this.dir, `${name}.img`);
    const img = Buffer.alloc(1 << 20);
    bootSector().copy(img, 0);
    await writeFile(disk, img, { mode: 0o600 });
    const serial = join(this.dir, `${name}.serial`);
    const xml = `<domain type='qemu'>
  <name>${name}</name>
  <memory unit='MiB'>${ramMiB}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='${disk}'/><target dev='hda' bus='ide'/></disk>
    <serial type='file'><source path='${serial}'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
`;
    const xmlFile = join(this.dir, `${name}.xml`);
    await writeFile(xmlFile, xml, { mode: 0o600 });
    this.domains.add(name);
    await this.virsh('create', xmlFile);
    await waitFor(`guest ${name} writing to its serial port`, async () => ((await stat(serial).catch(() => undefined))?.size ?? 0) > 0, 60_000);
    return { name, serial };
  }

  /** Pauses the domain and dumps its guest RAM with QEMU's pmemsave; returns the dump. */
  async pauseAndDumpRam(domain: string, ramMiB = 64): Promise<Buffer> {
    await this.virsh('suspend', domain);
    const file = join(this.qemuOut, `${domain}.pmem`);
    await this.qmp(domain, 'pmemsave', { val: 0, size: ramMiB << 20, filename: file });
    const ram = await readFile(file);
    await rm(file, { force: true });
    return ram;
  }

  async stop(): Promise<void> {
    for (const d of this.domains) await this.virshRaw(['destroy', d]).catch(() => undefined);
    this.domains.clear();
    for (const p of this.daemons.reverse()) {
      if (p.exitCode === null && p.signalCode === null) p.kill('SIGTERM');
      const done = exited(p);
      const timer = setTimeout(() => p.kill('SIGKILL'), 15_000);
      await done;
      clearTimeout(timer);
    }
    this.daemons = [];
    await rm(this.dir, { recursive: true, force: true });
    if (this.hostLock) await releaseHostLock(this.hostLock);
    this.hostLock = undefined;
  }

  daemonLog(): string {
    return this.log;
  }
}
