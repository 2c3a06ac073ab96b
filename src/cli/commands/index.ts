// Every CLI command, in help order. Add one import and one entry per command.
import type { Command } from '../command.js';
import { fsmPathCommand, fsmTableCommand } from './fsm.js';
import { envCommand } from './env.js';
import { inspectCommand } from './inspect.js';
import { rewriteCommand } from './rewrite.js';
import { extractCommand } from './extract.js';
import { injectCommand } from './inject.js';
import { reframeCommand } from './reframe.js';
import { saveCommand } from './save.js';
import { restoreCommand } from './restore.js';
import { demoCommand } from './demo.js';
import { devicesCommand } from './devices.js';
import { proxyCommand } from './proxy.js';
import { checkCommand } from './check.js';
import { migrateCommand } from './migrate.js';

export const commands: readonly Command[] = [
  fsmPathCommand,
  fsmTableCommand,
  envCommand,
  inspectCommand,
  rewriteCommand,
  extractCommand,
  injectCommand,
  reframeCommand,
  saveCommand,
  restoreCommand,
  demoCommand,
  devicesCommand,
  proxyCommand,
  migrateCommand,
  checkCommand,
];
