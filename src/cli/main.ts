// CLI entry: global flags, command dispatch, exit codes (0 ok, 1 failed, 2 usage).
import { readFileSync } from 'node:fs';
import { errorJSON, MigbridgeError, UsageError } from '../errors.js';
import type { Command, CommandIO, OutputMode } from './command.js';
import { commands } from './commands/index.js';
import { commandHelp, parseCommandArgs, SEVERAL_VALUES_NOTE } from './parse.js';
import { onStalePartialRemoved } from '../util/atomic-file.js';

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
  lines.push('', SEVERAL_VALUES_NOTE, 'migbridge --version prints the version', '', 'exit status: 0 success, 1 operation failed, 2 usage error');
  return lines.join('\n');
}

/** The package's version, from the package.json shipped beside dist/. */
export function versionText(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { name: string; version: string };
  return `${pkg.name} ${pkg.version}`;
}

/** Commands under a group word (`fsm` -> fsm path, fsm table); empty when `word` is no group. */
function commandsUnder(word: string): Command[] {
  return commands.filter((c) => c.name.length > 1 && c.name[0] === word);
}

function groupHelp(group: readonly Command[]): string {
  return group.map(commandHelp).join('\n\n');
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
    const noteIO = io;
    onStalePartialRemoved((r) => noteIO.stderr(
      noteIO.output === 'json'
        ? JSON.stringify({ note: { type: 'stale-partial-removed', path: r.path, bytes: r.bytes, output: r.output } })
        : `migbridge: removed ${r.path} (${r.bytes} bytes), the unfinished output of an interrupted run`,
    ));
    if (rest.length === 0 || rest[0] === 'help' || rest[0] === '--help' || rest[0] === '-h') {
      io.stdout(helpText());
      return rest.length === 0 ? 2 : 0;
    }
    if (rest[0] === '--version' || rest[0] === '-V') {
      if (rest.length > 1) throw new UsageError(`--version takes no arguments, got ${JSON.stringify(rest[1])}`);
      io.result({ version: versionText().split(' ')[1] }, versionText);
      return 0;
    }
    const found = findCommand(rest);
    const wantsHelp = rest.includes('--help') || rest.includes('-h');
    if (!found) {
      // `migbridge fsm`: a group word without its subcommand prints the group's help.
      const group = commandsUnder(rest[0]!);
      if (group.length === 0) throw new UsageError(`unknown command: ${rest.join(' ')} (see migbridge help)`);
      if (wantsHelp) {
        io.stdout(groupHelp(group));
        return 0;
      }
      const names = group.map((c) => c.name.slice(1).join(' ')).join(' or ');
      const given = rest[1] === undefined ? '' : `, got ${JSON.stringify(rest[1])}`;
      throw new UsageError(`${rest[0]} needs a subcommand (${names})${given}\n${groupHelp(group)}`);
    }
    const { cmd } = found;
    if (wantsHelp) {
      io.stdout(commandHelp(cmd));
      return 0;
    }
    return await cmd.run(parseCommandArgs(cmd, found.rest), io);
  } catch (e) {
    return reportError(e, io);
  }
}

function reportError(e: unknown, io: CommandIO): number {
  const usage = e instanceof UsageError;
  if (io.output === 'json') {
    process.stderr.write(JSON.stringify({ error: errorJSON(e) }, jsonReplacer) + '\n');
  } else {
    let msg = e instanceof Error ? e.message : String(e);
    // A typed error that knows its file but does not say it: name the file first.
    if (e instanceof MigbridgeError && e.path !== undefined && !msg.includes(e.path)) msg = `${e.path}: ${msg}`;
    process.stderr.write(`migbridge: ${usage ? 'usage: ' : ''}${msg}\n`);
    if (!(e instanceof MigbridgeError) && e instanceof Error && e.stack && process.env.MIGBRIDGE_DEBUG) {
      process.stderr.write(e.stack + '\n');
    }
  }
  return usage ? 2 : 1;
}
