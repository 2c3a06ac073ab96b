// The synchronous syscall helpers: real pipes, socketpairs and ioctls.
import test from 'ava';
import { readSync, writeSync } from 'node:fs';
import { closeSync, ioctlSync, pipe, setNonBlocking, setPipeSize, socketpair } from '../../src/native/index.js';
import { SysError } from '../../src/errors.js';

const FIONREAD = 0x541b;
const VFIO_DEVICE_FEATURE = 0x3b75; // not a pipe ioctl: the kernel answers ENOTTY

test('pipe carries bytes and FIONREAD reports the queued count', (t) => {
  const [r, w] = pipe();
  writeSync(w, Buffer.from('hello world'));
  const n = Buffer.alloc(4);
  t.is(ioctlSync(r, FIONREAD, n), 0);
  t.is(n.readInt32LE(0), 11);
  const out = Buffer.alloc(32);
  t.is(readSync(r, out), 11);
  t.is(out.subarray(0, 11).toString(), 'hello world');
  closeSync(r);
  closeSync(w);
});

test('setPipeSize returns the size the kernel set', (t) => {
  const [r, w] = pipe();
  t.true(setPipeSize(w, 1 << 20) >= 1 << 20);
  closeSync(r);
  closeSync(w);
});

test('an ioctl the fd does not implement throws SysError ENOTTY with op and fd', (t) => {
  const [r, w] = pipe();
  const e = t.throws(() => ioctlSync(r, VFIO_DEVICE_FEATURE, null), { instanceOf: SysError }) as SysError;
  t.is(e.code, 'ENOTTY');
  t.is(e.errno, 25);
  t.is(e.op, 'ioctl');
  t.is(e.fd, r);
  closeSync(r);
  closeSync(w);
});

test('closing a closed fd throws EBADF', (t) => {
  const [r, w] = pipe();
  closeSync(r);
  closeSync(w);
  const e = t.throws(() => closeSync(r), { instanceOf: SysError }) as SysError;
  t.is(e.code, 'EBADF');
});

test('setNonBlocking makes an empty socket read fail with EAGAIN', (t) => {
  const [a, b] = socketpair();
  setNonBlocking(a, true);
  t.throws(() => readSync(a, Buffer.alloc(8)), { code: 'EAGAIN' });
  setNonBlocking(a, false);
  writeSync(b, Buffer.from('x'));
  t.is(readSync(a, Buffer.alloc(8)), 1);
  closeSync(a);
  closeSync(b);
});
