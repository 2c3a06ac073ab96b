// `migbridge check`: the VFIO migration conformance suite as a library call (runCheck)
// and its report formatter (formatCheckReport).
export * from './types.js';
export { runCheck, DeviceInUseError } from './runner.js';
export { CheckInterruptedError } from './context.js';
export { formatCheckReport } from './report.js';
