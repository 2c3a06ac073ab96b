// Opening a libvirt save image: sniff the magic, decode the header and the XML
// area, and say where the QEMU stream starts and how it is stored.
import { open } from 'node:fs/promises';
import { decodeLibvirtData, decodeLibvirtHeader, hasLibvirtMagic, LIBVIRT_HEADER_SIZE, type LibvirtImageHeader } from './header.js';
import { domainFacts, type DomainFacts } from './domain-xml.js';

/**
 * Reads the libvirt header of a regular file; undefined when the file does not start
 * with libvirt's magic (a plain QEMU stream). Throws LibvirtImageError on a bad header.
 */
export async function readLibvirtImageHeader(path: string): Promise<LibvirtImageHeader | undefined> {
  const fh = await open(path, 'r');
  try {
    const head = Buffer.alloc(LIBVIRT_HEADER_SIZE);
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    if (!hasLibvirtMagic(head.subarray(0, bytesRead))) return undefined;
    const h = decodeLibvirtHeader(head.subarray(0, bytesRead), path);
    const data = Buffer.alloc(h.dataLen);
    const got = (await fh.read(data, 0, data.length, LIBVIRT_HEADER_SIZE)).bytesRead;
    return decodeLibvirtData(h, data.subarray(0, got), path);
  } finally {
    await fh.close();
  }
}

/** What `inspect` reports about a libvirt image (the stream is reported as for any file). */
export interface LibvirtImageSummary {
  version: number;
  format: string;
  formatNumber: number;
  wasRunning: boolean;
  dataLen: number;
  cookieOffset: number;
  byteOrder: 'little' | 'big';
  /** File offset of the QEMU stream (compressed, when format says so). */
  streamOffset: number;
  xmlBytes: number;
  cookieBytes: number;
  domain: DomainFacts;
}

export function summarizeLibvirtImage(h: LibvirtImageHeader): LibvirtImageSummary {
  return {
    version: h.version,
    format: h.format,
    formatNumber: h.formatNumber,
    wasRunning: h.wasRunning,
    dataLen: h.dataLen,
    cookieOffset: h.cookieOffset,
    byteOrder: h.littleEndian ? 'little' : 'big',
    streamOffset: h.streamOffset,
    xmlBytes: Buffer.byteLength(h.xml),
    cookieBytes: h.cookie === undefined ? 0 : Buffer.byteLength(h.cookie),
    domain: domainFacts(h.xml),
  };
}
