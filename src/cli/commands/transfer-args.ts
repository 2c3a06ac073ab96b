// Option parsing shared by save, restore and demo.
import { UsageError } from '../../errors.js';
import type { SinkTarget } from '../../engine/sink.js';
import type { SourceTarget } from '../../engine/source.js';
import { parseEndpoint } from '../../util/endpoint.js';
import { parseSize } from '../../vfio/sim/spec.js';
import type { ParsedCommandArgs } from '../command.js';

export function stringList(args: ParsedCommandArgs, name: string): string[] {
  const v = args.values[name];
  if (v === undefined) return [];
  return (Array.isArray(v) ? v : [v]).map(String);
}

export function optionalString(args: ParsedCommandArgs, name: string): string | undefined {
  const v = args.values[name];
  return typeof v === 'string' ? v : undefined;
}

export function optionalNumber(args: ParsedCommandArgs, name: string): number | undefined {
  const v = optionalString(args, name);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new UsageError(`--${name} must be a non-negative number, got ${JSON.stringify(v)}`);
  return n;
}

/** A byte count: 4096, 64KiB, 2GiB (the units of the sim's size=). */
export function optionalSize(args: ParsedCommandArgs, name: string): number | undefined {
  const v = optionalString(args, name);
  return v === undefined ? undefined : parseSize(v, `--${name}`);
}

function fdNumber(v: string, name: string): number {
  if (!/^\d+$/.test(v)) throw new UsageError(`--${name} takes a file descriptor number, got ${JSON.stringify(v)}`);
  return Number(v);
}

/** Exactly one of -o FILE, --fd N, --to ENDPOINT (unix:, tcp:, fd:). */
export function sinkTarget(args: ParsedCommandArgs): SinkTarget {
  const file = optionalString(args, 'output-file');
  const fd = optionalString(args, 'fd');
  const to = optionalString(args, 'to');
  const given = [file, fd, to].filter((x) => x !== undefined).length;
  if (given !== 1) throw new UsageError('give exactly one of -o FILE, --fd N, --to ENDPOINT');
  if (file !== undefined) return { file };
  if (fd !== undefined) return { fd: fdNumber(fd, 'fd') };
  return { endpoint: parseEndpoint(to!, '--to', 'connect') };
}

/** Exactly one of -i FILE, --fd N, --from ENDPOINT (unix:, tcp:, fd:). */
export function sourceTarget(args: ParsedCommandArgs): SourceTarget {
  const file = optionalString(args, 'input');
  const fd = optionalString(args, 'fd');
  const from = optionalString(args, 'from');
  const given = [file, fd, from].filter((x) => x !== undefined).length;
  if (given !== 1) throw new UsageError('give exactly one of -i FILE, --fd N, --from ENDPOINT');
  if (file !== undefined) return { file };
  if (fd !== undefined) return { fd: fdNumber(fd, 'fd') };
  return { endpoint: parseEndpoint(from!, '--from', 'listen') };
}
