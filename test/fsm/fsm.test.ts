// The FSM against (1) properties that follow from the uAPI spec, exhaustively over every
// flag set, current and target state, and (2) the combination list in the kernel's
// vfio.h comment, written out here by hand.
import test from 'ava';
import {
  ALL_STATES, FsmError, MigFlag, MigState, destinationPlan, isSavingState, nextStep, opensDataFd, path,
  planStep, sourcePlan, stateName, supportsState, transition,
} from '../../src/fsm/index.js';

const { ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P } = MigState;
const S = (...names: MigState[]) => names;

/** The single arcs a driver implements (docs/vfio-migration.md §4), by flag set. */
function legalArcs(flags: number): Set<string> {
  const arcs: [MigState, MigState][] = [];
  if (!(flags & MigFlag.STOP_COPY)) return new Set();
  arcs.push([STOP, STOP_COPY], [STOP_COPY, STOP], [STOP, RESUMING], [RESUMING, STOP]);
  const p2p = (flags & MigFlag.P2P) !== 0;
  const pre = (flags & MigFlag.PRE_COPY) !== 0;
  if (!p2p) arcs.push([RUNNING, STOP], [STOP, RUNNING]);
  else arcs.push([RUNNING, RUNNING_P2P], [RUNNING_P2P, RUNNING], [RUNNING_P2P, STOP], [STOP, RUNNING_P2P]);
  if (pre && !p2p) arcs.push([RUNNING, PRE_COPY], [PRE_COPY, RUNNING], [PRE_COPY, STOP_COPY]);
  if (pre && p2p) {
    arcs.push(
      [RUNNING, PRE_COPY], [RUNNING_P2P, PRE_COPY_P2P], [PRE_COPY, RUNNING], [PRE_COPY_P2P, RUNNING_P2P],
      [PRE_COPY, PRE_COPY_P2P], [PRE_COPY_P2P, PRE_COPY], [PRE_COPY_P2P, STOP_COPY],
    );
  }
  return new Set(arcs.map(([a, b]) => `${a}>${b}`));
}

/**
 * Shortest legal path length where saving-group states appear inside the path only while
 * continuing the session the request started in (docs/vfio-migration.md §4), or -1.
 */
function shortestLegal(flags: number, from: MigState, to: MigState): number {
  const arcs = legalArcs(flags);
  // BFS over (state, stillInStartingSession)
  const start = { s: from, cont: isSavingState(from), d: 0 };
  const seen = new Set([`${from}:${start.cont}`]);
  const queue = [start];
  while (queue.length) {
    const { s, cont, d } = queue.shift()!;
    if (s === to) return d;
    for (const next of ALL_STATES) {
      if (!arcs.has(`${s}>${next}`)) continue;
      const nextCont = cont && isSavingState(next);
      // A saving state in the interior is only allowed while continuing the starting session.
      if (isSavingState(next) && !nextCont && next !== to) continue;
      const key = `${next}:${nextCont}`;
      if (seen.has(key)) continue;
      seen.add(key);
      queue.push({ s: next, cont: nextCont, d: d + 1 });
    }
  }
  return -1;
}

test('cur == target is a no-op for every flag set and state, even ERROR and unsupported states', (t) => {
  for (let flags = 0; flags < 8; flags++) {
    for (const s of ALL_STATES) t.deepEqual(path(flags, s, s), [], `flags ${flags} ${stateName(s)}`);
  }
});

test('targets out of range give EINVAL', (t) => {
  for (let flags = 0; flags < 8; flags++) {
    for (const s of ALL_STATES) {
      for (const bad of [8, 9, 99, -1, 0xffffffff]) {
        const e = t.throws(() => nextStep(flags, s, bad), { instanceOf: FsmError });
        t.is(e?.errno, 22);
      }
    }
  }
});

test('flag sets without STOP_COPY reach nothing', (t) => {
  for (const flags of [0, 2, 4, 6]) {
    for (const from of ALL_STATES) {
      for (const to of ALL_STATES) {
        if (from === to) continue;
        t.throws(() => path(flags, from, to), { instanceOf: FsmError, message: /not supported/ });
      }
    }
  }
});

test('ERROR is never a legal target and is only left by reset', (t) => {
  for (let flags = 0; flags < 8; flags++) {
    for (const from of ALL_STATES) {
      if (from !== ERROR) t.throws(() => path(flags, from, ERROR), { instanceOf: FsmError });
      for (const to of ALL_STATES) if (to !== ERROR) t.throws(() => path(flags, ERROR, to), { instanceOf: FsmError });
    }
  }
});

test('STOP_COPY -> PRE_COPY and PRE_COPY_P2P are EINVAL (never a loop)', (t) => {
  for (const flags of [5, 7]) {
    for (const to of [PRE_COPY, PRE_COPY_P2P]) {
      if (!supportsState(flags, to)) continue;
      const e = t.throws(() => nextStep(flags, STOP_COPY, to), { instanceOf: FsmError });
      t.is(e?.errno, 22);
    }
  }
});

test('every answer over all flags x states x states follows the spec', (t) => {
  let checked = 0;
  for (let flags = 0; flags < 8; flags++) {
    const arcs = legalArcs(flags);
    for (const from of ALL_STATES) {
      for (const to of ALL_STATES) {
        if (from === to) continue;
        const blocked = from === STOP_COPY && (to === PRE_COPY || to === PRE_COPY_P2P);
        const valid = supportsState(flags, from) && supportsState(flags, to) && !blocked;
        const where = `flags ${flags}: ${stateName(from)} -> ${stateName(to)}`;
        if (!valid) {
          t.throws(() => path(flags, from, to), { instanceOf: FsmError }, where);
          continue;
        }
        const p = path(flags, from, to);
        t.is(p[p.length - 1], to, where);
        // every step is an arc the driver implements for these flags
        let prev = from;
        for (const s of p) {
          t.true(arcs.has(`${prev}>${s}`), `${where}: illegal arc ${stateName(prev)} -> ${stateName(s)}`);
          prev = s;
        }
        // saving-group interior states only while continuing the starting session
        let cont = isSavingState(from);
        for (const s of p.slice(0, -1)) {
          cont = cont && isSavingState(s);
          if (isSavingState(s)) t.true(cont, `${where}: crosses into the saving group at ${stateName(s)}`);
        }
        // shortest
        t.is(p.length, shortestLegal(flags, from, to), `${where}: not shortest`);
        // a data_fd exactly when the last arc opens a session, never on an interior step
        const tr = transition(flags, from, to);
        const last = p.length > 1 ? p[p.length - 2]! : from;
        t.is(tr.dataFd, opensDataFd(last, to), where);
        let at = from;
        for (const s of p.slice(0, -1)) {
          t.false(opensDataFd(at, s), `${where}: opens a data_fd on an interior arc`);
          at = s;
        }
        checked++;
      }
    }
  }
  // 4, 5, 5 and 7 supported states; minus STOP_COPY -> PRE_COPY (0x5) and -> PRE_COPY* (0x7)
  t.is(checked, 4 * 3 + 5 * 4 + (5 * 4 - 1) + (7 * 6 - 2), 'number of valid (from, to) pairs over flags 1,3,5,7');
});

// The combination transitions listed in include/uapi/linux/vfio.h (6.12) for flags 0x7.
const KERNEL_COMBINATIONS: MigState[][] = [
  S(PRE_COPY, PRE_COPY_P2P, STOP_COPY),
  S(PRE_COPY, RUNNING, RUNNING_P2P),
  S(PRE_COPY, RUNNING, RUNNING_P2P, STOP),
  S(PRE_COPY, RUNNING, RUNNING_P2P, STOP, RESUMING),
  S(PRE_COPY_P2P, RUNNING_P2P, RUNNING),
  S(PRE_COPY_P2P, RUNNING_P2P, STOP),
  S(PRE_COPY_P2P, RUNNING_P2P, STOP, RESUMING),
  S(RESUMING, STOP, RUNNING_P2P),
  S(RESUMING, STOP, RUNNING_P2P, PRE_COPY_P2P),
  S(RESUMING, STOP, RUNNING_P2P, RUNNING),
  S(RESUMING, STOP, RUNNING_P2P, RUNNING, PRE_COPY),
  S(RESUMING, STOP, STOP_COPY),
  S(RUNNING, RUNNING_P2P, PRE_COPY_P2P),
  S(RUNNING, RUNNING_P2P, STOP),
  S(RUNNING, RUNNING_P2P, STOP, RESUMING),
  S(RUNNING, RUNNING_P2P, STOP, STOP_COPY),
  S(RUNNING_P2P, RUNNING, PRE_COPY),
  S(RUNNING_P2P, STOP, RESUMING),
  S(RUNNING_P2P, STOP, STOP_COPY),
  S(STOP, RUNNING_P2P, PRE_COPY_P2P),
  S(STOP, RUNNING_P2P, RUNNING),
  S(STOP, RUNNING_P2P, RUNNING, PRE_COPY),
  S(STOP_COPY, STOP, RESUMING),
  S(STOP_COPY, STOP, RUNNING_P2P),
  S(STOP_COPY, STOP, RUNNING_P2P, RUNNING),
];

test('the 25 combination transitions of the kernel comment (flags 0x7)', (t) => {
  t.is(KERNEL_COMBINATIONS.length, 25);
  for (const combo of KERNEL_COMBINATIONS) {
    const [from, ...rest] = combo;
    t.deepEqual(path(7, from!, rest[rest.length - 1]!), rest, combo.map(stateName).join(' -> '));
  }
});

test('without P2P the P2P states drop out (flags 0x5)', (t) => {
  t.deepEqual(path(5, RUNNING, STOP_COPY), [STOP, STOP_COPY]);
  t.deepEqual(path(5, PRE_COPY, STOP_COPY), [STOP_COPY]);
  t.deepEqual(path(5, RESUMING, RUNNING), [STOP, RUNNING]);
  t.deepEqual(path(5, STOP, PRE_COPY), [RUNNING, PRE_COPY]);
  t.throws(() => path(5, RUNNING, RUNNING_P2P), { instanceOf: FsmError });
  t.throws(() => path(5, RUNNING, PRE_COPY_P2P), { instanceOf: FsmError });
});

test('STOP_COPY only (flags 0x1) and with P2P (0x3)', (t) => {
  t.deepEqual(path(1, RUNNING, STOP_COPY), [STOP, STOP_COPY]);
  t.deepEqual(path(1, STOP_COPY, RUNNING), [STOP, RUNNING]);
  t.deepEqual(path(1, RUNNING, RESUMING), [STOP, RESUMING]);
  t.throws(() => path(1, RUNNING, PRE_COPY), { instanceOf: FsmError });
  t.deepEqual(path(3, RUNNING, STOP_COPY), [RUNNING_P2P, STOP, STOP_COPY]);
  t.deepEqual(path(3, RESUMING, RUNNING), [STOP, RUNNING_P2P, RUNNING]);
});

test('only the four opening arcs return a data_fd', (t) => {
  t.true(transition(7, RUNNING, PRE_COPY).dataFd);
  t.true(transition(7, RUNNING_P2P, PRE_COPY_P2P).dataFd);
  t.true(transition(7, STOP, STOP_COPY).dataFd);
  t.true(transition(7, STOP, RESUMING).dataFd);
  t.true(transition(7, RUNNING, STOP_COPY).dataFd);
  t.true(transition(7, STOP_COPY, RESUMING).dataFd);
  t.false(transition(7, PRE_COPY, STOP_COPY).dataFd, 'same session continues');
  t.false(transition(7, PRE_COPY, PRE_COPY_P2P).dataFd);
  t.false(transition(7, RESUMING, RUNNING).dataFd);
  t.true(transition(7, STOP_COPY, RESUMING).endsSession);
  t.true(transition(7, RESUMING, STOP).endsSession);
  t.false(transition(7, PRE_COPY, STOP_COPY).endsSession);
});

test('QEMU source and destination plans adapt to the flags', (t) => {
  const names = (steps: readonly { to: number }[]) => steps.map((s) => stateName(s.to));
  t.deepEqual(names(sourcePlan(7)), ['PRE_COPY', 'PRE_COPY_P2P', 'STOP_COPY', 'STOP']);
  t.deepEqual(names(sourcePlan(7, { precopy: false })), ['RUNNING_P2P', 'STOP', 'STOP_COPY', 'STOP']);
  t.deepEqual(names(sourcePlan(5)), ['PRE_COPY', 'STOP_COPY', 'STOP']);
  t.deepEqual(names(sourcePlan(3)), ['RUNNING_P2P', 'STOP', 'STOP_COPY', 'STOP']);
  t.deepEqual(names(sourcePlan(1)), ['STOP', 'STOP_COPY', 'STOP']);
  t.deepEqual(sourcePlan(7).map((s) => s.dataFd), [true, false, false, false]);
  t.deepEqual(sourcePlan(1).map((s) => s.dataFd), [false, true, false]);
  t.deepEqual(names(destinationPlan(7)), ['RESUMING', 'RUNNING_P2P', 'RUNNING']);
  t.deepEqual(destinationPlan(7)[0]!.path, [RUNNING_P2P, STOP, RESUMING]);
  t.deepEqual(destinationPlan(7)[1]!.path, [STOP, RUNNING_P2P]);
  t.deepEqual(names(destinationPlan(1)), ['RESUMING', 'RUNNING']);
  t.deepEqual(destinationPlan(1)[1]!.path, [STOP, RUNNING]);
});

test('plan options: P2P left out for a mixed migration, resume ends RUNNING, stopFirst validates before any start', (t) => {
  const names = (steps: readonly { to: number }[]) => steps.map((s) => stateName(s.to));
  t.deepEqual(names(sourcePlan(7, { p2p: false })), ['PRE_COPY', 'STOP_COPY', 'STOP']);
  t.deepEqual(names(sourcePlan(3, { p2p: false })), ['STOP', 'STOP_COPY', 'STOP']);
  const resumed = sourcePlan(1, { resume: true });
  t.deepEqual(names(resumed), ['STOP', 'STOP_COPY', 'RUNNING']);
  t.true(resumed[2]!.endsSession);
  t.deepEqual(resumed[2]!.path, [STOP, RUNNING]);
  t.deepEqual(sourcePlan(1).map((s) => s.phase), ['vm_stop', 'save_complete_precopy', 'save_cleanup']);
  const dest = destinationPlan(3, { stopFirst: true });
  t.deepEqual(names(dest), ['RESUMING', 'STOP', 'RUNNING_P2P', 'RUNNING']);
  t.deepEqual(dest.map((s) => s.dataFd), [true, false, false, false]);
  t.true(dest[1]!.endsSession);
  t.deepEqual(names(destinationPlan(3, { stopFirst: true, p2p: false })), ['RESUMING', 'STOP', 'RUNNING']);
  t.is(planStep(dest, 'vm_start_prepare')!.to, RUNNING_P2P);
  t.is(planStep(destinationPlan(1), 'vm_start_prepare'), undefined);
});
