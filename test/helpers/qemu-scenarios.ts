// The real-QEMU stream scenarios: what machine and devices each runs, what is done to the
// source before migrating, which capabilities are on (both sides), and the runstate the
// destination must reach after loading the stream.
import type { QemuVersion } from './qemu-binary.js';
import type { ImageName } from './qemu-guest.js';
import type { MigrationInfo } from './qemu-vm.js';

export type ScenarioName =
  | 'pc-paused'
  | 'q35-paused'
  | 'pc-devices'
  | 'pc-live'
  | 'pc-stopped'
  | 'pc-ignore-shared'
  | 'pc-compress'
  | 'pc-xbzrle';

export const SCENARIO_NAMES: readonly ScenarioName[] = [
  'pc-paused', 'q35-paused', 'pc-devices', 'pc-live', 'pc-stopped', 'pc-ignore-shared', 'pc-compress', 'pc-xbzrle',
];

/** paused: started with -S, never run. run: boots the test guest, migrated live while it runs. run-stop: boots it, then `stop`. */
export type Preparation = 'paused' | 'run' | 'run-stop';

export interface Scenario {
  name: ScenarioName;
  summary: string;
  versions: readonly QemuVersion[];
  /** Machine/device arguments for both sides; `{dir}` = the VM's private dir, `{img:NAME}` = its copy of an image. */
  args: readonly string[];
  images: readonly ImageName[];
  /** Migration capabilities set on the source and on the destination. */
  capabilities: readonly string[];
  prepare: Preparation;
  /** query-status on the destination once the load is done. */
  expectedStatus: 'prelaunch' | 'paused' | 'running';
  /**
   * For running guests: keep migrating (downtime-limit 0, so it cannot converge) until
   * query-migrate counts this many dirty-bitmap syncs, then allow the switchover. The
   * stream then holds several PART rounds that resend the pages the guest keeps dirtying.
   */
  minRounds?: number;
  /**
   * Checks the source's final query-migrate shows what the scenario is about; returns why
   * not (the generator then retries: timing under TCG can make QEMU converge early).
   */
  accept?: (info: MigrationInfo) => string | null;
  /** Guest RAM in MiB (the pc.ram block's used_length). */
  ramMiB: number;
  /** The RAM block holding guest memory, as named in the stream. */
  ramBlock: string;
}

const RAM_MIB = 32;

/** At least one round after the first pass resent dirty pages (setup, first pass, resend = 3 syncs). */
const resent = (info: MigrationInfo): string | null =>
  Number(info.ram?.['dirty-sync-count'] ?? 0) >= 3 ? null : `only ${String(info.ram?.['dirty-sync-count'])} dirty-bitmap syncs`;
const counted = (key: 'compression' | 'xbzrle-cache') => (info: MigrationInfo): string | null => {
  const pages = Number((info[key] as { pages?: number } | undefined)?.pages ?? 0);
  return pages > 0 ? null : `no ${key} pages in query-migrate (${JSON.stringify(info[key])})`;
};
const BOTH: readonly QemuVersion[] = ['7.2', '10.0'];

/** COM1 writing into the VM's dir, so a test can watch the guest print. */
const SERIAL = ['-chardev', 'file,id=com1,path={dir}/serial.log', '-device', 'isa-serial,chardev=com1,iobase=0x3f8,irq=4'];
/** The boot disk with the test guest's boot sector, on the board's IDE controller. */
const BOOT_DISK = ['-drive', 'if=none,id=boot,format=raw,file={img:boot}', '-device', 'ide-hd,drive=boot,bus=ide.0,unit=0,bootindex=0'];
/** Several ordinary devices: a NIC, a virtio disk, USB with a tablet. */
const DEVICES = [
  '-device', 'e1000,addr=0x4,mac=52:54:00:12:34:56',
  '-drive', 'if=none,id=data,format=raw,file={img:data}', '-device', 'virtio-blk-pci,drive=data,addr=0x5',
  '-device', 'piix3-usb-uhci,id=uhci,addr=0x6', '-device', 'usb-tablet,bus=uhci.0,port=1',
];

export const SCENARIOS: Readonly<Record<ScenarioName, Scenario>> = {
  'pc-paused': {
    name: 'pc-paused', summary: '-M pc, -S, never run', versions: BOTH,
    args: ['-M', 'pc', '-m', String(RAM_MIB)], images: [], capabilities: [],
    prepare: 'paused', expectedStatus: 'prelaunch', ramMiB: RAM_MIB, ramBlock: 'pc.ram',
  },
  'q35-paused': {
    name: 'q35-paused', summary: '-M q35, -S, never run', versions: BOTH,
    args: ['-M', 'q35', '-m', String(RAM_MIB)], images: [], capabilities: [],
    prepare: 'paused', expectedStatus: 'prelaunch', ramMiB: RAM_MIB, ramBlock: 'pc.ram',
  },
  'pc-devices': {
    name: 'pc-devices', summary: '-M pc, -S, e1000 + virtio-blk (raw image) + piix3-usb-uhci/usb-tablet + isa-serial', versions: BOTH,
    args: ['-M', 'pc', '-m', String(RAM_MIB), ...DEVICES, ...SERIAL], images: ['data'], capabilities: [],
    prepare: 'paused', expectedStatus: 'prelaunch', ramMiB: RAM_MIB, ramBlock: 'pc.ram',
  },
  'pc-live': {
    name: 'pc-live', summary: '-M pc, SeaBIOS boots the test boot sector from IDE; migrated live while it runs', versions: BOTH,
    args: ['-M', 'pc', '-m', String(RAM_MIB), ...BOOT_DISK, ...SERIAL], images: ['boot'], capabilities: [],
    prepare: 'run', minRounds: 3, accept: resent, expectedStatus: 'running', ramMiB: RAM_MIB, ramBlock: 'pc.ram',
  },
  'pc-stopped': {
    name: 'pc-stopped', summary: '-M pc with the devices, firmware ran and booted the test guest, then `stop`', versions: BOTH,
    args: ['-M', 'pc', '-m', String(RAM_MIB), ...BOOT_DISK, ...DEVICES, ...SERIAL], images: ['boot', 'data'], capabilities: [],
    prepare: 'run-stop', expectedStatus: 'paused', ramMiB: RAM_MIB, ramBlock: 'pc.ram',
  },
  'pc-ignore-shared': {
    name: 'pc-ignore-shared', summary: '-M pc, -S, guest RAM in a shared memory-backend-file, capability x-ignore-shared', versions: BOTH,
    // The backend keeps the default RAM id "pc.ram", so the block list names the same block.
    args: [
      '-M', 'pc,memory-backend=pc.ram', '-m', String(RAM_MIB),
      '-object', `memory-backend-file,id=pc.ram,size=${RAM_MIB}M,mem-path={dir}/guest-ram,share=on`,
    ],
    images: [], capabilities: ['x-ignore-shared'],
    prepare: 'paused', expectedStatus: 'prelaunch', ramMiB: RAM_MIB, ramBlock: 'pc.ram',
  },
  'pc-compress': {
    // The compress capability (COMPRESS_PAGE records) was removed in QEMU 9.1.
    name: 'pc-compress', summary: '-M pc, the running test guest, capability compress (7.2 only)', versions: ['7.2'],
    args: ['-M', 'pc', '-m', String(RAM_MIB), ...BOOT_DISK, ...SERIAL], images: ['boot'], capabilities: ['compress'],
    prepare: 'run', accept: counted('compression'), expectedStatus: 'running', ramMiB: RAM_MIB, ramBlock: 'pc.ram',
  },
  'pc-xbzrle': {
    // Pages resent from the third round on go as XBZRLE deltas against the cache. 10.0 only:
    // under TCG, QEMU 7.2 stops seeing the guest's writes as dirty after its third bitmap
    // sync (it then completes on its own with an empty END), so it never reaches the rounds
    // that would use XBZRLE.
    name: 'pc-xbzrle', summary: '-M pc, the running test guest migrated over several rounds, capability xbzrle (10.0)', versions: ['10.0'],
    args: ['-M', 'pc', '-m', String(RAM_MIB), ...BOOT_DISK, ...SERIAL], images: ['boot'], capabilities: ['xbzrle'],
    prepare: 'run', minRounds: 6, accept: counted('xbzrle-cache'), expectedStatus: 'running', ramMiB: RAM_MIB, ramBlock: 'pc.ram',
  },
};

/** Every (scenario, version) pair the tests cover. */
export function scenarioMatrix(): { scenario: Scenario; version: QemuVersion }[] {
  return SCENARIO_NAMES.flatMap((name) => SCENARIOS[name].versions.map((version) => ({ scenario: SCENARIOS[name], version })));
}
