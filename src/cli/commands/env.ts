// `migbridge env`: which I/O backend this process gets and why (io_uring, or
// the worker-pool fallback when io_uring cannot be set up or MIGBRIDGE_IO forces it).
import { ioEnvironment } from '../../engine/environment.js';
import type { Command } from '../command.js';

export const envCommand: Command = {
  name: ['env'],
  summary: 'Print the I/O backend (io_uring or threadpool) and why; MIGBRIDGE_IO=threadpool|io_uring forces one.',
  usage: 'env',
  operands: [],
  options: {},
  async run(_args, io) {
    const env = await ioEnvironment();
    io.result(env, () =>
      [
        `io:       ${env.io}`,
        `reason:   ${env.reason}`,
        `buffers:  ${env.bufferCount} x ${env.bufferSize} bytes${env.fixedBuffers ? ' (registered fixed buffers)' : ''}`,
        ...(env.ringEntries ? [`ring:     ${env.ringEntries} SQ entries`] : []),
        `kernel:   ${env.kernel}${env.ioUringDisabledSysctl === null ? '' : ` (kernel.io_uring_disabled=${env.ioUringDisabledSysctl})`}`,
        `MIGBRIDGE_IO: ${env.forced ?? '(unset: automatic)'}`,
      ].join('\n'),
    );
    return 0;
  },
};
