// The output-file module on its own: temporary names, commit over a symlink, abort.
import test from 'ava';
import { lstatSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { temporaryNameFor, writeFileAtomically } from '../../src/util/atomic-file.js';

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
