// `migbridge check` on simulated devices: a clean pair passes everything, and each hazard
// the simulator can inject comes out as exactly one finding, the one that names it.
import test from 'ava';
import { CHECK_GROUPS, CheckInterruptedError, type CheckReport, type CheckResult, DeviceInUseError, runCheck } from '../../src/check/index.js';
import { MigState } from '../../src/fsm/index.js';
import type { MigrationDevice } from '../../src/vfio/device.js';
import { VfioOpenError } from '../../src/vfio/open.js';
import { createSimDevice } from '../../src/vfio/sim/index.js';

const SRC = 'sim:id=src,size=1MiB';
const DST = 'sim:id=dst,size=1MiB';

/** Opens sims whose close() is deferred, so the test can read their state after the run. */
function keptSims(): { open: (spec: string) => Promise<MigrationDevice>; devices: MigrationDevice[]; closeAll: () => Promise<void> } {
  const devices: MigrationDevice[] = [];
  return {
    devices,
    open: async (spec) => {
      const d = createSimDevice(spec);
      devices.push(d);
      return new Proxy(d, {
        get: (t, k) => {
          if (k === 'close') return async () => undefined;
          const v = Reflect.get(t, k, t) as unknown;
          return typeof v === 'function' ? v.bind(t) : v;
        },
      }) as MigrationDevice;
    },
    closeAll: async () => {
      for (const d of devices) await d.close();
    },
  };
}

async function check(devices: string[], extra: { ioTimeoutMs?: number } = {}): Promise<{ report: CheckReport; states: MigState[] }> {
  const sims = keptSims();
  try {
    const report = await runCheck({ devices, destructive: true, timingRepeats: 3, open: sims.open, ...extra });
    const states = await Promise.all(sims.devices.map((d) => d.state()));
    return { report, states };
  } finally {
    await sims.closeAll();
  }
}

const findings = (r: CheckReport): string[] => r.results.filter((x) => x.status === 'finding').map((x) => `${x.group} ${x.evidence.device}: ${x.item}`);
const byItem = (r: CheckReport, item: string, device: string): CheckResult => r.results.find((x) => x.item === item && x.evidence.device === device)!;

test('a clean simulated pair passes every item; n/a only where nothing can apply', async (t) => {
  const { report, states } = await check([SRC, DST]);
  t.deepEqual(findings(report), []);
  t.is(report.findings, 0);
  t.deepEqual(states, [MigState.RUNNING, MigState.RUNNING], 'devices left RUNNING');
  const na = report.results.filter((x) => x.status === 'n/a').map((x) => `${x.evidence.device}: ${x.item}`).sort();
  t.deepEqual(na, [
    'dst: ERROR is left only by reset',
    'dst: GET never returns a data_fd',
    'dst: next user after a failed load',
    ...(byItem(report, 'rejected bytes are not loaded', 'dst').status === 'n/a' ? ['dst: rejected bytes are not loaded'] : []),
    'src: ERROR is left only by reset',
    'src: GET never returns a data_fd',
    'src: next user after a source quit in STOP',
  ]);
  for (const g of CHECK_GROUPS) t.true(report.results.some((x) => x.group === g && x.status === 'pass'), `${g} has passes`);
  for (const x of report.results) t.deepEqual(Object.keys(x), ['group', 'item', 'status', 'expected', 'observed', 'evidence']);
  // The simulator refuses a corrupt header while draining it: whether the write still running
  // then fails (EPIPE) depends on how much of it the pipe had taken; either way the exit fails.
  t.regex(byItem(report, 'rejected bytes are not loaded', 'dst').observed, /^1 refused writes, the exit failed after each|^no write was refused/);
  t.regex(byItem(report, 'corrupted header refused', 'dst').observed, /exit: EINVAL \(errno 22\), state RESUMING$/);
  t.regex(byItem(report, 'round trip', 'dst').observed, /1049\d+ bytes loaded and saved back unchanged/);
  t.regex(byItem(report, 'requests from RUNNING', 'src').observed, /^9 of 9 requests/);
});

const hazards: [string, string[], string, RegExp][] = [
  ['fail=eio@256KiB', [`${SRC},fail=eio@256KiB`, DST], 'data_fd src: stop-copy stream read to EOF', /after 262144 bytes .*EIO/],
  ['fail=error@stop-copy', [`${SRC},fail=error@stop-copy`, DST], 'fsm src: arcs into STOP_COPY', /STOP -> STOP_COPY: EIO \(errno 5\), state ERROR/],
  ['fail=stall@256KiB', [`${SRC},fail=stall@256KiB`, DST], 'data_fd src: stop-copy stream read to EOF', /after 262144 bytes: no answer/],
  ['fail=bad-resume', [SRC, `${DST},fail=bad-resume`], 'resume dst: round trip', /exit from RESUMING: EINVAL .*state RESUMING/],
  ['fail=write-error@256KiB (keep-bad-bytes)', [SRC, `${DST},fail=write-error@256KiB`], 'resume dst: rejected bytes are not loaded', /write EPIPE .*the exit from RESUMING succeeded/],
  ['fail=data-size@1KiB (wrong MIG_DATA_SIZE)', [`${SRC},fail=data-size@1KiB`, DST], 'sizes src: MIG_DATA_SIZE covers the stop-copy bytes', /MIG_DATA_SIZE 1024, stream 1049\d+ bytes/],
];

for (const [name, devices, finding, observed] of hazards) {
  test(`${name}: exactly one finding, "${finding}"`, async (t) => {
    // A stalled stream is only noticed by the read bound; the others keep the default bound
    // (a loaded machine must not turn a slow write into a finding).
    const { report, states } = await check(devices, name.includes('stall') ? { ioTimeoutMs: 2000 } : {});
    t.deepEqual(findings(report), [finding]);
    const [group, rest] = finding.split(' ', 2) as [string, string];
    const f = report.results.find((x) => x.status === 'finding')!;
    t.is(f.group as string, group);
    t.is(`${f.evidence.device}:`, rest);
    t.regex(f.observed, observed);
    t.deepEqual(states, [MigState.RUNNING, MigState.RUNNING], 'devices left RUNNING');
  });
}

test('read-only by default: no state change, no destructive items', async (t) => {
  const sims = keptSims();
  try {
    const report = await runCheck({ devices: [SRC], destructive: false, open: sims.open });
    t.deepEqual(report.results.map((r) => r.item), ['migration flags', 'GET never returns a data_fd', 'state at open', 'MIG_DATA_SIZE answers']);
    t.is(report.findings, 0);
    await sims.devices[0]!.setState(MigState.STOP);
    const again = await runCheck({ devices: [SRC], destructive: false, open: async () => sims.devices[0]! });
    t.deepEqual(findings(again), ['fsm src: state at open']);
  } finally {
    await sims.closeAll();
  }
});

test('an interrupted run resets the devices it touched', async (t) => {
  const sims = keptSims();
  const ac = new AbortController();
  let seen = 0;
  const err = await t.throwsAsync(
    runCheck({
      devices: [SRC, DST],
      destructive: true,
      open: sims.open,
      signal: ac.signal,
      onResult: (r) => {
        // Interrupt while the source is in STOP_COPY with its session open (data_fd group).
        if (r.item === 'EOF persists') {
          seen++;
          ac.abort('SIGINT');
        }
      },
    }),
    { instanceOf: CheckInterruptedError },
  );
  t.regex(err!.message, /interrupted \(SIGINT\)/);
  t.is(seen, 1);
  t.deepEqual(await Promise.all(sims.devices.map((d) => d.state())), [MigState.RUNNING, MigState.RUNNING]);
  await sims.closeAll();
});

test('a device in use is refused with a clear message; usage errors', async (t) => {
  const busy = await t.throwsAsync(
    runCheck({ devices: ['mdev:x'], destructive: true, open: async (spec) => { throw new VfioOpenError(spec, 'open group /dev/vfio/7', 16, 'Device or resource busy'); } }),
    { instanceOf: DeviceInUseError },
  );
  t.regex(busy!.message, /device mdev:x is in use .*refuses it/);
  await t.throwsAsync(runCheck({ devices: [], destructive: false }), { code: 'EUSAGE' });
  await t.throwsAsync(runCheck({ devices: [SRC, SRC], destructive: false }), { code: 'EUSAGE' });
});
