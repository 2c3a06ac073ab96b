// The CLI only parses arguments and prints: device description, the I/O environment report
// and rewrite are library functions (engine, qemu), and progress drawing lives in src/cli.
// Checked on the sources: no CLI command reaches the device or native layers directly, and
// no engine module writes terminal escapes or touches a tty.
import test from 'ava';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const src = fileURLToPath(new URL('../../../src/', import.meta.url));
const sources = (dir: string): { file: string; text: string }[] =>
  readdirSync(join(src, dir), { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.ts'))
    .map((f) => ({ file: join(dir, f), text: readFileSync(join(src, dir, f), 'utf8') }));
const imports = (text: string): string[] => [...text.matchAll(/^import [^;]*? from '([^']+)'/gms)].map((m) => m[1]!);

test('src/cli imports neither src/native nor src/vfio (only the size parser of sim specs)', (t) => {
  const files = sources('cli');
  t.true(files.length > 10);
  const bad = files.flatMap(({ file, text }) => imports(text).filter((i) => /\/(native|vfio)\//.test(i) && !i.endsWith('/vfio/sim/spec.js')).map((i) => `${file}: ${i}`));
  t.deepEqual(bad, []);
});

test('src/engine draws nothing: no ANSI escapes, no node:tty', (t) => {
  const files = sources('engine');
  t.true(files.length > 10);
  const bad = files.filter(({ text }) => text.includes('\\x1b') || text.includes('\\u001b') || imports(text).includes('node:tty')).map((f) => f.file);
  t.deepEqual(bad, []);
});
