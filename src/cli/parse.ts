// The one argument parser every command goes through: options declared by the
// command (node:util parseArgs underneath), several-valued options taken either
// as `--device A B` or as `--device A --device B`, and the operand count checked
// against the command's declared operands, so no command can drop a value.
import { parseArgs } from 'node:util';
import { UsageError } from '../errors.js';
import type { Command, OptionSpec, ParsedCommandArgs } from './command.js';

/** `usage: migbridge CMD ...` and the sentence on several-valued options. */
export function commandHelp(cmd: Command): string {
  return `usage: migbridge ${cmd.usage}\n${cmd.summary}${hasSeveralValued(cmd.options) ? `\n${SEVERAL_VALUES_NOTE}` : ''}`;
}

export const SEVERAL_VALUES_NOTE =
  'options shown with "..." take several values: `--device A B` or `--device A --device B`; operands (FILE, IN, OUT) go before them, or end the values with --';

function hasSeveralValued(options: OptionSpec): boolean {
  return Object.values(options).some((o) => o.multiple === true && o.type === 'string');
}

/** Long and short spellings of the options that take several values. */
function severalValuedSpellings(options: OptionSpec): Set<string> {
  const names = new Set<string>();
  for (const [name, o] of Object.entries(options)) {
    if (o.multiple !== true || o.type !== 'string') continue;
    names.add(`--${name}`);
    if (o.short) names.add(`-${o.short}`);
  }
  return names;
}

/**
 * Rewrites `--opt A B C` (opt several-valued) as `--opt=A --opt=B --opt=C`: the
 * words after a several-valued option up to the next option (or `--`, which is
 * dropped) are its values.
 */
export function spreadSeveralValues(argv: readonly string[], options: OptionSpec): string[] {
  const several = severalValuedSpellings(options);
  const out: string[] = [];
  let collecting: string | undefined; // long spelling of the option taking values
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      if (collecting) {
        collecting = undefined;
        continue; // ends the values; what follows is parsed as usual
      }
      out.push(...argv.slice(i));
      break;
    }
    if (a.startsWith('-') && a !== '-') {
      collecting = undefined;
      const eq = a.indexOf('=');
      const spelling = eq > 0 ? a.slice(0, eq) : a;
      if (several.has(spelling)) {
        const long = spelling.startsWith('--') ? spelling : `--${longName(options, spelling.slice(1))}`;
        if (eq > 0) out.push(`${long}=${a.slice(eq + 1)}`);
        else if (i + 1 < argv.length && !isOptionWord(argv[i + 1]!)) out.push(`${long}=${argv[++i]!}`);
        else out.push(a); // no value: parseArgs names the error
        collecting = long;
        continue;
      }
      out.push(a);
      continue;
    }
    out.push(collecting ? `${collecting}=${a}` : a);
  }
  return out;
}

function isOptionWord(a: string): boolean {
  return a.startsWith('-') && a !== '-';
}

function longName(options: OptionSpec, short: string): string {
  return Object.entries(options).find(([, o]) => o.short === short)![0];
}

/** Parses a command's words (after its name); usage errors name the command's usage line. */
export function parseCommandArgs(cmd: Command, argv: readonly string[]): ParsedCommandArgs {
  let parsed: ParsedCommandArgs;
  try {
    parsed = parseArgs({ args: spreadSeveralValues(argv, cmd.options), options: cmd.options, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError(`${(e as Error).message}\n${commandHelp(cmd)}`);
  }
  checkOperands(cmd, parsed.positionals);
  return parsed;
}

function checkOperands(cmd: Command, positionals: readonly string[]): void {
  const want = cmd.operands;
  if (positionals.length === want.length) return;
  const what = cmd.name.join(' ');
  const why =
    want.length === 0
      ? `${what} takes no operands, got ${JSON.stringify(positionals[0])}`
      : positionals.length < want.length
        ? `${what} needs ${want.join(' and ')}${positionals.length ? `; ${want.slice(positionals.length).join(' and ')} is missing` : ''}`
        : `${what} takes ${want.join(' and ')}; unexpected ${JSON.stringify(positionals[want.length])}`;
  throw new UsageError(`${why}\nusage: migbridge ${cmd.usage}`);
}
