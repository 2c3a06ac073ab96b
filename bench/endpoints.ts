// Throughput by endpoint kind: the same stream over a unix socket and over loopback TCP.
// `node dist/bench/endpoints.js [--size 2GiB] [--runs 3] [--ipv6]`, under
// `flock /tmp/migbridge-heavy.lock` on a shared machine (not a test: figures vary with load).
//
// A stream is saved once (`save --device sim:size=SIZE -o`, in /dev/shm). Each sample then
// sends it, in another process, through save's own sink (openSink: the connected socket's fd
// written with io_uring writev, 1 MiB records) to a receiver process that drains it:
//  - direct: sender -> receiver over the endpoint (what `save --to EP` does);
//  - proxy:  sender -> `migbridge proxy --listen EP --to EP2` -> receiver (both legs the kind).
// The sim's content generator is not in the loop (it is slower than either transport). The
// rate is the receiver's bytes over its time from first to last byte. Kinds alternate so a
// drift in the machine's load hits both. Prints a table and, last, one JSON line with the
// medians and the tcp/unix ratios.
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openSink } from '../src/engine/sink.js';
import { parseEndpoint } from '../src/util/endpoint.js';

const CLI = fileURLToPath(new URL('../../bin/migbridge.js', import.meta.url));
const SELF = fileURLToPath(import.meta.url);

/** `--send EP FILE`: the sender process, the file through save's sink to EP. */
async function send(to: string, file: string): Promise<void> {
  const sink = await openSink({ endpoint: parseEndpoint(to, '--to', 'connect') });
  const fd = openSync(file, 'r');
  try {
    for (;;) {
      const chunk = Buffer.allocUnsafe(1 << 20);
      const n = readSync(fd, chunk, 0, chunk.length, null);
      if (n === 0) break;
      await sink.write(n === chunk.length ? chunk : chunk.subarray(0, n));
    }
    await sink.commit();
  } finally {
    closeSync(fd);
  }
}

// The receiver: listens (tcp port 0 or a unix path), prints where, drains, prints bytes and ns.
const DRAIN = `
const net = require('net');
const [kind, where] = process.argv.slice(1);
const server = net.createServer((s) => {
  let bytes = 0, t0 = 0n;
  s.on('data', (c) => { if (!bytes) t0 = process.hrtime.bigint(); bytes += c.length; });
  s.on('end', () => { const ns = process.hrtime.bigint() - t0; console.log(JSON.stringify({ bytes, ns: Number(ns) })); server.close(); });
});
const ready = () => console.log(JSON.stringify({ at: kind === 'unix' ? 'unix:' + where : 'tcp:' + (where.includes(':') ? '[' + where + ']' : where) + ':' + server.address().port }));
kind === 'unix' ? server.listen(where, ready) : server.listen(0, where, ready);
`;

/** Lines of a stream, awaited one by one. */
function lineReader(stream: NodeJS.ReadableStream): AsyncGenerator<string> {
  const waiting: ((l: string) => void)[] = [];
  const queued: string[] = [];
  let partial = '';
  stream.setEncoding('utf8');
  stream.on('data', (s: string) => {
    const parts = (partial + s).split('\n');
    partial = parts.pop()!;
    for (const l of parts) (waiting.shift() ?? ((x: string) => queued.push(x)))(l);
  });
  async function* lines(): AsyncGenerator<string> {
    for (;;) yield queued.shift() ?? await new Promise<string>((r) => waiting.push(r));
  }
  return lines();
}

interface Proc { lines: AsyncGenerator<string>; errLines: AsyncGenerator<string>; done: Promise<number | null>; stdout: () => string }

function run(cmd: string, args: string[]): Proc {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (s: Buffer) => { out += s.toString(); });
  const lines = lineReader(child.stdout);
  const errLines = lineReader(child.stderr);
  return { lines, errLines, done: new Promise((r) => child.on('close', r)), stdout: () => out };
}

async function firstJson<T>(p: Proc): Promise<T> {
  return JSON.parse((await p.lines.next()).value as string) as T;
}

interface Sample { path: 'direct' | 'proxy'; kind: 'unix' | 'tcp'; bytes: number; GBps: number }

async function once(path: Sample['path'], kind: Sample['kind'], stream: string, host: string, dir: string, n: number): Promise<Sample> {
  const where = kind === 'unix' ? join(dir, `drain-${n}.sock`) : host;
  const drain = run(process.execPath, ['-e', DRAIN, kind, where]);
  const { at } = await firstJson<{ at: string }>(drain);
  let to = at;
  let proxy: Proc | undefined;
  if (path === 'proxy') {
    const listen = kind === 'unix' ? `unix:${join(dir, `proxy-${n}.sock`)}` : `tcp:${host.includes(':') ? `[${host}]` : host}:0`;
    proxy = run(process.execPath, [CLI, 'proxy', '--listen', listen, '--to', at, '--output=json', '--progress']);
    to = await proxyEndpoint(proxy);
  }
  const sender = run(process.execPath, [SELF, '--send', to, stream]);
  if ((await sender.done) !== 0) throw new Error(`the sender failed: ${sender.stdout()}`);
  const got = await firstJson<{ bytes: number; ns: number }>(drain);
  await drain.done;
  if (proxy && (await proxy.done) !== 0) throw new Error(`proxy failed: ${proxy.stdout().slice(0, 2000)}`);
  return { path, kind, bytes: got.bytes, GBps: got.bytes / got.ns };
}

/** The proxy's bound endpoint, from its listening note (a tcp port 0 becomes the chosen port). */
async function proxyEndpoint(proxy: Proc): Promise<string> {
  for (;;) {
    const line = (await proxy.errLines.next()).value as string;
    const note = line.startsWith('{"note"') ? (JSON.parse(line) as { note: { type: string; endpoint?: string } }).note : undefined;
    if (note?.type === 'listening') return note.endpoint!;
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv[0] === '--send') return send(argv[1]!, argv[2]!);
  const opt = (name: string, def: string): string => { const i = argv.indexOf(`--${name}`); return i >= 0 ? argv[i + 1]! : def; };
  const size = opt('size', '2GiB');
  const runs = Number(opt('runs', '3'));
  const host = argv.includes('--ipv6') ? '::1' : '127.0.0.1';
  const dir = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'migbridge-bench-ep-'));
  const samples: Sample[] = [];
  try {
    const stream = join(dir, 'stream.mig');
    const saved = spawnSync(process.execPath, [CLI, 'save', '--device', `sim:seed=1,size=${size}`, '-o', stream], { stdio: 'inherit' });
    if (saved.status !== 0) throw new Error('the stream could not be saved');
    let n = 0;
    for (let r = 0; r < runs; r++) {
      for (const path of ['direct', 'proxy'] as const) {
        for (const kind of ['unix', 'tcp'] as const) {
          const s = await once(path, kind, stream, host, dir, n++);
          samples.push(s);
          console.log(`${path.padEnd(6)} ${kind.padEnd(5)} ${(s.bytes / 2 ** 30).toFixed(2)} GiB  ${s.GBps.toFixed(3)} GB/s`);
        }
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const summary: Record<string, number> = {};
  for (const path of ['direct', 'proxy'] as const) {
    for (const kind of ['unix', 'tcp'] as const) summary[`${path}-${kind}-GBps`] = median(samples.filter((s) => s.path === path && s.kind === kind).map((s) => s.GBps));
    summary[`${path}-tcp/unix`] = summary[`${path}-tcp-GBps`]! / summary[`${path}-unix-GBps`]!;
  }
  console.log(JSON.stringify({ size, runs, host, ...summary }));
}

await main();
