// The contract every CLI command implements. Commands declare their options and
// operands; src/cli/parse.ts parses them (one parser for all) and `run` prints through `io`.
import type { ParseArgsConfig } from 'node:util';

export type OutputMode = 'human' | 'json';

export interface CommandIO {
  /** Selected by the global --output=human|json flag. */
  readonly output: OutputMode;
  /** True when stdout is a terminal (progress bars only then). */
  readonly isTTY: boolean;
  stdout(text: string): void;
  stderr(text: string): void;
  /** Prints `value` as one JSON document in json mode, or `human()` text otherwise. */
  result(value: unknown, human: () => string): void;
}

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

export interface ParsedCommandArgs {
  values: Record<string, string | boolean | (string | boolean)[] | undefined>;
  positionals: string[];
}

export interface Command {
  /** Words that select the command, e.g. ['fsm', 'path']. */
  readonly name: readonly string[];
  readonly summary: string;
  /** One usage line (after "migbridge "). */
  readonly usage: string;
  readonly options: OptionSpec;
  /** Names of the operands (positional words), in order; every one is required, no others are accepted. */
  readonly operands: readonly string[];
  /** Exit status: 0 success, 1 operation failed (2 is raised as UsageError). */
  run(args: ParsedCommandArgs, io: CommandIO): Promise<number>;
}
