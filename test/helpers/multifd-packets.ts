// HAND-BUILT multifd channel pieces as QEMU 10.0 writes them (docs/stream-format.md §9.6;
// migration/multifd.h, multifd-device-state.c, hw/vfio/migration-multifd.c), for tests of
// what real QEMU here cannot produce on demand. Packets are written from the layout, not
// from src/; the main channel uses the StreamWriter the codec tests check separately.
import type { StreamWriter } from '../../src/qemu/writer.js';

/** MultiFDInit_t (64 bytes): magic, version 1, 16-byte UUID (all `uuidByte`), channel id. */
export function multifdInit(channelId: number, uuidByte = 0): Buffer {
  const b = Buffer.alloc(64);
  b.writeUInt32BE(0x11223344, 0);
  b.writeUInt32BE(1, 4);
  b.fill(uuidByte, 8, 24);
  b[24] = channelId;
  return b;
}

/**
 * A device-state packet carrying a VFIO packet: the 276-byte header (flags DEVICE_STATE,
 * idstr, instance, next_packet_size), then be32 version 0, idx, flags (1 = config), data.
 */
export function vfioStatePacket(idstr: string, idx: number, vfioFlags: number, data: Buffer, instanceId = 0): Buffer {
  const h = Buffer.alloc(276 + 12);
  h.writeUInt32BE(0x11223344, 0);
  h.writeUInt32BE(1, 4);
  h.writeUInt32BE(0x40, 8);
  h.write(idstr, 12, 'latin1');
  h.writeUInt32BE(instanceId, 268);
  h.writeUInt32BE(12 + data.length, 272);
  h.writeUInt32BE(idx, 276 + 4);
  h.writeUInt32BE(vfioFlags, 276 + 8);
  return Buffer.concat([h, data]);
}

/**
 * The main channel of a QEMU 10 multifd migration of one VFIO device (§9.6), header to EOF:
 * START (SETUP_STATE), SWITCHOVER_START, END and FULL that are only a dummy marker (the
 * stop-copy data and config went over the channels). No vmdesc: callers add their own.
 */
export async function writeMultifdVfioMainChannel(w: StreamWriter, sectionId: number, idstr: string, fullMarker: 'END_OF_STATE' | 'DEV_CONFIG_LOAD_READY' = 'END_OF_STATE'): Promise<void> {
  await w.header();
  await w.configuration('pc-q35-10.0');
  await w.vfioStartSection(sectionId, idstr);
  await w.switchoverStart();
  await w.sectionEnd(sectionId);
  await w.vfioMarker('END_OF_STATE');
  await w.endSection();
  await w.sectionFull(sectionId, idstr, 0, 1);
  await w.vfioMarker(fullMarker);
  await w.endSection();
  await w.eof();
}
