// `migbridge proxy` between two real QEMUs: the source migrates with `migrate unix:IN`, the
// proxy forwards to a destination started with `-incoming` on unix:OUT, tees and decodes.
// What is checked comes from QEMU itself (query-migrate, query-status, the guest's counter)
// and from migbridge's file tools run on the tee afterwards (inspect, rewrite), never from
// numbers written here. Plus two runs with a stand-in source/destination replaying a real
// QEMU stream, for what real QEMU does not do on demand (a source dropping mid-stream, a
// stream the decoder rejects).
//
// Serial: every test needs two QEMUs, and the harness allows two at once.
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QemuVm, SCENARIOS, directRamRanges, readCounter, streamFor, type MigrationInfo, type QemuVersion, type ScenarioName } from '../helpers/qemu.js';
import { imagePath } from '../helpers/qemu-guest.js';
import { pairLock } from '../helpers/qemu-pair.js';
import { readTailVmDesc } from '../../src/qemu/vmdesc.js';
import { proxyListening, proxyNotes, runningCli, waitFor, type CliResult } from '../helpers/cli-run.js';
import { MultifdDecoder, MultifdTallier } from '../../src/qemu/multifd.js';
import { ROOT } from './codec-helpers.js';

/** Runs the CLI to its end (bounded). */
function migbridge(args: string[], timeoutMs = 60_000): Promise<CliResult> {
  return runningCli(args, timeoutMs).done;
}

function describe(r: CliResult): string {
  return `exit ${String(r.code)}\nstderr: ${r.stderr.slice(-4000)}\nstdout: ${r.stdout.slice(0, 2000)}`;
}

async function scratch(t: ExecutionContext): Promise<string> {
  const dir = await mkdtemp(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'migbridge-proxy-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

// --- the proxy's JSON report (the parts the tests read) ---

interface Tally {
  bytes: number;
  records: Record<string, number>;
  commands: { offset: number; name: string }[];
  ram: { pages: Record<string, number>; records: Record<string, number> } | null;
  eofOffset: number | null;
  vmdescOffset: number | null;
}
interface Report {
  ok: boolean;
  seconds: number;
  forwardBytes: number;
  deliveredBytes: number;
  returnPath: { bytes: number; messages: Record<string, number>; first: { offset: number; name: string; value?: number }[]; error: unknown };
  source: { closed: string; offset: number; error: string | null };
  destination: { closed: string; offset: number; error: string | null };
  eof: { offset: number; via: string } | null;
  live: Tally & { complete: boolean; stopped: { offset: number; code: string; message: string } | null };
  tee: { path: string; bytes: number; kept: boolean; why: string; report: Tally | null } | null;
  failure: { side: string; offset: number; message: string } | null;
}

/** The proxy's JSON report on stdout; a missing or broken one fails with the whole output. */
function reportOf(r: CliResult): Report {
  try {
    return JSON.parse(r.stdout) as Report;
  } catch {
    throw new Error(`no JSON report from the proxy: ${describe(r)}`);
  }
}


// --- inspect's JSON, reduced to what the proxy reports ---

interface InspectJson {
  size: number;
  records: { offset: number; kind: string; command?: string; length: number }[];
  ram: { pages: Record<string, number>; records: Record<string, number> } | null;
  vmdesc: { offset: number } | null;
}

async function inspect(file: string): Promise<InspectJson> {
  const r = await migbridge(['inspect', file, '--output=json']);
  if (r.code !== 0) throw new Error(`inspect ${file}: ${describe(r)}`);
  return JSON.parse(r.stdout) as InspectJson;
}

function kindCounts(records: { kind: string }[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const r of records) out[r.kind] = (out[r.kind] ?? 0) + 1;
  return out;
}

/** The tee is the stream the destination got: rewrite reproduces it, inspect frames it to EOF + vmdesc. */
async function checkTee(t: ExecutionContext, dir: string, report: Report): Promise<InspectJson> {
  const tee = join(dir, 'tee.mig');
  t.truthy(report.tee?.kept, report.tee?.why);
  const bytes = await readFile(tee);
  t.is(bytes.length, report.forwardBytes, 'tee size = bytes received from the source');
  t.is(report.deliveredBytes, report.forwardBytes, 'every byte reached the destination');
  const rw = await migbridge(['rewrite', tee, join(dir, 'rewritten.mig')]);
  t.is(rw.code, 0, describe(rw));
  t.true(bytes.equals(await readFile(join(dir, 'rewritten.mig'))), 'rewrite of the tee is byte-identical');
  const ins = await inspect(tee);
  const kinds = ins.records.map((r) => r.kind);
  t.is(kinds.at(-2), 'EOF');
  t.is(kinds.at(-1), 'VMDESCRIPTION');
  t.is(report.eof?.offset, ins.records.at(-2)!.offset);
  t.deepEqual((await readdir(dir)).filter((f) => f.includes('partial')), [], 'no temp tee file left');
  return ins;
}

/** The proxy's summary of the whole stream equals inspect's of the tee. */
function sameTally(t: ExecutionContext, got: Tally, ins: InspectJson, what: string): void {
  t.deepEqual(got.records, kindCounts(ins.records), `${what}: records per kind`);
  t.deepEqual(got.commands, ins.records.filter((r) => r.kind === 'COMMAND').map((r) => ({ offset: r.offset, name: r.command })), `${what}: COMMAND records`);
  t.deepEqual(got.ram?.pages, ins.ram?.pages, `${what}: RAM pages by flag`);
  t.deepEqual(got.ram?.records, ins.ram?.records, `${what}: RAM records by flag`);
  t.is(got.vmdescOffset, ins.vmdesc?.offset ?? null, `${what}: vmdesc offset`);
}

/**
 * After 2.5 s of a destination that reads nothing: the byte count `field` of the proxy's
 * last progress note (one a second), checked to have stopped moving: what left the source.
 */
async function stalledAt(t: ExecutionContext, proxy: { stderr: () => string }, field: 'forwardBytes' | 'multifdBytes'): Promise<number> {
  // Stalled: three progress notes in a row (one a second) with the same non-zero count. Waited
  // for, not slept: under load the proxy may take seconds to start forwarding at all.
  const progress = (): number[] => (proxyNotes(proxy.stderr()).filter((n) => n.type === 'progress') as unknown as Record<typeof field, number>[]).map((n) => n[field]);
  await waitFor(`${field} to stop growing`, () => {
    const last = progress().slice(-3);
    return last.length === 3 && last[0]! > 0 && last.every((v) => v === last[0]);
  }, 180_000);
  const inFlight = progress().at(-1)!;
  t.true(inFlight > 0, proxy.stderr());
  return inFlight;
}

// --- QEMU on both ends ---

/** A scenario's machine arguments, its disk images copied into the VM's dir. */
function machine(name: ScenarioName): { args: string[]; beforeStart: (dir: string) => Promise<void> } {
  const s = SCENARIOS[name];
  return {
    args: s.args.map((a) => a.replace(/\{img:(boot|data)\}/g, (_m, n: string) => `{dir}/${n}.img`)),
    beforeStart: async (dir) => {
      for (const img of s.images) await copyFile(imagePath(img), join(dir, `${img}.img`));
    },
  };
}

async function startSource(t: ExecutionContext, version: QemuVersion, name: ScenarioName, caps: string[]): Promise<{ vm: QemuVm; counter?: number }> {
  await pairLock(t);
  const s = SCENARIOS[name];
  const m = machine(name);
  const vm = await QemuVm.start({ version, name: `${name} proxy source (${version})`, args: [...m.args, ...(s.prepare === 'paused' ? ['-S'] : [])], beforeStart: m.beforeStart, teardown: t.teardown.bind(t) });
  await vm.setCapabilities(caps);
  if (s.prepare !== 'run') return { vm };
  // The guest runs: its counter moves.
  let first = 0;
  await waitFor('the test guest to start counting', async () => (first = await readCounter(vm)) > 0, 60_000);
  return { vm, counter: first };
}

async function startDestination(t: ExecutionContext, version: QemuVersion, name: ScenarioName, caps: string[], sock: string, params?: Record<string, unknown>, extraArgs: string[] = []): Promise<QemuVm> {
  const m = machine(name);
  const vm = await QemuVm.start({ version, name: `${name} proxy destination (${version})`, args: [...m.args, ...extraArgs], incomingDefer: true, beforeStart: m.beforeStart, teardown: t.teardown.bind(t) });
  await vm.setCapabilities(caps);
  if (params) await vm.qmp('migrate-set-parameters', params);
  await vm.qmp('migrate-incoming', { uri: `unix:${sock}` });
  await waitFor(`the destination listening on ${sock}`, () => existsSync(sock), 10_000);
  return vm;
}

function startProxy(t: ExecutionContext, dir: string, extra: string[] = []): ReturnType<typeof runningCli> & { listen: string; out: string } {
  const listen = join(dir, 'in.sock');
  const out = join(dir, 'out.sock');
  const p = runningCli(['proxy', '--listen', `unix:${listen}`, '--to', `unix:${out}`, '--tee', join(dir, 'tee.mig'), '--progress', '--output=json', ...extra], 90_000, t.teardown.bind(t));
  return { ...p, listen, out };
}

async function queryMigrate(vm: QemuVm): Promise<MigrationInfo> {
  return (await vm.qmp('query-migrate')) as MigrationInfo;
}

/** The source's migration once it settled (completed/failed/cancelled), as QEMU's MIGRATION event says. */
async function migrationEnd(vm: QemuVm, timeoutMs: number): Promise<MigrationInfo> {
  return vm.waitMigrationEnd({ timeoutMs, what: 'the source migration to finish' });
}

/** The destination's runstate once its incoming migration ended (event first: no polling of a busy loader). */
async function destinationDone(dst: QemuVm, done: (status: string) => boolean = (s) => s !== 'inmigrate'): Promise<string> {
  await dst.waitMigrationEnd({ what: 'the incoming migration to end' });
  return dst.waitStatus(done, 20_000, 'the runstate after the incoming migration');
}

async function counterAdvances(vm: QemuVm, from: number): Promise<number> {
  let now = from;
  await waitFor(`the guest counter to advance past ${from}`, async () => (now = await readCounter(vm)) > from, 20_000);
  return now;
}

test.serial('10.0: a running guest migrates live through the proxy; the tee is the stream, decoded live up to the first FULL section', async (t) => {
  const dir = await scratch(t);
  const t0 = Date.now();
  const { vm: src, counter } = await startSource(t, '10.0', 'pc-live', []);
  const proxy = startProxy(t, dir);
  const dst = await startDestination(t, '10.0', 'pc-live', [], proxy.out);
  await proxyListening(proxy);
  const tMigrate = Date.now();
  await src.qmp('migrate', { uri: `unix:${proxy.listen}` });
  const info = await migrationEnd(src, 60_000);
  t.is(info.status, 'completed', JSON.stringify(info));
  const r = await proxy.done;
  const migrateSeconds = (Date.now() - tMigrate) / 1000;
  t.is(r.code, 0, describe(r));
  const report = reportOf(r);
  t.true(report.ok);

  // The guest goes on counting on the destination, from where it was.
  await destinationDone(dst, (s) => s === 'running');
  const first = await readCounter(dst);
  t.true(first >= counter!, `counter ${first} on the destination, ${counter} on the source before migrating`);
  await counterAdvances(dst, first);
  t.is(await src.status(), 'postmigrate');

  // Both sides closed after EOF; the tee is what the destination got.
  t.is(report.source.closed, 'fin');
  t.is(report.destination.closed, 'fin');
  t.is(Number(info.ram?.transferred), report.forwardBytes, 'QEMU counted the bytes the proxy forwarded');
  const ins = await checkTee(t, dir, report);

  // Live: without a vmdesc, decoding stops at the first FULL section, with the typed error.
  const firstFull = ins.records.find((x) => x.kind === 'FULL')!;
  t.is(report.live.stopped?.code, 'ESTREAM_CANNOT_DELIMIT');
  t.is(report.live.stopped?.offset, firstFull.offset);
  t.false(report.live.complete);
  const before = ins.records.filter((x) => x.offset < firstFull.offset);
  t.deepEqual(report.live.records, kindCounts(before), 'live counts = the tee records before the stop');
  t.deepEqual(kindCounts(proxyNotes(r.stderr).filter((n) => n.type === 'record') as { kind: string }[]), report.live.records, 'live notes = live summary');
  t.true(proxyNotes(r.stderr).some((n) => n.type === 'decode-stopped'));
  // After the migration the tee was decoded in full: its summary is inspect's.
  sameTally(t, report.tee!.report!, ins, 'tee report');
  t.is(report.eof?.via, 'tee');
  t.log(`pc-live 10.0: ${report.forwardBytes} bytes, migrate ${migrateSeconds.toFixed(2)} s (proxy ${report.seconds.toFixed(2)} s), test ${((Date.now() - t0) / 1000).toFixed(1)} s; live decode stopped at ${report.live.stopped?.offset}`);
  await dst.quit();
  await src.quit();
});

/**
 * A paused pc migrated through the proxy to completion: the source's migration completed,
 * the proxy exited 0, and the destination reached the scenario's run state.
 */
async function migratePausedPc(t: ExecutionContext, dir: string, version: QemuVersion, caps: string[], proxyArgs: string[]) {
  const { vm: src } = await startSource(t, version, 'pc-paused', caps);
  const proxy = startProxy(t, dir, proxyArgs);
  const dst = await startDestination(t, version, 'pc-paused', caps, proxy.out);
  await proxyListening(proxy);
  await src.qmp('migrate', { uri: `unix:${proxy.listen}` });
  const info = await migrationEnd(src, 60_000);
  t.is(info.status, 'completed', JSON.stringify(info));
  const r = await proxy.done;
  t.is(r.code, 0, describe(r));
  const report = reportOf(r);
  t.is(await destinationDone(dst), SCENARIOS['pc-paused'].expectedStatus);
  return { src, dst, report };
}

test.serial('10.0: return-path + switchover-ack through the proxy, decoded live in full with --vmdesc', async (t) => {
  const dir = await scratch(t);
  // The vmdesc of the same machine, from a stream real QEMU wrote earlier (cached by the harness).
  const cached = await readTailVmDesc(await streamFor('pc-paused', '10.0', t.teardown.bind(t)));
  t.truthy(cached, 'the cached pc-paused stream has a vmdesc');
  await writeFile(join(dir, 'vmdesc.json'), cached!.json);
  const { src, dst, report } = await migratePausedPc(t, dir, '10.0', ['return-path', 'switchover-ack'], ['--vmdesc', join(dir, 'vmdesc.json')]);

  // The return path went through: the destination's acks reached the source (it completed
  // only after SWITCHOVER_ACK and SHUT), and the proxy saw them.
  t.true(report.returnPath.bytes > 0);
  t.is(report.returnPath.error, null);
  t.is(report.returnPath.messages.SWITCHOVER_ACK, 1);
  t.deepEqual(report.returnPath.first.filter((m) => m.name === 'SHUT').map((m) => m.value), [0], 'SHUT with status 0 (destination loaded cleanly)');
  // PING ids come back as PONG values.
  const pongs = report.returnPath.first.filter((m) => m.name === 'PONG').length;
  t.is(pongs, report.live.commands.filter((c) => c.name === 'PING').length);

  // With the vmdesc, live decoding went through every record; it equals inspect of the tee.
  const ins = await checkTee(t, dir, report);
  t.true(report.live.complete, JSON.stringify(report.live.stopped));
  t.is(report.eof?.via, 'live');
  sameTally(t, report.live, ins, 'live');
  t.deepEqual(report.live.commands.map((c) => c.name).filter((n) => n === 'OPEN_RETURN_PATH'), ['OPEN_RETURN_PATH']);
  t.log(`return path: ${report.returnPath.bytes} bytes, ${JSON.stringify(report.returnPath.messages)}; commands ${report.live.commands.map((c) => c.name).join(', ')}`);
  await dst.quit();
  await src.quit();
});

test.serial('10.0: the destination killed mid-migration: proxy exits 1 naming it, no tee, the source fails and keeps running', async (t) => {
  const dir = await scratch(t);
  const { vm: src } = await startSource(t, '10.0', 'pc-live', []);
  // Slow (the stream is under 1 MiB) and unable to converge (128 KiB/s x 1 ms is less than
  // the 17 pages the guest dirties per round): still active when the destination dies.
  await src.qmp('migrate-set-parameters', { 'downtime-limit': 1, 'max-bandwidth': 128 << 10 });
  const proxy = startProxy(t, dir);
  const dst = await startDestination(t, '10.0', 'pc-live', [], proxy.out);
  await proxyListening(proxy);
  await src.qmp('migrate', { uri: `unix:${proxy.listen}` });
  try {
    await waitFor('100 KiB on the way', async () => Number((await queryMigrate(src)).ram?.transferred ?? 0) >= 100 << 10, 60_000);
  } catch (e) {
    // Say where it stalled: the source's view and what the proxy printed so far.
    throw new Error(`${(e as Error).message}; source query-migrate ${JSON.stringify(await queryMigrate(src).catch((x: Error) => x.message))}; proxy stderr: ${proxy.stderr().slice(-3000)}`);
  }
  t.is((await queryMigrate(src)).status, 'active');
  // Diagnostics only (iproute2's ss may be absent on a minimal machine).
  const ss = await new Promise<string>((res) => {
    const c = spawn('ss', ['-xap']);
    let o = '';
    c.on('error', (e) => res(`(ss unavailable: ${e.message})`));
    c.stdout.on('data', (d: Buffer) => { o += d.toString(); });
    c.on('close', () => res(o.split('\n').filter((l) => l.includes(dir)).join('\n')));
  });
  const dstBefore = `destination before the kill: exited ${String(dst.hasExited)}, status ${await dst.status().catch((e: Error) => e.message)}, migrate ${JSON.stringify(await queryMigrate(dst).catch((e: Error) => e.message))}, stderr ${dst.stderr}, dst pid ${dst.pid}, src pid ${src.pid}\nss:\n${ss}\nproxy stderr so far: ${proxy.stderr()}`;
  await dst.kill();
  const r = await proxy.done;
  if (!r.stdout) t.log(dstBefore);
  t.is(r.code, 1, describe(r));
  const report = reportOf(r);
  const err = (JSON.parse(r.stderr.split('\n').find((l) => l.startsWith('{"error"'))!) as { error: { code: string; message: string; offset: number; side: string } }).error;
  t.is(err.code, 'EPROXY_DESTINATION');
  t.is(err.side, 'destination');
  t.is(report.failure?.side, 'destination');
  t.true(err.offset > 0 && err.offset <= report.forwardBytes, `offset ${err.offset} of ${report.forwardBytes}: ${describe(r)}`);
  t.regex(err.message, new RegExp(`destination .* at forward offset ${err.offset}, before the EOF record`));
  t.is(report.source.closed, 'closed-by-proxy');
  t.is(report.eof, null);
  t.false(report.tee!.kept);
  t.false(existsSync(join(dir, 'tee.mig')), 'tee not left under its final name');
  t.deepEqual((await readdir(dir)).filter((f) => f.includes('tee')), [], 'nor under its temp name');

  const info = await migrationEnd(src, 15_000);
  t.is(info.status, 'failed', JSON.stringify(info));
  t.is(await src.status(), 'running');
  const c = await readCounter(src);
  await counterAdvances(src, c);
  t.log(`destination killed at ${report.destination.offset} bytes delivered (${report.forwardBytes} received); source: ${info['error-desc'] ?? ''}`);
  await src.quit();
});

test.serial('7.2: a paused pc through the proxy', async (t) => {
  const dir = await scratch(t);
  const { src, dst, report } = await migratePausedPc(t, dir, '7.2', [], []);
  const ins = await checkTee(t, dir, report);
  sameTally(t, report.tee!.report!, ins, 'tee report');
  t.is(report.live.stopped?.code, 'ESTREAM_CANNOT_DELIMIT');
  await dst.quit();
  await src.quit();
});

// --- a real QEMU stream replayed by stand-ins at both ends ---

/** A destination stand-in: collects what it receives, closes when the proxy does. */
function fakeDestination(path: string): { received: Promise<Buffer>; close: () => void } {
  const parts: Buffer[] = [];
  let resolve!: (b: Buffer) => void;
  const received = new Promise<Buffer>((r) => { resolve = r; });
  const server = net.createServer((s) => {
    s.on('data', (c: Buffer) => parts.push(c));
    s.on('end', () => s.end());
    s.on('error', () => undefined);
    s.on('close', () => resolve(Buffer.concat(parts)));
  });
  server.listen(path);
  return { received, close: () => server.close() };
}

async function replay(t: ExecutionContext, stream: Buffer, drop: boolean): Promise<{ r: CliResult; report: Report; received: Buffer; dir: string }> {
  const dir = await scratch(t);
  const dest = fakeDestination(join(dir, 'out.sock'));
  t.teardown(dest.close);
  const proxy = startProxy(t, dir);
  await proxyListening(proxy);
  const c = net.connect(proxy.listen);
  c.on('error', () => undefined);
  c.resume();
  await new Promise<void>((res) => c.once('connect', () => res()));
  await new Promise<void>((res) => c.write(stream, () => res()));
  if (drop) c.destroy();
  else c.end();
  const r = await proxy.done;
  const received = await dest.received;
  return { r, report: reportOf(r), received, dir };
}

test.serial('source drops mid-stream: exit 1 naming the source and the offset, the destination got exactly those bytes, no tee', async (t) => {
  const stream = await readFile(await streamFor('pc-paused', '10.0', t.teardown.bind(t)));
  const cut = Math.floor(stream.length / 2);
  const { r, report, received, dir } = await replay(t, stream.subarray(0, cut), true);
  t.is(r.code, 1, describe(r));
  t.is(report.failure?.side, 'source');
  t.is(report.failure?.offset, cut);
  t.regex(r.stderr, new RegExp(`"code":"EPROXY_SOURCE".*at forward offset ${cut}`));
  t.true(received.equals(stream.subarray(0, cut)), 'the destination got the bytes unchanged');
  t.false(report.tee!.kept);
  t.deepEqual((await readdir(dir)).filter((f) => f.includes('tee')), []);
});

test.serial('a stream the decoder rejects is still forwarded unchanged: the error is reported, EOF found by the trailer', async (t) => {
  const stream = Buffer.from(await readFile(await streamFor('pc-paused', '10.0', t.teardown.bind(t))));
  const ins = await inspect(await streamFor('pc-paused', '10.0'));
  const cmd = ins.records.find((x) => x.kind === 'COMMAND')!;
  stream.writeUInt16BE(0x7777, cmd.offset + 1); // an unknown QEMU_VM_COMMAND
  const { r, report, received } = await replay(t, stream, false);
  t.is(r.code, 0, describe(r));
  t.true(received.equals(stream), 'forwarded byte for byte');
  t.is(report.live.stopped?.code, 'ESTREAM_FORMAT');
  t.is(report.live.stopped?.offset, cmd.offset + 1);
  t.is(report.eof?.via, 'trailer');
  t.is(report.eof?.offset, ins.records.find((x) => x.kind === 'EOF')!.offset);
  t.true(report.tee!.kept);
  t.truthy((report.tee as { error?: { code: string } }).error, 'the tee decode reports the same error');
});

test.serial('backpressure: a destination that stops reading holds the source back; nothing is lost', async (t) => {
  const one = await readFile(await streamFor('pc-paused', '10.0', t.teardown.bind(t)));
  const stream = Buffer.concat(Array.from({ length: Math.ceil((48 << 20) / one.length) }, () => one));
  const dir = await scratch(t);
  const parts: Buffer[] = [];
  let destSock: net.Socket | undefined;
  const received = new Promise<Buffer>((resolve) => {
    const server = net.createServer((s) => {
      destSock = s;
      s.pause(); // reads nothing until told
      s.on('data', (c: Buffer) => parts.push(c));
      s.on('end', () => s.end());
      s.on('close', () => resolve(Buffer.concat(parts)));
    });
    server.listen(join(dir, 'out.sock'));
    t.teardown(() => server.close());
  });
  const proxy = startProxy(t, dir);
  await proxyListening(proxy);
  const c = net.connect(proxy.listen);
  let sourceError: Error | undefined;
  c.on('error', (e) => { sourceError = e; });
  c.resume();
  await new Promise<void>((res) => c.once('connect', () => res()));
  let written = false;
  c.write(stream, () => { written = true; });
  c.end();
  await waitFor('the destination connected', () => destSock !== undefined, 120_000);
  // Socket buffers (a few hundred KiB per hop) and a read chunk or two, no more.
  const inFlight = await stalledAt(t, proxy, 'forwardBytes');
  t.false(written);
  t.true(inFlight < 8 << 20, `${inFlight} bytes left the source while the destination read nothing`);
  destSock!.resume();
  const got = await received;
  const r = await proxy.done;
  t.true(got.equals(stream), 'the destination got every byte, in order');
  t.is(sourceError, undefined, 'the source connection was never reset');
  const report = reportOf(r);
  t.is(report.forwardBytes, stream.length);
  t.log(`held back: ${inFlight} of ${stream.length} bytes in flight while the destination was paused; proxy exit ${String(r.code)}, ${report.seconds.toFixed(2)} s`);
});

test.serial('usage and setup errors: exit 2 for bad options; exit 1 naming the destination when nothing listens there; a bad --tee path fails before listening', async (t) => {
  const dir = await scratch(t);
  for (const args of [['--listen', join(dir, 'in.sock'), '--to', `unix:${join(dir, 'out.sock')}`], ['--listen', `unix:${join(dir, 'in.sock')}`], ['--listen', 'unix:/x', '--to', 'unix:/x']]) {
    const r = await migbridge(['proxy', ...args]);
    t.is(r.code, 2, describe(r));
  }
  const tee = await migbridge(['proxy', '--listen', `unix:${join(dir, 'in.sock')}`, '--to', `unix:${join(dir, 'out.sock')}`, '--tee', join(dir, 'no', 'such', 'dir', 'tee.mig'), '--output=json']);
  t.is(tee.code, 1, describe(tee));
  t.regex(tee.stderr, /"code":"ENOENT".*tee/);
  t.false(existsSync(join(dir, 'in.sock')));

  const p = runningCli(['proxy', '--listen', `unix:${join(dir, 'in.sock')}`, '--to', `unix:${join(dir, 'out.sock')}`, '--output=json', '--progress'], 30_000, t.teardown.bind(t));
  await proxyListening(p);
  const c = net.connect(join(dir, 'in.sock'));
  c.on('error', () => undefined);
  c.resume();
  // The proxy routes a connection by its first 4 bytes: these make it the main channel.
  c.write('QEVM');
  const closed = new Promise<void>((res) => c.once('close', () => res()));
  const r = await p.done;
  await closed; // the source's connection is closed: its migration fails instead of hanging
  t.is(r.code, 1, describe(r));
  t.regex(r.stderr, /"code":"ENOENT".*cannot connect to the destination unix:/);
});

test.serial('10.0: postcopy through the proxy: the destination runs while it pulls pages over the return path', async (t) => {
  const dir = await scratch(t);
  const caps = ['postcopy-ram'];
  const { vm: src, counter } = await startSource(t, '10.0', 'pc-live', caps);
  // Slow precopy, so the switch to postcopy comes with most pages still on the source.
  await src.qmp('migrate-set-parameters', { 'downtime-limit': 1, 'max-bandwidth': 128 << 10 });
  const proxy = startProxy(t, dir);
  const dst = await startDestination(t, '10.0', 'pc-live', caps, proxy.out);
  await proxyListening(proxy);
  await src.qmp('migrate', { uri: `unix:${proxy.listen}` });
  await waitFor('64 KiB on the way', async () => Number((await queryMigrate(src)).ram?.transferred ?? 0) >= 64 << 10, 30_000);
  // Postcopy's background transfer stays slow too: the running guest faults on pages it
  // needs and the destination requests them on the return path. The guest's hot pages
  // (counter and dirty pages, low in RAM) come again only once the background walk has
  // wrapped around the rest of RAM (about 500 KB of non-zero pages): at 32 KiB/s that is
  // some 15 s in which the destination's vCPU must start and fault. At 128 KiB/s (4 s) a
  // destination slowed by a loaded machine started after the pages had come, and asked
  // for none.
  await src.qmp('migrate-set-parameters', { 'max-postcopy-bandwidth': 32 << 10 });
  await src.qmp('migrate-start-postcopy');
  const info = await migrationEnd(src, 180_000);
  t.is(info.status, 'completed', JSON.stringify(info));
  const r = await proxy.done;
  t.is(r.code, 0, describe(r));
  const report = reportOf(r) as Report & { destinationShut: number | null };
  await dst.waitStatus((s) => s === 'running', 20_000, 'running after postcopy');
  const first = await readCounter(dst);
  t.true(first >= counter!, `counter ${first} on the destination, ${counter} on the source before migrating`);
  await counterAdvances(dst, first);
  // Every page the destination asked for went through the proxy; QEMU counted the same.
  const requests = (report.returnPath.messages.REQ_PAGES ?? 0) + (report.returnPath.messages.REQ_PAGES_ID ?? 0);
  t.true(requests > 0, JSON.stringify(report.returnPath));
  t.is(requests, Number(info.ram?.['postcopy-requests']));
  t.is(report.returnPath.error, null);
  // No vmdesc in a postcopy stream: completion is the destination's SHUT 0 and the source's clean close.
  t.is(report.destinationShut, 0);
  t.is(report.source.closed, 'fin');
  t.true(report.tee!.kept, report.tee!.why);
  t.is((await readFile(join(dir, 'tee.mig'))).length, report.forwardBytes);
  t.true(report.live.commands.some((c) => c.name === 'POSTCOPY_ADVISE'));
  // Once postcopy really started, the capture is no file stream: reframe refuses it at the
  // first postcopy-only command, and leaves no output behind.
  const refused = await migbridge(['reframe', join(dir, 'tee.mig'), join(dir, 'file.mig'), '--output=json']);
  t.is(refused.code, 1, describe(refused));
  const firstPostcopy = report.live.commands.find((c) => ['POSTCOPY_RAM_DISCARD', 'POSTCOPY_LISTEN', 'POSTCOPY_RUN', 'PACKAGED'].includes(c.name))!;
  const err = (JSON.parse(refused.stderr) as { error: { code: string; offset: number; found: string } }).error;
  t.like(err, { code: 'ESTREAM_UNSUPPORTED', offset: firstPostcopy.offset, found: firstPostcopy.name });
  t.deepEqual((await readdir(dir)).filter((f) => f.startsWith('file.mig') || f.includes('partial')), [], 'no output left');
  t.log(`postcopy: ${report.forwardBytes} bytes, return path ${report.returnPath.bytes} bytes ${JSON.stringify(report.returnPath.messages)}; commands ${[...new Set(report.live.commands.map((c) => c.name))].join(', ')}; live stopped ${JSON.stringify(report.live.stopped)}; query-migrate ram ${JSON.stringify(info.ram)}`);
  await dst.quit();
  await src.quit();
});

// --- re-framing a tee for a file load, across QEMU versions ---

interface ReframeJson {
  bytesIn: number;
  bytesOut: number;
  changes: { offset: number; what: string; action: string; why: string }[];
}

async function reframe(t: ExecutionContext, from: string, to: string, extra: string[] = []): Promise<ReframeJson> {
  const r = await migbridge(['reframe', from, to, '--output=json', ...extra]);
  t.is(r.code, 0, describe(r));
  return JSON.parse(r.stdout) as ReframeJson;
}

/** The tee without the records at the dropped offsets (each record's length from inspect). */
function withoutRecords(tee: Buffer, ins: InspectJson, offsets: number[]): Buffer {
  const parts: Buffer[] = [];
  let at = 0;
  for (const off of [...offsets].sort((a, b) => a - b)) {
    const rec = ins.records.find((r) => r.offset === off);
    if (!rec) throw new Error(`no record at offset ${off} in the tee`);
    parts.push(tee.subarray(at, off));
    at = off + rec.length;
  }
  parts.push(tee.subarray(at));
  return Buffer.concat(parts);
}

/** A QEMU with `machineArgs` and -incoming defer that loads `file`; resolves to the runstate, or rejects with QEMU's stderr. */
async function loadFile(t: ExecutionContext, version: QemuVersion, machineArgs: string[], file: string): Promise<string> {
  const vm = await QemuVm.start({ version, name: `QEMU ${version} loading ${file}`, args: machineArgs, incomingDefer: true, teardown: t.teardown.bind(t) });
  try {
    return await vm.migrateIncomingFile(file, { timeoutMs: 60_000 });
  } finally {
    await vm.quit();
  }
}

test.serial('reframe: a return-path + postcopy-ram migration from QEMU 10.0 (machine pc-i440fx-7.2), teed by the proxy, loads from a file into QEMU 10.0 once re-framed and into 7.2 once re-framed --to 7.2', async (t) => {
  const dir = await scratch(t);
  // The 7.2 machine type keeps the device sections loadable by 7.2; SWITCHOVER_START is
  // switched on by hand (10.0 sends it by default only for 10.0+ machine types).
  const m72 = ['-M', 'pc-i440fx-7.2', '-m', '32', '-global', 'migration.send-switchover-start=on'];
  await pairLock(t);
  const src = await QemuVm.start({ version: '10.0', name: 'pc-i440fx-7.2 source (10.0)', args: [...m72, '-S'], teardown: t.teardown.bind(t) });
  await src.setCapabilities(['return-path', 'postcopy-ram']);
  const proxy = startProxy(t, dir);
  const dst = await QemuVm.start({ version: '10.0', name: 'pc-i440fx-7.2 destination (10.0)', args: m72, incomingDefer: true, teardown: t.teardown.bind(t) });
  await dst.setCapabilities(['return-path', 'postcopy-ram']);
  await dst.qmp('migrate-incoming', { uri: `unix:${proxy.out}` });
  await waitFor('the destination listening', () => existsSync(proxy.out), 10_000);
  await proxyListening(proxy);
  await src.qmp('migrate', { uri: `unix:${proxy.listen}` });
  const info = await migrationEnd(src, 60_000);
  t.is(info.status, 'completed', JSON.stringify(info));
  const r = await proxy.done;
  t.is(r.code, 0, describe(r));
  t.is(await destinationDone(dst), 'prelaunch');
  await dst.quit();
  await src.quit();

  const tee = join(dir, 'tee.mig');
  const teeBytes = await readFile(tee);
  const ins = await inspect(tee);
  const commands = ins.records.filter((x) => x.kind === 'COMMAND');
  const names = commands.map((c) => c.command);
  t.true(names.includes('OPEN_RETURN_PATH') && names.includes('SWITCHOVER_START'), `commands in the tee: ${names.join(', ')}`);

  // As captured (postcopy-ram was on, so the stream advises postcopy), neither QEMU loads the
  // tee from a file into a destination without postcopy-ram.
  const qemuSays = (e: Error | undefined): string => (e?.message ?? '').split('\n').filter((l) => l.startsWith('qemu-system')).join(' | ');
  const raw10 = await t.throwsAsync(loadFile(t, '10.0', m72, tee));
  t.regex(qemuSays(raw10), /postcopy is disabled but have 16 byte advise/, raw10?.message);
  const raw72 = await t.throwsAsync(loadFile(t, '7.2', ['-M', 'pc', '-m', '32'], tee));
  t.regex(qemuSays(raw72), /postcopy is disabled but have 16 byte advise/, raw72?.message);

  // Re-framed for a file load: return-path commands and the advise go, SWITCHOVER_START stays.
  const forFile = join(dir, 'file.mig');
  const a = await reframe(t, tee, forFile);
  const live = commands.filter((c) => ['OPEN_RETURN_PATH', 'PING', 'POSTCOPY_ADVISE'].includes(c.command!));
  t.true(live.some((c) => c.command === 'POSTCOPY_ADVISE'), `commands in the tee: ${names.join(', ')}`);
  t.deepEqual(a.changes.map((c) => [c.offset, c.what, c.action]), live.map((c) => [c.offset, `command ${c.command}`, 'dropped']));
  t.true((await readFile(forFile)).equals(withoutRecords(teeBytes, ins, live.map((c) => c.offset))), 'only the dropped records are missing');
  t.is(await loadFile(t, '10.0', m72, forFile), 'prelaunch', 'QEMU 10.0 loads it from a file');
  const still = await t.throwsAsync(loadFile(t, '7.2', ['-M', 'pc', '-m', '32'], forFile));
  t.regex(qemuSays(still), /MIG_CMD 0xb unknown/, 'QEMU 7.2 stops at SWITCHOVER_START');

  // Re-framed --to 7.2: SWITCHOVER_START goes too, and 7.2 loads it.
  const for72 = join(dir, 'for-7.2.mig');
  const b = await reframe(t, tee, for72, ['--to', '7.2']);
  const dropped = commands.filter((c) => ['OPEN_RETURN_PATH', 'PING', 'POSTCOPY_ADVISE', 'SWITCHOVER_START'].includes(c.command!));
  t.deepEqual(b.changes.map((c) => c.offset), dropped.map((c) => c.offset));
  t.is(b.bytesOut, teeBytes.length - dropped.reduce((n, c) => n + c.length, 0));
  t.true((await readFile(for72)).equals(withoutRecords(teeBytes, ins, dropped.map((c) => c.offset))));
  t.is(await loadFile(t, '7.2', ['-M', 'pc', '-m', '32'], for72), 'prelaunch', 'QEMU 7.2 loads the re-framed tee');

  // Nothing left to change: a second pass is a byte-identical copy.
  const again = await reframe(t, for72, join(dir, 'again.mig'), ['--to', '7.2']);
  t.deepEqual(again.changes, []);
  t.true((await readFile(join(dir, 'again.mig'))).equals(await readFile(for72)));
  t.deepEqual((await readdir(dir)).filter((f) => f.includes('partial')), [], 'no temporary output left');
});

// --- multifd: the source opens extra channels to the same socket ---

interface MultifdJson {
  channel: number | null;
  connection: number;
  uuid: string | null;
  bytes: number;
  deliveredBytes: number;
  returnBytes: number;
  decodedBytes: number;
  packets: number;
  ramPackets: number;
  ramPages: { normal: number; zero: number };
  ramDataBytes: number;
  syncs: number;
  packetNums: { min: number; max: number } | null;
  deviceState: unknown[];
  compression: number[];
  decodeStopped: { offset: number; code: string; message: string } | null;
  source: { closed: string; offset: number; error: string | null };
  destination: { closed: string; offset: number; error: string | null };
  closed: boolean;
  tee: { path: string; bytes: number; kept: boolean; error: string | null } | null;
}
type MultifdReport = Report & { multifd: MultifdJson[]; multifdBytes: number; rejected: { connection: number; firstBytes: string; reason: string }[]; failure: { side: string; offset: number; message: string; channel?: number | null } | null };

const MULTIFD_PARAMS = { 'multifd-channels': 2 };

test.serial('10.0: multifd with 2 channels: a running guest migrates through the proxy; every channel forwarded, teed and decoded, counts equal QEMU\'s', async (t) => {
  const dir = await scratch(t);
  const caps = ['multifd'];
  const { vm: src, counter } = await startSource(t, '10.0', 'pc-live', caps);
  await src.qmp('migrate-set-parameters', MULTIFD_PARAMS);
  const proxy = startProxy(t, dir);
  const dst = await startDestination(t, '10.0', 'pc-live', caps, proxy.out, MULTIFD_PARAMS);
  await proxyListening(proxy);
  await src.qmp('migrate', { uri: `unix:${proxy.listen}` });
  const info = await migrationEnd(src, 60_000);
  t.is(info.status, 'completed', JSON.stringify(info));
  const r = await proxy.done;
  t.is(r.code, 0, describe(r));
  const report = reportOf(r) as MultifdReport;
  t.true(report.ok);

  // The guest goes on counting on the destination.
  await destinationDone(dst, (s) => s === 'running');
  const first = await readCounter(dst);
  t.true(first >= counter!, `counter ${first} on the destination, ${counter} on the source before migrating`);
  await counterAdvances(dst, first);

  // Two channels, ids 0 and 1 from their init packets, one source UUID; nothing rejected.
  t.deepEqual(report.multifd.map((c) => c.channel), [0, 1]);
  t.is(new Set(report.multifd.map((c) => c.uuid)).size, 1);
  t.deepEqual(report.rejected, []);
  const ram = info.ram!;
  for (const c of report.multifd) {
    const what = `channel ${String(c.channel)}`;
    // Each channel's tee is the bytes the source sent on it, all delivered, decoded to the end.
    const teePath = join(dir, `tee.mig.multifd-${String(c.channel)}`);
    t.is((await readFile(teePath)).length, c.bytes, `${what}: tee size = bytes received`);
    t.like(c.tee, { path: teePath, bytes: c.bytes, kept: true, error: null }, what);
    t.is(c.deliveredBytes, c.bytes, what);
    t.is(c.returnBytes, 0, `${what}: QEMU sends nothing back on a multifd channel`);
    t.is(c.decodeStopped, null, what);
    t.is(c.decodedBytes, c.bytes, what);
    t.like(c, { closed: true, source: { closed: 'fin' }, destination: { closed: 'fin' } }, what);
    t.deepEqual(c.deviceState, [], `${what}: no device state without VFIO`);
    t.deepEqual(c.compression, [0], `${what}: uncompressed`);
    // Page data is exactly the normal pages (uncompressed, 4 KiB pages).
    t.is(c.ramDataBytes, c.ramPages.normal * Number(ram['page-size']), what);
    t.true(c.syncs >= 2, `${what}: ${c.syncs} SYNC packets`);
  }
  const sum = (f: (c: MultifdJson) => number): number => report.multifd.reduce((n, c) => n + f(c), 0);
  // QEMU's own counters equal the proxy's sums exactly: multifd-bytes = every byte of the
  // channels (init packets included), normal = normal pages, duplicate = zero pages (the
  // default zero-page-detection=multifd lists them in the packets), and transferred = main + channels.
  t.is(report.multifdBytes, sum((c) => c.bytes));
  t.is(Number(ram['multifd-bytes']), report.multifdBytes, 'multifd-bytes');
  t.is(Number(ram.normal), sum((c) => c.ramPages.normal), 'normal pages');
  t.is(Number(ram.duplicate), sum((c) => c.ramPages.zero), 'zero pages');
  t.true(sum((c) => c.ramPages.normal + c.ramPages.zero) > 0);
  t.is(Number(ram.transferred), report.forwardBytes + report.multifdBytes, 'transferred = main + multifd channels');
  // packet_num is one sequence over all channels: every number from 0 up appears once.
  t.is(Math.min(...report.multifd.map((c) => c.packetNums!.min)), 0);
  t.is(Math.max(...report.multifd.map((c) => c.packetNums!.max)) + 1, sum((c) => c.packets), 'packet_num 0..n-1 over all channels');

  // The main channel: the same checks as without multifd, and its RAM section holds no
  // page at all; each MULTIFD_FLUSH there matches one SYNC packet on every channel.
  const ins = await checkTee(t, dir, report);
  t.deepEqual(ins.ram?.pages, { PAGE: 0, ZERO: 0, XBZRLE: 0, COMPRESS_PAGE: 0 }, 'no page on the main channel');
  const flushes = ins.ram!.records.MULTIFD_FLUSH!;
  t.true(flushes > 0);
  for (const c of report.multifd) t.is(c.syncs, flushes, `channel ${String(c.channel)}: SYNC packets = MULTIFD_FLUSH records on the main channel`);
  t.deepEqual((await readdir(dir)).filter((f) => f.startsWith('tee.mig')).sort(), ['tee.mig', 'tee.mig.multifd-0', 'tee.mig.multifd-1']);
  const notes = proxyNotes(r.stderr);
  t.is(notes.filter((n) => n.type === 'multifd-channel').length, 2);
  t.log(`multifd: main ${report.forwardBytes} bytes, channels ${report.multifd.map((c) => `${String(c.channel)}: ${c.bytes} bytes, ${c.packets} packets, ${c.ramPages.normal}+${c.ramPages.zero} pages, ${c.syncs} SYNC`).join('; ')}; ${flushes} MULTIFD_FLUSH; query-migrate ram ${JSON.stringify(ram)}; ${report.seconds.toFixed(2)} s`);
  await dst.quit();
  await src.quit();
});

test.serial('10.0: multifd, the destination killed mid-migration: proxy exits 1 naming the destination, no tee file of any channel, the source fails and keeps running', async (t) => {
  const dir = await scratch(t);
  const caps = ['multifd'];
  const { vm: src } = await startSource(t, '10.0', 'pc-live', caps);
  // Slow and unable to converge, as in the test without multifd (the bandwidth limit counts
  // the multifd channels' bytes too): still active when the destination dies.
  await src.qmp('migrate-set-parameters', { ...MULTIFD_PARAMS, 'downtime-limit': 1, 'max-bandwidth': 128 << 10 });
  const proxy = startProxy(t, dir);
  const dst = await startDestination(t, '10.0', 'pc-live', caps, proxy.out, MULTIFD_PARAMS);
  await proxyListening(proxy);
  await src.qmp('migrate', { uri: `unix:${proxy.listen}` });
  await waitFor('100 KiB on the way', async () => Number((await queryMigrate(src)).ram?.transferred ?? 0) >= 100 << 10, 60_000);
  const before = await queryMigrate(src);
  t.is(before.status, 'active');
  t.true(Number(before.ram?.['multifd-bytes']) > 0, `pages go over the channels: ${JSON.stringify(before.ram)}`);
  // Both channels identified by the proxy before the kill (under load the second one could
  // still be on its way after 100 KiB, and the report would then hold one channel).
  await waitFor('both multifd channels identified by the proxy', () => proxyNotes(proxy.stderr()).filter((n) => n.type === 'multifd-channel').length === 2, 60_000);
  await dst.kill();
  const r = await proxy.done;
  t.is(r.code, 1, describe(r));
  const err = (JSON.parse(r.stderr.split('\n').find((l) => l.startsWith('{"error"'))!) as { error: { code: string; message: string; offset: number; side: string; channel?: number | null } }).error;
  let outcome: string;
  if (r.stdout.trim() === '' && /before the main channel arrived/.test(err.message)) {
    // The main channel's first bytes can reach the proxy after the channels' (seen under
    // load: QEMU had sent 100 KiB over the channels first); then the destination died while
    // only channels were being forwarded: no report yet, the error names the channel.
    t.is(err.code, 'EPROXY_DESTINATION', describe(r));
    t.is(err.side, 'destination');
    t.true(err.channel === 0 || err.channel === 1, `channel named: ${JSON.stringify(err)}`);
    t.regex(err.message, new RegExp(`destination .* multifd channel ${String(err.channel)} at channel offset ${err.offset}`));
    outcome = `channel ${String(err.channel)} failed before the main channel arrived: ${err.message}`;
  } else if (r.stdout.trim() === '') {
    // The main channel arrived, and the destination died while the proxy was connecting it:
    // the connect fails, naming the destination, and every channel is closed with the main one.
    t.regex(err.message, /cannot connect to the destination unix:/, describe(r));
    t.true(['ECONNRESET', 'ECONNREFUSED', 'ENOENT'].includes(err.code), err.code);
    outcome = `main channel's connect failed: ${err.code}`;
  } else {
    const report = reportOf(r) as MultifdReport;
    t.is(err.code, 'EPROXY_DESTINATION');
    t.is(err.side, 'destination');
    t.is(report.failure?.side, 'destination');
    // Whichever connection of the dead destination the proxy saw go first is the one named.
    if (report.failure?.channel !== undefined) {
      const ch = report.multifd.find((c) => c.channel === report.failure!.channel)!;
      t.truthy(ch, JSON.stringify(report.failure));
      t.is(err.channel, ch.channel);
      t.regex(err.message, new RegExp(`destination .* multifd channel ${String(ch.channel)} at channel offset ${err.offset}, before the migration's EOF`));
      t.true(err.offset <= ch.bytes);
    } else {
      t.regex(err.message, new RegExp(`destination .* at forward offset ${err.offset}, before the EOF record`));
    }
    // Every source connection was closed by the proxy (or had gone already), so the source's migration fails.
    t.is(report.source.closed, 'closed-by-proxy');
    t.is(report.multifd.length, 2);
    for (const c of report.multifd) {
      t.true(c.closed, JSON.stringify(c));
      t.not(c.source.closed, 'open');
      t.false(c.tee!.kept);
    }
    t.false(report.tee!.kept);
    outcome = `failure ${JSON.stringify(report.failure)}; channels ${report.multifd.map((c) => `${String(c.channel)}: ${c.bytes} bytes, source ${c.source.closed}, destination ${c.destination.closed}`).join('; ')}`;
  }
  t.deepEqual((await readdir(dir)).filter((f) => f.includes('tee')), [], 'no tee file, under final or temporary names');

  const info = await migrationEnd(src, 15_000);
  t.is(info.status, 'failed', JSON.stringify(info));
  t.is(await src.status(), 'running');
  await counterAdvances(src, await readCounter(src));
  t.log(`destination killed: ${outcome}; source: ${info['error-desc'] ?? ''}`);
  await src.quit();
});

// --- the captured multifd migration replayed by stand-ins (test/fixtures/qemu10-multifd) ---

const MULTIFD_FIXTURE = join(ROOT, 'test/fixtures/qemu10-multifd');

interface Captured { main: Buffer; channels: Buffer[] }
async function capturedMultifd(): Promise<Captured> {
  return {
    main: await readFile(join(MULTIFD_FIXTURE, 'main.mig')),
    channels: [await readFile(join(MULTIFD_FIXTURE, 'channel-0.bin')), await readFile(join(MULTIFD_FIXTURE, 'channel-1.bin'))],
  };
}

/**
 * A destination stand-in taking any number of connections: each one's bytes, keyed
 * `main` or `multifd-<id>` by its first bytes as QEMU tells them apart. `drop` destroys
 * the connection of that multifd channel once it got that many bytes.
 */
function fakeMultiDestination(path: string, drop?: { channel: number; after: number }): { received: Map<string, Buffer>; dropped: () => number | undefined; close: () => void } {
  const received = new Map<string, Buffer>();
  let droppedAt: number | undefined;
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    const parts: Buffer[] = [];
    let n = 0;
    const key = (): string => {
      const b = Buffer.concat(parts);
      return b.subarray(0, 4).toString('latin1') === 'QEVM' ? 'main' : `multifd-${String(b[24])}`;
    };
    s.on('data', (c: Buffer) => {
      parts.push(c);
      n += c.length;
      if (drop && droppedAt === undefined && n >= Math.max(drop.after, 25) && key() === `multifd-${drop.channel}`) {
        droppedAt = n;
        s.destroy();
      }
    });
    s.on('end', () => s.end());
    s.on('error', () => undefined);
    s.on('close', () => received.set(key(), Buffer.concat(parts)));
  });
  server.listen(path);
  return { received, dropped: () => droppedAt, close: () => server.close() };
}

/** Opens a source-side connection to the proxy; `closed` settles when the proxy (or we) closed it. */
async function sourceConnection(path: string): Promise<{ c: net.Socket; closed: Promise<void> }> {
  const c = net.connect(path);
  c.on('error', () => undefined);
  c.resume();
  const closed = new Promise<void>((res) => c.once('close', () => res()));
  await new Promise<void>((res) => c.once('connect', () => res()));
  return { c, closed };
}

function write(c: net.Socket, b: Buffer | string): Promise<void> {
  return new Promise((res) => c.write(b, () => res()));
}

function tallyOfChannel(b: Buffer): ReturnType<MultifdTallier['result']> {
  const tally = new MultifdTallier();
  const dec = new MultifdDecoder({ onEvent: (e) => tally.add(e) });
  dec.push(b);
  return tally.result(dec.offset);
}

test.serial('stand-ins replay a captured multifd migration (channels first, a stray and a silent connection too): each channel forwarded to its own destination connection and teed byte for byte, the others closed and reported', async (t) => {
  const cap = await capturedMultifd();
  const dir = await scratch(t);
  const dest = fakeMultiDestination(join(dir, 'out.sock'));
  t.teardown(dest.close);
  const proxy = startProxy(t, dir);
  await proxyListening(proxy);
  // The channels connect before the main channel, then a connection that is none of them,
  // then one that never says anything; each channel ends before the main one, as QEMU does.
  const ch = [await sourceConnection(proxy.listen), await sourceConnection(proxy.listen)];
  const stray = await sourceConnection(proxy.listen);
  const silent = await sourceConnection(proxy.listen);
  const main = await sourceConnection(proxy.listen);
  await write(stray.c, 'GET / HTTP/1.0\r\n\r\n');
  await stray.closed;
  for (const [i, x] of ch.entries()) {
    await write(x.c, cap.channels[i]!);
    x.c.end();
  }
  await write(main.c, cap.main);
  main.c.end();
  const r = await proxy.done;
  t.is(r.code, 0, describe(r));
  await silent.closed;
  const report = reportOf(r) as MultifdReport;
  t.true(report.ok);

  // Byte for byte: the destination got each channel on a connection of its own, and the tees hold them.
  await waitFor('the destination stand-in to see every connection close', () => dest.received.size === 3, 10_000);
  t.true(dest.received.get('main')!.equals(cap.main));
  t.true((await readFile(join(dir, 'tee.mig'))).equals(cap.main));
  for (const [i, b] of cap.channels.entries()) {
    t.true(dest.received.get(`multifd-${i}`)!.equals(b), `channel ${i} delivered`);
    t.true((await readFile(join(dir, `tee.mig.multifd-${i}`))).equals(b), `channel ${i} teed`);
    const c = report.multifd.find((x) => x.channel === i)!;
    t.is(c.connection, i, 'accept order');
    t.is(c.bytes, b.length);
    // The live report equals a decode of the captured channel on its own.
    const want = tallyOfChannel(b);
    t.like(c, { packets: want.packets, ramPages: want.ramPages, syncs: want.syncs, packetNums: want.packetNums, uuid: want.uuid, decodeStopped: null, decodedBytes: b.length });
  }
  t.deepEqual(report.rejected.map((x) => [x.connection, x.firstBytes]), [[2, Buffer.from('GET ').toString('hex')], [3, '']]);
  t.regex(report.rejected[0]!.reason, /neither a main \(QEVM\) nor a multifd/);
  t.regex(report.rejected[1]!.reason, /still without its first 4 bytes when the main channel finished/);
  t.deepEqual((await readdir(dir)).filter((f) => f.includes('partial')), [], 'no temporary tee left');
  t.false(existsSync(proxy.listen), 'the listening socket is removed');
});

test.serial('a multifd channel\'s destination drops mid-stream: exit 1 naming the channel and its offset, every source connection closed by the proxy, no tee of any channel', async (t) => {
  const cap = await capturedMultifd();
  const dir = await scratch(t);
  const dest = fakeMultiDestination(join(dir, 'out.sock'), { channel: 1, after: 100_000 });
  t.teardown(dest.close);
  const proxy = startProxy(t, dir);
  await proxyListening(proxy);
  const main = await sourceConnection(proxy.listen);
  const ch = [await sourceConnection(proxy.listen), await sourceConnection(proxy.listen)];
  // The main channel is mid-stream (before its EOF), the channels are sent but not ended.
  await write(main.c, cap.main.subarray(0, 1000));
  for (const [i, x] of ch.entries()) void write(x.c, cap.channels[i]!);
  // The proxy closes every source connection: a source QEMU's migration would fail.
  await Promise.all([main.closed, ...ch.map((x) => x.closed)]);
  const r = await proxy.done;
  t.is(r.code, 1, describe(r));
  const report = reportOf(r) as MultifdReport;
  const err = (JSON.parse(r.stderr.split('\n').find((l) => l.startsWith('{"error"'))!) as { error: { code: string; message: string; offset: number; side: string; channel?: number | null } }).error;
  t.like(err, { code: 'EPROXY_DESTINATION', side: 'destination', channel: 1 });
  t.like(report.failure, { side: 'destination', channel: 1, connection: 2, offset: err.offset });
  t.regex(err.message, new RegExp(`destination .*multifd channel 1 at channel offset ${err.offset}, before the migration's EOF reached it`));
  // The offset is what the proxy handed to the destination's socket: at least what the
  // stand-in had read when it dropped, at most what the source sent.
  const c1 = report.multifd.find((x) => x.channel === 1)!;
  t.true(err.offset >= dest.dropped()! && err.offset <= c1.bytes, `offset ${err.offset}, dropped after ${String(dest.dropped())}, received ${c1.bytes}`);
  t.is(report.source.closed, 'closed-by-proxy');
  for (const c of report.multifd) t.is(c.source.closed, 'closed-by-proxy', `channel ${String(c.channel)}`);
  t.deepEqual((await readdir(dir)).filter((f) => f.includes('tee')), [], 'no tee file, under final or temporary names');
});

test.serial('backpressure on a multifd channel: a destination that stops reading it holds that channel\'s source back; nothing is lost', async (t) => {
  const cap = await capturedMultifd();
  // A long channel: the captured channel 1's packets over and over after its init packet.
  const packets = cap.channels[1]!.subarray(64);
  const big = Buffer.concat([cap.channels[1]!.subarray(0, 64), ...Array.from({ length: Math.ceil((48 << 20) / packets.length) }, () => packets)]);
  const dir = await scratch(t);
  let held: net.Socket | undefined;
  const received = new Promise<Buffer>((resolve) => {
    const server = net.createServer((s) => {
      const parts: Buffer[] = [];
      s.on('data', (c: Buffer) => {
        // The multifd channel's connection reads its first chunk, then nothing until told.
        if (parts.length === 0 && c.readUInt32BE(0) === 0x11223344) {
          held = s;
          s.pause();
        }
        parts.push(c);
      });
      s.on('end', () => s.end());
      s.on('close', () => { if (s === held) resolve(Buffer.concat(parts)); });
    });
    server.listen(join(dir, 'out.sock'));
    t.teardown(() => server.close());
  });
  const proxy = startProxy(t, dir);
  await proxyListening(proxy);
  const main = await sourceConnection(proxy.listen);
  // The main channel under way (its first records), so the proxy forwards and reports progress.
  await write(main.c, cap.main.subarray(0, 1000));
  const ch = await sourceConnection(proxy.listen);
  let written = false;
  ch.c.write(big, () => { written = true; });
  ch.c.end();
  await waitFor('the destination holding the channel', () => held !== undefined, 120_000);
  const inFlight = await stalledAt(t, proxy, 'multifdBytes');
  t.false(written);
  t.true(inFlight < 8 << 20, `${inFlight} bytes left the channel's source while the destination read nothing`);
  // The main channel meanwhile goes through to its end; the proxy waits for the channel.
  await write(main.c, cap.main.subarray(1000));
  main.c.end();
  held!.resume();
  const got = await received;
  const r = await proxy.done;
  t.is(r.code, 0, describe(r));
  t.true(got.equals(big), 'the destination got every byte of the channel, in order');
  const report = reportOf(r) as MultifdReport;
  t.like(report.multifd[0], { channel: 1, bytes: big.length, deliveredBytes: big.length, decodeStopped: null });
  t.true((await readFile(join(dir, 'tee.mig.multifd-1'))).equals(big));
  t.log(`held back: ${inFlight} of ${big.length} bytes in flight on the channel while its destination was paused; ${report.seconds.toFixed(2)} s`);
});

test.serial('a multifd channel\'s source ends inside a packet: exit 1 naming the source, the channel and the cut, the destination got exactly those bytes', async (t) => {
  const cap = await capturedMultifd();
  const dir = await scratch(t);
  const dest = fakeMultiDestination(join(dir, 'out.sock'));
  t.teardown(dest.close);
  const proxy = startProxy(t, dir);
  await proxyListening(proxy);
  const main = await sourceConnection(proxy.listen);
  await write(main.c, cap.main.subarray(0, 1000));
  const ch = await sourceConnection(proxy.listen);
  // 700 bytes into the fourth RAM packet (each 1344 bytes here: zero pages only).
  const cut = 64 + 3 * 1344 + 700;
  await write(ch.c, cap.channels[0]!.subarray(0, cut));
  ch.c.end();
  await main.closed;
  const r = await proxy.done;
  t.is(r.code, 1, describe(r));
  const report = reportOf(r) as MultifdReport;
  t.like(report.failure, { side: 'source', channel: 0, offset: cut });
  t.regex(report.failure!.message, new RegExp(`the source closed multifd channel 0 at channel offset ${cut}, inside the packet that started at ${64 + 3 * 1344}`));
  t.is(report.multifd[0]!.decodeStopped?.code, 'ESTREAM_TRUNCATED');
  t.is(report.source.closed, 'closed-by-proxy');
  await waitFor('the destination stand-in to see the channel close', () => dest.received.has('multifd-0'), 10_000);
  t.true(dest.received.get('multifd-0')!.equals(cap.channels[0]!.subarray(0, cut)));
  t.deepEqual((await readdir(dir)).filter((f) => f.includes('tee')), []);
});

/** sha256 of the VM's guest RAM where the pc machine maps it directly, read by QEMU itself (pmemsave). */
async function guestRamHash(vm: QemuVm, ramMiB: number): Promise<string> {
  const h = createHash('sha256');
  for (const { start, end } of directRamRanges(ramMiB)) {
    const f = join(vm.dir, `ram-${start}.bin`);
    await vm.qmp('pmemsave', { val: start, size: end - start, filename: f });
    h.update(await readFile(f));
    await rm(f);
  }
  return h.digest('hex');
}

/**
 * A multifd migration of `name` through the proxy into a destination held with -S (so its RAM
 * stays what it received), then the tees merged by reframe and loaded from a file into a
 * QEMU without multifd, also held with -S: both RAMs must be identical.
 */
async function multifdMergeCase(t: ExecutionContext, name: ScenarioName): Promise<void> {
  const dir = await scratch(t);
  const caps = ['multifd'];
  const s = SCENARIOS[name];
  const m = machine(name);
  const { vm: src } = await startSource(t, '10.0', name, caps);
  await src.qmp('migrate-set-parameters', MULTIFD_PARAMS);
  const proxy = startProxy(t, dir);
  const dst = await startDestination(t, '10.0', name, caps, proxy.out, MULTIFD_PARAMS, ['-S']);
  await proxyListening(proxy);
  await src.qmp('migrate', { uri: `unix:${proxy.listen}` });
  const info = await migrationEnd(src, 60_000);
  t.is(info.status, 'completed', JSON.stringify(info));
  const r = await proxy.done;
  t.is(r.code, 0, describe(r));
  const dstStatus = await destinationDone(dst);
  const liveRam = await guestRamHash(dst, s.ramMiB);
  await dst.quit();
  await src.quit();

  // The main channel alone holds no page: refused at its first MULTIFD_FLUSH, nothing written.
  const tee = join(dir, 'tee.mig');
  const mainOnly = join(dir, 'main-only');
  await mkdir(mainOnly);
  await copyFile(tee, join(mainOnly, 'tee.mig'));
  const refused = await migbridge(['reframe', join(mainOnly, 'tee.mig'), join(mainOnly, 'out.mig'), '--output=json']);
  t.is(refused.code, 1, describe(refused));
  const err = (JSON.parse(refused.stderr) as { error: { code: string; offset: number; idstr: string; message: string } }).error;
  t.like(err, { code: 'ESTREAM_UNSUPPORTED', idstr: 'ram' });
  t.regex(err.message, /multifd channels/);
  t.deepEqual(await readdir(mainOnly), ['tee.mig'], 'no output left');

  // With the channel tees beside it (found by name), every round is merged in.
  const out = join(dir, 'file.mig');
  const merged = (await reframe(t, tee, out)) as ReframeJson & { multifd: { channelId: number; path: string; bytes: number }[] };
  t.deepEqual(merged.multifd.map((c) => c.channelId), [0, 1]);
  const flushes = merged.changes.filter((c) => c.what === 'ram MULTIFD_FLUSH');
  t.is(flushes.length, (await inspect(tee)).ram!.records.MULTIFD_FLUSH, 'every MULTIFD_FLUSH replaced by its round');
  const rounds = flushes.map((c) => /(\d+) pages, (\d+) zero pages/.exec(c.why)!).filter((x) => Number(x[1]) + Number(x[2]) > 0);
  const pages = rounds.reduce((n, x) => ({ normal: n.normal + Number(x[1]), zero: n.zero + Number(x[2]) }), { normal: 0, zero: 0 });
  t.deepEqual(pages, { normal: Number(info.ram!.normal), zero: Number(info.ram!.duplicate) }, 'every page QEMU sent on the channels, as QEMU counted them');
  const outIns = await inspect(out);
  t.is(outIns.ram!.pages.PAGE, pages.normal);
  t.is(outIns.ram!.pages.ZERO, pages.zero);
  t.is(outIns.ram!.records.MULTIFD_FLUSH ?? 0, 0);
  // A running guest's pages come in two rounds at least: all of RAM, then at the switchover
  // the pages it dirtied meanwhile (its counter page among them, newer than in round 1), so
  // the equal RAM below also shows the rounds were merged in order.
  if (s.prepare === 'run') t.true(rounds.length >= 2, `pages in ${rounds.length} rounds`);

  // QEMU 10.0 without multifd loads it from a file; its RAM is the live destination's.
  const vm = await QemuVm.start({ version: '10.0', name: `merged multifd ${name} file load (10.0)`, args: [...m.args, '-S'], incomingDefer: true, beforeStart: m.beforeStart, teardown: t.teardown.bind(t) });
  t.is(await vm.migrateIncomingFile(out, { timeoutMs: 60_000 }), dstStatus);
  t.is(await guestRamHash(vm, s.ramMiB), liveRam, 'guest RAM loaded from the merged file = RAM the live destination got');
  await vm.quit();
  t.log(`multifd merge ${name}: main ${(await stat(tee)).size} + channels ${merged.multifd.map((c) => c.bytes).join(' + ')} bytes -> ${merged.bytesOut} bytes; ${pages.normal} pages + ${pages.zero} zero pages in ${rounds.length} round(s); dirty-sync-count ${String(info.ram?.['dirty-sync-count'])}`);
}

test.serial('reframe merges a multifd capture of a paused pc: the main tee alone is refused; with its channel tees it loads from a file into a QEMU without multifd, RAM identical to the live destination\'s', async (t) => {
  await multifdMergeCase(t, 'pc-paused');
});

test.serial('reframe merges a multifd capture of a running guest (pages re-sent in a later round): loaded from a file, RAM identical to the live destination\'s', async (t) => {
  await multifdMergeCase(t, 'pc-live');
});
