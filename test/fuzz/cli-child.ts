// A target through the real CLI in a child process, as a user runs it: exit status 0 or 1
// only, no stack trace on stderr, a failure reported as a typed JSON error, within a time
// bound, and a peak RSS (GNU time's %M) under the memory cap.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FuzzInput, Outcome, TargetName } from './targets.js';

/** Peak resident set size a CLI run may reach. */
export const MEMORY_CAP_BYTES = 256 << 20;
const CHILD_TIME_LIMIT_MS = 30_000;
const GNU_TIME = '/usr/bin/time';
const BIN = fileURLToPath(new URL('../../../bin/migbridge.js', import.meta.url));

/** True when peak RSS can be measured (GNU time installed). */
export const canMeasureRss = existsSync(GNU_TIME);

function cliArgs(target: TargetName, input: FuzzInput, scratch: string): string[] {
  const multifd = input.channels.flatMap((c) => ['--multifd', c]);
  switch (target) {
    case 'inspect':
      return ['inspect', input.file, ...(input.dumpState ? ['--dump', 'state'] : [])];
    case 'rewrite':
      return ['rewrite', input.file, join(scratch, 'out.mig')];
    case 'extract':
      return ['extract', input.file, ...(input.extractRam ? ['--ram', join(scratch, 'ram')] : []), '--out', join(scratch, 'out')];
    case 'reframe':
      return ['reframe', input.file, join(scratch, 'out.mig'), ...multifd];
    case 'restore':
      return [
        'restore', '-i', input.file, ...multifd,
        ...input.devices.flatMap((d, i) => ['--device', `sim:size=${d.size},seed=${i + 1}`, '--idstr', d.idstr]),
      ];
  }
}

export interface CliOutcome extends Outcome {
  readonly peakRssBytes: number | undefined;
}

export async function runCli(target: TargetName, input: FuzzInput): Promise<CliOutcome> {
  const scratch = await mkdtemp(join(tmpdir(), 'migbridge-fuzz-cli-'));
  const rssFile = join(scratch, 'rss');
  const node = [process.execPath, `--max-old-space-size=${MEMORY_CAP_BYTES >> 20}`, BIN, '--output=json', ...cliArgs(target, input, scratch)];
  const argv = canMeasureRss ? [GNU_TIME, '-f', '%M', '-o', rssFile, ...node] : node;
  try {
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s.slice(0, 64 << 10)));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, CHILD_TIME_LIMIT_MS);
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.on('close', (c, s) => resolve([c, s])));
    clearTimeout(timer);
    // GNU time reports a killed child as "Command terminated by signal N" and exits 128+N.
    const peakKiB = canMeasureRss ? Number((await readFile(rssFile, 'utf8').catch(() => '')).trim().split('\n').pop()) : NaN;
    const peakRssBytes = Number.isFinite(peakKiB) ? peakKiB * 1024 : undefined;
    const findings: string[] = [];
    if (timedOut) findings.push(`no exit within ${CHILD_TIME_LIMIT_MS} ms`);
    else if (signal !== null || (code !== 0 && code !== 1)) findings.push(`exit status ${code ?? signal} (only 0 and 1 are allowed)`);
    if (/^\s+at .+:\d+:\d+\)?$/m.test(stderr)) findings.push('a stack trace on stderr');
    let result = code === 0 ? 'ok' : 'exit ' + String(code ?? signal);
    if (code === 1) {
      const last = stderr.trim().split('\n').pop() ?? '';
      try {
        const err = (JSON.parse(last) as { error?: { code?: unknown; name?: unknown } }).error;
        if (typeof err?.code !== 'string' || err.name === 'Error') findings.push(`untyped JSON error: ${last}`);
        else result = err.code;
      } catch {
        findings.push(`stderr's last line is not a JSON error: ${last.slice(0, 300)}`);
      }
    }
    if (peakRssBytes !== undefined && peakRssBytes > MEMORY_CAP_BYTES) findings.push(`peak RSS ${(peakRssBytes / 2 ** 20).toFixed(0)} MiB over the ${MEMORY_CAP_BYTES >> 20} MiB cap`);
    const outcome = { target, result, peakRssBytes };
    return findings.length ? { ...outcome, finding: `CLI: ${findings.join('; ')}\nstderr: ${stderr.slice(0, 2000)}` } : outcome;
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}
