// The vmdesc of a libvirt image's stream. Stored as is, the stream's tail is the
// file's tail; compressed, the tail is only known after decompressing everything,
// so the stream is decompressed once more just for it, keeping only the last bytes.
import { findTailVmDesc, readTailVmDesc, type VmDesc } from '../qemu/vmdesc.js';
import type { LibvirtImageHeader } from './header.js';
import { libvirtStreamBytes, streamTail } from './stream-source.js';

export async function libvirtVmDesc(path: string, img: LibvirtImageHeader, maxBytes = 64 << 20): Promise<VmDesc | undefined> {
  if (!img.compression) return (await readTailVmDesc(path, maxBytes))?.desc;
  const { tail, total } = await streamTail(libvirtStreamBytes(path, img), maxBytes);
  return findTailVmDesc(tail, total - tail.length)?.desc;
}
