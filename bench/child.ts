// One measured run of a Node contender, in its own process so that its CPU time and peak
// RSS are its own: `node dist/bench/child.js '<json job>'` prints one JSON line.
// Jobs: save (to a file or a unix socket), restore (from a file), seq (QEMU's loop in Node:
// devices one after another, 1 MiB readSync, writevSync of header + chunk).
import { closeSync, openSync, readFileSync, readSync, writevSync } from 'node:fs';
import { restore } from '../src/engine/restore.js';
import { save } from '../src/engine/save.js';
import { openSink } from '../src/engine/sink.js';
import { openEvents } from '../src/engine/source.js';
import { MigState } from '../src/fsm/index.js';
import { defaultEngine } from '../src/native/index.js';
import { FifoDevice } from './fifo-device.js';

export interface ChildJob {
  mode: 'save' | 'restore' | 'seq';
  fifos: string[];
  sizes: number[];
  out?: string;
  unix?: string;
  input?: string;
  interleave?: boolean;
}

export interface ChildResult {
  bytes: number;
  seconds: number;
  cpuSeconds: number;
  peakRssKiB: number;
  idleRssKiB: number;
  io: string;
  downtimeEstimateMs?: number;
  downtimeActualMs?: number;
  /** io engine counters (completions per byte tell the mean read size). */
  engine?: Record<string, number>;
}

function statusKiB(field: 'VmRSS' | 'VmHWM'): number {
  const m = new RegExp(`${field}:\\s+(\\d+)`).exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) : 0;
}

async function run(job: ChildJob): Promise<Omit<ChildResult, 'cpuSeconds' | 'peakRssKiB' | 'idleRssKiB' | 'io'>> {
  const devices = job.fifos.map((f, i) => new FifoDevice(`bench${i}`, f, job.sizes[i]!));
  if (job.mode === 'save') {
    const sink = await openSink(job.unix ? { endpoint: { kind: 'unix', path: job.unix } } : { file: job.out! });
    const t0 = performance.now();
    const r = await save({ devices, sink, interleave: job.interleave ?? false });
    return { bytes: r.totalBytes, seconds: (performance.now() - t0) / 1000, downtimeEstimateMs: r.downtime.estimateMs, downtimeActualMs: r.downtime.actualMs };
  }
  if (job.mode === 'restore') {
    const t0 = performance.now();
    const r = await restore({ devices, events: await openEvents({ file: job.input! }) });
    return { bytes: r.totalBytes, seconds: (performance.now() - t0) / 1000 };
  }
  const out = openSync(job.out!, 'w', 0o600);
  const buf = Buffer.allocUnsafe(1 << 20);
  const hdr = Buffer.alloc(16);
  hdr.writeBigUInt64BE(0xffffffffef100004n, 0);
  let bytes = 0;
  const t0 = performance.now();
  for (const d of devices) {
    const data = (await d.setState(MigState.STOP_COPY))!;
    for (let n = readSync(data.fd, buf); n > 0; n = readSync(data.fd, buf)) {
      hdr.writeBigUInt64BE(BigInt(n), 8);
      writevSync(out, [hdr, buf.subarray(0, n)]);
      bytes += n;
    }
    await data.close();
  }
  closeSync(out);
  return { bytes, seconds: (performance.now() - t0) / 1000 };
}

const job = JSON.parse(process.argv[2]!) as ChildJob;
// Idle = modules loaded, before the io engine exists: its buffer pool (registered, so
// faulted in at once on io_uring) is part of the overhead being measured.
const idleRssKiB = statusKiB('VmRSS');
const io = job.mode === 'seq' ? 'none' : defaultEngine().info().io;
const cpu0 = process.cpuUsage();
// Status 13 is Node's "the event loop ran empty while a top-level await was unsettled": a
// wait on something that is no I/O op. One restore child ended so once, at load 39, and it
// has not been reproduced since; should it come back, this says what the engine held.
process.on('exit', (code) => {
  if (code !== 13 || job.mode === 'seq') return;
  const e = defaultEngine();
  process.stderr.write(`bench child exit 13 (${job.mode}): ${JSON.stringify({ freeBuffers: e.freeBufferCount(), inFlightBytes: e.inFlightBytes(), stats: e.stats() })}\n`);
});
const r = await run(job);
const cpu = process.cpuUsage(cpu0);
const result: ChildResult = { ...r, cpuSeconds: (cpu.user + cpu.system) / 1e6, peakRssKiB: statusKiB('VmHWM'), idleRssKiB, io };
if (job.mode !== 'seq') result.engine = { ...defaultEngine().stats() };
process.stdout.write(JSON.stringify(result) + '\n');
process.exit(0);
