// Every command, given bad input, reports one typed JSON error: name, code (the errno
// name for file-system errors), message, and the path/offset/device it concerns.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const bin = fileURLToPath(new URL('../../../bin/migbridge.js', import.meta.url));
const fixture = fileURLToPath(new URL('../../../test/fixtures/qemu10-vfio/one-mtty.mig', import.meta.url));
const run = (...args: string[]) => spawnSync(process.execPath, [bin, ...args, '--output=json'], { encoding: 'utf8', timeout: 120_000 });
const dir = mkdtempSync(path.join(tmpdir(), 'migbridge-errjson-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

const missing = path.join(dir, 'no-such-file.mig');
const notStream = path.join(dir, 'text.mig');
writeFileSync(notStream, 'this is not a migration stream\n');
const truncated = path.join(dir, 'truncated.mig');
writeFileSync(truncated, readFileSync(fixture).subarray(0, 3000));
const out = path.join(dir, 'out.mig');

interface Case {
  args: string[];
  status: number;
  /** Fields the error must carry with these values. */
  expect: Record<string, unknown>;
}

const cases: Case[] = [
  { args: ['inspect', missing], status: 1, expect: { name: 'SysError', code: 'ENOENT', path: missing } },
  { args: ['inspect', dir], status: 1, expect: { name: 'SysError', code: 'EISDIR', path: dir } },
  { args: ['inspect', notStream], status: 1, expect: { name: 'StreamError', code: 'ESTREAM_FORMAT', path: notStream, offset: 0 } },
  { args: ['inspect', truncated], status: 1, expect: { name: 'StreamError', code: 'ESTREAM_TRUNCATED', path: truncated } },
  { args: ['inspect', fixture, '--vmdesc', missing], status: 1, expect: { code: 'ENOENT', path: missing } },
  { args: ['rewrite', missing, out], status: 1, expect: { code: 'ENOENT', path: missing } },
  { args: ['rewrite', notStream, out], status: 1, expect: { code: 'ESTREAM_FORMAT', path: notStream, offset: 0 } },
  { args: ['extract', missing, '--out', path.join(dir, 'x')], status: 1, expect: { code: 'ENOENT', path: missing } },
  { args: ['inject', fixture, '-o', out, '--device-data', `0000:00:04.0/vfio=${missing}`], status: 1, expect: { code: 'ENOENT', path: missing } },
  { args: ['reframe', missing, out], status: 1, expect: { code: 'ENOENT', path: missing } },
  { args: ['reframe', notStream, out], status: 1, expect: { code: 'ESTREAM_FORMAT', path: notStream } },
  { args: ['restore', '-i', missing, '--device', 'sim:size=1MiB'], status: 1, expect: { code: 'ENOENT', path: missing } },
  { args: ['save', '--device', 'sim:id=bad,size=2MiB,fail=eio@1MiB', '-o', out], status: 1, expect: { device: 'bad' } },
  { args: ['save', '--device', 'sim:size=1MiB,bogus=1', '-o', out], status: 2, expect: { name: 'UsageError', code: 'EUSAGE' } },
  { args: ['inspect', fixture, '--dump', 'nope'], status: 2, expect: { name: 'UsageError', code: 'EUSAGE' } },
];

for (const c of cases) {
  test(`JSON error shape: ${c.args.map((a) => a.replace(dir, 'DIR').replace(fixture, 'FIXTURE')).join(' ')}`, (t) => {
    const r = run(...c.args);
    t.is(r.status, c.status, r.stderr);
    t.notRegex(r.stderr, /\n\s+at /, 'no stack trace');
    const err = JSON.parse(r.stderr.trim().split('\n').pop()!).error;
    t.is(typeof err.name, 'string');
    t.regex(err.code, /^E[A-Z0-9_]+$/);
    t.is(typeof err.message, 'string');
    t.true(err.message.length > 0);
    for (const [k, v] of Object.entries(c.expect)) t.is(err[k], v, k);
  });
}
