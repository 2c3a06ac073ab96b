// The npm package as a user installs it: scripts/pack-check.sh packs a clean copy of this
// checkout (prepack builds dist/), checks the tarball holds only the allow-listed files,
// installs it into an empty folder (building the addon), then runs `npx migbridge inspect`
// on a fixture and the library example from there. Needs npm's cache or registry for
// node-addon-api, and the build tools the README's Install section lists.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const script = fileURLToPath(new URL('../../../scripts/pack-check.sh', import.meta.url));

test('npm pack + npm install into an empty folder: npx migbridge inspect and the library example work', (t) => {
  const r = spawnSync('bash', [script], { encoding: 'utf8', timeout: 280_000 });
  t.is(r.status, 0, `${r.stdout}\n${r.stderr}`);
  const lines = r.stdout.trim().split('\n');
  t.is(lines.at(-1), 'pack-check: ok');
  t.true(lines.includes('pack-check: npx migbridge inspect one-mtty.mig: ok'), r.stdout);
  t.true(lines.includes('pack-check: library example: 2 devices restored, states match'), r.stdout);
  t.regex(r.stdout, /pack-check: tarball holds \d+ files, all allow-listed/);
});
