// The README's main job, without hardware: N simulated devices saved in parallel into one
// stream file, the file inspected, restored into N fresh simulated devices, and every
// destination's state checked against its source's digest.
import { accessSync, constants, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { inspectStreamFile } from '../qemu/summary.js';
import { openEvents } from './source.js';
import { createSimDevice, type SimDevice } from '../vfio/sim/index.js';
import { closeDevices } from './devices.js';
import type { ProgressSink } from './progress.js';
import { restore, type RestoreReport } from './restore.js';
import { save, type SaveReport } from './save.js';
import { openSink } from './sink.js';

export interface DemoOptions {
  readonly devices: number;
  /** Sim spec keys shared by every device (e.g. "size=64MiB,rate=1GiB/s"). */
  readonly spec: string;
  readonly precopy: boolean;
  readonly dir?: string;
  /** A progress display for each phase (the CLI draws bars on a terminal). */
  readonly progress?: (phase: 'save' | 'restore') => ProgressSink;
}

export interface DemoDevice {
  readonly id: string;
  readonly restoredInto: string;
  readonly bytes: number;
  readonly verified: boolean;
  readonly saveSeconds: number;
  readonly digest: string;
}

export interface DemoReport {
  readonly devices: DemoDevice[];
  readonly totalBytes: number;
  readonly seconds: number;
  readonly stream: string;
  readonly streamBytes: number;
  readonly save: { readonly seconds: number; readonly bytesPerSecond: number; readonly downtime: SaveReport['downtime'] };
  readonly restore: { readonly seconds: number; readonly bytesPerSecond: number };
  readonly inspect: { readonly records: number; readonly vfioSections: number; readonly dataBytes: number };
  readonly verified: boolean;
}

/** A memory-backed directory when there is one: the demo measures device-state movement, not the disk. */
function demoBase(): string {
  try {
    accessSync('/dev/shm', constants.W_OK);
    return '/dev/shm';
  } catch {
    return tmpdir();
  }
}

export async function runDemo(opts: DemoOptions): Promise<DemoReport> {
  const dir = opts.dir ?? mkdtempSync(path.join(demoBase(), 'migbridge-demo-'));
  const stream = path.join(dir, 'demo.mig');
  const extra = opts.spec ? `,${opts.spec}` : '';
  const sources: SimDevice[] = [];
  const targets: SimDevice[] = [];
  const t0 = process.hrtime.bigint();
  try {
    for (let i = 0; i < opts.devices; i++) sources.push(createSimDevice(`sim:seed=${i + 1}${extra}`));
    for (let i = 0; i < opts.devices; i++) targets.push(createSimDevice(`sim:seed=${1000 + i}${extra}`));
    const saved = await save({
      devices: sources,
      sink: await openSink({ file: stream }),
      precopy: opts.precopy,
      ...(opts.progress ? { progress: opts.progress('save') } : {}),
    });
    const inspected = await inspectStreamFile(stream);
    const restored: RestoreReport = await restore({
      events: await openEvents({ file: stream }),
      devices: targets,
      ...(opts.progress ? { progress: opts.progress('restore') } : {}),
    });
    const devices = sources.map((src, i) => {
      const dst = targets[i]!;
      const result = dst.resumeResult;
      const verified = Boolean(result?.verified) && dst.stateDigest() === src.stateDigest();
      return {
        id: src.id,
        restoredInto: dst.id,
        bytes: saved.devices[i]!.bytes,
        verified,
        saveSeconds: saved.devices[i]!.seconds,
        digest: src.stateDigest().toString(16),
      };
    });
    const totalBytes = saved.totalBytes;
    return {
      devices,
      totalBytes,
      seconds: Number(process.hrtime.bigint() - t0) / 1e9,
      stream,
      streamBytes: saved.streamBytes,
      save: { seconds: saved.seconds, bytesPerSecond: totalBytes / saved.seconds, downtime: saved.downtime },
      restore: { seconds: restored.seconds, bytesPerSecond: restored.totalBytes / restored.seconds },
      inspect: {
        records: inspected.records.length,
        vfioSections: inspected.vfio.length,
        dataBytes: inspected.vfio.reduce((s, d) => s + d.dataBytes, 0),
      },
      verified: devices.every((d) => d.verified),
    };
  } finally {
    await closeDevices([...sources, ...targets]);
  }
}
