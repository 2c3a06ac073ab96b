// The interop claim, against a real QEMU 10 inside the kernel-lane guest (the host's
// /usr/bin/qemu-system-x86_64 through the chroot, vfio-pci on mtty mdevs):
//   - a stream QEMU writes restores through migbridge (restore onto a bare mdev);
//   - a stream migbridge writes loads in QEMU (inject into QEMU's stream, QEMU loads it);
//   - a device saved by `migbridge save` is loaded by QEMU (its raw bytes carried in QEMU's
//     stream);
//   - QEMU refuses a stream cut inside the VFIO data, and the mdev it leaves in RESUMING is
//     recovered by a migbridge reset and then loads again in QEMU.
// UART state (SCR, LCR, RX FIFO) is the evidence: written through HMP port I/O or migbridge's
// regionWrite on one device, read back through HMP or regionRead on another.
//
// Devices: mtty-1 [0] is QEMU's migration source, [1] the migbridge restore target, [2],
// [4], [5] QEMU destinations, [3] the migbridge save source. The lane runs one test file at
// a time (test/kernel-lane/ava.config.mjs concurrency: 1) and these tests are serial, so no
// other test touches them meanwhile; every test leaves its devices RUNNING with no QEMU.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { type CliResult, laneEnv, migbridge as runCli, reportFigure } from './lane.js';
import type { QemuVm } from '../helpers/qemu-vm.js';
import {
  type Uart, mapUart, programUartHmp, readUartDev, readUartHmp, settleDevice, startMttyVm, withDevice, writeUartDev,
} from './qemu-guest.js';
import { MigState, stateName } from '../../src/fsm/index.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-kernel-qemu-'));
const IDSTR = '0000:00:04.0/vfio';
/** Offset of port 0's SCR in mtty's 60-byte state: 24-byte header, then uart_reg[8]. */
const SCR_AT = 24 + 7;
const timings: string[] = [];


/** Wall time per CLI command in this file (guest clock), for the lane's figures. */
const cliMs = new Map<string, number[]>();
/** QEMU start to QMP ready, per VM. */
const qemuStartMs: number[] = [];

async function migbridge(...args: string[]): Promise<CliResult> {
  const r = await runCli(...args);
  const list = cliMs.get(args[0]!) ?? [];
  list.push(r.ms);
  cliMs.set(args[0]!, list);
  return r;
}

/** Runs the CLI with --output=json and returns the parsed result; exit status 0 required. */
async function migbridgeJson<T>(t: ExecutionContext, ...args: string[]): Promise<T> {
  const r = await migbridge(...args, '--output=json');
  if (r.code !== 0) t.fail(`migbridge ${args.join(' ')} exited ${r.code}: ${r.stderr.trim().slice(0, 600)}`);
  return JSON.parse(r.stdout) as T;
}

interface ExtractJson { vfio: { devices: { idstr: string; dataFile: string; dataBytes: number }[] } }
interface InspectJson { size: number; vfio: { idstr: string; dataBytes: number; dataChunks: { payloadOffset: number; size: number; section: string }[] }[] }

/** `migbridge extract FILE --out DIR`: the raw device bytes of IDSTR. */
async function extractData(t: ExecutionContext, file: string, dir: string): Promise<Buffer> {
  const r = await migbridgeJson<ExtractJson>(t, 'extract', file, '--out', dir);
  const dev = r.vfio.devices.find((d) => d.idstr === IDSTR);
  if (!dev) throw new Error(`extract ${file}: no ${IDSTR} among ${r.vfio.devices.map((d) => d.idstr).join(', ')}`);
  return fs.readFileSync(dev.dataFile);
}

/**
 * Per-test scope: VMs started through it are quit in the test and killed at teardown if
 * still there; then its devices are brought back to RUNNING (reset through migbridge),
 * so a failing test never leaves an mdev in RESUMING or owned by a QEMU.
 */
function scope(t: ExecutionContext, uuids: string[]) {
  const vms: QemuVm[] = [];
  t.teardown(async () => {
    for (const vm of vms) await vm.kill();
    for (const u of uuids) await settleDevice(u).catch((e: unknown) => console.error(`qemu-interop teardown: ${u}: ${String(e)}`));
  });
  return {
    async vm(o: Parameters<typeof startMttyVm>[0]): Promise<QemuVm> {
      const t0 = performance.now();
      const vm = await startMttyVm(o);
      qemuStartMs.push(performance.now() - t0);
      vms.push(vm);
      return vm;
    },
    /** Every VM gone; every device in RUNNING (asserted, then reset if not). */
    async finish(expect: Record<string, string> = {}): Promise<void> {
      for (const vm of vms) await vm.quit();
      for (const u of uuids) {
        const s = await settleDevice(u);
        if (expect[u]) t.is(s.found, expect[u], `${u} was in ${expect[u]} before the reset`);
        t.is(s.now, 'RUNNING', `${u} left in RUNNING`);
      }
    },
  };
}

/** What scribble() leaves in a destination, so that a load that does nothing cannot pass. */
const SCRIBBLE: Uart = { scr: 0xee, lcr: 0x00, fifo: 'zz' };

async function scribble(uuid: string): Promise<void> {
  await withDevice(uuid, async (d) => {
    if ((await d.state()) !== MigState.RUNNING) await d.reset();
    await writeUartDev(d, SCRIBBLE);
  });
}

function since(t0: number): string {
  return `${((performance.now() - t0) / 1000).toFixed(2)} s`;
}

// ---- QEMU's stream, made once (test 1 checks it; the others carry data in it) ----------

const SOURCE_UART: Uart = { scr: 0x5a, lcr: 0x03, fifo: 'hello' };
interface SourceStream { file: string; vfioBytes: unknown; migrateMs: number; sourceStateAfter: string }
let sourceStream: Promise<SourceStream> | undefined;

function qemuStream(): Promise<SourceStream> {
  sourceStream ??= (async () => {
    const a = laneEnv().mtty1[0]!;
    const file = path.join(tmp, 'qemu.mig');
    const ts = performance.now();
    const vm = await startMttyVm({ uuid: a, name: 'interop-source', paused: true });
    qemuStartMs.push(performance.now() - ts);
    let info;
    const t0 = performance.now();
    try {
      await programUartHmp(vm, SOURCE_UART);
      const back = await readUartHmp(vm);
      // Reading popped the FIFO: fill it again, so the migrated state has the bytes.
      if (back.scr !== SOURCE_UART.scr || back.lcr !== SOURCE_UART.lcr || back.fifo !== SOURCE_UART.fifo) {
        throw vm.failure(`UART programmed through HMP reads back ${JSON.stringify(back)}`);
      }
      await programUartHmp(vm, SOURCE_UART);
      info = await vm.migrateToFile(file);
    } finally {
      await vm.quit();
    }
    const migrateMs = performance.now() - t0;
    const s = await settleDevice(a);
    return { file, vfioBytes: (info as { vfio?: unknown }).vfio, migrateMs, sourceStateAfter: s.found };
  })();
  return sourceStream;
}

test.serial('QEMU -> migbridge: a stream QEMU 10 writes for vfio-pci on mtty restores onto another mdev through `migbridge restore`', async (t) => {
  const t0 = performance.now();
  const { mtty1 } = laneEnv();
  const [a, b] = [mtty1[0]!, mtty1[1]!];
  const sc = scope(t, [a, b]);
  const src = await qemuStream();
  t.log(`QEMU migrate to file: ${src.migrateMs.toFixed(0)} ms incl. UART programming; query-migrate vfio ${JSON.stringify(src.vfioBytes)}; source mdev after QEMU quit: ${src.sourceStateAfter}`);
  t.deepEqual(src.vfioBytes, { transferred: 60 }, "QEMU's query-migrate counts 60 vfio bytes");
  t.is(src.sourceStateAfter, 'STOP', 'the migrated source mdev stays in STOP after QEMU quits (reset to RUNNING by the test)');

  const ins = await migbridgeJson<InspectJson>(t, 'inspect', src.file);
  const dev = ins.vfio.find((d) => d.idstr === IDSTR);
  t.truthy(dev, `inspect finds ${IDSTR} (found ${ins.vfio.map((d) => d.idstr).join(', ')})`);
  t.is(dev?.dataBytes, 60, 'mtty-1 state is 60 bytes');

  await scribble(b);
  const restore = await migbridge('restore', '-i', src.file, '--device', `mdev:${b}`, '--output=json');
  t.is(restore.code, 0, restore.stderr);
  const got = await withDevice(b, async (d) => ({ state: stateName(await d.state()), uart: await readUartDev(d) }));
  t.deepEqual(got, { state: 'RUNNING', uart: SOURCE_UART }, "B's UART read through regionRead equals what QEMU's VM wrote on A");
  await sc.finish();
  timings.push(`QEMU -> migbridge restore: ${since(t0)}`);
});

/** Destination QEMU on `uuid`: loads `file`, checks prelaunch, `cont`, reads the UART through HMP. */
async function loadInQemu(t: ExecutionContext, vm: QemuVm, file: string): Promise<{ before: Uart; after: Uart; loadMs: number }> {
  const t0 = performance.now();
  const status = await vm.migrateIncomingFile(file);
  const loadMs = performance.now() - t0;
  t.is(status, 'prelaunch', 'the paused source makes the destination stop in prelaunch');
  // The config section restored BAR0 at 0xc000 with I/O enabled; before `cont` the mdev is
  // still RESUMING and shows its old contents (docs/vfio-migration.md §10 gotcha 1).
  const before = await readUartHmp(vm);
  t.deepEqual(before, SCRIBBLE, 'before cont the destination mdev still shows its old contents');
  await vm.qmp('cont');
  await vm.waitStatus((s) => s === 'running', 10_000, 'running after cont');
  const after = await readUartHmp(vm);
  return { before, after, loadMs };
}

test.serial('migbridge -> QEMU: device data changed and put back with `migbridge inject` loads in a QEMU 10 destination; unmodified inject is byte-identical', async (t) => {
  const t0 = performance.now();
  const c = laneEnv().mtty1[2]!;
  const sc = scope(t, [c]);
  const src = await qemuStream();
  const original = fs.readFileSync(src.file);

  const data = await extractData(t, src.file, path.join(tmp, 'extract-qemu'));
  t.is(data.length, 60);
  t.is(data[SCR_AT], SOURCE_UART.scr, 'SCR sits at 24+7 in the raw mtty state');

  const same = path.join(tmp, 'same.data');
  fs.writeFileSync(same, data);
  const g0 = path.join(tmp, 'same.mig');
  await migbridgeJson(t, 'inject', src.file, '--device-data', `${IDSTR}=${same}`, '-o', g0);
  t.true(fs.readFileSync(g0).equals(original), 'inject of the unmodified data reproduces QEMU\'s stream byte for byte');

  const mod = Buffer.from(data);
  mod[SCR_AT] = 0xa7;
  const modFile = path.join(tmp, 'mod.data');
  fs.writeFileSync(modFile, mod);
  const g = path.join(tmp, 'mod.mig');
  await migbridgeJson(t, 'inject', src.file, '--device-data', `${IDSTR}=${modFile}`, '-o', g);
  const gBytes = fs.readFileSync(g);
  t.is(gBytes.length, original.length);
  let diffs = 0;
  for (let i = 0; i < gBytes.length; i++) if (gBytes[i] !== original[i]) diffs++;
  t.is(diffs, 1, 'exactly the SCR byte differs from QEMU\'s stream');

  await scribble(c);
  const vm = await sc.vm({ uuid: c, name: 'interop-inject-dst', incoming: true });
  const r = await loadInQemu(t, vm, g);
  t.log(`destination QEMU: load ${r.loadMs.toFixed(0)} ms; UART before cont ${JSON.stringify(r.before)}, after ${JSON.stringify(r.after)}`);
  t.deepEqual(r.after, { ...SOURCE_UART, scr: 0xa7 }, 'QEMU loaded the injected state: SCR 0xa7, LCR and FIFO from the source');
  await sc.finish();
  timings.push(`migbridge inject -> QEMU: ${since(t0)}`);
});

test.serial('migbridge save -> QEMU: a device saved by `migbridge save` loads into a QEMU 10 destination (raw bytes carried in QEMU\'s stream)', async (t) => {
  const t0 = performance.now();
  const { mtty1 } = laneEnv();
  const [d, e] = [mtty1[3]!, mtty1[4]!];
  const sc = scope(t, [d, e]);
  const src = await qemuStream();
  const uart: Uart = { scr: 0x3c, lcr: 0x1b, fifo: 'from-D' };

  await withDevice(d, async (dev) => {
    if ((await dev.state()) !== MigState.RUNNING) await dev.reset();
    await writeUartDev(dev, uart);
  });
  const s = path.join(tmp, 'saved.mig');
  const save = await migbridge('save', '--device', `mdev:${d}`, '-o', s, '--output=json');
  t.is(save.code, 0, save.stderr);
  const data = await extractData(t, s, path.join(tmp, 'extract-saved'));
  t.is(data.length, 60, "migbridge's stream carries mtty's 60 bytes");
  t.is(data[SCR_AT], uart.scr);

  const dataFile = path.join(tmp, 'saved.data');
  fs.writeFileSync(dataFile, data);
  const h = path.join(tmp, 'saved-in-qemu.mig');
  await migbridgeJson(t, 'inject', src.file, '--device-data', `${IDSTR}=${dataFile}`, '-o', h);

  await scribble(e);
  const vm = await sc.vm({ uuid: e, name: 'interop-save-dst', incoming: true });
  const r = await loadInQemu(t, vm, h);
  t.log(`destination QEMU: load ${r.loadMs.toFixed(0)} ms; UART before cont ${JSON.stringify(r.before)}, after ${JSON.stringify(r.after)}`);
  t.deepEqual(r.after, uart, "QEMU's VM on E reads D's UART as migbridge saved it");
  await sc.finish({ [d]: 'STOP' });
  timings.push(`migbridge save -> QEMU: ${since(t0)}`);
});

test.serial('QEMU refuses a stream cut inside the VFIO data; the mdev left in RESUMING is reset by migbridge and loads a good stream in QEMU again', async (t) => {
  const t0 = performance.now();
  const f = laneEnv().mtty1[5]!;
  const sc = scope(t, [f]);
  const src = await qemuStream();

  const ins = await migbridgeJson<InspectJson>(t, 'inspect', src.file);
  const chunks = ins.vfio.find((d) => d.idstr === IDSTR)?.dataChunks ?? [];
  const last = chunks[chunks.length - 1];
  if (!last) return t.fail(`inspect found no DATA_STATE chunk for ${IDSTR}`);
  const cut = last.payloadOffset + Math.floor(last.size / 2);
  const bad = path.join(tmp, 'truncated.mig');
  fs.writeFileSync(bad, fs.readFileSync(src.file).subarray(0, cut));

  await scribble(f);
  const vm = await sc.vm({ uuid: f, name: 'interop-truncated-dst', incoming: true });
  const err = await t.throwsAsync(vm.migrateIncomingFile(bad));
  t.true(vm.hasExited, 'QEMU exits on the failed load (exit-on-error defaults to true)');
  const qemuSaid = vm.stderr.trim();
  t.log(`stream cut at ${cut} (inside a ${last.size}-byte ${last.section} chunk at ${last.payloadOffset}); QEMU stderr: ${qemuSaid}`);
  t.regex(qemuSaid, /load of migration failed/i, `QEMU reports the failed load (${err?.message.slice(0, 200)})`);

  // Gotcha 3: the device stays in RESUMING; another VM on it would oops mtty. Reset it.
  const s = await settleDevice(f);
  t.is(s.found, 'RESUMING', 'the failed load left the mdev in RESUMING');
  t.is(s.now, 'RUNNING', 'migbridge reset it to RUNNING');

  const vm2 = await sc.vm({ uuid: f, name: 'interop-recovered-dst', incoming: true });
  const r = await loadInQemu(t, vm2, src.file);
  t.deepEqual(r.after, SOURCE_UART, 'the recovered mdev loads the intact stream in QEMU');
  await sc.finish();
  timings.push(`truncated stream + recovery: ${since(t0)}`);
});

test.serial('migbridge save -> QEMU directly: a 10.0-machine stream with SWITCHOVER_START, as migbridge writes it, loads into a QEMU 10 destination as it is', async (t) => {
  const t0 = performance.now();
  const { mtty1 } = laneEnv();
  const [d, e] = [mtty1[3]!, mtty1[4]!];
  const sc = scope(t, [d, e]);
  const uart: Uart = { scr: 0x6b, lcr: 0x07, fifo: 'direct' };
  await withDevice(d, async (dev) => {
    if ((await dev.state()) !== MigState.RUNNING) await dev.reset();
    await writeUartDev(dev, uart);
  });
  const s = path.join(tmp, 'saved-direct.mig');
  // The lane's VMs run `-M pc`, which QEMU 10 names pc-i440fx-10.0: the type save writes by default.
  const save = await migbridge('save', '--device', `mdev:${d}`, '-o', s, '--machine', 'pc-i440fx-10.0', '--output=json');
  t.is(save.code, 0, save.stderr);
  const ins = await migbridgeJson<InspectJson & { switchoverStart: number | null; records: { kind: string; command?: string }[] }>(t, 'inspect', s);
  t.deepEqual(ins.records.filter((r) => r.kind === 'COMMAND').map((r) => r.command), ['SWITCHOVER_START'], 'the stream carries the marker');

  await scribble(e);
  const vm = await sc.vm({ uuid: e, name: 'interop-direct-dst', incoming: true });
  // No globalstate, RAM or PCI config section in a migbridge stream: QEMU loads the VFIO
  // sections alone; BAR0 is mapped by hand (no config section restores it) and the guest
  // (a halt-only firmware) is started so the mdev leaves RESUMING.
  const status = await vm.migrateIncomingFile(s);
  t.log(`destination runstate after the load: ${status}`);
  if (status !== 'running') {
    await vm.qmp('cont');
    await vm.waitStatus((x) => x === 'running', 10_000, 'running after cont');
  }
  await mapUart(vm);
  t.deepEqual(await readUartHmp(vm), uart, "QEMU's VM on E reads D's UART from migbridge's own stream");
  await sc.finish({ [d]: 'STOP' });
  timings.push(`migbridge save -> QEMU directly: ${since(t0)}`);
});

test.after.always('report timings', () => {
  const cmds = [...cliMs].map(([c, ms]) => `${c} ${ms.map((m) => (m / 1000).toFixed(1)).join('/')} s`);
  if (timings.length) reportFigure('qemu-interop', `QEMU 10 interop in the guest: ${timings.join('; ')}\n  migbridge CLI runs (each): ${cmds.join(', ')}\n  QEMU start to QMP ready (each): ${qemuStartMs.map((m) => (m / 1000).toFixed(2)).join('/')} s`);
  fs.rmSync(tmp, { recursive: true, force: true });
});
