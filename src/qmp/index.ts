// QMP: the library's client for QEMU's monitor (commands, events, fd passing).
export { QmpClient, type QmpEvent, type QemuVersionInfo, type QmpConnectOptions, type QmpCommandOptions, type QmpWaitOptions } from './client.js';
export { QmpError, type QmpErrorCode, type QmpErrorDetails } from './errors.js';
