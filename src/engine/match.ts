// Which stream section restores onto which device, decided as sections appear (the
// stream is read once): --map IDSTR=DEVICE first, then a device whose own idstr is the
// section's, then the next device in command-line order that no rule reserves.
import { MigbridgeError } from '../errors.js';

export class MatchError extends MigbridgeError {}

export interface MatchDevice {
  /** How the user named it (for messages). */
  readonly name: string;
  /** The idstr it would be saved under, if known. */
  readonly idstr: string | null;
}

export class SectionMatcher {
  private readonly used = new Set<number>();
  private readonly assigned = new Map<string, number>();

  constructor(
    private readonly devices: readonly MatchDevice[],
    private readonly map: ReadonlyMap<string, number>,
  ) {
    for (const [idstr, index] of map) {
      if (!devices[index]) throw new MatchError('EMATCH', `--map ${idstr}: no device #${index}`, { section: idstr });
    }
  }

  /**
   * Device index for a section seen for the first time. Instances count: a second
   * instance of an idstr is another device (QEMU's instance_id), matched by position only
   * (--map and --idstr name instance 0).
   */
  assign(idstr: string, instanceId = 0, offset?: number): number {
    const at = offset !== undefined ? { offset } : {};
    const name = instanceId === 0 ? idstr : `${idstr} instance ${instanceId}`;
    const known = this.assigned.get(name);
    if (known !== undefined) throw new MatchError('EMATCH', `section ${name} appears twice`, { section: name, ...at });
    let index = instanceId === 0 ? this.map.get(idstr) : undefined;
    if (index === undefined) index = this.devices.findIndex((d, i) => instanceId === 0 && !this.used.has(i) && !this.reserved(i) && d.idstr === idstr);
    if (index < 0) index = this.devices.findIndex((_, i) => !this.used.has(i) && !this.reserved(i) && !this.claimedByIdstr(i));
    if (index < 0) index = this.devices.findIndex((_, i) => !this.used.has(i) && !this.reserved(i));
    if (index === undefined || index < 0) {
      throw new MatchError(
        'EMATCH',
        `no device left for section ${name}: ${this.devices.length} device(s) given, already matched ${[...this.assigned.keys()].join(', ') || 'none'}`,
        { section: name, ...at },
      );
    }
    if (this.used.has(index)) {
      throw new MatchError('EMATCH', `device ${this.devices[index]!.name} is matched twice (section ${name})`, { section: name, ...at });
    }
    this.used.add(index);
    this.assigned.set(name, index);
    return index;
  }

  private reserved(i: number): boolean {
    for (const [idstr, index] of this.map) if (index === i && !this.assigned.has(idstr)) return true;
    return false;
  }

  /** A device whose own idstr is set may still be claimed by a later section of that name. */
  private claimedByIdstr(i: number): boolean {
    const own = this.devices[i]!.idstr;
    return own !== null && !this.assigned.has(own);
  }

  /** Every device must have received a section; `offset` is where the stream ended. */
  finish(offset?: number): void {
    const idle = this.devices.filter((_, i) => !this.used.has(i)).map((d) => d.name);
    if (idle.length) {
      throw new MatchError('EMATCH', `the stream has no VFIO section for device(s) ${idle.join(', ')} (stream ended at offset ${offset ?? 'unknown'})`, offset !== undefined ? { offset } : {});
    }
  }

  get matches(): ReadonlyMap<string, number> {
    return this.assigned;
  }
}
