// Throughput of draining N streams of S bytes (QEMU-style 1 MiB reads) through
// the io_uring engine, the engine's worker-pool fallback, a plain Node fs.read
// loop and a small C read() loop, in the same run; prints GB/s and ratios.
//   node dist/bench/run.js uring [--streams 8] [--mib 256] [--repeat 1] [--only pipes|files]
// Pipes are fed by one writer thread per stream; files live on tmpfs (/dev/shm).
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync as fsClose, mkdirSync, openSync, read, readFileSync, rmSync, statSync, writeSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import { IoEngine, closeSync, pipe, setPipeSize, type IoStats } from '../src/native/index.js';
import { cachePath } from '../test/helpers/cache.js';

const here = dirname(fileURLToPath(import.meta.url)); // dist/bench
const root = join(here, '..', '..');
const CHUNK = 1 << 20; // QEMU reads data_fd in 1 MiB chunks

interface Method {
  name: string;
  /** Drains every fd to EOF; resolves the byte count. */
  drain(fds: number[]): Promise<number>;
  stats?(): IoStats;
}

function compileReadLoop(): string {
  const src = join(root, 'bench', 'readloop.c');
  const key = createHash('sha256').update(readFileSync(src)).digest('hex').slice(0, 12);
  const bin = cachePath('bench', `readloop-${key}`);
  if (!existsSync(bin)) {
    mkdirSync(dirname(bin), { recursive: true });
    const r = spawnSync('cc', ['-O2', '-o', bin, src], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`cc failed (apt-get install -y gcc): ${r.error ?? r.stderr}`);
  }
  return bin;
}

function engineMethod(name: string, engine: IoEngine): Method {
  return {
    name,
    stats: () => engine.stats(),
    async drain(fds) {
      const counts = await Promise.all(
        fds.map(async (fd) => {
          let n = 0;
          for (;;) {
            const b = await engine.read(fd);
            const len = b.data.length;
            b.release();
            if (len === 0) return n;
            n += len;
          }
        }),
      );
      return counts.reduce((a, b) => a + b, 0);
    },
  };
}

const nodeFsRead: Method = {
  name: 'node fs.read loop',
  async drain(fds) {
    const readOnce = (fd: number, buf: Buffer): Promise<number> =>
      new Promise((res, rej) => read(fd, buf, 0, buf.length, null, (err, n) => (err ? rej(err) : res(n))));
    const counts = await Promise.all(
      fds.map(async (fd) => {
        const buf = Buffer.allocUnsafe(CHUNK);
        let n = 0;
        for (;;) {
          const got = await readOnce(fd, buf);
          if (got === 0) return n;
          n += got;
        }
      }),
    );
    return counts.reduce((a, b) => a + b, 0);
  },
};

function cReadLoop(bin: string): Method {
  return {
    name: 'C read() loop (serial)',
    drain(fds) {
      return new Promise((resolve, reject) => {
        const argv = [String(CHUNK), ...fds.map((_, i) => String(3 + i))];
        const child = spawn(bin, argv, { stdio: ['ignore', 'pipe', 'inherit', ...fds] });
        let out = '';
        child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
        child.on('error', reject);
        child.on('close', (code) => (code === 0 ? resolve(Number(out.split(' ')[0])) : reject(new Error(`readloop exited ${code}`))));
      });
    },
  };
}

interface Result {
  method: string;
  scenario: string;
  bytes: number;
  seconds: number;
  stats?: IoStats;
}

function diffStats(a: IoStats, b: IoStats): IoStats {
  return {
    enters: b.enters - a.enters,
    sqes: b.sqes - a.sqes,
    wakeups: b.wakeups - a.wakeups,
    completions: b.completions - a.completions,
    maxBatch: b.maxBatch,
  };
}

async function timed(m: Method, scenario: string, fds: number[], go: () => void, after: () => Promise<void>): Promise<Result> {
  const s0 = m.stats?.();
  const t0 = performance.now();
  go();
  const bytes = await m.drain(fds);
  const seconds = (performance.now() - t0) / 1000;
  await after();
  const r: Result = { method: m.name, scenario, bytes, seconds };
  if (s0 && m.stats) r.stats = diffStats(s0, m.stats());
  return r;
}

async function runPipes(m: Method, streams: number, bytes: number): Promise<Result> {
  const pairs = Array.from({ length: streams }, () => pipe());
  for (const [, w] of pairs) setPipeSize(w, CHUNK);
  const start = new Int32Array(new SharedArrayBuffer(4));
  const writers = pairs.map(([, fd]) => new Worker(new URL('./pipe-writer.js', import.meta.url), { workerData: { fd, bytes, start } }));
  await Promise.all(writers.map((w) => new Promise((res, rej) => (w.once('message', res), w.once('error', rej)))));
  const done = writers.map((w) => new Promise((res, rej) => (w.once('message', res), w.once('error', rej))));
  const r = await timed(
    m,
    'pipes',
    pairs.map(([r]) => r),
    () => {
      Atomics.store(start, 0, 1);
      Atomics.notify(start, 0);
    },
    async () => {
      await Promise.all(done);
    },
  );
  for (const [rfd] of pairs) closeSync(rfd);
  return r;
}

function makeFiles(streams: number, bytes: number): string[] {
  const dir = '/dev/shm/migbridge-bench';
  mkdirSync(dir, { recursive: true });
  const chunk = Buffer.alloc(CHUNK, 0xa5);
  return Array.from({ length: streams }, (_, i) => {
    const path = join(dir, `stream-${i}`);
    if (existsSync(path) && statSync(path).size === bytes) return path;
    const fd = openSync(path, 'w');
    for (let left = bytes; left > 0; left -= CHUNK) writeSync(fd, chunk, 0, Math.min(left, CHUNK));
    fsClose(fd);
    return path;
  });
}

async function runFiles(m: Method, paths: string[]): Promise<Result> {
  const fds = paths.map((p) => openSync(p, 'r'));
  const r = await timed(m, 'tmpfs files', fds, () => {}, async () => {});
  for (const fd of fds) fsClose(fd);
  return r;
}

const gbps = (r: Result): number => r.bytes / r.seconds / 1e9;

export async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      streams: { type: 'string', default: '8' },
      mib: { type: 'string', default: '256' },
      repeat: { type: 'string', default: '1' },
      only: { type: 'string' },
    },
  });
  const streams = Number(values.streams);
  const bytes = Number(values.mib) * CHUNK;
  const repeat = Number(values.repeat);
  const uring = IoEngine.open({ force: 'io_uring' });
  const pool = IoEngine.open({ force: 'threadpool' });
  const methods: Method[] = [
    engineMethod('engine io_uring', uring),
    engineMethod('engine threadpool', pool),
    nodeFsRead,
    cReadLoop(compileReadLoop()),
  ];
  console.log(`# ${streams} streams x ${values.mib} MiB, ${CHUNK >> 10} KiB reads; best of ${repeat}`);
  console.log(`# io_uring engine: ${JSON.stringify(uring.info())}`);
  const scenarios: { name: string; run(m: Method): Promise<Result> }[] = [];
  if (values.only !== 'files') scenarios.push({ name: 'pipes', run: (m) => runPipes(m, streams, bytes) });
  if (values.only !== 'pipes') {
    const paths = makeFiles(streams, bytes);
    scenarios.push({ name: 'tmpfs files', run: (m) => runFiles(m, paths) });
  }
  const json: unknown[] = [];
  for (const sc of scenarios) {
    const best: Result[] = [];
    for (const m of methods) {
      let b: Result | undefined;
      for (let i = 0; i < repeat; i++) {
        const r = await sc.run(m);
        if (r.bytes !== streams * bytes) throw new Error(`${m.name}: moved ${r.bytes} bytes, expected ${streams * bytes}`);
        if (!b || r.seconds < b.seconds) b = r;
      }
      best.push(b!);
    }
    const base = best.find((r) => r.method.startsWith('C '))!;
    console.log(`\n## ${sc.name}`);
    console.log('method                     GB/s    x C loop   completion path');
    for (const r of best) {
      const s = r.stats;
      const path = s && s.completions
        ? `${s.sqes} SQEs in ${s.enters} enters; ${s.completions} completions in ${s.wakeups} wakeups (${(s.completions / s.wakeups).toFixed(2)}/wakeup)`
        : '';
      console.log(`${r.method.padEnd(26)} ${gbps(r).toFixed(2).padStart(5)}    ${(gbps(r) / gbps(base)).toFixed(2).padStart(5)}     ${path}`);
      json.push({ scenario: sc.name, method: r.method, gbps: +gbps(r).toFixed(3), ratioToC: +(gbps(r) / gbps(base)).toFixed(3), stats: s });
    }
  }
  console.log(`\n${JSON.stringify(json)}`);
  await uring.shutdown();
  await pool.shutdown();
  rmSync('/dev/shm/migbridge-bench', { recursive: true, force: true });
}
