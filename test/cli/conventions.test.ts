// CLI conventions through the real binary: several-valued options in both spellings,
// declared operands (stray words are usage errors), --version, group help, exit 2 for
// every usage error.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { spreadSeveralValues } from '../../src/cli/parse.js';

const bin = fileURLToPath(new URL('../../../bin/migbridge.js', import.meta.url));
const fixtures = fileURLToPath(new URL('../../../test/fixtures/', import.meta.url));
const run = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 120_000 });
const dir = mkdtempSync(path.join(tmpdir(), 'migbridge-conv-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

test('spreadSeveralValues: words after a several-valued option are its values, up to the next option or --', (t) => {
  const options = { device: { type: 'string' as const, multiple: true, short: 'd' }, out: { type: 'string' as const, short: 'o' }, force: { type: 'boolean' as const } };
  t.deepEqual(spreadSeveralValues(['--device', 'a', 'b', '-o', 'x'], options), ['--device=a', '--device=b', '-o', 'x']);
  t.deepEqual(spreadSeveralValues(['-d', 'a', 'b'], options), ['--device=a', '--device=b']);
  t.deepEqual(spreadSeveralValues(['--device=a', 'b', '--force', 'IN'], options), ['--device=a', '--device=b', '--force', 'IN']);
  t.deepEqual(spreadSeveralValues(['--device', 'a', '--', 'IN'], options), ['--device=a', 'IN']);
  t.deepEqual(spreadSeveralValues(['IN', '--out', 'x', 'y'], options), ['IN', '--out', 'x', 'y']);
  t.deepEqual(spreadSeveralValues(['--device'], options), ['--device']);
});

test('save --device A B and --device A --device B both save two devices', (t) => {
  for (const form of [
    ['--device', 'sim:id=a,size=1MiB', 'sim:id=b,size=1MiB'],
    ['--device', 'sim:id=a,size=1MiB', '--device', 'sim:id=b,size=1MiB'],
  ]) {
    const file = path.join(dir, `two-${form.length}.mig`);
    const r = run('save', ...form, '-o', file, '--output=json');
    t.is(r.status, 0, r.stderr);
    t.deepEqual(JSON.parse(r.stdout).devices.map((d: { id: string }) => d.id), ['a', 'b'], form.join(' '));
    const i = JSON.parse(run('inspect', file, '--output=json').stdout);
    t.is(i.vfio.length, 2, form.join(' '));
  }
});

test('reframe IN OUT --multifd ch0 ch1 reads both channels, as the repeated spelling does', (t) => {
  const m = path.join(fixtures, 'qemu10-multifd');
  const ch = [path.join(m, 'channel-0.bin'), path.join(m, 'channel-1.bin')];
  const a = run('reframe', path.join(m, 'main.mig'), path.join(dir, 'a.mig'), '--multifd', ...ch, '--output=json');
  const b = run('reframe', path.join(m, 'main.mig'), path.join(dir, 'b.mig'), '--multifd', ch[0]!, '--multifd', ch[1]!, '--output=json');
  t.is(a.status, 0, a.stderr);
  t.is(b.status, 0, b.stderr);
  t.deepEqual(JSON.parse(a.stdout).multifd.map((c: { path: string }) => c.path), ch);
  t.deepEqual(readFileSync(path.join(dir, 'a.mig')), readFileSync(path.join(dir, 'b.mig')));
});

test('stray operands are usage errors (exit 2) for every command, naming the word', (t) => {
  const f = path.join(fixtures, 'qemu10-vfio', 'one-mtty.mig');
  const cases: string[][] = [
    ['env', 'stray'],
    ['save', '--device', 'sim:size=1MiB', '-o', path.join(dir, 's.mig'), '--precopy', 'stray'],
    ['restore', '-i', f, '--device', 'sim:', '--', 'stray'],
    ['demo', 'stray'],
    ['devices', 'stray'],
    ['proxy', '--listen', 'unix:/x', '--to', 'unix:/y', 'stray'],
    ['inspect', f, 'stray'],
    ['rewrite', f, path.join(dir, 'o.mig'), 'stray'],
    ['extract', f, 'stray', '--out', dir],
    ['inject', f, 'stray', '-o', path.join(dir, 'o.mig')],
    ['reframe', f, path.join(dir, 'o.mig'), 'stray'],
    ['fsm', 'table', '--flags', '7', 'stray'],
    ['fsm', 'path', 'stray', '--flags', '7', '--from', 'stop', '--to', 'running'],
  ];
  for (const c of cases) {
    const r = run(...c, '--output=json');
    t.is(r.status, 2, `${c.join(' ')}: ${r.stderr}`);
    const err = JSON.parse(r.stderr).error;
    t.is(err.code, 'EUSAGE', c.join(' '));
    t.regex(err.message, /"stray"/, c.join(' '));
  }
});

test('missing operands and other usage errors exit 2', (t) => {
  const cases: string[][] = [
    ['inspect'],
    ['rewrite', 'only-in'],
    ['reframe'],
    ['extract'],
    ['save', '--device'],
    ['save', '-o', path.join(dir, 'x.mig')],
    ['save', '--device', 'sim:flags=p2p', '-o', path.join(dir, 'p2p.mig')],
    ['fsm', 'nope'],
    ['--version', 'extra'],
    ['no-such-command'],
  ];
  for (const c of cases) t.is(run(...c).status, 2, c.join(' '));
  const missing = run('rewrite', 'only-in');
  t.regex(missing.stderr, /rewrite needs IN and OUT; OUT is missing/);
  t.regex(run('save', '--device', 'sim:flags=p2p', '-o', path.join(dir, 'p2p.mig')).stderr, /sim flags=p2p: a migration device always has stop-copy/);
});

test('--version prints the package version', (t) => {
  const pkg = JSON.parse(readFileSync(fileURLToPath(new URL('../../../package.json', import.meta.url)), 'utf8'));
  const r = run('--version');
  t.is(r.status, 0);
  t.is(r.stdout.trim(), `migbridge ${pkg.version}`);
  t.deepEqual(JSON.parse(run('--version', '--output=json').stdout), { version: pkg.version });
});

test('a command group without its subcommand prints the group help: exit 2, or 0 with --help', (t) => {
  const bare = run('fsm');
  t.is(bare.status, 2);
  t.regex(bare.stderr, /fsm needs a subcommand \(path or table\)/);
  t.regex(bare.stderr, /usage: migbridge fsm path /);
  t.regex(bare.stderr, /usage: migbridge fsm table /);
  const help = run('fsm', '--help');
  t.is(help.status, 0);
  t.regex(help.stdout, /usage: migbridge fsm path [^]*usage: migbridge fsm table /);
});

test('help documents both spellings of several-valued options', (t) => {
  const r = run('help');
  t.is(r.status, 0);
  t.regex(r.stdout, /`--device A B` or `--device A --device B`/);
  t.regex(run('save', '--help').stdout, /`--device A B` or `--device A --device B`/);
});
