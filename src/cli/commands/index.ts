// Every CLI command, in help order. Add one import and one entry per command.
import type { Command } from '../command.js';
import { fsmPathCommand, fsmTableCommand } from './fsm.js';
import { envCommand } from './env.js';
import { inspectCommand } from './inspect.js';
import { rewriteCommand } from './rewrite.js';
import { extractCommand } from './extract.js';
import { injectCommand } from './inject.js';

export const commands: readonly Command[] = [
  fsmPathCommand,
  fsmTableCommand,
  envCommand,
  inspectCommand,
  rewriteCommand,
  extractCommand,
  injectCommand,
];
