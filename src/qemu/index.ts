// Public surface of the QEMU migration stream codec.
export * from './constants.js';
export { StreamError, type StreamErrorCode } from './errors.js';
export { Reader, Writer } from './bytes.js';
export { DEFAULT_LIMITS, type StreamLimits } from './context.js';
export type * from './records.js';
export { StreamDecoder, commandName, type DecoderOptions } from './decoder.js';
export { readStream, readStreamFile, probeStreamFile, type ByteSource, type FileReadOptions, type StreamFileInfo } from './reader.js';
export { encodeEvent, encodeEventInto } from './encode.js';
export {
  StreamWriter,
  writableSink,
  vfioVmDescEntry,
  buildVmDesc,
  type WriterSink,
  type ConfigurationOptions,
  type StreamWriterOptions,
} from './writer.js';
export { parseVmDesc, readTailVmDesc, VmDescIndex, type VmDesc, type VmDescDevice, type VmDescField, type VmDescStruct } from './vmdesc.js';
export { decodeVmstate, fullBodyBytes, type DumpValue } from './vmstate.js';
export { msixStateBytes, vfioConfigBodyBytes } from './vfio.js';
export { compressBound } from './ram.js';
export { extractStreamFile, type ExtractOptions, type ExtractResult, type ExtractManifest, type RamImage, type VfioExtractEntry } from './extract.js';
export { rewriteStreamFile, type RewriteOptions, type RewriteResult } from './rewrite.js';
export { injectDeviceData, type DeviceDataReplacement, type InjectedDevice } from './inject.js';
export {
  reframeStreamFile,
  parseQemuRelease,
  REFRAME_TARGETS,
  type QemuRelease,
  type ReframeOptions,
  type ReframeChange,
  type ReframeAction,
  type ReframeResult,
} from './reframe.js';
export { Inspector, inspectStreamFile, type InspectReport, type DataPhase } from './summary.js';
export { machineTypeRelease, sendsSwitchoverStart } from './machine-type.js';
