// `migbridge migrate` on one host with real QEMU 10 (and 7.2 for a refusal): a socket pair
// passed to both QEMUs (getfd), the in-process proxy with a tee, a capability one side lacks,
// a destination whose load fails, a monitor that never answers, and Ctrl-C. Every case checks
// both QEMUs' own state afterwards, not only what migbridge says.
import test, { type ExecutionContext } from 'ava';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspectStreamFile } from '../../src/qemu/index.js';
import type { MigrateReport } from '../../src/migrate/report.js';
import { runningCli, waitFor, type CliResult } from '../helpers/cli-run.js';
import { readCounter } from '../helpers/qemu.js';
import { startPair } from '../helpers/qemu-pair.js';

async function scratch(t: ExecutionContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'migbridge-migrate-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function reportOf(r: CliResult): MigrateReport {
  return JSON.parse(r.stdout) as MigrateReport;
}

function errorOf(r: CliResult): Record<string, unknown> {
  const line = r.stderr.split('\n').find((l) => l.startsWith('{"error"'));
  if (!line) throw new Error(`no JSON error on stderr:\n${r.stderr}`);
  return (JSON.parse(line) as { error: Record<string, unknown> }).error;
}

function show(r: CliResult): string {
  return `exit ${r.code}\nstdout: ${r.stdout.slice(0, 3000)}\nstderr: ${r.stderr.slice(-3000)}`;
}

function migrateCli(t: ExecutionContext, args: string[]): ReturnType<typeof runningCli> {
  return runningCli(['migrate', ...args, '--output=json'], 5 * 60_000, t.teardown.bind(t));
}

test.serial('fd: one socket pair passed to both QEMUs; the running guest goes on counting on the destination; JSON progress lines', async (t) => {
  const { source, destination, counterBefore } = await startPair(t, 'pc-live', { version: '10.0' }, { version: '10.0' });
  const r = await migrateCli(t, ['--src-qmp', `unix:${source.spareQmpPath}`, '--dst-qmp', `unix:${destination.spareQmpPath}`, '--incoming', 'fd']).done;
  t.is(r.code, 0, show(r));
  const rep = reportOf(r);
  t.true(rep.ok);
  t.is(rep.uri, 'fd:migbridge-migration');
  t.is(rep.source.migration, 'completed');
  t.is(rep.destination.runState, 'running');
  t.is(await destination.status(), 'running');
  t.is(await source.status(), 'postmigrate');
  t.true(typeof rep.totalTimeMs === 'number' && rep.totalTimeMs > 0);
  t.true(typeof rep.downtimeMs === 'number');
  t.true((rep.ramBytes ?? 0) > 0);
  // The guest really moved: the destination's counter is past the source's before the migration, and advances.
  const after = await readCounter(destination);
  t.true(after > counterBefore!, `${after} > ${counterBefore}`);
  await waitFor('the counter to advance on the destination', async () => (await readCounter(destination)) > after, 30_000);
  t.log(`fd migration: total ${rep.totalTimeMs} ms, downtime ${rep.downtimeMs} ms, ${rep.passes} passes (machine shared with other runs: noisy)`);
});

test.serial('--via-proxy --tee: the tee is the stream the destination got, inspects clean, and the proxy report matches inspect', async (t) => {
  const dir = await scratch(t);
  const { source, destination } = await startPair(t, 'pc-live', { version: '10.0' }, { version: '10.0' });
  const tee = join(dir, 'tee.mig');
  const r = await migrateCli(t, [
    '--src-qmp', `unix:${source.spareQmpPath}`, '--dst-qmp', `unix:${destination.spareQmpPath}`,
    '--incoming', `unix:${join(dir, 'incoming.sock')}`, '--via-proxy', '--tee', tee,
  ]).done;
  t.is(r.code, 0, show(r));
  const rep = reportOf(r);
  t.is(await destination.status(), 'running');
  const bytes = await readFile(tee);
  const proxy = rep.proxy!;
  t.is(bytes.length, proxy.forwardBytes);
  t.is(proxy.deliveredBytes, bytes.length, 'the destination received every byte the tee holds');
  t.true(proxy.ok, JSON.stringify(proxy));
  const inspected = await inspectStreamFile(tee);
  t.truthy(inspected.vmdesc, 'complete: EOF and VMDESCRIPTION');
  t.is(proxy.eof?.offset, inspected.records.find((x) => x.kind === 'EOF')?.offset);
  t.true(rep.wireDowntimeMs !== null && rep.wireDowntimeMs >= 0, `wire downtime ${String(rep.wireDowntimeMs)} ms`);
  t.deepEqual(await readdir(dir).then((f) => f.filter((n) => n.startsWith('tee.mig'))), ['tee.mig'], 'no temp tee left beside it');
});

test.serial('refused: switchover-ack is not on QEMU 7.2; nothing was changed on either side', async (t) => {
  const { source, destination } = await startPair(t, 'pc-paused', { version: '10.0', machine: 'pc-i440fx-7.2' }, { version: '7.2', machine: 'pc-i440fx-7.2' });
  const r = await migrateCli(t, ['--src-qmp', `unix:${source.spareQmpPath}`, '--dst-qmp', `unix:${destination.spareQmpPath}`, '--caps', 'return-path=on,switchover-ack=on']).done;
  t.is(r.code, 1, show(r));
  const err = errorOf(r);
  t.is(err.code, 'EMIGRATE_REFUSED');
  t.is(err.side, 'destination');
  t.regex(String(err.message), /capability switchover-ack is not available on the destination \(QEMU 7\.2\.\d+\)/);
  t.is(await destination.status(), 'inmigrate');
  const caps = (await destination.qmp('query-migrate-capabilities')) as { capability: string; state: boolean }[];
  t.false(caps.find((c) => c.capability === 'return-path')!.state, 'return-path was not set');
  t.is(((await source.qmp('query-migrate')) as { status?: string }).status, undefined);
});

test.serial('the destination fails its load (different RAM size): exit 1 with QEMU\'s error, the source runs again, the destination is gone', async (t) => {
  const { source, destination } = await startPair(t, 'pc-live', { version: '10.0' }, { version: '10.0', extraArgs: ['-m', '64'] });
  const r = await migrateCli(t, ['--src-qmp', `unix:${source.spareQmpPath}`, '--dst-qmp', `unix:${destination.spareQmpPath}`]).done;
  t.is(r.code, 1, show(r));
  const rep = reportOf(r);
  t.false(rep.ok);
  t.is(rep.failure?.side, 'destination');
  t.is(errorOf(r).code, 'EMIGRATE_FAILED');
  t.regex(destination.stderr, /Size mismatch: pc\.ram/);
  t.regex(rep.failure?.message ?? '', /destination: .*load/, JSON.stringify(rep));
  await waitFor('the destination QEMU to exit', () => destination.hasExited, 30_000);
  t.is(await source.status(), 'running', 'QEMU resumes the source after a failed migration');
});

test.serial('a monitor that never answers: exit 1 naming the socket, within the QMP timeout', async (t) => {
  const dir = await scratch(t);
  const mute = join(dir, 'mute.sock');
  const server = net.createServer(() => { /* accepts, never greets */ });
  server.listen(mute);
  t.teardown(() => { server.close(); });
  const other = join(dir, 'other.sock');
  const r = await migrateCli(t, ['--src-qmp', `unix:${mute}`, '--dst-qmp', `unix:${other}`, '--qmp-timeout', '500']).done;
  t.is(r.code, 1, show(r));
  const err = errorOf(r);
  t.is(err.code, 'EQMP_TIMEOUT');
  t.is(err.path, mute);
  t.is(err.qemu, 'source');
  t.notRegex(r.stderr, /\n\s+at /, 'no stack trace');
});

test.serial('Ctrl-C during a slow migration: migrate_cancel on the source (it runs again), the destination quit, no tee left', async (t) => {
  const dir = await scratch(t);
  const { source, destination } = await startPair(t, 'pc-live', { version: '10.0' }, { version: '10.0' });
  const tee = join(dir, 'tee.mig');
  const cli = migrateCli(t, [
    '--src-qmp', `unix:${source.spareQmpPath}`, '--dst-qmp', `unix:${destination.spareQmpPath}`, '--incoming', `unix:${join(dir, 'in.sock')}`,
    '--via-proxy', '--tee', tee, '--params', 'max-bandwidth=16384', '--max-downtime', '1',
  ]);
  // A progress line means the source is migrating; it cannot converge: the guest dirties 17
  // pages per pass, far more than 1 ms at 16 KiB/s lets QEMU send while stopped.
  await waitFor('a progress line', () => cli.stderr().includes('{"progress"'), 60_000);
  cli.signal('SIGINT');
  const r = await cli.done;
  t.is(r.code, 1, show(r));
  t.is(errorOf(r).code, 'EMIGRATE_CANCELLED');
  const rep = reportOf(r);
  t.is(rep.source.action, 'migrate_cancel', show(r));
  t.is(rep.source.migration, 'cancelled', show(r));
  // The cut stream fails the destination's load and QEMU exits by itself, unless migbridge's quit came first.
  t.true(rep.destination.action === 'quit' || /closed its monitor/.test(rep.destination.error ?? ''), JSON.stringify(rep.destination));
  await waitFor('the destination QEMU to exit', () => destination.hasExited, 30_000);
  t.is(await source.status(), 'running');
  t.false(existsSync(tee));
  t.deepEqual((await readdir(dir)).filter((n) => n.startsWith('tee.mig')), [], 'no partial tee under any name');
});

test('options that do not fit together are refused before any QEMU is contacted (the QMP sockets do not exist)', async (t) => {
  const qmp = ['--src-qmp', 'unix:/nonexistent/src.sock', '--dst-qmp', 'unix:/nonexistent/dst.sock'];
  const cases: [string[], number, string, RegExp][] = [
    [['--incoming', 'unix:/nonexistent/in.sock', '--via-proxy', '--params', 'tls-creds=tls0'], 1, 'EMIGRATE_REFUSED', /cannot decode or tee a TLS stream/],
    [['--incoming', 'unix:/nonexistent/in.sock', '--tee', '/nonexistent/tee.mig'], 1, 'EMIGRATE_REFUSED', /--tee needs --via-proxy/],
    [['--incoming', 'fd', '--caps', 'multifd=on'], 1, 'EMIGRATE_REFUSED', /cannot carry multifd channels/],
    [['--incoming', 'fd', '--via-proxy'], 1, 'EMIGRATE_REFUSED', /--via-proxy forwards to where the destination listens/],
    [['--incoming', 'fd:3'], 2, 'EUSAGE', /QEMU listens on tcp:HOST:PORT or unix:PATH/],
    [['--incoming', 'tcp:10.0.0.2'], 2, 'EUSAGE', /tcp: takes HOST:PORT/],
    [['--caps', 'multifd=yes'], 2, 'EUSAGE', /--caps multifd takes on or off/],
  ];
  for (const [args, code, errCode, message] of cases) {
    const r = await migrateCli(t, [...qmp, ...args]).done;
    t.is(r.code, code, `${args.join(' ')}: ${show(r)}`);
    const err = errorOf(r);
    t.is(err.code, errCode, args.join(' '));
    t.regex(String(err.message), message);
  }
});
