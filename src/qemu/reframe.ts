// Re-framing: turn a captured stream into the one QEMU itself would have written to a file
// for the destination, changing only records and keeping every other byte. What changes:
//  - a capture of a live socket migration (a proxy tee) carries return-path traffic:
//    OPEN_RETURN_PATH and PING (QEMU 7.2 and 10.0 tolerate them on a file load, their
//    replies go nowhere, but QEMU never writes them into a file stream), POSTCOPY_ADVISE
//    whenever postcopy-ram was on (a destination without postcopy-ram fails the load with
//    "RAM postcopy is disabled but have 16 byte advise", seen on 7.2 and 10.0), and the VFIO
//    DEV_INIT_DATA_SENT marker of switchover-ack (which needs a return path);
//  - SWITCHOVER_START is new in QEMU 10.0: 7.2 fails with "MIG_CMD 0xb unknown".
//  - `--to 7.2` also checks every section's version against what 7.2 registers (section-versions.ts).
//  - a multifd migration's main channel lacks what went over the channels (RAM pages, VFIO
//    stop-copy data and config); given the channel captures, reframe-multifd.ts merges them
//    in, and without them such a stream is refused rather than written without its state.
// Everything a file cannot stand in for is refused with a typed error naming the offset:
// postcopy that really started, COLO and recovery commands, multifd streams without their
// channels, and mapped-ram streams that would need a change (their page offsets would move).
import { stat } from 'node:fs/promises';
import { StreamError } from './errors.js';
import { CAP_MAPPED_RAM, DEFAULT_TARGET_PAGE_SIZE, VmCommand } from './constants.js';
import { probeStreamFile } from './reader.js';
import type { SectionRef, StreamEvent } from './records.js';
import { sectionVerdict } from './section-versions.js';
import { indexMultifdChannels } from './multifd-index.js';
import { MultifdMerge, withMultifdDeviceState, type DeviceStateMerged } from './reframe-multifd.js';
import { StreamWriter, writableSink } from './writer.js';
import { machineTypeRelease } from './machine-type.js';
// A libvirt save image in gives a libvirt save image out.
import { writeStreamOutput } from '../libvirt/output.js';
import { plainStreamEvents, writeMappedRamOutput } from './reframe-mapped-ram.js';


/** Versions whose stream format the codec knows (docs/stream-format.md covers 7.2 to 10.2). */
export const REFRAME_TARGETS = ['7.2', '8.0', '8.1', '8.2', '9.0', '9.1', '9.2', '10.0', '10.1', '10.2'] as const;

export function parseQemuRelease(text: string): QemuRelease | undefined {
  if (!(REFRAME_TARGETS as readonly string[]).includes(text)) return undefined;
  const [major, minor] = text.split('.').map(Number) as [number, number];
  return { major, minor };
}

function atLeast(v: QemuRelease, major: number, minor: number): boolean {
  return v.major > major || (v.major === major && v.minor >= minor);
}

import type { QemuRelease, ReframeChange, ReframeOptions, ReframeResult } from './reframe-types.js';
export type { QemuRelease, ReframeAction, ReframeChange, ReframeOptions, ReframeResult } from './reframe-types.js';

const WHY_RETURN_PATH = 'return-path traffic: QEMU writes none into a file stream, and a file load has no peer to answer';
const WHY_SWITCHOVER_ACK = 'switchover-ack needs a return path; END_OF_STATE ends the chunk the same way';

/** What to do with one command record; null keeps it. */
function commandChange(ev: Extract<StreamEvent, { type: 'command' }>, target: QemuRelease | undefined): ReframeChange | null {
  const what = `command ${ev.name}`;
  switch (ev.command) {
    case VmCommand.OPEN_RETURN_PATH:
    case VmCommand.PING:
      return { offset: ev.offset, what, action: 'dropped', why: WHY_RETURN_PATH };
    case VmCommand.POSTCOPY_ADVISE:
      // Sent whenever postcopy-ram is on, even if postcopy never started; the refused
      // commands below show when it did.
      return { offset: ev.offset, what, action: 'dropped', why: 'postcopy-ram was on but postcopy never started; a destination without postcopy-ram rejects the advise' };
    case VmCommand.SWITCHOVER_START:
      if (!target || atLeast(target, 10, 0)) return null;
      return { offset: ev.offset, what, action: 'dropped', why: `new in QEMU 10.0; ${target.major}.${target.minor} rejects the command` };
    default:
      // The rest (the decoder admits only QEMU's own numbers): postcopy that started
      // (LISTEN, RUN, RAM_DISCARD, PACKAGED), COLO, postcopy recovery.
      throw new StreamError('ESTREAM_UNSUPPORTED', `${what}: the migration went on in a way a file cannot replay (postcopy, COLO or recovery)`, { offset: ev.offset, found: ev.name });
  }
}

/**
 * Writes `outPath` from `inPath` with the changes above (atomically: a failure leaves no
 * output). A stream that needs no change comes out byte-identical.
 */
export async function reframeStreamFile(inPath: string, outPath: string, opts: ReframeOptions = {}): Promise<ReframeResult> {
  // Before writing: with OUT = IN (in place) the file is the output afterwards.
  const bytesIn = (await stat(inPath)).size;
  const changes: ReframeChange[] = [];
  const warnings: string[] = [];
  let merge: MultifdMerge | undefined;
  let channels: ReframeResult['multifd'] = [];
  const channelFiles = opts.multifd ?? [];
  if (channelFiles.length > 0) {
    const vmdesc = opts.vmdesc ?? (await probeStreamFile(inPath, opts)).vmdesc;
    // The decode below reuses the vmdesc read here instead of reading the file's tail again.
    if (vmdesc) opts = { ...opts, vmdesc };
    const index = await indexMultifdChannels(channelFiles, vmdesc?.page_size ?? DEFAULT_TARGET_PAGE_SIZE);
    merge = new MultifdMerge(index);
    channels = index.channels.map((c) => ({ channelId: c.channelId, path: c.path, bytes: c.bytes }));
  }
  const output = { ...(opts.format !== undefined ? { format: opts.format } : {}), ...(opts.xml !== undefined ? { xml: opts.xml } : {}) };
  const written = opts.format === 'sparse'
    ? writeMappedRamOutput(inPath, outPath, opts, output, (w) => reframeInto(w, inPath, opts, merge, changes, warnings), changes)
    : writeStreamOutput(inPath, outPath, (out) => reframeInto(new StreamWriter(writableSink(out)), inPath, opts, merge, changes, warnings), output);
  const bytesOut = await written
    .catch((e: unknown) => {
      throw e instanceof StreamError ? e.inFile(inPath) : e;
    })
    .finally(() => merge?.close());
  return { bytesIn, bytesOut, changes, warnings, multifd: channels };
}

/**
 * A versioned machine type newer than the target: that QEMU has no such machine and refuses
 * the stream at its configuration section. Refused, or (with `warnings`, i.e. --force) noted.
 */
function checkMachineType(machineType: string, target: QemuRelease, offset: number, warnings: string[] | undefined): void {
  const release = machineTypeRelease(machineType);
  if (!release || atLeast(target, release.major, release.minor)) return;
  const why = `machine type ${machineType} is new in QEMU ${release.major}.${release.minor}; QEMU ${target.major}.${target.minor} has no such machine and refuses the stream`;
  if (!warnings) throw new StreamError('ESTREAM_UNSUPPORTED', `${why} (--force writes it anyway)`, { offset, found: machineType });
  warnings.push(why);
}

/**
 * A section the target registers with an older version: refused naming it, or (with
 * `forced`, i.e. --force) noted. A section the target's table lacks is only noted.
 */
function checkSection(sec: SectionRef, offset: number, target: QemuRelease, forced: string[] | undefined, warnings: string[]): void {
  const v = sectionVerdict(sec, target);
  if (!v || v.ok) return;
  if (v.known && !forced) {
    throw new StreamError('ESTREAM_UNSUPPORTED', `${v.why} (--force writes it anyway)`, { offset, sectionId: sec.sectionId, idstr: sec.idstr, expected: `version <= ${v.newest}`, found: String(sec.versionId) });
  }
  warnings.push(v.why);
}

/** The event loop of reframeStreamFile, writing into `out`; returns the bytes written. */
async function reframeInto(w: StreamWriter, inPath: string, opts: ReframeOptions, merge: MultifdMerge | undefined, changes: ReframeChange[], warnings: string[]): Promise<number> {
  let mappedRam = false;
  const events = plainStreamEvents(inPath, opts, changes);
  // VFIO device state that went over the channels comes back as ordinary events; each piece
  // put back is a change of the main channel (the RAM rounds are merged below).
  const onMerged = (m: DeviceStateMerged): void => {
    const where = { offset: m.offset, sectionId: m.section.sectionId, idstr: m.section.idstr };
    checkMovable(mappedRam, 'multifd device state', m.offset);
    if (m.kind === 'stop-copy') {
      changes.push({ ...where, what: `vfio stop-copy data from multifd: ${m.bytes} bytes in ${m.packets} packet${m.packets === 1 ? '' : 's'}`, action: 'inserted', why: 'a file load has no multifd channels' });
    } else {
      merge!.fullMerged(m.section, m.bytes);
      changes.push({ ...where, what: `vfio ${m.marker} (multifd dummy)`, action: 'replaced', why: `the config blob from multifd (${m.bytes} bytes): a file load has no multifd channels` });
    }
  };
  for await (const ev of merge ? withMultifdDeviceState(events, merge.index, onMerged) : events) {
    let change: ReframeChange | null = null;
    switch (ev.type) {
      case 'configuration':
        mappedRam = ev.subsections.some((s) => s.capabilities?.includes(CAP_MAPPED_RAM));
        if (opts.target) checkMachineType(ev.machineType, opts.target, ev.offset, opts.force ? warnings : undefined);
        if (mappedRam && opts.target && !atLeast(opts.target, 9, 0)) {
          throw new StreamError('ESTREAM_UNSUPPORTED', `mapped-ram is new in QEMU 9.0; ${opts.target.major}.${opts.target.minor} cannot load this stream (--format raw writes it as a plain stream)`, { offset: ev.offset });
        }
        break;
      case 'section':
        if (opts.target && (ev.kind === 'START' || ev.kind === 'FULL')) checkSection(ev.section, ev.offset, opts.target, opts.force ? warnings : undefined, warnings);
        break;
      case 'command':
        change = commandChange(ev, opts.target);
        break;
      case 'ram-multifd-flush': {
        if (!merge) {
          throw new StreamError('ESTREAM_UNSUPPORTED', 'the RAM pages of this migration travelled on multifd channels, which a capture of the main channel does not hold: give the channel captures (proxy --tee writes FILE.multifd-N)', { offset: ev.offset, sectionId: ev.section.sectionId, idstr: ev.section.idstr });
        }
        checkMovable(mappedRam, 'multifd pages', ev.offset);
        // The round's pages take the flush's place: a stream QEMU writes without multifd has
        // the pages and no flush (and extract refuses a stream with one).
        const r = await merge.beforeFlush(w, ev);
        changes.push({ offset: ev.offset, what: 'ram MULTIFD_FLUSH', action: 'replaced', why: `by round ${r.round + 1} from multifd: ${r.normalPages} pages, ${r.zeroPages} zero pages in ${r.packets} packets (a file load has no multifd channels)`, sectionId: ev.section.sectionId, idstr: ev.section.idstr });
        continue;
      }
      case 'vfio-multifd-placeholder':
        // Still here: the device had no state on the channels (given ones put it back).
        throw new StreamError('ESTREAM_UNSUPPORTED', 'this VFIO device sent its stop-copy data and config over multifd channels (x-migration-multifd-transfer); a capture of the main channel does not hold them: give the channel captures', { offset: ev.offset, sectionId: ev.section.sectionId, idstr: ev.section.idstr, expected: 'DEV_CONFIG_STATE', found: ev.marker });
      case 'vfio-marker':
        if (ev.marker === 'DEV_INIT_DATA_SENT') {
          change = { offset: ev.offset, what: 'vfio DEV_INIT_DATA_SENT', action: 'replaced', why: WHY_SWITCHOVER_ACK, sectionId: ev.section.sectionId, idstr: ev.section.idstr };
        }
        break;
      case 'eof':
        merge?.finish(ev.offset);
        break;
      case 'vmdesc': {
        const json = merge?.vmdescJson(ev.json);
        if (json) {
          changes.push({ offset: ev.offset, what: 'vmdesc', action: 'replaced', why: 'the merged VFIO FULL sections are longer: their vmdesc sizes follow' });
          await w.vmdesc(json);
          continue;
        }
        break;
      }
      default:
    }
    if (!change) {
      await w.event(ev);
      continue;
    }
    checkMovable(mappedRam, `${change.what} would have to be ${change.action}`, ev.offset);
    changes.push(change);
    if (change.action === 'replaced') await w.vfioMarker('END_OF_STATE');
  }
  await w.flush();
  return w.offset;
}

/** mapped-ram streams record page offsets in the file: no change may move bytes. */
function checkMovable(mappedRam: boolean, what: string, offset: number): void {
  if (mappedRam) throw new StreamError('ESTREAM_UNSUPPORTED', `${what}, but mapped-ram records page offsets in the file that the change would move`, { offset });
}
