// QEMU migrating with tls-creds sends a TLS handshake, not a QEMU stream: `migbridge inspect`
// (and so the proxy's decoder) names it as TLS and says what to do instead, rather than
// calling it garbage. The bytes are QEMU 10's own: a source with a PSK credential migrates
// to a unix socket this test serves, which keeps what arrives before the handshake stalls.
import test from 'ava';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runningCli, waitFor } from '../helpers/cli-run.js';
import { QemuVm } from '../helpers/qemu-vm.js';

test('inspect of what a tls-creds migration sends: ESTREAM_UNSUPPORTED naming TLS and the way around it', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'migbridge-tls-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, 'keys.psk'), 'qemu:0123456789abcdef0123456789abcdef\n', { mode: 0o600 });
  const sock = join(dir, 'capture.sock');
  const chunks: Buffer[] = [];
  const conns: net.Socket[] = [];
  const server = net.createServer((c) => { conns.push(c); c.on('data', (d: Buffer) => chunks.push(d)); });
  server.listen(sock);
  await once(server, 'listening');
  t.teardown(() => { server.close(); });
  const vm = await QemuVm.start({
    version: '10.0', name: 'tls source', teardown: t.teardown.bind(t),
    args: ['-M', 'pc', '-m', '32', '-S', '-object', `tls-creds-psk,id=tls0,endpoint=client,dir=${dir}`],
  });
  await vm.qmp('migrate-set-parameters', { 'tls-creds': 'tls0', 'tls-hostname': 'destination' });
  await vm.qmp('migrate', { uri: `unix:${sock}` });
  // The ClientHello is one TLS record; its header gives its length.
  await waitFor('the TLS ClientHello', () => { const b = Buffer.concat(chunks); return b.length >= 5 && b.length >= 5 + b.readUInt16BE(3); }, 60_000);
  // Hanging up fails QEMU's handshake (its monitor does not answer while the handshake waits).
  for (const c of conns) c.destroy();
  const hello = Buffer.concat(chunks);
  t.is(hello[0], 0x16, 'a TLS handshake record');
  const file = join(dir, 'tls.bin');
  await writeFile(file, hello);
  const r = await runningCli(['inspect', file, '--output=json'], 60_000, t.teardown.bind(t)).done;
  t.is(r.code, 1, r.stderr);
  const err = (JSON.parse(r.stderr.split('\n').find((l) => l.startsWith('{"error"'))!) as { error: { code: string; message: string; offset: number } }).error;
  t.is(err.code, 'ESTREAM_UNSUPPORTED');
  t.is(err.offset, 0);
  t.regex(err.message, /a TLS stream \(QEMU migrating with tls-creds\): migbridge does not decode encrypted streams/);
  t.regex(err.message, /tunnel/);
});
