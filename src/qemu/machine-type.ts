// A machine type's QEMU release: versioned types (pc-i440fx-10.0, pc-q35-7.2, virt-9.1)
// exist from that release on, so an older QEMU has no such machine and refuses the stream.

/** major.minor of a versioned machine type; undefined for unversioned ones (pc, microvm, none). */
export function machineTypeRelease(machineType: string): { major: number; minor: number } | undefined {
  const m = /-(\d+)\.(\d+)$/.exec(machineType);
  return m ? { major: Number(m[1]), minor: Number(m[2]) } : undefined;
}
