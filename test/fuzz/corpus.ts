// The fuzz corpus: real streams, each decoded once for its layout. Three parts, each used when
// present: the captures committed under test/fixtures (QEMU 10 VFIO/mtty streams, a QEMU 10
// multifd migration's main stream and channels), the real-QEMU streams the tests cache under
// the stream cache (test/helpers/cache.ts; QEMU 7.2 and 10.0 scenarios, made by test/helpers/qemu.ts),
// and migbridge's own saves of simulated devices, made now.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { save } from '../../src/engine/save.js';
import { openSink } from '../../src/engine/sink.js';
import { createSimDevice } from '../../src/vfio/sim/index.js';
import { channelLayout, streamLayout, type StreamLayout } from './layout.js';
import { STREAM_CACHE } from '../helpers/cache.js';

export type CorpusPart = 'fixtures' | 'qemu-cache' | 'saves';

export interface Seed {
  readonly bytes: Buffer;
  readonly layout: StreamLayout;
}

export interface CorpusEntry {
  readonly name: string;
  readonly part: CorpusPart;
  readonly main: Seed;
  readonly channels: readonly Seed[];
  /** Destination devices for restore: the stream's VFIO idstrs, each a sim of this state size. */
  readonly devices: readonly { readonly idstr: string; readonly size: number }[];
}

const REPO = fileURLToPath(new URL('../../../', import.meta.url));
export { STREAM_CACHE };
/** State size of the simulated devices saved for the corpus, and of destinations for foreign streams. */
const SIM_SIZE = 64 << 10;

async function entry(name: string, part: CorpusPart, file: string, channelFiles: string[] = [], simSize = SIM_SIZE): Promise<CorpusEntry> {
  const bytes = readFileSync(file);
  const layout = await streamLayout(file, bytes.length);
  const channels = channelFiles.map((c) => {
    const b = readFileSync(c);
    return { bytes: b, layout: channelLayout(b) };
  });
  const devices = [...layout.vfio.keys()].map((idstr) => ({ idstr, size: simSize }));
  // A stream without VFIO sections still goes to restore (which must refuse it): one device.
  return { name, part, main: { bytes, layout }, channels, devices: devices.length ? devices : [{ idstr: '0000:00:04.0/vfio', size: simSize }] };
}

function mig(dir: string): string[] {
  return existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.mig')).sort().map((f) => join(dir, f)) : [];
}

/** migbridge's own saves: plain, precopy with dirtying, and interleaved, of small sims. */
async function makeSaves(dir: string): Promise<CorpusEntry[]> {
  const kinds = [
    { name: 'save-2dev', specs: ['', ''], opts: {} },
    { name: 'save-precopy', specs: [`precopy=${SIM_SIZE / 2},dirty=1MiB/s`], opts: { precopy: true } },
    { name: 'save-interleave-3dev', specs: ['', '', ''], opts: { interleave: true } },
  ];
  const out: CorpusEntry[] = [];
  for (const k of kinds) {
    const file = join(dir, `${k.name}.mig`);
    const devices = k.specs.map((s, i) => createSimDevice(`sim:size=${SIM_SIZE},seed=${i + 11}${s ? ',' + s : ''}`));
    try {
      await save({ devices, sink: await openSink({ file }), ...k.opts });
    } finally {
      await Promise.all(devices.map((d) => d.close()));
    }
    out.push(await entry(k.name, 'saves', file));
  }
  return out;
}

export async function loadCorpus(scratch: string): Promise<CorpusEntry[]> {
  const fx = join(REPO, 'test/fixtures');
  const entries: CorpusEntry[] = [];
  for (const f of mig(join(fx, 'qemu10-vfio'))) entries.push(await entry(`fixture-${f.split('/').pop()}`, 'fixtures', f));
  const multifd = join(fx, 'qemu10-multifd');
  if (existsSync(join(multifd, 'main.mig'))) {
    entries.push(await entry('fixture-multifd', 'fixtures', join(multifd, 'main.mig'), [join(multifd, 'channel-0.bin'), join(multifd, 'channel-1.bin')]));
  }
  if (existsSync(STREAM_CACHE)) {
    for (const version of readdirSync(STREAM_CACHE).sort()) {
      for (const f of mig(join(STREAM_CACHE, version))) entries.push(await entry(`qemu-${version}-${f.split('/').pop()}`, 'qemu-cache', f));
    }
  }
  entries.push(...(await makeSaves(scratch)));
  return entries;
}
