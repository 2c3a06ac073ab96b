// Checks a stream's VFIO sections as restore reads them, before their bytes reach a
// device: a section id started twice, two sections for the same device (idstr and
// instance id), a section that goes on after its END (trailing data), a DATA_STATE record
// larger than the destination's whole state (MIG_DATA_SIZE, where the device reports it)
// or a device's data past a configured cap. Each refusal is a StreamError naming the
// section and the stream offset; restore then resets every destination.
import { StreamError } from '../qemu/index.js';
import type { SectionEvent, VfioDataEvent } from '../qemu/index.js';

/**
 * A DATA_STATE record up to this size is never refused for its size alone: QEMU and
 * migbridge write records of at most 1 MiB (QEMU's data buffer), and a driver's
 * MIG_DATA_SIZE on an idle destination may be only an estimate smaller than that.
 */
const RECORD_ALWAYS_ALLOWED = 1 << 20;

/** Bytes one device may be given by default: far above any real device state, well below a runaway stream. */
export const DEFAULT_MAX_DEVICE_BYTES = 64 * 2 ** 30;

interface SectionSeen {
  readonly idstr: string;
  readonly instanceId: number;
  ended: boolean;
  bytes: number;
}

interface DeviceSeen {
  /** Section id of the device's first section (its START, or a FULL alone). */
  readonly first: number;
  full: boolean;
}

const key = (idstr: string, instanceId: number) => `${idstr}\0${instanceId}`;

export class ResumeStreamCheck {
  private readonly sections = new Map<number, SectionSeen>();
  private readonly devices = new Map<string, DeviceSeen>();

  constructor(private readonly maxDeviceBytes = DEFAULT_MAX_DEVICE_BYTES) {}

  /**
   * A VFIO section header. Returns the section id of the device's first section: the
   * section's own id when it starts a device, that of the device's START when it is the
   * FULL section QEMU writes after it (the device's config state, same idstr and
   * instance) under another id; undefined for PART/END and for that FULL under the
   * START's own id (as QEMU writes it), which need no new routing.
   */
  section(ev: SectionEvent): number | undefined {
    const { sectionId, idstr, instanceId } = ev.section;
    const where = { offset: ev.offset, sectionId, idstr };
    const seen = this.sections.get(sectionId);
    if (ev.kind === 'START' || ev.kind === 'FULL') {
      const dev = this.devices.get(key(idstr, instanceId));
      // QEMU writes a device's FULL section (config state) under its START's section id.
      const ownFull = ev.kind === 'FULL' && seen && dev?.first === sectionId;
      if (seen && !ownFull) throw new StreamError('ESTREAM_FORMAT', `section id ${sectionId} (${idstr}) started a second time`, where);
      const twice = dev && (ev.kind === 'START' || dev.full);
      if (twice) {
        throw new StreamError('ESTREAM_FORMAT', `two ${ev.kind} sections for ${idstr} instance ${instanceId} (section ids ${dev.first} and ${sectionId}): one device's state cannot come twice`, where);
      }
      if (seen) seen.ended = true;
      else this.sections.set(sectionId, { idstr, instanceId, ended: ev.kind === 'FULL', bytes: 0 });
      if (dev) {
        dev.full = true;
        return dev.first === sectionId ? undefined : dev.first;
      }
      this.devices.set(key(idstr, instanceId), { first: sectionId, full: ev.kind === 'FULL' });
      return sectionId;
    }
    // The decoder refuses PART/END of a section never started; here: nothing after END.
    if (seen?.ended) throw new StreamError('ESTREAM_FORMAT', `trailing data: ${ev.kind} section for ${idstr} after its END section`, where);
    if (seen && ev.kind === 'END') seen.ended = true;
    return undefined;
  }

  /** A DATA_STATE record header: `limit` is the destination's MIG_DATA_SIZE when known. */
  data(ev: VfioDataEvent, device: string, limit: number | undefined): void {
    const { sectionId, idstr } = ev.section;
    const where = { offset: ev.offset, sectionId, idstr };
    if (limit !== undefined && ev.size > Math.max(limit, RECORD_ALWAYS_ALLOWED)) {
      throw new StreamError('ESTREAM_LIMIT', `a DATA_STATE record of ${ev.size} bytes for ${idstr} is larger than device ${device}'s whole state (MIG_DATA_SIZE ${limit})`, where);
    }
    const seen = this.sections.get(sectionId);
    if (!seen) return;
    // Counted per section: a device's data is in its START section (PART/END share its id).
    seen.bytes += ev.size;
    if (seen.bytes > this.maxDeviceBytes) {
      throw new StreamError('ESTREAM_LIMIT', `${idstr} carries more than ${this.maxDeviceBytes} bytes of device data (the cap for one device)`, where);
    }
  }
}
