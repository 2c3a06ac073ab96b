// The library's QMP client (src/qmp) against real QEMU 10: greeting version, typed errors
// with QEMU's class and desc, events, and fd passing (getfd + migrate to fd:NAME, add-fd
// into an fd set); and against fake monitors: a command that is never answered times out,
// a peer that is not QMP is a protocol error, a monitor that goes away fails what waits.
import test from 'ava';
import { once } from 'node:events';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { openSync, closeSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QmpClient, QmpError } from '../../src/qmp/index.js';
import { socketpair, closeSync as closeFd } from '../../src/native/index.js';
import { inspectStreamFile } from '../../src/qemu/index.js';
import { QemuVm } from '../helpers/qemu-vm.js';

async function scratch(t: { teardown: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'migbridge-qmp-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A fake monitor: greets (unless told not to), then hands each connection to `serve`. */
async function fakeMonitor(path: string, serve: (s: net.Socket) => void): Promise<net.Server> {
  const server = net.createServer((s) => serve(s));
  server.listen(path);
  await once(server, 'listening');
  return server;
}

const GREETING = `${JSON.stringify({ QMP: { version: { qemu: { major: 9, minor: 1, micro: 3 }, package: ' fake' }, capabilities: [] } })}\n`;

/** Answers qmp_capabilities, then lets `after` decide what to do with the rest. */
function greetThen(after: (s: net.Socket, line: { execute: string; id: number }) => void): (s: net.Socket) => void {
  return (s) => {
    s.write(GREETING);
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const msg = JSON.parse(buf.slice(0, nl)) as { execute: string; id: number };
        buf = buf.slice(nl + 1);
        if (msg.execute === 'qmp_capabilities') s.write(`${JSON.stringify({ return: {}, id: msg.id })}\n`);
        else after(s, msg);
      }
    });
  };
}

test('a command the monitor never answers fails with EQMP_TIMEOUT naming the command; the greeting version is kept', async (t) => {
  const dir = await scratch(t);
  const path = join(dir, 'qmp.sock');
  const server = await fakeMonitor(path, greetThen(() => { /* silence */ }));
  t.teardown(() => { server.close(); });
  const c = await QmpClient.connect(path, { label: 'fake', connectTimeoutMs: 5000, commandTimeoutMs: 200 });
  t.teardown(() => c.close());
  t.deepEqual(c.version, { major: 9, minor: 1, micro: 3, package: 'fake' });
  const err = await t.throwsAsync(c.execute('query-status'), { instanceOf: QmpError });
  t.is(err?.code, 'EQMP_TIMEOUT');
  t.is(err?.command, 'query-status');
  t.is(err?.path, path);
  t.regex(err?.message ?? '', /fake: QMP query-status got no answer within 200 ms/);
});

test('a peer that is not QMP is EQMP_PROTOCOL; a monitor that goes away fails pending commands and event waits with EQMP_CLOSED', async (t) => {
  const dir = await scratch(t);
  const garbage = join(dir, 'garbage.sock');
  const s1 = await fakeMonitor(garbage, (s) => s.write('SSH-2.0-OpenSSH\r\n'));
  t.teardown(() => { s1.close(); });
  const e1 = await t.throwsAsync(QmpClient.connect(garbage, { connectTimeoutMs: 5000 }), { instanceOf: QmpError });
  t.is(e1?.code, 'EQMP_PROTOCOL');
  t.regex(e1?.message ?? '', /not JSON: "SSH-2\.0-OpenSSH"/);

  const dying = join(dir, 'dying.sock');
  const s2 = await fakeMonitor(dying, greetThen((s) => s.destroy()));
  t.teardown(() => { s2.close(); });
  const c = await QmpClient.connect(dying, { label: 'dying', connectTimeoutMs: 5000, commandTimeoutMs: 60_000 });
  const waiting = c.waitEvent((e) => e.event === 'RESUME', { timeoutMs: 60_000, what: 'RESUME' });
  const e2 = await t.throwsAsync(c.execute('cont'), { instanceOf: QmpError });
  t.is(e2?.code, 'EQMP_CLOSED');
  t.regex(e2?.message ?? '', /dying: QMP connection closed by QEMU \(while waiting for cont\)/);
  const e3 = await t.throwsAsync(waiting, { instanceOf: QmpError });
  t.is(e3?.code, 'EQMP_CLOSED');
  t.true(c.isClosed);
});

test('nothing listening: EQMP_CONNECT naming the socket', async (t) => {
  const dir = await scratch(t);
  const path = join(dir, 'none.sock');
  const err = await t.throwsAsync(QmpClient.connect(path, { label: 'nobody', connectTimeoutMs: 100 }), { instanceOf: QmpError });
  t.is(err?.code, 'EQMP_CONNECT');
  t.is(err?.path, path);
});

test('real QEMU 10: version from the greeting, typed errors with class and desc, STOP/RESUME events', async (t) => {
  const vm = await QemuVm.start({ version: '10.0', name: 'qmp-client', args: ['-M', 'pc', '-m', '32', '-S'], teardown: t.teardown.bind(t) });
  const qmp = vm.qmpConnection;
  t.is(`${qmp.version.major}.${qmp.version.minor}.${qmp.version.micro}`, vm.binary.version);

  const err = await t.throwsAsync(qmp.execute('no-such-command'), { instanceOf: QmpError });
  t.is(err?.code, 'EQMP_ERROR');
  t.is(err?.errorClass, 'CommandNotFound');
  t.regex(err?.desc ?? '', /no-such-command/);
  const bad = await t.throwsAsync(qmp.execute('migrate-set-parameters', { 'downtime-limit': 'soon' }), { instanceOf: QmpError });
  t.is(bad?.errorClass, 'GenericError');
  t.is(bad?.command, 'migrate-set-parameters');

  const seen: string[] = [];
  const stopListening = qmp.onEvent((e) => seen.push(e.event));
  const since = qmp.eventCount;
  await qmp.execute('cont');
  await qmp.waitEvent((e) => e.event === 'RESUME', { since, timeoutMs: 30_000, what: 'RESUME after cont' });
  await qmp.execute('stop');
  const stop = await qmp.waitEvent((e) => e.event === 'STOP', { since, timeoutMs: 30_000, what: 'STOP after stop' });
  stopListening();
  t.deepEqual(seen.filter((e) => e === 'RESUME' || e === 'STOP'), ['RESUME', 'STOP']);
  t.true((stop.timestamp?.seconds ?? 0) > 0);
});

test('real QEMU 10: getfd passes a socket (SCM_RIGHTS) and QEMU migrates into it with fd:NAME; the bytes are a complete stream', async (t) => {
  const dir = await scratch(t);
  const vm = await QemuVm.start({ version: '10.0', name: 'qmp-getfd', args: ['-M', 'pc', '-m', '32', '-S'], teardown: t.teardown.bind(t) });
  const qmp = vm.qmpConnection;
  const [ours, theirs] = socketpair();
  const reader = new net.Socket({ fd: ours, readable: true, writable: false });
  const chunks: Buffer[] = [];
  reader.on('data', (d: Buffer) => chunks.push(d));
  const ended = once(reader, 'end');
  try {
    await qmp.executeWithFd('getfd', { fdname: 'mig' }, theirs);
  } finally {
    closeFd(theirs); // QEMU holds its own copy now; ours would keep the stream open
  }
  const since = qmp.eventCount;
  await qmp.execute('migrate', { uri: 'fd:mig' });
  const end = await qmp.waitEvent((e) => e.event === 'MIGRATION' && ['completed', 'failed'].includes(String(e.data?.status)), { since, timeoutMs: 120_000, what: 'migration end' });
  t.is(end.data?.status, 'completed');
  await ended;
  reader.destroy();
  const file = join(dir, 'stream.bin');
  await writeFile(file, Buffer.concat(chunks));
  const report = await inspectStreamFile(file);
  t.is(report.header.magicText, 'QEVM');
  t.regex(report.configuration?.machineType ?? '', /^pc-i440fx-10\.0/);
  t.truthy(report.vmdesc, 'the stream ends with its VMDESCRIPTION: QEMU wrote all of it through the passed fd');
  t.is(report.size, (await readFile(file)).length);
});

test('real QEMU 10: add-fd puts a passed fd into an fd set that query-fdsets lists and file:/dev/fdset/N migrates into', async (t) => {
  const dir = await scratch(t);
  const vm = await QemuVm.start({ version: '10.0', name: 'qmp-add-fd', args: ['-M', 'pc', '-m', '32', '-S'], teardown: t.teardown.bind(t) });
  const qmp = vm.qmpConnection;
  const file = join(dir, 'via-fdset.bin');
  const fd = openSync(file, 'wx', 0o600);
  let added: { 'fdset-id': number; fd: number };
  try {
    added = await qmp.executeWithFd<{ 'fdset-id': number; fd: number }>('add-fd', { 'fdset-id': 7, opaque: 'migbridge-test' }, fd);
  } finally {
    closeSync(fd);
  }
  t.is(added['fdset-id'], 7);
  const sets = await qmp.execute<{ 'fdset-id': number; fds: { fd: number; opaque?: string }[] }[]>('query-fdsets');
  const set = sets.find((s) => s['fdset-id'] === 7);
  t.deepEqual(set?.fds.map((f) => [f.fd, f.opaque]), [[added.fd, 'migbridge-test']]);
  const since = qmp.eventCount;
  await qmp.execute('migrate', { uri: 'file:/dev/fdset/7' });
  const end = await qmp.waitEvent((e) => e.event === 'MIGRATION' && ['completed', 'failed'].includes(String(e.data?.status)), { since, timeoutMs: 120_000, what: 'migration end' });
  t.is(end.data?.status, 'completed', JSON.stringify(await qmp.execute('query-migrate')));
  const report = await inspectStreamFile(file);
  t.is(report.header.magicText, 'QEVM');
  t.truthy(report.vmdesc);
});
