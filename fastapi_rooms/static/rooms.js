// fastapi-rooms JavaScript client: one dependency-free ES module (browsers, Node >= 20).
//
//   import { RoomsClient } from "/client.js";
//   const client = new RoomsClient("ws://127.0.0.1:8000/ws", { token });
//   await client.connect();
//   await client.join("chat:lobby", (event) => console.log(event.data));
//   client.publish("chat:lobby", { text: "hi" });
//
// It reconnects after a lost connection (exponential backoff with full jitter), rejoins every
// room with the last offset it saw and delivers each message once: replayed ones after a
// recovery, duplicates dropped. onReload(room) is called when a room's history could not cover
// the gap ("recovered": false): reload that room's state from the app.

const JOIN_REFUSALS = new Set(["forbidden", "room_full", "too_many_rooms", "unknown_namespace"]);
const STABLE_MS = 10000; // a connection that held this long starts the backoff over

export class JoinError extends Error {
  constructor(room, code, message) {
    super(`join ${JSON.stringify(room)} refused (${code}): ${message}`);
    this.room = room;
    this.code = code;
  }
}

export class RoomsClient {
  constructor(url, options = {}) {
    const target = new URL(url, typeof location === "undefined" ? undefined : location.href);
    if (target.protocol === "http:") target.protocol = "ws:";
    if (target.protocol === "https:") target.protocol = "wss:";
    if (options.token != null) target.searchParams.set("token", options.token);
    this.url = target.toString();
    this.backoff = options.backoff ?? 500; // ms: the first wait's ceiling
    this.maxBackoff = options.maxBackoff ?? 30000; // ms: the longest wait
    this.pingInterval = options.pingInterval ?? 20000; // ms; 0: no application pings
    this.offlineQueue = options.offlineQueue ?? 0; // publishes kept while disconnected
    this.onReload = options.onReload ?? null; // (room) => void
    this.onError = options.onError ?? null; // (event) => void, errors that answer no join
    this.onStatus = options.onStatus ?? null; // ("connected" | "disconnected") => void
    this.onOther = options.onOther ?? null; // (event or text) => void: what the app sent itself
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.connectionId = null;
    this.connects = 0;
    this.rooms = new Map(); // room -> { onMessage, meta, offset, epoch, presence }
    this._socket = null;
    this._pending = []; // [room, resolve, reject], in the order the joins were sent
    this._queue = [];
    this._attempt = 0;
    this._nextDelay = null; // set by a "shutdown" event: the server's reconnect delay, ms
    this._opened = 0;
    this._live = false; // welcomed, every room rejoined, the offline queue sent
    this._closing = false;
    this._ready = null;
    this._readyResolve = null;
    this._timer = null;
    this._resetReady();
  }

  get connected() {
    return this._socket !== null && this._live;
  }

  connect() {
    this._closing = false;
    if (this._socket === null && this._timer === null) this._nextDelay = null;
    if (this._socket === null && this._timer === null) this._open();
    return this._ready;
  }

  close() {
    this._closing = true;
    this._nextDelay = null;
    clearTimeout(this._timer);
    this._timer = null;
    if (this._socket) this._socket.close(1000);
  }

  async join(room, onMessage = null, { meta = null } = {}) {
    this.rooms.set(room, { onMessage, meta, offset: null, epoch: null, presence: new Map() });
    try {
      return await this._join(room);
    } catch (error) {
      this.rooms.delete(room);
      throw error;
    }
  }

  leave(room) {
    this.rooms.delete(room);
    for (const entry of this._pending.filter(([name]) => name === room)) {
      this._pending.splice(this._pending.indexOf(entry), 1);
      entry[2](new Error(`left ${JSON.stringify(room)} before it was joined`));
    }
    if (this.connected) this._send({ type: "leave", room });
  }

  publish(room, data, { excludeSelf = false } = {}) {
    const text = JSON.stringify({ type: "publish", room, data, exclude_self: excludeSelf });
    if (this.connected) this._socket.send(text);
    else if (this._queue.length < this.offlineQueue) this._queue.push(text);
    else throw new Error("not connected, and the offline queue is full (or off)");
  }

  position(room) {
    const state = this.rooms.get(room);
    return state && state.offset !== null ? { offset: state.offset, epoch: state.epoch } : null;
  }

  presence(room) {
    const state = this.rooms.get(room);
    return state ? new Map(state.presence) : new Map();
  }

  // Internals ---------------------------------------------------------------------------------

  _resetReady() {
    this._ready = new Promise((resolve) => (this._readyResolve = resolve));
  }

  async _join(room) {
    if (this._closing) throw new Error("the client is closed");
    await this._ready;
    const state = this.rooms.get(room);
    if (!state) throw new Error(`left ${JSON.stringify(room)} before it was joined`);
    const request = { type: "join", room };
    if (state.meta !== null) request.meta = state.meta;
    if (state.offset !== null) request.since = { offset: state.offset, epoch: state.epoch };
    return new Promise((resolve, reject) => {
      this._pending.push([room, resolve, reject]);
      this._send(request);
    });
  }

  _send(message) {
    this._socket.send(JSON.stringify(message));
  }

  _open() {
    this._timer = null;
    const socket = new this.WebSocket(this.url);
    this._socket = socket;
    let welcomed = false;
    socket.onmessage = (message) => {
      if (socket !== this._socket) return; // an old socket's last words
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        if (this.onOther) this.onOther(message.data); // not JSON: the app's own text
        return;
      }
      if (event === null || typeof event !== "object") {
        if (this.onOther) this.onOther(event);
      } else if (!welcomed && event.type === "welcome") {
        welcomed = true;
        this._welcome(event, socket);
      } else {
        this._dispatch(event);
      }
    };
    socket.onclose = () => this._lost(socket);
    socket.onerror = () => {}; // onclose follows
  }

  async _welcome(event, socket) {
    this.connectionId = event.connection_id;
    this.connects += 1;
    this._opened = Date.now();
    const resolve = this._readyResolve;
    this._readyResolve = null;
    resolve();
    clearInterval(this._pinger);
    if (this.pingInterval) {
      this._pinger = setInterval(() => this.connected && this._send({ type: "ping" }), this.pingInterval);
    }
    for (const room of [...this.rooms.keys()]) {
      if (!this.rooms.has(room)) continue;
      try {
        await this._join(room);
      } catch (error) {
        if (error instanceof JoinError) this.rooms.delete(room);
        else if (socket !== this._socket) return; // the connection went away again
      }
    }
    if (socket !== this._socket) return;
    const queued = this._queue.splice(0);
    for (const text of queued) socket.send(text);
    this._live = true;
    if (this.onStatus) this.onStatus("connected");
  }

  _lost(socket) {
    if (socket !== this._socket) return;
    clearInterval(this._pinger);
    this._socket = null;
    this._live = false;
    if (this._readyResolve === null) this._resetReady();
    for (const [, , reject] of this._pending.splice(0)) reject(new Error("connection lost"));
    if (this.onStatus) this.onStatus("disconnected");
    if (this._closing) return;
    if (this._opened && Date.now() - this._opened > STABLE_MS) this._attempt = 0;
    this._opened = 0;
    let wait = this._nextDelay;
    this._nextDelay = null;
    if (wait === null) {
      const step = Math.min(this.maxBackoff, this.backoff * 2 ** this._attempt);
      this._attempt += 1;
      wait = this._delay(step);
    }
    this._timer = setTimeout(() => this._open(), wait);
  }

  _delay(step) {
    return Math.random() * step; // full jitter
  }

  _dispatch(event) {
    const state = typeof event.room === "string" ? this.rooms.get(event.room) : undefined;
    if (event.type === "message" && state) {
      if (Number.isInteger(event.offset)) {
        if (state.offset !== null && event.offset <= state.offset) return; // seen already
        state.offset = event.offset;
      }
      if (state.onMessage) state.onMessage(event);
    } else if (event.type === "joined" && state) {
      if (typeof event.epoch === "string") {
        if (event.recovered === false && state.offset !== null && this.onReload) {
          try {
            this.onReload(event.room);
          } catch (error) {
            console.error("onReload failed", error);
          }
        }
        if (event.recovered !== true) {
          state.offset = event.offset ?? 0;
          state.epoch = event.epoch;
        }
      }
      if (this._pending.length && this._pending[0][0] === event.room) this._pending.shift()[1](event);
    } else if (event.type === "shutdown") {
      // the server drains: come back after its (randomised) delay, to another node
      this._nextDelay = Math.max(0, Number(event.reconnect_after_ms) || 0);
      if (this.onStatus) this.onStatus("server draining");
      if (this._socket) this._socket.close(1000);
    } else if (event.type === "presence" && state) {
      if (event.event === "join") {
        state.presence.set(event.connection_id, { user_id: event.user_id, meta: event.meta });
      } else {
        state.presence.delete(event.connection_id);
      }
    } else if (event.type === "error") {
      if (JOIN_REFUSALS.has(event.code) && this._pending.length) {
        const [room, , reject] = this._pending.shift();
        reject(new JoinError(room, event.code, event.message));
        return;
      }
      if (this.onError) this.onError(event);
    } else if (!["message", "joined", "presence", "left", "pong"].includes(event.type)) {
      if (this.onOther) this.onOther(event); // not the protocol's: the app's own broadcast
    }
  }
}
