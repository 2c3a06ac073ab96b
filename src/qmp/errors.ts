// Typed QMP failures. `code` says which kind: EQMP_ERROR (QEMU answered with an error:
// its class and desc are kept), EQMP_TIMEOUT (no answer or event in time), EQMP_CLOSED
// (the monitor went away), EQMP_CONNECT, EQMP_PROTOCOL (not QMP), EQMP_FDPASS.
import { MigbridgeError } from '../errors.js';

export type QmpErrorCode = 'EQMP_ERROR' | 'EQMP_TIMEOUT' | 'EQMP_CLOSED' | 'EQMP_CONNECT' | 'EQMP_PROTOCOL' | 'EQMP_FDPASS';

export interface QmpErrorDetails {
  /** The monitor socket. */
  path: string;
  /** Which QEMU (e.g. "source", "destination"). */
  label: string;
  command?: string;
  /** QEMU's error class (e.g. "GenericError"), with EQMP_ERROR. */
  errorClass?: string;
  /** QEMU's error text, with EQMP_ERROR. */
  desc?: string;
  cause?: unknown;
}

export class QmpError extends MigbridgeError {
  declare readonly code: QmpErrorCode;
  readonly label: string;
  readonly command?: string;
  readonly errorClass?: string;
  readonly desc?: string;

  constructor(code: QmpErrorCode, message: string, details: QmpErrorDetails) {
    super(code, message, { path: details.path, ...(details.cause !== undefined ? { cause: details.cause } : {}) });
    this.label = details.label;
    if (details.command !== undefined) this.command = details.command;
    if (details.errorClass !== undefined) this.errorClass = details.errorClass;
    if (details.desc !== undefined) this.desc = details.desc;
  }

  override toJSON(): Record<string, unknown> {
    const out = super.toJSON();
    out.qemu = this.label;
    if (this.command !== undefined) out.command = this.command;
    if (this.errorClass !== undefined) out.errorClass = this.errorClass;
    if (this.desc !== undefined) out.desc = this.desc;
    return out;
  }
}
