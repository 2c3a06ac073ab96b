// `migbridge fsm path` and `migbridge fsm table`: the kernel's answer for any request.
import { UsageError } from '../../errors.js';
import { ALL_STATES, FsmError, MigState, flagsName, parseFlags, parseState, stateName, transition } from '../../fsm/index.js';
import type { Command, ParsedCommandArgs } from '../command.js';

export type FsmAnswer = { path: string[]; dataFd: boolean; endsSession: boolean } | { errno: number; error: string };

/** The answer for one (from, to) request, as `fsm table` prints it. */
export function fsmAnswer(flags: number, from: number, to: number): FsmAnswer {
  try {
    const t = transition(flags, from, to);
    return { path: [stateName(from), ...t.path.map(stateName)], dataFd: t.dataFd, endsSession: t.endsSession };
  } catch (e) {
    if (e instanceof FsmError) return { errno: e.errno ?? 22, error: e.message };
    throw e;
  }
}

function flagsArg(args: ParsedCommandArgs): number {
  const raw = args.values.flags;
  if (typeof raw !== 'string') throw new UsageError('--flags is required (names stop-copy,p2p,pre-copy or a number)');
  try {
    return parseFlags(raw);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

function stateArg(args: ParsedCommandArgs, name: 'from' | 'to'): MigState {
  const raw = args.values[name];
  if (typeof raw !== 'string') throw new UsageError(`--${name} is required`);
  try {
    return parseState(raw);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

export const fsmPathCommand: Command = {
  name: ['fsm', 'path'],
  summary: 'Print the arcs the kernel walks for one VFIO_DEVICE_FEATURE SET (or its errno).',
  usage: 'fsm path --flags stop-copy,p2p,pre-copy --from STATE --to STATE',
  operands: [],
  options: { flags: { type: 'string' }, from: { type: 'string' }, to: { type: 'string' } },
  async run(args, io) {
    const flags = flagsArg(args);
    const from = stateArg(args, 'from');
    const to = stateArg(args, 'to');
    const answer = fsmAnswer(flags, from, to);
    io.result({ flags, from: stateName(from), to: stateName(to), ...answer }, () =>
      'path' in answer
        ? `${answer.path.join(' -> ')}${answer.dataFd ? '   (returns a new data_fd)' : ''}${answer.endsSession ? '   (ends the open data session)' : ''}`
        : `EINVAL (errno ${answer.errno}): ${answer.error}`,
    );
    return 'path' in answer ? 0 : 1;
  },
};

export const fsmTableCommand: Command = {
  name: ['fsm', 'table'],
  summary: 'Print the kernel answer for every (from, to) pair for a flag set.',
  usage: 'fsm table --flags stop-copy,pre-copy',
  operands: [],
  options: { flags: { type: 'string' } },
  async run(args, io) {
    const flags = flagsArg(args);
    const table: Record<string, Record<string, FsmAnswer>> = {};
    for (const from of ALL_STATES) {
      const row: Record<string, FsmAnswer> = {};
      for (const to of ALL_STATES) row[stateName(to)] = fsmAnswer(flags, from, to);
      table[stateName(from)] = row;
    }
    io.result(table, () => {
      const lines = [`migration flags ${flagsName(flags)}`];
      for (const [from, row] of Object.entries(table)) {
        for (const [to, a] of Object.entries(row)) {
          if (from === to) continue;
          lines.push(`${from.padEnd(12)} -> ${to.padEnd(12)}  ${'path' in a ? a.path.join(' -> ') + (a.dataFd ? '  [data_fd]' : '') : `EINVAL`}`);
        }
      }
      return lines.join('\n');
    });
    return 0;
  },
};
