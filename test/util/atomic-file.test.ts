// The output-file module on its own: temporary names, commit over a symlink, abort, stale temporaries.
import test from 'ava';
import { spawn } from 'node:child_process';
import { chownSync, closeSync, existsSync, linkSync, lstatSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { onStalePartialRemoved, temporaryNameFor, writeFileAtomically } from '../../src/util/atomic-file.js';

function scratch(t: { teardown: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'migbridge-outfile-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('temporary names: beside the output, hidden, 16 random hex digits, never twice the same', (t) => {
  const names = new Set<string>();
  for (let i = 0; i < 1000; i++) names.add(temporaryNameFor('/some/dir/out.mig'));
  t.is(names.size, 1000);
  for (const n of [...names].slice(0, 5)) t.regex(n, /^\/some\/dir\/\.out\.mig\.partial-[0-9a-f]{16}$/);
  t.true(Buffer.byteLength(temporaryNameFor('/d/' + 'x'.repeat(255)).split('/').at(-1)!) <= 255, 'a long name stays within NAME_MAX');
});

test('commit replaces a symlink at the final name; its target keeps its content', async (t) => {
  const dir = scratch(t);
  writeFileSync(join(dir, 'target'), 'keep');
  symlinkSync(join(dir, 'target'), join(dir, 'out'));
  await writeFileAtomically(join(dir, 'out'), async (out) => { out.write('new'); });
  t.is(readFileSync(join(dir, 'target'), 'utf8'), 'keep');
  t.false(lstatSync(join(dir, 'out')).isSymbolicLink());
  t.is(readFileSync(join(dir, 'out'), 'utf8'), 'new');
  t.deepEqual(readdirSync(dir).sort(), ['out', 'target']);
});

test('a failing fill leaves the previous file and no temporary one', async (t) => {
  const dir = scratch(t);
  writeFileSync(join(dir, 'out'), 'previous');
  await t.throwsAsync(writeFileAtomically(join(dir, 'out'), async (out) => { out.write('partial'); throw new Error('input broke'); }), { message: 'input broke' });
  t.is(readFileSync(join(dir, 'out'), 'utf8'), 'previous');
  t.deepEqual(readdirSync(dir), ['out']);
});

// Stale temporaries (src/util/stale-partials.ts): what a new output to NAME removes and what it must leave.
const stale = (dir: string, name: string, n: number) => join(dir, `.${name}.partial-${String(n).padStart(16, '0')}`);

test('a new output removes the stale temporaries of the same name, and only those', async (t) => {
  const dir = scratch(t);
  const removed: string[] = [];
  // The listener is process-wide: only this test's directory counts (tests run concurrently).
  const off = onStalePartialRemoved((r) => { if (r.path.startsWith(dir + '/')) removed.push(r.path); });
  t.teardown(off);
  writeFileSync(stale(dir, 'out', 1), 'left by a killed run');
  writeFileSync(stale(dir, 'other', 2), 'another output');
  writeFileSync(join(dir, '.out.partial-notours'), 'not our name form');
  await writeFileAtomically(join(dir, 'out'), async (out) => { out.write('new'); });
  t.deepEqual(removed, [stale(dir, 'out', 1)]);
  t.deepEqual(readdirSync(dir).sort(), ['.other.partial-0000000000000002', '.out.partial-notours', 'out']);
});

test('stale-looking temporaries that are open, symlinks, hard-linked or not ours are left alone', async (t) => {
  const dir = scratch(t);
  const victim = join(dir, 'victim');
  writeFileSync(victim, 'precious');
  // 1: held open by a live process (a run still writing it).
  writeFileSync(stale(dir, 'out', 1), 'being written');
  const held = openSync(stale(dir, 'out', 1), 'r');
  const holder = spawn('sleep', ['600'], { stdio: [held, 'ignore', 'ignore'] });
  closeSync(held); // only the child holds it now
  t.teardown(() => holder.kill());
  // 2: a symlink planted under a temporary name.
  symlinkSync(victim, stale(dir, 'out', 2));
  // 3: a second name of another file.
  linkSync(victim, stale(dir, 'out', 3));
  // 4: owned by someone else.
  writeFileSync(stale(dir, 'out', 4), 'theirs');
  chownSync(stale(dir, 'out', 4), 65534, 65534);
  await writeFileAtomically(join(dir, 'out'), async (out) => { out.write('new'); });
  for (const n of [1, 2, 3, 4]) t.true(existsSync(stale(dir, 'out', n)) || lstatSync(stale(dir, 'out', n)).isSymbolicLink(), `candidate ${n} kept`);
  t.is(readFileSync(victim, 'utf8'), 'precious');
  holder.kill();
  await new Promise((r) => holder.once('exit', r));
  // Once nothing holds it, the next output to the same name removes it.
  await writeFileAtomically(join(dir, 'out'), async (out) => { out.write('newer'); });
  t.false(existsSync(stale(dir, 'out', 1)));
});
