// The body of a `<id>/vfio` section chunk (§9): a run of be64 markers, read with
// the same loop as QEMU's vfio_load_state, which accepts every version's chunks
// (7.2 v1, 8.0, 8.1+ INIT_DATA_SENT, 10.x multifd dummies, 10.1 CONFIG_LOAD_READY).
// DATA_STATE payloads stream through as chunk events; the config blob is framed
// by the vmdesc size when known, else by its VFIOPCIDevice layout (§9.2).
import {
  RecordType,
  VFIO_MIG_FLAG_END_OF_STATE,
  vfioMarkerName,
  PCI_CONFIG_SPACE_SIZE,
  PCIE_CONFIG_SPACE_SIZE,
  PCI_DEVICE_VERSION_BYTES,
  PCI_IRQ_STATE_BYTES,
  PCI_CAPABILITY_LIST,
  PCI_STATUS,
  PCI_STATUS_CAP_LIST,
  PCI_CAP_ID_MSIX,
  PCI_MSIX_FLAGS_QSIZE,
  PCI_MSIX_ENTRY_SIZE,
  type SectionKind,
} from './constants.js';
import type { DecodeContext, Step } from './context.js';
import { hex } from './errors.js';
import type { SectionRef } from './records.js';
import { type VmDescDevice, fieldsBytes } from './vmdesc.js';

const MARKER_BYTES = 8;

export function* decodeVfioBody(ctx: DecodeContext, sec: SectionRef, kind: SectionKind, full: VmDescDevice | undefined): Step {
  const r = ctx.r;
  const bodyStart = r.offset;
  for (;;) {
    const at = r.offset;
    yield* ctx.need(MARKER_BYTES, 'a VFIO marker', sec);
    const value = r.be64();
    const marker = vfioMarkerName(value);
    switch (marker) {
      case 'END_OF_STATE':
      case 'DEV_CONFIG_LOAD_READY':
        // A FULL body that is only this marker: the config went over multifd (10.0+).
        if (kind === 'FULL' && at === bodyStart) ctx.emit({ type: 'vfio-multifd-placeholder', offset: at, section: sec, marker });
        else ctx.emit({ type: 'vfio-marker', offset: at, section: sec, marker });
        return;
      case 'DEV_INIT_DATA_SENT':
        ctx.emit({ type: 'vfio-marker', offset: at, section: sec, marker });
        return;
      case 'DEV_SETUP_STATE': {
        ctx.emit({ type: 'vfio-marker', offset: at, section: sec, marker });
        yield* expectEndOfState(ctx, sec, 'after DEV_SETUP_STATE');
        return;
      }
      case 'DEV_DATA_STATE': {
        yield* ctx.need(8, 'a DATA_STATE size', sec);
        const size = ctx.length(r.be64(), ctx.limits.maxDataStateBytes, 'DATA_STATE size', sec, at + 8);
        ctx.emit({ type: 'vfio-data', offset: at, section: sec, size, sectionKind: kind });
        let left = size;
        while (left > 0) {
          yield* ctx.need(1, `a DATA_STATE payload (${left} of ${size} bytes left)`, sec);
          const chunkAt = r.offset;
          const data = r.takeUpTo(left);
          left -= data.length;
          ctx.emit({ type: 'vfio-data-chunk', offset: chunkAt, section: sec, data });
        }
        break;
      }
      case 'DEV_CONFIG_STATE': {
        ctx.emit({ type: 'vfio-marker', offset: at, section: sec, marker });
        const blobAt = r.offset;
        const len = full !== undefined ? configLengthFromDesc(ctx, sec, full, r.offset - bodyStart) : yield* configLengthFromLayout(ctx, sec);
        ctx.length(len, ctx.limits.maxBufferedBytes, 'VFIO config blob', sec, blobAt);
        yield* ctx.need(len, 'the VFIO config blob', sec);
        ctx.emit({ type: 'vfio-config', offset: blobAt, section: sec, data: r.take(len) });
        yield* expectEndOfState(ctx, sec, 'after the VFIO config blob');
        return;
      }
      default:
        throw ctx.error('ESTREAM_FORMAT', 'unknown VFIO marker', { offset: at, section: sec, expected: 'a VFIO_MIG_FLAG_* value', found: hex(value, 16) });
    }
  }
}

function* expectEndOfState(ctx: DecodeContext, sec: SectionRef, where: string): Step {
  const at = ctx.r.offset;
  yield* ctx.need(MARKER_BYTES, `END_OF_STATE ${where}`, sec);
  const v = ctx.r.be64();
  if (v !== VFIO_MIG_FLAG_END_OF_STATE) {
    throw ctx.error('ESTREAM_FORMAT', `bad VFIO marker ${where}`, { offset: at, section: sec, expected: hex(VFIO_MIG_FLAG_END_OF_STATE, 16), found: hex(v, 16) });
  }
  ctx.emit({ type: 'vfio-marker', offset: at, section: sec, marker: 'END_OF_STATE' });
}

/** The vmdesc gives the FULL body's size (old-style "data" buffer): blob = size - markers. */
function configLengthFromDesc(ctx: DecodeContext, sec: SectionRef, full: VmDescDevice, consumed: number): number {
  const total = full.fields ? fieldsBytes(full) : full.size ?? 0;
  const len = total - consumed - MARKER_BYTES;
  if (len < 0) {
    throw ctx.error('ESTREAM_FORMAT', 'vmdesc size of the VFIO FULL section is too small for its config blob', { section: sec, expected: `>= ${consumed + MARKER_BYTES}`, found: String(total) });
  }
  return len;
}

/** MSI-X table + PBA bytes saved after the PCI config (hw/pci/msix.c msix_save: table, then DIV_ROUND_UP(n, 8) PBA bytes). */
export function msixStateBytes(config: Buffer): number {
  if (config.length < PCI_CONFIG_SPACE_SIZE) return 0;
  if ((config.readUInt16LE(PCI_STATUS) & PCI_STATUS_CAP_LIST) === 0) return 0;
  let ptr = config[PCI_CAPABILITY_LIST]! & ~3;
  // The list lives in the first 256 bytes; 48 hops is the kernel's PCI_FIND_CAP_TTL.
  for (let ttl = 48; ttl > 0 && ptr >= 0x40 && ptr < PCI_CONFIG_SPACE_SIZE - 3; ttl--) {
    if (config[ptr] === PCI_CAP_ID_MSIX) {
      const n = (config.readUInt16LE(ptr + 2) & PCI_MSIX_FLAGS_QSIZE) + 1;
      return n * PCI_MSIX_ENTRY_SIZE + Math.ceil(n / 8);
    }
    ptr = config[ptr + 1]! & ~3;
  }
  return 0;
}

/**
 * Without a vmdesc: VFIOPCIDevice is int32 version_id, config (256 or 4096 bytes:
 * PCIe-ness is decided at run time, not in the stream), 16 bytes of irq state,
 * MSI-X state if the config has the capability, then END_OF_STATE. Exactly one
 * of the two config sizes must land on END_OF_STATE followed by a footer or a
 * record type byte; otherwise the blob cannot be delimited and we say so.
 */
function* configLengthFromLayout(ctx: DecodeContext, sec: SectionRef): Step<number> {
  const r = ctx.r;
  const fits: number[] = [];
  for (const cfg of [PCI_CONFIG_SPACE_SIZE, PCIE_CONFIG_SPACE_SIZE]) {
    const head = PCI_DEVICE_VERSION_BYTES + cfg;
    const have = yield* ctx.upTo(head);
    if (have < head) continue;
    const configBytes = r.peek(head).subarray(PCI_DEVICE_VERSION_BYTES, head);
    const len = head + PCI_IRQ_STATE_BYTES + msixStateBytes(configBytes);
    const avail = yield* ctx.upTo(len + MARKER_BYTES + 1);
    if (avail < len + MARKER_BYTES) continue;
    const tail = r.peek(avail);
    if (tail.readBigUInt64BE(len) !== VFIO_MIG_FLAG_END_OF_STATE) continue;
    if (avail > len + MARKER_BYTES) {
      const next = tail[len + MARKER_BYTES]!;
      if (next !== RecordType.SECTION_FOOTER && !(next >= RecordType.EOF && next <= RecordType.COMMAND)) continue;
    }
    fits.push(len);
  }
  if (fits.length !== 1) {
    throw ctx.error('ESTREAM_CANNOT_DELIMIT', 'cannot delimit the VFIO config blob without a vmdesc', {
      section: sec,
      expected: 'exactly one VFIOPCIDevice layout (config 256 or 4096 bytes, irq state, MSI-X) ending in END_OF_STATE',
      found: fits.length === 0 ? 'none' : 'both',
    });
  }
  return fits[0]!;
}

/** Bytes of a FULL `<id>/vfio` body holding `configBytes` of config vmstate: two markers + blob. */
export function vfioConfigBodyBytes(configBytes: number): number {
  return MARKER_BYTES + configBytes + MARKER_BYTES;
}
