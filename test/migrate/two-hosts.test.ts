// Two hosts on one machine: network namespaces joined by a veth pair (test/helpers/netns.ts),
// a source QEMU in one and a destination QEMU in the other, migrated over TCP between their
// namespace-only addresses by `migbridge migrate` (which reaches both monitors by their unix
// sockets on the shared file system): direct, with multifd on 4 channels, across versions
// (QEMU 10 with -M pc-i440fx-7.2 to QEMU 7.2), through `migbridge proxy` on each host (unix
// from the source QEMU, TCP between the proxies, unix into the destination QEMU), and with
// the link cut mid-migration. The
// guest's counter on the destination shows it really runs there. Timings are logged; the
// machine is shared with other runs, so they are noisy.
import test, { type ExecutionContext } from 'ava';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ProxyReport } from '../../src/engine/proxy.js';
import type { MigrateReport } from '../../src/migrate/report.js';
import { proxyListening, runningCli, waitFor, type CliResult } from '../helpers/cli-run.js';
import { twoHosts, type TwoHosts } from '../helpers/netns.js';
import { readCounter } from '../helpers/qemu.js';
import type { QemuVersion } from '../helpers/qemu-binary.js';
import { startPair, type Pair } from '../helpers/qemu-pair.js';

const PORT = 4444;

function show(r: CliResult): string {
  return `exit ${r.code}\nstdout: ${r.stdout.slice(0, 4000)}\nstderr: ${r.stderr.slice(-3000)}`;
}

async function hostsAndPair(t: ExecutionContext, versions: [QemuVersion, QemuVersion], machine?: string, tcpRetries2?: number): Promise<{ hosts: TwoHosts; pair: Pair }> {
  const hosts = await twoHosts(t.teardown.bind(t), tcpRetries2 !== undefined ? { tcpRetries2 } : {});
  const pair = await startPair(
    t, 'pc-live',
    { version: versions[0], wrapper: hosts.source.exec, ...(machine ? { machine } : {}) },
    { version: versions[1], wrapper: hosts.destination.exec, ...(machine ? { machine } : {}) },
  );
  return { hosts, pair };
}

function migrateArgs(hosts: TwoHosts, pair: Pair, extra: string[] = [], incoming = `tcp:${hosts.destination.address}:${PORT}`): string[] {
  return [
    'migrate', '--src-qmp', `unix:${pair.source.spareQmpPath}`, '--dst-qmp', `unix:${pair.destination.spareQmpPath}`,
    '--incoming', incoming, '--output=json', ...extra,
  ];
}

/** Runs a migration that must complete; checks the guest runs on (and only on) the destination. */
async function migrated(t: ExecutionContext, hosts: TwoHosts, pair: Pair, extra: string[] = [], incoming?: string): Promise<MigrateReport> {
  const txBefore = await hosts.txBytes(hosts.source);
  const r = await runningCli(migrateArgs(hosts, pair, extra, incoming), 5 * 60_000, t.teardown.bind(t)).done;
  t.is(r.code, 0, show(r));
  const rep = JSON.parse(r.stdout) as MigrateReport;
  const tx = (await hosts.txBytes(hosts.source)) - txBefore;
  t.true(tx >= rep.ramBytes!, `the stream crossed the veth pair: ${tx} bytes sent >= ${rep.ramBytes} RAM bytes`);
  t.true(rep.ok);
  t.is(rep.destination.runState, 'running');
  t.is(await pair.destination.status(), 'running');
  t.is(await pair.source.status(), 'postmigrate');
  const after = await readCounter(pair.destination);
  t.true(after > pair.counterBefore!, `destination counter ${after} > source counter before ${pair.counterBefore}`);
  await waitFor('the guest counting on the destination', async () => (await readCounter(pair.destination)) > after, 30_000);
  t.log(`${t.title}: QEMU total ${rep.totalTimeMs} ms, downtime ${rep.downtimeMs} ms, setup ${rep.setupTimeMs} ms, ${rep.passes} passes, ${rep.ramBytes} RAM bytes; migbridge wall ${rep.wallTimeMs} ms`);
  return rep;
}

test.serial('(a) direct over TCP between the namespaces, QEMU 10 -> 10', async (t) => {
  const { hosts, pair } = await hostsAndPair(t, ['10.0', '10.0']);
  await migrated(t, hosts, pair);
});

test.serial('(b) through `migbridge proxy` on each host: source proxy -> TCP -> destination proxy; both tees are the stream the destination got', async (t) => {
  const { hosts, pair } = await hostsAndPair(t, ['10.0', '10.0']);
  const dir = await mkdtemp(join(tmpdir(), 'migbridge-two-hosts-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const link = `tcp:${hosts.destination.address}:${PORT}`;
  const proxyArgs = (listen: string, to: string, tee: string): string[] => ['proxy', '--listen', listen, '--to', to, '--tee', join(dir, tee), '--progress', '--output=json'];
  const dstProxy = runningCli(proxyArgs(link, `unix:${join(dir, 'destination.sock')}`, 'destination-side.mig'), 5 * 60_000, t.teardown.bind(t), [], hosts.destination.exec);
  const srcProxy = runningCli(proxyArgs(`unix:${join(dir, 'source.sock')}`, link, 'source-side.mig'), 5 * 60_000, t.teardown.bind(t), [], hosts.source.exec);
  await proxyListening(dstProxy, 30_000);
  await proxyListening(srcProxy, 30_000);
  await migrated(t, hosts, pair, ['--uri', `unix:${join(dir, 'source.sock')}`], `unix:${join(dir, 'destination.sock')}`);
  const [s, d] = await Promise.all([srcProxy.done, dstProxy.done]);
  t.is(s.code, 0, show(s));
  t.is(d.code, 0, show(d));
  const srcReport = JSON.parse(s.stdout) as ProxyReport;
  const dstReport = JSON.parse(d.stdout) as ProxyReport;
  const [srcTee, dstTee] = await Promise.all([readFile(join(dir, 'source-side.mig')), readFile(join(dir, 'destination-side.mig'))]);
  t.true(srcTee.equals(dstTee), 'the two tees are the same bytes');
  t.is(dstReport.deliveredBytes, dstTee.length, 'the destination QEMU received exactly the tee');
  t.is(srcReport.forwardBytes, dstReport.forwardBytes);
  const ins = await runningCli(['inspect', join(dir, 'destination-side.mig'), '--output=json'], 60_000, t.teardown.bind(t)).done;
  t.is(ins.code, 0, show(ins));
  const inspected = JSON.parse(ins.stdout) as { size: number; records: { kind: string; offset: number }[]; vmdesc: unknown };
  t.truthy(inspected.vmdesc);
  t.is(inspected.size, dstTee.length);
  const kinds: Record<string, number> = {};
  for (const r of inspected.records) kinds[r.kind] = (kinds[r.kind] ?? 0) + 1;
  t.deepEqual(dstReport.tee?.report?.records, kinds, "the proxy's record counts are inspect's");
  t.is(dstReport.eof?.offset, inspected.records.find((r) => r.kind === 'EOF')?.offset);
});

test.serial('(c) multifd with 4 channels, QEMU 10 -> 10: the same capability and channel count on both', async (t) => {
  const { hosts, pair } = await hostsAndPair(t, ['10.0', '10.0']);
  const rep = await migrated(t, hosts, pair, ['--caps', 'multifd=on', '--params', 'multifd-channels=4']);
  t.deepEqual(rep.capabilities, { multifd: true });
  for (const vm of [pair.source, pair.destination]) {
    const caps = (await vm.qmp('query-migrate-capabilities')) as { capability: string; state: boolean }[];
    t.true(caps.find((c) => c.capability === 'multifd')!.state);
    t.is(((await vm.qmp('query-migrate-parameters')) as Record<string, unknown>)['multifd-channels'], 4);
  }
});

test.serial('(d) cross-version: QEMU 10 -M pc-i440fx-7.2 -> QEMU 7.2', async (t) => {
  const { hosts, pair } = await hostsAndPair(t, ['10.0', '7.2'], 'pc-i440fx-7.2');
  const rep = await migrated(t, hosts, pair);
  t.regex(rep.source.version, /^10\.0\./);
  t.regex(rep.destination.version, /^7\.2\./);
});

test.serial('link cut mid-migration: the source fails with its error named, runs again; the destination is quit', async (t) => {
  // tcp_retries2=3: the cut connection times out in seconds instead of ~15 minutes.
  const { hosts, pair } = await hostsAndPair(t, ['10.0', '10.0'], undefined, 3);
  // The guest dirties 17 pages per pass: with 1 ms allowed at 16 KiB/s QEMU never switches over.
  const cli = runningCli(migrateArgs(hosts, pair, ['--params', 'max-bandwidth=16384', '--max-downtime', '1']), 5 * 60_000, t.teardown.bind(t));
  await waitFor('a progress line past the first pass', () => cli.stderr().split('\n').some((l) => /"progress".*"pass":[2-9]/.test(l)), 120_000);
  await hosts.cutLink();
  const r = await cli.done;
  t.is(r.code, 1, show(r));
  const rep = JSON.parse(r.stdout) as MigrateReport;
  t.false(rep.ok);
  t.is(rep.failure?.side, 'source');
  t.is(rep.source.migration, 'failed');
  t.regex(rep.failure?.message ?? '', /source: .*(timed out|Connection|Broken pipe)/i, JSON.stringify(rep));
  t.is(await pair.source.status(), 'running', 'QEMU resumes the source after the failure');
  t.true(rep.destination.action === 'quit' || /closed its monitor/.test(rep.destination.error ?? ''), JSON.stringify(rep.destination));
  await waitFor('the destination QEMU to exit', () => pair.destination.hasExited, 30_000);
  const error = JSON.parse(r.stderr.split('\n').find((l) => l.startsWith('{"error"'))!) as { error: { code: string } };
  t.is(error.error.code, 'EMIGRATE_FAILED');
  t.log(`link cut: failed after ${rep.wallTimeMs} ms of migration: ${rep.failure?.message}`);
});
