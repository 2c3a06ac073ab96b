// A machine type's QEMU release: versioned types (pc-i440fx-10.0, pc-q35-7.2, virt-9.1)
// exist from that release on, so an older QEMU has no such machine and refuses the stream.

/** major.minor of a versioned machine type; undefined for unversioned ones (pc, microvm, none). */
export function machineTypeRelease(machineType: string): { major: number; minor: number } | undefined {
  const m = /-(\d+)\.(\d+)$/.exec(machineType);
  return m ? { major: Number(m[1]), minor: Number(m[2]) } : undefined;
}

/**
 * Whether QEMU sends COMMAND SWITCHOVER_START for a migration of this machine type. The
 * migration property send-switchover-start (new in QEMU 10.0) is on by default and turned
 * off by the 9.2 compat properties, so every versioned machine type up to 9.2 goes without
 * it; unversioned types (microvm, none) have no compat properties and get the default.
 * QEMU then writes it once, after the VM stopped and before the first END section.
 */
export function sendsSwitchoverStart(machineType: string): boolean {
  const r = machineTypeRelease(machineType);
  return r === undefined || r.major >= 10;
}
