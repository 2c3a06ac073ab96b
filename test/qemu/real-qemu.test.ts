// The stream codec against real QEMU: for every scenario on QEMU 7.2 and 10.0, real QEMU
// writes the stream (cached between runs, see test/helpers/qemu.ts), `migbridge inspect`
// frames it, `migbridge rewrite` reproduces it byte for byte and the rewritten stream loads
// back into the same QEMU, and `migbridge extract --ram` gives RAM images of the right size
// (for the running guest: with its boot sector at 0x7c00 and its counter advanced).
//
// Expectations come from the stream itself where possible (its own VMDESCRIPTION trailer
// lists the FULL sections in order) and from QEMU's own runtime (query-migrate, the guest's
// counter), not from numbers written here.
import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  BOOT_SECTOR_GPA, COUNTER_GPA, QEMU_VERSIONS, QemuVm, bootSector, hashRam, loadStream, readCounter, repoRoot, scenarioMatrix,
  startDestination, streamFor, type MigrationInfo, type QemuVersion, type Scenario,
} from '../helpers/qemu.js';

const cli = join(repoRoot(), 'bin', 'migbridge.js');

interface CliResult { code: number; stdout: string; stderr: string }

// At most two CLI processes at once (2 cores, shared with the QEMUs).
let cliRunning = 0;
const cliQueue: (() => void)[] = [];
async function migbridge(args: string[], timeoutMs = 120_000): Promise<CliResult> {
  if (cliRunning >= 2) await new Promise<void>((r) => cliQueue.push(r));
  cliRunning++;
  try {
    return await new Promise<CliResult>((resolve) => {
      execFile(process.execPath, [cli, ...args], { timeout: timeoutMs, maxBuffer: 256 * 1024 * 1024 }, (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
        resolve({ code, stdout, stderr });
      });
    });
  } finally {
    cliRunning--;
    cliQueue.shift()?.();
  }
}

function describe(r: CliResult): string {
  return `exit ${r.code}\nstderr: ${r.stderr.slice(0, 4000)}\nstdout: ${r.stdout.slice(0, 1000)}`;
}

async function scratchDir(t: ExecutionContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'migbridge-realqemu-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** The stream's own VMDESCRIPTION JSON, found from the end of the file (EOF 0x00, 0x06, be32 len, JSON). */
function vmdescOf(stream: Buffer): { devices: { name: string; instance_id: number }[] } {
  for (let p = stream.length - 6; p >= 1; p--) {
    if (stream[p] === 0x06 && stream[p - 1] === 0x00 && stream.readUInt32BE(p + 1) === stream.length - p - 5 && stream[p + 5] === 0x7b) {
      return JSON.parse(stream.subarray(p + 5).toString('utf8')) as { devices: { name: string; instance_id: number }[] };
    }
  }
  throw new Error('no VMDESCRIPTION trailer at the end of the stream');
}

interface InspectRecord { offset: number; kind: string; sectionId?: number; idstr?: string; instanceId?: number; versionId?: number; length: number }
interface InspectJson {
  header: { magic: unknown; version: number };
  configuration: { machineType: string } | null;
  records: InspectRecord[];
  ram?: { pageSize: number; blocks: { name: string; usedLength: number }[] };
}

interface StreamMeta {
  counterBefore?: number;
  sourceRam?: string;
  migration: { ram?: Record<string, number>; compression?: { pages?: number }; 'xbzrle-cache'?: { pages?: number } };
}

/** Per-stream metadata the generator wrote beside it (source status, query-migrate, guest counter). */
async function meta(file: string): Promise<StreamMeta> {
  return JSON.parse(await readFile(`${file}.json`, 'utf8')) as StreamMeta;
}

const machinePrefix = (s: Scenario, v: QemuVersion): string => `${s.args[1]!.startsWith('q35') ? 'pc-q35' : 'pc-i440fx'}-${v}`;

for (const { scenario: s, version: v } of scenarioMatrix()) {
  const label = `QEMU ${v} ${s.name}`;

  test(`${label}: real QEMU writes the stream and loads it back (${s.expectedStatus})`, async (t) => {
    const file = await streamFor(s.name, v, t.teardown.bind(t));
    t.true((await stat(file)).size > 8);
    // The source really did what the scenario is about (QEMU's own counters).
    // (compress: COMPRESS_PAGE records; xbzrle: XBZRLE records; live: pages resent after the first pass)
    t.is(s.accept?.((await meta(file)).migration as MigrationInfo) ?? null, null);
    t.is(await loadStream(v, file, s.name, { teardown: t.teardown.bind(t) }), s.expectedStatus);
  });

  if (s.prepare === 'run') {
    test(`${label}: the migrated guest keeps running on the destination`, async (t) => {
      const file = await streamFor(s.name, v, t.teardown.bind(t));
      const { counterBefore } = await meta(file);
      const vm = await startDestination(v, file, s.name, { teardown: t.teardown.bind(t) });
      try {
        t.is(await vm.status(), 'running');
        const first = await readCounter(vm);
        t.true(counterBefore !== undefined && first >= counterBefore, `counter ${first} on the destination, ${String(counterBefore)} on the source before migrating`);
        const deadline = Date.now() + 20_000;
        let later = first;
        while (later === first && Date.now() < deadline) {
          await sleep(50);
          later = await readCounter(vm);
        }
        t.true(later > first, `the guest's counter at 0x${COUNTER_GPA.toString(16)} did not advance on the destination (${first})`);
      } finally {
        await vm.quit();
      }
    });
  }

  test(`${label}: migbridge inspect frames every record`, async (t) => {
    const file = await streamFor(s.name, v, t.teardown.bind(t));
    const bytes = await readFile(file);
    const r = await migbridge(['inspect', file, '--output=json']);
    t.is(r.code, 0, describe(r));
    if (r.code !== 0) return;
    const j = JSON.parse(r.stdout) as InspectJson;
    t.true(j.header.magic === 'QEVM' || j.header.magic === 0x5145564d || j.header.magic === '0x5145564d', `magic ${String(j.header.magic)}`);
    t.is(j.header.version, 3);
    t.true(j.configuration?.machineType.startsWith(machinePrefix(s, v)), `machine type ${String(j.configuration?.machineType)}`);

    const recs = j.records;
    t.true(recs.length > 3);
    t.is(recs[0]!.kind, 'CONFIGURATION');
    t.is(recs[0]!.offset, 8);
    t.deepEqual(recs.slice(-2).map((x) => x.kind), ['EOF', 'VMDESCRIPTION']);
    // Records tile the file: each one's length reaches exactly the next one's offset.
    for (let i = 0; i + 1 < recs.length; i++) {
      if (recs[i]!.offset + recs[i]!.length !== recs[i + 1]!.offset) {
        t.fail(`record ${i} (${recs[i]!.kind} ${recs[i]!.idstr ?? ''}) at ${recs[i]!.offset} + ${recs[i]!.length} != next offset ${recs[i + 1]!.offset}`);
        break;
      }
    }
    const last = recs[recs.length - 1]!;
    t.is(last.offset + last.length, bytes.length);

    // FULL sections, in order, are exactly the devices the stream's own vmdesc describes.
    const fulls = recs.filter((x) => x.kind === 'FULL').map((x) => `${x.idstr}#${x.instanceId}`);
    t.deepEqual(fulls, vmdescOf(bytes).devices.map((d) => `${d.name}#${d.instance_id}`));
    // The RAM section: START, PARTs, END, all under the id its START gave.
    const ramId = recs.find((x) => x.kind === 'START' && x.idstr === 'ram')?.sectionId;
    t.not(ramId, undefined, 'no START record for "ram"');
    const ram = recs.filter((x) => ['START', 'PART', 'END'].includes(x.kind) && x.sectionId === ramId);
    t.is(ram[0]?.kind, 'START');
    t.is(ram[ram.length - 1]?.kind, 'END');
    t.true(ram.slice(1, -1).every((x) => x.kind === 'PART'));
    // QEMU 10.0 announces the switchover (COMMAND SWITCHOVER_START) before the END sections; 7.2 sends no COMMAND.
    const commands = recs.filter((x) => x.kind === 'COMMAND');
    if (v === '10.0') {
      t.is(commands.length, 1);
      t.true(recs.indexOf(commands[0]!) < recs.findIndex((x) => x.kind === 'END'));
    } else {
      t.is(commands.length, 0);
    }
    t.is(j.ram?.pageSize, 4096);
    t.true(j.ram?.blocks.some((b) => b.name === s.ramBlock && b.usedLength === s.ramMiB * 1024 * 1024), JSON.stringify(j.ram?.blocks));
  });

  test(`${label}: migbridge rewrite is byte-identical and QEMU loads the rewrite`, async (t) => {
    const file = await streamFor(s.name, v, t.teardown.bind(t));
    const out = join(await scratchDir(t), 'rewritten.mig');
    const r = await migbridge(['rewrite', file, out]);
    t.is(r.code, 0, describe(r));
    if (r.code !== 0) return;
    const [a, b] = await Promise.all([readFile(file), readFile(out)]);
    t.is(b.length, a.length);
    const diff = a.findIndex((x, i) => b[i] !== x);
    t.true(a.equals(b), `first difference at byte ${diff}`);
    t.is(await loadStream(v, out, s.name, { teardown: t.teardown.bind(t) }), s.expectedStatus);
  });

  test(`${label}: migbridge extract --ram writes every RAM block at its size`, async (t) => {
    const file = await streamFor(s.name, v, t.teardown.bind(t));
    const dir = join(await scratchDir(t), 'ram');
    const ins = await migbridge(['inspect', file, '--output=json']);
    t.is(ins.code, 0, describe(ins));
    const r = await migbridge(['extract', file, '--ram', dir]);
    t.is(r.code, 0, describe(r));
    if (ins.code !== 0 || r.code !== 0) return;
    const blocks = (JSON.parse(ins.stdout) as InspectJson).ram?.blocks ?? [];
    const files = await listFiles(dir);
    // One image per block, each used_length bytes (naming is the extractor's business).
    t.deepEqual(
      (await Promise.all(files.map(async (f) => (await stat(f)).size))).sort((x, y) => x - y),
      blocks.map((b) => b.usedLength).sort((x, y) => x - y),
    );
    const ramFile = files.find((f) => f.split('/').pop()!.startsWith(s.ramBlock));
    t.truthy(ramFile, `no image named after ${s.ramBlock} in ${files.join(', ')}`);
    if (!ramFile) return;
    const ram = await readFile(ramFile);
    t.is(ram.length, s.ramMiB * 1024 * 1024);
    // Byte for byte what the source QEMU had in guest RAM once the migration completed
    // (QEMU's own pmemsave; a running guest's hot pages excepted, see hashSourceRam).
    const { sourceRam } = await meta(file);
    t.truthy(sourceRam, 'the generator recorded no source RAM hash');
    t.is(hashRam((start, end) => ram.subarray(start, end), s), sourceRam ?? '');
    if (s.prepare !== 'paused') {
      t.true(ram.subarray(BOOT_SECTOR_GPA, BOOT_SECTOR_GPA + 512).equals(bootSector()), 'the boot sector is not at 0x7c00 in the extracted RAM');
      const { counterBefore } = await meta(file);
      t.true(ram.readUInt32LE(COUNTER_GPA) >= (counterBefore ?? Infinity), `counter ${ram.readUInt32LE(COUNTER_GPA)} in RAM, ${String(counterBefore)} read before migrating`);
    } else if (s.name === 'pc-ignore-shared') {
      // Shared RAM is not in the stream at all: the image is all zeros.
      t.true(ram.every((x) => x === 0));
    }
  });
}

// The harness itself must fail loudly: a damaged stream is refused by QEMU, with its stderr.
for (const v of QEMU_VERSIONS) {
  test(`QEMU ${v}: a truncated stream fails to load, with QEMU's own error`, async (t) => {
    const file = await streamFor('pc-paused', v, t.teardown.bind(t));
    const bytes = await readFile(file);
    const cut = join(await scratchDir(t), 'cut.mig');
    await writeFile(cut, bytes.subarray(0, bytes.length >> 1));
    const err = await t.throwsAsync(loadStream(v, cut, 'pc-paused', { teardown: t.teardown.bind(t) }));
    t.regex(err?.message ?? '', /QEMU stderr:\n.*\S/s);
    t.notRegex(err?.message ?? '', /QEMU stderr: \(empty\)/);
  });
}

test('QEMU 10.0 has no compress capability (removed in 9.1), 7.2 has it', async (t) => {
  for (const v of QEMU_VERSIONS) {
    const vm = await QemuVm.start({ version: v, args: ['-M', 'pc', '-m', '32', '-S'], teardown: t.teardown.bind(t) });
    try {
      const caps = ((await vm.qmp('query-migrate-capabilities')) as { capability: string }[]).map((c) => c.capability);
      t.is(caps.includes('compress'), v === '7.2', `${v}: ${caps.join(' ')}`);
    } finally {
      await vm.quit();
    }
  }
});

async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) out.push(join(e.parentPath, e.name));
  }
  return out.sort();
}
