"use strict";
// The chat page: plain JavaScript, no build step, no dependencies.
// It speaks the JSON protocol of the fastapi-rooms ready endpoint on /api/ws:
//   client -> server  {"type": "join" | "leave", "room": R}
//                     {"type": "publish", "room": R, "data": ANY}
//   server -> client  welcome, joined, left, message {room, from, data}, pong, error {code, message}
// plus whatever the app broadcasts itself (here: {"type": "announcement", "text": ...}).
// GET /api/room-list lists the rooms, POST /api/announce reaches every client.

const $ = (id) => document.getElementById(id);

const state = {
  socket: null,
  connectionId: null,
  joined: new Set(), // rooms the server confirmed for this connection
  wanted: new Set(), // rooms to join again after a reconnect
  attempts: 0,
};

// Rendering ----------------------------------------------------------------------------------

function setStatus(text) {
  $("status").textContent = text;
}

// One line in the log; every piece of text goes in with textContent, never as HTML.
function log(parts, className) {
  const list = $("log");
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  const item = document.createElement("li");
  if (className) item.className = className;
  for (const [text, cls] of parts) {
    const span = document.createElement("span");
    if (cls) span.className = cls;
    span.textContent = text;
    item.append(span);
  }
  list.append(item);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function system(text, className = "system") {
  log([[text, null]], className);
}

function button(label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

function renderJoined(select) {
  const list = $("joined");
  const target = $("target");
  const previous = select || target.value;
  list.replaceChildren();
  target.replaceChildren();
  for (const room of [...state.joined].sort()) {
    const item = document.createElement("li");
    const label = document.createElement("span");
    label.textContent = `#${room}`;
    item.append(label, button("Leave", () => leave(room)));
    list.append(item);
    const option = document.createElement("option");
    option.value = room;
    option.textContent = `#${room}`;
    target.append(option);
  }
  if (state.joined.has(previous)) target.value = previous;
  if (!state.joined.size) {
    const item = document.createElement("li");
    item.className = "empty";
    item.textContent = "no room yet";
    list.append(item);
  }
  const canSend = state.joined.size > 0;
  $("text").disabled = !canSend;
  $("send").disabled = !canSend;
  $("text").placeholder = canSend ? "Message" : "Join a room to chat";
}

async function refreshRooms() {
  let rooms = [];
  try {
    const response = await fetch("/api/room-list");
    rooms = await response.json();
  } catch (error) {
    return; // the server is away; the WebSocket status already says so
  }
  const list = $("server-rooms");
  list.replaceChildren();
  for (const { room, connections } of rooms) {
    const item = document.createElement("li");
    const label = document.createElement("span");
    label.textContent = `#${room} (${connections})`;
    item.append(label);
    if (!state.joined.has(room)) item.append(button("Join", () => join(room)));
    list.append(item);
  }
  if (!rooms.length) {
    const item = document.createElement("li");
    item.className = "empty";
    item.textContent = "no rooms";
    list.append(item);
  }
}

// Protocol -----------------------------------------------------------------------------------

function myName() {
  return $("name").value.trim() || "anonymous";
}

function send(message) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(JSON.stringify(message));
    return true;
  }
  system("not connected yet", "error");
  return false;
}

function publish(room, data) {
  return send({ type: "publish", room, data });
}

function join(room) {
  if (room && !state.joined.has(room)) send({ type: "join", room });
}

function leave(room) {
  state.wanted.delete(room);
  publish(room, { name: myName(), event: "left" });
  send({ type: "leave", room });
}

function showMessage({ room, from, data }) {
  const isObject = data !== null && typeof data === "object";
  const who = isObject && typeof data.name === "string" ? data.name : String(from).slice(0, 8);
  if (isObject && (data.event === "joined" || data.event === "left")) {
    log([[`#${room}`, "room"], [`${who} ${data.event}`, null]], "system");
    return;
  }
  const text = isObject && typeof data.text === "string" ? data.text : JSON.stringify(data);
  const mine = from === state.connectionId ? " (you)" : "";
  log([[`#${room}`, "room"], [`${who}${mine}:`, "who"], [text, null]]);
}

function handle(message) {
  switch (message.type) {
    case "welcome":
      state.connectionId = message.connection_id;
      state.attempts = 0;
      setStatus(`connected as ${message.connection_id.slice(0, 8)}`);
      for (const room of state.wanted) send({ type: "join", room });
      refreshRooms();
      break;
    case "joined":
      if (!state.joined.has(message.room)) {
        state.joined.add(message.room);
        state.wanted.add(message.room);
        renderJoined(message.room);
        publish(message.room, { name: myName(), event: "joined" });
      }
      refreshRooms();
      break;
    case "left":
      state.joined.delete(message.room);
      renderJoined();
      system(`you left #${message.room}`);
      refreshRooms();
      break;
    case "message":
      showMessage(message);
      break;
    case "announcement":
      log([["Announcement: ", "who"], [String(message.text), null]], "announcement");
      break;
    case "error":
      system(`${message.code}: ${message.message}`, "error");
      break;
    case "pong":
      break;
    default:
      system(JSON.stringify(message)); // something else the server broadcast
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}/api/ws`);
  state.socket = socket;
  setStatus("connecting…");
  socket.addEventListener("message", (event) => {
    if (typeof event.data !== "string") {
      system(`binary message of ${event.data.size} bytes`);
      return;
    }
    let message;
    try {
      message = JSON.parse(event.data);
    } catch (error) {
      system(event.data); // plain text, for example from POST /api/broadcast {"message": "hi"}
      return;
    }
    if (message !== null && typeof message === "object") handle(message);
    else system(event.data);
  });
  socket.addEventListener("close", (event) => {
    if (state.socket !== socket) return;
    state.connectionId = null;
    state.joined.clear();
    renderJoined();
    const delay = Math.min(10000, 500 * 2 ** state.attempts++);
    setStatus(`disconnected (code ${event.code}), retrying in ${Math.ceil(delay / 1000)} s`);
    setTimeout(connect, delay);
  });
}

// Forms --------------------------------------------------------------------------------------

function setUp() {
  let saved = null;
  try {
    saved = localStorage.getItem("fastapi-rooms-chat-name");
  } catch (error) {
    // storage disabled: a fresh name each time
  }
  $("name").value = saved || `guest-${Math.floor(1000 + Math.random() * 9000)}`;
  $("name").addEventListener("change", () => {
    try {
      localStorage.setItem("fastapi-rooms-chat-name", myName());
    } catch (error) {
      // storage disabled
    }
  });

  $("join-form").addEventListener("submit", (event) => {
    event.preventDefault();
    join($("room").value.trim());
    $("text").focus();
  });

  $("send-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("text").value.trim();
    const room = $("target").value;
    if (text && room && publish(room, { name: myName(), text })) $("text").value = "";
  });

  $("announce-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = $("announcement").value.trim();
    if (!text) return;
    try {
      const response = await fetch("/api/announce", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ text }),
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const { delivered } = await response.json();
      $("announcement").value = "";
      system(`announcement handed to ${delivered} connection(s)`);
    } catch (error) {
      system(`announce failed: ${error.message}`, "error");
    }
  });

  $("refresh").addEventListener("click", refreshRooms);
  setInterval(() => {
    if (!document.hidden) refreshRooms();
  }, 5000);

  renderJoined();
  connect();
}

setUp();
