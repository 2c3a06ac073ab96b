// No import cycle anywhere in src/: every relative import and re-export (type-only ones too,
// since a type cycle is still two modules that cannot be understood apart) of every .ts file
// is followed, and any path that comes back to a file it started from fails the test. The
// walker is tried first on a planted cycle, so a broken walker cannot pass.
import test from 'ava';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { ROOT } from '../qemu/codec-helpers.js';

const SPECIFIER = /(?:^|[\n;])\s*(?:import|export)\s+(?:type\s+)?(?:[^'";]*?\sfrom\s+)?['"](\.{1,2}\/[^'"]+)['"]/g;

function tsFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? tsFiles(p) : p.endsWith('.ts') ? [p] : [];
  });
}

/** Every cycle found by a depth-first walk, as "a.ts -> b.ts -> a.ts" relative to `root`. */
function importCycles(root: string): string[] {
  const graph = new Map<string, string[]>();
  for (const f of tsFiles(root)) {
    const deps = [...readFileSync(f, 'utf8').matchAll(SPECIFIER)].map((m) => resolve(dirname(f), m[1]!.replace(/\.js$/, '.ts')));
    graph.set(f, deps);
  }
  const state = new Map<string, 'active' | 'done'>();
  const stack: string[] = [];
  const cycles: string[] = [];
  const visit = (f: string): void => {
    state.set(f, 'active');
    stack.push(f);
    for (const d of graph.get(f)!) {
      if (!graph.has(d)) continue;
      if (state.get(d) === 'active') cycles.push([...stack.slice(stack.indexOf(d)), d].map((x) => relative(root, x)).join(' -> '));
      else if (!state.has(d)) visit(d);
    }
    stack.pop();
    state.set(f, 'done');
  };
  for (const f of graph.keys()) if (!state.has(f)) visit(f);
  return cycles;
}

test('the walker finds a planted cycle (through a type-only import and a re-export)', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'migbridge-cycles-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'a.ts'), "import type { B } from './b.js';\nexport type A = B;\n");
  writeFileSync(join(dir, 'b.ts'), "export { c as B } from './c.js';\n");
  writeFileSync(join(dir, 'c.ts'), "import { x } from './a.js';\nexport const c = x;\n");
  writeFileSync(join(dir, 'd.ts'), "import { c } from './c.js';\nexport const d = c;\n");
  t.deepEqual(importCycles(dir), ['a.ts -> b.ts -> c.ts -> a.ts']);
});

test('src/ has no import cycle', (t) => {
  const src = join(ROOT, 'src');
  t.true(tsFiles(src).length > 50, 'the sources are there');
  t.deepEqual(importCycles(src), []);
});
