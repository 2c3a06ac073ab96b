// `npm run fuzz -- [--seconds 60] [--seed N] [--inputs N] [--cli-share 0.05] [--findings DIR] [--only TEXT]`
// Hostile variants of real streams through inspect, rewrite, extract, reframe and restore
// (see test/fuzz/*.ts for the corpus, the mutations and the contract each target must keep).
// Prints the seed (same seed and corpus = same inputs), the corpus parts used, the counts;
// exits 1 on any finding, each saved with its description under the findings directory.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import { canMeasureRss, MEMORY_CAP_BYTES, runCli } from './cli-child.js';
import { loadCorpus, STREAM_CACHE, type CorpusEntry, type CorpusPart } from './corpus.js';
import { mutate, Rng, type Mutant } from './mutate.js';
import { runTarget, SimPool, TARGET_TIME_LIMIT_MS, TARGETS, type FuzzInput, type Outcome, type TargetName } from './targets.js';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '60' },
    seed: { type: 'string' },
    inputs: { type: 'string' },
    'cli-share': { type: 'string', default: '0.05' },
    findings: { type: 'string' },
    only: { type: 'string' },
  },
});
const seconds = Number(values.seconds);
const seed = values.seed !== undefined ? BigInt(values.seed) : BigInt(Date.now()) * 1000n + BigInt(process.pid % 1000);
const maxInputs = values.inputs !== undefined ? Number(values.inputs) : Infinity;
const cliShare = Number(values['cli-share']);
const MAX_FINDINGS = 20;
/** A target silent this long is hung inside synchronous code: the watchdog thread ends the run. */
const WATCHDOG_MS = TARGET_TIME_LIMIT_MS * 3;

const scratch = mkdtempSync(join(tmpdir(), 'migbridge-fuzz-run-'));
const findingsDir = values.findings ?? join(tmpdir(), `migbridge-fuzz-findings-${seed}`);
const inputFile = join(scratch, 'input.mig');
const channelFile = (i: number) => join(scratch, `channel-${i}.bin`);

/**
 * The watchdog: a thread with its own event loop, so it still runs while the main thread is
 * stuck in a loop. It saves the input being run and kills the process (exit by SIGKILL).
 */
function startWatchdog(beat: Int32Array): Worker {
  const code = `
    const { workerData } = require('node:worker_threads');
    const fs = require('node:fs');
    const beat = new Int32Array(workerData.sab);
    setInterval(() => {
      const last = Atomics.load(beat, 0);
      if (last && Math.floor(Date.now() / 1000) - last > workerData.limit / 1000) {
        fs.mkdirSync(workerData.findings, { recursive: true });
        const to = workerData.findings + '/hang.mig';
        try { fs.copyFileSync(workerData.input, to); } catch {}
        fs.writeSync(2, 'fuzz: FINDING: a target did not return within ' + workerData.limit + ' ms (stuck in synchronous code); input saved as ' + to + '\\n');
        process.kill(process.pid, 'SIGKILL');
      }
    }, 1000).unref();`;
  const w = new Worker(code, { eval: true, workerData: { sab: beat.buffer, limit: WATCHDOG_MS, findings: findingsDir, input: inputFile } });
  w.unref();
  return w;
}

function writeInput(entry: CorpusEntry, mutant: Mutant, channelIndex: number, inputIndex: number): FuzzInput {
  writeFileSync(inputFile, channelIndex < 0 ? mutant.bytes : entry.main.bytes);
  const channels = entry.channels.map((c, i) => {
    writeFileSync(channelFile(i), i === channelIndex ? mutant.bytes : c.bytes);
    return channelFile(i);
  });
  return { file: inputFile, channels, devices: entry.devices, extractRam: inputIndex % 4 === 0, dumpState: inputIndex % 2 === 1 };
}

interface Finding {
  readonly entry: string;
  readonly how: string;
  readonly outcome: Outcome;
}

function saveFinding(n: number, entry: CorpusEntry, input: FuzzInput, how: string, outcome: Outcome): string {
  mkdirSync(findingsDir, { recursive: true });
  const base = join(findingsDir, `${String(n).padStart(3, '0')}-${entry.name.replace(/[^\w.-]/g, '_')}-${outcome.target}`);
  copyFileSync(input.file, `${base}.mig`);
  input.channels.forEach((c, i) => copyFileSync(c, `${base}.mig.multifd-${i}`));
  writeFileSync(`${base}.txt`, `entry: ${entry.name}\nmutation: ${how}\ntarget: ${outcome.target}\ndevices: ${JSON.stringify(entry.devices)}\n\n${outcome.finding}\n`);
  return `${base}.mig`;
}

async function main(): Promise<number> {
  const t0 = performance.now();
  // --only TEXT: the corpus streams whose name contains TEXT (to dwell on one kind of stream).
  const corpus = (await loadCorpus(scratch)).filter((e) => values.only === undefined || e.name.includes(values.only));
  if (!corpus.length) throw new Error(`no corpus stream matches --only ${values.only}`);
  const parts = new Map<CorpusPart, string[]>();
  for (const e of corpus) parts.set(e.part, [...(parts.get(e.part) ?? []), e.name]);
  console.log(`fuzz: seed ${seed} (replay: npm run fuzz -- --seed ${seed} --seconds ${seconds})`);
  for (const part of ['fixtures', 'qemu-cache', 'saves'] as const) {
    const names = parts.get(part);
    console.log(`fuzz: corpus ${part}: ${names ? `${names.length} stream(s): ${names.join(', ')}` : `none${part === 'qemu-cache' ? ` (no real-QEMU streams cached in ${STREAM_CACHE}: the real-QEMU tests make them)` : ''}`}`);
  }
  // Every top-level record boundary of every stream is a truncation point, taken in turn
  // between the random mutations.
  const boundaries = corpus.flatMap((e) => e.main.layout.records.slice(1).map((at) => ({ e, at })));
  let nextBoundary = 0;

  const rng = new Rng(seed);
  const sims = new SimPool();
  const beat = new Int32Array(new SharedArrayBuffer(4));
  startWatchdog(beat);
  const deadline = performance.now() + seconds * 1000;
  const baseline = process.memoryUsage().rss;
  let peakRss = baseline;
  let childPeak = 0;
  let inputs = 0;
  let cliRuns = 0;
  const runs = new Map<TargetName, number>(TARGETS.map((t) => [t, 0]));
  /** Milliseconds spent in each target. */
  const busy = new Map<TargetName, number>(TARGETS.map((t) => [t, 0]));
  const results = new Map<string, number>();
  const findings: Finding[] = [];
  let fatal = false;
  try {
    while (performance.now() < deadline && inputs < maxInputs && findings.length < MAX_FINDINGS && !fatal) {
      let entry: CorpusEntry;
      let mutant: Mutant;
      let channelIndex = -1;
      if (inputs % 4 === 3 && nextBoundary < boundaries.length) {
        const b = boundaries[nextBoundary++]!;
        entry = b.e;
        mutant = { bytes: b.e.main.bytes.subarray(0, b.at), how: `truncated at record boundary ${b.at}` };
      } else {
        entry = rng.pick(corpus);
        channelIndex = entry.channels.length && rng.chance(0.5) ? rng.below(entry.channels.length) : -1;
        const seedStream = channelIndex < 0 ? entry.main : entry.channels[channelIndex]!;
        mutant = mutate(seedStream.bytes, seedStream.layout, rng);
        if (channelIndex >= 0) mutant = { ...mutant, how: `channel ${channelIndex}: ${mutant.how}` };
      }
      const input = writeInput(entry, mutant, channelIndex, inputs);
      inputs++;
      // Restore is the slow target (device workers): every input of a stream with VFIO
      // sections, a few of the others (which it must refuse).
      const hasVfio = entry.main.layout.vfio.size > 0;
      const targets = TARGETS.filter((t) => t !== 'restore' || hasVfio || rng.chance(0.1));
      const outcomes: Outcome[] = [];
      for (const t of targets) {
        Atomics.store(beat, 0, Math.floor(Date.now() / 1000));
        const started = performance.now();
        outcomes.push(await runTarget(t, input, sims));
        runs.set(t, runs.get(t)! + 1);
        busy.set(t, busy.get(t)! + performance.now() - started);
      }
      if (rng.chance(cliShare)) {
        Atomics.store(beat, 0, Math.floor(Date.now() / 1000));
        const o = await runCli(rng.pick(targets), input);
        cliRuns++;
        childPeak = Math.max(childPeak, o.peakRssBytes ?? 0);
        outcomes.push(o);
      }
      Atomics.store(beat, 0, 0);
      const rss = process.memoryUsage().rss;
      peakRss = Math.max(peakRss, rss);
      if (rss - baseline > MEMORY_CAP_BYTES) {
        outcomes.push({ target: targets[targets.length - 1]!, result: 'memory', finding: `in-process RSS grew by ${((rss - baseline) / 2 ** 20).toFixed(0)} MiB (cap ${MEMORY_CAP_BYTES >> 20} MiB)` });
      }
      for (const o of outcomes) {
        results.set(o.result, (results.get(o.result) ?? 0) + 1);
        if (!o.finding) continue;
        const file = saveFinding(findings.length, entry, input, mutant.how, o);
        findings.push({ entry: entry.name, how: mutant.how, outcome: o });
        console.error(`fuzz: FINDING in ${o.target} on ${entry.name} (${mutant.how}): ${o.finding.split('\n')[0]}\n      saved as ${file}`);
        if (o.result === 'timeout') fatal = true; // the target may still be running: stop here
      }
    }
  } finally {
    Atomics.store(beat, 0, 0);
    await sims.close();
    rmSync(scratch, { recursive: true, force: true });
  }
  const elapsed = (performance.now() - t0) / 1000;
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
  console.log(`fuzz: ${inputs} inputs in ${elapsed.toFixed(1)} s (${seconds} s of fuzzing after loading the corpus); target runs: ${[...runs].map(([t, n]) => `${t} ${n} (${(busy.get(t)! / 1000).toFixed(1)} s)`).join(', ')}; ${cliRuns} through the CLI`);
  console.log(`fuzz: record-boundary truncations ${nextBoundary} of ${boundaries.length}; outcomes: ${[...results].sort((a, b) => b[1] - a[1]).map(([r, n]) => `${r} ${n}`).join(', ')}`);
  console.log(`fuzz: peak RSS in-process ${mib(peakRss)} (start ${mib(baseline)}), CLI children ${cliRuns === 0 ? "none run" : canMeasureRss ? mib(childPeak) : 'not measured (no /usr/bin/time)'}; cap ${mib(MEMORY_CAP_BYTES)}`);
  console.log(`fuzz: ${inputs} inputs, ${findings.length} finding(s)${findings.length ? ` saved under ${findingsDir}` : ''}`);
  return findings.length ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error('fuzz: the harness failed:', e);
    process.exit(2);
  },
);
