// roomcast browser client: plain JavaScript, no build step, no external resources.
// Every piece of text that came from the network is rendered with textContent or as text nodes,
// never as HTML; links in chat text become anchors built element by element.
//
// Layout of this file, so that later work has one place to go:
//   wire        - the only code that knows the wire format: frames out, dispatch in
//   outbox      - the chat this tab sent and is waiting for the server to settle
//   connection  - open, retry with backoff, give up when a retry cannot succeed
//   room state  - join, leave, members, typing, unread count
//   rendering   - message lines, links, members, controls
//   user actions and start-up
"use strict";

(() => {
  // Limits mirror the server's defaults; the server stays the authority and refuses longer input.
  const MAX_TEXT_LENGTH = 4000;
  const MAX_USERNAME_LENGTH = 32;
  const MAX_ROOM_LENGTH = 64;
  const DEFAULT_ROOM = "general";
  const MAX_LINES = 1000; // oldest lines are dropped beyond this, so a long session stays light
  const WS_PATH = "/ws"; // the server accepts the upgrade on any path
  const AUTH_CHECK_PATH = "/auth/check";
  const AUTH_CHECK_TIMEOUT_MS = 5000;
  const MAX_REASON_LENGTH = 200; // a refusal's reason is shown to the user: keep it short
  const RETRY_FIRST_MS = 500; // first retry waits 250-500 ms
  const RETRY_CAP_MS = 5000;
  const TOKEN_EXPIRED = 4001; // close code: the JWT this connection was opened with expired
  const BOTTOM_SLACK_PX = 40; // "at the bottom" tolerance for auto-scroll
  const TYPING_SEND_EVERY_MS = 2000; // at most one `typing` frame per this interval
  const TYPING_SHOW_MS = 4000; // "U is typing…" lasts this long after U's last typing event
  const NAME_KEY = "roomcast.username";
  // Errors that refuse a chat message (the message stays in the composer with the reason).
  const CHAT_REFUSALS = new Set([
    "rate_limited", "text_too_long", "empty_text", "not_in_room", "invalid_message",
  ]);
  // Errors that refuse a join: the join must not be retried on every reconnect.
  const JOIN_REFUSALS = new Set(["invalid_username", "invalid_room", "forbidden_room"]);

  const $ = (id) => document.getElementById(id);
  const ui = {
    app: $("app"),
    status: $("status"),
    roomName: $("room-name"),
    joinForm: $("join-form"),
    username: $("username"),
    room: $("room"),
    join: $("join"),
    leave: $("leave"),
    messages: $("messages"),
    jump: $("jump"),
    members: $("members"),
    memberCount: $("member-count"),
    membersMore: $("members-more"),
    typing: $("typing"),
    composer: $("composer"),
    input: $("input"),
    counter: $("counter"),
    send: $("send"),
    composerError: $("composer-error"),
  };

  const params = new URLSearchParams(location.search);
  const token = params.get("token");

  let ws = null;
  let online = false;
  let attempt = 0; // consecutive failed connection attempts
  let retryTimer = null;
  let everConnected = false;
  let stopped = false; // the page gave up: a retry could not succeed (token refused or expired)
  let wanted = null; // {room, username} we asked for; re-sent after every reconnect
  let current = null; // {room, username} the server confirmed
  const members = new Map(); // username -> how many connections use it
  let memberTotal = 0; // the server's true count (the users list may be capped)
  let pending = null; // {text}: the chat sent and not yet accepted or refused
  let lastTypingSent = -Infinity;
  const typers = new Map(); // username -> time (Date.now()) their indicator ends
  let typingTimer = null;
  let unread = 0; // chats from others that arrived while the tab was hidden

  // ---------- wire: the one place that speaks the protocol (docs/protocol.md) ----------

  // Outgoing frames. A join asks for typing events (additive: older servers ignore the field).
  const wire = {
    join: (target) => sendFrame({
      type: "join", room: target.room, username: target.username, typing: true,
    }),
    chat: (text) => sendFrame({ type: "chat", text }),
    leave: () => sendFrame({ type: "leave" }),
    typing: () => sendFrame({ type: "typing" }),
  };

  function sendFrame(obj) {
    if (!ws || !online) return false;
    ws.send(JSON.stringify(obj));
    return true;
  }

  function receive(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return; // the server only sends JSON text; ignore anything else
    }
    if (!msg || typeof msg !== "object") return;
    const settled = settlement(msg);
    if (settled === "accepted") acceptPending();
    switch (msg.type) {
      case "chat":
        onChat(msg);
        break;
      case "system":
        onSystem(msg);
        break;
      case "typing":
        onTyping(msg);
        break;
      case "error":
        if (settled === "refused") refusePending(msg);
        else onError(msg);
        break;
      default:
        break; // unknown types from a newer server are ignored
    }
  }

  // ---------- outbox ----------

  // Whether an incoming message settles the chat this tab is waiting on: "accepted", "refused"
  // or null. The server answers every chat with an error (to the sender only) or with the chat
  // itself (to the room, sender included); only one chat is in flight at a time, so an error of
  // a chat-refusing kind is about it, and its echo is our name with exactly our text. Another tab
  // with the same name sending the same text at the same moment can pass for our echo: when the
  // protocol gains acks with message ids, match the id here and nowhere else.
  function settlement(msg) {
    if (pending === null) return null;
    if (msg.type === "chat") {
      return current !== null && msg.username === current.username && msg.text === pending.text
        ? "accepted" : null;
    }
    if (msg.type === "error" && CHAT_REFUSALS.has(msg.code)) return "refused";
    return null;
  }

  function acceptPending() {
    pending = null;
    ui.input.value = "";
    setComposerError(null);
    refreshControls();
  }

  function refusePending(msg) {
    pending = null;
    const code = typeof msg.code === "string" ? msg.code : "error";
    let text = typeof msg.text === "string" && msg.text ? msg.text : code;
    if (code === "rate_limited" && Number.isFinite(msg.retry_after_ms)) {
      text += ` (try again in ${Math.ceil(msg.retry_after_ms / 1000)} s)`;
    }
    setComposerError(code, `Not sent: ${text}`);
    refreshControls();
    ui.input.focus();
  }

  // The connection dropped or the room was left before the server answered: the text stays in
  // the composer (it may or may not have been delivered), editable again.
  function releasePending() {
    pending = null;
    refreshControls();
  }

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
    let opened = false;
    sock.onopen = () => {
      if (ws !== sock) return;
      opened = true;
      online = true;
      attempt = 0;
      if (everConnected) addLine("system", "Reconnected.");
      everConnected = true;
      setStatus("online", "Online");
      if (wanted) wire.join(wanted);
    };
    sock.onmessage = (event) => {
      if (ws === sock) receive(event.data);
    };
    sock.onclose = (event) => {
      if (ws !== sock) return;
      ws = null;
      const wasOnline = online;
      online = false;
      forgetRoomState();
      if (event.code === TOKEN_EXPIRED) {
        // Reconnecting with the same token would only be refused: stop and say what to do.
        giveUp("expired", "Signed out",
          "Your sign-in token has expired: reload the page with a new token.");
        return;
      }
      if (!opened) {
        retryUnlessRefused();
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

  // A connection that failed before opening: was the token refused (then no retry can succeed),
  // or was it anything else (server down, full, restarting: a retry can)? A browser cannot see
  // the HTTP status of a refused upgrade, so the server answers that question on its own URL.
  async function retryUnlessRefused() {
    const reason = await tokenRefusal();
    if (reason !== null) {
      giveUp("refused", "Not signed in",
        `The server refused your sign-in token (${reason}): reload the page with a valid token.`);
      return;
    }
    scheduleReconnect();
  }

  // The server's reason when it refuses this page's token, else null (accepted, auth off, or no
  // answer: a server without the endpoint, down or failing, must still be retried).
  async function tokenRefusal() {
    let url = AUTH_CHECK_PATH;
    if (token) url += `?token=${encodeURIComponent(token)}`;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), AUTH_CHECK_TIMEOUT_MS);
    try {
      const response = await fetch(url, { cache: "no-store", signal: abort.signal });
      if (response.status !== 401) return null;
      const reason = (await response.text()).trim().slice(0, MAX_REASON_LENGTH);
      return reason || "no reason given";
    } catch {
      return null;
    } finally {
      clearTimeout(timer);
    }
  }

  function giveUp(state, label, text) {
    stopped = true;
    setStatus(state, label);
    addLine("error", text);
  }

  function scheduleReconnect() {
    if (retryTimer !== null || stopped) return;
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

  // ---------- room state ----------

  // After a disconnect or a leave: nothing the server told us about a room still holds. The
  // member list is rebuilt from the server's answer to the next join, never kept stale.
  function forgetRoomState() {
    current = null;
    members.clear();
    memberTotal = 0;
    typers.clear();
    renderTyping();
    if (pending) releasePending();
    renderMembers();
    showRoom();
  }

  function inCurrentRoom(msg) {
    return current !== null && msg.room === current.room;
  }

  function onChat(msg) {
    if (!current) return; // a straggler from the room we just left
    const sender = typeof msg.username === "string" ? msg.username : "?";
    if (typers.delete(sender)) renderTyping();
    addChat(msg, sender);
    if (document.visibilityState === "hidden" && sender !== current.username) {
      unread += 1;
      renderTitle();
    }
  }

  function onSystem(msg) {
    const room = typeof msg.room === "string" ? msg.room : null;
    if (msg.event === "join" && Array.isArray(msg.users)) {
      // Only the joiner's own copy carries `users`: this confirms our join (unless we left since).
      if (wanted === null) return;
      if (current && current.room !== room) {
        typers.clear();
        renderTyping();
      }
      // The server answers a chat before it handles our next join, so the answer to a chat still
      // in flight came before this (the single-node server always does). Should a broker ever
      // deliver them the other way round, free the composer rather than lock it for good.
      if (pending) releasePending();
      current = { room, username: typeof msg.username === "string" ? msg.username : "" };
      members.clear();
      for (const name of msg.users) {
        if (typeof name === "string") members.set(name, (members.get(name) || 0) + 1);
      }
      memberTotal = Number.isFinite(msg.count) ? msg.count : msg.users.length;
      showRoom();
    } else if (!inCurrentRoom(msg)) {
      return; // about a room we are not in (any more)
    } else if (typeof msg.username === "string") {
      if (msg.event === "join") {
        members.set(msg.username, (members.get(msg.username) || 0) + 1);
      } else if (msg.event === "leave") {
        const left = (members.get(msg.username) || 0) - 1;
        if (left > 0) {
          members.set(msg.username, left);
        } else {
          members.delete(msg.username);
          if (typers.delete(msg.username)) renderTyping();
        }
      }
      if (Number.isFinite(msg.count)) memberTotal = msg.count;
    }
    renderMembers();
    addLine("system", typeof msg.text === "string" ? msg.text : "", msg.timestamp);
  }

  function onTyping(msg) {
    if (!inCurrentRoom(msg) || typeof msg.username !== "string") return;
    typers.set(msg.username, Date.now() + TYPING_SHOW_MS);
    renderTyping();
  }

  function onError(msg) {
    const code = typeof msg.code === "string" ? msg.code : "error";
    // The page sends only the protocol's types plus the additive `typing`, which a server that
    // predates it answers with unknown_type: nothing the user did, nothing to show.
    if (code === "unknown_type") return;
    const text = typeof msg.text === "string" && msg.text ? msg.text : code;
    if (JOIN_REFUSALS.has(code)) wanted = current;
    const line = addLine("error", text);
    line.dataset.code = code;
    showRoom();
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

  // http(s) URLs in running text. A candidate ends at whitespace or a character that cannot be
  // part of a URL typed in prose; trailing punctuation is trimmed by trimUrl.
  const URL_CANDIDATE = /\bhttps?:\/\/[^\s<>"'`]+/gi;
  const TRAILING_PUNCTUATION = ".,;:!?*";

  function count(text, ch) {
    let n = 0;
    for (const c of text) if (c === ch) n += 1;
    return n;
  }

  // "see http://x/a)." -> "http://x/a": sentence punctuation and a closing bracket that has no
  // opening one inside the URL belong to the prose (Wikipedia's "/Foo_(bar)" keeps its own).
  function trimUrl(raw) {
    let url = raw;
    for (;;) {
      const last = url.at(-1);
      if (TRAILING_PUNCTUATION.includes(last)) {
        url = url.slice(0, -1);
      } else if (last === ")" && count(url, "(") < count(url, ")")) {
        url = url.slice(0, -1);
      } else if (last === "]" && count(url, "[") < count(url, "]")) {
        url = url.slice(0, -1);
      } else {
        return url;
      }
    }
  }

  // The href for a candidate, or null when it is not a URL at all ("http://[oops"). Only the
  // pattern above produces candidates, so every href is http: or https: with a host.
  function safeHref(candidate) {
    try {
      return new URL(candidate).href;
    } catch {
      return null;
    }
  }

  // Fills `el` with `text`: text nodes, and anchors for http(s) links (never innerHTML).
  function renderText(el, text) {
    let done = 0;
    for (const match of text.matchAll(URL_CANDIDATE)) {
      const candidate = trimUrl(match[0]);
      const href = safeHref(candidate);
      if (href === null) continue;
      if (match.index > done) el.append(text.slice(done, match.index));
      const a = document.createElement("a");
      a.className = "link";
      a.href = href;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      a.textContent = candidate;
      el.append(a);
      done = match.index + candidate.length;
    }
    if (done < text.length) el.append(text.slice(done));
  }

  function addChat(msg, sender) {
    const li = document.createElement("li");
    li.className = "line chat";
    if (current && sender === current.username) li.classList.add("own");
    const who = document.createElement("span");
    who.className = "sender";
    who.textContent = sender;
    const text = document.createElement("span");
    text.className = "text";
    renderText(text, typeof msg.text === "string" ? msg.text : "");
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

  // "alice is typing…", "alice and bob are typing…", "alice, bob and carol are typing…",
  // "alice, bob and 3 others are typing…": names in the order they started typing.
  function typingText(names) {
    switch (names.length) {
      case 0: return "";
      case 1: return `${names[0]} is typing…`;
      case 2: return `${names[0]} and ${names[1]} are typing…`;
      case 3: return `${names[0]}, ${names[1]} and ${names[2]} are typing…`;
      default: return `${names[0]}, ${names[1]} and ${names.length - 2} others are typing…`;
    }
  }

  // Drops the indicators that ran out and wakes up again when the next one does.
  function renderTyping() {
    clearTimeout(typingTimer);
    typingTimer = null;
    const now = Date.now();
    let next = Infinity;
    for (const [name, until] of typers) {
      if (until <= now) typers.delete(name);
      else next = Math.min(next, until);
    }
    ui.typing.textContent = typingText([...typers.keys()]);
    if (next !== Infinity) typingTimer = setTimeout(renderTyping, next - now);
  }

  function renderTitle() {
    const shown = current || wanted;
    const base = shown ? `#${shown.room} · roomcast` : "roomcast";
    document.title = unread > 0 ? `(${unread}) ${base}` : base;
  }

  function showRoom() {
    ui.app.dataset.joined = String(Boolean(current));
    const shown = current || wanted; // while reconnecting, the room we are going back to
    ui.roomName.textContent = shown ? `#${shown.room}` : "";
    ui.leave.hidden = !shown;
    renderTitle();
    refreshControls();
  }

  function ready() {
    return online && current !== null;
  }

  function refreshControls() {
    // The input stays usable while reconnecting so a half-typed message is not lost; only
    // sending waits for the connection. While a message waits for the server's answer the text
    // is kept read-only: it is cleared only once the server accepted it.
    ui.input.disabled = wanted === null && current === null;
    ui.input.readOnly = pending !== null;
    ui.composer.setAttribute("aria-busy", String(pending !== null));
    ui.input.placeholder = ready() ? `Message #${current.room}` : (
      wanted ? "Waiting for the connection…" : "Join a room to chat");
    updateCounter();
  }

  // The composer grows with its text (up to the CSS max-height), so a long draft or a refused
  // message stays readable.
  function fitInput() {
    const borders = ui.input.offsetHeight - ui.input.clientHeight;
    ui.input.style.height = "auto";
    ui.input.style.height = `${ui.input.scrollHeight + borders}px`;
  }

  function updateCounter() {
    fitInput();
    const used = ui.input.value.length;
    ui.counter.textContent = `${used} / ${MAX_TEXT_LENGTH}`;
    ui.counter.dataset.level = used >= MAX_TEXT_LENGTH ? "full"
      : used >= MAX_TEXT_LENGTH * 0.9 ? "near" : "ok";
    ui.send.disabled = !ready() || pending !== null || ui.input.value.trim() === "";
  }

  function setComposerError(code, text) {
    ui.composerError.hidden = code === null;
    ui.composerError.textContent = code === null ? "" : text;
    if (code === null) delete ui.composerError.dataset.code;
    else ui.composerError.dataset.code = code;
    ui.input.setAttribute("aria-invalid", String(code !== null));
  }

  // ---------- user actions ----------

  function rememberName(username) {
    // Per tab: a second tab must not start with the first tab's name; a reload keeps it.
    try {
      sessionStorage.setItem(NAME_KEY, username);
    } catch {
      // storage may be unavailable (private mode); remembering the name is only a convenience
    }
  }

  function join(event) {
    event.preventDefault();
    const username = ui.username.value.trim() || "Anonymous";
    const room = ui.room.value.trim() || DEFAULT_ROOM;
    ui.username.value = username;
    ui.room.value = room;
    wanted = { room, username };
    rememberName(username);
    const url = new URL(location.href);
    url.searchParams.set("room", room);
    history.replaceState(null, "", url);
    wire.join(wanted);
    showRoom();
    ui.input.focus();
  }

  function leave() {
    const shown = current || wanted;
    if (!shown) return;
    // Offline there is nothing to tell the server: not rejoining on reconnect is the leave.
    wire.leave();
    wanted = null;
    forgetRoomState();
    setComposerError(null);
    addLine("system", `You left #${shown.room}.`);
    ui.room.focus();
  }

  function sendMessage(event) {
    if (event) event.preventDefault();
    const text = ui.input.value;
    if (pending !== null || text.trim() === "" || !ready()) return;
    if (text.length > MAX_TEXT_LENGTH) return;
    if (wire.chat(text)) {
      pending = { text };
      setComposerError(null);
      refreshControls();
    }
  }

  function onInput() {
    updateCounter();
    if (ui.input.value === "") setComposerError(null);
    if (ui.input.value.trim() === "" || !ready()) return;
    const now = Date.now();
    if (now - lastTypingSent >= TYPING_SEND_EVERY_MS && wire.typing()) lastTypingSent = now;
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
    const saved = sessionStorage.getItem(NAME_KEY);
    if (saved && !ui.username.value) ui.username.value = saved;
    // Earlier versions kept the name in localStorage, shared by every tab: drop it.
    localStorage.removeItem(NAME_KEY);
  } catch {
    // no storage: the user types a name
  }

  ui.joinForm.addEventListener("submit", join);
  ui.leave.addEventListener("click", leave);
  ui.composer.addEventListener("submit", sendMessage);
  ui.input.addEventListener("keydown", onInputKey);
  ui.input.addEventListener("input", onInput);
  ui.messages.addEventListener("scroll", () => {
    if (atBottom()) ui.jump.hidden = true;
  });
  ui.jump.addEventListener("click", () => {
    ui.messages.scrollTop = ui.messages.scrollHeight;
    ui.jump.hidden = true;
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && unread > 0) {
      unread = 0;
      renderTitle();
    }
  });
  window.addEventListener("online", () => {
    if (!ws && retryTimer !== null) {
      attempt = 0;
      connect();
    }
  });

  renderMembers();
  setComposerError(null);
  showRoom();
  connect();
})();
