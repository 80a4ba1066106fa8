// Types of rooms.js, the fastapi-rooms JavaScript client.

export interface MessageEvent<T = unknown> {
  type: "message";
  room: string;
  from: string | null;
  data: T;
  /** Its place in the room's history (rooms with history only). */
  offset?: number;
}

export interface JoinedEvent {
  type: "joined";
  room: string;
  offset?: number;
  epoch?: string;
  recovered?: boolean;
}

export interface ErrorEvent {
  type: "error";
  code: string;
  message: string;
  errors?: { loc: (string | number)[]; msg: string; type: string }[];
}

/** The server drains: the client reconnects after `reconnect_after_ms` by itself. */
export interface ShutdownEvent {
  type: "shutdown";
  reconnect_after_ms: number;
  code: number;
  reason: string;
}

export interface PresenceEntry {
  user_id: string | null;
  meta: unknown;
}

export interface RoomsClientOptions {
  /** Sent as the `token` query parameter. */
  token?: string;
  /** Milliseconds: the ceiling of the first wait before a reconnect (default 500). */
  backoff?: number;
  /** Milliseconds: the longest wait before a reconnect (default 30000). */
  maxBackoff?: number;
  /** Milliseconds between application pings; 0 for none (default 20000). */
  pingInterval?: number;
  /** Publishes kept while disconnected and sent after the rejoin (default 0: publish throws). */
  offlineQueue?: number;
  /** A room's history could not cover the gap: reload its state from the app. */
  onReload?: (room: string) => void;
  /** Error events that answer no join. */
  onError?: (event: ErrorEvent) => void;
  /** "server draining": a shutdown event came; the client reconnects after the server's delay. */
  onStatus?: (status: "connected" | "disconnected" | "server draining") => void;
  /** Frames that are not the protocol's: what the app broadcast itself (parsed JSON, or text). */
  onOther?: (event: unknown) => void;
  /** The WebSocket class (default: globalThis.WebSocket). */
  WebSocket?: typeof WebSocket;
}

export class JoinError extends Error {
  room: string;
  code: string;
}

export class RoomsClient {
  constructor(url: string, options?: RoomsClientOptions);
  readonly url: string;
  readonly connected: boolean;
  connectionId: string | null;
  /** How many times a connection was opened. */
  connects: number;
  connect(): Promise<void>;
  close(): void;
  join<T = unknown>(
    room: string,
    onMessage?: ((event: MessageEvent<T>) => void) | null,
    options?: { meta?: unknown },
  ): Promise<JoinedEvent>;
  leave(room: string): void;
  publish(room: string, data: unknown, options?: { excludeSelf?: boolean }): void;
  position(room: string): { offset: number; epoch: string } | null;
  presence(room: string): Map<string, PresenceEntry>;
}
