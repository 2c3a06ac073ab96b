// `migbridge migrate` on real VFIO devices: QEMU 10 with vfio-pci on an mtty mdev, source
// paused with its UART programmed, destination waiting on another mdev; migbridge sets
// return-path + switchover-ack on both, forwards through its proxy with a tee, and reports
// the device's bytes. After `cont` the destination's UART reads back what the source's VM
// wrote, and the report's per-device bytes match `inspect` of the tee.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import type { MigrateReport } from '../../src/migrate/report.js';
import { runningCli } from '../helpers/cli-run.js';
import { laneEnv, migbridge, reportFigure } from './lane.js';
import { type Uart, programUartHmp, readUartHmp, withDevice, writeUartDev } from './qemu-guest.js';
import { scope } from './vm-scope.js';

const IDSTR = '0000:00:04.0/vfio';
const SOURCE_UART: Uart = { scr: 0x6d, lcr: 0x1f, fifo: 'migrate' };
const SCRIBBLE: Uart = { scr: 0xee, lcr: 0x00, fifo: 'zz' };

test.serial('`migbridge migrate` with switchover-ack moves a vfio-pci mtty device: the destination reads back the source\'s UART; per-device bytes match inspect of the tee', async (t) => {
  const { mtty1 } = laneEnv();
  const [srcDev, dstDev] = [mtty1[0]!, mtty1[1]!];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-kernel-migrate-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const sc = scope(t, [srcDev, dstDev]);
  await withDevice(dstDev, (d) => writeUartDev(d, SCRIBBLE));

  const src = await sc.vm({ uuid: srcDev, name: 'migrate-source', paused: true, spareQmp: true });
  await programUartHmp(src, SOURCE_UART);
  const back = await readUartHmp(src);
  t.deepEqual(back, SOURCE_UART, 'the UART programmed through the source VM reads back');
  await programUartHmp(src, SOURCE_UART); // reading popped the FIFO: fill it again
  const dst = await sc.vm({ uuid: dstDev, name: 'migrate-destination', incoming: true, spareQmp: true });

  const tee = path.join(dir, 'tee.mig');
  const t0 = performance.now();
  const r = await runningCli([
    'migrate', '--src-qmp', `unix:${src.spareQmpPath}`, '--dst-qmp', `unix:${dst.spareQmpPath}`,
    '--incoming', `unix:${path.join(dir, 'in.sock')}`, '--via-proxy', '--tee', tee,
    '--caps', 'return-path=on,switchover-ack=on', '--output=json',
  ], 110_000, t.teardown.bind(t)).done;
  const ms = performance.now() - t0;
  t.is(r.code, 0, `exit ${r.code}\n${r.stderr.slice(-3000)}\n${r.stdout.slice(0, 3000)}`);
  const rep = JSON.parse(r.stdout) as MigrateReport;
  t.true(rep.ok);
  t.deepEqual(rep.capabilities, { 'return-path': true, 'switchover-ack': true });
  t.is(rep.proxy?.returnPath.messages.SWITCHOVER_ACK, 1, 'the destination acked the switchover over the return path');
  t.true((rep.vfioBytes ?? 0) > 0, `QEMU counted VFIO bytes (${rep.vfioBytes})`);
  const dev = rep.vfio.find((d) => d.idstr === IDSTR);
  t.is(dev?.dataBytes, 60, 'mtty-1 state is 60 bytes');

  const ins = await migbridge('inspect', tee, '--output=json');
  t.is(ins.code, 0, ins.stderr);
  const inspected = (JSON.parse(ins.stdout) as { vfio: { idstr: string; dataBytes: number; precopyBytes: number; stopCopyBytes: number }[] }).vfio.find((d) => d.idstr === IDSTR);
  t.deepEqual(dev, inspected && { idstr: inspected.idstr, dataBytes: inspected.dataBytes, precopyBytes: inspected.precopyBytes, stopCopyBytes: inspected.stopCopyBytes });

  t.is(rep.destination.runState, await dst.status());
  await dst.qmp('cont');
  await dst.waitStatus((s) => s === 'running', 10_000, 'running after cont');
  t.deepEqual(await readUartHmp(dst), SOURCE_UART, "the destination's UART is what the source's VM wrote");
  await sc.finish();
  reportFigure('migrate', `migbridge migrate (switchover-ack, via proxy) of one mtty device in the guest: ${(ms / 1000).toFixed(2)} s wall, QEMU total ${rep.totalTimeMs} ms, downtime ${rep.downtimeMs} ms (wire ${rep.wireDowntimeMs} ms)`);
});
