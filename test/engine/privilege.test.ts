// A root migbridge beside an unprivileged user (nobody) who can write the directory the
// outputs go to: planted symlinks must never make root write through them, outputs, tees and
// sockets are 0600 whatever the umask, and a unix endpoint is always a path (never a TCP port).
import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, lstatSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { join } from 'node:path';
import { proxyListening, waitFor } from '../helpers/cli-run.js';
import { asNobody, cannotActAsNobody, describeRun, missing, modeOf, runCli, scratchDir, startCli, TWO_MTTY } from '../helpers/output-safety.js';

/** A root-owned file nobody may write, the target of every planted link. */
function victim(dir: string): { path: string; content: string } {
  const path = join(dir, 'victim');
  const content = `root's file ${Math.random()}`;
  writeFileSync(path, content, { mode: 0o600 });
  return { path, content };
}

/** A directory nobody can write (0777, no sticky bit: the kernel's protected_symlinks does not apply). */
function sharedDir(t: ExecutionContext): { dir: string; out: string } {
  const dir = scratchDir(t, 0o755);
  const out = join(dir, 'shared');
  mkdirSync(out);
  chmodSync(out, 0o777);
  return { dir, out };
}

/**
 * The old temporary names (`.NAME.partial-PID`) for the next 3000 PIDs, planted as symlinks by
 * nobody from one process (a process per link would use up the very PIDs it plants).
 */
function plantPidNames(dir: string, name: string, target: string): void {
  const script = `const fs=require('fs');const n=Number(fs.readFileSync('/proc/sys/kernel/ns_last_pid','utf8'));for(let i=n+1;i<=n+3000;i++)fs.symlinkSync(${JSON.stringify(target)},${JSON.stringify(dir + '/.' + name + '.partial-')}+i)`;
  const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e', script], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`planting links as nobody: ${r.stderr}`);
}

test('save -o: symlinks planted at the final name and at guessable temporary names never redirect the write', async (t) => {
  if (missing(t, cannotActAsNobody())) return;
  const { dir, out } = sharedDir(t);
  const v = victim(dir);
  asNobody(`ln -s ${v.path} ${out}/state.mig`);
  plantPidNames(out, 'state.mig', v.path);
  const r = await runCli(t, ['save', '--device', 'sim:size=1MiB', '-o', join(out, 'state.mig')], { umask: '000' });
  t.is(r.code, 0, describeRun(r));
  t.is(readFileSync(v.path, 'utf8'), v.content, 'the victim is untouched');
  const st = lstatSync(join(out, 'state.mig'));
  t.true(st.isFile(), 'the planted link was replaced by the output itself');
  t.is(st.mode & 0o777, 0o600, 'output 0600 under umask 000');
  t.is(st.uid, 0);
});

for (const cmd of ['rewrite', 'reframe', 'inject'] as const) {
  test(`${cmd}: a symlink planted at the output name is replaced, never written through`, async (t) => {
    if (missing(t, cannotActAsNobody())) return;
    const { dir, out } = sharedDir(t);
    const v = victim(dir);
    asNobody(`ln -s ${v.path} ${out}/o.mig`);
    plantPidNames(out, 'o.mig', v.path);
    const data = join(dir, 'dev.data');
    writeFileSync(data, Buffer.alloc(60, 1));
    const args = cmd === 'inject' ? ['inject', TWO_MTTY, '--device-data', `0000:00:04.0/vfio=${data}`, '-o', join(out, 'o.mig')] : [cmd, TWO_MTTY, join(out, 'o.mig')];
    const r = await runCli(t, args, { umask: '000' });
    t.is(r.code, 0, describeRun(r));
    t.is(readFileSync(v.path, 'utf8'), v.content, 'the victim is untouched');
    t.true(lstatSync(join(out, 'o.mig')).isFile());
    t.is(modeOf(join(out, 'o.mig')), 0o600);
  });
}

test('extract: symlinks planted at every final name (data, config, manifest, RAM image) are replaced, targets untouched', async (t) => {
  if (missing(t, cannotActAsNobody())) return;
  const { dir, out } = sharedDir(t);
  const v = victim(dir);
  for (const name of ['0000:00:04.0%2Fvfio.data', '0000:00:04.0%2Fvfio.config', '0000:00:05.0%2Fvfio.data', 'manifest.json', 'pc.ram']) {
    asNobody(`ln -s ${v.path} '${out}/${name}'`);
  }
  const r = await runCli(t, ['extract', TWO_MTTY, '--out', out, '--ram', out], { umask: '000' });
  t.is(r.code, 0, describeRun(r));
  t.is(readFileSync(v.path, 'utf8'), v.content, 'the victim is untouched');
  for (const name of ['0000:00:04.0%2Fvfio.data', 'manifest.json', 'pc.ram']) {
    const st = lstatSync(join(out, name));
    t.true(st.isFile(), `${name} is our file, not the link`);
    t.is(st.mode & 0o777, 0o600, `${name} 0600 under umask 000`);
  }
});

test('extract: a missing output directory is created (one level) 0700 under umask 000', async (t) => {
  const dir = scratchDir(t);
  const r = await runCli(t, ['extract', TWO_MTTY, '--out', join(dir, 'new')], { umask: '000' });
  t.is(r.code, 0, describeRun(r));
  t.is(modeOf(join(dir, 'new')), 0o700);
});

/** save --to unix:IN -> proxy -> restore --from unix:OUT, all in `cwd`, the proxy under `umask`. */
async function proxyRun(t: ExecutionContext, cwd: string, listen: string, umask: string, extra: string[] = []): Promise<void> {
  const dst = startCli(t, ['restore', '--from', 'unix:out.sock', '--device', 'sim:size=2MiB'], { cwd, umask });
  await waitFor('the destination socket', () => existsSync(join(cwd, 'out.sock')), 30_000);
  const proxy = startCli(t, ['proxy', '--listen', `unix:${listen}`, '--to', 'unix:out.sock', '--progress', '--output=json', ...extra], { cwd, umask });
  await proxyListening(proxy, 30_000);
  // The socket is a file named exactly as given, 0600, and nothing listens on a TCP port of that number.
  const sock = statSync(join(cwd, listen));
  t.true(sock.isSocket(), `a unix socket named ${listen}`);
  t.is(sock.mode & 0o777, 0o600, `listen socket 0600 under umask ${umask}`);
  t.is(modeOf(join(cwd, 'out.sock')), 0o600, `restore --from socket 0600 under umask ${umask}`);
  const port = Number(listen);
  if (Number.isInteger(port)) {
    const tcp = await new Promise<string>((resolve) => {
      const c = net.connect({ host: '127.0.0.1', port });
      c.once('connect', () => { c.destroy(); resolve('connected'); });
      c.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
    });
    t.is(tcp, 'ECONNREFUSED', `no TCP listener on port ${port}`);
    const hex = port.toString(16).toUpperCase().padStart(4, '0');
    const listening = readFileSync('/proc/net/tcp', 'utf8').split('\n').concat(readFileSync('/proc/net/tcp6', 'utf8').split('\n'))
      .filter((l) => l.split(/\s+/)[2]?.endsWith(`:${hex}`) && l.split(/\s+/)[4] === '0A');
    t.deepEqual(listening, [], `/proc/net/tcp has no listener on ${port}`);
  }
  const src = await runCli(t, ['save', '--device', 'sim:size=2MiB', '--to', `unix:${listen}`], { cwd, umask });
  t.is(src.code, 0, describeRun(src));
  const p = await proxy.done;
  t.is(p.code, 0, describeRun(p));
  const d = await dst.done;
  t.is(d.code, 0, describeRun(d));
}

for (const name of ['4444', '0x115c']) {
  test(`proxy --listen unix:${name}: a socket file named ${name}, no TCP port; sockets 0600 under umask 000`, async (t) => {
    const dir = scratchDir(t);
    await proxyRun(t, dir, name, '000');
  });
}

test('proxy --tee under umask 022 and 000: the tee is 0600; a symlink planted at the tee name is replaced', async (t) => {
  if (missing(t, cannotActAsNobody())) return;
  for (const umask of ['022', '000']) {
    const { dir, out } = sharedDir(t);
    const v = victim(dir);
    asNobody(`ln -s ${v.path} ${out}/tee.mig`);
    plantPidNames(out, 'tee.mig', v.path);
    await proxyRun(t, out, 'in.sock', umask, ['--tee', 'tee.mig']);
    t.is(readFileSync(v.path, 'utf8'), v.content, 'the victim is untouched');
    t.true(lstatSync(join(out, 'tee.mig')).isFile());
    t.is(modeOf(join(out, 'tee.mig')), 0o600, `tee 0600 under umask ${umask}`);
  }
});

test('an existing path at the listen location is refused (file, live socket); a stale socket is replaced', async (t) => {
  const dir = scratchDir(t);
  writeFileSync(join(dir, 'busy'), 'keep');
  const file = await runCli(t, ['proxy', '--listen', 'unix:busy', '--to', 'unix:out.sock', '--output=json'], { cwd: dir });
  t.is(file.code, 1, describeRun(file));
  t.regex(file.stderr, /"code":"EEXIST"/);
  t.is(readFileSync(join(dir, 'busy'), 'utf8'), 'keep', 'the file is untouched');

  const live = net.createServer();
  await new Promise<void>((r) => live.listen(join(dir, 'live.sock'), r));
  t.teardown(() => live.close());
  const inUse = await runCli(t, ['restore', '--from', 'unix:live.sock', '--device', 'sim:size=1MiB', '--output=json'], { cwd: dir });
  t.is(inUse.code, 1, describeRun(inUse));
  t.regex(inUse.stderr, /"code":"EADDRINUSE"/);
  t.true(statSync(join(dir, 'live.sock')).isSocket(), 'the live socket is left alone');

  // A socket whose listener is gone: left by a process killed while listening.
  spawnSync(process.execPath, ['-e', `const s=require('net').createServer();s.listen(${JSON.stringify(join(dir, 'stale2.sock'))},()=>process.kill(process.pid,'SIGKILL'))`]);
  t.true(statSync(join(dir, 'stale2.sock')).isSocket(), 'a stale socket left by a killed process');
  await proxyRun(t, dir, 'stale2.sock', '022');
});

test('proxy --socket-mode widens the listening socket on request (660), and takes only an octal mode', async (t) => {
  const dir = scratchDir(t);
  const proxy = startCli(t, ['proxy', '--listen', 'unix:in.sock', '--to', 'unix:out.sock', '--socket-mode', '660', '--progress', '--output=json'], { cwd: dir, umask: '077' });
  await proxyListening(proxy, 30_000);
  t.is(modeOf(join(dir, 'in.sock')), 0o660);
  proxy.kill();
  const bad = await runCli(t, ['proxy', '--listen', 'unix:in2.sock', '--to', 'unix:out.sock', '--socket-mode', 'a+rw'], { cwd: dir });
  t.is(bad.code, 2, describeRun(bad));
  t.false(existsSync(join(dir, 'in2.sock')));
});
