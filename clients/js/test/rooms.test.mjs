// Node's test runner against a real fastapi-rooms server: ROOMS_URL is its ready endpoint
// (tests/test_js_client.py starts tests/apps/namespace_app.py and runs this file).
import assert from "node:assert/strict";
import { test } from "node:test";

import { JoinError, RoomsClient } from "../rooms.js";

const URL_ = process.env.ROOMS_URL;
const WAIT = 10000;

function uid() {
  return Math.random().toString(16).slice(2, 10);
}

/** Reconnects only when the test says so: what happens while it is away is known. */
class GatedClient extends RoomsClient {
  constructor(url, options) {
    super(url, options);
    this.away = new Promise((resolve) => (this._wentAway = resolve));
  }
  _delay() {
    this._wentAway();
    return 2 ** 31 - 1;
  }
  reconnectNow() {
    clearTimeout(this._timer);
    this._open();
  }
}

/** Collects a room's messages; until(n) resolves once n arrived (or fails after WAIT). */
function inbox() {
  const events = [];
  const waiting = []; // [n, resolve]
  const collect = (event) => {
    events.push(event);
    for (const entry of waiting.filter(([n]) => events.length >= n)) {
      waiting.splice(waiting.indexOf(entry), 1);
      entry[1](events);
    }
  };
  collect.events = events;
  collect.until = (n) => {
    if (events.length >= n) return Promise.resolve(events);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`only ${events.length} of ${n} messages`)), WAIT);
      waiting.push([n, (value) => (clearTimeout(timer), resolve(value))]);
    });
  };
  return collect;
}

function client(user, Class = RoomsClient, options = {}) {
  return new Class(`${URL_}?user=${user}`, { pingInterval: 0, ...options });
}

test("join, publish, receive, presence and a refused join", async () => {
  const room = `chat:${uid()}`;
  const alice = client("alice");
  const bob = client("bob");
  await alice.connect();
  await bob.connect();
  try {
    const got = inbox();
    await alice.join(room, got);
    const joined = await bob.join(room, null, { meta: { color: "blue" } });
    assert.equal(joined.room, room);
    bob.publish(room, { text: "hi" });
    const [event] = await got.until(1);
    assert.deepEqual(event.data, { text: "hi", reply_to: null });
    assert.equal(event.from, bob.connectionId);
    assert.deepEqual(alice.presence(room).get(bob.connectionId), { user_id: "bob", meta: { color: "blue" } });
    const duo = `duo:${uid()}`;
    await alice.join(duo);
    await bob.join(duo);
    const carol = client("carol");
    await carol.connect();
    await assert.rejects(carol.join(duo), (error) => error instanceof JoinError && error.code === "room_full");
    assert.equal(carol.position(duo), null);
    carol.close();
  } finally {
    alice.close();
    bob.close();
  }
});

test("a dropped connection recovers every message once, in order", async () => {
  const room = `race:${uid()}`;
  const reloads = [];
  const alice = client("alice", GatedClient, { onReload: (r) => reloads.push(r) });
  const bob = client("bob");
  await alice.connect();
  await bob.connect();
  try {
    const got = inbox();
    await alice.join(room, got);
    await bob.join(room);
    for (let n = 0; n < 5; n++) bob.publish(room, n);
    await got.until(5);
    alice._socket.close();
    await alice.away;
    for (let n = 5; n < 25; n++) bob.publish(room, n);
    await bob.join(room); // a round trip: the server has handled bob's publishes
    alice.reconnectNow();
    await got.until(25);
    for (let n = 25; n < 30; n++) bob.publish(room, n);
    const events = await got.until(30);
    assert.deepEqual(events.map((e) => e.data), [...Array(30).keys()]);
    assert.deepEqual(events.map((e) => e.offset), [...Array(30).keys()].map((n) => n + 1));
    assert.equal(alice.connects, 2);
    assert.deepEqual(reloads, []);
  } finally {
    alice.close();
    bob.close();
  }
});

test("a gap the history cannot cover asks the app to reload", async () => {
  const room = `history:${uid()}`; // five messages kept
  let reloaded;
  const reload = new Promise((resolve) => (reloaded = resolve));
  const alice = client("alice", GatedClient, { onReload: reloaded });
  const bob = client("bob");
  await alice.connect();
  await bob.connect();
  try {
    const got = inbox();
    await alice.join(room, got);
    await bob.join(room);
    bob.publish(room, "before");
    await got.until(1);
    alice._socket.close();
    await alice.away;
    for (let n = 0; n < 8; n++) bob.publish(room, n);
    await bob.join(room);
    alice.reconnectNow();
    assert.equal(await reload, room);
    assert.equal(alice.position(room).offset, 9);
    bob.publish(room, "after");
    const events = await got.until(2);
    assert.deepEqual(events.map((e) => e.data), ["before", "after"]);
  } finally {
    alice.close();
    bob.close();
  }
});

test("publishing while disconnected queues up to offlineQueue, then throws", async () => {
  const room = `race:${uid()}`;
  const alice = client("alice", GatedClient, { offlineQueue: 2 });
  const bob = client("bob");
  await alice.connect();
  await bob.connect();
  try {
    const got = inbox();
    await alice.join(room);
    await bob.join(room, got);
    alice._socket.close();
    await alice.away;
    alice.publish(room, "queued 1");
    alice.publish(room, "queued 2");
    assert.throws(() => alice.publish(room, "one too many"), /offline queue is full/);
    alice.reconnectNow();
    const events = await got.until(2);
    assert.deepEqual(events.map((e) => e.data), ["queued 1", "queued 2"]);
  } finally {
    alice.close();
    bob.close();
  }
});

test("a shutdown event: reconnect after the server's delay, not after a backoff", async () => {
  // ROOMS_DRAIN_URL: a server of its own (draining is for good), REST open (test app)
  const base = process.env.ROOMS_DRAIN_URL;
  assert.ok(base, "ROOMS_DRAIN_URL is set by tests/test_js_client.py");
  const statuses = [];
  const drained = new RoomsClient(`${base.replace(/^http/, "ws")}/ws`, {
    pingInterval: 0,
    backoff: 600000, // a backoff would wait minutes
    onStatus: (status) => statuses.push(status),
  });
  await drained.connect();
  let reopened = null;
  const back = new Promise((resolve) => {
    drained._open = () => resolve((reopened = Date.now())); // record instead of reconnecting
  });
  const asked = Date.now();
  const response = await fetch(`${base}/drain`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ grace_seconds: 30, spread_seconds: 0.3 }),
  });
  assert.equal(response.status, 202);
  await Promise.race([back, new Promise((_, reject) => setTimeout(() => reject(new Error("no reconnect")), WAIT))]);
  assert.ok(reopened - asked < 3000, `reconnected after ${reopened - asked} ms`);
  assert.deepEqual(statuses.slice(-2), ["server draining", "disconnected"]);
  drained.close();
});
