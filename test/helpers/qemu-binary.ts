// Locates the two real QEMU builds the stream tests use: 10.0 from bookworm-backports (the
// system one) and 7.2 from bookworm, unpacked side by side by scripts/qemu72.sh. A missing
// build is a loud failure naming the command that installs it, never a skip.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);

export type QemuVersion = '7.2' | '10.0';
export const QEMU_VERSIONS: readonly QemuVersion[] = ['7.2', '10.0'];

export interface QemuBinary {
  /** Absolute path of qemu-system-x86_64. */
  bin: string;
  /** Arguments every invocation needs before its own (firmware dirs). */
  args: string[];
  env: NodeJS.ProcessEnv;
  /** Exact upstream version, e.g. "7.2.22" or "10.0.2". */
  version: string;
  /** First line of `--version`, including the Debian package version. */
  versionLine: string;
}

/** The checkout's root (the directory holding package.json), from src or dist alike. */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find the migbridge checkout root (no package.json above the test helpers)');
    dir = up;
  }
  return dir;
}

export class QemuMissingError extends Error {
  constructor(what: string, fix: string, detail?: string) {
    super(`${what} is not available${detail ? ` (${detail})` : ''}. Install it with: ${fix}`);
    this.name = 'QemuMissingError';
  }
}

async function versionOf(bin: string, env: NodeJS.ProcessEnv): Promise<{ version: string; versionLine: string }> {
  const { stdout } = await run(bin, ['--version'], { env, timeout: 15_000 });
  const versionLine = stdout.split('\n')[0] ?? '';
  const m = /version (\d+\.\d+\.\d+)/.exec(versionLine);
  if (!m) throw new Error(`cannot parse QEMU version from ${bin}: ${JSON.stringify(versionLine)}`);
  return { version: m[1]!, versionLine };
}

const cache = new Map<QemuVersion, Promise<QemuBinary>>();

/** The QEMU build for `version`, installed or unpacked if needed; throws QemuMissingError if it cannot be. */
export function qemuBinary(version: QemuVersion): Promise<QemuBinary> {
  let p = cache.get(version);
  if (!p) {
    p = version === '10.0' ? system10() : unpacked72();
    cache.set(version, p);
    p.catch(() => cache.delete(version));
  }
  return p;
}

async function system10(): Promise<QemuBinary> {
  const bin = '/usr/bin/qemu-system-x86_64';
  const fix = 'bash scripts/setup.sh --test   (apt-get install -t bookworm-backports qemu-system-x86)';
  if (!existsSync(bin)) throw new QemuMissingError('QEMU 10.0', fix, `${bin} does not exist`);
  const env = { ...process.env };
  const v = await versionOf(bin, env);
  if (!v.version.startsWith('10.0.')) throw new QemuMissingError('QEMU 10.0', fix, `${bin} is ${v.versionLine}`);
  return { bin, args: [], env, ...v };
}

async function unpacked72(): Promise<QemuBinary> {
  const script = join(repoRoot(), 'scripts', 'qemu72.sh');
  const fix = `bash ${script}   (or: bash scripts/setup.sh --test)`;
  let dir: string;
  try {
    // Fast when already unpacked (no apt at all); otherwise downloads about 12 MB.
    const { stdout } = await run('bash', [script], { timeout: 300_000, maxBuffer: 1 << 20 });
    dir = stdout.trim().split('\n').pop() ?? '';
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new QemuMissingError('QEMU 7.2', fix, (e.stderr ?? e.message).trim().split('\n').slice(-3).join(' | '));
  }
  const root = join(dir, 'root');
  const bin = join(root, 'usr', 'bin', 'qemu-system-x86_64');
  if (!existsSync(bin)) throw new QemuMissingError('QEMU 7.2', fix, `${bin} missing after running the script`);
  const env: NodeJS.ProcessEnv = { ...process.env };
  // Extra libraries the script may have unpacked for this build go first.
  const libDir = join(dir, 'lib');
  if (existsSync(libDir)) env.LD_LIBRARY_PATH = [libDir, process.env.LD_LIBRARY_PATH].filter(Boolean).join(':');
  // Debian builds TCG as a module, and a module loads only into its own build: make sure
  // 7.2 never looks at the system (10.0) module dir.
  env.QEMU_MODULE_DIR = join(root, 'usr', 'lib', 'x86_64-linux-gnu', 'qemu');
  const v = await versionOf(bin, env);
  if (!v.version.startsWith('7.2.')) throw new QemuMissingError('QEMU 7.2', fix, `${bin} is ${v.versionLine}`);
  // The binary is relocatable (it already searches ../share/qemu, ../share/seabios and
  // ../lib/ipxe/qemu next to itself); -L makes its own firmware win explicitly anyway.
  const args = ['-L', join(root, 'usr', 'share', 'seabios'), '-L', join(root, 'usr', 'share', 'qemu'), '-L', join(root, 'usr', 'lib', 'ipxe', 'qemu')];
  return { bin, args, env, ...v };
}
