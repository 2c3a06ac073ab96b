// A multi-device stream migbridge saves, with each framing, is loaded by a real QEMU 10
// (inside the kernel-lane guest, vfio-pci on mtty mdevs): two devices with different UART
// state are saved together by `migbridge save --framing qemu` (one END section per device)
// and `--framing interleave` (PART sections of both devices as data arrives, then the ENDs);
// each device's bytes, taken out of that stream with `migbridge extract`, are put into a
// two-device QEMU stream with `migbridge inject`, and a QEMU 10 destination with two mdevs
// loads it: each destination UART, read through HMP port I/O after `cont`, is its source's.
//
// Devices: mtty-1 [0], [1] are the sources saved by migbridge; [2], [3] carry QEMU's own
// two-device stream (source VM) and are then the destinations. Every test leaves its
// devices RUNNING with no QEMU.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { laneEnv, migbridge } from './lane.js';
import { type Uart, mapUart, readUartHmp, settleDevice, startMttyVm, withDevice, writeUartDev } from './qemu-guest.js';
import { MigState } from '../../src/fsm/index.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-kernel-multi-'));
test.after.always(() => fs.rmSync(tmp, { recursive: true, force: true }));

const IDSTRS = ['0000:00:04.0/vfio', '0000:00:05.0/vfio'];
const SOURCES: Uart[] = [
  { scr: 0x41, lcr: 0x03, fifo: 'first' },
  { scr: 0x92, lcr: 0x1b, fifo: 'second!' },
];
/** Left in the destinations first, so that a load that does nothing cannot pass. */
const SCRIBBLE: Uart = { scr: 0xee, lcr: 0x00, fifo: 'zz' };

async function json<T>(t: ExecutionContext, ...args: string[]): Promise<T> {
  const r = await migbridge(...args, '--output=json');
  if (r.code !== 0) throw new Error(`migbridge ${args.join(' ')} exited ${r.code}: ${r.stderr.trim().slice(0, 600)}`);
  t.pass();
  return JSON.parse(r.stdout) as T;
}

async function program(uuid: string, u: Uart): Promise<void> {
  await withDevice(uuid, async (d) => {
    if ((await d.state()) !== MigState.RUNNING) await d.reset();
    await writeUartDev(d, u);
  });
}

/** QEMU's own stream of a paused two-device VM (BAR0s mapped, so its config sections place them): the carrier the saved bytes go into. */
let carrier: Promise<string> | undefined;
function qemuCarrier(uuids: readonly string[]): Promise<string> {
  carrier ??= (async () => {
    const file = path.join(tmp, 'carrier.mig');
    const vm = await startMttyVm({ uuid: uuids[0]!, more: uuids.slice(1), name: 'multi-carrier', paused: true });
    try {
      for (let i = 0; i < uuids.length; i++) await mapUart(vm, i);
      await vm.migrateToFile(file);
    } finally {
      await vm.quit();
    }
    for (const u of uuids) await settleDevice(u);
    return file;
  })();
  return carrier;
}

interface InspectJson { vfio: { idstr: string; dataBytes: number; dataChunks: { section: string }[] }[] }
interface ExtractJson { vfio: { devices: { idstr: string; dataFile: string; dataBytes: number }[] } }

for (const framing of ['qemu', 'interleave'] as const) {
  test.serial(`migbridge save --framing ${framing} of two mtty devices loads into a two-device QEMU 10 destination, each UART its source's`, async (t) => {
    const { mtty1 } = laneEnv();
    const sources = [mtty1[0]!, mtty1[1]!];
    const dests = [mtty1[2]!, mtty1[3]!];
    let vm: Awaited<ReturnType<typeof startMttyVm>> | undefined;
    t.teardown(async () => {
      await vm?.kill();
      for (const u of [...sources, ...dests]) await settleDevice(u).catch((e: unknown) => console.error(`multi-device teardown: ${u}: ${String(e)}`));
    });
    const file = await qemuCarrier(dests);

    for (let i = 0; i < sources.length; i++) await program(sources[i]!, SOURCES[i]!);
    const saved = path.join(tmp, `saved-${framing}.mig`);
    const devArgs = sources.flatMap((u, i) => ['--device', `mdev:${u}`, '--idstr', IDSTRS[i]!]);
    await json(t, 'save', ...devArgs, '--framing', framing, '-o', saved);

    const ins = await json<InspectJson>(t, 'inspect', saved);
    t.deepEqual(ins.vfio.map((d) => [d.idstr, d.dataBytes]), IDSTRS.map((s) => [s, 60]), 'the stream holds both devices, 60 bytes each');
    t.log(`${framing}: data chunks in sections ${JSON.stringify(ins.vfio.map((d) => d.dataChunks.map((c) => c.section)))}`);

    const ex = await json<ExtractJson>(t, 'extract', saved, '--out', path.join(tmp, `extract-${framing}`));
    const injectArgs = IDSTRS.flatMap((idstr) => {
      const dev = ex.vfio.devices.find((d) => d.idstr === idstr);
      if (!dev) throw new Error(`extract found no ${idstr}`);
      return ['--device-data', `${idstr}=${dev.dataFile}`];
    });
    const loadable = path.join(tmp, `loadable-${framing}.mig`);
    await json(t, 'inject', file, ...injectArgs, '-o', loadable);

    for (const d of dests) await program(d, SCRIBBLE);
    vm = await startMttyVm({ uuid: dests[0]!, more: dests.slice(1), name: `multi-dst-${framing}`, incoming: true });
    t.is(await vm.migrateIncomingFile(loadable), 'prelaunch', 'QEMU loaded the stream and waits in prelaunch');
    await vm.qmp('cont');
    await vm.waitStatus((s) => s === 'running', 10_000, 'running after cont');
    const got = [await readUartHmp(vm, 0), await readUartHmp(vm, 1)];
    t.log(`${framing}: destination UARTs ${JSON.stringify(got)}`);
    t.deepEqual(got, SOURCES, "each destination UART, read in QEMU's VM, is its source's as migbridge saved it");
    await vm.quit();
    vm = undefined;
  });
}
