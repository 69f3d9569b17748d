#!/usr/bin/env node
// Health check for a MongoDB wire-protocol server (FerretDB, mongo-java-server) that needs no npm packages:
// sends OP_MSG `ping` and `buildInfo` to the admin database, exits 0 and prints the reported
// server version when ping answers ok: 1, exits 1 otherwise.
//
//   node scripts/health/mongo-ping.mjs [host:port]    (default 127.0.0.1:27017)
import net from 'node:net';

const [host = '127.0.0.1', port = '27017'] = (process.argv[2] ?? '').split(':').filter(Boolean);
const OP_MSG = 2013;

/** BSON for a flat document of int32 and string fields, which is all these commands need. */
function bson(fields) {
  const parts = [];
  for (const [name, value] of Object.entries(fields)) {
    const key = Buffer.from(`${name}\0`);
    if (typeof value === 'number') {
      const v = Buffer.alloc(4);
      v.writeInt32LE(value);
      parts.push(Buffer.from([0x10]), key, v);
    } else {
      const s = Buffer.from(`${value}\0`);
      const len = Buffer.alloc(4);
      len.writeInt32LE(s.length);
      parts.push(Buffer.from([0x02]), key, len, s);
    }
  }
  const body = Buffer.concat([...parts, Buffer.from([0])]);
  const size = Buffer.alloc(4);
  size.writeInt32LE(body.length + 4);
  return Buffer.concat([size, body]);
}

function opMsg(requestId, command) {
  const doc = bson(command);
  const header = Buffer.alloc(16 + 4 + 1);
  header.writeInt32LE(header.length + doc.length, 0);
  header.writeInt32LE(requestId, 4);
  header.writeInt32LE(0, 8);
  header.writeInt32LE(OP_MSG, 12);
  header.writeUInt32LE(0, 16); // flag bits
  header.writeUInt8(0, 20); // section kind 0: the command document
  return Buffer.concat([header, doc]);
}

/** Reads the top-level `ok` (double or int32) and `version` (string) fields of a BSON reply. */
function readReply(doc) {
  const out = {};
  let i = 4;
  while (i < doc.length - 1) {
    const type = doc[i];
    const end = doc.indexOf(0, i + 1);
    const name = doc.toString('utf8', i + 1, end);
    i = end + 1;
    let size;
    switch (type) {
      case 0x01: // double
        if (name === 'ok') out.ok = doc.readDoubleLE(i);
        size = 8;
        break;
      case 0x02: // string
      case 0x0d: // JavaScript code
      case 0x0e: // symbol
        size = 4 + doc.readInt32LE(i);
        if (name === 'version') out.version = doc.toString('utf8', i + 4, i + size - 1);
        break;
      case 0x03: // document
      case 0x04: // array
      case 0x0f: // code with scope
        size = doc.readInt32LE(i);
        break;
      case 0x05: // binary
        size = 4 + 1 + doc.readInt32LE(i);
        break;
      case 0x07: // ObjectId
        size = 12;
        break;
      case 0x08: // bool
        size = 1;
        break;
      case 0x0a: // null
      case 0x06: // undefined
      case 0x7f: // max key
      case 0xff: // min key
        size = 0;
        break;
      case 0x10: // int32
        if (name === 'ok') out.ok = doc.readInt32LE(i);
        size = 4;
        break;
      case 0x09: // UTC datetime
      case 0x11: // timestamp
      case 0x12: // int64
        size = 8;
        break;
      case 0x13: // decimal128
        size = 16;
        break;
      default:
        throw new Error(`unexpected BSON type 0x${type.toString(16)} in the reply`);
    }
    i += size;
  }
  return out;
}

const socket = net.connect({ host, port: Number(port) });
socket.setTimeout(3000, () => socket.destroy(new Error('timed out')));
socket.on('error', (error) => {
  console.error(`mongo-ping ${host}:${port}: ${error.message}`);
  process.exit(1);
});

const replies = [];
let pending = Buffer.alloc(0);
socket.on('connect', () => {
  socket.write(opMsg(1, { ping: 1, $db: 'admin' }));
  socket.write(opMsg(2, { buildInfo: 1, $db: 'admin' }));
});
socket.on('data', (chunk) => {
  pending = Buffer.concat([pending, chunk]);
  while (pending.length >= 4 && pending.length >= pending.readInt32LE(0)) {
    const message = pending.subarray(0, pending.readInt32LE(0));
    pending = pending.subarray(message.length);
    if (message.readInt32LE(12) !== OP_MSG || message[20] !== 0) {
      socket.destroy(new Error('unexpected reply'));
      return;
    }
    replies.push(readReply(message.subarray(21)));
  }
  if (replies.length === 2) {
    socket.end();
    const [ping, buildInfo] = replies;
    if (ping.ok !== 1) {
      console.error(`mongo-ping ${host}:${port}: ping answered ok: ${ping.ok}`);
      process.exit(1);
    }
    console.log(buildInfo.version ?? 'unknown');
  }
});
