// roomcast browser client: plain JavaScript, no build step, no external resources.
// Every piece of text that came from the network is rendered with textContent or as text nodes,
// never as HTML; links in chat text become anchors built element by element.
//
// Layout of this file, so that later work has one place to go:
//   wire        - the only code that knows the wire format: frames out, dispatch in
//   outbox      - the chat this tab sent and is waiting for the server to settle (id and ack)
//   connection  - open, retry with backoff, give up when a retry cannot succeed
//   positions   - where this tab is in each room's stream (sessionStorage), history and resume
//   room state  - join, leave, members, typing, unread count
//   rendering   - message lines, links, members, controls
//   user actions and start-up
"use strict";

(() => {
  // Limits mirror the server's defaults; the server stays the authority and refuses longer input.
  // The text limit counts code points (characters), as the server does, not UTF-16 units: an
  // emoji is one. The welcome carries `max_text_length` (the server's --max-text-length), which
  // replaces the default; a server that sends none still refuses a longer chat as text_too_long.
  const DEFAULT_MAX_TEXT_LENGTH = 4000;
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
  // A connection counts as a success, and the backoff starts over, once it has lasted this long:
  // a server that accepts and then closes at once (an error after the join, a page dropped as a
  // slow consumer again and again) is retried ever more slowly, like one that refuses.
  const STABLE_AFTER_MS = RETRY_CAP_MS;
  const TOKEN_EXPIRED = 4001; // close code: the JWT this connection was opened with expired
  const SLOW_CONSUMER = 4000; // close code: the page fell too far behind reading
  const BOTTOM_SLACK_PX = 40; // "at the bottom" tolerance for auto-scroll
  const TYPING_SEND_EVERY_MS = 2000; // at most one `typing` frame per this interval
  const TYPING_SHOW_MS = 4000; // "U is typing…" lasts this long after U's last typing event
  const NAME_KEY = "roomcast.username";
  const HISTORY_ON_JOIN = 50; // a join shows the room's last messages before the join itself
  const POSITIONS_KEY = "roomcast.positions";
  const MAX_POSITIONS = 50; // rooms whose position a tab remembers (the least recent go first)
  const MAX_EPOCH_LENGTH = 64; // the server refuses a `since` with a longer epoch
  // Errors that refuse a chat message (the message stays in the composer with the reason).
  const CHAT_REFUSALS = new Set([
    "rate_limited", "text_too_long", "empty_text", "not_in_room", "invalid_message",
  ]);
  // The error of a chat the server could not place in the room's order because its node cannot
  // reach Redis: nothing was posted, and the same chat (same id) is to be sent again later.
  const CHAT_UNAVAILABLE = "unavailable";
  // A chat refused as unavailable goes again at once when the node says it is back (`recovered`),
  // after a rejoin, and at the latest after this long (a node that started without Redis never
  // says `recovered`).
  const UNAVAILABLE_RETRY_MS = 5000;
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
    composerNote: $("composer-note"),
  };

  const params = new URLSearchParams(location.search);
  const token = params.get("token");

  let ws = null;
  let online = false;
  let attempt = 0; // connection attempts since the last one that lasted STABLE_AFTER_MS
  let retryTimer = null;
  let stableTimer = null;
  let everConnected = false;
  let stopped = false; // the page gave up: a retry could not succeed (token refused or expired)
  let wanted = null; // {room, username} we asked for; re-sent after every reconnect
  // {room, username, epoch, assumed} the server confirmed. epoch: the stream live chats are in;
  // `assumed` when the welcome had none (a server without history, or a Redis node that cannot
  // reach Redis) and it is the one this tab last saw in the room (null if none); a `reset`
  // notice moves it to the new stream.
  let current = null;
  const members = new Map(); // username -> how many connections use it
  let memberTotal = 0; // the server's true count (the users list may be capped)
  // The chat in the composer on its way: {id, text, room, sent, tries, unavailable}. `sent`: on
  // the wire of the current connection and not yet acked or refused; `tries`: how often it went
  // on the wire; `unavailable`: the server could not place it yet, it waits for the retry.
  let pending = null;
  let unavailableTimer = null;
  let acks = false; // the server acks chats that carry an id (the room has an epoch)
  let lastJoin = null; // {room, resume}: the join this page sent last, and whether with `since`
  // A leave the server may still refuse (its rate limit: `rate_limited` with `refused: "leave"`,
  // and then nothing changed): {wanted, current, members, memberTotal, held}. Until its fate is
  // known, what the server sends about rooms is held, not shown, so that a refused leave puts
  // everything back as it was, the messages that came meanwhile included. The answer to a join
  // sent after the leave proves the leave went through (the server handles frames in order).
  let leaving = null;
  const MAX_HELD = 500;
  let lastTypingSent = -Infinity;
  const typers = new Map(); // username -> time (Date.now()) their indicator ends
  let typingTimer = null;
  let unread = 0; // chats from others that arrived while the tab was hidden
  let myName = null; // the name the server confirmed last (a token's, with authentication on)
  let maxTextLength = DEFAULT_MAX_TEXT_LENGTH;

  // ---------- wire: the one place that speaks the protocol (docs/protocol.md) ----------

  // Outgoing frames. A join asks for typing events (additive: older servers ignore the field).
  // `replay` is {history: K} or {since: {epoch, seq}} (docs/history.md).
  const wire = {
    join: (target, replay) => sendFrame({
      type: "join", room: target.room, username: target.username, typing: true, ...replay,
    }),
    chat: (text, id) => sendFrame({ type: "chat", text, id }),
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
    if (leaving !== null && msg.type !== "error" && msg.type !== "ack") {
      if (!answersTheLatestJoin(msg)) {
        if (leaving.held.length < MAX_HELD) leaving.held.push(msg);
        return;
      }
      leaving = null; // the leave went through: what it held was from before it
    }
    dispatch(msg);
  }

  // The server's spelling of a room name, as far as the page can tell: trimmed, each run of
  // spaces one space, Unicode NFC (docs/protocol.md). An answer names the room that way.
  function roomKey(name) {
    return typeof name === "string" ? name.trim().replace(/\s+/gu, " ").normalize("NFC") : "";
  }

  // Whether `msg` is the `history` or the welcome of the join the page sent last. An answer for
  // another room is for a join since superseded (a Redis node never answers those at all).
  function answersTheLatestJoin(msg) {
    const joinReply = msg.type === "history"
      || (msg.type === "system" && msg.event === "join" && Array.isArray(msg.users));
    return joinReply && wanted !== null && roomKey(msg.room) === roomKey(wanted.room);
  }

  // Whether `msg` is an error that refuses a join. The page's chats carry an id, so an
  // `invalid_message` without one is about a join (the only other message it could be about).
  function joinAnswer(msg) {
    if (msg.type !== "error") return false;
    return JOIN_REFUSALS.has(msg.code) || (msg.code === "rate_limited" && msg.refused === "join")
      || (msg.code === "invalid_message" && msg.id === undefined);
  }

  function dispatch(msg) {
    const settled = settlement(msg);
    if (settled === "accepted") acceptPending();
    switch (msg.type) {
      case "chat":
        onChat(msg);
        break;
      case "system":
        onSystem(msg);
        break;
      case "history":
        onHistory(msg);
        break;
      case "typing":
        onTyping(msg);
        break;
      case "error":
        if (settled === "refused") refusePending(msg);
        else if (settled === "unavailable") postponePending();
        else onError(msg);
        break;
      default:
        break; // `ack` was settled above; unknown types from a newer server are ignored
    }
  }

  // ---------- outbox ----------

  // Every chat carries an id of its own; the server answers it with an `ack` naming that id
  // once the chat has its place in the room (after the chat itself), or with an error to the
  // sender alone. A chat the room already holds under that id is not posted again: the server
  // acks it once more. So a chat whose answer never came (the connection dropped, the server
  // was killed) is sent again with the same id after the rejoin, and is posted exactly once.
  function newId() {
    // crypto.randomUUID exists only in secure contexts; getRandomValues everywhere.
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // Whether an incoming message settles the chat this tab is waiting on: "accepted", "refused",
  // "unavailable" (not posted, to be sent again) or null. Only one chat is in flight at a time,
  // so an error of a chat-refusing kind is about it. A server that does not ack ids (no epoch in
  // its welcome: a server without history, or a Redis node that cannot reach Redis) is matched
  // on the echo instead, our name with exactly our text, as before ids existed.
  function settlement(msg) {
    if (pending === null || !pending.sent) return null;
    if (msg.type === "ack") return msg.id === pending.id ? "accepted" : null;
    if (msg.type === "chat" && !acks) {
      return current !== null && msg.username === current.username && msg.text === pending.text
        ? "accepted" : null;
    }
    if (msg.type === "error" && CHAT_REFUSALS.has(msg.code)) {
      // A join's or a leave's rate limit says which it refused; a chat's refusal carries the
      // chat's id (a server that predates ids sends none: then any chat refusal is this one).
      if (msg.refused !== undefined || joinAnswer(msg)) return null;
      return msg.id === undefined || msg.id === pending.id ? "refused" : null;
    }
    if (msg.type === "error" && msg.code === CHAT_UNAVAILABLE
      && (msg.id === undefined || msg.id === pending.id)) return "unavailable";
    return null;
  }

  // Puts the waiting chat on the wire when the page is in the chat's room.
  function flushOutbox() {
    if (pending === null || pending.sent || pending.unavailable || !ready()) return;
    // A join for another room is on its way: the chat waits for it (then it is let go).
    if (current.room !== pending.room || wanted === null || wanted.room !== pending.room) return;
    if (wire.chat(pending.text, pending.id)) {
      pending.sent = true;
      pending.tries += 1;
    }
  }

  // The page is (back) in `room`: send the waiting chat, or let it go if it belongs elsewhere.
  function outboxAfterJoin(room) {
    if (pending === null) return;
    // A chat answered by neither ack nor error before this welcome can only be sent again where
    // ids are acked (a retry is then harmless); else its fate is unknown and the text is kept.
    if (pending.room !== room || (pending.sent && !acks)) {
      releasePending();
      return;
    }
    pending.sent = false;
    pending.unavailable = false; // a new welcome: worth a try (refused again if still so)
    flushOutbox();
    refreshControls();
  }

  // The connection dropped: a chat on the wire is sent again after the rejoin (same id), unless
  // the server does not ack ids; then its text is left in the composer, editable, as before.
  function outboxInterrupted() {
    if (pending === null || !pending.sent) return;
    if (acks) pending.sent = false;
    else releasePending();
  }

  // The server could not give the chat its place in the room (Redis mode: its node cannot reach
  // Redis) and posted it nowhere. As with a chat written offline, the text waits in the
  // composer and goes again with the same id once the node can place it (docs/history.md).
  function postponePending() {
    pending.sent = false;
    pending.unavailable = true;
    clearTimeout(unavailableTimer);
    unavailableTimer = setTimeout(retryUnavailable, UNAVAILABLE_RETRY_MS);
    refreshControls();
  }

  function retryUnavailable() {
    clearTimeout(unavailableTimer);
    unavailableTimer = null;
    if (pending === null || !pending.unavailable) return;
    pending.unavailable = false;
    flushOutbox();
    refreshControls();
  }

  function acceptPending() {
    pending = null;
    ui.input.value = "";
    setComposerError(null);
    refreshControls();
  }

  // An error's code, and its text as the page shows it (when to try again, if it says).
  function refusal(msg) {
    const code = typeof msg.code === "string" ? msg.code : "error";
    let text = typeof msg.text === "string" && msg.text ? msg.text : code;
    if (code === "rate_limited" && Number.isFinite(msg.retry_after_ms)) {
      text += ` (try again in ${Math.ceil(msg.retry_after_ms / 1000)} s)`;
    }
    return { code, text };
  }

  function refusePending(msg) {
    pending = null;
    const { code, text } = refusal(msg);
    setComposerError(code, `Not sent: ${text}`);
    refreshControls();
    ui.input.focus();
  }

  // The room was left (or the page gave up) before the server answered: the text stays in the
  // composer (it may or may not have been delivered), editable again.
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
      clearTimeout(stableTimer);
      stableTimer = setTimeout(() => {
        attempt = 0;
      }, STABLE_AFTER_MS);
      if (everConnected) addLine("system", "Reconnected.");
      everConnected = true;
      setStatus("online", "Online");
      if (wanted) requestJoin(wanted, true);
    };
    sock.onmessage = (event) => {
      if (ws === sock) receive(event.data);
    };
    sock.onclose = (event) => {
      if (ws !== sock) return;
      ws = null;
      const wasOnline = online;
      online = false;
      clearTimeout(stableTimer);
      stableTimer = null;
      leaving = null; // the server forgot this connection, and every room it was in
      forgetRoomState();
      outboxInterrupted();
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
        const why = {
          1001: " (server going away)",
          1012: " (server restarting)",
          [SLOW_CONSUMER]: " (this page fell too far behind)",
        }[event.code] || "";
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
    if (pending) releasePending(); // it can never be sent now
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

  // ---------- positions, history and resume ----------

  // room -> {epoch, seq}: the last chat this tab displayed in the room's stream (or the join's
  // position, when that is later). In sessionStorage: per tab, kept across a reload, never shared
  // with another tab (which has seen other messages).
  const positions = loadPositions();
  // The rooms whose messages this document shows (a reload starts with none).
  const shownRooms = new Set();

  function validPosition(epoch, seq) {
    return typeof epoch === "string" && epoch !== "" && epoch.length <= MAX_EPOCH_LENGTH
      && Number.isSafeInteger(seq) && seq >= 0;
  }

  function loadPositions() {
    const map = new Map();
    try {
      // [[room, epoch, seq], ...], least recently used first (a list: no room name is special)
      const saved = JSON.parse(sessionStorage.getItem(POSITIONS_KEY) || "[]");
      if (Array.isArray(saved)) {
        for (const entry of saved) {
          if (!Array.isArray(entry)) continue;
          const [room, epoch, seq] = entry;
          if (typeof room === "string" && validPosition(epoch, seq)) map.set(room, { epoch, seq });
        }
      }
    } catch {
      // no storage or garbage in it: start without positions
    }
    return map;
  }

  function setPosition(room, epoch, seq) {
    if (!validPosition(epoch, seq)) return;
    positions.delete(room); // re-inserted last: the most recently used
    positions.set(room, { epoch, seq });
    while (positions.size > MAX_POSITIONS) positions.delete(positions.keys().next().value);
    try {
      const list = [...positions].map(([name, pos]) => [name, pos.epoch, pos.seq]);
      sessionStorage.setItem(POSITIONS_KEY, JSON.stringify(list));
    } catch {
      // storage full or unavailable: the position still holds for this document
    }
  }

  // Whether chat `seq` of `room`'s stream `epoch` is already on screen (never show one twice).
  function alreadyShown(room, epoch, seq) {
    const pos = positions.get(room);
    return shownRooms.has(room) && pos !== undefined && pos.epoch === epoch && seq <= pos.seq;
  }

  // The chat lines on screen, per room, by what makes a chat itself: its sender, its text and
  // the millisecond it was sent (what a node compares too, docs/history.md: a chat is replayed
  // exactly as it was sent live), each with the seq it was shown with (0: unnumbered). This
  // keeps a chat from showing twice where positions cannot: numbered chats that came after a
  // welcome without an epoch, and the numbered copy of a chat a node delivered unnumbered.
  const chatLines = new Map(); // room -> Map(identity -> [{seq, li}])
  const lineChats = new WeakMap(); // li -> {room, identity, copy}: to forget a dropped line

  function chatIdentity(msg, sender) {
    const timestamp = Number.isFinite(msg.timestamp) ? msg.timestamp : null;
    return JSON.stringify([sender, timestamp, typeof msg.text === "string" ? msg.text : ""]);
  }

  // The line showing numbered chat `seq` with this identity, or null. A chat has one place in
  // one stream, so the seq tells two chats alike apart (the same text in the same millisecond);
  // a copy shown unnumbered stands for the numbered one (Redis placed it as the node's link
  // dropped), once: from then on it is that seq's.
  function lineShowing(room, identity, seq) {
    const copies = chatLines.get(room)?.get(identity);
    if (copies === undefined) return null;
    const copy = copies.find((c) => c.seq === seq) || copies.find((c) => c.seq === 0);
    if (copy === undefined) return null;
    copy.seq = seq;
    return copy.li;
  }

  function rememberLine(room, identity, seq, li) {
    let lines = chatLines.get(room);
    if (lines === undefined) {
      lines = new Map();
      chatLines.set(room, lines);
    }
    const copy = { seq, li };
    const copies = lines.get(identity);
    if (copies === undefined) lines.set(identity, [copy]);
    else copies.push(copy);
    lineChats.set(li, { room, identity, copy });
  }

  function forgetLine(li) {
    const chat = lineChats.get(li);
    if (chat === undefined) return;
    const lines = chatLines.get(chat.room);
    const copies = lines.get(chat.identity);
    copies.splice(copies.indexOf(chat.copy), 1);
    if (copies.length === 0) lines.delete(chat.identity);
    if (lines.size === 0) chatLines.delete(chat.room);
  }

  // Whether `room`'s chat `msg` is on screen: the line showing it (true when only its position
  // says so), or null. Only a positive seq is a place in the stream: a chat a Redis node
  // delivered while it could not reach Redis has seq 0 (in no history, never replayed, so never
  // a duplicate). `epoch` names the stream `msg` is in; `assumed`: only the page's guess (below),
  // never enough to take a chat for one on screen.
  function shownAlready(room, epoch, assumed, msg, identity) {
    if (!Number.isSafeInteger(msg.seq) || msg.seq <= 0) return null;
    const line = lineShowing(room, identity, msg.seq);
    if (line !== null) return line;
    return epoch !== null && !assumed && alreadyShown(room, epoch, msg.seq) ? true : null;
  }

  // The line of a chat that is not on screen (the caller places it); its position is recorded.
  // After a welcome without an epoch (the node could not reach Redis) the page assumes that the
  // room's stream goes on where this tab last saw it: the node repairs it when it is back and
  // says `reset` if Redis lost it (docs/history.md). The position moves along that stream, never
  // back, so that the next resume starts from the last chat shown; were the guess wrong, that
  // resume is answered `epoch changed`: the divider, and nothing shown twice.
  function newChatLine(room, epoch, assumed, msg, sender, identity) {
    const numbered = Number.isSafeInteger(msg.seq) && msg.seq > 0;
    const pos = positions.get(room);
    if (!numbered || epoch === null) {
      // no place in a known stream: moves no position
    } else if (!assumed) {
      if (!pos || pos.epoch !== epoch || msg.seq > pos.seq) setPosition(room, epoch, msg.seq);
    } else if (pos !== undefined && pos.epoch === epoch && msg.seq > pos.seq) {
      setPosition(room, epoch, msg.seq);
      shownRooms.add(room); // this document shows the stream from here: a reconnect resumes
    }
    const li = chatLine(msg, sender, room);
    rememberLine(room, identity, numbered ? msg.seq : 0, li);
    return li;
  }

  // Shows a live chat unless it is on screen already; true if shown.
  function showChat(room, epoch, assumed, msg) {
    const sender = typeof msg.username === "string" ? msg.username : "?";
    const identity = chatIdentity(msg, sender);
    if (shownAlready(room, epoch, assumed, msg, identity) !== null) return false;
    append(newChatLine(room, epoch, assumed, msg, sender, identity));
    return true;
  }

  // A reconnect resumes where this document left the room: `since` its position, so the server
  // replays exactly what was missed or says it cannot. Any other join (the Join button, a
  // reload) asks for the room's last messages so that the room does not open empty; those
  // already on screen are not shown again.
  function requestJoin(target, reconnecting) {
    const pos = positions.get(target.room);
    const resume = reconnecting && pos !== undefined && shownRooms.has(target.room);
    lastJoin = { room: target.room, resume };
    const replay = resume ? { since: { epoch: pos.epoch, seq: pos.seq } }
      : { history: HISTORY_ON_JOIN };
    return wire.join(target, replay);
  }

  // Each documented `reason` of an incomplete `history` answer (docs/protocol.md), as the
  // divider tells it: what the reason says happened, and no guess beyond it.
  const UNREACHABLE = "history unavailable"; // Redis mode: the node cannot reach Redis now
  const MISSED_BECAUSE = {
    "epoch changed":
      "the server lost the room's history (a restart that did not keep it, or the room sat "
      + "empty too long)",
    "too old": "more were sent than the server keeps",
    "too many": "more than the server replays at once",
    "unknown position": "the server does not recognise where this page left the room",
    "history disabled": "this server keeps no history",
    [UNREACHABLE]: "the server cannot reach the room's history right now",
  };
  const RESET_DETAIL = "the server lost the room's history"; // a `reset` notice (Redis mode)

  // Whether messages this tab owed its user are missing from a `history` answer. `before` is
  // the tab's position in the room, if it has been there (in this document or before a reload).
  function missedSomething(before, msg, resumed) {
    // The server could not look (a Redis node that cannot reach Redis): whether this is a first
    // visit or not, nobody can say what is missing, so the page says that something may be.
    if (msg.recovered !== true && msg.reason === UNREACHABLE) return true;
    if (before === undefined) return false; // a first visit: nothing was missed
    if (resumed) return msg.recovered !== true; // the server knows, and says
    // The last messages of the room: complete if they reach back to the one after `before`.
    if (before.epoch !== msg.epoch) return true;
    const next = msg.messages.find((m) => m && Number.isSafeInteger(m.seq) && m.seq > before.seq);
    if (next !== undefined) return next.seq !== before.seq + 1;
    // Nothing after `before` among them: nothing new, unless the server sent none at all and
    // cannot vouch for that (history disabled).
    return msg.messages.length === 0 && msg.recovered !== true;
  }

  function missedDetail(before, msg, resumed) {
    // About the server, not about this tab's position: true whatever the join asked for (and
    // an unreachable history comes with no epoch, which is no new stream).
    if (msg.reason === UNREACHABLE || msg.reason === "history disabled") {
      return MISSED_BECAUSE[msg.reason];
    }
    if (before.epoch !== msg.epoch) return MISSED_BECAUSE["epoch changed"];
    if (resumed) {
      return Object.hasOwn(MISSED_BECAUSE, msg.reason) ? MISSED_BECAUSE[msg.reason]
        : "the server could not bring back everything since you left";
    }
    return "more were sent while you were away than are shown here";
  }

  // The room's messages the server sends just before our welcome: a resume's missed ones, or a
  // join's last ones. A divider says so when some this tab should have shown are not there.
  function onHistory(msg) {
    // we left before the answer, or joined elsewhere since (its welcome is ignored too)
    if (!answersTheLatestJoin(msg)) return;
    if (typeof msg.room !== "string" || typeof msg.epoch !== "string") return;
    if (!Array.isArray(msg.messages)) return;
    const room = msg.room;
    const before = positions.get(room);
    const resumed = lastJoin !== null && lastJoin.resume && roomKey(lastJoin.room) === room;
    if (missedSomething(before, msg, resumed)) addDivider(missedDetail(before, msg, resumed));
    const epoch = msg.epoch === "" ? null : msg.epoch; // "": the node cannot reach its history
    // A chat not on screen that comes before one that is goes before that one, in the room's
    // order (a join's last messages reach back past chats shown after a welcome without epoch).
    let waiting = [];
    // Unread while the tab is hidden: a resume replays chats that went by while the connection
    // was down, which the user has never seen, so they count as live ones do (from others,
    // not shown already). A join's last messages (the Join button, a reload, a ?room= link, a
    // reconnect with no position to resume from) are the room's context shown before the join,
    // not news: they do not count.
    const me = myName !== null ? myName : wanted.username;
    let fresh = 0;
    for (const m of msg.messages) {
      if (!m || typeof m !== "object" || m.type !== "chat") continue;
      const sender = typeof m.username === "string" ? m.username : "?";
      const identity = chatIdentity(m, sender);
      const line = shownAlready(room, epoch, false, m, identity);
      if (line === null) {
        waiting.push(newChatLine(room, epoch, false, m, sender, identity));
        if (sender !== me) fresh += 1;
      } else if (line !== true) {
        line.before(...waiting);
        waiting = [];
      }
    }
    for (const li of waiting) append(li);
    trimLines();
    if (resumed && fresh > 0 && document.visibilityState === "hidden") {
      unread += fresh;
      renderTitle();
    }
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
    if (!showChat(current.room, current.epoch, current.assumed, msg)) return;
    if (document.visibilityState === "hidden" && sender !== current.username) {
      unread += 1;
      renderTitle();
    }
  }

  function onSystem(msg) {
    const room = typeof msg.room === "string" ? msg.room : null;
    if (msg.event === "join" && Array.isArray(msg.users)) {
      // Only the joiner's own copy carries `users`: this confirms our join, unless we left or
      // joined elsewhere since.
      if (!answersTheLatestJoin(msg)) return;
      if (current && current.room !== room) {
        typers.clear();
        renderTyping();
      }
      // `epoch` and `seq`: the stream live chats belong to and where it stands (docs/history.md);
      // a server without history sends neither, and acks no ids either; nor does a Redis node
      // that cannot reach Redis, whose numbered chats, once it is back, are presumably of the
      // stream this tab last saw (see newChatLine).
      const epoch = typeof msg.epoch === "string" && msg.epoch !== "" ? msg.epoch : null;
      const last = room === null ? undefined : positions.get(room);
      current = {
        room,
        username: typeof msg.username === "string" ? msg.username : "",
        epoch: epoch !== null ? epoch : last !== undefined ? last.epoch : null,
        assumed: epoch === null,
      };
      acks = epoch !== null;
      myName = current.username;
      if (Number.isSafeInteger(msg.max_text_length) && msg.max_text_length > 0) {
        setMaxTextLength(msg.max_text_length);
      }
      if (epoch !== null && room !== null) {
        setPosition(room, epoch, Number.isSafeInteger(msg.seq) ? msg.seq : 0);
        shownRooms.add(room);
      }
      outboxAfterJoin(room);
      members.clear();
      for (const name of msg.users) {
        if (typeof name === "string") members.set(name, (members.get(name) || 0) + 1);
      }
      memberTotal = Number.isFinite(msg.count) ? msg.count : msg.users.length;
      showRoom();
    } else if (!inCurrentRoom(msg)) {
      return; // about a room we are not in (any more)
    } else if (msg.event === "reset" && validPosition(msg.epoch, msg.seq)) {
      onReset(msg);
      return;
    } else if (msg.event === "gap") {
      onGap(msg);
      return;
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
    // A Redis node that could not place our chat can now: it goes without waiting for the timer.
    if (msg.event === "recovered") retryUnavailable();
  }

  // Redis lost the room's stream (docs/protocol.md, status notices): the chats that follow are
  // numbered again, in a new epoch, after `seq`. The page moves to that position (else it would
  // take the new chats for ones it already shows) and says that messages may be missing.
  function onReset(msg) {
    current.epoch = msg.epoch;
    current.assumed = false;
    acks = true; // a server that numbers the room acks ids
    setPosition(current.room, msg.epoch, msg.seq);
    shownRooms.add(current.room);
    addDivider(RESET_DETAIL);
  }

  // Messages a Redis node could not recover after an outage (no longer in the room's history,
  // docs/protocol.md, status notices): the divider, with the node's text, where they are
  // missing. The node delivers what it did recover right before this notice, so the missing
  // ones precede the first of those, whose seq jumps past the one before it.
  function onGap(msg) {
    const text = typeof msg.text === "string" && msg.text ? msg.text
      : "some messages could not be recovered";
    addDivider(text, gapPlace(current.room));
  }

  // The line a `gap` divider goes before: in the room's last run of numbered chats, the first
  // one after a jump in seq; null (the end) when there is none: what follows the missing
  // messages is not on screen yet.
  function gapPlace(room) {
    let next = null; // the chat line after `line` in the run
    for (let line = ui.messages.lastElementChild; line; line = line.previousElementSibling) {
      if (line.classList.contains("divider")) break;
      if (!line.classList.contains("chat")) continue; // notices in between
      const seq = Number(line.dataset.seq);
      if (line.dataset.room !== room || !(seq > 0)) break;
      if (next !== null) {
        const after = Number(next.dataset.seq);
        if (after > seq + 1) return next;
        if (after !== seq + 1) break; // a new stream starts there
      }
      next = line;
    }
    return null;
  }

  function onTyping(msg) {
    if (!inCurrentRoom(msg) || typeof msg.username !== "string") return;
    typers.set(msg.username, Date.now() + TYPING_SHOW_MS);
    renderTyping();
  }

  function onError(msg) {
    if (joinAnswer(msg)) {
      // The server keeps the page where it was, in its room or in none.
      wanted = current;
      // a chat waiting for the refused join can no longer go where it was written for
      if (pending && !pending.sent && (wanted === null || wanted.room !== pending.room)) {
        releasePending();
      }
    } else if (msg.code === "rate_limited" && msg.refused === "leave") {
      leaveRefused();
    }
    showError(msg);
    showRoom();
  }

  function showError(msg) {
    const { code, text: reason } = refusal(msg);
    // The page sends only the protocol's types plus the additive `typing`, which a server that
    // predates it answers with unknown_type: nothing the user did, nothing to show.
    if (code === "unknown_type") return;
    const prefix = msg.refused === "join" ? "Not joined: "
      : msg.refused === "leave" ? "Not left: " : "";
    const line = addLine("error", prefix + reason);
    line.dataset.code = code;
  }

  // The server refused our leave and changed nothing: the page is back in the room as it was,
  // and shows what the room sent while it believed it had left.
  function leaveRefused() {
    const before = leaving;
    leaving = null;
    if (before === null) return;
    // A join sent since still goes where it was asked to; its answer decides from here.
    if (wanted === null) wanted = before.wanted;
    current = before.current;
    for (const [name, count] of before.members) members.set(name, count);
    memberTotal = before.memberTotal;
    renderMembers();
    showRoom();
    addLine("system", `You are still in #${(current || wanted).room}.`);
    for (const msg of before.held) dispatch(msg);
  }

  // ---------- rendering ----------

  function atBottom() {
    const m = ui.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight <= BOTTOM_SLACK_PX;
  }

  // Drops the oldest lines beyond MAX_LINES.
  function trimLines() {
    while (ui.messages.childElementCount > MAX_LINES) {
      const oldest = ui.messages.firstElementChild;
      forgetLine(oldest);
      oldest.remove();
    }
  }

  function append(li) {
    const stick = atBottom();
    ui.messages.appendChild(li);
    trimLines();
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

  // http(s) URLs in running text. A candidate ends at whitespace, at a character that cannot
  // be part of a URL typed in prose (a backslash too: the URL parser would turn it into a "/"),
  // at every invisible character (Unicode's format controls, Cf: the bidi embeddings,
  // overrides, isolates and marks U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C, the
  // zero-width characters, the BOM, tags; and the other default-ignorable code points the
  // server refuses in names), and at CJK sentence punctuation and brackets ("。" in a host
  // would be read as a "."). So a link's text is always what its href opens: a bidi control
  // cannot reorder what is shown of it ("files.example/\u202Efdp.exe" shown as ".../exe.pdf").
  // Trailing punctuation is trimmed by trimUrl.
  const URL_CANDIDATE = new RegExp(
    "\\bhttps?://[^\\s<>\"'`\\\\\\p{Cf}"
      + "\\u034F\\u115F\\u1160\\u17B4\\u17B5\\u180B-\\u180F\\u2800\\u3164\\uFE00-\\uFE0F\\uFFA0"
      + "\\u{E0000}-\\u{E0FFF}"
      + "\\u3001\\u3002\\u3008-\\u3011\\u3014-\\u301F"
      + "\\uFF01\\uFF08\\uFF09\\uFF0C\\uFF0E\\uFF1A\\uFF1B\\uFF1F\\uFF61\\uFF64]+",
    "giu",
  );
  // Punctuation that ends a sentence or a quotation rather than a URL (Unicode's Po "other",
  // Pi/Pf quotation marks, Ps opening brackets): ".", ",", ";", ":", "!", "?", "*", "…", "。",
  // "、", "“", "”", "«", "»"... Po also holds characters a URL may well end with: kept.
  const TRAILING_PUNCTUATION = /[\p{Po}\p{Pi}\p{Pf}\p{Ps}]$/u;
  const URL_END_OK = "/#%&@";
  const CLOSING = /\p{Pe}$/u; // ")", "]", "}", "）", "」"...: trimmed unless the URL opened it
  const OPENER = new Map([
    [")", "("], ["]", "["], ["}", "{"], ["）", "（"], ["］", "［"], ["｝", "｛"],
    ["〉", "〈"], ["》", "《"], ["」", "「"], ["』", "『"], ["】", "【"], ["〕", "〔"],
    ["〗", "〖"], ["〙", "〘"], ["〛", "〚"], ["⟩", "⟨"], ["⟧", "⟦"],
  ]);

  function count(text, ch) {
    let n = 0;
    for (const c of text) if (c === ch) n += 1;
    return n;
  }

  // "see http://x/a)." -> "http://x/a", "“http://x/q”" -> "http://x/q": sentence punctuation,
  // quotation marks and a closing bracket that has no opening one inside the URL belong to the
  // prose (Wikipedia's "/Foo_(bar)" keeps its own), as GitHub's and Slack's linkifiers do.
  function trimUrl(raw) {
    let url = raw;
    for (;;) {
      const last = Array.from(url).at(-1); // a code point: some punctuation is astral
      const opener = OPENER.get(last);
      if (TRAILING_PUNCTUATION.test(last) && !URL_END_OK.includes(last)) {
        url = url.slice(0, -last.length);
      } else if (CLOSING.test(last)
        && (opener === undefined || count(url, opener) < count(url, last))) {
        url = url.slice(0, -last.length);
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
      a.dir = "ltr"; // isolated (CSS): no bidi control around it can reorder what it shows
      a.textContent = candidate;
      el.append(a);
      done = match.index + candidate.length;
    }
    if (done < text.length) el.append(text.slice(done));
  }

  // The line of a chat of `room` (placed by the caller).
  function chatLine(msg, sender, room) {
    const li = document.createElement("li");
    li.className = "line chat";
    li.dataset.room = room;
    // A join's history comes before its welcome: until then we are who we asked to be.
    const me = current || wanted;
    if (me && sender === me.username) li.classList.add("own");
    if (Number.isSafeInteger(msg.seq)) li.dataset.seq = String(msg.seq);
    const who = document.createElement("span");
    who.className = "sender";
    who.dir = "auto"; // isolated, each in its own direction (CSS): a name, a message in Arabic
    who.textContent = sender;
    const text = document.createElement("span");
    text.className = "text";
    text.dir = "auto";
    renderText(text, typeof msg.text === "string" ? msg.text : "");
    li.append(timeElement(msg.timestamp), who, text);
    return li;
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

  // "You may have missed messages": where a resume or a join could not bring back everything,
  // or a node could not; at the end, or before the line `before`.
  function addDivider(detail, before = null) {
    const li = document.createElement("li");
    li.className = "line divider";
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = "You may have missed messages";
    const why = document.createElement("span");
    why.className = "detail";
    why.textContent = detail;
    li.append(text, why);
    if (before === null) {
      append(li);
    } else {
      before.before(li);
      trimLines();
    }
  }

  function renderMembers() {
    const names = [...members.keys()].sort((a, b) => a.localeCompare(b));
    const items = names.map((name) => {
      const li = document.createElement("li");
      li.className = "member";
      li.dataset.username = name;
      const label = document.createElement("span");
      label.className = "member-name";
      label.dir = "auto";
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
  // "alice, bob and 3 others are typing…": names in the order they started typing, each in a
  // <bdi> (a right-to-left name does not reorder the sentence around it).
  function typingParts(names) {
    const n = names.map((name) => {
      const el = document.createElement("bdi");
      el.textContent = name;
      return el;
    });
    switch (n.length) {
      case 0: return [];
      case 1: return [n[0], " is typing…"];
      case 2: return [n[0], " and ", n[1], " are typing…"];
      case 3: return [n[0], ", ", n[1], " and ", n[2], " are typing…"];
      default: return [n[0], ", ", n[1], ` and ${n.length - 2} others are typing…`];
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
    ui.typing.replaceChildren(...typingParts([...typers.keys()]));
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
    renderOutbox();
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

  // Characters as the server counts them (Python's len): code points, so an emoji is one,
  // where String.length counts it two UTF-16 units.
  function textLength(text) {
    let n = 0;
    for (const _ of text) n += 1;
    return n;
  }

  function setMaxTextLength(limit) {
    maxTextLength = limit;
    // A code point takes one or two UTF-16 units, and maxlength counts units: twice the limit
    // never cuts text the server would take (2,500 emoji are 5,000 units); beyond the limit
    // the counter says so and Send is disabled.
    ui.input.maxLength = 2 * limit;
    updateCounter();
  }

  function updateCounter() {
    fitInput();
    const used = textLength(ui.input.value);
    ui.counter.textContent = `${used} / ${maxTextLength}`;
    ui.counter.dataset.level = used > maxTextLength ? "over" : used === maxTextLength ? "full"
      : used >= maxTextLength * 0.9 ? "near" : "ok";
    ui.send.disabled = !canSend(ui.input.value);
  }

  // A chat can be written whenever the page is in a room or on its way back to one: offline it
  // waits in the outbox and goes out after the rejoin.
  function canSend(text) {
    return pending === null && !stopped && wanted !== null && text.trim() !== ""
      && textLength(text) <= maxTextLength;
  }

  // The composer says where its message is: on its way ("sending": no note, the text is only
  // read-only), or waiting to be (re)sent once the page is back in the room.
  function renderOutbox() {
    const state = pending === null ? "idle" : pending.sent ? "sending" : "waiting";
    ui.composer.dataset.outbox = state;
    let note = "";
    if (state === "waiting" && pending.unavailable) {
      note = "Not sent yet: the server cannot reach the other chat servers; "
        + "it goes out once it can.";
    } else if (state === "waiting") {
      note = pending.tries === 0
        ? `Not sent yet: it goes out once you are back in #${pending.room}.`
        : `Not confirmed yet: it is sent again once you are back in #${pending.room}, `
          + "and posted only once.";
    }
    ui.composerNote.hidden = note === "";
    ui.composerNote.textContent = note;
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
    requestJoin(wanted, false);
    showRoom();
    ui.input.focus();
  }

  function leave() {
    const shown = current || wanted;
    if (!shown) return;
    // Offline there is nothing to tell the server: not rejoining on reconnect is the leave.
    const snapshot = { wanted, current, members: new Map(members), memberTotal, held: [] };
    leaving = wire.leave() ? snapshot : null;
    wanted = null;
    forgetRoomState();
    if (pending) releasePending();
    setComposerError(null);
    addLine("system", `You left #${shown.room}.`);
    ui.room.focus();
  }

  function sendMessage(event) {
    if (event) event.preventDefault();
    const text = ui.input.value;
    if (!canSend(text)) return;
    pending = { id: newId(), text, room: wanted.room, sent: false, tries: 0, unavailable: false };
    setComposerError(null);
    flushOutbox();
    refreshControls();
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

  ui.username.maxLength = MAX_USERNAME_LENGTH;
  ui.room.maxLength = MAX_ROOM_LENGTH;
  const presetRoom = (params.get("room") || "").trim().slice(0, MAX_ROOM_LENGTH);
  if (presetRoom) ui.room.value = presetRoom;
  try {
    const saved = sessionStorage.getItem(NAME_KEY);
    if (saved && !ui.username.value) ui.username.value = saved;
    // Earlier versions kept the name in localStorage, shared by every tab: drop it.
    localStorage.removeItem(NAME_KEY);
  } catch {
    // no storage: the user types a name
  }
  // `/?room=dev` opens the room directly: a tab that has its name (a reload, a link opened in
  // it again) joins at once, as soon as it is connected; a tab without one asks for the name
  // first, the room filled in (Join, or Enter, then goes there).
  const presetName = ui.username.value.trim();
  if (presetRoom && presetName) wanted = { room: presetRoom, username: presetName };

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
  setMaxTextLength(DEFAULT_MAX_TEXT_LENGTH);
  showRoom();
  if (wanted !== null) ui.input.focus();
  else if (presetRoom) ui.username.focus();
  connect();
})();
