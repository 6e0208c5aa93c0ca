// Abuse: hostile clients and a silent upstream, driven with raw sockets and
// hand-built HTTP/2 frames (a real client library will not misbehave this
// much). Each test asserts what a user or operator sees: the status a
// client gets, when its connection is closed, that the process keeps
// serving, that its resident memory (/proc/<pid>/status VmRSS) and open
// descriptors (/proc/<pid>/fd) stay bounded, and that it exits 0 on SIGTERM
// without a sanitizer report (stop() checks both).
//
// Covered: slow request heads (HTTP/1.1, the h2c preface, an HTTP/2 header
// block) and slow or stalled request bodies; 10,000 connections opened and
// dropped; HTTP/2 rapid reset (CVE-2023-44487); SETTINGS and PING floods;
// header-list bombs (HTTP/1.1, CONTINUATION, HPACK repetition); clients that
// never read their response; an upstream that accepts and never answers.
import test from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { readFileSync, readdirSync } from 'node:fs';
import { startSim, startObleth, stop, curl, simStats, sleep, rig } from './lib.mjs';
import { until, rawConnect, T, F, E, PREFACE, frame, settingsFrame, rstFrame, hpLit, hpLitIndexed, hpIndexed, requestBlock, h2Connect,
  summary } from './h2raw.mjs';

// ASan keeps freed memory in a quarantine (256 MiB by default), which would
// read as growth in the RSS bounds below; a small one still catches
// use-after-free in what these tests do.
process.env.ASAN_OPTIONS = [process.env.ASAN_OPTIONS, 'quarantine_size_mb=4'].filter(Boolean).join(':');

const MiB = 1024 * 1024;
const RSS_BOUND = 32 * MiB;

// ---- process observation ----

function rss(pid) {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/^VmRSS:\s+(\d+) kB/m);
  return Number(m[1]) * 1024;
}

const fds = (pid) => readdirSync(`/proc/${pid}/fd`).length;

// Assert that resident memory grew by less than RSS_BOUND over rss0 (peak:
// the highest value seen, default now) and report the figure.
function rssBounded(t, pid, rss0, label, peak = rss(pid)) {
  const grew = (peak - rss0) / MiB;
  t.diagnostic(`${label}: RSS ${(rss0 / MiB).toFixed(1)} MiB at the start, ${grew >= 0 ? '+' : ''}${grew.toFixed(1)} MiB`);
  assert.ok(peak - rss0 < RSS_BOUND, `${label}: RSS grew by ${grew.toFixed(1)} MiB`);
}

// A short grace period: should a test fail with a hostile connection still
// open, SIGTERM must not wait the default 30 s for it.
function baseConfig(sim, extra = {}) {
  return {
    upstreams: [{ name: 'sim', endpoints: [sim.url] }],
    routes: [
      { prefix: '/v1/chat/', class: 'inference', upstream: 'sim' },
      { prefix: '/', class: 'passthrough', upstream: 'sim' },
    ],
    ...extra,
    timeouts: { grace_ms: 2000, ...extra.timeouts },
  };
}

// Run fn({ sim, gw, pid }) against a simulator (started with simArgs) and a
// gateway on baseConfig(sim, extra); both are stopped afterwards.
async function withGateway(extra, simArgs, fn) {
  if (typeof simArgs === 'function') [simArgs, fn] = [[], simArgs];
  const r$ = rig();
  try {
    const sim = await r$.sim(simArgs);
    const gw = await r$.gateway(baseConfig(sim, extra));
    await fn({ sim, gw, pid: gw.proc.pid });
  } finally {
    await r$.close();
  }
}

async function serves(gw) {
  const r = await curl(['--max-time', '30', `${gw.url}/v1/models`]);
  assert.equal(r.status, 200, `the gateway still serves: ${r.stderr}`);
  const r2 = await curl(['--max-time', '30', '--http2-prior-knowledge', `${gw.url}/v1/models`]);
  assert.equal(r2.status, 200, `the gateway still serves h2: ${r2.stderr}`);
}

// ---- raw TCP ----

// Write data one byte every ms milliseconds until the socket closes or the
// data runs out; resolves with the number of bytes written.
async function drip(s, data, ms) {
  let i = 0;
  for (; i < data.length && !s.closedAt; i++) {
    s.write(data.subarray(i, i + 1));
    await sleep(ms);
  }
  return i;
}

// ---- slowloris ----

const SLOW_HEADS = { timeouts: { client_header_ms: 500 } };

test('slow request heads are cut at client_header_ms: HTTP/1.1, the h2c preface, an HTTP/2 header block', () => withGateway(SLOW_HEADS, async ({ gw }) => {
  // HTTP/1.1: one byte every 100 ms would take seconds; 408 at 500 ms.
  const h1 = await rawConnect(gw.port);
  const t1 = Date.now();
  const head = Buffer.from('GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ' + 'a'.repeat(60) + '\r\n\r\n');
  const sent = await drip(h1, head, 100);
  await h1.gone;
  assert.ok(sent < head.length, 'closed before the head was complete');
  assert.match(h1.text, /^HTTP\/1\.1 408 /, h1.text);
  // (the bounds are loose above: a loaded machine delays timers, and the
  // 408 before the head was complete already says the timer cut it)
  assert.ok(h1.closedAt - t1 >= 450 && h1.closedAt - t1 < 10000, `closed after ${h1.closedAt - t1} ms`);

  // The h2c preface trickled a byte at a time: every byte used to restart
  // the wait, so 24 bytes could hold a connection for 24 timeouts.
  const pre = await rawConnect(gw.port);
  const t2 = Date.now();
  const preSent = await drip(pre, PREFACE, 100);
  await pre.gone;
  assert.ok(preSent < PREFACE.length, `closed before the preface was complete (${preSent} bytes sent)`);
  assert.ok(pre.closedAt - t2 < 10000, `closed after ${pre.closedAt - t2} ms`);

  // HTTP/2: HEADERS without END_HEADERS, then a CONTINUATION every 300 ms
  // (fewer than nghttp2's own limit on their number, where it has one).
  // Nothing else may be sent on the connection meanwhile, so the whole
  // connection goes (GOAWAY), not just the stream.
  const h2 = await h2Connect(gw.port);
  await h2.waitFor((f) => f.type === T.SETTINGS && (f.flags & F.ACK), 2000, 'SETTINGS ACK');
  const t3 = Date.now();
  h2.write(frame(T.HEADERS, 0, 1, requestBlock('GET', '/v1/models')));
  for (let i = 0; i < 6 && !h2.closedAt; i++) {
    h2.write(frame(T.CONTINUATION, 0, 1, hpLit(`x-slow-${i}`, 'b')));
    await sleep(300);
  }
  await until(() => h2.closedAt, 3000, () => `the connection closed: ${summary(h2)}`);
  assert.ok(h2.closedAt - t3 >= 450 && h2.closedAt - t3 < 10000, `closed after ${h2.closedAt - t3} ms`);
  assert.ok(h2.goaway(), `GOAWAY before the close: ${summary(h2)}`);

  await serves(gw);
}));

// A drip every 100 ms is far inside idle_ms, and client_body_ms is far past
// idle_ms, so a loaded machine's delays cannot make one timer look like the
// other: what was cut by which is told by which bound it falls under.
const IDLE_MS = 1000, BODY_MS = 4000;
const SLOW_BODIES = { timeouts: { idle_ms: IDLE_MS, client_body_ms: BODY_MS } };

test('stalled request bodies are cut at idle_ms and trickled ones at client_body_ms (HTTP/1.1 and HTTP/2)', () => withGateway(SLOW_BODIES, async ({ gw }) => {
  const body = JSON.stringify({ model: 'sim-model', messages: [{ role: 'user', content: 'x'.repeat(400) }], max_tokens: 2 });
  const h1head = `POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`;

  // HTTP/1.1, stalled: a tenth of the body, then nothing.
  const stalled = await rawConnect(gw.port);
  const t1 = Date.now();
  stalled.write(h1head + body.slice(0, 40));
  await stalled.gone;
  assert.match(stalled.text, /^HTTP\/1\.1 408 /, stalled.text);
  assert.ok(stalled.closedAt - t1 >= IDLE_MS - 50 && stalled.closedAt - t1 < BODY_MS - 100, `closed after ${stalled.closedAt - t1} ms`);

  // HTTP/1.1, trickled: a byte every 100 ms is progress for idle_ms, but the
  // whole body has client_body_ms.
  const trickled = await rawConnect(gw.port);
  trickled.write(h1head);
  const t2 = Date.now();
  await drip(trickled, Buffer.from(body), 100);
  await trickled.gone;
  assert.match(trickled.text, /^HTTP\/1\.1 408 /, trickled.text);
  assert.ok(trickled.closedAt - t2 >= BODY_MS - 100, `closed after ${trickled.closedAt - t2} ms`);

  // HTTP/2: stream 1 stalls, stream 3 trickles; each gets 408 and is reset
  // while the connection goes on serving stream 5.
  const h2 = await h2Connect(gw.port);
  const t3 = Date.now();
  const hdrs = requestBlock('POST', '/v1/chat/completions', [['content-type', 'application/json'], ['content-length', String(body.length)]]);
  h2.write(frame(T.HEADERS, F.END_HEADERS, 1, hdrs));
  h2.write(frame(T.DATA, 0, 1, Buffer.from(body.slice(0, 40))));
  h2.write(frame(T.HEADERS, F.END_HEADERS, 3, hdrs));
  for (let i = 0; i < body.length && !h2.find((f) => f.type === T.RST_STREAM && f.id === 3); i++) {
    h2.write(frame(T.DATA, 0, 3, Buffer.from(body.slice(i, i + 1))));
    await sleep(100);
  }
  const rst1 = await h2.waitFor((f) => f.type === T.RST_STREAM && f.id === 1, 3000, 'RST_STREAM on stream 1');
  const rst3 = await h2.waitFor((f) => f.type === T.RST_STREAM && f.id === 3, 3000, 'RST_STREAM on stream 3');
  assert.equal(h2.status(1), 408, summary(h2));
  assert.equal(h2.status(3), 408, summary(h2));
  assert.ok(rst1.at - t3 >= IDLE_MS - 50 && rst1.at - t3 < BODY_MS - 100, `stream 1 reset after ${rst1.at - t3} ms`);
  assert.ok(rst3.at - t3 >= BODY_MS - 100, `stream 3 reset after ${rst3.at - t3} ms`);
  h2.write(frame(T.HEADERS, F.END_HEADERS | F.END_STREAM, 5, requestBlock('GET', '/v1/models')));
  await h2.waitFor((f) => f.type === T.DATA && f.id === 5 && (f.flags & F.END_STREAM), 3000, 'the answer on stream 5');
  assert.equal(h2.status(5), 200);
  assert.equal(h2.closedAt, null, 'the connection stays open');
  h2.destroy();

  await serves(gw);
}));

// ---- connection churn ----

test('10,000 connections opened and dropped: descriptors return to baseline, memory stays bounded', (t) => withGateway({}, async ({ gw, pid }) => {
  await serves(gw);
  const fd0 = fds(pid);
  const rss0 = rss(pid);
  // A quarter each: half an HTTP/1.1 head, part of the h2c preface, the
  // preface and SETTINGS, nothing at all.
  const half = ['GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ', PREFACE.subarray(0, 10), Buffer.concat([PREFACE, settingsFrame([])])];
  let peak = rss0;
  for (let batch = 0; batch < 20; batch++) {
    const socks = await Promise.all(Array.from({ length: 500 }, () => rawConnect(gw.port)));
    socks.forEach((s, i) => { if (i % 4 !== 3) s.write(half[i % 4]); });
    await sleep(20);
    // Half leave with a reset (no TIME_WAIT left behind), half with a FIN.
    socks.forEach((s, i) => (i % 2 ? s.resetAndDestroy() : s.destroy()));
    await Promise.all(socks.map((s) => s.gone));
    peak = Math.max(peak, rss(pid));
  }
  await until(() => fds(pid) <= fd0, 10000, () => `fds back to ${fd0} (now ${fds(pid)})`);
  await serves(gw);
  rssBounded(t, pid, rss0, 'peak over 10,000 connections', peak);
  rssBounded(t, pid, rss0, 'after 10,000 connections');
}));

// ---- HTTP/2 floods ----

// Below nghttp2's own limit (1000 in a burst, in builds that have one), so
// the limit that acts is the gateway's.
const RESETS = { limits: { max_client_resets: 200 } };

test('HTTP/2 rapid reset: the connection is closed with ENHANCE_YOUR_CALM and the upstream is not flooded', (t) => withGateway(RESETS, async ({ sim, gw, pid }) => {
  const rss0 = rss(pid);
  const h2 = await h2Connect(gw.port);
  const resets = 5000;
  const block = requestBlock('GET', '/v1/models');
  let id = 1;
  // In writes of 10 pairs, yielding in between, so that some requests
  // reach the handler before their reset arrives.
  while (id < 2 * resets && !h2.closedAt) {
    const parts = [];
    for (let k = 0; k < 10; k++, id += 2) parts.push(frame(T.HEADERS, F.END_HEADERS | F.END_STREAM, id, block), rstFrame(id, E.CANCEL));
    h2.write(Buffer.concat(parts));
    await new Promise((r) => setImmediate(r));
  }
  await until(() => h2.closedAt, 5000, () => `the connection closed: ${summary(h2)}`);
  const ga = h2.goaway();
  assert.ok(ga, summary(h2));
  assert.equal(ga.code, E.ENHANCE_YOUR_CALM, summary(h2));
  const upstream = (await simStats(sim)).by_path['/v1/models'];
  assert.ok(upstream <= 200, `the upstream saw ${upstream} requests for ${resets} resets`);
  assert.ok(ga.lastId < 2 * 260, `streams past the limit were not processed (last ${ga.lastId})`);
  rssBounded(t, pid, rss0, `after ${resets} resets`);

  // A client that resets now and then is not affected.
  const calm = await h2Connect(gw.port);
  for (let i = 0; i < 50; i++) {
    calm.write(Buffer.concat([frame(T.HEADERS, F.END_HEADERS | F.END_STREAM, 2 * i + 1, block), rstFrame(2 * i + 1, E.CANCEL)]));
  }
  calm.write(frame(T.HEADERS, F.END_HEADERS | F.END_STREAM, 101, block));
  await calm.waitFor((f) => f.type === T.DATA && f.id === 101 && (f.flags & F.END_STREAM), 3000, 'the answer on stream 101');
  assert.equal(calm.status(101), 200);
  assert.equal(calm.goaway(), null, 'no GOAWAY for a calm client');
  calm.destroy();
  await serves(gw);
}));

// nghttp2 queues one ACK per frame and fails the session past
// max_outbound_ack queued (the connection is then closed); when the
// socket buffers happen to take every ACK, the flood is simply answered.
// Either way the gateway's own queue and memory stay bounded.
test('SETTINGS and PING floods that never read the ACKs: memory stays bounded', (t) => withGateway({}, async ({ gw, pid }) => {
  const rss0 = rss(pid);
  const flood = [['SETTINGS', settingsFrame([[3, 100]]), 9], ['PING', frame(T.PING, 0, 0, Buffer.alloc(8, 7)), 17]];
  for (const [name, one, ackLen] of flood) {
    const s = await h2Connect(gw.port);
    s.pause(); // never read: every ACK stays queued somewhere
    // 400,000 frames: more ACK bytes than the socket buffers hold.
    const chunk = Buffer.concat(Array(1000).fill(one));
    let written = 0;
    let peak = 0;
    for (let i = 0; i < 400 && !s.closedAt && !s.destroyed; i++) {
      if (!s.write(chunk)) await Promise.race([new Promise((r) => s.once('drain', r)), sleep(500)]);
      written++;
      peak = Math.max(peak, rss(pid));
    }
    s.resume();
    await until(() => s.closedAt || s.received >= written * 1000 * ackLen, 10000,
      () => `${name} flood: closed or answered (${written} x 1000 frames written, ${s.received} bytes read)`);
    t.diagnostic(`${name} flood: ${written * 1000} frames, ${s.received} bytes of answers read, ${s.closedAt ? 'closed' : 'open'}`);
    rssBounded(t, pid, rss0, `${name} flood`, Math.max(peak, rss(pid)));
    s.destroy();
  }
  await serves(gw);
}));

// ---- header-list bombs ----

const BOMBS = { limits: { max_header_bytes: 4096 }, timeouts: { client_header_ms: 1000 } };

test('header-list bombs are refused with 431 without unbounded memory (HTTP/1.1, CONTINUATION, HPACK repetition)', (t) => withGateway(BOMBS, async ({ gw, pid }) => {
  const rss0 = rss(pid);

  // HTTP/1.1: 1 MiB of header lines.
  const h1 = await rawConnect(gw.port);
  h1.write('GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n');
  for (let i = 0; i < 1024 && !h1.closedAt; i++) h1.write(`X-Bomb-${i}: ${'b'.repeat(1000)}\r\n`);
  await until(() => h1.text.length > 0, 3000, 'an answer');
  assert.match(h1.text, /^HTTP\/1\.1 431 /, h1.text);
  await h1.gone;

  const h2 = await h2Connect(gw.port);
  // CONTINUATION: five frames of 16 KB literals, the last with END_HEADERS.
  h2.write(frame(T.HEADERS, F.END_STREAM, 1, requestBlock('GET', '/v1/models')));
  for (let i = 0; i < 5; i++) h2.write(frame(T.CONTINUATION, i === 4 ? F.END_HEADERS : 0, 1, hpLit(`x-bomb-${i}`, 'c'.repeat(16000))));
  await h2.waitFor((f) => f.type === T.HEADERS && f.id === 1, 3000, 'an answer on stream 1');
  assert.equal(h2.status(1), 431);

  // 200 small CONTINUATION frames: nghttp2 builds that limit their number
  // (CVE-2024-28182) close the connection with ENHANCE_YOUR_CALM; others
  // read the block through and answer 431.
  const many = await h2Connect(gw.port);
  const parts = [frame(T.HEADERS, F.END_STREAM, 1, requestBlock('GET', '/v1/models'))];
  for (let i = 0; i < 200; i++) parts.push(frame(T.CONTINUATION, i === 199 ? F.END_HEADERS : 0, 1, hpLit(`x-bomb-${i}`, 'c'.repeat(1000))));
  many.write(Buffer.concat(parts));
  await until(() => many.status(1) || many.closedAt, 3000, () => `an answer or a close: ${summary(many)}`);
  if (many.closedAt) assert.equal(many.goaway()?.code, E.ENHANCE_YOUR_CALM, summary(many));
  else assert.equal(many.status(1), 431);
  many.destroy();

  // HPACK repetition: a 4000-byte field enters the dynamic table once, then
  // 20,000 one-byte references to it decode to 80 MB.
  const bomb = Buffer.concat([requestBlock('GET', '/v1/models'), hpLitIndexed('x-bomb', 'd'.repeat(4000)), Buffer.alloc(20000, hpIndexed(62)[0])]);
  const frames = [];
  for (let off = 0, first = true; off < bomb.length; off += 16384, first = false) {
    const last = off + 16384 >= bomb.length;
    frames.push(frame(first ? T.HEADERS : T.CONTINUATION, (last ? F.END_HEADERS : 0) | (first ? F.END_STREAM : 0), 3, bomb.subarray(off, off + 16384)));
  }
  h2.write(Buffer.concat(frames));
  await h2.waitFor((f) => f.type === T.HEADERS && f.id === 3, 3000, 'an answer on stream 3');
  assert.equal(h2.status(3), 431);
  rssBounded(t, pid, rss0, 'after the bombs');

  // A header block that never ends, at full speed: decoded and dropped as
  // it comes, and cut at client_header_ms.
  const endless = await h2Connect(gw.port);
  const t0 = Date.now();
  endless.write(frame(T.HEADERS, 0, 1, requestBlock('GET', '/v1/models')));
  const cont = frame(T.CONTINUATION, 0, 1, hpLit('x-more', 'e'.repeat(8000)));
  while (!endless.closedAt && Date.now() - t0 < 10000) {
    if (!endless.write(Buffer.concat(Array(16).fill(cont)))) await Promise.race([new Promise((r) => endless.once('drain', r)), sleep(100)]);
    else await new Promise((r) => setImmediate(r));
  }
  await until(() => endless.closedAt, 3000, 'the endless block cut');
  assert.ok(endless.closedAt - t0 < 10000, `cut while it was still being sent (after ${endless.closedAt - t0} ms)`);
  assert.ok(endless.goaway(), summary(endless));
  rssBounded(t, pid, rss0, 'after the endless header block');
  h2.destroy();
  await serves(gw);
}));

// ---- slow readers ----

const SLOW_READERS = { limits: { stream_window_bytes: 65536 }, timeouts: { idle_ms: 1000, keepalive_ms: 1500 } };
const LONG_ANSWERS = ['--max-model-len', '10000000'];

test('clients that never read a large streamed response: memory bounded, upstream paused, client cut after idle_ms',
  (t) => withGateway(SLOW_READERS, LONG_ANSWERS, async ({ sim, gw, pid }) => {
  await serves(gw);
  const rss0 = rss(pid);
  const fd0 = fds(pid);
  const body = JSON.stringify({ model: 'sim-model', messages: [{ role: 'user', content: 'go' }], max_tokens: 2000000, stream: true });

  // HTTP/1.1: the socket is never read.
  const h1 = await rawConnect(gw.port);
  h1.pause();
  h1.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
  await until(async () => (await simStats(sim)).in_flight === 1, 3000, 'the generation started');
  let peak = 0;
  // The client is dropped once the socket made no progress for idle_ms,
  // and the upstream request is cancelled with it.
  await until(async () => { peak = Math.max(peak, rss(pid)); return (await simStats(sim)).in_flight === 0; }, 8000, 'the upstream request cancelled');
  await until(() => fds(pid) <= fd0, 3000, () => `fds back to ${fd0} (now ${fds(pid)})`);
  rssBounded(t, pid, rss0, 'HTTP/1.1 reader that never reads (peak)', peak);
  h1.destroy();

  // HTTP/2: the socket is read, but no WINDOW_UPDATE is ever sent, so the
  // gateway's output queue stays empty while the stream makes no progress.
  const h2 = await h2Connect(gw.port);
  const t0 = Date.now();
  h2.write(frame(T.HEADERS, F.END_HEADERS, 1, requestBlock('POST', '/v1/chat/completions', [['content-type', 'application/json']])));
  h2.write(frame(T.DATA, F.END_STREAM, 1, Buffer.from(body)));
  const rst = await h2.waitFor((f) => f.type === T.RST_STREAM && f.id === 1, 6000, 'RST_STREAM on stream 1');
  assert.ok(rst.at - t0 >= 900, `reset after ${rst.at - t0} ms`);
  assert.equal(h2.status(1), 200);
  const got = h2.frames.filter((f) => f.type === T.DATA).reduce((n, f) => n + f.payload.length, 0);
  assert.ok(got <= 65535, `no more than the initial window was sent (${got})`);
  await until(async () => (await simStats(sim)).in_flight === 0, 3000, 'the upstream request cancelled');
  // With no stream left the connection is closed after keepalive_ms.
  await until(() => h2.closedAt, 3000, () => `the connection closed: ${summary(h2)}`);
  assert.ok(h2.goaway(), summary(h2));
  rssBounded(t, pid, rss0, 'after the HTTP/2 reader that opens no window');
  await serves(gw);
}));

// ---- silent upstream ----

test('an upstream that accepts and never answers: 504 after first_byte_ms and the slot is released (HTTP/1.1 and h2c upstreams)', async (t) => {
  for (const protocol of ['http1', 'h2c']) {
    const r$ = rig();
    try {
      const accepted = [];
      const silent = r$.server(net.createServer((s) => {
        accepted.push(s);
        s.on('error', () => {});
        s.on('close', () => { s.gone = true; });
        s.resume();
      }));
      await new Promise((r) => silent.listen(0, '127.0.0.1', r));
      const gw = await r$.gateway({
        upstreams: [{ name: 'silent', endpoints: [`http://127.0.0.1:${silent.address().port}`], protocol, max_inflight: 1 }],
        routes: [{ prefix: '/v1/', class: 'inference', upstream: 'silent' }],
        admission: { queue_timeout_ms: 400 },
        timeouts: { first_byte_ms: 700, grace_ms: 2000 },
        admin: { address: '127.0.0.1:0' },
      });
      const adminUrl = `http://127.0.0.1:${gw.output.text.match(/admin API on 127\.0\.0\.1:(\d+)/)[1]}`;
      const body = JSON.stringify({ model: 'sim-model', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 });
      const ask = (h2) => curl([...(h2 ? ['--http2-prior-knowledge'] : []), '--max-time', '30', '-H', 'content-type: application/json',
        '--data-binary', body, `${gw.url}/v1/chat/completions`]);
      // One slot: were it kept, the next request would wait in the queue
      // and get 503 after queue_timeout_ms instead of its own 504.
      for (const h2 of [false, true, false]) {
        const t0 = Date.now();
        const r = await ask(h2);
        const ms = Date.now() - t0;
        assert.equal(r.status, 504, `${protocol} upstream: ${r.body}`);
        assert.ok(ms >= 650 && ms < 10000, `${protocol} upstream: answered after ${ms} ms`);
        // the slot is given back as the exchange ends, just after the answer
        let fs;
        await until(async () => (fs = await (await fetch(`${adminUrl}/admin/fairshare`)).json()).inflight === 0, 0, () => `the slot back: ${JSON.stringify(fs)}`);
        assert.deepEqual(fs.pools.map((p) => p.inflight), [0]);
      }
      assert.ok(accepted.length >= 1, 'the upstream accepted');
      t.diagnostic(`${protocol} upstream: ${accepted.length} connection(s) accepted`);
      if (protocol === 'http1') {
        // An HTTP/1.1 connection with an unanswered request cannot be reused.
        await until(() => accepted.every((s) => s.gone), 3000, 'upstream connections closed by the gateway');
      }
    } finally {
      await r$.close();
    }
  }
});
