'use strict';
// Benchmark peer: roomcast's chat protocol on uWebSockets.js (C++), written the way a uWS user
// would write it: every room is a uWS topic, members `subscribe` to it, a chat is
// JSON.stringify'd once and handed to `app.publish` (the C++ topic tree writes it to every
// subscriber, sender included, coalescing what one event-loop iteration published).
//
// Wire behaviour is roomcast's (docs/protocol.md), not the seed's: a join or leave is announced to
// the other members with a constant-size notice (`event`, `room`, `username`, `count`), and only
// the joiner's own copy carries `users` (at most --max-users-list names; `count` is the total).
// Errors carry roomcast's `code`s; the connection stays usable after each. Room and user state
// lives in this process only (uWS has no cross-process pub/sub).
//
// Usage: node server.js [--host 127.0.0.1] [--port 8080] [--max-users-list 500]
//        (HOST / PORT env also work; port 0 picks a free one)
// Prints `roomcast listening on http://HOST:PORT/` once bound, like roomcast itself.

const uWS = require('uwebsockets');

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  if (i !== -1 && i + 1 < process.argv.length) return process.argv[i + 1];
  const env = process.env[name.toUpperCase().replace(/-/g, '_')];
  return env !== undefined && env !== '' ? env : fallback;
}

const host = option('host', '127.0.0.1');
const port = Number(option('port', '8080'));
const MAX_USERS_LIST = Number(option('max-users-list', '500'));
// roomcast's defaults (server/config.py), so both refuse the same input
const MAX_MESSAGE_BYTES = 65536;
const MAX_TEXT_LENGTH = 4000;
const MAX_USERNAME_LENGTH = 32;
const MAX_ROOM_LENGTH = 64;
// roomcast drops a client that leaves 1 MiB unsent (close 4000); uWS's equivalent is closing at
// the backpressure limit instead of its default of silently skipping the slow receiver.
const MAX_BACKPRESSURE = 1024 * 1024;
// seconds without any frame from the client before uWS pings it (and later drops it)
const IDLE_TIMEOUT = 120;
// control, bidi-override and zero-width characters are refused in names, as roomcast does
const FORBIDDEN_IN_NAMES = /[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]/;

const rooms = new Map(); // room name -> Set of members (uWS user data objects)
const utf8 = new TextDecoder('utf-8');

function errorFrame(code, text) {
  return JSON.stringify({ type: 'error', code, text });
}

function sendError(ws, code, text) {
  ws.send(errorFrame(code, text), false);
}

function cleanName(value, fallback, maxLength) {
  if (value === undefined || value === null) return fallback;
  if (typeof value !== 'string') return null;
  const trimmed = value.trim();
  if (trimmed === '') return fallback;
  if (trimmed.length > maxLength || FORBIDDEN_IN_NAMES.test(trimmed)) return null;
  return trimmed;
}

function notice(member, roomName, event, count) {
  const verb = event === 'join' ? 'joined' : 'left';
  return {
    type: 'system',
    text: `${member.username} ${verb} #${roomName}`,
    event,
    room: roomName,
    username: member.username,
    count,
    timestamp: Date.now(),
  };
}

function memberNames(members) {
  const names = [];
  for (const m of members) {
    if (names.length >= MAX_USERS_LIST) break;
    names.push(m.username);
  }
  return names;
}

// Takes `member` out of its room and tells the others. `ws` is null once the socket is closed
// (uWS has already unsubscribed it then, and its methods may no longer be called).
function leaveRoom(ws, member) {
  const roomName = member.room;
  if (roomName === null) return;
  member.room = null;
  if (ws !== null) ws.unsubscribe(roomName);
  const members = rooms.get(roomName);
  if (members === undefined) return;
  members.delete(member);
  if (members.size === 0) {
    rooms.delete(roomName);
    return;
  }
  app.publish(roomName, JSON.stringify(notice(member, roomName, 'leave', members.size)), false);
}

function joinRoom(ws, member, msg) {
  const username = cleanName(msg.username, 'Anonymous', MAX_USERNAME_LENGTH);
  if (username === null) {
    sendError(ws, 'invalid_username', `Username must be at most ${MAX_USERNAME_LENGTH} ` +
      'characters without control characters');
    return;
  }
  const roomName = cleanName(msg.room, 'general', MAX_ROOM_LENGTH);
  if (roomName === null) {
    sendError(ws, 'invalid_room', `Room name must be at most ${MAX_ROOM_LENGTH} ` +
      'characters without control characters');
    return;
  }
  leaveRoom(ws, member);
  let members = rooms.get(roomName);
  if (members === undefined) {
    members = new Set();
    rooms.set(roomName, members);
  }
  member.room = roomName;
  member.username = username;
  members.add(member);
  const announce = notice(member, roomName, 'join', members.size);
  ws.subscribe(roomName);
  // ws.publish reaches every subscriber but the publisher: the others get the short notice...
  if (members.size > 1) ws.publish(roomName, JSON.stringify(announce), false);
  // ...and the joiner alone its copy with the member list
  announce.users = memberNames(members);
  ws.send(JSON.stringify(announce), false);
}

function chat(ws, member, msg) {
  const text = msg.text;
  if (typeof text !== 'string') {
    sendError(ws, 'invalid_message', 'Invalid message: `text` must be a string');
    return;
  }
  if (member.room === null) {
    sendError(ws, 'not_in_room', 'Join a room first');
    return;
  }
  if (text.trim() === '') {
    sendError(ws, 'empty_text', 'Message text is empty');
    return;
  }
  if (text.length > MAX_TEXT_LENGTH) {
    sendError(ws, 'text_too_long', `Message text is longer than ${MAX_TEXT_LENGTH} characters`);
    return;
  }
  const frame = JSON.stringify({
    type: 'chat',
    username: member.username,
    text,
    timestamp: Date.now(),
  });
  // app.publish includes the sender (it is subscribed like every member)
  app.publish(member.room, frame, false);
}

function onMessage(ws, message, isBinary) {
  if (isBinary) {
    sendError(ws, 'binary_unsupported', 'Binary messages are not supported');
    return;
  }
  let msg;
  try {
    msg = JSON.parse(utf8.decode(message)); // uWS has already closed with 1007 on bad UTF-8
  } catch (err) {
    sendError(ws, 'invalid_json', 'Invalid JSON');
    return;
  }
  if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) {
    sendError(ws, 'invalid_message', 'Invalid message: expected an object');
    return;
  }
  const member = ws.getUserData();
  const kind = msg.type;
  if (kind === 'chat') chat(ws, member, msg);
  else if (kind === 'join') joinRoom(ws, member, msg);
  else if (kind === 'leave') leaveRoom(ws, member);
  else sendError(ws, 'unknown_type', 'Unknown message type (expected join, chat or leave)');
}

const app = uWS.App();
let listenSocket = null;

app.ws('/*', {
  compression: uWS.DISABLED,
  maxPayloadLength: MAX_MESSAGE_BYTES,
  maxBackpressure: MAX_BACKPRESSURE,
  closeOnBackpressureLimit: true,
  idleTimeout: IDLE_TIMEOUT,
  sendPingsAutomatically: true,
  upgrade: (res, req, context) => {
    res.upgrade(
      { room: null, username: 'Anonymous' },
      req.getHeader('sec-websocket-key'),
      req.getHeader('sec-websocket-protocol'),
      req.getHeader('sec-websocket-extensions'),
      context,
    );
  },
  message: onMessage,
  close: (ws) => leaveRoom(null, ws.getUserData()),
});

app.get('/healthz', (res) => {
  res.end('ok');
});

app.listen(host, port, (token) => {
  if (!token) {
    process.stderr.write(`uws peer: could not listen on ${host}:${port}\n`);
    process.exit(1);
  }
  listenSocket = token;
  const bound = uWS.us_socket_local_port(token);
  process.stdout.write(`roomcast listening on http://${host}:${bound}/\n`);
});

function shutdown() {
  if (listenSocket !== null) uWS.us_listen_socket_close(listenSocket);
  listenSocket = null;
  app.close(); // closes every open socket (their close handlers run)
  process.exit(0);
}

process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
