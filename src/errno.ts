// The errno values migbridge names, in one table (Linux, asm-generic/errno-base.h and
// errno.h: the same numbers on every architecture Node runs migbridge on), their names for
// any number, and what an errno means when a data_fd read or write returns it
// (docs/vfio-migration.md §5).
import { constants as osConstants } from 'node:os';

export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EFAULT: 14,
  EBUSY: 16,
  ENODEV: 19,
  EINVAL: 22,
  EMFILE: 24,
  ENOTTY: 25,
  ENOSPC: 28,
  ESPIPE: 29,
  EPIPE: 32,
  ENOMSG: 42,
  ETIME: 62,
  EBADFD: 77,
  ETIMEDOUT: 110,
  ECANCELED: 125,
} as const;

export type ErrnoName = keyof typeof Errno;

const names: Map<number, string> = new Map(Object.entries(osConstants.errno).map(([name, num]) => [num, name]));

/** Name of an errno number as the kernel spells it (e.g. 22 -> "EINVAL"); "E<n>" when unknown. */
export function errnoName(errno: number): string {
  return names.get(errno) ?? `E${errno}`;
}

/** Errno number for a name (e.g. "EINVAL" -> 22); undefined when unknown. */
export function errnoNumber(name: string): number | undefined {
  return (osConstants.errno as Record<string, number>)[name];
}

/**
 * What a data_fd read or write failing with `errno` says about the device's data session:
 * ENOMSG, in PRE_COPY*, that the device has no more precopy data for now (like a read of 0);
 * ENODEV that the session ended (the device left the state the fd belongs to); EIO that the
 * device failed. Undefined for an errno with no protocol meaning.
 */
export function dataFdErrnoMeaning(errno: number): string | undefined {
  switch (errno) {
    case Errno.ENOMSG:
      return 'no more precopy data for now';
    case Errno.ENODEV:
      return 'the data session ended';
    case Errno.EIO:
      return 'the device failed';
    default:
      return undefined;
  }
}
