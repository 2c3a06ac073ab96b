// `migbridge inspect FILE [--dump state]`: every record of a QEMU migration
// stream with its offset and length, the configuration, a RAM summary and a
// per-device VFIO summary (see src/qemu/summary.ts for the JSON shape).
import { MigbridgeError, UsageError } from '../../errors.js';
import { readStreamFile } from '../../qemu/reader.js';
import { inspectStreamFileUpTo, type InspectReport } from '../../qemu/summary.js';
import { parseVmDesc } from '../../qemu/vmdesc.js';
import { readFile } from 'node:fs/promises';
import type { Command } from '../command.js';
import { readLibvirtImageHeader, summarizeLibvirtImage, type LibvirtImageSummary } from '../../libvirt/index.js';

function libvirtLines(l: LibvirtImageSummary): string[] {
  const d = l.domain;
  return [
    `libvirt:       save image version ${l.version}, format ${l.format} (${l.formatNumber}), was running ${l.wasRunning ? 'yes' : 'no'}, ${l.byteOrder}-endian`,
    `               XML ${l.xmlBytes} bytes, cookie ${l.cookieBytes ? `${l.cookieBytes} bytes at ${l.cookieOffset}` : 'none'}, data length ${l.dataLen}; QEMU stream at file offset ${l.streamOffset}`,
    `domain:        ${d.name ?? '?'} uuid ${d.uuid ?? '?'} machine ${d.machine ?? '?'}${d.domainType ? ` (${d.domainType})` : ''}`,
  ];
}

/** `--dump xml`: the domain XML and save cookie of a libvirt save image, without decoding the stream. */
async function dumpXml(file: string): Promise<{ xml: string; cookie: string | null; libvirt: LibvirtImageSummary }> {
  const img = await readLibvirtImageHeader(file);
  if (!img) throw new UsageError(`--dump xml needs a libvirt save image; ${file} does not start with libvirt's header`);
  return { xml: img.xml, cookie: img.cookie ?? null, libvirt: summarizeLibvirtImage(img) };
}

/** A VFIO device's config blob size, or that the stream carries none for it. */
export function configText(bytes: number | null): string {
  return bytes === null ? 'no config blob' : `config ${bytes} bytes`;
}

function human(r: InspectReport): string {
  const lines: string[] = [];
  if (r.libvirt) lines.push(...libvirtLines(r.libvirt), '');
  lines.push(`header:        ${r.header.magicText} (0x${r.header.magic.toString(16)}) version ${r.header.version}, ${r.size} bytes`);
  if (r.configuration) {
    const caps = r.configuration.capabilities.length ? ` capabilities: ${r.configuration.capabilities.join(', ')}` : '';
    lines.push(`configuration: machine ${r.configuration.machineType}${caps}`);
  } else lines.push('configuration: none');
  lines.push('', 'records:', '  offset      length  kind           id  idstr');
  for (const x of r.records) {
    const id = x.sectionId === null ? '' : String(x.sectionId);
    const name = x.idstr === null ? (x.command ?? '') : `${x.idstr}${x.instanceId ? ` #${x.instanceId}` : ''}${x.versionId !== null ? ` v${x.versionId}` : ''}`;
    lines.push(`  ${String(x.offset).padStart(10)} ${String(x.length).padStart(8)}  ${x.kind.padEnd(13)} ${id.padStart(3)}  ${name}`);
  }
  if (r.ram) {
    lines.push('', `ram: page size ${r.ram.pageSize}${r.ram.ignoreShared ? ', x-ignore-shared' : ''}`);
    for (const b of r.ram.blocks) lines.push(`  ${b.name.padEnd(28)} ${String(b.usedLength).padStart(12)} bytes${b.gpa !== undefined ? ` at GPA 0x${b.gpa.toString(16)}` : ''}`);
    const p = r.ram.pages;
    lines.push(`  pages: ${p.PAGE} PAGE, ${p.ZERO} ZERO, ${p.XBZRLE} XBZRLE, ${p.COMPRESS_PAGE} COMPRESS_PAGE; ${r.ram.records.EOS} EOS, ${r.ram.records.MULTIFD_FLUSH} MULTIFD_FLUSH`);
    // A multifd migration's main channel: the pages are not here, and that is easy to miss.
    if (r.ram.records.MULTIFD_FLUSH) lines.push('  multifd: the pages of this migration went over multifd channels, not in this stream (`migbridge reframe IN OUT --multifd CH...` merges the channel captures)');
  }
  if (r.vfio.length) {
    lines.push('', 'vfio:');
    for (const d of r.vfio) {
      lines.push(`  ${d.idstr} (section ${d.sectionId}): ${d.dataBytes} data bytes in ${d.chunks} DATA_STATE records (precopy ${d.precopyBytes}, stop-copy ${d.stopCopyBytes}${d.phaseUnknownBytes ? `, phase unknown ${d.phaseUnknownBytes}` : ''}), ${configText(d.configBytes)}; ${d.flavour}`);
    }
    if (r.vfio.some((d) => d.phaseUnknownBytes > 0)) {
      lines.push('  phase unknown: PART data of a stream without SWITCHOVER_START (machine types before 10.0) may be precopy or, from an interleaved save, stop-copy');
    }
  }
  if (r.vmdesc) lines.push('', `vmdesc: ${r.vmdesc.bytes} bytes of JSON at ${r.vmdesc.offset}, ${r.vmdesc.devices} devices`);
  return lines.join('\n');
}

/** The vmdesc JSON the stream carries (QEMU writes it after EOF), as QEMU wrote it. */
async function streamVmDesc(file: string): Promise<unknown> {
  for await (const ev of readStreamFile(file)) if (ev.type === 'vmdesc') return JSON.parse(ev.json.toString('utf8'));
  throw new MigbridgeError('ENOVMDESC', `${file} carries no vmdesc (QEMU writes it after EOF unless the stream was cut short or the migration was not precopy to a file or socket)`, { path: file });
}

export const inspectCommand: Command = {
  name: ['inspect'],
  summary: 'Decode a QEMU migration stream or a libvirt save image: records, configuration, RAM and VFIO summaries (--dump state: decoded vmstate fields; --dump desc: the stream\'s vmdesc JSON; --dump xml: a libvirt image\'s domain XML and cookie).',
  usage: 'inspect FILE [--dump state|desc|xml] [--vmdesc JSONFILE]',
  operands: ['FILE'],
  options: {
    dump: { type: 'string' },
    vmdesc: { type: 'string' },
  },
  async run(args, io) {
    const [file] = args.positionals as [string];
    const dump = args.values.dump;
    if (dump !== undefined && dump !== 'state' && dump !== 'desc' && dump !== 'xml') throw new UsageError(`--dump takes "state", "desc" or "xml", got ${JSON.stringify(dump)}`);
    if (dump === 'xml') {
      const x = await dumpXml(file);
      io.result(x, () => x.xml + (x.cookie !== null ? `\n${x.cookie}` : ''));
      return 0;
    }
    if (dump === 'desc') {
      const desc = await streamVmDesc(file);
      io.result(desc, () => JSON.stringify(desc, null, 4));
      return 0;
    }
    const vmdescFile = args.values.vmdesc;
    const vmdesc = typeof vmdescFile === 'string' ? parseVmDesc(await readFile(vmdescFile)) : undefined;
    const { report, error } = await inspectStreamFileUpTo(file, { dumpState: dump === 'state', ...(vmdesc ? { vmdesc } : {}) });
    if (error) {
      // What decoded before the error is shown (stdout), then the error itself (stderr, exit 1).
      io.result({ ...report, complete: false }, () => `${human(report)}\n\nincomplete: decoded up to offset ${error.offset ?? report.size}, then:`);
      throw error;
    }
    if (dump === 'state' && io.output === 'human') {
      io.stdout(JSON.stringify(report.state, null, 4));
      return 0;
    }
    io.result(report, () => human(report));
    return 0;
  },
};
