// `npm run bench [-- --quick]`: the data path against QEMU's loop and the C limit.
// Contenders, same workload, same run: the C limit and QEMU's sequential loop in C
// (bench/c/cbench.c), QEMU's loop in Node, migbridge save to a tmpfs file (QEMU and
// interleaved framing), to a unix socket drained by another process, with the thread-pool
// fallback forced, and restore from the saved file. Devices: named pipes fed by the C
// limit's producers (bench/fifo-device.ts). Writes bench/results/<time>.json and .md;
// with --quick the last stdout line is the ratios object.
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { ChildJob, ChildResult } from './child.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const MiB = 1 << 20;

interface Point {
  model: 'a' | 'b' | 'c';
  n: number;
  size: number;
}
interface Sample {
  /** Bytes over `window`. */
  gbps: number;
  /** From all devices stopped to the last byte written (migbridge save: its measured downtime; the loops: first to last byte; restore: the whole call). */
  window: number;
  /** The whole call (migbridge: FSM steps, stream header/trailer, fsync and rename included). */
  seconds: number;
  cpuSeconds: number;
  peakRssMiB: number;
  rssOverheadMiB: number;
  /** migbridge save: its downtime estimate before the stop (the JSON keeps it beside `window`, the actual). */
  downtimeEstimateMs?: number;
}
type Measured = Exclude<keyof Sample, 'downtimeEstimateMs'>;
type Contender = (p: Point, dir: string) => Promise<ChildResult>;

/** Model (b)'s firmware time per 1 MiB (`--latency-us`, default 200; see bench/c/cbench.c for where a reader pays it). */
let modelBLatencyUs = 200;
const latencyUs = (m: Point['model']) => (m === 'b' ? modelBLatencyUs : 0);
/** Model (c): device 0 holds 4x the size, the others a sixteenth of it. */
const sizesOf = (p: Point) => Array.from({ length: p.n }, (_, i) => (p.model !== 'c' ? p.size : i === 0 ? p.size * 4 : p.size / 16));

function cbench(): string {
  const out = path.join(root, 'build', 'bench', 'cbench');
  mkdirSync(path.dirname(out), { recursive: true });
  execFileSync('cc', ['-O2', '-Wall', '-pthread', '-o', out, path.join(root, 'bench', 'c', 'cbench.c')]);
  return out;
}

function runJson(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.on('error', reject);
    p.on('close', (code) => {
      const line = out.trim().split('\n').pop() ?? '';
      if (code !== 0) return reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${out}`));
      resolve(JSON.parse(line) as ChildResult);
    });
  });
}

/** Starts `cbench mode ...` and returns a promise for its exit. */
function helper(bin: string, args: string[]): { done: Promise<void>; started: Promise<void> } {
  const p = spawn(bin, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  const started = new Promise<void>((r) => p.stdout.once('data', () => r()));
  const done = new Promise<void>((resolve, reject) => p.on('close', (c) => (c === 0 ? resolve() : reject(new Error(`cbench ${args[0]} exited ${c}`)))));
  return { done, started };
}

function fifos(dir: string, tag: string, n: number): string[] {
  const list = Array.from({ length: n }, (_, i) => path.join(dir, `${tag}-${i}`));
  rmSync(list[0]!, { force: true });
  for (const f of list) rmSync(f, { force: true });
  execFileSync('mkfifo', ['-m', '600', ...list]);
  return list;
}

export async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { quick: { type: 'boolean' }, memory: { type: 'boolean' }, repeats: { type: 'string' }, size: { type: 'string' }, 'latency-us': { type: 'string' } } });
  modelBLatencyUs = Number(values['latency-us'] ?? 200);
  const quick = values.quick ?? false;
  // --memory: the far corners of the memory target (N = 32 devices; 4 GiB per device), save
  // and restore only. RSS does not depend on the machine's load, so one run per cell; the
  // 8 GiB streams go to a disk directory (/var/tmp), not tmpfs, and GB/s there is the disk's.
  const memory = values.memory ?? false;
  const repeats = Number(values.repeats ?? (quick ? 3 : memory ? 1 : 5));
  // --size MiB shrinks the quick points (a check of the harness, not a measurement).
  const quickSize = Number(values.size ?? 256) * MiB;
  const points: Point[] = quick
    ? [{ model: 'a', n: 8, size: quickSize }, { model: 'b', n: 8, size: quickSize }]
    : memory
      ? [{ model: 'a', n: 32, size: 256 * MiB }, { model: 'a', n: 2, size: 4096 * MiB }]
      : (['a', 'b', 'c'] as const).flatMap((model) => [16 * MiB, 256 * MiB].flatMap((size) => [1, 4, 8, 16].map((n) => ({ model, n, size }))));
  const only = memory ? new Set(['migbridge-save', 'migbridge-save-interleave', 'migbridge-save-unix', 'migbridge-restore']) : undefined;
  const bin = cbench();
  const dir = mkdtempSync(memory ? '/var/tmp/migbridge-bench-' : '/dev/shm/migbridge-bench-');
  const child = path.join(here, 'child.js');
  const node = (job: ChildJob, env: NodeJS.ProcessEnv = process.env) => runJson(process.execPath, [child, JSON.stringify(job)], env);
  const withProducers = async (p: Point, job: Omit<ChildJob, 'fifos' | 'sizes'>, env?: NodeJS.ProcessEnv) => {
    const sizes = sizesOf(p);
    const list = fifos(dir, 'dev', p.n);
    // One producer process per distinct size (model c has two).
    const procs = [...new Set(sizes)].map((s) => helper(bin, ['produce', String(s), String(latencyUs(p.model)), ...list.filter((_, i) => sizes[i] === s)]));
    const r = await node({ ...job, fifos: list, sizes }, env);
    await Promise.all(procs.map((x) => x.done));
    return r;
  };
  const saved = path.join(dir, 'saved.mig');
  const contenders: Record<string, Contender> = {
    'c-limit': (p) => runJson(bin, ['limit', String(p.size), String(latencyUs(p.model)), String(p.n), path.join(dir, 'c.bin')]),
    'c-sequential': (p) => runJson(bin, ['seq', String(p.size), String(latencyUs(p.model)), String(p.n), path.join(dir, 'c.bin')]),
    'node-sequential': (p) => withProducers(p, { mode: 'seq', out: path.join(dir, 'n.bin') }),
    'migbridge-save': (p) => withProducers(p, { mode: 'save', out: saved }),
    'migbridge-save-interleave': (p) => withProducers(p, { mode: 'save', out: path.join(dir, 'i.mig'), interleave: true }),
    'migbridge-save-threadpool': (p) => withProducers(p, { mode: 'save', out: path.join(dir, 't.mig') }, { ...process.env, MIGBRIDGE_IO: 'threadpool' }),
    'migbridge-save-unix': async (p) => {
      const sock = path.join(dir, 'sink.sock');
      rmSync(sock, { force: true });
      const h = helper(bin, ['sink-unix', sock]);
      await h.started;
      const r = await withProducers(p, { mode: 'save', unix: sock });
      await h.done;
      return r;
    },
    'migbridge-restore': async (p) => {
      const sizes = sizesOf(p);
      const list = fifos(dir, 'dst', p.n);
      const h = helper(bin, ['drain', ...list]);
      const r = await node({ mode: 'restore', fifos: list, sizes, input: saved });
      await h.done;
      return r;
    },
  };
  // The C limit's producers on model (c) are uniform: it and c-sequential run (a)/(b) only.
  const results: { point: Point; contender: string; samples: Sample[] }[] = [];
  const load0 = loadavg()[0]!;
  try {
    await runAll();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  async function runAll(): Promise<void> {
    for (const point of points) {
      for (const [name, run] of Object.entries(contenders)) {
        if (point.model === 'c' && name.startsWith('c-')) continue;
        if (only && !only.has(name)) continue;
        const samples: Sample[] = [];
        for (let i = 0; i < repeats; i++) {
          const r = await run(point, dir);
          // Outputs other than the one restore reads go at once: GiBs left on tmpfs make the
          // next runs pay for page reclaim (charged to whoever allocates), which is noise.
          for (const f of ['c.bin', 'n.bin', 'i.mig', 't.mig']) rmSync(path.join(dir, f), { force: true });
          const window = r.downtimeActualMs !== undefined ? r.downtimeActualMs / 1000 : r.seconds;
          samples.push({
            gbps: r.bytes / window / 1e9,
            window,
            seconds: r.seconds,
            cpuSeconds: r.cpuSeconds,
            peakRssMiB: r.peakRssKiB / 1024,
            rssOverheadMiB: r.idleRssKiB ? (r.peakRssKiB - r.idleRssKiB) / 1024 : 0,
            ...(r.downtimeEstimateMs !== undefined ? { downtimeEstimateMs: r.downtimeEstimateMs } : {}),
          });
        }
        results.push({ point, contender: name, samples });
        process.stderr.write(`${label(point)} ${name}: ${fmt(samples.map((s) => s.gbps))} GB/s\n`);
      }
    }
  }
  const rssOverheadMiB = round(Math.max(...results.filter((r) => r.contender.startsWith('migbridge')).flatMap((r) => r.samples.map((s) => s.rssOverheadMiB))));
  const ratios = memory ? { rssOverheadMiB } : gridRatios(rssOverheadMiB);
  const machine = { modelBLatencyUs, cpus: cpus().length, cpuModel: cpus()[0]?.model ?? '?', loadavgStart: load0, loadavgEnd: loadavg()[0]!, kernel: execFileSync('uname', ['-r']).toString().trim(), node: process.version };
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const outDir = path.join(root, 'bench', 'results');
  const kind = quick ? '-quick' : memory ? '-memory' : '';
  mkdirSync(outDir, { recursive: true });
  writeFileSync(path.join(outDir, `${stamp}${kind}.json`), JSON.stringify({ machine, repeats, ratios, results }, null, 1));
  const md = table(results, machine, ratios, repeats);
  writeFileSync(path.join(outDir, `${stamp}${kind}.md`), md);
  process.stdout.write(md + '\n');
  process.stdout.write(JSON.stringify(ratios) + '\n');

  function gridRatios(rss: number): Record<string, number> {
    const med = (c: string, p: Point, k: Measured = 'gbps') => median(results.find((r) => r.contender === c && same(r.point, p))!.samples.map((s) => s[k]));
    const a = points.find((p) => p.model === 'a' && p.n === 8 && p.size === (quick ? quickSize : 256 * MiB))!;
    const b = points.find((p) => p.model === 'b' && p.n === 8 && p.size === (quick ? quickSize : 256 * MiB))!;
    return {
      limitRatio: round(med('migbridge-save', a) / med('c-limit', a)),
      baselineRatio: round(med('migbridge-save', b) / med('c-sequential', b)),
      baselineRatioInterleave: round(med('migbridge-save-interleave', b) / med('c-sequential', b)),
      // What the machine lets any parallel reader gain on (b) in this run: the C limit over
      // the C sequential loop. When the copy, not the device, is what takes the time, this is
      // far below N/2, and baselineRatio is to be read against it (see bench/README.md).
      baselineBound: round(med('c-limit', b) / med('c-sequential', b)),
      rssOverheadMiB: rss,
      uringVsThreadpool: round(med('migbridge-save', a) / med('migbridge-save-threadpool', a)),
    };
  }
}

const same = (x: Point, y: Point) => x.model === y.model && x.n === y.n && x.size === y.size;
const label = (p: Point) => `(${p.model}) ${p.n} x ${p.size / MiB} MiB`;
const round = (x: number) => Math.round(x * 100) / 100;
function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}
function fmt(xs: number[]): string {
  return `${median(xs).toFixed(2)} (${Math.min(...xs).toFixed(2)}..${Math.max(...xs).toFixed(2)})`;
}

function table(results: { point: Point; contender: string; samples: Sample[] }[], machine: Record<string, unknown>, ratios: Record<string, number>, repeats: number): string {
  const lines = [
    `Machine: ${JSON.stringify(machine)}; ${repeats} runs per cell, median (min..max).`,
    '',
    '| workload | contender | GB/s | stop to last byte s | whole call s | CPU s | peak RSS MiB | RSS overhead MiB |',
    '|---|---|---|---|---|---|---|---|',
  ];
  for (const r of results) {
    const col = (k: Measured) => fmt(r.samples.map((s) => s[k]));
    lines.push(`| ${label(r.point)} | ${r.contender} | ${col('gbps')} | ${col('window')} | ${col('seconds')} | ${col('cpuSeconds')} | ${col('peakRssMiB')} | ${r.contender.startsWith('migbridge') ? col('rssOverheadMiB') : '-'} |`);
  }
  lines.push('', `Ratios: ${JSON.stringify(ratios)}`);
  return lines.join('\n');
}
