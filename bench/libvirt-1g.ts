// libvirt save images of a 1 GiB domain: sizes, and the time of migbridge inspect, extract
// --ram and reframe (convert) on each format, plus virsh's own save and restore for scale.
// The tiny test guest touches a few pages only, so its RAM is first filled: a raw save is
// rewritten with half-random pages in place of the zero pages from 32 MiB up (the guest never
// looks there) and restored paused; every image below is a save of that same paused guest,
// and every extracted pc.ram is compared with QEMU's pmemsave of it.
// Needs root and libvirt (scripts/setup.sh --test); heavy: run as
//   flock /tmp/migbridge-heavy.lock node dist/bench/libvirt-1g.js
import { execFile } from 'node:child_process';
import { readFile, rm, stat } from 'node:fs/promises';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PrivateLibvirt } from '../test/helpers/libvirt.js';
import { readStreamFile } from '../src/qemu/reader.js';
import { RamFlag } from '../src/qemu/constants.js';
import { StreamWriter, writableSink } from '../src/qemu/writer.js';
import { writeStreamOutput } from '../src/libvirt/output.js';

const RAM_MIB = 1024;
const FILL_FROM = 32 << 20;
const CLI = fileURLToPath(new URL('../../bin/migbridge.js', import.meta.url));

function migbridge(...args: string[]): Promise<number> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    execFile('node', [CLI, ...args], { maxBuffer: 64 << 20 }, (err, _out, stderr) => {
      if (err) reject(new Error(`migbridge ${args.join(' ')}: ${stderr}`));
      else resolve((performance.now() - t0) / 1000);
    });
  });
}

async function timed<T>(fn: () => Promise<T>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return (performance.now() - t0) / 1000;
}

/** Apparent and allocated size in MiB. */
async function sizes(file: string): Promise<string> {
  const st = await stat(file);
  return `${(st.size / 2 ** 20).toFixed(1)} MiB (${((st.blocks * 512) / 2 ** 20).toFixed(1)} MiB allocated)`;
}

/** A half-random page: 2 KiB random, 2 KiB of a pattern (so compressors have work either way). */
function filledPage(): Buffer {
  const p = Buffer.alloc(4096, 0x5a);
  randomBytes(2048).copy(p);
  return p;
}

async function fillRam(src: string, dst: string): Promise<void> {
  await writeStreamOutput(src, dst, async (out) => {
    const w = new StreamWriter(writableSink(out));
    for await (const ev of readStreamFile(src)) {
      if (ev.type === 'ram-zero' && ev.block === 'pc.ram' && ev.address >= FILL_FROM) {
        await w.event({ ...ev, type: 'ram-page', flags: (ev.flags & ~RamFlag.ZERO) | RamFlag.PAGE, data: filledPage() });
      } else {
        await w.event(ev);
      }
    }
    await w.flush();
  });
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex').slice(0, 16);

async function main(): Promise<void> {
  const lv = await PrivateLibvirt.start();
  const rows: string[] = [];
  const log = (s: string): void => {
    rows.push(s);
    console.log(s);
  };
  try {
    const { name } = await lv.createGuest(RAM_MIB);
    await lv.virsh('suspend', name);
    const base = join(lv.dir, 'base.sav');
    await lv.virsh('save', name, base, '--image-format', 'raw');
    const filled = join(lv.dir, 'filled.sav');
    log(`fill: rewrote the raw save with filled pages in ${(await timed(() => fillRam(base, filled))).toFixed(1)} s`);
    await rm(base);
    await lv.virsh('restore', filled, '--paused');
    const dump = join(lv.qemuOut, 'ram.pmem');
    await lv.qmp(name, 'pmemsave', { val: 0, size: RAM_MIB << 20, filename: dump });
    const ram = await readFile(dump);
    await rm(dump);
    log(`guest RAM (pmemsave): ${RAM_MIB} MiB, sha256 ${sha(ram)}`);
    const images: Record<string, string> = {};
    for (const [format, extra] of [['sparse', ['--parallel-channels', '2']], ['raw', []], ['gzip', []], ['zstd', []]] as const) {
      const file = join(lv.dir, `${format}.sav`);
      const save = await timed(() => lv.virsh('save', name, file, '--image-format', format, ...extra));
      images[format] = file;
      const inspect = await migbridge('inspect', file);
      const dir = join(lv.dir, `ram-${format}`);
      const extract = await migbridge('extract', file, '--ram', dir);
      const same = (await readFile(join(dir, 'pc.ram'))).equals(ram);
      await rm(dir, { recursive: true });
      const restore = await timed(() => lv.virsh('restore', file, '--paused', ...extra));
      log(`${format}${extra.length ? ' (2 channels)' : ''}: ${await sizes(file)}; virsh save ${save.toFixed(1)} s, virsh restore ${restore.toFixed(1)} s; migbridge inspect ${inspect.toFixed(1)} s, extract --ram ${extract.toFixed(1)} s (pc.ram ${same ? 'equals' : 'DIFFERS FROM'} pmemsave)`);
      if (!same) throw new Error(`${format}: extracted pc.ram differs from pmemsave`);
    }
    for (const [from, to] of [['sparse', 'raw'], ['raw', 'sparse'], ['gzip', 'raw'], ['raw', 'zstd']] as const) {
      const out = join(lv.dir, `${from}-to-${to}.sav`);
      const secs = await migbridge('reframe', images[from]!, out, '--format', to);
      const dir = join(lv.dir, `ram-${from}-${to}`);
      await migbridge('extract', out, '--ram', dir);
      const same = (await readFile(join(dir, 'pc.ram'))).equals(ram);
      await rm(dir, { recursive: true });
      log(`reframe ${from} -> ${to}: ${secs.toFixed(1)} s, ${await sizes(out)} (pc.ram ${same ? 'equals' : 'DIFFERS FROM'} pmemsave)`);
      await rm(out);
    }
  } finally {
    await lv.stop();
  }
}

await main();
