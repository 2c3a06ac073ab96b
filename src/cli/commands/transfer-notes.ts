// What save and restore print beside their report: milestones with --progress (JSON lines
// `{"note": ...}` on stderr with --output=json), and, when they fail, what was done to
// bring each device back.
import { MigbridgeError } from '../../errors.js';
import type { TransferNote } from '../../engine/notes.js';
import type { RecoveryStep } from '../../engine/recover.js';
import type { CommandIO } from '../command.js';

function noteLine(n: TransferNote): string {
  switch (n.type) {
    case 'setup': return `${n.devices} device(s) set up, stream header written`;
    case 'precopy': return `${n.devices} device(s) in PRE_COPY`;
    case 'precopy-round': return `precopy round ${n.round}: ${n.bytes} bytes`;
    case 'stopping': return `stopping the devices (estimated downtime ${n.estimateMs.toFixed(1)} ms)`;
    case 'stopped': return 'every device in STOP_COPY';
    case 'device-saved': return `${n.device}: ${n.bytes} bytes saved`;
    case 'committed': return `stream complete: ${n.streamBytes} bytes`;
    case 'resuming': return `${n.devices} device(s) in RESUMING`;
    case 'device-data': return `${n.device} <- ${n.section} (from offset ${n.offset})`;
    case 'cancelling': return `cancelled (${n.reason}): bringing the devices back`;
    case 'listening': return `listening on ${n.endpoint}`;
  }
}

/** The note printer for --progress, or undefined without it. */
export function transferNotes(io: CommandIO, enabled: boolean, command: string): ((n: TransferNote) => void) | undefined {
  if (!enabled) return undefined;
  return (n) => io.stderr(io.output === 'json' ? JSON.stringify({ note: n }) : `${command}: ${noteLine(n)}`);
}

/**
 * A failed save or restore whose error carries the recovery it did: in human mode the
 * error, then one line per device brought back, and exit status 1 (JSON mode prints
 * them in the error's `recovery`, through the CLI's error report: rethrown).
 */
export function reportRecovered(io: CommandIO, e: unknown): number {
  if (io.output === 'json' || !(e instanceof MigbridgeError) || !e.recovery?.length) throw e;
  io.stderr(`migbridge: ${e.message}`);
  for (const s of e.recovery as RecoveryStep[]) {
    const what = s.action === 'none' ? 'already RUNNING' : s.action === 'reset' ? 'reset (VFIO_DEVICE_RESET)' : 'set RUNNING';
    io.stderr(`  ${s.device}: was ${s.from}, ${what}${s.ok ? '' : ` FAILED: ${s.error ?? ''}`}`);
  }
  return 1;
}
