// Every endpoint kind through every command that moves a stream: save --to, restore --from,
// proxy --listen/--to, and the proxy's multifd channels (stand-ins replaying a captured QEMU
// 10 multifd migration). What is checked: the restored sim devices verify against the
// digest their source wrote (so every byte arrived), where each listener is bound from the
// kernel's view (ss), and fd:N with fds a child inherits. Bad endpoints exit 2 naming the text.
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { closeSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipe, socketpair } from '../../src/native/sys.js';
import { type CliResult, cliNotes, runningCli, waitFor } from '../helpers/cli-run.js';
import { ROOT } from '../qemu/codec-helpers.js';

const IPV6 = readFileSync('/proc/net/if_inet6', { encoding: 'utf8', flag: 'r' }).split('\n').some((l) => l.startsWith('00000000000000000000000000000001 '));
const ipv6Test = IPV6 ? test : test.skip;
const ipv6Title = (title: string): string => (IPV6 ? title : `SKIPPED, THIS KERNEL HAS NO IPv6 LOOPBACK (/proc/net/if_inet6): ${title}`);
/** A loopback for the tests that need two families: ::1 where the kernel has it. */
const LOOP6 = IPV6 ? '[::1]' : '127.0.0.1';

const SIZE = 'size=1MiB';

function scratch(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'migbridge-endpoints-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function describe(r: CliResult): string {
  return `exit ${String(r.code)}\nstderr: ${r.stderr.slice(-3000)}\nstdout: ${r.stdout.slice(0, 2000)}`;
}

function json<T>(r: CliResult): T {
  try {
    return JSON.parse(r.stdout) as T;
  } catch {
    throw new Error(`no JSON report: ${describe(r)}`);
  }
}

/** Waits for the CLI's "listening" note (--progress --output=json) and returns its endpoint. */
async function listeningAt(cli: ReturnType<typeof runningCli>): Promise<string> {
  let at: string | undefined;
  await waitFor('the listening note', () => {
    at = cliNotes(cli.stderr()).find((n) => n.type === 'listening')?.endpoint as string | undefined;
    return at !== undefined;
  }, 60_000);
  return at!;
}

function portOf(endpoint: string): number {
  const m = /:(\d+)$/.exec(endpoint);
  if (!m) throw new Error(`no port in ${endpoint}`);
  return Number(m[1]);
}

/** Local addresses of the TCP listeners on `port`, from ss (the kernel's view). */
function listenersOn(port: number): string[] {
  return execFileSync('ss', ['-Hltn', `sport = :${port}`], { encoding: 'utf8' }).split('\n').filter((l) => l.trim()).map((l) => l.trim().split(/\s+/)[3]!).sort();
}

function restoreFrom(t: ExecutionContext, from: string, fds: number[] = []): ReturnType<typeof runningCli> {
  return runningCli(['restore', '--from', from, '--device', `sim:${SIZE}`, '--progress', '--output=json'], 120_000, t.teardown.bind(t), fds);
}

function saveTo(t: ExecutionContext, to: string, seed: number, fds: number[] = []): ReturnType<typeof runningCli> {
  return runningCli(['save', '--device', `sim:seed=${seed},${SIZE}`, '--to', to, '--output=json'], 120_000, t.teardown.bind(t), fds);
}

interface RestoreReport { ok: boolean; devices: { ok: boolean; verified?: boolean; verifiedAgainst?: string }[] }

/** Both ends succeeded and the restored device verified against the state its source (seed) wrote. */
async function transferred(t: ExecutionContext, save: ReturnType<typeof runningCli>, restore: ReturnType<typeof runningCli>, seed: number): Promise<{ save: { stream: string } }> {
  const [s, r] = await Promise.all([save.done, restore.done]);
  t.is(s.code, 0, describe(s));
  t.is(r.code, 0, describe(r));
  const rep = json<RestoreReport>(r);
  t.true(rep.devices[0]!.verified, describe(r));
  t.regex(rep.devices[0]!.verifiedAgainst ?? '', new RegExp(`seed=0x${seed.toString(16)}\\b`));
  return { save: json<{ stream: string }>(s) };
}

test('save --to tcp:127.0.0.1:P into restore --from tcp:127.0.0.1:0: the chosen port is reported, only 127.0.0.1 is bound', async (t) => {
  const restore = restoreFrom(t, 'tcp:127.0.0.1:0');
  const at = await listeningAt(restore);
  const port = portOf(at);
  t.is(at, `tcp:127.0.0.1:${port}`);
  t.true(port > 0);
  t.deepEqual(listenersOn(port), [`127.0.0.1:${port}`], 'the address given, no wildcard');
  const { save } = await transferred(t, saveTo(t, at, 0x31), restore, 0x31);
  t.is(save.stream, at);
});

ipv6Test(ipv6Title('save --to tcp:[::1]:P into restore --from tcp:[::1]:0: IPv6 literal, only ::1 bound'), async (t) => {
  const restore = restoreFrom(t, 'tcp:[::1]:0');
  const at = await listeningAt(restore);
  const port = portOf(at);
  t.is(at, `tcp:[::1]:${port}`);
  t.deepEqual(listenersOn(port), [`[::1]:${port}`]);
  await transferred(t, saveTo(t, at, 0x32), restore, 0x32);
});

test('a host name: restore --from tcp:localhost:0 binds what localhost resolves to (never a wildcard); save --to tcp:localhost:P reaches it', async (t) => {
  const restore = restoreFrom(t, 'tcp:localhost:0');
  const at = await listeningAt(restore);
  const port = portOf(at);
  t.regex(at, /^tcp:(127\.0\.0\.1|\[::1\]):\d+$/);
  t.deepEqual(listenersOn(port), [at.slice(4)]);
  await transferred(t, saveTo(t, `tcp:localhost:${port}`, 0x33), restore, 0x33);
});

interface ProxyReport { ok: boolean; listen: string; to: string; forwardBytes: number; tee: { kept: boolean; bytes: number } | null; multifd: { channel: number | null; bytes: number; connection: number }[]; failure: { side: string; message: string } | null }

async function proxyThrough(t: ExecutionContext, listen: string, to: (restoreAt: string) => string, restoreFromText: string, seed: number): Promise<ProxyReport> {
  const dir = scratch(t);
  const restore = restoreFrom(t, restoreFromText);
  const restoreAt = await listeningAt(restore);
  const proxy = runningCli(['proxy', '--listen', listen, '--to', to(restoreAt), '--tee', join(dir, 'tee.mig'), '--progress', '--output=json'], 120_000, t.teardown.bind(t));
  const proxyAt = await listeningAt(proxy);
  const save = saveTo(t, proxyAt, seed);
  await transferred(t, save, restore, seed);
  const p = await proxy.done;
  t.is(p.code, 0, describe(p));
  const report = json<ProxyReport>(p);
  t.true(report.ok);
  t.is(report.listen, proxyAt);
  t.is(report.tee?.bytes, report.forwardBytes);
  t.true(report.tee?.kept);
  return report;
}

test('proxy --listen tcp:127.0.0.1:0 --to tcp:[::1]:P (IPv4 in, IPv6 out where the kernel has it), save and restore over tcp', async (t) => {
  const r = await proxyThrough(t, 'tcp:127.0.0.1:0', (at) => at, `tcp:${LOOP6}:0`, 0x41);
  t.regex(r.listen, /^tcp:127\.0\.0\.1:\d+$/);
  t.regex(r.to, new RegExp(`^tcp:${LOOP6.replace(/[[\]]/g, '\\$&')}:\\d+$`));
});

test('proxy between a unix source side and a tcp destination, and back: the kinds mix', async (t) => {
  const dir = scratch(t);
  const a = await proxyThrough(t, `unix:${join(dir, 'in.sock')}`, (at) => at, 'tcp:127.0.0.1:0', 0x42);
  t.is(a.listen, `unix:${join(dir, 'in.sock')}`);
  const b = await proxyThrough(t, 'tcp:127.0.0.1:0', (at) => at, `unix:${join(dir, 'out.sock')}`, 0x43);
  t.is(b.to, `unix:${join(dir, 'out.sock')}`);
});

// --- multifd channels over tcp: stand-ins replaying test/fixtures/qemu10-multifd ---

const FIXTURE = join(ROOT, 'test/fixtures/qemu10-multifd');

/** A destination stand-in on tcp: each connection's bytes, keyed `main` or `multifd-<id>` as QEMU tells them apart. */
async function tcpDestination(host: string): Promise<{ at: string; received: Map<string, Buffer>; close: () => void }> {
  const received = new Map<string, Buffer>();
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    const parts: Buffer[] = [];
    s.on('data', (c: Buffer) => parts.push(c));
    s.on('end', () => s.end());
    s.on('error', () => undefined);
    s.on('close', () => {
      const b = Buffer.concat(parts);
      received.set(b.subarray(0, 4).toString('latin1') === 'QEVM' ? 'main' : `multifd-${String(b[24])}`, b);
    });
  });
  await new Promise<void>((res) => server.listen(0, host, res));
  const { port } = server.address() as net.AddressInfo;
  return { at: `tcp:${net.isIPv6(host) ? `[${host}]` : host}:${port}`, received, close: () => server.close() };
}

function connectTo(endpoint: string): Promise<net.Socket> {
  const m = /^tcp:\[?([^\]]+)\]?:(\d+)$/.exec(endpoint)!;
  return new Promise((res, rej) => {
    const c = net.connect({ host: m[1]!, port: Number(m[2]) }, () => res(c));
    c.once('error', rej);
    c.resume();
  });
}

function send(c: net.Socket, b: Buffer): Promise<void> {
  return new Promise((res) => c.end(b, () => res()));
}

test('multifd over tcp: every channel gets its own connection to the tcp destination and is forwarded byte for byte', async (t) => {
  const main = readFileSync(join(FIXTURE, 'main.mig'));
  const channels = [readFileSync(join(FIXTURE, 'channel-0.bin')), readFileSync(join(FIXTURE, 'channel-1.bin'))];
  const dest = await tcpDestination(IPV6 ? '::1' : '127.0.0.1');
  t.teardown(dest.close);
  const proxy = runningCli(['proxy', '--listen', 'tcp:127.0.0.1:0', '--to', dest.at, '--progress', '--output=json'], 120_000, t.teardown.bind(t));
  const at = await listeningAt(proxy);
  // As QEMU: the channels connect first, then the main channel, all to the same endpoint.
  const ch = [await connectTo(at), await connectTo(at)];
  const m = await connectTo(at);
  for (const [i, c] of ch.entries()) await send(c, channels[i]!);
  await send(m, main);
  const r = await proxy.done;
  t.is(r.code, 0, describe(r));
  const report = json<ProxyReport>(r);
  t.deepEqual(report.multifd.map((c) => [c.channel, c.bytes]).sort(), channels.map((b, i) => [i, b.length]));
  await waitFor('the destination to see 3 connections close', () => dest.received.size === 3, 30_000);
  t.true(dest.received.get('main')!.equals(main));
  for (const [i, b] of channels.entries()) t.true(dest.received.get(`multifd-${i}`)!.equals(b), `channel ${i}`);
});

// --- fd:N, fds the child inherits ---

function handleFd(h: net.Server | net.Socket): number {
  return (h as unknown as { _handle: { fd: number } })._handle.fd;
}

test('fd:N: restore --from fd:3 accepts on an inherited listening socket; save --to fd:3 writes into an inherited connected socket', async (t) => {
  const server = net.createServer();
  await new Promise<void>((res) => server.listen(0, '127.0.0.1', res));
  const { port } = server.address() as net.AddressInfo;
  const restore = restoreFrom(t, 'fd:3', [handleFd(server)]);
  server.close(); // the child holds its own copy and accepts on it
  t.is(await listeningAt(restore), 'fd:3');
  const conn = await new Promise<net.Socket>((res, rej) => {
    const c = net.connect({ host: '127.0.0.1', port }, () => res(c));
    c.once('error', rej);
  });
  const save = saveTo(t, 'fd:3', 0x51, [handleFd(conn)]);
  conn.destroy(); // only the child's copy stays: its close ends the stream
  const { save: rep } = await transferred(t, save, restore, 0x51);
  t.is(rep.stream, 'fd:3');
});

test('fd:N: a socketpair and a pipe, one end to save --to fd:3, the other to restore --from fd:3', async (t) => {
  for (const [kind, [a, b], seed] of [['socketpair', socketpair(), 0x52], ['pipe', pipe().reverse(), 0x53]] as const) {
    const restore = restoreFrom(t, 'fd:3', [b]);
    const save = saveTo(t, 'fd:3', seed, [a]);
    closeSync(a);
    closeSync(b);
    t.log(kind);
    await transferred(t, save, restore, seed);
  }
});

test('fd:N through the proxy: --listen fd:3 (an inherited listening socket), --to fd:4 (an inherited connection to the destination)', async (t) => {
  const restore = restoreFrom(t, 'tcp:127.0.0.1:0');
  const restoreAt = await listeningAt(restore);
  const toDest = await connectTo(restoreAt);
  toDest.pause();
  const server = net.createServer();
  await new Promise<void>((res) => server.listen(0, '127.0.0.1', res));
  const { port } = server.address() as net.AddressInfo;
  const proxy = runningCli(['proxy', '--listen', 'fd:3', '--to', 'fd:4', '--progress', '--output=json'], 120_000, t.teardown.bind(t), [handleFd(server), handleFd(toDest)]);
  server.close();
  toDest.destroy();
  t.is(await listeningAt(proxy), 'fd:3');
  await transferred(t, saveTo(t, `tcp:127.0.0.1:${port}`, 0x54), restore, 0x54);
  const p = await proxy.done;
  t.is(p.code, 0, describe(p));
  t.like(json<ProxyReport>(p), { ok: true, listen: 'fd:3', to: 'fd:4' });
});

test('multifd with --to fd:N: the channel cannot open a second connection on one fd; the proxy fails naming why', async (t) => {
  const dest = await tcpDestination('127.0.0.1');
  t.teardown(dest.close);
  const toDest = await connectTo(dest.at);
  toDest.pause();
  const proxy = runningCli(['proxy', '--listen', 'tcp:127.0.0.1:0', '--to', 'fd:3', '--progress', '--output=json'], 120_000, t.teardown.bind(t), [handleFd(toDest)]);
  toDest.destroy();
  const at = await listeningAt(proxy);
  const channel = await connectTo(at);
  channel.on('error', () => undefined);
  channel.write(readFileSync(join(FIXTURE, 'channel-0.bin')).subarray(0, 4096));
  const r = await proxy.done;
  t.is(r.code, 1, describe(r));
  t.regex(r.stderr, /fd:3 is a single connection \(the main channel's\); multifd channels need a unix: or tcp: destination/);
});

test('bad endpoints and unusable fds: exit 2, a JSON EndpointError naming the text, for every option that takes one', async (t) => {
  const dir = scratch(t);
  const [r, w] = pipe();
  t.teardown(() => { closeSync(r); closeSync(w); });
  const cases: { args: string[]; endpoint: string; message: RegExp; fds?: number[] }[] = [
    { args: ['proxy', '--listen', 'tcp:4444', '--to', `unix:${join(dir, 'o')}`], endpoint: 'tcp:4444', message: /--listen "tcp:4444": tcp: takes HOST:PORT/ },
    { args: ['proxy', '--listen', `unix:${join(dir, 'i')}`, '--to', 'tcp:[::1:5'], endpoint: 'tcp:[::1:5', message: /--to "tcp:\[::1:5": an IPv6 address is written \[ADDR\]:PORT/ },
    { args: ['proxy', '--listen', `unix:${join(dir, 'i')}`, '--to', 'tcp:127.0.0.1:0'], endpoint: 'tcp:127.0.0.1:0', message: /port 0 can only be listened on/ },
    { args: ['save', '--device', 'sim', '--to', 'udp:1.2.3.4:5'], endpoint: 'udp:1.2.3.4:5', message: /--to "udp:1.2.3.4:5": not an endpoint/ },
    { args: ['restore', '--device', 'sim', '--from', 'tcp::4444'], endpoint: 'tcp::4444', message: /the host is missing/ },
    { args: ['restore', '--device', 'sim', '--from', 'fd:250'], endpoint: 'fd:250', message: /--from fd:250: file descriptor 250 is not open in this process/ },
    { args: ['proxy', '--listen', 'fd:3', '--to', `unix:${join(dir, 'o')}`], endpoint: 'fd:3', message: /--listen fd:3: a pipe cannot take connections/, fds: [r] },
    { args: ['proxy', '--listen', `unix:${join(dir, 'i')}`, '--to', 'fd:3'], endpoint: 'fd:3', message: /--to fd:3: a pipe is not a connection/, fds: [w] },
  ];
  for (const c of cases) {
    const res = await runningCli([...c.args, '--output=json'], 60_000, t.teardown.bind(t), c.fds ?? []).done;
    t.is(res.code, 2, `${c.args.join(' ')}: ${describe(res)}`);
    const err = (JSON.parse(res.stderr.trim().split('\n').pop()!) as { error: { name: string; endpoint: string; message: string } }).error;
    t.is(err.name, 'EndpointError');
    t.is(err.endpoint, c.endpoint);
    t.regex(err.message, c.message);
  }
});
