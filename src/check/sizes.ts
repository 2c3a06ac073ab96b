// Group "sizes": GET MIG_DATA_SIZE (read-only: it answers; destructive: it covers the bytes
// STOP_COPY really gives) and VFIO_MIG_GET_PRECOPY_INFO (EINVAL outside PRE_COPY*,
// initial bytes that drain to 0 once read).
import { MigFlag, MigState } from '../fsm/index.js';
import { VfioDeviceError } from '../vfio/device.js';
import { type CheckContext, noStream } from './context.js';
import { type Probe, outcomeText, setText } from './probe.js';
import type { WhyTable } from './types.js';

const EINVAL = 22;

export const SIZES_WHY: WhyTable = {
  'MIG_DATA_SIZE answers': 'QEMU reads it for every device to estimate the downtime before it stops the VM',
  'MIG_DATA_SIZE covers the stop-copy bytes': 'QEMU stops the VM when the estimated stop-copy bytes fit the downtime limit: an underestimate makes the real downtime longer than allowed',
  'PRECOPY_INFO outside PRE_COPY*': 'the uAPI defines the ioctl only in PRE_COPY*; an answer elsewhere is data QEMU cannot trust',
  'PRECOPY_INFO initial bytes drain': "QEMU's switchover-ack waits for initial_bytes to reach 0; bytes that never drain hold the migration forever",
};

export async function sizesReadOnly(ctx: CheckContext, p: Probe): Promise<void> {
  try {
    const size = await p.dev.stopCopySize();
    ctx.result('sizes', p, 'MIG_DATA_SIZE answers', size > 0n ? 'pass' : 'finding', 'GET MIG_DATA_SIZE gives the estimated stop-copy bytes (> 0: a state always has a header)', `${size} bytes`, { ioctl: 'VFIO_DEVICE_FEATURE GET MIG_DATA_SIZE', stopCopyLength: size });
  } catch (e) {
    ctx.result('sizes', p, 'MIG_DATA_SIZE answers', 'finding', 'GET MIG_DATA_SIZE gives the estimated stop-copy bytes', (e as Error).message, { ioctl: 'VFIO_DEVICE_FEATURE GET MIG_DATA_SIZE', ...(e instanceof VfioDeviceError && e.errno !== undefined ? { errno: e.errno } : {}) });
  }
}

async function precopyInfoErrno(p: Probe): Promise<string> {
  try {
    const i = await p.dev.precopyInfo();
    return `answered initial ${i.initialBytes}, dirty ${i.dirtyBytes}`;
  } catch (e) {
    return e instanceof VfioDeviceError && e.errno !== undefined ? (e.errno === EINVAL ? 'EINVAL' : `errno ${e.errno}`) : (e as Error).message;
  }
}

export async function sizesDestructive(ctx: CheckContext, p: Probe): Promise<void> {
  const flags = await p.dev.migrationFlags();
  await p.reset();
  let estimate: bigint | undefined;
  try {
    estimate = await p.dev.stopCopySize();
  } catch {
    estimate = undefined;
  }
  const s = await ctx.stream(p);
  const item = 'MIG_DATA_SIZE covers the stop-copy bytes';
  const expected = 'MIG_DATA_SIZE read in RUNNING is at least the bytes STOP_COPY then gives';
  if (estimate === undefined) ctx.result('sizes', p, item, 'n/a', expected, 'GET MIG_DATA_SIZE failed (see MIG_DATA_SIZE answers)');
  else if (!s.ok) ctx.result('sizes', p, item, 'n/a', expected, noStream(s));
  else {
    const real = BigInt(s.data.length);
    const status = real <= estimate ? 'pass' : 'finding';
    ctx.result('sizes', p, item, status, expected, real === estimate ? `exact: ${real} bytes` : `MIG_DATA_SIZE ${estimate}, stream ${real} bytes (${real < estimate ? 'overestimate' : `${real - estimate} bytes more than announced`})`, {
      ioctl: 'VFIO_DEVICE_FEATURE GET MIG_DATA_SIZE, then SET STOP_COPY and read to EOF',
      stopCopyLength: estimate,
      bytesRead: real,
    });
  }

  // PRECOPY_INFO outside PRE_COPY*: in RUNNING (no session) and in STOP_COPY.
  const outside: string[] = [];
  const answers: string[] = [];
  await p.reset();
  answers.push(`RUNNING: ${await precopyInfoErrno(p)}`);
  const sc = await p.reach(MigState.STOP_COPY);
  if (sc.ok) answers.push(`STOP_COPY: ${await precopyInfoErrno(p)}`);
  else outside.push(`STOP_COPY not reached (${setText(sc)})`);
  await p.reset();
  outside.unshift(...answers);
  const bad = answers.filter((o) => !o.endsWith(': EINVAL'));
  ctx.result('sizes', p, 'PRECOPY_INFO outside PRE_COPY*', bad.length ? 'finding' : 'pass', 'VFIO_MIG_GET_PRECOPY_INFO fails with EINVAL', outside.join('; '), { ioctl: 'VFIO_MIG_GET_PRECOPY_INFO', answers: outside });

  const drain = 'PRECOPY_INFO initial bytes drain';
  const drainExpected = 'in PRE_COPY initial_bytes > 0 at first, 0 (and dirty_bytes 0) once that many bytes were read';
  if (!(flags & MigFlag.PRE_COPY)) {
    ctx.result('sizes', p, drain, 'n/a', drainExpected, 'the device has no PRE_COPY');
    return;
  }
  const pc = await p.reach(MigState.PRE_COPY);
  if (!pc.ok || !pc.fd) {
    ctx.result('sizes', p, drain, 'n/a', drainExpected, `SET RUNNING -> PRE_COPY: ${setText(pc)}`);
    await p.reset();
    return;
  }
  try {
    const first = await p.dev.precopyInfo();
    const want = Number(first.initialBytes + first.dirtyBytes);
    let got = 0;
    let failed: string | undefined;
    while (got < want) {
      const o = await p.read(pc.fd, Math.min(1 << 20, want - got));
      if ('errno' in o || o.n === 0) {
        failed = `read gave ${'errno' in o ? outcomeText(o) : 'EOF'} after ${got} of ${want} bytes`;
        break;
      }
      got += o.n;
    }
    const after = await p.dev.precopyInfo();
    const ok = !failed && first.initialBytes > 0n && after.initialBytes === 0n && after.dirtyBytes === 0n;
    ctx.result('sizes', p, drain, ok ? 'pass' : 'finding', drainExpected, failed ?? `first initial ${first.initialBytes} dirty ${first.dirtyBytes}; after reading ${got} bytes initial ${after.initialBytes} dirty ${after.dirtyBytes}`, {
      ioctl: 'VFIO_MIG_GET_PRECOPY_INFO',
      first: { initialBytes: first.initialBytes, dirtyBytes: first.dirtyBytes },
      after: { initialBytes: after.initialBytes, dirtyBytes: after.dirtyBytes },
      bytesRead: got,
    });
  } catch (e) {
    ctx.result('sizes', p, drain, 'finding', drainExpected, `VFIO_MIG_GET_PRECOPY_INFO in PRE_COPY failed: ${(e as Error).message}`, { ioctl: 'VFIO_MIG_GET_PRECOPY_INFO' });
  }
  await p.reset();
}
