// SWITCHOVER_START in migbridge saves, and inspect's precopy/stop-copy split built on it:
// a 10.0+ machine type gets the marker between the stop and the first stop-copy chunk (as
// QEMU 10 writes it), an older one none; inspect then places every PART by the marker, and
// without one says "phase unknown" for PART data instead of calling it precopy.
import test, { type ExecutionContext } from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { save, type SaveOptions, type SaveReport } from '../../src/engine/save.js';
import { openSink } from '../../src/engine/sink.js';
import { inspectStreamFile, type InspectReport } from '../../src/qemu/summary.js';
import { readStreamFile } from '../../src/qemu/index.js';
import { createSimDevice, type SimDevice } from '../../src/vfio/sim/index.js';

const work = mkdtempSync(path.join(tmpdir(), 'migbridge-switchover-'));
test.after.always(() => rmSync(work, { recursive: true, force: true }));
let serial = 0;

/** Saves two precopy-capable sim devices with `opts`; returns the save result, the inspect report and the event order. */
async function saved(t: ExecutionContext, opts: Partial<SaveOptions>): Promise<{ result: SaveReport; report: InspectReport; order: string[] }> {
  const file = path.join(work, `s-${serial++}.mig`);
  const devices: SimDevice[] = [1, 2].map((i) => createSimDevice(`sim:seed=${i},size=3MiB,precopy=1MiB`));
  try {
    const result = await save({ devices, sink: await openSink({ file }), precopy: true, ...opts });
    const order: string[] = [];
    for await (const ev of readStreamFile(file)) {
      if (ev.type === 'command') order.push(ev.name);
      if (ev.type === 'vfio-data') order.push(`data:${ev.sectionKind}`);
    }
    t.teardown(() => rmSync(file, { force: true }));
    return { result, report: await inspectStreamFile(file), order };
  } finally {
    await Promise.all(devices.map((d) => d.close()));
  }
}

for (const interleave of [false, true]) {
  const framing = interleave ? 'interleave' : 'qemu';
  test.serial(`--framing ${framing}, pc-i440fx-10.0: one SWITCHOVER_START after the precopy data, before any stop-copy chunk; inspect splits by it`, async (t) => {
    const { result, report, order } = await saved(t, { interleave, machineType: 'pc-i440fx-10.0' });
    t.deepEqual(order.filter((o) => !o.startsWith('data:')), ['SWITCHOVER_START']);
    const at = order.indexOf('SWITCHOVER_START');
    // Everything before the marker is precopy PART data; everything after is stop-copy data.
    t.true(order.slice(0, at).every((o) => o === 'data:PART'), order.slice(0, at).join(' '));
    t.true(order.slice(at + 1).length > 0 && order.slice(at + 1).every((o) => o === (interleave ? 'data:PART' : 'data:END')), order.slice(at + 1).join(' '));
    t.is(report.switchoverStart, report.records.find((r) => r.command === 'SWITCHOVER_START')!.offset);
    result.devices.forEach((d, i) => {
      const v = report.vfio[i]!;
      t.true(d.precopyBytes > 0 && d.stopCopyBytes > 0, `${d.id} has both phases`);
      t.deepEqual([v.precopyBytes, v.stopCopyBytes, v.phaseUnknownBytes], [d.precopyBytes, d.stopCopyBytes, 0], `${v.idstr}: inspect's split is what save read in each phase`);
      for (const c of v.dataChunks) t.is(c.phase, c.offset < report.switchoverStart! ? 'precopy' : 'stop-copy');
    });
  });
}

for (const interleave of [false, true]) {
  test.serial(`--framing ${interleave ? 'interleave' : 'qemu'}, pc-i440fx-9.2: no SWITCHOVER_START (none for <= 9.2 machine types); PART data is "phase unknown", END data stop-copy`, async (t) => {
    const { result, report, order } = await saved(t, { interleave, machineType: 'pc-i440fx-9.2' });
    t.false(order.includes('SWITCHOVER_START'));
    t.is(report.switchoverStart, null);
    result.devices.forEach((d, i) => {
      const v = report.vfio[i]!;
      // QEMU framing: the PARTs were precopy, but the stream cannot tell them from an
      // interleaved save's stop-copy PARTs (which carry everything here).
      const expected = interleave ? [0, 0, d.precopyBytes + d.stopCopyBytes] : [0, d.stopCopyBytes, d.precopyBytes];
      t.deepEqual([v.precopyBytes, v.stopCopyBytes, v.phaseUnknownBytes], expected, v.idstr);
      t.true(v.dataChunks.every((c) => c.phase === (c.section === 'PART' ? 'unknown' : 'stop-copy')));
    });
  });
}
