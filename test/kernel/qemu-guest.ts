// Helpers for running the host's QEMU 10 inside the kernel-lane guest with a vfio-pci device
// backed by an mtty mdev (recipe: docs/vfio-migration.md §10), and for reaching the same UART
// through migbridge's own device layer. QEMU side: no guest OS, so the UART is programmed
// and read with HMP port I/O (`o` / `i`) through QMP human-monitor-command; BAR0 is placed
// at I/O 0xc000 by hand through the PCI config ports 0xcf8/0xcfc.
import fs from 'node:fs';
import path from 'node:path';
import { QemuVm } from '../helpers/qemu-vm.js';
import { MigState, stateName } from '../../src/fsm/index.js';
import { openDevice, type MigrationDevice } from '../../src/vfio/index.js';

/** UART contents of an mtty port 0: scratch register, line control, RX FIFO text. */
export interface Uart {
  scr: number;
  lcr: number;
  fifo: string;
}

/** BAR0 base the tests program; the slot-4 device's config address for 0xcf8. */
export const UART_IO = 0xc000;
const CONFIG_ADDR = 0x80002000; // bus 0, device 4, function 0
const UART = { THR: 0, FCR: 2, LCR: 3, LSR: 5, SCR: 7 } as const;

/**
 * A 64 KiB firmware that only halts: zeros, and at the reset vector 0xFFF0 `cli; hlt;
 * jmp -3` (back to the hlt). A started VM then runs nothing, and no BIOS moves the BARs.
 */
export function haltBios(): Buffer {
  const b = Buffer.alloc(64 * 1024);
  Buffer.from([0xfa, 0xf4, 0xeb, 0xfd]).copy(b, 0xfff0);
  return b;
}

export interface MttyVmOptions {
  uuid: string;
  name: string;
  /** Source: start paused (-S), so nothing runs before the migration. */
  paused?: boolean;
  /** Destination: -incoming defer (then migrateIncomingFile). */
  incoming?: boolean;
  /** More mdevs, as vfio-pci at 00:05.0, 00:06.0, ... (idstrs 0000:00:05.0/vfio, ...). */
  more?: readonly string[];
  /** A second QMP monitor for another client (`migbridge migrate`). */
  spareQmp?: boolean;
}

/** QEMU 10 (`-M pc -m 64`, halt firmware) owning the mdev as vfio-pci at 00:04.0. */
export function startMttyVm(o: MttyVmOptions): Promise<QemuVm> {
  return QemuVm.start({
    version: '10.0',
    name: o.name,
    incomingDefer: o.incoming ?? false,
    spareQmp: o.spareQmp ?? false,
    beforeStart: async (dir) => fs.writeFileSync(path.join(dir, 'halt.bin'), haltBios()),
    args: [
      '-M', 'pc', '-m', '64', '-bios', '{dir}/halt.bin',
      ...(o.paused ? ['-S'] : []),
      ...[o.uuid, ...(o.more ?? [])].flatMap((u, i) => ['-device', `vfio-pci,id=mt${i},addr=0${4 + i}.0,sysfsdev=/sys/bus/mdev/devices/${u}`]),
    ],
  });
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

/** HMP `o /SIZE PORT VALUE`; HMP prints nothing on success, anything else is an error. */
export async function portOut(vm: QemuVm, size: 'b' | 'h' | 'w', port: number, value: number): Promise<void> {
  const out = await vm.hmp(`o /${size} ${hex(port)} ${hex(value)}`);
  if (out.trim() !== '') throw vm.failure(`HMP o /${size} ${hex(port)} answered ${JSON.stringify(out)}`);
}

/** HMP `i /b PORT`, answered as `portb[0xc007] = 0x5a`. */
export async function portIn(vm: QemuVm, port: number): Promise<number> {
  const out = await vm.hmp(`i /b ${hex(port)}`);
  const m = /=\s*0x([0-9a-f]+)/i.exec(out);
  if (!m) throw vm.failure(`cannot parse HMP i /b ${hex(port)} answer ${JSON.stringify(out)}`);
  return parseInt(m[1]!, 16);
}

/** Where the tests place the UART of the `index`th device (slot 4 + index): BAR0 I/O base and config address. */
export function uartAt(index: number): { io: number; config: number } {
  return { io: UART_IO + 0x100 * index, config: (CONFIG_ADDR + (index << 11)) >>> 0 };
}

/** Places BAR0 of the `index`th device at its I/O base and enables I/O decoding (no firmware does it here). */
export async function mapUart(vm: QemuVm, index = 0): Promise<void> {
  const at = uartAt(index);
  await portOut(vm, 'w', 0xcf8, (at.config | 0x10) >>> 0);
  await portOut(vm, 'w', 0xcfc, at.io);
  await portOut(vm, 'w', 0xcf8, (at.config | 0x04) >>> 0);
  await portOut(vm, 'h', 0xcfc, 0x0001);
}

/** Programs the UART through the VM: FIFO cleared first, then LCR, SCR and the TX bytes (mtty loops them into RX). */
export async function programUartHmp(vm: QemuVm, u: Uart): Promise<void> {
  await mapUart(vm);
  await portOut(vm, 'b', UART_IO + UART.FCR, 0x07);
  await portOut(vm, 'b', UART_IO + UART.LCR, u.lcr);
  await portOut(vm, 'b', UART_IO + UART.SCR, u.scr);
  for (const ch of Buffer.from(u.fifo)) await portOut(vm, 'b', UART_IO + UART.THR, ch);
}

/** Reads SCR, LCR and pops the RX FIFO (LSR bit 0 = data ready) through the VM's BAR0 (of the `index`th device) as it is mapped now. */
export async function readUartHmp(vm: QemuVm, index = 0): Promise<Uart> {
  const io = uartAt(index).io;
  const scr = await portIn(vm, io + UART.SCR);
  const lcr = await portIn(vm, io + UART.LCR);
  let fifo = '';
  for (let i = 0; i < 16 && (await portIn(vm, io + UART.LSR)) & 1; i++) fifo += String.fromCharCode(await portIn(vm, io + UART.THR));
  return { scr, lcr, fifo };
}

/** Opens the mdev through migbridge's device layer (container/group path), runs fn, closes it. */
export async function withDevice<T>(uuid: string, fn: (d: MigrationDevice) => Promise<T>): Promise<T> {
  const d = await openDevice(`mdev:${uuid}`);
  try {
    return await fn(d);
  } finally {
    await d.close();
  }
}

/** Writes the UART through region 0 (BAR0) with regionWrite: FIFO cleared first. */
export async function writeUartDev(d: MigrationDevice, u: Uart): Promise<void> {
  await d.regionWrite(0, UART.FCR, Buffer.from([0x07]));
  await d.regionWrite(0, UART.LCR, Buffer.from([u.lcr]));
  await d.regionWrite(0, UART.SCR, Buffer.from([u.scr]));
  for (const ch of Buffer.from(u.fifo)) await d.regionWrite(0, UART.THR, Buffer.from([ch]));
}

async function read1(d: MigrationDevice, off: number): Promise<number> {
  const b = await d.regionRead(0, off, 1);
  if (b.length !== 1) throw new Error(`${d.id}: regionRead(0, ${off}, 1) returned ${b.length} bytes`);
  return b[0]!;
}

/** Reads SCR, LCR and pops the RX FIFO through region 0 with regionRead. */
export async function readUartDev(d: MigrationDevice): Promise<Uart> {
  const scr = await read1(d, UART.SCR);
  const lcr = await read1(d, UART.LCR);
  let fifo = '';
  for (let i = 0; i < 16 && (await read1(d, UART.LSR)) & 1; i++) fifo += String.fromCharCode(await read1(d, UART.THR));
  return { scr, lcr, fifo };
}

/**
 * Brings an mdev QEMU is done with back to RUNNING: a migrated source stays in STOP and a
 * failed load leaves RESUMING (and the next VM on it would oops mtty), so VFIO_DEVICE_RESET
 * through migbridge. Returns the state found and the state left; the device must not be
 * open in a QEMU (its group would be busy).
 */
export async function settleDevice(uuid: string): Promise<{ found: string; now: string }> {
  return withDevice(uuid, async (d) => {
    const found = await d.state();
    if (found !== MigState.RUNNING) await d.reset();
    return { found: stateName(found), now: stateName(await d.state()) };
  });
}
