// `migbridge reframe` against real QEMU 10 and real mtty inside the kernel-lane guest:
//   1. a paused QEMU 10 source with vfio-pci on mtty migrates with return-path and
//      switchover-ack (on both ends) through `migbridge proxy --tee` to a destination QEMU,
//      which ends up with the source's UART; mtty advertises PRE_COPY, so QEMU sends the
//      device's precopy data in a PART chunk closed by DEV_INIT_DATA_SENT;
//   2. the tee holds OPEN_RETURN_PATH, PING and that marker;
//   3. QEMU 10 without those capabilities refuses the raw tee from a file (its message is
//      logged and checked), and the mdev that failed load leaves in RESUMING is reset;
//   4. `migbridge reframe` drops the return-path commands and replaces the marker by
//      END_OF_STATE, reporting each change; its output is the tee with exactly those
//      changes, rebuilt here byte by byte from the tee and the reported offsets;
//   5. QEMU 10 without the capabilities loads the reframed file, and after `cont` the UART
//      reads what the source's VM wrote.
// Devices: mtty-1 [0] source, [1] proxy destination, [2] the file loads (raw, then reframed
// after a reset). The lane runs one test file at a time and these tests are serial; every
// test leaves its devices RUNNING with no QEMU.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { laneEnv, migbridge, reportFigure } from './lane.js';
import type { MigrationInfo, QemuVm } from '../helpers/qemu-vm.js';
import { type Uart, programUartHmp, readUartHmp, settleDevice, startMttyVm, withDevice, writeUartDev } from './qemu-guest.js';
import { MigState } from '../../src/fsm/index.js';
import { proxyListening, runningCli, waitFor, type CliResult } from '../helpers/cli-run.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-kernel-reframe-'));
const IDSTR = '0000:00:04.0/vfio';
const CAPS = ['return-path', 'switchover-ack'];
// QEMU's wire values (migration/savevm.c enum qemu_vm_cmd, hw/vfio/migration.c markers),
// written here independently of src/qemu/constants.ts.
const QEMU_VM_COMMAND = 0x08;
const MIG_CMD = { OPEN_RETURN_PATH: 1, PING: 2 } as const;
const INIT_DATA_SENT = Buffer.from('ffffffffef100005', 'hex');
const END_OF_STATE = Buffer.from('ffffffffef100001', 'hex');

const SOURCE_UART: Uart = { scr: 0xc3, lcr: 0x03, fifo: 'reframe' };
/** What a destination holds before its load, so that a load that does nothing cannot pass. */
const SCRIBBLE: Uart = { scr: 0xee, lcr: 0x00, fifo: 'zz' };
const timings: string[] = [];

function secs(ms: number): string {
  return `${(ms / 1000).toFixed(2)} s`;
}

async function scribble(uuid: string): Promise<void> {
  await withDevice(uuid, async (d) => {
    if ((await d.state()) !== MigState.RUNNING) await d.reset();
    await writeUartDev(d, SCRIBBLE);
  });
}

/**
 * VMs started through it are killed at teardown if still there, then its devices are
 * brought back to RUNNING, so a failing test never leaves an mdev in RESUMING or owned by
 * a QEMU (qemu-vfio-interop.md gotcha 3).
 */
function scope(t: ExecutionContext, uuids: string[]) {
  const vms: QemuVm[] = [];
  t.teardown(async () => {
    for (const vm of vms) await vm.kill();
    for (const u of uuids) await settleDevice(u).catch((e: unknown) => console.error(`reframe teardown: ${u}: ${String(e)}`));
  });
  return {
    async vm(o: Parameters<typeof startMttyVm>[0]): Promise<QemuVm> {
      const vm = await startMttyVm(o);
      vms.push(vm);
      return vm;
    },
    /** Every VM gone; every device back in RUNNING; returns the states found before the reset. */
    async finish(): Promise<Record<string, string>> {
      for (const vm of vms) await vm.quit();
      const found: Record<string, string> = {};
      for (const u of uuids) {
        const s = await settleDevice(u);
        found[u] = s.found;
        t.is(s.now, 'RUNNING', `${u} left in RUNNING`);
      }
      return found;
    },
  };
}

interface ProxyReport {
  ok: boolean;
  forwardBytes: number;
  deliveredBytes: number;
  returnPath: { bytes: number; messages: Record<string, number> };
  tee: { path: string; bytes: number; kept: boolean; why: string } | null;
}
interface InspectJson {
  size: number;
  records: { offset: number; kind: string; sectionId: number | null; command?: string }[];
  vfio: { idstr: string; sectionId: number; dataBytes: number; precopyBytes: number; stopCopyBytes: number; markers: Record<string, number>; flavour: string }[];
}
interface ReframeChange { offset: number; what: string; action: string; why: string; sectionId?: number; idstr?: string }
interface ReframeJson { in: string; out: string; to: string | null; bytesIn: number; bytesOut: number; changes: ReframeChange[] }

/** Runs the CLI with --output=json; exit status 0 required. */
async function cliJson<T>(t: ExecutionContext, ...args: string[]): Promise<{ json: T; ms: number }> {
  const r = await migbridge(...args, '--output=json');
  if (r.code !== 0) throw new Error(`migbridge ${args.join(' ')} exited ${r.code}: ${r.stderr.trim().slice(0, 800)}`);
  t.log(`migbridge ${args[0]}: ${secs(r.ms)}`);
  return { json: JSON.parse(r.stdout) as T, ms: r.ms };
}

// ---- the switchover-ack migration through the proxy, made once (test 1 checks it) ----

interface Capture {
  tee: string;
  source: MigrationInfo;
  proxy: CliResult;
  destStatus: string;
  destBefore: Uart;
  destAfter: Uart;
  migrateMs: number;
}
let capture: Promise<Capture> | undefined;
let teeInspect: Promise<InspectJson> | undefined;

/** `migbridge inspect` of the tee, run once (a CLI run costs seconds in the TCG guest). */
function inspectTee(t: ExecutionContext, tee: string): Promise<InspectJson> {
  teeInspect ??= cliJson<InspectJson>(t, 'inspect', tee).then((r) => r.json);
  return teeInspect;
}

function migrateThroughProxy(t: ExecutionContext): Promise<Capture> {
  capture ??= (async () => {
    const { mtty1 } = laneEnv();
    const [a, b] = [mtty1[0]!, mtty1[1]!];
    const sc = scope(t, [a, b]);
    await scribble(b);
    const listen = path.join(tmp, 'in.sock');
    const out = path.join(tmp, 'out.sock');
    const tee = path.join(tmp, 'tee.mig');

    let t0 = performance.now();
    const src = await sc.vm({ uuid: a, name: 'reframe-source', paused: true });
    await src.setCapabilities(CAPS);
    await programUartHmp(src, SOURCE_UART);
    const back = await readUartHmp(src);
    if (back.scr !== SOURCE_UART.scr || back.lcr !== SOURCE_UART.lcr || back.fifo !== SOURCE_UART.fifo) {
      throw src.failure(`UART programmed through HMP reads back ${JSON.stringify(back)}`);
    }
    // Reading popped the FIFO: fill it again, so the migrated state has the bytes.
    await programUartHmp(src, SOURCE_UART);
    const proxy = runningCli(['proxy', '--listen', `unix:${listen}`, '--to', `unix:${out}`, '--tee', tee, '--output=json', '--progress'], 90_000, t.teardown.bind(t));
    const dst = await sc.vm({ uuid: b, name: 'reframe-destination', incoming: true });
    await dst.setCapabilities(CAPS);
    await dst.qmp('migrate-incoming', { uri: `unix:${out}` });
    await waitFor(`the destination listening on ${out}`, () => fs.existsSync(out), 10_000);
    await proxyListening(proxy, 20_000);
    timings.push(`source + destination QEMU up, UART programmed, proxy listening: ${secs(performance.now() - t0)}`);

    t0 = performance.now();
    await src.qmp('migrate', { uri: `unix:${listen}` });
    let source: MigrationInfo = { status: 'none' };
    await waitFor('the source migration to finish', async () => ['completed', 'failed', 'cancelled'].includes((source = (await src.qmp('query-migrate')) as MigrationInfo).status), 60_000);
    const p = await proxy.done;
    const destStatus = await dst.waitStatus((s) => s !== 'inmigrate', 20_000, 'the destination to leave inmigrate');
    const migrateMs = performance.now() - t0;
    if (source.status !== 'completed') throw src.failure(`migration ${source.status}: ${JSON.stringify(source)}; proxy exit ${p.code}: ${p.stderr.slice(-2000)}`);

    // The destination loads the device state when its VM starts (gotcha 1).
    const destBefore = await readUartHmp(dst);
    await dst.qmp('cont');
    await dst.waitStatus((s) => s === 'running', 10_000, 'running after cont');
    const destAfter = await readUartHmp(dst);
    await sc.finish();
    return { tee, source, proxy: p, destStatus, destBefore, destAfter, migrateMs };
  })();
  return capture;
}

test.serial('switchover-ack migration of vfio-pci on mtty through `migbridge proxy --tee`: the destination gets the UART; the tee holds OPEN_RETURN_PATH, PING and DEV_INIT_DATA_SENT', async (t) => {
  const t0 = performance.now();
  const c = await migrateThroughProxy(t);
  t.log(`migrate through the proxy: ${secs(c.migrateMs)}; source query-migrate vfio ${JSON.stringify((c.source as { vfio?: unknown }).vfio)}, total-time ${String(c.source['total-time'])} ms`);
  t.is(c.proxy.code, 0, `proxy: ${c.proxy.stderr.slice(-2000)}`);
  const report = JSON.parse(c.proxy.stdout) as ProxyReport;
  t.true(report.ok);
  t.true(report.tee?.kept, report.tee?.why);
  t.is(report.deliveredBytes, report.forwardBytes, 'every byte reached the destination');
  t.is(report.returnPath.messages.SWITCHOVER_ACK, 1, `the destination acked the switchover over the return path (${JSON.stringify(report.returnPath.messages)})`);
  t.is(fs.statSync(c.tee).size, report.forwardBytes, 'the tee holds every byte the source sent');
  t.is(c.destStatus, 'prelaunch', 'the paused source leaves the destination in prelaunch');
  t.deepEqual(c.destBefore, SCRIBBLE, 'before cont the destination mdev still shows its old contents');
  t.deepEqual(c.destAfter, SOURCE_UART, "after cont the destination's UART is what the source's VM wrote");

  const ins = await inspectTee(t, c.tee);
  const commands = ins.records.filter((r) => r.kind === 'COMMAND').map((r) => r.command);
  t.log(`tee: ${ins.size} bytes; commands ${commands.join(', ')}`);
  t.is(commands.filter((n) => n === 'OPEN_RETURN_PATH').length, 1, 'one OPEN_RETURN_PATH');
  t.true(commands.includes('PING'), 'at least one PING');
  const dev = ins.vfio.find((d) => d.idstr === IDSTR);
  if (!dev) return t.fail(`inspect finds no ${IDSTR} (found ${ins.vfio.map((d) => d.idstr).join(', ')})`);
  t.log(`${IDSTR}: markers ${JSON.stringify(dev.markers)}, data ${dev.dataBytes} bytes (precopy ${dev.precopyBytes}, stop-copy ${dev.stopCopyBytes}); ${dev.flavour}`);
  t.is(dev.markers.DEV_INIT_DATA_SENT, 1, 'QEMU closed its precopy chunk with DEV_INIT_DATA_SENT once');
  t.true(dev.precopyBytes > 0, 'mtty sent data during precopy (its 24-byte header)');
  t.is(dev.dataBytes, 60, 'mtty-1 state is 60 bytes in all');
  timings.push(`test 1: ${secs(performance.now() - t0)}`);
});

test.serial('QEMU 10 without return-path/switchover-ack refuses the raw tee from a file; the mdev left in RESUMING is reset', async (t) => {
  const t0 = performance.now();
  const cDev = laneEnv().mtty1[2]!;
  const c = await migrateThroughProxy(t);
  const sc = scope(t, [cDev]);
  await scribble(cDev);
  const vm = await sc.vm({ uuid: cDev, name: 'reframe-raw-tee', incoming: true });
  const err = await t.throwsAsync(vm.migrateIncomingFile(c.tee));
  t.true(vm.hasExited, 'QEMU exits on the failed load');
  const said = vm.stderr.trim();
  t.log(`QEMU 10 on the raw tee (stderr): ${said}`);
  t.regex(said, /load of migration failed/i, `QEMU reports the failed load (${err?.message.slice(0, 300)})`);
  // QEMU 10.0 goes through OPEN_RETURN_PATH and PING from the file without complaint; what
  // it refuses is the marker (hw/vfio/migration.c vfio_load_state).
  t.regex(said, /Received INIT_DATA_SENT but switchover ack is not used/, 'QEMU names the switchover-ack marker as the reason');
  t.regex(said, /error while loading state section id \d+\(0000:00:04\.0\/vfio\)/, 'in the vfio section');
  const s = await settleDevice(cDev);
  t.is(s.found, 'RESUMING', 'the failed load left the mdev in RESUMING');
  t.is(s.now, 'RUNNING', 'migbridge reset it to RUNNING');
  timings.push(`raw tee refused + reset: ${secs(performance.now() - t0)}`);
});

/** The tee with the reported changes applied, rebuilt from QEMU's framing (not migbridge's). */
function applyChanges(t: ExecutionContext, tee: Buffer, changes: ReframeChange[]): { bytes: Buffer; dropped: number } {
  const parts: Buffer[] = [];
  let at = 0;
  let dropped = 0;
  for (const ch of [...changes].sort((x, y) => x.offset - y.offset)) {
    t.true(ch.offset >= at, `change at ${ch.offset} does not overlap the one before`);
    parts.push(tee.subarray(at, ch.offset));
    if (ch.action === 'dropped') {
      // QEMU_VM_COMMAND, be16 cmd, be16 len, len bytes.
      t.is(tee[ch.offset], QEMU_VM_COMMAND, `a command record at ${ch.offset}`);
      const cmd = tee.readUInt16BE(ch.offset + 1);
      const name = ch.what.replace(/^command /, '') as keyof typeof MIG_CMD;
      t.is(cmd, MIG_CMD[name], `${ch.what} at ${ch.offset} carries QEMU's command number`);
      const len = 5 + tee.readUInt16BE(ch.offset + 3);
      dropped += len;
      at = ch.offset + len;
    } else {
      t.true(tee.subarray(ch.offset, ch.offset + 8).equals(INIT_DATA_SENT), `the 8 bytes at ${ch.offset} are DEV_INIT_DATA_SENT`);
      parts.push(END_OF_STATE);
      at = ch.offset + 8;
    }
  }
  parts.push(tee.subarray(at));
  return { bytes: Buffer.concat(parts), dropped };
}

test.serial('`migbridge reframe` drops the return-path commands and replaces DEV_INIT_DATA_SENT; QEMU 10 without the capabilities loads the result and the UART is the source\'s', async (t) => {
  const t0 = performance.now();
  const cDev = laneEnv().mtty1[2]!;
  const c = await migrateThroughProxy(t);
  const ins = await inspectTee(t, c.tee);
  const dev = ins.vfio.find((d) => d.idstr === IDSTR);
  if (!dev) return t.fail(`inspect finds no ${IDSTR} in the tee`);
  const out = path.join(tmp, 'reframed.mig');
  const { json: r } = await cliJson<ReframeJson>(t, 'reframe', c.tee, out);
  t.log(`reframe: ${r.bytesIn} -> ${r.bytesOut} bytes; changes:\n${r.changes.map((x) => `  ${x.offset}: ${x.what}${x.idstr ? ` (${x.idstr}, section ${x.sectionId})` : ''} ${x.action}: ${x.why}`).join('\n')}`);

  // The change list: every OPEN_RETURN_PATH and PING inspect sees, dropped at its offset;
  // the marker replaced, in the vfio section; nothing else.
  const cmdsAt = (name: string): number[] => ins.records.filter((x) => x.kind === 'COMMAND' && x.command === name).map((x) => x.offset);
  const changed = (what: string, action: string): number[] => r.changes.filter((x) => x.what === what && x.action === action).map((x) => x.offset);
  t.deepEqual(changed('command OPEN_RETURN_PATH', 'dropped'), cmdsAt('OPEN_RETURN_PATH'));
  t.deepEqual(changed('command PING', 'dropped'), cmdsAt('PING'));
  const markers = r.changes.filter((x) => x.what === 'vfio DEV_INIT_DATA_SENT');
  t.is(markers.length, 1, 'one marker replaced');
  t.like(markers[0], { action: 'replaced', idstr: IDSTR, sectionId: dev.sectionId });
  t.is(r.changes.length, cmdsAt('OPEN_RETURN_PATH').length + cmdsAt('PING').length + 1, 'no other change');
  // The marker sits in a PART chunk of the vfio section.
  const holder = ins.records.filter((x) => x.offset <= markers[0]!.offset).at(-1);
  t.like(holder, { kind: 'PART', sectionId: dev.sectionId }, `the marker at ${markers[0]!.offset} is inside a vfio PART record`);

  // OUT is the tee with exactly those changes.
  const tee = fs.readFileSync(c.tee);
  const got = fs.readFileSync(out);
  const want = applyChanges(t, tee, r.changes);
  t.is(r.bytesIn, tee.length);
  t.is(r.bytesOut, got.length);
  t.is(r.bytesOut, r.bytesIn - want.dropped, 'bytesOut = bytesIn - the dropped command bytes');
  t.true(got.equals(want.bytes), 'the output is the tee with exactly the reported changes');

  // QEMU 10 without return-path/switchover-ack loads it on the reset mdev.
  const sc = scope(t, [cDev]);
  await scribble(cDev);
  const vm = await sc.vm({ uuid: cDev, name: 'reframe-load', incoming: true });
  const tl = performance.now();
  const status = await vm.migrateIncomingFile(out);
  const loadMs = performance.now() - tl;
  t.is(status, 'prelaunch', `the load completes (QEMU stderr: ${vm.stderr.trim() || 'empty'})`);
  const before = await readUartHmp(vm);
  t.deepEqual(before, SCRIBBLE, 'before cont the mdev still shows its old contents');
  await vm.qmp('cont');
  await vm.waitStatus((s) => s === 'running', 10_000, 'running after cont');
  const after = await readUartHmp(vm);
  t.log(`load of the reframed file: ${secs(loadMs)}; UART after cont ${JSON.stringify(after)}`);
  t.deepEqual(after, SOURCE_UART, "the UART read after cont is what the source's VM wrote");
  await sc.finish();
  timings.push(`reframe + load: ${secs(performance.now() - t0)}`);
});

test.after.always('report timings', () => {
  if (timings.length) reportFigure('reframe', `reframe of a switchover-ack capture in the guest: ${timings.join('; ')}`);
  fs.rmSync(tmp, { recursive: true, force: true });
});
