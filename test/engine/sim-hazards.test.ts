// Restore against the simulator's reproduction of real-driver hazards (docs/devices.md),
// so engine bugs the kernel lane found are caught in the normal test command:
// fail=write-error@SIZE behaves like mtty given a bad header: the write fails, yet the
// device keeps the bytes and a SET out of RESUMING would load them. The engine must
// reset such a device (VFIO_DEVICE_RESET), never SET it RUNNING.
import test from 'ava';
import { copyFileSync, mkdtempSync, rmSync, statSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { restore, RestoreFailedError } from '../../src/engine/restore.js';
import { MigbridgeError } from '../../src/errors.js';
import { save } from '../../src/engine/save.js';
import { openSink } from '../../src/engine/sink.js';
import { MigState } from '../../src/fsm/index.js';
import { readStreamFile } from '../../src/qemu/index.js';
import { createSimDevice, type SimDevice } from '../../src/vfio/sim/index.js';

const EPIPE = 32;
const work = mkdtempSync(path.join(tmpdir(), 'migbridge-hazards-'));
test.after.always(() => rmSync(work, { recursive: true, force: true }));

/** VFIO sections of a (possibly truncated) stream in the order their data starts, with the bytes present. */
async function sectionsInOrder(file: string): Promise<{ idstr: string; bytes: number }[]> {
  const out = new Map<string, number>();
  try {
    for await (const ev of readStreamFile(file)) {
      if (ev.type === 'vfio-data-chunk') out.set(ev.section.idstr, (out.get(ev.section.idstr) ?? 0) + ev.data.length);
    }
  } catch {
    // the truncation: what was decoded before it is what restore will route
  }
  return [...out].map(([idstr, bytes]) => ({ idstr, bytes }));
}

test.serial('write error on one destination (fail=write-error): that device fails, is reset and loads nothing; the others are reset too (all or nothing)', async (t) => {
  const file = path.join(work, 'write-error.mig');
  const src = [0, 1, 2].map((i) => createSimDevice(`sim:id=s${i},seed=${i + 1},size=2MiB`));
  const dst: SimDevice[] = [
    createSimDevice('sim:id=d0,seed=50,size=2MiB'),
    // Takes 300000 bytes (4 whole blocks, then part of block 4), then writes fail.
    createSimDevice('sim:id=hazard,seed=51,size=2MiB,fail=write-error@300000'),
    createSimDevice('sim:id=d2,seed=52,size=2MiB'),
  ];
  try {
    await save({ devices: src, sink: await openSink({ file }) });
    const own = dst[1]!.stateDigest();
    const e = await t.throwsAsync(restore({ events: readStreamFile(file), devices: dst }), { instanceOf: RestoreFailedError });
    const byId = new Map(e!.report.devices.map((d) => [d.id, d]));
    const bad = byId.get('hazard')!;
    t.false(bad.ok, 'the device whose write failed is reported failed');
    t.is(bad.error?.errno, EPIPE, 'the write error (EPIPE from the simulator; EFAULT from mtty) is reported');
    t.regex(e!.message, /hazard/);
    // The point of the test: the damaged bytes the device kept were never loaded.
    t.is(dst[1]!.loads, 0, 'no exit from RESUMING loaded the damaged data');
    t.is(dst[1]!.resumeResult, undefined);
    t.is(bad.verified, undefined, 'no self-check ran: nothing was loaded');
    t.is(dst[1]!.stateDigest(), own, 'the device keeps its own state');
    t.is(bad.recovery, 'reset', 'recovered by VFIO_DEVICE_RESET, not a SET out of RESUMING');
    t.not(dst[1]!.stateDigest(), src[1]!.stateDigest());
    t.is(await dst[1]!.state(), MigState.RUNNING);
    // All or nothing: the others got their whole state, yet are reset too, so no
    // destination runs while another could not be restored.
    for (const i of [0, 2]) {
      const d = dst[i]!;
      const r = byId.get(d.id)!;
      t.false(r.ok, `${d.id} is not reported restored`);
      t.is(r.error?.code, 'ERESTORE_PEER', `${d.id}: reset because of hazard`);
      t.regex(String(r.error?.message), /hazard failed/);
      t.is(r.recovery, 'reset');
      t.is(await d.state(), MigState.RUNNING);
    }
    t.false(e!.report.ok);
  } finally {
    await Promise.all([...src, ...dst].map((d) => d.close()));
  }
});

test.serial('a truncated stream after a destination write failed (fail=write-error): the stream error resets every device; none loads', async (t) => {
  const file = path.join(work, 'trunc-src.mig');
  const cut = path.join(work, 'trunc-cut.mig');
  const src = [0, 1, 2].map((i) => createSimDevice(`sim:id=t${i},seed=${i + 1},size=2MiB`));
  // The hazard device takes the first section; the stream ends inside the second.
  const dst: SimDevice[] = [
    createSimDevice('sim:id=hazard,seed=61,size=2MiB,fail=write-error@100000'),
    createSimDevice('sim:id=e1,seed=62,size=2MiB'),
    createSimDevice('sim:id=e2,seed=63,size=2MiB'),
  ];
  try {
    await save({ devices: src, sink: await openSink({ file }) });
    copyFileSync(file, cut);
    truncateSync(cut, Math.floor(statSync(file).size * 0.5));
    // The save writes data sections in completion order: map the first one to the hazard
    // device (as --map IDSTR=0 does), and check that it would be
    // sent far more than the 100000 bytes the device takes before the stream breaks.
    const order = await sectionsInOrder(cut);
    t.is(order.length >= 1 && order[0]!.bytes > 100000 + 4096, true, `first section ${JSON.stringify(order[0])} is long enough to trip the fault`);
    const own = dst.map((d) => d.stateDigest());
    const map = new Map([[order[0]!.idstr, 0]]);
    const e = await t.throwsAsync(restore({ events: readStreamFile(cut), devices: dst, map }), { instanceOf: MigbridgeError });
    t.regex(e!.message, /every device was reset to RUNNING/);
    for (const [i, d] of dst.entries()) {
      t.is(d.loads, 0, `${d.id}: nothing loaded`);
      t.is(d.stateDigest(), own[i], `${d.id} keeps its own state`);
      t.is(await d.state(), MigState.RUNNING);
    }
  } finally {
    await Promise.all([...src, ...dst].map((d) => d.close()));
  }
});
