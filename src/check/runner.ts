// Runs `migbridge check`: opens the devices (refusing one in use), runs the selected
// groups in a fixed order (read-only items always, the others with `destructive`),
// checks after each destructive group that every device is back in RUNNING, and on any
// exit (done, error, interrupt) closes every data_fd and resets the devices it touched.
import { MigbridgeError, UsageError } from '../errors.js';
import { MigState, stateName } from '../fsm/index.js';
import { defaultEngine } from '../native/index.js';
import type { MigrationDevice } from '../vfio/device.js';
import { openDevice } from '../vfio/open.js';
import { CheckContext } from './context.js';
import { dataFdGroup } from './data-fd.js';
import { fsmDestructive, fsmReadOnly } from './fsm.js';
import { Probe } from './probe.js';
import { resumeGroup } from './resume.js';
import { sizesDestructive, sizesReadOnly } from './sizes.js';
import { timingGroup } from './timing.js';
import { CHECK_GROUPS, type CheckGroup, type CheckOptions, type CheckReport, type CheckResult, type CheckedDevice } from './types.js';

/** A device that is open elsewhere (its group or cdev busy): check refuses it rather than fight its user. */
export class DeviceInUseError extends MigbridgeError {
  constructor(spec: string, cause: MigbridgeError) {
    super('EBUSY', `device ${spec} is in use (open by another process or bound to a running VM); check refuses it: ${cause.message}`, { device: spec, errno: 16, cause });
  }
}

interface GroupPlan {
  readOnly?: (ctx: CheckContext, p: Probe) => Promise<void>;
  perDevice?: (ctx: CheckContext, p: Probe) => Promise<void>;
  all?: (ctx: CheckContext) => Promise<void>;
}

const PLAN: Record<CheckGroup, GroupPlan> = {
  fsm: { readOnly: fsmReadOnly, perDevice: fsmDestructive },
  data_fd: { perDevice: dataFdGroup },
  sizes: { readOnly: sizesReadOnly, perDevice: sizesDestructive },
  resume: { all: resumeGroup },
  timing: { perDevice: timingGroup },
};

async function openAll(specs: readonly string[], open: (spec: string) => Promise<MigrationDevice>): Promise<MigrationDevice[]> {
  const devs: MigrationDevice[] = [];
  try {
    for (const spec of specs) {
      try {
        devs.push(await open(spec));
      } catch (e) {
        if (e instanceof MigbridgeError && e.code === 'EBUSY') throw new DeviceInUseError(spec, e);
        throw e;
      }
    }
    return devs;
  } catch (e) {
    for (const d of devs) await d.close().catch(() => undefined);
    throw e;
  }
}

async function describe(spec: string, d: MigrationDevice): Promise<CheckedDevice> {
  const out: CheckedDevice = { spec, id: d.id, kind: d.kind };
  try {
    out.flags = await d.migrationFlags();
    out.state = stateName(await d.state());
  } catch {
    // reported by the read-only fsm items
  }
  return out;
}

export async function runCheck(o: CheckOptions): Promise<CheckReport> {
  if (o.devices.length === 0) throw new UsageError('check needs --device SPEC (and a second --device for the resume round trip)');
  if (o.devices.length > 2) throw new UsageError('check takes one or two devices (the second is the resume destination)');
  if (new Set(o.devices).size !== o.devices.length) throw new UsageError('the two --device specs name the same device');
  for (const g of o.only ?? []) if (!CHECK_GROUPS.includes(g)) throw new UsageError(`unknown group ${JSON.stringify(g)} (${CHECK_GROUPS.join(', ')})`);
  const open = o.open ?? ((spec: string) => openDevice(spec));
  const devs = await openAll(o.devices, open);
  const results: CheckResult[] = [];
  const devices = await Promise.all(devs.map((d, i) => describe(o.devices[i]!, d)));
  const probes = devs.map((d, i) => new Probe(d, o.devices[i]!, defaultEngine(), o.ioTimeoutMs ?? 10_000, o.maxStreamBytes ?? 256 * 1024 * 1024));
  const ctx = new CheckContext(
    probes,
    o.destructive,
    o.timingRepeats ?? 20,
    (r) => {
      results.push(r);
      o.onResult?.(r);
    },
    o.signal,
    async (p) => {
      if (p.dev.kind === 'sim') return undefined;
      await p.dev.close();
      return open(p.spec);
    },
  );
  let touched = false;
  try {
    for (const g of CHECK_GROUPS) {
      if (o.only && !o.only.includes(g)) continue;
      const plan = PLAN[g];
      if (plan.readOnly) for (const p of probes) await plan.readOnly(ctx, p);
      if (!o.destructive || (!plan.perDevice && !plan.all)) continue;
      touched = true;
      if (plan.perDevice) for (const p of probes) {
        await p.reset();
        await plan.perDevice(ctx, p);
      }
      if (plan.all) await plan.all(ctx);
      await backToRunning(ctx, g);
    }
  } finally {
    for (const p of probes) {
      await p.closeFds();
      if (touched) await p.dev.reset().catch(() => undefined);
      await p.dev.close().catch(() => undefined);
    }
  }
  return { devices, results, findings: results.filter((r) => r.status === 'finding').length };
}

/** After a destructive group every device must be RUNNING; a device that is not is reset, and a reset that fails to give RUNNING is a finding. */
async function backToRunning(ctx: CheckContext, g: CheckGroup): Promise<void> {
  for (const p of ctx.probes) {
    await p.closeFds();
    const s = await p.state();
    if (s === MigState.RUNNING) continue;
    await p.dev.reset().catch(() => undefined);
    const after = await p.state();
    if (after !== MigState.RUNNING) {
      ctx.result(g, p, 'device back in RUNNING', 'finding', 'VFIO_DEVICE_RESET after the group gives RUNNING', `found ${s === 'unreadable' ? 'unreadable' : stateName(s)} after the group, ${after === 'unreadable' ? 'unreadable' : stateName(after)} after a reset`, {
        ioctl: 'VFIO_DEVICE_RESET',
      });
    }
  }
}
