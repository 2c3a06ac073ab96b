// Two "hosts" on one machine: two network namespaces joined by a veth pair, with addresses
// that exist only inside them (10.A.B.1/24 and .2 on a random /24). Names carry a random
// suffix so concurrent runs never collide; both namespaces (and with them the veth pair)
// are deleted at teardown, also when the test fails. Needs root and iproute2's `ip`: a
// missing one is a loud failure, never a skip.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import type { Teardown } from './qemu-vm.js';

const run = promisify(execFile);

export interface Host {
  /** Namespace name. */
  ns: string;
  /** Its end of the veth pair. */
  dev: string;
  address: string;
  /** Prefix that runs a command inside the namespace (`ip netns exec NS`). */
  exec: string[];
}

export interface TwoHosts {
  source: Host;
  destination: Host;
  /** Takes the source's link down: packets stop, nothing tells either end. */
  cutLink(): Promise<void>;
  /** Bytes the host's veth end has sent so far (the kernel's counter). */
  txBytes(host: Host): Promise<number>;
}

async function ip(...args: string[]): Promise<string> {
  try {
    return (await run('ip', args)).stdout;
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string };
    if (err.code === 'ENOENT') throw new Error('`ip` (iproute2) is missing: apt-get install -y iproute2');
    throw new Error(`ip ${args.join(' ')} failed: ${err.stderr?.trim() || err.message}`);
  }
}

export interface TwoHostsOptions {
  /**
   * net.ipv4.tcp_retries2 in both namespaces: how many retransmissions before TCP gives a
   * connection up. The default (15, about 15 minutes) makes a cut link look like a hang; a
   * small value makes it an error within seconds, as a real outage would eventually be.
   */
  tcpRetries2?: number;
}

export async function twoHosts(teardown: Teardown, opts: TwoHostsOptions = {}): Promise<TwoHosts> {
  const id = randomBytes(3).toString('hex');
  const net = `10.${200 + (randomBytes(1)[0]! % 50)}.${randomBytes(1)[0]!}`;
  const mk = (side: 's' | 'd', host: number): Host => {
    const ns = `mb-${id}-${side}`;
    return { ns, dev: `mbv${id}${side}`, address: `${net}.${host}`, exec: ['ip', 'netns', 'exec', ns] };
  };
  const source = mk('s', 1);
  const destination = mk('d', 2);
  teardown(async () => {
    for (const h of [source, destination]) await ip('netns', 'del', h.ns).catch(() => undefined);
  });
  for (const h of [source, destination]) await ip('netns', 'add', h.ns);
  await ip('link', 'add', source.dev, 'netns', source.ns, 'type', 'veth', 'peer', 'name', destination.dev, 'netns', destination.ns);
  for (const h of [source, destination]) {
    await ip('-n', h.ns, 'addr', 'add', `${h.address}/24`, 'dev', h.dev);
    await ip('-n', h.ns, 'link', 'set', h.dev, 'up');
    await ip('-n', h.ns, 'link', 'set', 'lo', 'up');
    if (opts.tcpRetries2 !== undefined) {
      await run('ip', ['netns', 'exec', h.ns, 'sysctl', '-q', '-w', `net.ipv4.tcp_retries2=${opts.tcpRetries2}`]);
    }
  }
  return {
    source,
    destination,
    cutLink: async () => { await ip('-n', source.ns, 'link', 'set', source.dev, 'down'); },
    txBytes: async (h) => {
      const [link] = JSON.parse(await ip('-n', h.ns, '-s', '-j', 'link', 'show', 'dev', h.dev)) as { stats64: { tx: { bytes: number } } }[];
      return link!.stats64.tx.bytes;
    },
  };
}
