// Types shared by the proxy's main channel (proxy.ts) and its multifd channels
// (proxy-multifd.ts): what each side of a connection did, the first failure, and the live
// notes. In a file of their own so neither module imports the other for them.
import type { DecodeStop } from './proxy-decode.js';

export type ProxyNote =
  | { type: 'listening'; endpoint: string }
  | { type: 'connected'; side: 'source' | 'destination' }
  | { type: 'record'; offset: number; kind: string; idstr?: string; sectionId?: number; command?: string }
  | { type: 'vfio-section'; offset: number; kind: string; idstr: string; sectionId: number; dataBytes: number; chunks: number }
  | { type: 'decode-stopped'; stop: DecodeStop }
  | { type: 'closed'; side: 'source' | 'destination'; offset: number; how: SideResult['closed']; error?: string }
  | { type: 'progress'; forwardBytes: number; returnBytes: number; seconds: number; decodedRecords: number; multifdBytes: number }
  | { type: 'multifd-accepted'; connection: number }
  | { type: 'multifd-connected'; connection: number }
  | { type: 'multifd-channel'; connection: number; channel: number; uuid: string }
  | { type: 'multifd-closed'; connection: number; channel: number | null; side: 'source' | 'destination'; offset: number; how: SideResult['closed']; error?: string }
  | { type: 'multifd-decode-stopped'; connection: number; channel: number | null; stop: DecodeStop }
  | { type: 'rejected'; connection: number; firstBytes: string; reason: string };

export interface SideResult {
  /** 'fin': the peer closed its end; 'error': the connection failed (errno in `error`); 'closed-by-proxy': we closed it. */
  closed: 'fin' | 'error' | 'closed-by-proxy' | 'open';
  /** Forward-stream offset when it closed: bytes received from the source / handed to the destination. */
  offset: number;
  error: string | null;
}

export interface ProxyFailure {
  side: 'source' | 'destination' | 'stream';
  /** Forward-stream offset where it happened (on a multifd channel: that channel's offset). */
  offset: number;
  message: string;
  /** Set when it happened on a multifd channel: its id (null when its init packet was not seen). */
  channel?: number | null;
  /** With `channel`: the connection's accept order. */
  connection?: number;
}
