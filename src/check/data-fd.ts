// Group "data_fd" (destructive): the migration data sessions as the uAPI defines them. A
// STOP_COPY stream read to EOF (and the device saying it was whole), EOF that persists,
// the fd direction, what an ended session gives, the temporary end of PRE_COPY, and
// reads shorter than the data ready.
import { readSync } from 'node:fs';
import { Errno } from '../errno.js';
import { MigFlag, MigState } from '../fsm/index.js';
import { POLLIN, setNonBlocking } from '../native/index.js';
import { type CheckContext, noStream } from './context.js';
import { ETIMEDOUT, type Probe, outcomeText, setText } from './probe.js';
import type { WhyTable } from './types.js';
import type { DataFd } from '../vfio/device.js';

const EBADF = 9;
const { ENOMSG } = Errno;

export const DATA_FD_WHY: WhyTable = {
  'stop-copy stream read to EOF': 'QEMU reads the stop-copy data until read() returns 0 during the downtime; an error or a hang fails the migration with the VM stopped',
  'EOF persists': 'QEMU may read again after the end; data after an EOF would be lost',
  'a saving data_fd is read-only': 'the uAPI opens saving sessions read-only; a write that succeeds means the fd is not what QEMU was told',
  'a resuming data_fd is write-only': 'the uAPI opens resuming sessions write-only',
  'read after the session ended': 'after STOP_COPY -> STOP the session is gone: the uAPI allows EOF or an error, never more data',
  'write after the session ended': 'after a reset in RESUMING the session is gone: a write that succeeds would go nowhere',
  'PRE_COPY temporary end': 'QEMU treats read() == 0 or ENOMSG in PRE_COPY as "nothing more now" and keeps the VM running; any other answer fails precopy',
  'O_NONBLOCK and poll': 'a caller that polls its data_fds (one thread for many devices, as migbridge does) needs EAGAIN when nothing is ready and poll() to wake when data comes',
  'short reads': 'QEMU reads in buffer-sized pieces: a device must give exactly the bytes asked for, in order',
};

export async function dataFdGroup(ctx: CheckContext, p: Probe): Promise<void> {
  const flags = await p.dev.migrationFlags();
  const s = await ctx.stream(p);
  ctx.result('data_fd', p, 'stop-copy stream read to EOF', s.ok ? 'pass' : s.step === 'SET STOP_COPY' ? 'n/a' : 'finding', 'read() gives the state and then 0; the device reports no failure (its state is not ERROR)', s.ok ? `${s.data.length} bytes in ${s.reads} reads, then EOF` : s.reason, s.ok
    ? { ioctl: 'SET STOP_COPY, read(data_fd) until 0', bytes: s.data.length, head: s.data.subarray(0, 16).toString('hex') }
    : { step: s.step, ...(s.errno !== undefined ? { errno: s.errno } : {}), bytes: s.bytes });

  // One STOP_COPY session: EOF persists, read-only, ended by STOP_COPY -> STOP.
  const r = await p.reach(MigState.STOP_COPY);
  if (!s.ok || !r.ok || !r.fd) {
    const why = !s.ok ? noStream(s) : `SET RUNNING -> STOP_COPY: ${setText(r)}`;
    for (const item of ['EOF persists', 'a saving data_fd is read-only', 'read after the session ended']) ctx.result('data_fd', p, item, 'n/a', '', why);
  } else {
    const fd = r.fd;
    const all = await p.readToEnd(fd);
    const again = [await p.read(fd), await p.read(fd)];
    const eof = again.every((o) => !('errno' in o) && o.n === 0);
    ctx.result('data_fd', p, 'EOF persists', !all.ok ? 'n/a' : eof ? 'pass' : 'finding', 'read() keeps returning 0 after the end', all.ok ? again.map(outcomeText).join(', ') : all.reason, { reads: again.map(outcomeText) });
    const w = await p.write(fd, Buffer.from([1]));
    ctx.result('data_fd', p, 'a saving data_fd is read-only', 'errno' in w && w.errno === EBADF ? 'pass' : 'finding', 'write() fails with EBADF', outcomeText(w), { write: outcomeText(w) });
    const stop = await p.set(MigState.STOP);
    const ended = await p.read(fd, 4096);
    const endedOk = 'errno' in ended ? ended.errno !== ETIMEDOUT : ended.n === 0;
    ctx.result('data_fd', p, 'read after the session ended', !stop.ok ? 'n/a' : endedOk ? 'pass' : 'finding', 'after STOP_COPY -> STOP, read() gives EOF or an error (ENODEV for kernel drivers)', !stop.ok ? `SET STOP_COPY -> STOP: ${setText(stop)}` : 'errno' in ended ? outcomeText(ended) : ended.n === 0 ? 'EOF' : `${ended.n} more bytes`, { read: outcomeText(ended) });
  }
  await p.reset();

  // A RESUMING session: write-only, ended by reset.
  const res = await p.reach(MigState.RESUMING);
  if (!res.ok || !res.fd) {
    for (const item of ['a resuming data_fd is write-only', 'write after the session ended']) ctx.result('data_fd', p, item, 'n/a', '', `SET RUNNING -> RESUMING: ${setText(res)}`);
  } else {
    const rd = await p.read(res.fd, 16);
    ctx.result('data_fd', p, 'a resuming data_fd is write-only', 'errno' in rd && rd.errno === EBADF ? 'pass' : 'finding', 'read() fails with EBADF', outcomeText(rd), { read: outcomeText(rd) });
    const fd = res.fd;
    await p.dev.reset();
    const w = await p.write(fd, Buffer.from([0]));
    ctx.result('data_fd', p, 'write after the session ended', 'errno' in w && w.errno !== ETIMEDOUT ? 'pass' : 'finding', 'after a reset in RESUMING, write() fails (ENODEV for kernel drivers)', outcomeText(w), { write: outcomeText(w) });
  }
  await p.reset();

  await precopyEnd(ctx, p, flags);
  await shortReads(ctx, p, s.ok ? s.data : undefined, s.ok ? undefined : noStream(s));
  await p.reset();
  await nonBlocking(ctx, p, s.ok ? s.data : undefined, s.ok ? undefined : noStream(s));
  await p.reset();
}

/**
 * A fresh STOP_COPY session for an item that re-reads the stream: its data_fd, or undefined
 * after reporting the item n/a (no first stream to compare with, or the SET failed).
 */
async function stopCopySession(ctx: CheckContext, p: Probe, item: string, expected: string, stream: Buffer | undefined, why: string | undefined): Promise<DataFd | undefined> {
  if (!stream) {
    ctx.result('data_fd', p, item, 'n/a', expected, why!);
    return undefined;
  }
  const r = await p.reach(MigState.STOP_COPY);
  if (!r.ok || !r.fd) {
    ctx.result('data_fd', p, item, 'n/a', expected, `SET RUNNING -> STOP_COPY: ${setText(r)}`);
    return undefined;
  }
  return r.fd;
}

/** The STOP_COPY stream read with O_NONBLOCK: read() until EAGAIN, poll(POLLIN) for more, until 0. */
async function nonBlocking(ctx: CheckContext, p: Probe, stream: Buffer | undefined, why: string | undefined): Promise<void> {
  const item = 'O_NONBLOCK and poll';
  const expected = 'with O_NONBLOCK, read() gives data, EAGAIN when none is ready (then poll() reports POLLIN), and 0 at the end: the same bytes as a blocking read';
  const session = await stopCopySession(ctx, p, item, expected, stream, why);
  if (!session || !stream) return;
  const fd = session.fd;
  setNonBlocking(fd, true);
  const buf = Buffer.alloc(1 << 20);
  const parts: Buffer[] = [];
  let got = 0;
  let again = 0;
  let problem: string | undefined;
  for (;;) {
    let n: number;
    try {
      n = readSync(fd, buf, 0, buf.length, null);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'EAGAIN') {
        problem = `read() failed with ${code} after ${got} bytes`;
        break;
      }
      again++;
      const ready = await p.io.poll(fd, POLLIN, { timeoutMs: p.timeoutMs });
      if (!ready) {
        problem = `EAGAIN after ${got} bytes, and poll() reported nothing for ${p.timeoutMs} ms`;
        break;
      }
      continue;
    }
    if (n === 0) break;
    parts.push(Buffer.from(buf.subarray(0, n)));
    got += n;
    if (got > stream.length) {
      problem = `more bytes than the ${stream.length} of a blocking read`;
      break;
    }
  }
  if (!problem && !Buffer.concat(parts).equals(stream)) problem = `${got} bytes that differ from a blocking read's ${stream.length}`;
  ctx.result('data_fd', p, item, problem ? 'finding' : 'pass', expected, problem ?? `${got} bytes, ${again} EAGAIN answered by poll(), then 0`, { bytes: got, eagain: again });
}

async function precopyEnd(ctx: CheckContext, p: Probe, flags: number): Promise<void> {
  const item = 'PRE_COPY temporary end';
  const expected = 'once the initial and dirty bytes PRECOPY_INFO announced are read, read() gives 0 or ENOMSG and the device stays in PRE_COPY';
  if (!(flags & MigFlag.PRE_COPY)) {
    ctx.result('data_fd', p, item, 'n/a', expected, 'the device has no PRE_COPY');
    return;
  }
  const r = await p.reach(MigState.PRE_COPY);
  if (!r.ok || !r.fd) {
    ctx.result('data_fd', p, item, 'n/a', expected, `SET RUNNING -> PRE_COPY: ${setText(r)}`);
    return;
  }
  let info;
  try {
    info = await p.dev.precopyInfo();
  } catch (e) {
    ctx.result('data_fd', p, item, 'n/a', expected, `VFIO_MIG_GET_PRECOPY_INFO failed: ${(e as Error).message} (see sizes)`);
    return;
  }
  const want = Number(info.initialBytes + info.dirtyBytes);
  let got = 0;
  while (got < want) {
    const o = await p.read(r.fd, Math.min(1 << 20, want - got));
    if ('errno' in o || o.n === 0) {
      ctx.result('data_fd', p, item, 'finding', expected, `read() gave ${'errno' in o ? outcomeText(o) : 'EOF'} after ${got} of the ${want} bytes PRECOPY_INFO announced`, { precopyInfo: info, bytes: got });
      return;
    }
    got += o.n;
  }
  const end = await p.read(r.fd, 4096);
  const state = await p.state();
  const ok = ('errno' in end ? end.errno === ENOMSG : end.n === 0) && state === MigState.PRE_COPY;
  ctx.result('data_fd', p, item, ok ? 'pass' : 'finding', expected, `after ${got} bytes: read() gave ${'errno' in end ? outcomeText(end) : end.n === 0 ? '0' : `${end.n} bytes`}, state ${state === 'unreadable' ? 'unreadable' : MigState[state]}`, {
    precopyInfo: { initialBytes: info.initialBytes, dirtyBytes: info.dirtyBytes },
    bytes: got,
    endRead: outcomeText(end),
  });
}

async function shortReads(ctx: CheckContext, p: Probe, stream: Buffer | undefined, why: string | undefined): Promise<void> {
  const item = 'short reads';
  const expected = 'read(1) returns exactly 1 byte, in stream order, and the rest follows';
  const session = await stopCopySession(ctx, p, item, expected, stream, why);
  if (!session || !stream) return;
  const small = Math.min(16, stream.length);
  const parts: Buffer[] = [];
  for (let i = 0; i < small; i++) {
    const o = await p.read(session, 1);
    if ('errno' in o || o.n !== 1) {
      ctx.result('data_fd', p, item, 'finding', expected, `read(1) number ${i + 1} gave ${outcomeText(o)}`, { offset: i });
      return;
    }
    parts.push(o.data);
  }
  const rest = await p.readToEnd(session);
  const same = rest.ok && Buffer.concat([...parts, rest.data]).equals(stream);
  ctx.result('data_fd', p, item, same ? 'pass' : 'finding', expected, !rest.ok ? rest.reason : same ? `${small} one-byte reads then the rest: the same ${stream.length} bytes` : 'the bytes differ from a stream read in large pieces', {
    oneByteReads: small,
    bytes: stream.length,
  });
}
