// Group "resume" (destructive): loading a state. The first device is the source of a
// STOP_COPY stream, the second the destination (one device serves as both when only one
// is given, and then the round trip is not applicable). A valid stream round trip, a
// truncated and a corrupted stream (refused by a write or by the exit from RESUMING),
// whether a device that refused a write still loads at the exit (mtty's hazard), reset
// from every state, and what the next user of the device finds after a quit in STOP or a
// failed load left in RESUMING.
import { MigState, reachableStates, stateName } from '../fsm/index.js';
import type { DataFd } from '../vfio/device.js';
import { type CheckContext, noStream } from './context.js';
import { ETIMEDOUT, type IoOutcome, type Probe, type SetOutcome, outcomeText, setText } from './probe.js';
import type { WhyTable } from './types.js';

export const RESUME_WHY: WhyTable = {
  'round trip': "a destination that does not take a valid stream, or takes it and saves other bytes, loses the guest's device state",
  'truncated stream refused': 'QEMU relies on the exit from RESUMING to catch a stream cut short; a device that accepts it runs with a partial state',
  'corrupted header refused': 'a corrupt or foreign stream must be refused by a write or the exit from RESUMING, else the device runs with garbage',
  'rejected bytes are not loaded': 'QEMU fails the migration when a write fails, but cleanup then leaves RESUMING: a device that loads the refused bytes there runs with a state nobody sent',
  'reset from every state': 'recovery after a failed migration is VFIO_DEVICE_RESET: it must give RUNNING from anywhere and end the data session',
  'next user after a source quit in STOP': 'a source whose manager exits without resetting it: the next VM starts with a stopped device unless open resets the migration state',
  'next user after a failed load': 'a destination left in RESUMING by a failed load breaks the next user, which expects RUNNING',
};

/** A write the device refused, and what the exit from RESUMING did after it. */
interface Refusal {
  where: string;
  write: string;
  exit: string;
  loaded: boolean;
}

async function load(p: Probe, stream: Buffer): Promise<{ at: SetOutcome; write?: IoOutcome; exit?: SetOutcome }> {
  const at = await p.reach(MigState.RESUMING);
  if (!at.ok || !at.fd) return { at };
  const write = await p.write(at.fd, stream);
  await at.fd.close(); // as QEMU: the fd is closed before the exit from RESUMING
  const exit = await p.set(MigState.RUNNING);
  return { at, write, exit };
}

export async function resumeGroup(ctx: CheckContext): Promise<void> {
  const src = ctx.probes[0]!;
  const dst = ctx.probes[1] ?? src;
  const s = await ctx.stream(src);
  const refusals: Refusal[] = [];
  const refused = (where: string, write: IoOutcome | undefined, exit: SetOutcome | undefined): boolean => {
    if (!write || !('errno' in write) || !exit) return false;
    refusals.push({ where, write: outcomeText(write), exit: setText(exit), loaded: exit.ok });
    return exit.ok;
  };

  if (!s.ok) {
    for (const item of ['round trip', 'truncated stream refused', 'corrupted header refused']) ctx.result('resume', dst, item, 'n/a', '', noStream(s), { source: src.id });
  } else {
    const stream = s.data;
    // Round trip onto the second device.
    const rt = 'round trip';
    const rtExpected = "the destination takes every byte, the exit from RESUMING succeeds, and it then saves the source's bytes";
    if (dst === src) ctx.result('resume', dst, rt, 'n/a', rtExpected, 'needs a second device (--device SPEC2)');
    else {
      const r = await load(dst, stream);
      if (!r.exit) ctx.result('resume', dst, rt, 'n/a', rtExpected, `SET RUNNING -> RESUMING: ${setText(r.at)}`);
      else if (refused(rt, r.write, r.exit)) ctx.result('resume', dst, rt, 'n/a', rtExpected, `write refused (${outcomeText(r.write!)}) yet the exit succeeded: see rejected bytes are not loaded`, { source: src.id });
      else if (!r.exit.ok || (r.write && 'errno' in r.write)) {
        ctx.result('resume', dst, rt, 'finding', rtExpected, `write of ${stream.length} bytes: ${outcomeText(r.write!)}; exit from RESUMING: ${setText(r.exit)}`, { source: src.id, bytes: stream.length, write: outcomeText(r.write!), exit: setText(r.exit) });
      } else {
        const again = await dst.capture();
        const same = again.ok && again.data.equals(stream);
        ctx.result('resume', dst, rt, same ? 'pass' : 'finding', rtExpected, !again.ok ? `loaded, but saving it again failed: ${again.reason}` : same ? `${stream.length} bytes loaded and saved back unchanged` : `loaded, but it saves ${again.data.length} different bytes`, {
          source: src.id,
          bytes: stream.length,
          exit: setText(r.exit),
        });
      }
      await dst.reset();
    }

    // A stream one byte short.
    const tr = 'truncated stream refused';
    const trExpected = 'the exit from RESUMING fails (EINVAL) and the device stays in RESUMING (or ERROR); a reset recovers it';
    const t = await load(dst, stream.subarray(0, stream.length - 1));
    if (!t.exit) ctx.result('resume', dst, tr, 'n/a', trExpected, `SET RUNNING -> RESUMING: ${setText(t.at)}`);
    else if (refused(tr, t.write, t.exit)) ctx.result('resume', dst, tr, 'n/a', trExpected, `write refused (${outcomeText(t.write!)}) yet the exit succeeded: see rejected bytes are not loaded`);
    else {
      const ok = !t.exit.ok && (t.exit.state === MigState.RESUMING || t.exit.state === MigState.ERROR);
      ctx.result('resume', dst, tr, ok ? 'pass' : 'finding', trExpected, `write of ${stream.length - 1} of ${stream.length} bytes: ${outcomeText(t.write!)}; exit: ${setText(t.exit)}`, { bytes: stream.length - 1, write: outcomeText(t.write!), exit: setText(t.exit) });
    }
    await dst.reset();

    // The stream with its first byte flipped.
    const cr = 'corrupted header refused';
    const crExpected = 'the write or the exit from RESUMING fails';
    const bad = Buffer.from(stream);
    bad[0] = bad[0]! ^ 0xff;
    const c = await load(dst, bad);
    if (!c.exit) ctx.result('resume', dst, cr, 'n/a', crExpected, `SET RUNNING -> RESUMING: ${setText(c.at)}`);
    else {
      refused(cr, c.write, c.exit);
      const ok = ('errno' in c.write! && c.write.errno !== ETIMEDOUT) || !c.exit.ok;
      ctx.result('resume', dst, cr, ok ? 'pass' : 'finding', crExpected, `write: ${outcomeText(c.write!)}; exit: ${setText(c.exit)}`, { flippedByte: 0, write: outcomeText(c.write!), exit: setText(c.exit) });
    }
    await dst.reset();
  }

  const hz = 'rejected bytes are not loaded';
  const hzExpected = 'after a write on the resuming data_fd failed, the exit from RESUMING fails too (nothing the device refused is loaded)';
  const loaded = refusals.filter((r) => r.loaded);
  ctx.result('resume', dst, hz, loaded.length ? 'finding' : refusals.length ? 'pass' : 'n/a', hzExpected, loaded.length
    ? loaded.map((r) => `${r.where}: write ${r.write}, then the exit from RESUMING succeeded (${r.exit}): the refused bytes were loaded`).join('; ')
    : refusals.length ? `${refusals.length} refused writes, the exit failed after each` : 'no write was refused (the device checks the data at the exit)', { refusals });

  await resetEverywhere(ctx, dst);
  await nextUser(ctx, src, 'next user after a source quit in STOP', async () => {
    const r = await src.reach(MigState.STOP);
    return r.ok && r.state === MigState.STOP ? undefined : `SET RUNNING -> STOP: ${setText(r)}`;
  });
  await nextUser(ctx, dst, 'next user after a failed load', async () => {
    const r = await dst.reach(MigState.RESUMING);
    if (!r.ok || !r.fd) return `SET RUNNING -> RESUMING: ${setText(r)}`;
    const exit = await dst.set(MigState.RUNNING); // nothing written: the load fails
    return !exit.ok && exit.state === MigState.RESUMING ? undefined : `the empty load did not leave the device in RESUMING: ${setText(exit)}`;
  });
}

async function resetEverywhere(ctx: CheckContext, p: Probe): Promise<void> {
  const rows: string[] = [];
  let bad = 0;
  for (const s of reachableStates(await p.dev.migrationFlags())) {
    const r = await p.reach(s);
    if (!r.ok || r.state !== s) {
      rows.push(`${stateName(s)}: not reached (${setText(r)})`);
      continue;
    }
    const fd: DataFd | null = r.fd;
    await p.dev.reset();
    const after = await p.state();
    let ended = '';
    if (fd) {
      const o = fd.direction === 'save' ? await p.read(fd, 4096) : await p.write(fd, Buffer.from([0]));
      const ok = 'errno' in o ? o.errno !== ETIMEDOUT : fd.direction === 'save' && o.n === 0;
      ended = `, the data_fd then gives ${'errno' in o ? outcomeText(o) : o.n === 0 ? 'EOF' : `${o.n} bytes`}`;
      if (!ok) bad++;
    }
    if (after !== MigState.RUNNING) bad++;
    rows.push(`${stateName(s)}: reset -> ${after === 'unreadable' ? 'state unreadable' : stateName(after)}${ended}`);
    await p.reset();
  }
  const tried = rows.filter((r) => !r.includes('not reached')).length;
  ctx.result('resume', p, 'reset from every state', bad ? 'finding' : tried ? 'pass' : 'n/a', 'VFIO_DEVICE_RESET gives RUNNING from every state and ends the open data session (EOF or an error)', bad ? rows.filter((r) => !/-> RUNNING(,|$)/.test(r) || /bytes$/.test(r)).join('; ') : `from ${tried} states: RUNNING, sessions ended`, { ioctl: 'VFIO_DEVICE_RESET', states: rows });
}

async function nextUser(ctx: CheckContext, p: Probe, item: string, leave: () => Promise<string | undefined>): Promise<void> {
  const expected = 'a device opened again after its user closed it is in RUNNING';
  const notLeft = await leave();
  if (notLeft) {
    ctx.result('resume', p, item, 'n/a', expected, notLeft);
    await p.reset();
    return;
  }
  const left = await p.state();
  await p.closeFds();
  const dev = await ctx.reopen(p);
  if (!dev) {
    ctx.result('resume', p, item, 'n/a', expected, 'a simulated device does not outlive its handle (nothing to reopen)');
    await p.reset();
    return;
  }
  p.dev = dev;
  const found = await p.state();
  ctx.result('resume', p, item, found === MigState.RUNNING ? 'pass' : 'finding', expected, `closed in ${left === 'unreadable' ? '?' : stateName(left)}, reopened: ${found === 'unreadable' ? 'state unreadable' : stateName(found)}`, {
    ioctl: 'close, open, VFIO_DEVICE_FEATURE GET MIG_DEVICE_STATE',
    closedIn: left === 'unreadable' ? 'unreadable' : stateName(left),
    foundAtOpen: found === 'unreadable' ? 'unreadable' : stateName(found),
  });
  await p.reset();
}
