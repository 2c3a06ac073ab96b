// Which device each VFIO event of a resume stream belongs to: sections are matched to
// devices as they appear (SectionMatcher) and every structural check (ResumeStreamCheck)
// runs on the way. Used twice on a file: a dry run over the whole stream before any device
// is touched (restore's preflight), then the restore itself.
import type { StreamEvent } from '../qemu/index.js';
import { StreamError } from '../qemu/index.js';
import { type MatchDevice, SectionMatcher } from './match.js';
import { ResumeStreamCheck } from './resume-check.js';

export class ResumeRouter {
  private readonly check: ResumeStreamCheck;
  private readonly matcher: SectionMatcher;
  private readonly bySection = new Map<number, number>();
  /** Offset of the last event routed (for errors about what the stream lacked). */
  offset = 0;

  constructor(
    private readonly devices: readonly MatchDevice[],
    map: ReadonlyMap<string, number>,
    /** Per device: MIG_DATA_SIZE when it reports one (no DATA_STATE record may be larger). */
    private readonly limits: readonly (number | undefined)[],
    maxDeviceBytes?: number,
  ) {
    this.check = new ResumeStreamCheck(maxDeviceBytes);
    this.matcher = new SectionMatcher(devices, map);
  }

  /**
   * The device index a `vfio-data-chunk` goes to (undefined for every other event, and for
   * sections that are not VFIO). `onMatch` hears of each device section matched. Throws
   * a StreamError/MatchError naming section and offset on hostile structure.
   */
  route(ev: StreamEvent, onMatch?: (index: number, idstr: string) => void): number | undefined {
    this.offset = ev.offset;
    // QEMU 10's multifd placeholder: the device's stop-copy data went over multifd channels, not in here.
    if (ev.type === 'vfio-multifd-placeholder') {
      throw new StreamError('ESTREAM_UNSUPPORTED', `the state of ${ev.section.idstr} went over multifd channels, not in this stream: give the channel captures (restore -i FILE --multifd CH..., found by default as FILE.multifd-N)`, { offset: ev.offset, sectionId: ev.section.sectionId, idstr: ev.section.idstr, found: ev.marker });
    }
    if (ev.type === 'section' && ev.section.handler === 'vfio') {
      const first = this.check.section(ev);
      if (first === ev.section.sectionId) {
        const index = this.matcher.assign(ev.section.idstr, ev.section.instanceId, ev.offset);
        this.bySection.set(first, index);
        onMatch?.(index, ev.section.idstr);
      } else if (first !== undefined) this.bySection.set(ev.section.sectionId, this.bySection.get(first)!);
      return undefined;
    }
    if (ev.type === 'vfio-data') {
      const index = this.bySection.get(ev.section.sectionId);
      if (index !== undefined) this.check.data(ev, this.devices[index]!.name, this.limits[index]);
      return undefined;
    }
    return ev.type === 'vfio-data-chunk' ? this.bySection.get(ev.section.sectionId) : undefined;
  }

  /** The device a section was matched to. */
  deviceOf(sectionId: number): number | undefined {
    return this.bySection.get(sectionId);
  }

  /** The stream ended: every device must have had a section. */
  finish(): void {
    this.matcher.finish(this.offset);
  }
}
