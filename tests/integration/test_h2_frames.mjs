// HTTP/2 conformance at the frame level (RFC 9113 §3-§6): hand-built frames
// in, the gateway's frames out, on raw sockets (cleartext h2c and TLS with
// ALPN h2). Each case waits for the frame or the close it expects: a
// connection error is a GOAWAY with its code followed by the close, a stream
// error an RST_STREAM with its code, and "ignored" means a PING sent after
// the frame still comes back acknowledged.
//
// Also here: the per-stream deadlines after an error answered at the end of
// a header block (the response phase's, not the header block's) and while a
// response is queued (not restarted by the client's frames).
import test from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { startSim, startObleth, stop, makeCerts } from './lib.mjs';
import { T, F, E, PREFACE, frame, settingsFrame, rstFrame, hpLit, requestBlock, h2Connect, summary } from './h2raw.mjs';

let sim, gw, certs, clearPort, tlsPort;
const open = new Set();

test.before(async () => {
  certs = await makeCerts();
  sim = await startSim();
  gw = await startObleth({
    listeners: [{ address: '127.0.0.1:0' }, { address: '127.0.0.1:0', tls: { cert: certs.cert, key: certs.key } }],
    upstreams: [{ name: 'sim', endpoints: [sim.url] }],
    routes: [{ prefix: '/', class: 'passthrough', upstream: 'sim' }],
    limits: { max_concurrent_streams: 2 },
    timeouts: { grace_ms: 2000 },
  });
  [clearPort, tlsPort] = gw.ports;
});

test.after(async () => {
  for (const s of open) s.destroy();
  await stop(gw.proc);
  await stop(sim.proc);
});

async function h2(opts = {}) {
  const s = await h2Connect(opts.port ?? clearPort, opts);
  open.add(s);
  return s;
}

const name = (code) => Object.entries(E).find(([, v]) => v === code)?.[0] ?? code;
const GET = (path = '/sim/stats') => requestBlock('GET', path);
const headers = (id, block, flags = F.END_HEADERS | F.END_STREAM) => frame(T.HEADERS, flags, id, block);
const data = (id, bytes, flags = 0) => frame(T.DATA, flags, id, Buffer.alloc(bytes, 'x'));
const u32 = (n) => { const b = Buffer.alloc(4); b.writeUInt32BE(n); return b; };
const windowUpdate = (id, inc) => frame(T.WINDOW_UPDATE, 0, id, u32(inc));
const ping = (bytes = Buffer.from('obleth!!')) => frame(T.PING, 0, 0, bytes);

// A connection error: GOAWAY with code, then the gateway closes.
async function connError(s, code, what) {
  const g = await s.next((f) => f.type === T.GOAWAY, `GOAWAY ${name(code)} (${what})`);
  assert.equal(g.payload.readUInt32BE(4), code, `${what}: GOAWAY ${name(g.payload.readUInt32BE(4))}, want ${name(code)}`);
  await s.gone;
  return { lastId: g.payload.readUInt32BE(0) & 0x7fffffff };
}

// A stream error: RST_STREAM on id with code, after which the connection
// lives on; or, as RFC 9113 §5.4.1 allows (and nghttp2 does for some), the
// same code as a connection error.
async function streamError(s, id, code, what) {
  const f = await s.next((x) => (x.type === T.RST_STREAM && x.id === id) || x.type === T.GOAWAY, `RST_STREAM ${name(code)} (${what})`);
  const got = f.payload.readUInt32BE(f.type === T.GOAWAY ? 4 : 0);
  assert.equal(got, code, `${what}: ${name(got)}, want ${name(code)}: ${summary(s)}`);
  if (f.type === T.GOAWAY) await s.gone;
  else await alive(s, what);
}

// The connection still works: a PING comes back acknowledged.
let pings = 0;
async function alive(s, what) {
  const payload = Buffer.alloc(8);
  payload.writeUInt32BE(++pings);
  s.write(ping(payload));
  await s.next((f) => f.type === T.PING && (f.flags & F.ACK) && f.payload.equals(payload), `PING ACK (${what})`);
}

// A complete response on stream id: its HEADERS (status) and END_STREAM.
async function response(s, id) {
  await s.next((f) => f.id === id && (f.flags & F.END_STREAM) && (f.type === T.DATA || f.type === T.HEADERS), `the end of stream ${id}`);
  return s.status(id);
}

// ---------------------------------------------------------------- §3.4 the connection preface

test('§3.4: the server preface is a SETTINGS frame, and a request on a raw connection is answered', async () => {
  const s = await h2();
  const first = await s.next(() => true, 'the first frame');
  assert.equal(first.type, T.SETTINGS);
  assert.equal(first.flags & F.ACK, 0);
  await s.next((f) => f.type === T.SETTINGS && (f.flags & F.ACK), 'the ACK of our SETTINGS');
  s.write(headers(1, GET()));
  assert.equal(await response(s, 1), 200);
  s.end();
});

// Once "PRI * HTTP/2.0\r\n" is in, the client speaks HTTP/2 (no HTTP/1.1
// server can serve that line); these used to be handed to HTTP/1.1.
for (const bad of ['PRI * HTTP/2.0\r\n\r\nSM\r\n\rQ', 'PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n' + 'x'.repeat(32)]) {
  test(`§3.4: an invalid preface on cleartext (${JSON.stringify(bad.slice(16, 24))}) is GOAWAY PROTOCOL_ERROR`, async () => {
    const s = await h2({ preface: Buffer.from(bad) });
    await connError(s, E.PROTOCOL_ERROR, 'bad preface, h2c');
  });
}

test('§3.4: an invalid preface over TLS with ALPN h2 is GOAWAY PROTOCOL_ERROR', async () => {
  const s = await h2({ port: tlsPort, tls: { ca: readFileSync(certs.ca) }, preface: Buffer.from('INVALID CONNECTION PREFACE\r\n\r\n') });
  assert.equal(s.alpnProtocol, 'h2');
  await connError(s, E.PROTOCOL_ERROR, 'bad preface, TLS');
});

test('§3.4: a valid preface over TLS is answered with SETTINGS and serves a request', async () => {
  const s = await h2({ port: tlsPort, tls: { ca: readFileSync(certs.ca) } });
  s.write(headers(1, GET()));
  assert.equal(await response(s, 1), 200);
  s.end();
});

test('§3.4: a first frame other than SETTINGS is a connection error PROTOCOL_ERROR', async () => {
  const s = await h2({ preface: Buffer.concat([PREFACE, ping()]) });
  await connError(s, E.PROTOCOL_ERROR, 'PING before SETTINGS');
});

// ---------------------------------------------------------------- §4 frames

test('§4.2: a DATA frame larger than SETTINGS_MAX_FRAME_SIZE is FRAME_SIZE_ERROR', async () => {
  const s = await h2();
  s.write(Buffer.concat([headers(1, requestBlock('POST', '/sim/stats'), F.END_HEADERS), data(1, 16385)]));
  await connError(s, E.FRAME_SIZE_ERROR, 'DATA of 16385 bytes');
});

test('§4.1/§5.5: a frame of an unknown type is ignored', async () => {
  const s = await h2();
  s.write(frame(0x42, 0xff, 0, Buffer.from('ignored')));
  await alive(s, 'unknown frame type');
  s.end();
});

// ---------------------------------------------------------------- §5.1 stream states

test('§5.1: DATA on an idle stream is a connection error PROTOCOL_ERROR', async () => {
  const s = await h2();
  s.write(data(1, 10, F.END_STREAM));
  await connError(s, E.PROTOCOL_ERROR, 'DATA on idle stream 1');
});

test('§5.1: WINDOW_UPDATE and RST_STREAM on an idle stream are connection errors PROTOCOL_ERROR', async () => {
  const a = await h2();
  a.write(windowUpdate(1, 100));
  await connError(a, E.PROTOCOL_ERROR, 'WINDOW_UPDATE on idle stream 1');
  const b = await h2();
  b.write(rstFrame(1, E.CANCEL));
  await connError(b, E.PROTOCOL_ERROR, 'RST_STREAM on idle stream 1');
});

test('§5.1: PRIORITY on an idle stream is allowed', async () => {
  const s = await h2();
  s.write(frame(T.PRIORITY, 0, 3, Buffer.concat([u32(0), Buffer.from([15])])));
  await alive(s, 'PRIORITY on idle stream 3');
  s.write(headers(3, GET()));
  assert.equal(await response(s, 3), 200);
  s.end();
});

test('§5.1: DATA on a half-closed (remote) stream is STREAM_CLOSED', async () => {
  // A zero window keeps the response, and so the stream, open.
  const s = await h2({ settings: [[4, 0]] });
  s.write(headers(1, GET()));
  await s.next((f) => f.type === T.HEADERS && f.id === 1, 'the response head');
  s.write(data(1, 10));
  const f = await s.next((x) => (x.type === T.RST_STREAM && x.id === 1) || x.type === T.GOAWAY, 'STREAM_CLOSED');
  assert.equal(f.payload.readUInt32BE(f.type === T.GOAWAY ? 4 : 0), E.STREAM_CLOSED, summary(s));
  s.destroy();
});

test('§5.1: HEADERS on a closed stream is a connection error STREAM_CLOSED', async () => {
  const s = await h2();
  s.write(headers(1, GET()));
  assert.equal(await response(s, 1), 200);
  s.write(headers(1, GET()));
  await connError(s, E.STREAM_CLOSED, 'HEADERS on closed stream 1');
});

test('§5.1.1: a stream id lower than a previous one is a connection error PROTOCOL_ERROR', async () => {
  const s = await h2();
  s.write(headers(5, GET()));
  assert.equal(await response(s, 5), 200);
  s.write(headers(3, GET()));
  const g = await connError(s, E.PROTOCOL_ERROR, 'HEADERS on stream 3 after 5');
  assert.equal(g.lastId, 5);
});

test('§5.1.1: a lower stream id is an error even while the higher one is open', async () => {
  const s = await h2({ settings: [[4, 0]] });
  s.write(headers(7, GET()));
  await s.next((f) => f.type === T.HEADERS && f.id === 7, 'the response head');
  s.write(headers(1, GET()));
  await connError(s, E.PROTOCOL_ERROR, 'HEADERS on stream 1 after 7');
});

test('§5.1.1: an even stream id from the client is a connection error PROTOCOL_ERROR', async () => {
  const s = await h2();
  s.write(headers(2, GET()));
  await connError(s, E.PROTOCOL_ERROR, 'HEADERS on stream 2');
});

test('§5.1.2: a stream past SETTINGS_MAX_CONCURRENT_STREAMS is refused', async () => {
  const s = await h2({ settings: [[4, 0]] });
  const settings = await s.next((f) => f.type === T.SETTINGS && !(f.flags & F.ACK), 'the server SETTINGS');
  let max = null;
  for (let i = 0; i + 6 <= settings.payload.length; i += 6)
    if (settings.payload.readUInt16BE(i) === 3) max = settings.payload.readUInt32BE(i + 2);
  assert.equal(max, 2);
  await s.next((f) => f.type === T.SETTINGS && (f.flags & F.ACK), 'the ACK of our SETTINGS');
  s.write(Buffer.concat([headers(1, GET()), headers(3, GET())]));
  await s.next((f) => f.type === T.HEADERS && f.id === 3, 'the second response head');
  s.write(headers(5, GET()));
  const f = await s.next((x) => (x.type === T.RST_STREAM && x.id === 5) || x.type === T.GOAWAY, 'the third stream refused');
  if (f.type === T.GOAWAY) assert.equal(f.payload.readUInt32BE(4), E.PROTOCOL_ERROR, summary(s));
  else assert.equal(f.payload.readUInt32BE(0), E.REFUSED_STREAM, summary(s));
  s.destroy();
});

// A refused stream was opened all the same (RFC 9113 §5.1.1, §8.7): the
// client may have sent its trailers before the RST_STREAM reached it, and
// they must not cost the streams the connection still serves. A client that
// has not acknowledged the server's SETTINGS yet is refused with
// RST_STREAM REFUSED_STREAM (after the acknowledgement, nghttp2 makes it a
// connection error).
test('§5.1.2: trailers on a stream refused past SETTINGS_MAX_CONCURRENT_STREAMS are ignored', async () => {
  const s = await h2({ settings: [[4, 0]], ack: false });
  await s.next((f) => f.type === T.SETTINGS && (f.flags & F.ACK), 'the ACK of our SETTINGS');
  s.write(Buffer.concat([headers(1, GET()), headers(3, GET())]));
  await s.next((f) => f.type === T.HEADERS && f.id === 3, 'the second response head');
  s.write(headers(5, requestBlock('POST', '/sim/stats'), F.END_HEADERS));
  const f = await s.next((x) => (x.type === T.RST_STREAM && x.id === 5) || x.type === T.GOAWAY, 'the third stream refused');
  assert.equal(f.type, T.RST_STREAM, summary(s));
  assert.equal(f.payload.readUInt32BE(0), E.REFUSED_STREAM, summary(s));
  s.write(headers(5, hpLit('x-trailer', '1')));
  await alive(s, 'trailers on refused stream 5');
  s.write(windowUpdate(1, 1 << 20));
  s.write(windowUpdate(0, 1 << 20));
  assert.equal(await response(s, 1), 200);
  s.destroy();
});

// ---------------------------------------------------------------- §6 frame definitions

test('§6.1/§6.2: DATA and HEADERS on stream 0 are connection errors PROTOCOL_ERROR', async () => {
  const a = await h2();
  a.write(data(0, 4));
  await connError(a, E.PROTOCOL_ERROR, 'DATA on stream 0');
  const b = await h2();
  b.write(headers(0, GET()));
  await connError(b, E.PROTOCOL_ERROR, 'HEADERS on stream 0');
});

test('§6.3: PRIORITY of the wrong length is a stream error FRAME_SIZE_ERROR', async () => {
  const s = await h2();
  s.write(frame(T.PRIORITY, 0, 1, u32(0)));
  await streamError(s, 1, E.FRAME_SIZE_ERROR, 'PRIORITY of 4 bytes');
  s.end();
});

test('§6.3: a stream depending on itself is a stream error PROTOCOL_ERROR', async () => {
  const s = await h2();
  s.write(frame(T.PRIORITY, 0, 1, Buffer.concat([u32(1), Buffer.from([15])])));
  await streamError(s, 1, E.PROTOCOL_ERROR, 'PRIORITY on itself');
  s.end();
});

test('§6.4: RST_STREAM of the wrong length is a connection error FRAME_SIZE_ERROR', async () => {
  const s = await h2({ settings: [[4, 0]] });
  s.write(headers(1, GET()));
  await s.next((f) => f.type === T.HEADERS && f.id === 1, 'the response head');
  s.write(frame(T.RST_STREAM, 0, 1, Buffer.alloc(3)));
  await connError(s, E.FRAME_SIZE_ERROR, 'RST_STREAM of 3 bytes');
});

test('§6.5: SETTINGS is acknowledged; unknown identifiers are ignored', async () => {
  const s = await h2();
  s.write(settingsFrame([[0x99, 7], [3, 50]]));
  const first = await s.next((f) => f.type === T.SETTINGS && (f.flags & F.ACK), 'the first ACK');
  await s.next((f) => f !== first && f.type === T.SETTINGS && (f.flags & F.ACK), 'the second ACK');
  await alive(s, 'after SETTINGS');
  s.end();
});

for (const [what, pairs, code] of [
  ['ENABLE_PUSH 2', [[2, 2]], E.PROTOCOL_ERROR],
  ['INITIAL_WINDOW_SIZE 2^31', [[4, 2 ** 31]], E.FLOW_CONTROL_ERROR],
  ['MAX_FRAME_SIZE 16383', [[5, 16383]], E.PROTOCOL_ERROR],
  ['MAX_FRAME_SIZE 2^24', [[5, 2 ** 24]], E.PROTOCOL_ERROR],
]) {
  test(`§6.5.2: SETTINGS with ${what} is a connection error ${name(code)}`, async () => {
    const s = await h2();
    s.write(settingsFrame(pairs));
    await connError(s, code, what);
  });
}

test('§6.5: SETTINGS malformed (ACK with a payload, a length not a multiple of 6, a stream id) are connection errors', async () => {
  const a = await h2();
  a.write(frame(T.SETTINGS, F.ACK, 0, Buffer.alloc(6)));
  await connError(a, E.FRAME_SIZE_ERROR, 'SETTINGS ACK with a payload');
  const b = await h2();
  b.write(frame(T.SETTINGS, 0, 0, Buffer.alloc(5)));
  await connError(b, E.FRAME_SIZE_ERROR, 'SETTINGS of 5 bytes');
  const c = await h2();
  c.write(frame(T.SETTINGS, 0, 1, Buffer.alloc(0)));
  await connError(c, E.PROTOCOL_ERROR, 'SETTINGS on stream 1');
});

test('§6.7: PING is answered with an ACK carrying the same payload', async () => {
  const s = await h2();
  await alive(s, 'PING');
  s.end();
});

test('§6.7: PING of the wrong length, or on a stream, is a connection error', async () => {
  const a = await h2();
  a.write(frame(T.PING, 0, 0, Buffer.alloc(7)));
  await connError(a, E.FRAME_SIZE_ERROR, 'PING of 7 bytes');
  const b = await h2();
  b.write(frame(T.PING, 0, 1, Buffer.alloc(8)));
  await connError(b, E.PROTOCOL_ERROR, 'PING on stream 1');
});

test('§6.9: WINDOW_UPDATE with increment 0: connection error on stream 0, stream error on a stream', async () => {
  const a = await h2();
  a.write(windowUpdate(0, 0));
  await connError(a, E.PROTOCOL_ERROR, 'WINDOW_UPDATE 0 on the connection');
  const b = await h2({ settings: [[4, 0]] });
  b.write(headers(1, GET()));
  await b.next((f) => f.type === T.HEADERS && f.id === 1, 'the response head');
  b.write(windowUpdate(1, 0));
  await streamError(b, 1, E.PROTOCOL_ERROR, 'WINDOW_UPDATE 0 on stream 1');
  b.end();
});

test('§6.9: WINDOW_UPDATE of the wrong length is a connection error FRAME_SIZE_ERROR', async () => {
  const s = await h2();
  s.write(frame(T.WINDOW_UPDATE, 0, 0, Buffer.alloc(3, 1)));
  await connError(s, E.FRAME_SIZE_ERROR, 'WINDOW_UPDATE of 3 bytes');
});

test('§6.9.1: a window above 2^31-1: connection error on the connection, stream error on a stream', async () => {
  const a = await h2();
  a.write(windowUpdate(0, 2 ** 31 - 1));
  await connError(a, E.FLOW_CONTROL_ERROR, 'connection window overflow');
  // Both updates in one write, so that no DATA goes out between them.
  const b = await h2({ settings: [[4, 0]] });
  b.write(headers(1, GET()));
  await b.next((f) => f.type === T.HEADERS && f.id === 1, 'the response head');
  b.write(Buffer.concat([windowUpdate(1, 2 ** 31 - 1), windowUpdate(1, 1)]));
  await streamError(b, 1, E.FLOW_CONTROL_ERROR, 'stream window overflow');
  b.end();
});

test('§6.9.2: INITIAL_WINDOW_SIZE raised so an open stream\'s window overflows is FLOW_CONTROL_ERROR', async () => {
  const s = await h2({ settings: [[4, 0]] });
  s.write(headers(1, GET()));
  await s.next((f) => f.type === T.HEADERS && f.id === 1, 'the response head');
  s.write(Buffer.concat([windowUpdate(1, 2 ** 31 - 1), settingsFrame([[4, 1]])]));
  await streamError(s, 1, E.FLOW_CONTROL_ERROR, 'INITIAL_WINDOW_SIZE overflowing stream 1');
  s.destroy();
});

test('§6.10: CONTINUATION without HEADERS, and another frame inside a header block, are PROTOCOL_ERROR', async () => {
  const a = await h2();
  a.write(frame(T.CONTINUATION, F.END_HEADERS, 1, hpLit('x-a', 'b')));
  await connError(a, E.PROTOCOL_ERROR, 'CONTINUATION alone');
  const b = await h2();
  b.write(Buffer.concat([headers(1, GET(), F.END_STREAM), ping()]));
  await connError(b, E.PROTOCOL_ERROR, 'PING inside a header block');
});

// ---------------------------------------------------------------- per-stream deadlines

const BIG = (method) => requestBlock(method, '/sim/stats', [['x-big', 'b'.repeat(5000)]]);

// A gateway whose header deadline is much shorter than its idle deadline.
async function deadlineGateway(fn) {
  const g = await startObleth({
    upstreams: [{ name: 'sim', endpoints: [sim.url] }],
    routes: [{ prefix: '/', class: 'passthrough', upstream: 'sim' }],
    limits: { max_header_bytes: 4096 },
    timeouts: { client_header_ms: 300, idle_ms: 1500, client_body_ms: 60000, grace_ms: 2000 },
  });
  try {
    await fn(g);
  } finally {
    await stop(g.proc);
  }
}

test('an error answered at the end of a header block waits on the idle deadline, not the header one', () => deadlineGateway(async (g) => {
  // A header list above max_header_bytes: 431 at the end of the block. The
  // zero window keeps the error
  // body queued, so the client is "not reading" and the stream is reset at
  // idle_ms (1500) after the response was queued; it used to be reset when
  // the header deadline (300) of the finished block came due.
  const s = await h2({ port: g.port, settings: [[4, 0]] });
  const t0 = Date.now();
  s.write(headers(1, BIG('GET')));
  await s.next((f) => f.type === T.HEADERS && f.id === 1, 'the 431');
  assert.equal(s.status(1), 431);
  const rst = await s.next((f) => f.type === T.RST_STREAM && f.id === 1, 'the reset of the unread 400');
  assert.equal(rst.payload.readUInt32BE(0), E.CANCEL);
  assert.ok(rst.at - t0 >= 1400, `reset after ${rst.at - t0} ms, before idle_ms`);
  s.destroy();
}));

test('a queued response\'s idle deadline is not restarted by the client\'s frames', () => deadlineGateway(async (g) => {
  // 431 at the end of the header block while the client goes on sending a
  // body and never opens its window: the reset comes idle_ms after the
  // response was queued, however often the client sends. It used to be put
  // off by every DATA frame, up to client_body_ms.
  const s = await h2({ port: g.port, settings: [[4, 0]] });
  s.write(headers(1, BIG('POST'), F.END_HEADERS));
  await s.next((f) => f.type === T.HEADERS && f.id === 1, 'the 431');
  assert.equal(s.status(1), 431);
  const reset = s.next((f) => f.type === T.RST_STREAM && f.id === 1, 'the reset');
  let sent = 0;
  let done = false;
  reset.then(() => { done = true; }, () => { done = true; });
  // Up to 40 DATA frames 200 ms apart (8 s); the reset ends the loop.
  while (!done && sent < 40) {
    s.write(data(1, 10));
    sent++;
    await new Promise((r) => setTimeout(r, 200));
  }
  const rst = await reset;
  assert.equal(rst.payload.readUInt32BE(0), E.CANCEL);
  assert.ok(sent < 40, `no reset while the client kept sending (${sent} DATA frames, ${sent * 200} ms): ${summary(s)}`);
  s.destroy();
}));

test('while draining, trailers on a stream opened after the GOAWAY was sent do not end the connection', () => deadlineGateway(async (g) => {
  // Stream 3 crossed the GOAWAY on the wire: the gateway ignores it (RFC
  // 9113 6.8), and its trailers too, while stream 1 finishes. The zero
  // window holds stream 1's body until the client opens it.
  const s = await h2({ port: g.port, settings: [[4, 0]] });
  s.write(headers(1, GET()));
  await s.next((f) => f.type === T.HEADERS && f.id === 1, 'the response head');
  g.proc.kill('SIGTERM');
  const goaway = await s.next((f) => f.type === T.GOAWAY, 'the GOAWAY of the drain');
  assert.equal(goaway.payload.readUInt32BE(4), E.NO_ERROR);
  s.write(headers(3, requestBlock('POST', '/sim/stats'), F.END_HEADERS));
  s.write(headers(3, hpLit('x-trailer', '1')));
  await alive(s, 'trailers on ignored stream 3');
  s.write(Buffer.concat([windowUpdate(1, 1 << 20), windowUpdate(0, 1 << 20)]));
  assert.equal(await response(s, 1), 200);
  assert.equal(s.frames.filter((f) => f.type === T.GOAWAY).length, 1, summary(s));
  s.destroy();
  const exit = await new Promise((r) => (g.proc.exitInfo ? r(g.proc.exitInfo) : g.proc.once('exit', (code, sig) => r({ code, sig }))));
  assert.equal(exit.code, 0);
}));

test('the gateway keeps serving after all of the above', async () => {
  const s = await h2();
  s.write(headers(1, GET()));
  assert.equal(await response(s, 1), 200);
  s.end();
});
