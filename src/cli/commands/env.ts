// `migbridge env`: which I/O backend this process gets and why (io_uring, or
// the worker-pool fallback when io_uring cannot be set up or MIGBRIDGE_IO forces it).
import { readFileSync } from 'node:fs';
import { release } from 'node:os';
import { defaultEngine } from '../../native/index.js';
import type { Command } from '../command.js';

function ioUringDisabled(): number | null {
  try {
    return Number(readFileSync('/proc/sys/kernel/io_uring_disabled', 'utf8').trim());
  } catch {
    return null; // kernels before 6.6 have no such sysctl
  }
}

export const envCommand: Command = {
  name: ['env'],
  summary: 'Print the I/O backend (io_uring or threadpool) and why; MIGBRIDGE_IO=threadpool|io_uring forces one.',
  usage: 'env',
  operands: [],
  options: {},
  async run(_args, io) {
    const engine = defaultEngine();
    const info = engine.info();
    await engine.shutdown();
    const out = {
      ...info,
      forced: process.env.MIGBRIDGE_IO || null,
      kernel: release(),
      ioUringDisabledSysctl: ioUringDisabled(),
      node: process.version,
    };
    io.result(out, () =>
      [
        `io:       ${info.io}`,
        `reason:   ${info.reason}`,
        `buffers:  ${info.bufferCount} x ${info.bufferSize} bytes${info.fixedBuffers ? ' (registered fixed buffers)' : ''}`,
        ...(info.ringEntries ? [`ring:     ${info.ringEntries} SQ entries`] : []),
        `kernel:   ${out.kernel}${out.ioUringDisabledSysctl === null ? '' : ` (kernel.io_uring_disabled=${out.ioUringDisabledSysctl})`}`,
        `MIGBRIDGE_IO: ${out.forced ?? '(unset: automatic)'}`,
      ].join('\n'),
    );
    return 0;
  },
};
