'use strict';
// Benchmark peer: the chat protocol of the seed tutorial, served by Node.js + `ws`.
// It deliberately behaves like the tutorial's server (the stack a user would otherwise pick):
// every join/leave broadcasts a system message carrying the full member list to every member
// (joiner included), every chat is JSON.stringify'd once per broadcast and sent to every member
// (sender included), and a 30 s ping sweep terminates peers that did not answer the last ping.
//
// Usage: node server.js [--host 127.0.0.1] [--port 8080]   (PORT / HOST env also work)
// Prints `roomcast listening on http://HOST:PORT/` once bound, like roomcast itself.

const { WebSocketServer } = require('ws');

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  if (i !== -1 && i + 1 < process.argv.length) return process.argv[i + 1];
  const env = process.env[name.toUpperCase()];
  return env !== undefined && env !== '' ? env : fallback;
}

const host = option('host', '127.0.0.1');
const port = Number(option('port', '8080'));
const HEARTBEAT_MS = 30000;

const rooms = new Map(); // room name -> Set<WebSocket>

function sendJson(socket, obj) {
  if (socket.readyState === socket.OPEN) socket.send(JSON.stringify(obj));
}

function broadcast(roomName, obj) {
  const members = rooms.get(roomName);
  if (members === undefined) return;
  const text = JSON.stringify(obj);
  for (const member of members) {
    if (member.readyState === member.OPEN) member.send(text);
  }
}

function memberNames(members) {
  return Array.from(members, (m) => m.username);
}

function leaveRoom(socket) {
  const roomName = socket.room;
  if (roomName === null) return;
  socket.room = null;
  const members = rooms.get(roomName);
  if (members === undefined) return;
  members.delete(socket);
  if (members.size === 0) {
    rooms.delete(roomName);
    return;
  }
  broadcast(roomName, {
    type: 'system',
    text: `${socket.username} left #${roomName}`,
    users: memberNames(members),
  });
}

function joinRoom(socket, msg) {
  const roomName = msg.room || 'general';
  const username = msg.username || 'Anonymous';
  leaveRoom(socket);
  socket.room = roomName;
  socket.username = username;
  let members = rooms.get(roomName);
  if (members === undefined) {
    members = new Set();
    rooms.set(roomName, members);
  }
  members.add(socket);
  broadcast(roomName, {
    type: 'system',
    text: `${username} joined #${roomName}`,
    users: memberNames(members),
  });
}

function chat(socket, msg) {
  if (socket.room === null) {
    sendJson(socket, { type: 'error', text: 'Join a room first' });
    return;
  }
  broadcast(socket.room, {
    type: 'chat',
    username: socket.username,
    text: msg.text,
    timestamp: Date.now(),
  });
}

const wss = new WebSocketServer({ host, port });

wss.on('connection', (socket) => {
  socket.alive = true;
  socket.room = null;
  socket.username = 'Anonymous';
  socket.on('pong', () => {
    socket.alive = true;
  });
  socket.on('message', (data) => {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch (err) {
      sendJson(socket, { type: 'error', text: 'Invalid JSON' });
      return;
    }
    const kind = msg !== null && typeof msg === 'object' ? msg.type : undefined;
    if (kind === 'join') joinRoom(socket, msg);
    else if (kind === 'chat') chat(socket, msg);
    else if (kind === 'leave') leaveRoom(socket);
    else sendJson(socket, { type: 'error', text: 'Unknown message type' });
  });
  socket.on('close', () => leaveRoom(socket));
  socket.on('error', () => {});
});

const sweep = setInterval(() => {
  for (const socket of wss.clients) {
    if (!socket.alive) {
      socket.terminate();
      continue;
    }
    socket.alive = false;
    socket.ping();
  }
}, HEARTBEAT_MS);

wss.on('listening', () => {
  const addr = wss.address();
  process.stdout.write(`roomcast listening on http://${addr.address}:${addr.port}/\n`);
});

wss.on('close', () => clearInterval(sweep));

function shutdown() {
  clearInterval(sweep);
  for (const socket of wss.clients) socket.terminate();
  wss.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}

process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
