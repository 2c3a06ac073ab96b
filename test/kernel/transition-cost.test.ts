// FSM transition cost on the real kernel: every single arc mtty implements for migration
// flags 0x7 (docs/vfio-migration.md §8.2), each issued as its own SET MIG_DEVICE_STATE between neighbouring
// states and timed around the SET alone (fd closes and stream I/O excluded). Measured twice:
// raw (ioctlSync on the JS thread: the kernel's cost plus one N-API call) and through the
// kernel backend (KernelDevice.setState: the ioctl on the native worker pool, then a GET
// only on failure). Reported per arc as median / p90 in microseconds; the lane prints it in
// its summary. The guest is TCG-emulated, so these are upper bounds for real hardware.
import fs from 'node:fs';
import test, { type ExecutionContext } from 'ava';
import { type DataFd, type MigrationDevice } from '../../src/vfio/device.js';
import { openDevice } from '../../src/vfio/open.js';
import { MigState } from '../../src/fsm/index.js';
import { laneEnv, reportFigure } from './lane.js';
import { State, closeAll, getState, openViaGroup, readAll, setState } from './raw.js';
import { ioctlSync } from '../../src/native/index.js';
import { defaultEngine } from '../../src/native/index.js';

const CYCLES = 40;
const name = Object.fromEntries(Object.entries(State).map(([k, v]) => [v, k])) as Record<number, string>;

/** What the measurement needs from a device, whatever the access layer. */
interface Ops<H> {
  set(to: number): Promise<H | null>;
  readAll(h: H): Promise<Buffer>;
  writeAll(h: H, b: Buffer): Promise<void>;
  close(h: H): Promise<void>;
}

const ARCS = [
  'RUNNING -> RUNNING_P2P', 'RUNNING_P2P -> RUNNING', 'RUNNING_P2P -> STOP', 'STOP -> RUNNING_P2P',
  'PRE_COPY -> PRE_COPY_P2P', 'PRE_COPY_P2P -> PRE_COPY', 'RUNNING -> PRE_COPY', 'RUNNING_P2P -> PRE_COPY_P2P',
  'STOP -> STOP_COPY', 'PRE_COPY_P2P -> STOP_COPY', 'PRE_COPY -> RUNNING', 'PRE_COPY_P2P -> RUNNING_P2P',
  'STOP_COPY -> STOP', 'STOP -> RESUMING', 'RESUMING -> STOP',
];

/** Walks every arc CYCLES times from RUNNING; returns nanoseconds per arc. */
async function measure<H>(t: ExecutionContext, ops: Ops<H>): Promise<Map<string, number[]>> {
  const samples = new Map<string, number[]>();
  let state = State.RUNNING as number;
  const step = async (to: number, opensFd: boolean): Promise<H | null> => {
    const t0 = process.hrtime.bigint();
    const h = await ops.set(to);
    const ns = Number(process.hrtime.bigint() - t0);
    const arc = `${name[state]} -> ${name[to]}`;
    t.is(h !== null, opensFd, `${arc} ${opensFd ? 'opens' : 'opens no'} data_fd`);
    (samples.get(arc) ?? samples.set(arc, []).get(arc)!).push(ns);
    state = to;
    return h;
  };
  for (let i = 0; i < CYCLES; i++) {
    await step(State.RUNNING_P2P, false);
    await step(State.STOP, false);
    await step(State.RUNNING_P2P, false);
    await step(State.RUNNING, false);

    const pre = (await step(State.PRE_COPY, true))!;
    await step(State.PRE_COPY_P2P, false);
    await step(State.PRE_COPY, false);
    await step(State.RUNNING, false);
    await ops.close(pre);

    await step(State.RUNNING_P2P, false);
    const preP2p = (await step(State.PRE_COPY_P2P, true))!;
    await step(State.RUNNING_P2P, false);
    await ops.close(preP2p);

    const sess = (await step(State.PRE_COPY_P2P, true))!;
    await step(State.STOP_COPY, false); // same session: the snapshot is appended to the open fd
    const viaPrecopy = await ops.readAll(sess);
    await ops.close(sess);
    await step(State.STOP, false);

    const copy = (await step(State.STOP_COPY, true))!;
    const stream = await ops.readAll(copy);
    await ops.close(copy);
    await step(State.STOP, false);
    if (!viaPrecopy.equals(stream)) t.fail('PRE_COPY and plain STOP_COPY gave different streams');

    const res = (await step(State.RESUMING, true))!;
    await ops.writeAll(res, stream);
    await ops.close(res);
    await step(State.STOP, false);
    await step(State.RUNNING_P2P, false);
    await step(State.RUNNING, false);
  }
  t.deepEqual([...samples.keys()].sort(), [...ARCS].sort(), 'every arc of the 0x7 FSM was measured');
  return samples;
}

function table(title: string, samples: Map<string, number[]>): string {
  const pct = (xs: number[], p: number): number => xs[Math.min(xs.length - 1, Math.floor(p * xs.length))]!;
  const us = (ns: number): string => (ns / 1000).toFixed(1).padStart(7);
  const lines = [title];
  for (const arc of ARCS) {
    const xs = [...samples.get(arc)!].sort((a, b) => a - b);
    lines.push(`  ${arc.padEnd(30)} median ${us(pct(xs, 0.5))} us  p90 ${us(pct(xs, 0.9))} us  (n=${xs.length})`);
  }
  const all = [...samples.values()].flat().sort((a, b) => a - b);
  lines.push(`  all arcs: median ${us(pct(all, 0.5)).trim()} us, p90 ${us(pct(all, 0.9)).trim()} us over ${all.length} SETs`);
  return lines.join('\n');
}

test.serial('per-arc SET cost on mtty, raw ioctl (every arc of the 0x7 FSM)', async (t) => {
  const g = openViaGroup(laneEnv().mtty1[4]!);
  try {
    ioctlSync(g.device, 0x3b6f /* VFIO_DEVICE_RESET */, 0);
    t.is(getState(g.device), State.RUNNING);
    const samples = await measure<number>(t, {
      set: async (to) => {
        const fd = setState(g.device, to);
        return fd >= 0 ? fd : null;
      },
      readAll: async (fd) => readAll(fd),
      writeAll: async (fd, b) => void t.is(fs.writeSync(fd, b, 0, b.length, null), b.length),
      close: async (fd) => fs.closeSync(fd),
    });
    t.log(reportFigure('transition-cost-1-raw', table(`FSM transition cost on mtty, raw ioctl from Node (6.12.117 guest, QEMU TCG, ${CYCLES} cycles):`, samples)));
  } finally {
    closeAll(g.container, g.group, g.device);
  }
});

test.serial('per-arc SET cost on mtty through the kernel backend (KernelDevice.setState)', async (t) => {
  const dev: MigrationDevice = await openDevice(`mdev:${laneEnv().mtty1[4]!}`);
  const io = defaultEngine();
  try {
    await dev.reset();
    const samples = await measure<DataFd>(t, {
      set: (to) => dev.setState(to as MigState),
      readAll: async (h) => readAll(h.fd),
      writeAll: async (h, b) => {
        t.is(await io.write(h.fd, b), b.length);
      },
      close: (h) => h.close(),
    });
    t.log(reportFigure('transition-cost-2-backend', table(`FSM transition cost on mtty through KernelDevice.setState (ioctl worker pool, ${CYCLES} cycles):`, samples)));
  } finally {
    await dev.close();
  }
});
