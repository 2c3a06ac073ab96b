// Package entry: the engine's save/restore at the top level, each layer as a namespace.
export * as fsm from './fsm/index.js';
export * as vfio from './vfio/index.js';
export * as qemu from './qemu/index.js';
export * as native from './native/index.js';
export { MigState, MigFlag } from './fsm/index.js';
export { openDevice, openDevices, type MigrationDevice } from './vfio/index.js';
export { save, type SaveOptions, type SaveReport, SaveRefusedError } from './engine/save.js';
export { restore, type RestoreOptions, type RestoreReport, RestoreFailedError } from './engine/restore.js';
export { openSink, type SinkTarget } from './engine/sink.js';
export { openEvents, type SourceTarget } from './engine/source.js';
export { runDemo, type DemoReport } from './engine/demo.js';
export { describeDevice, describeDevices, type DeviceDescription } from './engine/devices.js';
export { ioEnvironment, type IoEnvironment } from './engine/environment.js';
export type { ProgressCounter, ProgressSink } from './engine/progress.js';
export { MigbridgeError, SysError, UsageError } from './errors.js';
export { runCheck, formatCheckReport, type CheckReport, type CheckResult, type CheckOptions } from './check/index.js';
