// Every byte-level fact of QEMU's migration stream that migbridge relies on, in
// one place. Section numbers refer to docs/stream-format.md (the format as
// this codec reads it); the QEMU file each value lives in is named per line.

// ---- File header (§2; migration/savevm.c qemu_savevm_state_header) ----
/** QEMU_VM_FILE_MAGIC "QEVM" (migration/savevm.h). */
export const FILE_MAGIC = 0x5145564d;
/** QEMU_VM_FILE_VERSION (migration/savevm.h); 2 (COMPAT) is rejected by QEMU. */
export const FILE_VERSION = 3;
/** QEMU_VM_FILE_VERSION_COMPAT (migration/savevm.h): "SaveVM v2 format is obsolete". */
export const FILE_VERSION_COMPAT = 2;

// ---- Top-level record type bytes (§3; migration/savevm.h, identical 7.2..10.2) ----
export enum RecordType {
  /** QEMU_VM_EOF: end of device data. */
  EOF = 0x00,
  /** QEMU_VM_SECTION_START: first chunk of an iterative section, full header. */
  SECTION_START = 0x01,
  /** QEMU_VM_SECTION_PART: middle chunk, short header. */
  SECTION_PART = 0x02,
  /** QEMU_VM_SECTION_END: last chunk, short header. */
  SECTION_END = 0x03,
  /** QEMU_VM_SECTION_FULL: whole non-iterative section, full header. */
  SECTION_FULL = 0x04,
  /** QEMU_VM_SUBSECTION: only inside a vmstate body. */
  SUBSECTION = 0x05,
  /** QEMU_VM_VMDESCRIPTION: JSON trailer after EOF. */
  VMDESCRIPTION = 0x06,
  /** QEMU_VM_CONFIGURATION: machine/config record right after the header. */
  CONFIGURATION = 0x07,
  /** QEMU_VM_COMMAND: be16 cmd, be16 len, len bytes. */
  COMMAND = 0x08,
  /** QEMU_VM_SECTION_FOOTER: 0x7e be32 section_id after each section body. */
  SECTION_FOOTER = 0x7e,
}

/** Record kinds as the CLI names them (the `kind` key of `inspect`). */
export type RecordKind = 'CONFIGURATION' | 'START' | 'PART' | 'END' | 'FULL' | 'COMMAND' | 'EOF' | 'VMDESCRIPTION';

export type SectionKind = 'START' | 'PART' | 'END' | 'FULL';

export const SECTION_KIND_OF: Readonly<Record<number, SectionKind>> = {
  [RecordType.SECTION_START]: 'START',
  [RecordType.SECTION_PART]: 'PART',
  [RecordType.SECTION_END]: 'END',
  [RecordType.SECTION_FULL]: 'FULL',
};

export const SECTION_TYPE_OF: Readonly<Record<SectionKind, RecordType>> = {
  START: RecordType.SECTION_START,
  PART: RecordType.SECTION_PART,
  END: RecordType.SECTION_END,
  FULL: RecordType.SECTION_FULL,
};

// ---- QEMU_VM_COMMAND numbers (§4 table; migration/savevm.c enum qemu_vm_cmd) ----
export enum VmCommand {
  INVALID = 0,
  OPEN_RETURN_PATH = 1,
  PING = 2,
  POSTCOPY_ADVISE = 3,
  POSTCOPY_LISTEN = 4,
  POSTCOPY_RUN = 5,
  POSTCOPY_RAM_DISCARD = 6,
  /** Payload be32 length of a wrapped sub-stream that follows the command. */
  PACKAGED = 7,
  ENABLE_COLO = 8,
  POSTCOPY_RESUME = 9,
  RECV_BITMAP = 10,
  /** New in QEMU 10.0 (migration/savevm.c): sent before the END sections; no payload. */
  SWITCHOVER_START = 11,
}

// ---- CONFIGURATION subsections (§3; migration/savevm.c vmstate_configuration) ----
export const CONFIG_SUBSECTION_CAPABILITIES = 'configuration/capabilities';
export const CONFIG_SUBSECTION_TARGET_PAGE_BITS = 'configuration/target-page-bits';
export const CONFIG_SUBSECTION_UUID = 'configuration/uuid';
/** Capability names that change the RAM format (§6.2; migration/ram.c ram_save_setup). */
export const CAP_X_IGNORE_SHARED = 'x-ignore-shared';
export const CAP_MAPPED_RAM = 'mapped-ram';
/** Size of the uuid subsection body (§3: 16 raw bytes). */
export const UUID_BYTES = 16;

// ---- RAM section (§6; migration/ram.c, ram.h) ----
/** The RAM section's idstr and version (§6: register_savevm_live("ram", 0, 4, ...)). */
export const RAM_IDSTR = 'ram';
export const RAM_VERSION = 4;
/** TARGET_PAGE_SIZE on x86 (§6.5); the vmdesc page_size overrides it when present. */
export const DEFAULT_TARGET_PAGE_SIZE = 4096;

/** RAM_SAVE_FLAG_* bits of the be64 address word (§6.1; 10.2 migration/ram.h, 7.2 migration/ram.c). */
export enum RamFlag {
  /** Obsolete since 2009, never sent. */
  FULL = 0x01,
  /** Formerly COMPRESS: block id + u8 fill byte. */
  ZERO = 0x02,
  /** Block list follows (first record of START). */
  MEM_SIZE = 0x04,
  /** Block id + one target page of raw bytes. */
  PAGE = 0x08,
  /** End of the section body. */
  EOS = 0x10,
  /** Modifier: same block as the previous page record, no block id. */
  CONTINUE = 0x20,
  /** Block id + u8 ENCODING_FLAG_XBZRLE + be16 len + delta. */
  XBZRLE = 0x40,
  /** RDMA only (7.2 qemu-file.h RAM_SAVE_FLAG_HOOK); never in files. */
  HOOK = 0x80,
  /** Capability compress (removed in 9.1): block id + be32 len + zlib stream. */
  COMPRESS_PAGE = 0x100,
  /** Multifd sync point (10.x): no payload. */
  MULTIFD_FLUSH = 0x200,
}
/** All flag bits QEMU defines; anything else in the low bits is an error. */
export const RAM_FLAGS_KNOWN = 0x3ff;
/** ENCODING_FLAG_XBZRLE (migration/ram.c): the byte after an XBZRLE record's block id. */
export const XBZRLE_ENCODING_FLAG = 0x01;
/** MappedRamHeader after each MEM_SIZE entry with mapped-ram (§6.7): be32 + 3 x be64. */
export const MAPPED_RAM_HEADER_BYTES = 4 + 8 + 8 + 8;
/** The mapped-ram header version QEMU 9.0 to 10.2 write and accept (loads refuse a newer one). */
export const MAPPED_RAM_VERSION = 1;
/** QEMU puts each block's pages at a file offset that is a multiple of this (§6.7). */
export const MAPPED_RAM_ALIGNMENT = 1 << 20;

// ---- VFIO markers (§9.1; hw/vfio/migration.c 7.2, vfio-migration-internal.h 10.2) ----
export const VFIO_MIG_FLAG_END_OF_STATE = 0xffffffffef100001n;
export const VFIO_MIG_FLAG_DEV_CONFIG_STATE = 0xffffffffef100002n;
export const VFIO_MIG_FLAG_DEV_SETUP_STATE = 0xffffffffef100003n;
export const VFIO_MIG_FLAG_DEV_DATA_STATE = 0xffffffffef100004n;
/** 8.1+ (switchover-ack): ends a PART chunk instead of END_OF_STATE. */
export const VFIO_MIG_FLAG_DEV_INIT_DATA_SENT = 0xffffffffef100005n;
/** 10.1+ multifd with load-config-after-iter: the only content of the FULL chunk. */
export const VFIO_MIG_FLAG_DEV_CONFIG_LOAD_READY = 0xffffffffef100006n;

export type VfioMarkerName = 'END_OF_STATE' | 'DEV_CONFIG_STATE' | 'DEV_SETUP_STATE' | 'DEV_DATA_STATE' | 'DEV_INIT_DATA_SENT' | 'DEV_CONFIG_LOAD_READY';

export const VFIO_MARKERS: Readonly<Record<VfioMarkerName, bigint>> = {
  END_OF_STATE: VFIO_MIG_FLAG_END_OF_STATE,
  DEV_CONFIG_STATE: VFIO_MIG_FLAG_DEV_CONFIG_STATE,
  DEV_SETUP_STATE: VFIO_MIG_FLAG_DEV_SETUP_STATE,
  DEV_DATA_STATE: VFIO_MIG_FLAG_DEV_DATA_STATE,
  DEV_INIT_DATA_SENT: VFIO_MIG_FLAG_DEV_INIT_DATA_SENT,
  DEV_CONFIG_LOAD_READY: VFIO_MIG_FLAG_DEV_CONFIG_LOAD_READY,
};

export function vfioMarkerName(value: bigint): VfioMarkerName | undefined {
  for (const [name, v] of Object.entries(VFIO_MARKERS)) if (v === value) return name as VfioMarkerName;
  return undefined;
}

/** A VFIO section's idstr is "<qdev id>/vfio", or "vfio" without an id (§9.1). */
export function isVfioIdstr(idstr: string): boolean {
  return idstr === 'vfio' || idstr.endsWith('/vfio');
}
/** VFIO sections: instance 0 (VMSTATE_INSTANCE_ID_ANY resolves to 0), version 1 (§9.1). */
export const VFIO_SECTION_VERSION = 1;

// ---- VFIOPCIDevice config vmstate (§9.2; hw/vfio/pci.c vmstate_vfio_pci_config) ----
/** PCI_CONFIG_SPACE_SIZE and PCIE_CONFIG_SPACE_SIZE (include/hw/pci/pci.h). */
export const PCI_CONFIG_SPACE_SIZE = 256;
export const PCIE_CONFIG_SPACE_SIZE = 4096;
/** int32 version_id at the start of the PCIDevice vmstate. */
export const PCI_DEVICE_VERSION_BYTES = 4;
/** "pci irq state": PCI_NUM_PINS (4) x be32. */
export const PCI_IRQ_STATE_BYTES = 16;
/** PCI capability ids / MSI-X layout (include/standard-headers/linux/pci_regs.h). */
export const PCI_CAPABILITY_LIST = 0x34;
export const PCI_STATUS = 0x06;
export const PCI_STATUS_CAP_LIST = 0x10;
export const PCI_CAP_ID_MSIX = 0x11;
export const PCI_MSIX_FLAGS_QSIZE = 0x07ff;
/** PCI_MSIX_ENTRY_SIZE: bytes per MSI-X table entry; PBA is one bit per vector in be64 words. */
export const PCI_MSIX_ENTRY_SIZE = 16;

// ---- vmstate encodings (§7; migration/vmstate-types.c) ----
/** VMS_NULLPTR_MARKER: the byte written for a NULL pointer in an array of pointers. */
export const VMS_NULLPTR_MARKER = 0x30;
