// CLI entry: global flags, command dispatch, exit codes (0 ok, 1 failed, 2 usage).
import { parseArgs } from 'node:util';
import { MigbridgeError, UsageError } from '../errors.js';
import type { Command, CommandIO, OutputMode } from './command.js';
import { commands } from './commands/index.js';

function makeIO(output: OutputMode): CommandIO {
  return {
    output,
    isTTY: Boolean(process.stdout.isTTY),
    stdout: (text) => process.stdout.write(text.endsWith('\n') ? text : text + '\n'),
    stderr: (text) => process.stderr.write(text.endsWith('\n') ? text : text + '\n'),
    result(value, human) {
      if (output === 'json') process.stdout.write(JSON.stringify(value, jsonReplacer) + '\n');
      else {
        const text = human();
        if (text) process.stdout.write(text.endsWith('\n') ? text : text + '\n');
      }
    },
  };
}

/** BigInts print as numbers when safe, else as decimal strings. */
export function jsonReplacer(_key: string, value: unknown): unknown {
  if (typeof value === 'bigint') {
    return value <= BigInt(Number.MAX_SAFE_INTEGER) && value >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(value) : value.toString();
  }
  return value;
}

/** Longest command whose name words prefix argv. */
function findCommand(argv: string[]): { cmd: Command; rest: string[] } | undefined {
  let best: Command | undefined;
  for (const cmd of commands) {
    if (cmd.name.every((w, i) => argv[i] === w) && (!best || cmd.name.length > best.name.length)) best = cmd;
  }
  return best ? { cmd: best, rest: argv.slice(best.name.length) } : undefined;
}

export function helpText(): string {
  const lines = ['usage: migbridge <command> [options] [--output=human|json]', '', 'commands:'];
  for (const c of commands) lines.push(`  ${c.usage}`, `      ${c.summary}`);
  lines.push('', 'exit status: 0 success, 1 operation failed, 2 usage error');
  return lines.join('\n');
}

/** Splits the global --output flag out of argv (it may appear anywhere). */
function takeOutputFlag(argv: string[]): { output: OutputMode; rest: string[] } {
  let output: OutputMode = 'human';
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    let v: string | undefined;
    if (a.startsWith('--output=')) v = a.slice('--output='.length);
    else if (a === '--output') v = argv[++i];
    else {
      rest.push(a);
      continue;
    }
    if (v !== 'human' && v !== 'json') throw new UsageError(`--output must be human or json, got ${JSON.stringify(v)}`);
    output = v;
  }
  return { output, rest };
}

export async function main(argv: string[]): Promise<number> {
  // A reader that goes away (`migbridge inspect F | head`) is not an error of ours.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw e;
  });
  let io = makeIO('human');
  try {
    const { output, rest } = takeOutputFlag(argv);
    io = makeIO(output);
    if (rest.length === 0 || rest[0] === 'help' || rest[0] === '--help' || rest[0] === '-h') {
      io.stdout(helpText());
      return rest.length === 0 ? 2 : 0;
    }
    const found = findCommand(rest);
    if (!found) throw new UsageError(`unknown command: ${rest.join(' ')} (see migbridge help)`);
    const { cmd } = found;
    if (found.rest.includes('--help') || found.rest.includes('-h')) {
      io.stdout(`usage: migbridge ${cmd.usage}\n${cmd.summary}`);
      return 0;
    }
    let parsed;
    try {
      parsed = parseArgs({ args: found.rest, options: cmd.options, allowPositionals: true, strict: true });
    } catch (e) {
      throw new UsageError(`${(e as Error).message}\nusage: migbridge ${cmd.usage}`);
    }
    return await cmd.run(parsed, io);
  } catch (e) {
    return reportError(e, io);
  }
}

function reportError(e: unknown, io: CommandIO): number {
  const usage = e instanceof UsageError;
  if (io.output === 'json') {
    const body = e instanceof MigbridgeError ? e.toJSON() : { name: 'Error', message: String((e as Error)?.message ?? e) };
    process.stderr.write(JSON.stringify({ error: body }, jsonReplacer) + '\n');
  } else {
    const msg = e instanceof Error ? e.message : String(e);
    process.stderr.write(`migbridge: ${usage ? 'usage: ' : ''}${msg}\n`);
    if (!(e instanceof MigbridgeError) && e instanceof Error && e.stack && process.env.MIGBRIDGE_DEBUG) {
      process.stderr.write(e.stack + '\n');
    }
  }
  return usage ? 2 : 1;
}
