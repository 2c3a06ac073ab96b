// `migbridge check --destructive` on the real mtty driver: two mtty-1 devices through the
// group path and two mtty-2 devices through cdev + iommufd. mtty's known behaviours must
// come out as findings with their evidence, and nothing else:
//  - it keeps the migration state across close (no open_device reset): a source left in
//    STOP is found in STOP by the next user ("state at open", "next user after a source
//    quit in STOP"), and a failed load leaves the next user a device in RESUMING;
//  - it fails a write whose header is bad with EFAULT, yet keeps those bytes and loads
//    them at the exit from RESUMING ("rejected bytes are not loaded").
// Also: a device open in another process is refused, and every device ends RUNNING.
import { execFile } from 'node:child_process';
import path from 'node:path';
import test from 'ava';
import { laneEnv, reportFigure } from './lane.js';
import { State, VFIO_DEVICE_RESET, closeAll, getState, openViaGroup, setState } from './raw.js';
import { ioctlSync } from '../../src/native/index.js';
import type { CheckReport } from '../../src/check/index.js';

interface Run { code: number; stdout: string; stderr: string }

function cli(...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [path.resolve('bin/migbridge.js'), ...args], { timeout: 600_000, maxBuffer: 16 << 20 }, (e, stdout, stderr) => {
      const code = e ? (typeof (e as { code?: unknown }).code === 'number' ? ((e as { code: number }).code) : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** Puts the device in `state` through raw ioctls and closes it without a reset, as a manager that quits would. */
function leaveIn(uuid: string, state: number): void {
  const g = openViaGroup(uuid);
  try {
    ioctlSync(g.device, VFIO_DEVICE_RESET, 0);
    if (state !== State.RUNNING) setState(g.device, state);
  } finally {
    closeAll(g.container, g.group, g.device);
  }
}

function stateOf(uuid: string): number {
  const g = openViaGroup(uuid);
  try {
    return getState(g.device);
  } finally {
    closeAll(g.container, g.group, g.device);
  }
}

const findingsOf = (r: CheckReport): string[] => r.results.filter((x) => x.status === 'finding').map((x) => `${x.group} ${x.evidence.device}: ${x.item}`).sort();

for (const [name, prefix, pick] of [
  ['mtty-1 group', 'mdev:', () => laneEnv().mtty1.slice(0, 2)],
  ['mtty-2 cdev+iommufd', 'cdev:mdev:', () => laneEnv().mtty2.slice(0, 2)],
] as const) {
  test.serial(`${name}: check --destructive reports mtty's known behaviours and nothing else`, async (t) => {
    const [src, dst] = pick() as [string, string];
    leaveIn(src, State.STOP); // the source's last user quit in STOP
    leaveIn(dst, State.RUNNING);
    const r = await cli('check', '--destructive', '--device', `${prefix}${src}`, '--device', `${prefix}${dst}`, '--output=json');
    t.is(r.code, 1, r.stderr);
    const report = JSON.parse(r.stdout) as CheckReport;
    t.deepEqual(findingsOf(report), [
      `fsm ${src}: state at open`,
      `resume ${dst}: next user after a failed load`,
      `resume ${dst}: rejected bytes are not loaded`,
      `resume ${src}: next user after a source quit in STOP`,
    ].sort());
    const f = (item: string) => report.results.find((x) => x.item === item && x.status === 'finding')!;
    t.is(f('state at open').observed, 'STOP');
    t.regex(f('rejected bytes are not loaded').observed, /corrupted header refused: write EFAULT \(errno 14\), then the exit from RESUMING succeeded/);
    t.is(f('next user after a source quit in STOP').evidence.foundAtOpen, 'STOP');
    t.is(f('next user after a failed load').evidence.foundAtOpen, 'RESUMING');
    t.is(report.results.find((x) => x.item === 'MIG_DATA_SIZE covers the stop-copy bytes' && x.evidence.device === src)!.observed, `exact: ${name.startsWith('mtty-1') ? 60 : 96} bytes`);
    t.is(report.results.find((x) => x.item === 'round trip')!.status, 'pass');
    // The GET's own bytes, read back from the kernel: data_fd -1.
    const get = report.results.find((x) => x.item === 'GET never returns a data_fd' && x.evidence.device === src)!;
    t.is(get.status, 'pass', get.observed);
    t.is(get.evidence.dataFd, -1);
    t.deepEqual([stateOf(src), stateOf(dst)], [State.RUNNING, State.RUNNING], 'both devices left RUNNING');
    const human = await cli('check', '--destructive', '--device', `${prefix}${src}`, '--device', `${prefix}${dst}`);
    t.is(human.code, 1, human.stderr);
    t.log(reportFigure(`check-${name.split(' ')[0]}`, human.stdout));
  });
}

test.serial('a device open in another process is refused with a clear message', async (t) => {
  const uuid = laneEnv().mtty1[2]!;
  const g = openViaGroup(uuid);
  try {
    const r = await cli('check', '--destructive', '--device', `mdev:${uuid}`);
    t.is(r.code, 1);
    t.regex(r.stderr, new RegExp(`device mdev:${uuid} is in use .*refuses it`));
  } finally {
    closeAll(g.container, g.group, g.device);
  }
});
