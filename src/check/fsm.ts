// Group "fsm": the device's migration FSM against the kernel's table (src/fsm). Read-only:
// the migration flags and the state found at open. Destructive: every single arc of the
// table the flags allow (grouped by the state it enters), every request from every state
// (combination arcs, no-ops, and the requests that must fail with EINVAL, state unchanged),
// and, when an arc failed into ERROR, that only a reset leaves it.
import { errnoName } from '../errors.js';
import { ALL_STATES, EINVAL, FsmError, MigFlag, MigState, flagsName, nextStep, opensDataFd, reachableStates, stateName, transition, endsSession } from '../fsm/index.js';
import type { DataFd } from '../vfio/device.js';
import type { CheckContext } from './context.js';
import { type Probe, type SetOutcome, outcomeText, setText } from './probe.js';
import type { WhyTable } from './types.js';

const KNOWN_FLAGS = MigFlag.STOP_COPY | MigFlag.P2P | MigFlag.PRE_COPY;

export const FSM_WHY: WhyTable = {
  'migration flags': 'QEMU refuses to migrate a device without STOP_COPY and ignores bits it does not know',
  'GET never returns a data_fd': 'the uAPI returns a data_fd only from a SET that opens a session; one on a GET is an fd every caller that only asks the state would leak',
  'state at open': 'QEMU starts a migration assuming RUNNING; a device left in another state by its last user breaks the next VM',
  arcs: 'QEMU walks these arcs on every migration; a failing arc aborts it (into ERROR the device needs a reset)',
  requests: "QEMU's and the kernel's combination paths assume the kernel's table: a different answer or errno misleads the caller",
  'ERROR is left only by reset': 'recovery after a failed migration relies on VFIO_DEVICE_RESET bringing the device back',
};

function stateText(s: MigState | 'unreadable'): string {
  return s === 'unreadable' ? 'unreadable' : stateName(s);
}

/** Drives the device to `from` (for RESUMING: with its own stream written), or says why not. */
async function reachFrom(ctx: CheckContext, p: Probe, from: MigState): Promise<{ fd: DataFd | null } | { skip: string }> {
  let stream: Buffer | undefined;
  if (from === MigState.RESUMING) {
    const s = await ctx.stream(p);
    if (!s.ok) return { skip: `no stream to load into RESUMING: ${s.reason}` };
    stream = s.data;
  }
  const r = await p.reach(from);
  if (!r.ok || r.state !== from) return { skip: `could not reach ${stateName(from)}: SET RUNNING -> ${stateName(from)}: ${setText(r)}` };
  if (stream && r.fd) {
    const w = await p.write(r.fd, stream);
    if ('errno' in w) return { skip: `the device refused its own stream in RESUMING: write: ${outcomeText(w)} (see resume)` };
  }
  return { fd: r.fd };
}

/** True when the old session's fd behaves as ended: read gives 0 or an errno, write gives an errno. */
async function sessionEnded(p: Probe, fd: DataFd): Promise<{ ok: boolean; text: string }> {
  if (fd.direction === 'save') {
    const r = await p.read(fd, 4096);
    return { ok: 'errno' in r || r.n === 0, text: `read on the old data_fd: ${'errno' in r ? outcomeText(r) : r.n === 0 ? 'EOF' : `${r.n} bytes`}` };
  }
  const w = await p.write(fd, Buffer.from([0]));
  return { ok: 'errno' in w, text: `write on the old data_fd: ${outcomeText(w)}` };
}

interface ArcRecord {
  arc: string;
  outcome: string;
  ok: boolean | 'untested';
  errno?: number;
  state?: string;
}

export async function fsmReadOnly(ctx: CheckContext, p: Probe): Promise<void> {
  let flags: number | undefined;
  try {
    flags = await p.dev.migrationFlags();
  } catch (e) {
    ctx.result('fsm', p, 'migration flags', 'finding', 'GET VFIO_DEVICE_FEATURE_MIGRATION answers, with STOP_COPY set', `the GET failed: ${(e as Error).message}`, { ioctl: 'VFIO_DEVICE_FEATURE GET MIGRATION' });
    return;
  }
  const problems: string[] = [];
  if (!(flags & MigFlag.STOP_COPY)) problems.push('STOP_COPY is not set');
  if (flags & ~KNOWN_FLAGS) problems.push(`unknown bits 0x${(flags & ~KNOWN_FLAGS).toString(16)}`);
  ctx.result('fsm', p, 'migration flags', problems.length ? 'finding' : 'pass', 'STOP_COPY set, no bits beyond STOP_COPY|P2P|PRE_COPY', `${flagsName(flags)}${problems.length ? ': ' + problems.join(', ') : ''}`, {
    ioctl: 'VFIO_DEVICE_FEATURE GET MIGRATION',
    flags,
  });
  await getReturnsNoDataFd(ctx, p);
  const s = await p.state();
  ctx.result('fsm', p, 'state at open', s === MigState.RUNNING ? 'pass' : 'finding', 'RUNNING', s === 'unreadable' ? 'GET MIG_DEVICE_STATE failed' : stateName(s), {
    ioctl: 'VFIO_DEVICE_FEATURE GET MIG_DEVICE_STATE',
    state: stateText(s),
  });
}

/** A GET of MIG_DEVICE_STATE writes back data_fd = -1 (only a SET that opens a session returns an fd). */
async function getReturnsNoDataFd(ctx: CheckContext, p: Probe): Promise<void> {
  const item = 'GET never returns a data_fd';
  const expected = 'GET MIG_DEVICE_STATE answers data_fd = -1';
  if (!p.dev.stateAnswer) {
    ctx.result('fsm', p, item, 'n/a', expected, `the ${p.dev.kind} backend answers GET without the ioctl's bytes`);
    return;
  }
  let answer: { state: number; dataFd: number };
  try {
    answer = await p.dev.stateAnswer();
  } catch (e) {
    ctx.result('fsm', p, item, 'finding', expected, `the GET failed: ${(e as Error).message}`, { ioctl: 'VFIO_DEVICE_FEATURE GET MIG_DEVICE_STATE' });
    return;
  }
  ctx.result('fsm', p, item, answer.dataFd === -1 ? 'pass' : 'finding', expected, `data_fd ${answer.dataFd}, state ${answer.state}`, {
    ioctl: 'VFIO_DEVICE_FEATURE GET MIG_DEVICE_STATE',
    dataFd: answer.dataFd,
    state: String(answer.state),
  });
}

export async function fsmDestructive(ctx: CheckContext, p: Probe): Promise<void> {
  const flags = await p.dev.migrationFlags();
  const states = reachableStates(flags);
  // Single arcs of the kernel's table: the first step of every supported request.
  const arcs = new Map<string, [MigState, MigState]>();
  for (const from of states) for (const to of states) if (from !== to) {
    try {
      const next = nextStep(flags, from, to);
      arcs.set(`${from}>${next}`, [from, next]);
    } catch (e) {
      if (!(e instanceof FsmError)) throw e; // a refused request: checked under "requests from"
    }
  }
  const byTarget = new Map<MigState, ArcRecord[]>();
  const failedArcs = new Set<string>();
  let intoError: [MigState, MigState] | undefined;
  for (const [from, to] of arcs.values()) {
    ctx.checkInterrupted();
    const rec = await checkArc(ctx, p, from, to);
    if (rec.ok === false) {
      failedArcs.add(`${from}>${to}`);
      if (rec.state === 'ERROR') intoError ??= [from, to];
    }
    byTarget.set(to, [...(byTarget.get(to) ?? []), rec]);
    await p.reset();
  }
  for (const [to, recs] of [...byTarget.entries()].sort((a, b) => a[0] - b[0])) {
    const bad = recs.filter((r) => r.ok === false);
    const tested = recs.filter((r) => r.ok !== 'untested');
    const status = bad.length ? 'finding' : tested.length ? 'pass' : 'n/a';
    const observed = bad.length ? bad.map((r) => `${r.arc}: ${r.outcome}`).join('; ') : tested.length ? `${tested.length} of ${recs.length} arcs as expected${tested.length < recs.length ? ' (others not reached)' : ''}` : `no arc into ${stateName(to)} could be tried: ${recs[0]!.outcome}`;
    ctx.result('fsm', p, `arcs into ${stateName(to)}`, status, `each arc succeeds, ${stateName(to)} is read back, a data_fd exactly on STOP->STOP_COPY, STOP->RESUMING, RUNNING->PRE_COPY, RUNNING_P2P->PRE_COPY_P2P, the left session ends`, observed, {
      ioctl: 'VFIO_DEVICE_FEATURE SET MIG_DEVICE_STATE',
      arcs: recs,
    });
  }
  for (const from of states) {
    ctx.checkInterrupted();
    await checkRequests(ctx, p, flags, from, failedArcs);
  }
  if (!intoError) {
    ctx.result('fsm', p, 'ERROR is left only by reset', 'n/a', 'in ERROR: SET ERROR is a no-op, other SETs fail with EINVAL, reset gives RUNNING', 'no arc failed into ERROR (only a driver failure leads there)');
    return;
  }
  await checkError(ctx, p, intoError);
}

async function checkArc(ctx: CheckContext, p: Probe, from: MigState, to: MigState): Promise<ArcRecord> {
  const arc = `${stateName(from)} -> ${stateName(to)}`;
  const at = await reachFrom(ctx, p, from);
  if ('skip' in at) return { arc, outcome: at.skip, ok: 'untested' };
  const o = await p.set(to);
  const state = stateText(o.state);
  if (!o.ok) {
    if (from === MigState.RESUMING && o.state === MigState.RESUMING) {
      return { arc, outcome: `the exit from RESUMING refused the device's own stream: ${setText(o)} (see resume)`, ok: 'untested' };
    }
    return { arc, outcome: setText(o), ok: false, errno: o.errno, state };
  }
  const wantFd = opensDataFd(from, to);
  const problems: string[] = [];
  if (o.state !== to) problems.push(`state read back ${state}`);
  if ((o.fd !== null) !== wantFd) problems.push(wantFd ? 'no data_fd returned' : 'a data_fd was returned');
  if (at.fd && endsSession(from, to)) {
    const ended = await sessionEnded(p, at.fd);
    if (!ended.ok) problems.push(`the left session did not end (${ended.text})`);
  }
  return problems.length ? { arc, outcome: problems.join(', '), ok: false, state } : { arc, outcome: setText(o), ok: true, state };
}

async function checkRequests(ctx: CheckContext, p: Probe, flags: number, from: MigState, failedArcs: Set<string>): Promise<void> {
  const rows: ArcRecord[] = [];
  let unreachable: string | undefined;
  for (const to of [...ALL_STATES, 8]) {
    let expected: ReturnType<typeof transition> | FsmError;
    try {
      expected = transition(flags, from, to);
    } catch (e) {
      if (!(e instanceof FsmError)) throw e;
      expected = e;
    }
    const req = `${stateName(from)} -> ${stateName(to)}`;
    if (!(expected instanceof FsmError)) {
      let prev = from;
      const broken = expected.path.find((s) => {
        const bad = failedArcs.has(`${prev}>${s}`);
        prev = s;
        return bad;
      });
      if (broken !== undefined) {
        rows.push({ arc: req, outcome: `path ${[from, ...expected.path].map(stateName).join(' -> ')} has a failing arc (see arcs into ${stateName(broken)})`, ok: 'untested' });
        continue;
      }
    }
    const at = await reachFrom(ctx, p, from);
    if ('skip' in at) {
      unreachable = at.skip;
      break;
    }
    const o: SetOutcome = await p.set(to);
    let ok: boolean | 'untested';
    let outcome = setText(o);
    if (expected instanceof FsmError) {
      ok = !o.ok && o.errno === EINVAL && o.state === from;
      if (!ok) outcome = `expected EINVAL with ${stateName(from)} unchanged, got ${outcome}`;
    } else if (!o.ok && from === MigState.RESUMING && o.state === MigState.RESUMING) {
      ok = 'untested';
      outcome = `the exit from RESUMING refused the device's own stream: ${outcome} (see resume)`;
    } else {
      ok = o.ok && o.state === to && (o.fd !== null) === expected.dataFd;
      if (!ok) outcome = `expected path ${[from, ...expected.path].map(stateName).join(' -> ')}${expected.dataFd ? ' with a data_fd' : ''}, got ${outcome}`;
    }
    rows.push({ arc: req, outcome, ok, ...(!o.ok ? { errno: o.errno } : {}), state: stateText(o.state) });
    await p.reset();
  }
  const item = `requests from ${stateName(from)}`;
  const expectedText = 'every SET answers as the kernel table (src/fsm): the path taken, a data_fd where it opens a session, EINVAL with the state unchanged for refused requests';
  if (unreachable) {
    ctx.result('fsm', p, item, 'n/a', expectedText, unreachable, { arcs: rows });
    return;
  }
  const bad = rows.filter((r) => r.ok === false);
  const tested = rows.filter((r) => r.ok === true);
  ctx.result('fsm', p, item, bad.length ? 'finding' : tested.length ? 'pass' : 'n/a', expectedText, bad.length ? bad.map((r) => `${r.arc}: ${r.outcome}`).join('; ') : `${tested.length} of ${rows.length} requests as the kernel table${tested.length < rows.length ? ' (the others depend on a failing arc)' : ''}`, {
    ioctl: 'VFIO_DEVICE_FEATURE SET MIG_DEVICE_STATE',
    arcs: rows,
  });
}

async function checkError(ctx: CheckContext, p: Probe, [from, to]: [MigState, MigState]): Promise<void> {
  const steps: string[] = [];
  const problems: string[] = [];
  const at = await reachFrom(ctx, p, from);
  const into = 'skip' in at ? undefined : await p.set(to);
  if (!into || into.ok || into.state !== MigState.ERROR) {
    ctx.result('fsm', p, 'ERROR is left only by reset', 'n/a', 'in ERROR: SET ERROR is a no-op, other SETs fail with EINVAL, reset gives RUNNING', `the arc ${stateName(from)} -> ${stateName(to)} did not fail into ERROR a second time`);
    await p.reset();
    return;
  }
  steps.push(`SET ${stateName(to)}: ${setText(into)}`);
  const noop = await p.set(MigState.ERROR);
  steps.push(`SET ERROR: ${setText(noop)}`);
  if (!noop.ok || noop.fd) problems.push('SET ERROR in ERROR is not a no-op');
  const run = await p.set(MigState.RUNNING);
  steps.push(`SET RUNNING: ${setText(run)}`);
  if (run.ok || run.errno !== EINVAL || run.state !== MigState.ERROR) problems.push(`SET RUNNING in ERROR gave ${setText(run)}`);
  await p.reset();
  const after = await p.state();
  steps.push(`VFIO_DEVICE_RESET: state ${stateText(after)}`);
  if (after !== MigState.RUNNING) problems.push(`after reset: ${stateText(after)}`);
  ctx.result('fsm', p, 'ERROR is left only by reset', problems.length ? 'finding' : 'pass', 'in ERROR: SET ERROR is a no-op, other SETs fail with EINVAL, reset gives RUNNING', problems.length ? problems.join('; ') : `entered by the failing arc ${stateName(from)} -> ${stateName(to)} (${errnoName(into.errno)}), left by reset`, { steps });
}
