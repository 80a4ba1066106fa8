// The chat page: plain JavaScript, no build step. It talks to the rooms router through the
// fastapi-rooms JavaScript client (served by the router at /api/client.js), which keeps the
// connection up, rejoins rooms after a reconnect and replays what was missed meanwhile.
// GET /api/room-list lists the rooms, POST /api/announce reaches every client.
import { RoomsClient } from "/api/client.js";

const $ = (id) => document.getElementById(id);

const state = {
  client: null,
  reconnects: 0,
  lost: new Set(), // rooms whose history could not cover a disconnection
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
  const joined = joinedRooms();
  for (const room of [...joined].sort()) {
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
  if (joined.has(previous)) target.value = previous;
  if (!joined.size) {
    const item = document.createElement("li");
    item.className = "empty";
    item.textContent = "no room yet";
    list.append(item);
  }
  const canSend = joined.size > 0;
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
    if (!state.client.rooms.has(room)) item.append(button("Join", () => join(room)));
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

function joinedRooms() {
  return new Set(state.client.rooms.keys());
}

function publish(room, data) {
  try {
    state.client.publish(room, data);
    return true;
  } catch (error) {
    system("not connected: message not sent", "error");
    return false;
  }
}

async function join(room) {
  if (!room || state.client.rooms.has(room)) return;
  try {
    await state.client.join(room, showMessage);
  } catch (error) {
    system(`join #${room}: ${error.message}`, "error");
    return;
  }
  renderJoined(room);
  publish(room, { name: myName(), event: "joined" });
  refreshRooms();
}

function leave(room) {
  publish(room, { name: myName(), event: "left" });
  state.client.leave(room);
  renderJoined();
  system(`you left #${room}`);
  refreshRooms();
}

function showMessage({ room, from, data }) {
  const isObject = data !== null && typeof data === "object";
  const who = isObject && typeof data.name === "string" ? data.name : String(from).slice(0, 8);
  if (isObject && (data.event === "joined" || data.event === "left")) {
    log([[`#${room}`, "room"], [`${who} ${data.event}`, null]], "system");
    return;
  }
  const text = isObject && typeof data.text === "string" ? data.text : JSON.stringify(data);
  const mine = from === state.client.connectionId ? " (you)" : "";
  log([[`#${room}`, "room"], [`${who}${mine}:`, "who"], [text, null]]);
}

function showOther(event) {
  if (event !== null && typeof event === "object" && event.type === "announcement") {
    log([["Announcement: ", "who"], [String(event.text), null]], "announcement");
  } else {
    system(typeof event === "string" ? event : JSON.stringify(event)); // the app's own broadcast
  }
}

function showStatus(status) {
  const client = state.client;
  if (status === "disconnected") {
    setStatus("disconnected, reconnecting…");
    return;
  }
  const who = `connected as ${client.connectionId.slice(0, 8)}`;
  if (client.connects > 1) {
    state.reconnects = client.connects - 1;
    const lost = [...state.lost].map((room) => `#${room}`).join(", ");
    const how = lost ? `history lost for ${lost}` : "nothing missed";
    setStatus(`${who}, reconnected (${state.reconnects}): ${how}`);
  } else {
    setStatus(who);
  }
  refreshRooms();
}

function connect() {
  state.client = new RoomsClient("/api/ws", {
    onStatus: showStatus,
    onOther: showOther,
    onError: (event) => system(`${event.code}: ${event.message}`, "error"),
    onReload: (room) => {
      state.lost.add(room);
      system(`#${room}: messages were missed and cannot be recovered`, "error");
    },
  });
  window.chat = state; // for the browser test and the curious
  setStatus("connecting…");
  state.client.connect();
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

  connect();
  renderJoined();
}

setUp();
