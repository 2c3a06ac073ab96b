// `migbridge proxy --listen ENDPOINT --to ENDPOINT`: forwards a live QEMU migration (and
// its return path) unchanged between a source and a destination QEMU, tees and decodes it
// on the side. See src/engine/proxy.ts.
import { readFile } from 'node:fs/promises';
import { UsageError } from '../../errors.js';
import { formatBytes, formatRate } from '../progress.js';
import { type ProxyNote, type ProxyReport, type StreamTally, ProxyFailedError, proxy } from '../../engine/proxy.js';
import { parseVmDesc } from '../../qemu/vmdesc.js';
import { type Endpoint, type EndpointUse, formatEndpoint, parseEndpoint } from '../../util/endpoint.js';
import type { Command, CommandIO } from '../command.js';
import { optionalNumber, optionalString } from './transfer-args.js';

function endpoint(v: string | undefined, name: string, use: EndpointUse): Endpoint {
  if (v === undefined) throw new UsageError(`--${name} ENDPOINT is required (unix:PATH, tcp:HOST:PORT or fd:N)`);
  return parseEndpoint(v, `--${name}`, use);
}

function tallyLines(t: StreamTally, indent: string): string[] {
  const lines: string[] = [];
  lines.push(`${indent}records: ${Object.entries(t.records).map(([k, n]) => `${n} ${k}`).join(', ') || 'none'}`);
  if (t.ram) {
    const p = t.ram.pages;
    lines.push(`${indent}ram pages: ${p.PAGE} PAGE, ${p.ZERO} ZERO, ${p.XBZRLE} XBZRLE, ${p.COMPRESS_PAGE} COMPRESS_PAGE; ${t.ram.records.EOS} EOS, ${t.ram.records.MULTIFD_FLUSH} MULTIFD_FLUSH`);
  }
  for (const c of t.commands) lines.push(`${indent}COMMAND ${c.name} at ${c.offset}`);
  for (const d of t.vfio) {
    lines.push(`${indent}vfio ${d.idstr} (section ${d.sectionId}): ${d.dataBytes} data bytes in ${d.chunks} chunks (precopy ${d.precopyBytes}, stop-copy ${d.stopCopyBytes}${d.phaseUnknownBytes ? `, phase unknown ${d.phaseUnknownBytes}` : ''}), config ${d.configBytes ?? 'none'}; ${d.flavour}`);
  }
  if (t.eofOffset !== null) lines.push(`${indent}EOF at ${t.eofOffset}${t.vmdescOffset !== null ? `, VMDESCRIPTION at ${t.vmdescOffset}` : ''}`);
  return lines;
}

function multifdLines(r: ProxyReport): string[] {
  const lines: string[] = [];
  if (r.multifd.length) lines.push(`multifd: ${r.multifd.length} channels, ${formatBytes(r.multifdBytes)} (${r.multifdBytes} bytes)`);
  for (const c of r.multifd) {
    const name = c.channel !== null ? `channel ${c.channel}` : `connection #${c.connection}`;
    lines.push(`  ${name}: ${c.bytes} bytes (${c.deliveredBytes} delivered, ${c.returnBytes} back), ${c.packets} packets: ${c.ramPages.normal} normal + ${c.ramPages.zero} zero pages in ${c.ramPackets} RAM packets, ${c.syncs} SYNC; source ${c.source.closed}, destination ${c.destination.closed}`);
    for (const d of c.deviceState) {
      lines.push(`    device state ${d.idstr} (instance ${d.instanceId}): ${d.packets} packets, ${d.bytes} bytes${d.idx ? `, idx ${d.idx.min}..${d.idx.max}` : ''}${d.configPacket ? ', config packet' : ''}`);
    }
    if (c.decodeStopped) lines.push(`    decoding stopped at ${c.decodeStopped.offset} (${c.decodeStopped.code}): ${c.decodeStopped.message}`);
    if (c.tee) lines.push(`    tee ${c.tee.path}: ${c.tee.bytes} bytes, ${c.tee.kept ? 'kept' : 'removed'}${c.tee.error ? ` (${c.tee.error})` : ''}`);
  }
  for (const x of r.rejected) lines.push(`rejected connection #${x.connection} (first bytes ${x.firstBytes || 'none'}): ${x.reason}`);
  return lines;
}

export function proxyHuman(r: ProxyReport): string {
  const lines: string[] = [];
  lines.push(`${r.ok ? 'migration forwarded' : 'migration FAILED'}: ${formatBytes(r.forwardBytes)} source -> destination (${r.deliveredBytes} bytes delivered), ${r.returnPath.bytes} bytes return path, ${r.seconds.toFixed(2)} s (${formatRate(r.forwardBytes / Math.max(r.seconds, 1e-6))})`);
  lines.push(`source: ${r.source.closed}${r.source.error ? ` (${r.source.error})` : ''} at ${r.source.offset}; destination: ${r.destination.closed}${r.destination.error ? ` (${r.destination.error})` : ''} at ${r.destination.offset}`);
  if (r.failure) lines.push(`failure: ${r.failure.side}${r.failure.channel !== undefined ? ` (multifd ${r.failure.channel !== null ? `channel ${r.failure.channel}` : `connection #${r.failure.connection}`})` : ''} at offset ${r.failure.offset}: ${r.failure.message}`);
  if (r.returnPath.bytes) {
    lines.push(`return path: ${Object.entries(r.returnPath.messages).map(([k, n]) => `${n} ${k}`).join(', ') || 'no complete message'}${r.returnPath.error ? ` (${r.returnPath.error.message} at ${r.returnPath.error.offset})` : ''}`);
  }
  lines.push(`live decode: ${r.live.complete ? 'complete' : r.live.stopped ? `stopped at ${r.live.stopped.offset}: ${r.live.stopped.message}` : `incomplete, decoded to ${r.live.bytes}`}`);
  lines.push(...tallyLines(r.live, '  '));
  if (r.tee) {
    lines.push(`tee ${r.tee.path}: ${r.tee.bytes} bytes, ${r.tee.kept ? 'kept' : 'removed'} (${r.tee.why})`);
    if (r.tee.report) lines.push('  decoded after the migration:', ...tallyLines(r.tee.report, '    '));
    if (r.tee.error) lines.push(`  tee error: ${r.tee.error.message}`);
  }
  if (r.eof) lines.push(`EOF at ${r.eof.offset} (${r.eof.via})`);
  lines.push(...multifdLines(r));
  return lines.join('\n');
}

function noteLine(n: ProxyNote): string {
  switch (n.type) {
    case 'listening': return `listening on ${n.endpoint}`;
    case 'connected': return `${n.side} connected`;
    case 'record': return `${String(n.offset).padStart(12)}  ${n.kind}${n.idstr !== undefined ? ` ${n.idstr} (${n.sectionId})` : ''}${n.command ? ` ${n.command}` : ''}`;
    case 'vfio-section': return `${String(n.offset).padStart(12)}  vfio ${n.kind} ${n.idstr}: ${n.dataBytes} data bytes in ${n.chunks} chunks`;
    case 'decode-stopped': return `decoding stopped at ${n.stop.offset} (${n.stop.code}): ${n.stop.message}; forwarding goes on`;
    case 'closed': return `${n.side} ${n.how === 'fin' ? 'closed' : `failed (${n.error ?? 'closed'})`} at offset ${n.offset}`;
    case 'progress': return `${formatBytes(n.forwardBytes)} forwarded${n.multifdBytes ? ` (+ ${formatBytes(n.multifdBytes)} multifd)` : ''}, ${n.returnBytes} bytes back, ${n.decodedRecords} records, ${n.seconds.toFixed(1)} s (${formatRate((n.forwardBytes + n.multifdBytes) / Math.max(n.seconds, 1e-6))})`;
    case 'multifd-accepted': return `multifd connection #${n.connection} accepted`;
    case 'multifd-connected': return `multifd connection #${n.connection} connected to the destination`;
    case 'multifd-channel': return `multifd connection #${n.connection} is channel ${n.channel} (uuid ${n.uuid})`;
    case 'multifd-closed': return `multifd ${n.channel !== null ? `channel ${n.channel}` : `connection #${n.connection}`}: ${n.side} ${n.how === 'fin' ? 'closed' : `failed (${n.error ?? 'closed'})`} at offset ${n.offset}`;
    case 'multifd-decode-stopped': return `multifd ${n.channel !== null ? `channel ${n.channel}` : `connection #${n.connection}`}: decoding stopped at ${n.stop.offset} (${n.stop.code}): ${n.stop.message}; forwarding goes on`;
    case 'rejected': return `connection #${n.connection} rejected (first bytes ${n.firstBytes || 'none'}): ${n.reason}`;
  }
}

function liveNotes(io: CommandIO, force: boolean): ((n: ProxyNote) => void) | undefined {
  if (!force && !process.stderr.isTTY) return undefined;
  // RAM PART records come by the hundred: on a terminal only the other records are listed.
  const quiet = (n: ProxyNote): boolean => !force && n.type === 'record' && (n.kind === 'PART' || n.kind === 'END') && n.idstr === 'ram';
  return (n) => {
    if (quiet(n)) return;
    io.stderr(io.output === 'json' ? JSON.stringify({ note: n }) : `proxy: ${noteLine(n)}`);
  };
}

/** `--socket-mode 660`: an octal permission mode, at most 0777 (no set-id or sticky bits). */
function octalMode(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  if (!/^0?[0-7]{1,3}$/.test(v)) throw new UsageError(`--${name} takes an octal mode like 600 or 660, got ${JSON.stringify(v)}`);
  return parseInt(v, 8);
}

export const proxyCommand: Command = {
  name: ['proxy'],
  summary: 'Forward a live QEMU migration between a source and a destination QEMU (both ways), tee and decode it on the side.',
  usage: 'proxy --listen ENDPOINT --to ENDPOINT [--tee FILE] [--vmdesc JSONFILE] [--progress] [--close-timeout MS] [--socket-mode OCTAL]',
  operands: [],
  options: {
    listen: { type: 'string' },
    to: { type: 'string' },
    tee: { type: 'string' },
    vmdesc: { type: 'string' },
    progress: { type: 'boolean' },
    'close-timeout': { type: 'string' },
    'socket-mode': { type: 'string' },
  },
  async run(args, io) {
    const listen = endpoint(optionalString(args, 'listen'), 'listen', 'listen');
    const to = endpoint(optionalString(args, 'to'), 'to', 'connect');
    if (formatEndpoint(listen) === formatEndpoint(to)) throw new UsageError('--listen and --to name the same endpoint');
    const tee = optionalString(args, 'tee');
    const closeTimeoutMs = optionalNumber(args, 'close-timeout');
    const socketMode = octalMode(optionalString(args, 'socket-mode'), 'socket-mode');
    const vmdescFile = optionalString(args, 'vmdesc');
    const vmdesc = vmdescFile !== undefined ? parseVmDesc(await readFile(vmdescFile)) : undefined;
    const onNote = liveNotes(io, args.values.progress === true);
    const abort = new AbortController();
    const stop = (): void => abort.abort();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    try {
      const report = await proxy({
        listen, to, signal: abort.signal,
        ...(tee !== undefined ? { tee } : {}),
        ...(vmdesc ? { vmdesc } : {}),
        ...(onNote ? { onNote } : {}),
        ...(closeTimeoutMs !== undefined ? { closeTimeoutMs } : {}),
        ...(socketMode !== undefined ? { socketMode } : {}),
      });
      io.result(report, () => proxyHuman(report));
      return 0;
    } catch (e) {
      if (e instanceof ProxyFailedError) {
        io.result(e.report, () => proxyHuman(e.report));
        io.stderr(io.output === 'json' ? JSON.stringify({ error: e.toJSON() }) : `migbridge: ${e.message}`);
        return 1;
      }
      throw e;
    } finally {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
    }
  },
};
