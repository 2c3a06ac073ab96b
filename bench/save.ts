// Parallel save vs QEMU's way, in the same process: QEMU (without multifd) reads each
// device's data_fd with 1 MiB read() calls, one device after another, in its migration
// thread. The baseline does exactly that (synchronous reads on this thread, a file
// write per chunk); migbridge's save reads every device concurrently through the io
// engine and frames the stream. Same devices (simulated, real pipe fds), same sink kind.
//   node dist/bench/run.js save [--devices 8] [--size 64MiB] [--rate 0] [--repeat 2]
import { closeSync, openSync, readSync, rmSync, writeSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { save } from '../src/engine/save.js';
import { openSink } from '../src/engine/sink.js';
import { MigState } from '../src/fsm/index.js';
import { defaultEngine } from '../src/native/index.js';
import { createSimDevice, parseSize, type SimDevice } from '../src/vfio/sim/index.js';

function devices(n: number, size: string, rate: string): SimDevice[] {
  return Array.from({ length: n }, (_, i) => createSimDevice(`sim:seed=${i + 1},size=${size}${rate !== '0' ? `,rate=${rate}` : ''}`));
}

/** QEMU-style: devices one after another, blocking 1 MiB reads, each chunk written out. */
async function sequentialBaseline(devs: SimDevice[], out: string): Promise<number> {
  const fd = openSync(out, 'w');
  const buf = Buffer.allocUnsafe(1 << 20);
  let total = 0;
  const t0 = process.hrtime.bigint();
  try {
    for (const d of devs) {
      await d.setState(MigState.STOP);
      const data = await d.setState(MigState.STOP_COPY);
      for (;;) {
        const n = readSync(data!.fd, buf, 0, buf.length, null);
        if (n === 0) break;
        writeSync(fd, buf, 0, n);
        total += n;
      }
      await data!.verifyEnd();
      await data!.close();
      await d.setState(MigState.RUNNING);
    }
  } finally {
    closeSync(fd);
  }
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  return total / secs;
}

async function parallelSave(devs: SimDevice[], out: string, interleave: boolean): Promise<number> {
  const t0 = process.hrtime.bigint();
  const r = await save({ devices: devs, sink: await openSink({ file: out }), resumeSource: true, interleave });
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  return r.totalBytes / secs;
}

export async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: { devices: { type: 'string' }, size: { type: 'string' }, rate: { type: 'string' }, repeat: { type: 'string' } },
  });
  const n = Number(values.devices ?? 8);
  const size = values.size ?? '64MiB';
  const rate = values.rate ?? '0';
  const repeat = Number(values.repeat ?? 2);
  const dir = mkdtempSync(path.join(tmpdir(), 'migbridge-bench-'));
  const gib = (bps: number) => (bps / 2 ** 30).toFixed(2);
  console.log(`save bench: ${n} simulated devices x ${size} (${parseSize(size)} B)${rate !== '0' ? `, each producing at most ${rate}/s` : ''}; io ${defaultEngine().info().io}`);
  for (let r = 0; r < repeat; r++) {
    const a = devices(n, size, rate);
    const base = await sequentialBaseline(a, path.join(dir, 'seq.bin'));
    await Promise.all(a.map((d) => d.close()));
    const b = devices(n, size, rate);
    const par = await parallelSave(b, path.join(dir, 'par.mig'), false);
    await Promise.all(b.map((d) => d.close()));
    const c = devices(n, size, rate);
    const inter = await parallelSave(c, path.join(dir, 'inter.mig'), true);
    await Promise.all(c.map((d) => d.close()));
    console.log(
      `  run ${r + 1}: sequential read loop ${gib(base)} GiB/s; migbridge save ${gib(par)} GiB/s (ratio ${(par / base).toFixed(2)}), --interleave ${gib(inter)} GiB/s (ratio ${(inter / base).toFixed(2)})`,
    );
  }
  rmSync(dir, { recursive: true, force: true });
}
