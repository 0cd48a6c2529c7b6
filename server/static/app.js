// roomcast browser client: plain JavaScript, no build step, no external resources.
// Every piece of text that came from the network is rendered with textContent, never as HTML.
"use strict";

(() => {
  // Limits mirror the server's defaults; the server stays the authority and refuses longer input.
  const MAX_TEXT_LENGTH = 4000;
  const MAX_USERNAME_LENGTH = 32;
  const MAX_ROOM_LENGTH = 64;
  const DEFAULT_ROOM = "general";
  const MAX_LINES = 1000; // oldest lines are dropped beyond this, so a long session stays light
  const WS_PATH = "/ws"; // the server accepts the upgrade on any path
  const RETRY_FIRST_MS = 500; // first retry waits 250-500 ms
  const RETRY_CAP_MS = 5000;
  const TOKEN_EXPIRED = 4001; // close code: the JWT this connection was opened with expired
  const BOTTOM_SLACK_PX = 40; // "at the bottom" tolerance for auto-scroll

  const $ = (id) => document.getElementById(id);
  const ui = {
    app: $("app"),
    status: $("status"),
    roomName: $("room-name"),
    joinForm: $("join-form"),
    username: $("username"),
    room: $("room"),
    join: $("join"),
    messages: $("messages"),
    jump: $("jump"),
    members: $("members"),
    memberCount: $("member-count"),
    membersMore: $("members-more"),
    composer: $("composer"),
    input: $("input"),
    counter: $("counter"),
    send: $("send"),
  };

  const params = new URLSearchParams(location.search);
  const token = params.get("token");

  let ws = null;
  let online = false;
  let attempt = 0; // consecutive failed connection attempts
  let retryTimer = null;
  let everConnected = false;
  let wanted = null; // {room, username} we asked for; re-sent after every reconnect
  let current = null; // {room, username} the server confirmed
  const members = new Map(); // username -> how many connections use it
  let memberTotal = 0; // the server's true count (the users list may be capped)

  // ---------- connection ----------

  function socketUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let url = `${scheme}//${location.host}${WS_PATH}`;
    if (token) url += `?token=${encodeURIComponent(token)}`;
    return url;
  }

  function setStatus(state, text) {
    ui.status.dataset.state = state;
    ui.status.textContent = text;
    refreshControls();
  }

  function connect() {
    clearTimeout(retryTimer);
    retryTimer = null;
    setStatus(everConnected ? "reconnecting" : "connecting",
      everConnected ? "Reconnecting…" : "Connecting…");
    let sock;
    try {
      sock = new WebSocket(socketUrl());
    } catch (err) {
      addLine("error", `Cannot open the connection: ${err.message}`);
      scheduleReconnect();
      return;
    }
    ws = sock;
    sock.onopen = () => {
      if (ws !== sock) return;
      online = true;
      attempt = 0;
      if (everConnected) addLine("system", "Reconnected.");
      everConnected = true;
      setStatus("online", "Online");
      if (wanted) sendJoin(wanted);
    };
    sock.onmessage = (event) => {
      if (ws !== sock) return;
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        return; // the server only sends JSON text; ignore anything else
      }
      if (msg && typeof msg === "object") handle(msg);
    };
    sock.onclose = (event) => {
      if (ws !== sock) return;
      ws = null;
      const wasOnline = online;
      online = false;
      current = null;
      // The member list is rebuilt from the server's answer to the rejoin, never kept stale.
      members.clear();
      memberTotal = 0;
      renderMembers();
      showRoom();
      if (event.code === TOKEN_EXPIRED) {
        // Reconnecting with the same token would only be refused: stop and say what to do.
        setStatus("expired", "Signed out");
        addLine("error", "Your sign-in token has expired: reload the page with a new token.");
        return;
      }
      if (wasOnline) {
        const why = { 1001: " (server going away)", 1012: " (server restarting)" }[event.code] || "";
        addLine("system", `Connection lost${why}; reconnecting…`);
      }
      scheduleReconnect();
    };
    // onerror is always followed by onclose, which does the work.
  }

  function scheduleReconnect() {
    if (retryTimer !== null) return;
    // Exponential backoff with jitter: the delay is drawn from [ceiling/2, ceiling].
    const ceiling = Math.min(RETRY_CAP_MS, RETRY_FIRST_MS * 2 ** attempt);
    const delay = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
    attempt += 1;
    setStatus(everConnected ? "reconnecting" : "connecting",
      `${everConnected ? "Reconnecting" : "Connecting"} in ${(delay / 1000).toFixed(1)} s…`);
    retryTimer = setTimeout(() => {
      retryTimer = null;
      connect();
    }, delay);
  }

  function sendFrame(obj) {
    if (!ws || !online) return false;
    ws.send(JSON.stringify(obj));
    return true;
  }

  function sendJoin(target) {
    sendFrame({ type: "join", room: target.room, username: target.username });
  }

  // ---------- incoming messages ----------

  function handle(msg) {
    switch (msg.type) {
      case "chat":
        addChat(msg);
        break;
      case "system":
        handleSystem(msg);
        break;
      case "error":
        handleError(msg);
        break;
      default:
        break; // unknown types from a newer server are ignored
    }
  }

  function handleSystem(msg) {
    const room = typeof msg.room === "string" ? msg.room : null;
    if (msg.event === "join" && Array.isArray(msg.users)) {
      // Only the joiner's own copy carries `users`: this confirms our join.
      current = { room, username: typeof msg.username === "string" ? msg.username : "" };
      members.clear();
      for (const name of msg.users) {
        if (typeof name === "string") members.set(name, (members.get(name) || 0) + 1);
      }
      memberTotal = Number.isFinite(msg.count) ? msg.count : msg.users.length;
      showRoom();
    } else if (current && room === current.room && typeof msg.username === "string") {
      if (msg.event === "join") {
        members.set(msg.username, (members.get(msg.username) || 0) + 1);
      } else if (msg.event === "leave") {
        const left = (members.get(msg.username) || 0) - 1;
        if (left > 0) members.set(msg.username, left);
        else members.delete(msg.username);
      }
      if (Number.isFinite(msg.count)) memberTotal = msg.count;
    }
    renderMembers();
    addLine("system", typeof msg.text === "string" ? msg.text : "", msg.timestamp);
  }

  function handleError(msg) {
    const code = typeof msg.code === "string" ? msg.code : "error";
    let text = typeof msg.text === "string" && msg.text ? msg.text : code;
    if (code === "rate_limited" && Number.isFinite(msg.retry_after_ms)) {
      text += ` (try again in ${Math.ceil(msg.retry_after_ms / 1000)} s)`;
    }
    if (code === "invalid_username" || code === "invalid_room") {
      // A refused join must not be retried on every reconnect.
      wanted = current;
    }
    const line = addLine("error", text);
    line.dataset.code = code;
  }

  // ---------- rendering ----------

  function atBottom() {
    const m = ui.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight <= BOTTOM_SLACK_PX;
  }

  function append(li) {
    const stick = atBottom();
    ui.messages.appendChild(li);
    while (ui.messages.childElementCount > MAX_LINES) ui.messages.firstElementChild.remove();
    if (stick) {
      ui.messages.scrollTop = ui.messages.scrollHeight;
    } else {
      ui.jump.hidden = false; // the reader scrolled up: do not yank the view, offer a jump
    }
  }

  function timeElement(timestamp) {
    const date = Number.isFinite(timestamp) ? new Date(timestamp) : new Date();
    const el = document.createElement("time");
    el.className = "time";
    el.dateTime = date.toISOString();
    el.title = date.toLocaleString();
    el.textContent = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return el;
  }

  function addChat(msg) {
    const li = document.createElement("li");
    li.className = "line chat";
    const sender = typeof msg.username === "string" ? msg.username : "?";
    if (current && sender === current.username) li.classList.add("own");
    const who = document.createElement("span");
    who.className = "sender";
    who.textContent = sender;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = typeof msg.text === "string" ? msg.text : "";
    li.append(timeElement(msg.timestamp), who, text);
    append(li);
  }

  function addLine(kind, text, timestamp) {
    const li = document.createElement("li");
    li.className = `line ${kind}`;
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = kind === "error" ? `⚠ ${text}` : text;
    li.append(timeElement(timestamp), body);
    append(li);
    return li;
  }

  function renderMembers() {
    const names = [...members.keys()].sort((a, b) => a.localeCompare(b));
    const items = names.map((name) => {
      const li = document.createElement("li");
      li.className = "member";
      li.dataset.username = name;
      const label = document.createElement("span");
      label.className = "member-name";
      label.textContent = name;
      li.append(label);
      const n = members.get(name);
      if (n > 1) {
        const times = document.createElement("span");
        times.className = "member-times";
        times.textContent = `×${n}`;
        li.append(times);
      }
      if (current && name === current.username) li.classList.add("me");
      return li;
    });
    ui.members.replaceChildren(...items);
    let known = 0;
    for (const n of members.values()) known += n;
    const total = Math.max(memberTotal, known);
    ui.memberCount.textContent = String(total);
    const more = total - known;
    ui.membersMore.hidden = more <= 0;
    ui.membersMore.textContent = more > 0 ? `and ${more} more` : "";
  }

  function showRoom() {
    ui.app.dataset.joined = String(Boolean(current));
    const shown = current || wanted; // while reconnecting, the room we are going back to
    ui.roomName.textContent = shown ? `#${shown.room}` : "";
    document.title = shown ? `#${shown.room} · roomcast` : "roomcast";
    refreshControls();
  }

  function ready() {
    return online && current !== null;
  }

  function refreshControls() {
    // The input stays usable while reconnecting so a half-typed message is not lost;
    // only sending waits for the connection.
    ui.input.disabled = wanted === null && current === null;
    ui.input.placeholder = ready() ? `Message #${current.room}` : (
      wanted ? "Waiting for the connection…" : "Join a room to chat");
    updateCounter();
  }

  function updateCounter() {
    const used = ui.input.value.length;
    ui.counter.textContent = `${used} / ${MAX_TEXT_LENGTH}`;
    ui.counter.dataset.level = used >= MAX_TEXT_LENGTH ? "full"
      : used >= MAX_TEXT_LENGTH * 0.9 ? "near" : "ok";
    ui.send.disabled = !ready() || ui.input.value.trim() === "";
  }

  // ---------- user actions ----------

  function join(event) {
    event.preventDefault();
    const username = ui.username.value.trim() || "Anonymous";
    const room = ui.room.value.trim() || DEFAULT_ROOM;
    ui.username.value = username;
    ui.room.value = room;
    wanted = { room, username };
    try {
      localStorage.setItem("roomcast.username", username);
    } catch {
      // storage may be unavailable (private mode); remembering the name is only a convenience
    }
    const url = new URL(location.href);
    url.searchParams.set("room", room);
    history.replaceState(null, "", url);
    if (online) sendJoin(wanted);
    refreshControls();
    ui.input.focus();
  }

  function sendMessage(event) {
    if (event) event.preventDefault();
    const text = ui.input.value;
    if (text.trim() === "" || !ready()) return;
    if (text.length > MAX_TEXT_LENGTH) return;
    if (sendFrame({ type: "chat", text })) {
      ui.input.value = "";
      updateCounter();
    }
  }

  function onInputKey(event) {
    // Enter sends; Shift+Enter makes a new line; never send in the middle of IME composition.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendMessage();
    }
  }

  // ---------- start ----------

  ui.input.maxLength = MAX_TEXT_LENGTH;
  ui.username.maxLength = MAX_USERNAME_LENGTH;
  ui.room.maxLength = MAX_ROOM_LENGTH;
  const presetRoom = params.get("room");
  if (presetRoom) ui.room.value = presetRoom.slice(0, MAX_ROOM_LENGTH);
  try {
    const saved = localStorage.getItem("roomcast.username");
    if (saved && !ui.username.value) ui.username.value = saved;
  } catch {
    // no storage: the user types a name
  }

  ui.joinForm.addEventListener("submit", join);
  ui.composer.addEventListener("submit", sendMessage);
  ui.input.addEventListener("keydown", onInputKey);
  ui.input.addEventListener("input", updateCounter);
  ui.messages.addEventListener("scroll", () => {
    if (atBottom()) ui.jump.hidden = true;
  });
  ui.jump.addEventListener("click", () => {
    ui.messages.scrollTop = ui.messages.scrollHeight;
    ui.jump.hidden = true;
  });
  window.addEventListener("online", () => {
    if (!ws && retryTimer !== null) {
      attempt = 0;
      connect();
    }
  });

  renderMembers();
  refreshControls();
  connect();
})();
