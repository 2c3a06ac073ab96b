// The endpoint module on its own: parsing and formatting (QEMU's spelling, round trip), bad
// endpoints as typed usage errors naming the text, listening binding only the address
// written (checked from outside with ss, not from our own report), IPv6, TCP_NODELAY as
// asked, and what an inherited fd is.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, statSync } from 'node:fs';
import { lookup } from 'node:dns/promises';
import * as dgram from 'node:dgram';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { UsageError } from '../../src/errors.js';
import { pipe, socketInfo, socketpair } from '../../src/native/sys.js';
import { EndpointError, connectEndpoint, formatEndpoint, inspectFd, listenEndpoint, parseEndpoint, type Listener } from '../../src/util/endpoint.js';

/** The kernel has an IPv6 loopback (::1 in /proc/net/if_inet6). */
export function hasIpv6Loopback(): boolean {
  try {
    return readFileSync('/proc/net/if_inet6', 'utf8').split('\n').some((l) => l.startsWith('00000000000000000000000000000001 '));
  } catch {
    return false;
  }
}
const IPV6 = hasIpv6Loopback();
const ipv6Test = IPV6 ? test : test.skip;
const ipv6Title = (title: string): string => (IPV6 ? title : `SKIPPED, THIS KERNEL HAS NO IPv6 LOOPBACK (/proc/net/if_inet6): ${title}`);

/** Local addresses of the TCP sockets listening on `port`, as ss (the kernel's view) lists them. */
function listeningOn(port: number): string[] {
  const out = execFileSync('ss', ['-Hltn', `sport = :${port}`], { encoding: 'utf8' });
  return out.split('\n').filter((l) => l.trim()).map((l) => l.trim().split(/\s+/)[3]!).sort();
}

function portOf(l: Listener): number {
  if (l.endpoint.kind !== 'tcp') throw new Error(`not tcp: ${formatEndpoint(l.endpoint)}`);
  return l.endpoint.port;
}

/** Connects with plain net (not the module under test) and says whether the kernel accepted. */
function plainConnect(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    s.once('connect', () => { s.destroy(); resolve('connected'); });
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
  });
}

test('valid endpoints parse to their parts and format back to the same text', (t) => {
  const cases: [string, unknown][] = [
    ['unix:/run/m.sock', { kind: 'unix', path: '/run/m.sock' }],
    ['unix:rel/m.sock', { kind: 'unix', path: 'rel/m.sock' }],
    ['tcp:127.0.0.1:4444', { kind: 'tcp', host: '127.0.0.1', port: 4444 }],
    ['tcp:[::1]:4444', { kind: 'tcp', host: '::1', port: 4444 }],
    ['tcp:[2001:db8::7]:65535', { kind: 'tcp', host: '2001:db8::7', port: 65535 }],
    ['tcp:migration-host.example:49152', { kind: 'tcp', host: 'migration-host.example', port: 49152 }],
    ['tcp:localhost:0', { kind: 'tcp', host: 'localhost', port: 0 }],
    ['tcp:0.0.0.0:4444', { kind: 'tcp', host: '0.0.0.0', port: 4444 }],
    ['tcp:[::]:4444', { kind: 'tcp', host: '::', port: 4444 }],
    ['fd:0', { kind: 'fd', fd: 0 }],
    ['fd:17', { kind: 'fd', fd: 17 }],
  ];
  for (const [text, want] of cases) {
    const ep = parseEndpoint(text, '--listen', 'listen');
    t.deepEqual(ep, want, text);
    t.is(formatEndpoint(ep), text);
  }
});

test('bad endpoints: a typed usage error naming the option and the text, saying what is wrong', (t) => {
  const cases: [string, RegExp, 'listen' | 'connect'][] = [
    ['', /not an endpoint/, 'listen'],
    ['/tmp/in.sock', /not an endpoint/, 'listen'],
    ['exec:cat', /not an endpoint/, 'listen'],
    ['unix:', /socket path is empty/, 'listen'],
    ['tcp:4444', /tcp: takes HOST:PORT/, 'listen'],
    ['tcp::4444', /the host is missing/, 'listen'],
    ['tcp:localhost', /tcp: takes HOST:PORT/, 'listen'],
    ['tcp:localhost:http', /port "http" is not a number/, 'listen'],
    ['tcp:localhost:65536', /port "65536"/, 'listen'],
    ['tcp:localhost:-1', /port "-1"/, 'listen'],
    ['tcp:::1:4444', /IPv6 address goes in brackets/, 'listen'],
    ['tcp:fe80::1:4444', /IPv6 address goes in brackets/, 'listen'],
    ['tcp:[::1]4444', /\[ADDR\]:PORT/, 'listen'],
    ['tcp:[::1:4444', /\[ADDR\]:PORT/, 'listen'],
    ['tcp:[127.0.0.1]:4444', /not an IPv6 address/, 'listen'],
    ['tcp:10.1:4444', /neither an IPv4 address nor a host name/, 'listen'],
    ['tcp:0x7f.1:4444', /neither an IPv4 address nor a host name/, 'listen'],
    ['tcp:256.1.1.1:4444', /neither an IPv4 address nor a host name/, 'listen'],
    ['tcp:bad_name:4444', /neither an IPv4 address nor a host name/, 'listen'],
    ['tcp:127.0.0.1:0', /port 0 can only be listened on/, 'connect'],
    ['fd:', /file descriptor number/, 'listen'],
    ['fd:-1', /file descriptor number/, 'listen'],
    ['fd:3x', /file descriptor number/, 'listen'],
    ['fd:99999999999', /file descriptor number/, 'listen'],
  ];
  for (const [text, why, use] of cases) {
    const e = t.throws(() => parseEndpoint(text, '--to', use), { instanceOf: EndpointError }, text);
    t.true(e instanceof UsageError, 'a usage error (exit 2)');
    t.is(e!.text, text);
    t.true(e!.message.startsWith(`--to ${JSON.stringify(text)}: `), e!.message);
    t.regex(e!.message, why, text);
    t.is(e!.toJSON().endpoint, text);
  }
});

test('tcp: listening on 127.0.0.1 port 0 binds 127.0.0.1 alone on the port the kernel chose, and takes a connection', async (t) => {
  const l = await listenEndpoint(parseEndpoint('tcp:127.0.0.1:0', '--listen', 'listen'), { what: '--listen' });
  t.teardown(() => l.close());
  const port = portOf(l);
  t.true(port > 0);
  t.is(formatEndpoint(l.endpoint), `tcp:127.0.0.1:${port}`);
  t.deepEqual(listeningOn(port), [`127.0.0.1:${port}`], 'only the address given, no wildcard');
  const got = new Promise<string>((resolve) => l.onConnection((s) => s.setEncoding('utf8').once('data', resolve)));
  const c = await connectEndpoint(l.endpoint, { what: '--to', waitMs: 0 });
  c.end('hello');
  t.is(await got, 'hello');
  await l.close();
  t.deepEqual(listeningOn(port), [], 'closed');
});

test('tcp: a name binds the first address it resolves to, never a wildcard', async (t) => {
  const [first] = await lookup('localhost', { all: true, order: 'verbatim' });
  const l = await listenEndpoint(parseEndpoint('tcp:localhost:0', '--listen', 'listen'), { what: '--listen' });
  t.teardown(() => l.close());
  const port = portOf(l);
  t.like(l.endpoint, { kind: 'tcp', host: first!.address });
  const shown = first!.family === 6 ? `[${first!.address}]:${port}` : `${first!.address}:${port}`;
  t.deepEqual(listeningOn(port), [shown]);
});

test('tcp: a name that does not resolve is a setup error naming the endpoint', async (t) => {
  const e = await t.throwsAsync(listenEndpoint(parseEndpoint('tcp:no-such-host.invalid:0', '--listen', 'listen'), { what: '--listen' }));
  t.regex(e!.message, /cannot resolve the host of tcp:no-such-host\.invalid:0/);
  t.false(e instanceof UsageError);
});

test('tcp: a port in use is a setup error with its errno code, naming the endpoint', async (t) => {
  const l = await listenEndpoint(parseEndpoint('tcp:127.0.0.1:0', '--listen', 'listen'), { what: '--listen' });
  t.teardown(() => l.close());
  const again = formatEndpoint(l.endpoint);
  const e = await t.throwsAsync(listenEndpoint(parseEndpoint(again, '--listen', 'listen'), { what: '--listen' }));
  t.like(e, { code: 'EADDRINUSE' });
  t.regex(e!.message, new RegExp(`cannot listen on ${again}`));
});

ipv6Test(ipv6Title('tcp: [::1] binds the IPv6 loopback alone: IPv4 127.0.0.1 on that port is refused'), async (t) => {
  const l = await listenEndpoint(parseEndpoint('tcp:[::1]:0', '--listen', 'listen'), { what: '--listen' });
  t.teardown(() => l.close());
  const port = portOf(l);
  t.is(formatEndpoint(l.endpoint), `tcp:[::1]:${port}`);
  t.deepEqual(listeningOn(port), [`[::1]:${port}`]);
  l.onConnection((s) => s.destroy());
  t.is(await plainConnect('::1', port), 'connected');
  t.is(await plainConnect('127.0.0.1', port), 'ECONNREFUSED');
});

ipv6Test(ipv6Title('tcp: [::] is IPv6 only (IPV6_V6ONLY): an IPv4 connection to its port is refused'), async (t) => {
  const l = await listenEndpoint(parseEndpoint('tcp:[::]:0', '--listen', 'listen'), { what: '--listen' });
  t.teardown(() => l.close());
  const port = portOf(l);
  l.onConnection((s) => s.destroy());
  t.is(await plainConnect('::1', port), 'connected');
  t.is(await plainConnect('127.0.0.1', port), 'ECONNREFUSED');
});

test('tcp: TCP_NODELAY is set only when asked (the multifd channels), as QEMU does', async (t) => {
  const l = await listenEndpoint(parseEndpoint('tcp:127.0.0.1:0', '--listen', 'listen'), { what: '--listen' });
  t.teardown(() => l.close());
  l.onConnection((s) => s.on('error', () => undefined));
  const fdOf = (s: net.Socket): number => (s as unknown as { _handle: { fd: number } })._handle.fd;
  const main = await connectEndpoint(l.endpoint, { what: '--to', waitMs: 0 });
  const channel = await connectEndpoint(l.endpoint, { what: '--to', waitMs: 0, noDelay: true });
  t.teardown(() => { main.destroy(); channel.destroy(); });
  t.false(socketInfo(fdOf(main)).noDelay);
  t.true(socketInfo(fdOf(channel)).noDelay);
});

test('tcp: connecting retries while nothing listens yet, then connects', async (t) => {
  const probe = await listenEndpoint(parseEndpoint('tcp:127.0.0.1:0', '--listen', 'listen'), { what: '--listen' });
  const at = probe.endpoint;
  await probe.close();
  await t.throwsAsync(connectEndpoint(at, { what: '--to', waitMs: 0 }), { code: 'ECONNREFUSED' });
  const later = connectEndpoint(at, { what: '--to', waitMs: 30_000 });
  const l = await listenEndpoint(at, { what: '--listen' });
  t.teardown(() => l.close());
  l.onConnection((s) => s.end('late'));
  const s = await later;
  t.is(await new Promise<string>((resolve) => s.setEncoding('utf8').once('data', resolve)), 'late');
});

test('unix: listening keeps the 0600 mode and removes the socket file on close', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'migbridge-ep-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'in.sock');
  const l = await listenEndpoint({ kind: 'unix', path }, { what: '--listen' });
  t.is(statSync(path).mode & 0o777, 0o600);
  l.onConnection((s) => s.end('u'));
  const s = await connectEndpoint({ kind: 'unix', path }, { what: '--to', waitMs: 0 });
  t.is(await new Promise<string>((resolve) => s.setEncoding('utf8').once('data', resolve)), 'u');
  await l.close();
  t.throws(() => statSync(path), { code: 'ENOENT' });
});

test('fd: what an inherited fd is: a pipe, a file, a connected or listening stream socket; anything else a typed error', async (t) => {
  const [r, w] = pipe();
  const [a, b] = socketpair();
  const dir = mkdtempSync(join(tmpdir(), 'migbridge-ep-'));
  const file = openSync(join(dir, 'f'), 'w', 0o600);
  const dirFd = openSync(dir, 'r');
  t.teardown(() => { for (const fd of [r, w, a, b, file, dirFd]) closeSync(fd); rmSync(dir, { recursive: true, force: true }); });
  t.deepEqual(inspectFd(r, '--from'), { type: 'pipe' });
  t.deepEqual(inspectFd(file, '--to'), { type: 'file' });
  t.deepEqual(inspectFd(a, '--to'), { type: 'socket', listening: false });
  const server = net.createServer().listen(0, '127.0.0.1');
  await new Promise((res) => server.once('listening', res));
  t.teardown(() => server.close());
  t.deepEqual(inspectFd((server as unknown as { _handle: { fd: number } })._handle.fd, '--listen'), { type: 'socket', listening: true });

  const isDir = t.throws(() => inspectFd(dirFd, '--from'), { instanceOf: EndpointError });
  t.regex(isDir!.message, new RegExp(`--from fd:${dirFd}: file descriptor ${dirFd} is a directory`));
  const udp = dgram.createSocket('udp4');
  await new Promise<void>((res) => udp.bind(0, '127.0.0.1', res));
  t.teardown(() => udp.close());
  const udpFd = (udp as unknown as { _handle: { fd: number } })._handle.fd;
  t.regex(t.throws(() => inspectFd(udpFd, '--to'), { instanceOf: EndpointError })!.message, /not a stream \(SOCK_STREAM\) socket/);
  const [r2, w2] = pipe();
  closeSync(r2);
  closeSync(w2);
  const closed = t.throws(() => inspectFd(r2, '--from'), { instanceOf: EndpointError });
  t.regex(closed!.message, new RegExp(`--from fd:${r2}: file descriptor ${r2} is not open in this process`));
  t.is(closed!.text, `fd:${r2}`);
});

test('fd: connecting to a pipe or a listening socket is refused; listening on a pipe is refused', async (t) => {
  const [r, w] = pipe();
  t.teardown(() => { closeSync(r); closeSync(w); });
  await t.throwsAsync(connectEndpoint({ kind: 'fd', fd: w }, { what: '--to', waitMs: 0 }), { instanceOf: EndpointError, message: /a pipe is not a connection/ });
  await t.throwsAsync(listenEndpoint({ kind: 'fd', fd: r }, { what: '--listen' }), { instanceOf: EndpointError, message: /a pipe cannot take connections/ });
  const server = net.createServer().listen(0, '127.0.0.1');
  await new Promise((res) => server.once('listening', res));
  t.teardown(() => server.close());
  const fd = (server as unknown as { _handle: { fd: number } })._handle.fd;
  await t.throwsAsync(connectEndpoint({ kind: 'fd', fd }, { what: '--to', waitMs: 0 }), { instanceOf: EndpointError, message: /a listening socket is not a connection/ });
});
