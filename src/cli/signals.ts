// SIGINT/SIGTERM for the commands that move device state (save, restore): the first
// signal cancels the operation through an AbortSignal (the engine brings the devices
// back, removes partial output and the command prints what it did, exit 1); a second
// one removes the temporary output files and exits at once with 128 + the signal
// number. The process then closes its device fds, which makes kernel drivers end their
// migration sessions and return to RUNNING.
import { constants } from 'node:os';
import { removeLiveTemporariesSync } from '../util/atomic-file.js';
import type { CommandIO } from './command.js';

const SIGNALS = ['SIGINT', 'SIGTERM'] as const;

export async function withSignals<T>(io: CommandIO, run: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const handler = (name: NodeJS.Signals): void => {
    if (!controller.signal.aborted) {
      io.stderr(
        io.output === 'json'
          ? JSON.stringify({ note: { type: 'signal', signal: name } })
          : `migbridge: ${name}: cancelling, bringing the devices back (send it again to exit at once)`,
      );
      controller.abort(name);
      return;
    }
    // A second signal: the user wants out now. The temporary outputs go first (the
    // cancel's own cleanup is asynchronous and would not run).
    removeLiveTemporariesSync();
    process.exit(128 + (constants.signals[name] ?? 0));
  };
  for (const s of SIGNALS) process.on(s, handler);
  try {
    return await run(controller.signal);
  } finally {
    for (const s of SIGNALS) process.off(s, handler);
  }
}
