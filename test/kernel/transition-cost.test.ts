// FSM transition cost on the real kernel: every single arc mtty implements for migration
// flags 0x7 (mtty.md §3), each issued as its own SET MIG_DEVICE_STATE ioctl between
// neighbouring states, timed around the ioctl alone (fd closes and stream I/O excluded).
// Reported per arc as median / p90 in microseconds; the lane prints it in its summary.
// The figure is for a TCG-emulated guest, so it is an upper bound on real hardware.
import fs from 'node:fs';
import test from 'ava';
import { laneEnv, reportFigure } from './lane.js';
import { State, closeAll, getState, openViaGroup, readAll, setState } from './raw.js';
import { ioctlSync } from '../../src/native/index.js';

const CYCLES = 40;
const name = Object.fromEntries(Object.entries(State).map(([k, v]) => [v, k])) as Record<number, string>;

test('per-arc SET MIG_DEVICE_STATE cost on mtty (every arc of the 0x7 FSM)', (t) => {
  const uuid = laneEnv().mtty1[4]!;
  const g = openViaGroup(uuid);
  const samples = new Map<string, number[]>();
  let state = State.RUNNING as number;
  const fds: number[] = [];

  // One single-arc SET; checks the data_fd semantics of the arc while timing it.
  const step = (to: number, opensFd: boolean): number => {
    const t0 = process.hrtime.bigint();
    const fd = setState(g.device, to);
    const ns = Number(process.hrtime.bigint() - t0);
    const arc = `${name[state]} -> ${name[to]}`;
    if (opensFd) t.true(fd >= 0, `${arc} opens a data_fd`);
    else t.is(fd, -1, `${arc} opens no data_fd`);
    (samples.get(arc) ?? samples.set(arc, []).get(arc)!).push(ns);
    state = to;
    return fd;
  };

  try {
    ioctlSync(g.device, 0x3b6f /* VFIO_DEVICE_RESET */, 0);
    t.is(getState(g.device), State.RUNNING);
    for (let i = 0; i < CYCLES; i++) {
      step(State.RUNNING_P2P, false);
      step(State.STOP, false);
      step(State.RUNNING_P2P, false);
      step(State.RUNNING, false);

      fds.push(step(State.PRE_COPY, true));
      step(State.PRE_COPY_P2P, false);
      step(State.PRE_COPY, false);
      step(State.RUNNING, false);
      fs.closeSync(fds.pop()!);

      step(State.RUNNING_P2P, false);
      const pre = step(State.PRE_COPY_P2P, true);
      step(State.RUNNING_P2P, false);
      fs.closeSync(pre);

      const sess = step(State.PRE_COPY_P2P, true);
      step(State.STOP_COPY, false); // same session: the snapshot is appended to the open fd
      const viaPrecopy = readAll(sess);
      fs.closeSync(sess);
      step(State.STOP, false);

      const copy = step(State.STOP_COPY, true);
      const stream = readAll(copy);
      fs.closeSync(copy);
      step(State.STOP, false);
      t.deepEqual(viaPrecopy, stream, 'PRE_COPY and plain STOP_COPY give the same stream');

      const res = step(State.RESUMING, true);
      fs.writeSync(res, stream, 0, stream.length, null);
      fs.closeSync(res);
      step(State.STOP, false);
      step(State.RUNNING_P2P, false);
      step(State.RUNNING, false);
    }
  } finally {
    for (const fd of fds) fs.closeSync(fd);
    closeAll(g.container, g.group, g.device);
  }

  const expectedArcs = [
    'RUNNING -> RUNNING_P2P', 'RUNNING_P2P -> RUNNING', 'RUNNING_P2P -> STOP', 'STOP -> RUNNING_P2P',
    'PRE_COPY -> PRE_COPY_P2P', 'PRE_COPY_P2P -> PRE_COPY', 'RUNNING -> PRE_COPY', 'RUNNING_P2P -> PRE_COPY_P2P',
    'STOP -> STOP_COPY', 'PRE_COPY_P2P -> STOP_COPY', 'PRE_COPY -> RUNNING', 'PRE_COPY_P2P -> RUNNING_P2P',
    'STOP_COPY -> STOP', 'STOP -> RESUMING', 'RESUMING -> STOP',
  ];
  t.deepEqual([...samples.keys()].sort(), [...expectedArcs].sort(), 'every arc of the 0x7 FSM was measured');

  const pct = (xs: number[], p: number): number => xs[Math.min(xs.length - 1, Math.floor(p * xs.length))]!;
  const rows = [...samples.entries()].map(([arc, xs]) => {
    xs.sort((a, b) => a - b);
    return { arc, n: xs.length, median: pct(xs, 0.5) / 1000, p90: pct(xs, 0.9) / 1000 };
  });
  const all = rows.flatMap((r) => samples.get(r.arc)!).sort((a, b) => a - b);
  const lines = [
    `FSM transition cost on mtty (6.12.117 guest under QEMU TCG, raw ioctl from Node, ${CYCLES} cycles):`,
    ...rows.map((r) => `  ${r.arc.padEnd(30)} median ${r.median.toFixed(1).padStart(7)} us  p90 ${r.p90.toFixed(1).padStart(7)} us  (n=${r.n})`),
    `  all arcs: median ${(pct(all, 0.5) / 1000).toFixed(1)} us, p90 ${(pct(all, 0.9) / 1000).toFixed(1)} us over ${all.length} SETs`,
  ];
  t.log(reportFigure('transition-cost-raw', lines.join('\n')));
  for (const r of rows) t.true(Number.isFinite(r.median) && r.median > 0, r.arc);
});
