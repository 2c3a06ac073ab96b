export * from './header.js';
export * from './errors.js';
export { domainFacts, type DomainFacts } from './domain-xml.js';
export { readLibvirtImageHeader, summarizeLibvirtImage, type LibvirtImageSummary } from './image.js';
export { libvirtStreamBytes, decompressCommand } from './stream-source.js';
export { libvirtVmDesc } from './vmdesc.js';
export { writeStreamOutput, rawImageHeaderFor } from './output.js';
