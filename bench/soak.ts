// Soak (`npm run soak [-- --seconds N]`, default 120 s; not part of npm test or CI): 32
// simulated devices saved with precopy (initial data and dirtying while running) and
// restored into 32 others, round after round until the time is up. Every round each
// destination must verify its data (the simulator's digest check on leaving RESUMING)
// and hold exactly its source's state. Prints, per round and at start and end, the
// process RSS and its open fd count (/proc/self/fd): both must stay flat. Exit 1 on any
// mismatch or failure.
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { restore } from '../src/engine/restore.js';
import { save } from '../src/engine/save.js';
import { openSink } from '../src/engine/sink.js';
import { MigState } from '../src/fsm/index.js';
import { openEvents } from '../src/engine/source.js';
import { createSimDevice } from '../src/vfio/sim/index.js';

const DEVICES = 32;
const SPEC = 'size=2MiB,precopy=512KiB,dirty=1MiB/s';

function parseSeconds(argv: string[]): number {
  const i = argv.indexOf('--seconds');
  if (i < 0) return 120;
  const n = Number(argv[i + 1]);
  if (!Number.isFinite(n) || n <= 0) {
    process.stderr.write('usage: npm run soak -- [--seconds N]\n');
    process.exit(2);
  }
  return n;
}

interface Sample { rssMiB: number; fds: number }
function sample(): Sample {
  return { rssMiB: Math.round((process.memoryUsage().rss / 2 ** 20) * 10) / 10, fds: readdirSync('/proc/self/fd').length };
}

async function main(): Promise<number> {
  const seconds = parseSeconds(process.argv.slice(2));
  const dir = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
  const file = path.join(dir, `migbridge-soak-${process.pid}.mig`);
  const sources = Array.from({ length: DEVICES }, (_, i) => createSimDevice(`sim:id=src${i},seed=${i + 1},${SPEC}`));
  const targets = Array.from({ length: DEVICES }, (_, i) => createSimDevice(`sim:id=dst${i},seed=${1000 + i},size=2MiB`));
  const start = sample();
  console.log(JSON.stringify({ soak: 'start', devices: DEVICES, spec: SPEC, seconds, file, ...start }));
  const deadline = Date.now() + seconds * 1000;
  let rounds = 0;
  let failures = 0;
  let bytes = 0;
  const samples: Sample[] = [];
  try {
    while (Date.now() < deadline) {
      rounds++;
      const t0 = process.hrtime.bigint();
      const saved = await save({ devices: sources, sink: await openSink({ file }), precopy: true });
      // The sources are in STOP: their state is what the stream carries.
      const expected = sources.map((d) => d.stateDigest());
      const restored = await restore({ events: await openEvents({ file }), devices: targets });
      let bad = 0;
      targets.forEach((d, i) => {
        if (!d.resumeResult?.verified || d.stateDigest() !== expected[i]) bad++;
      });
      if (!restored.ok || bad) failures++;
      bytes += saved.totalBytes;
      // Next round: the sources run (and dirty their state) again.
      await Promise.all(sources.map((d) => d.setState(MigState.RUNNING)));
      rmSync(file, { force: true });
      const s = sample();
      samples.push(s);
      const secs = Number(process.hrtime.bigint() - t0) / 1e9;
      console.log(JSON.stringify({ round: rounds, seconds: Number(secs.toFixed(2)), saveSeconds: Number(saved.seconds.toFixed(2)), restoreSeconds: Number(restored.seconds.toFixed(2)), bytes: saved.totalBytes, precopyRounds: saved.precopyRounds, verified: DEVICES - bad, ...s }));
    }
  } finally {
    rmSync(file, { force: true });
    await Promise.all([...sources, ...targets].map((d) => d.close()));
  }
  const end = sample();
  const rss = samples.map((s) => s.rssMiB);
  const fds = samples.map((s) => s.fds);
  console.log(
    JSON.stringify({
      soak: 'end', rounds, failures, totalBytes: bytes, start, end,
      rssMiB: { min: Math.min(...rss), max: Math.max(...rss) },
      fds: { min: Math.min(...fds), max: Math.max(...fds) },
    }),
  );
  return failures === 0 && rounds > 0 ? 0 : 1;
}

process.exitCode = await main();
