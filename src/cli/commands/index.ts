// Every CLI command, in help order. Add one import and one entry per command.
import type { Command } from '../command.js';
import { fsmPathCommand, fsmTableCommand } from './fsm.js';
import { envCommand } from './env.js';

export const commands: readonly Command[] = [
  fsmPathCommand,
  fsmTableCommand,
  envCommand,
];
