// The fuzz regression corpus (test/fixtures/fuzz-regressions): every hostile stream through
// every target in-process (and one target per file through the CLI), refused with the expected typed error code;
// restore leaves every destination RUNNING (the fuzz targets' own checks, test/fuzz/targets.ts).
import test from 'ava';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runCli } from '../fuzz/cli-child.js';
import { runTarget, SimPool, TARGETS, type FuzzInput } from '../fuzz/targets.js';

const DIR = fileURLToPath(new URL('../../../test/fixtures/fuzz-regressions/', import.meta.url));
interface Expected {
  devices: FuzzInput['devices'];
  inputs: Record<string, { code: string; mutation: string }>;
}
const expected = JSON.parse(readFileSync(join(DIR, 'expected.json'), 'utf8')) as Expected;
const files = readdirSync(DIR).filter((f) => f.endsWith('.mig')).sort();
const sims = new SimPool();
test.after.always(() => sims.close());

test('every regression file has its expected outcome written down, and every entry its file', (t) => {
  t.deepEqual(files, Object.keys(expected.inputs).sort());
});

for (const [i, name] of files.entries()) {
  const want = expected.inputs[name];
  const input: FuzzInput = { file: join(DIR, name), channels: [], devices: expected.devices, extractRam: true };
  test.serial(`${name} (${want?.mutation}): every target in-process refuses it with ${want?.code}`, async (t) => {
    for (const target of TARGETS) {
      const o = await runTarget(target, input, sims);
      t.is(o.finding, undefined, `${target}: ${o.finding}`);
      t.is(o.result, want?.code, target);
    }
  });
  // A child process per run is slow: each file goes through one target of the CLI, in turn.
  const target = TARGETS[i % TARGETS.length]!;
  test.serial(`${name}: \`migbridge ${target}\` exits 1 with a JSON ${want?.code} error, no stack trace, under the memory cap`, async (t) => {
    const o = await runCli(target, input);
    t.is(o.finding, undefined, `${target}: ${o.finding}`);
    t.is(o.result, want?.code, target);
  });
}
