// The tiny guest that really runs: a 512-byte boot sector assembled here as bytes, which
// SeaBIOS loads at 0x7c00. It increments a dword at 0x500 as fast as it can and stores its
// low half into one of 16 pages at 0x10000 in turn (so 17 pages are dirty at every
// dirty-bitmap sync of a live migration, enough that QEMU cannot switch over under a small
// downtime limit), and every 2^20 counts writes one
// letter to COM1 (0x3f8), so a test can see it run (serial log grows, counter advances) on
// the source and, after a live migration, on the destination. Plus the raw disk images the
// scenarios attach, cached in the images/ directory of the test cache (test/helpers/cache.ts).
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cachePath } from './cache.js';

/** Guest-physical address of the counter the boot sector increments. */
export const COUNTER_GPA = 0x500;
/** Where the BIOS loads the boot sector. */
export const BOOT_SECTOR_GPA = 0x7c00;

/** Real-mode code, one instruction per line with its encoding (origin 0x7c00). */
const CODE: readonly (readonly number[])[] = [
  [0xfa], //                                              7c00 cli                    ; no IRQs: only our loop runs
  [0x31, 0xc0], //                                        7c01 xor ax, ax
  [0x8e, 0xd8], //                                        7c03 mov ds, ax
  [0xb8, 0x00, 0x10], //                                  7c05 mov ax, 0x1000
  [0x8e, 0xc0], //                                        7c08 mov es, ax             ; es:0 = 0x10000
  [0xba, 0xf8, 0x03], //                                  7c0a mov dx, 0x3f8          ; COM1 data port
  // top:
  [0x66, 0xff, 0x06, 0x00, 0x05], //                      7c0d inc dword [0x500]
  [0x8b, 0x1e, 0x00, 0x05], //                            7c12 mov bx, [0x500]
  [0x83, 0xe3, 0x0f], //                                  7c16 and bx, 0x0f
  [0xc1, 0xe3, 0x0c], //                                  7c19 shl bx, 12
  [0xa1, 0x00, 0x05], //                                  7c1c mov ax, [0x500]
  [0x26, 0x89, 0x07], //                                  7c1f mov [es:bx], ax        ; dirties one of 16 pages at 0x10000
  [0x66, 0xf7, 0x06, 0x00, 0x05, 0xff, 0xff, 0x0f, 0x00], // 7c22 test dword [0x500], 0xfffff
  [0x75, 0xe0], //                                        7c2b jnz 7c0d (top)
  [0xa0, 0x02, 0x05], //                                  7c2d mov al, [0x502]
  [0xc0, 0xe8, 0x04], //                                  7c30 shr al, 4
  [0x24, 0x0f], //                                        7c33 and al, 0x0f
  [0x04, 0x41], //                                        7c35 add al, 'A'            ; 'A'..'P' by counter
  [0xee], //                                              7c37 out dx, al
  [0xeb, 0xd3], //                                        7c38 jmp 7c0d (top)
];

/** Guest-physical range the guest keeps writing (16 pages), besides the counter's page. */
export const DIRTY_GPA = 0x10000;
export const DIRTY_PAGES = 16;

/** Marker text placed after the code so the sector is easy to recognise in a RAM dump. */
const MARKER = 'migbridge test guest';

/** The 512-byte boot sector (code, marker, zeros, 0x55 0xAA). */
export function bootSector(): Buffer {
  const sector = Buffer.alloc(512);
  const code = Buffer.from(CODE.flat());
  code.copy(sector, 0);
  sector.write(MARKER, 0x40, 'latin1');
  sector[510] = 0x55;
  sector[511] = 0xaa;
  return sector;
}

export type ImageName = 'boot' | 'data';

const IMAGE_BYTES = 1024 * 1024;

/** Contents of each disk image the scenarios use (1 MiB raw). */
function imageContents(name: ImageName): Buffer {
  const img = Buffer.alloc(IMAGE_BYTES);
  if (name === 'boot') bootSector().copy(img, 0);
  else img.write('migbridge data disk\n', 0, 'latin1'); // not bootable: no 0x55AA signature
  return img;
}

export function imageHash(name: ImageName): string {
  return createHash('sha256').update(imageContents(name)).digest('hex').slice(0, 12);
}

/** Path of the cached image, created (atomically) if missing. VMs use private copies of it. */
export function imagePath(name: ImageName): string {
  const dir = cachePath('images');
  const path = join(dir, `${name}-${imageHash(name)}.img`);
  if (!existsSync(path)) {
    mkdirSync(dir, { recursive: true });
    const tmp = `${path}.tmp-${process.pid}`;
    writeFileSync(tmp, imageContents(name));
    renameSync(tmp, path);
  }
  return path;
}
