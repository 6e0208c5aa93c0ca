// Memory benchmark: obleth's resident memory (VmRSS from /proc/PID/status)
// per idle HTTP/2 connection, per queued request, and across a long run of
// open / close load. One command, Node 20, no npm packages:
//
//   node bench/memory.mjs [--conns N] [--queued N] [--rounds N] [--quick] [--only idle,queued,growth] [--json FILE]
//
// 1. idle: N raw client sockets (default 10,000) each send the h2 preface
//    and SETTINGS and acknowledge obleth's; RSS before and after, over N.
//    Then one request on each of them (POST /v1/chat/completions, answered
//    at once by obleth-sim), and RSS again: the cost of an idle connection
//    that has served a request. Then all are closed.
// 2. queued: admission max_inflight 1 in front of a simulator that holds
//    every request for an hour; one request takes the slot, then N more
//    (default 10,000) are sent as streams over N / 1000 h2 connections
//    (limits.max_concurrent_streams 1024) and wait in obleth's queue. RSS
//    with the connections open before and after the N requests, over N.
// 3. growth: R rounds (default 20) of open / close load on one obleth: raw
//    h2 connections opened and closed (half with FIN, half with RST),
//    requests over h2 with some streams cancelled while queued, and h1
//    keep-alive requests. RSS after each round; the last must be within a
//    small bound of the first.
//
// The open-files limit: the script re-runs itself with its soft limit
// raised to the hard one when it needs more descriptors than it has, and
// starts obleth the same way. Prints PASS / MISS per target and exits 0
// once it has run; 1 when something cannot be started. See bench/README.md.
import net from 'node:net';
import http from 'node:http';
import http2 from 'node:http2';
import { spawnSync } from 'node:child_process';
import { writeFileSync, readFileSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import {
  sleep, fail, workDir, startSim, startObleth, requireBinaries, requireTools, sh, statusKiB, nofileLimits, nofileWrap, freePort, machine, mdTable, stop,
  parseArgs, list,
} from './lib.mjs';

const TARGETS = { idleKiB: 32, queuedKiB: 4, growthKiB: 1024, growthFrac: 0.02 };

// ---- options ----

const opt = parseArgs({ conns: 10000, queued: 10000, rounds: 20, growthWarmup: 5, only: null, json: null, quick: false, mallocStats: false }, {
  '--conns': ['conns', Number], '--queued': ['queued', Number], '--rounds': ['rounds', Number], '--growth-warm-up': ['growthWarmup', Number],
  '--malloc-stats': (o) => { o.mallocStats = true; }, '--only': ['only', list], '--json': ['json', String],
  '--quick': (o) => { o.quick = true; o.rounds = 8; },
}, 'node bench/memory.mjs [--conns N] [--queued N] [--rounds N] [--growth-warm-up N] [--quick] [--only idle,queued,growth] ' +
  '[--malloc-stats] [--json FILE]');
const want = (what) => !opt.only || opt.only.includes(what);
requireBinaries();
if (opt.mallocStats) requireTools(['gdb'], 'apt-get install gdb');

// More sockets than the soft limit allows: run again with it raised.
const needFds = Math.max(opt.conns, 2000) + 1000;
const lim = nofileLimits();
if (lim.soft < needFds) {
  if (lim.hard < needFds || process.env.OBLETH_BENCH_REEXEC) fail(`need ${needFds} open files, the hard limit is ${lim.hard}: raise it (ulimit -Hn) or use --conns`);
  const w = nofileWrap();
  const r = spawnSync(w[0], [...w.slice(1), process.execPath, ...process.argv.slice(1)], { stdio: 'inherit', env: { ...process.env, OBLETH_BENCH_REEXEC: '1' } });
  process.exit(r.status ?? 1);
}
const WRAP = nofileWrap();

const dir = workDir('obleth-bench-memory-');
const KEY = 'sk-bench';
const PATH = '/v1/chat/completions';
const reqBody = JSON.stringify({ model: 'sim-model', max_tokens: 16, messages: [{ role: 'user', content: 'How much memory does a waiting request take?' }] });

const rss = (p) => statusKiB(p.pid, 'VmRSS');

// --malloc-stats: glibc's own account of obleth's heap, read by calling
// malloc_stats() in the process with gdb (it prints to obleth's stderr, the
// log): {arenas, system_kib (taken from the system), in_use_kib (allocated
// and not freed)}. Told apart, the two show whether RSS that does not come
// back is live memory (a leak, a cache) or free heap (fragmentation).
async function mallocStats(ob) {
  if (!opt.mallocStats) return null;
  const log = join(dir, ob.log);
  truncateSync(log, 0);
  const g = await sh('gdb', ['-p', String(ob.proc.pid), '-batch', '-ex', 'call (void) malloc_stats()']);
  if (g.code !== 0) return { error: `gdb: ${g.stderr.trim().split('\n').pop()}` };
  await sleep(100);
  const text = readFileSync(log, 'latin1');
  const m = text.match(/Total \(incl\. mmap\):\s*system bytes\s*=\s*(\d+)\s*in use bytes\s*=\s*(\d+)/);
  return m ? { arenas: (text.match(/^Arena \d+:/gm) ?? []).length, system_kib: Math.round(m[1] / 1024), in_use_kib: Math.round(m[2] / 1024) } : { error: 'no malloc_stats output' };
}
const heapText = (h) => (!h ? '' : h.error ? ` [malloc_stats: ${h.error}]` : ` [heap: ${kib(h.in_use_kib)} in use of ${kib(h.system_kib)}, ${h.arenas} arenas]`);
const kib = (x) => `${Math.round(x).toLocaleString('en-US')} KiB`;
const f1 = (x) => (Number.isFinite(x) ? x.toFixed(1) : '-');
// Let obleth finish what it is doing (timers, frees) before a reading.
const settle = async (ob, label, ms = 1000) => {
  await sleep(ms);
  const v = rss(ob.proc);
  const h = await mallocStats(ob);
  (ob.readings ??= []).push({ label, rss_kib: v, heap: h });
  if (h) console.log(`  ${label}: RSS ${kib(v)}${heapText(h)}`);
  return v;
};

// Source addresses for client sockets: spread over 127.0.0.1-8 so that
// repeated rounds of 10,000 connections never run out of ephemeral ports.
let srcNext = 0;
const srcAddr = () => `127.0.0.${1 + (srcNext++ % 8)}`;

// ---- a minimal HTTP/2 client on a raw socket ----
//
// Enough to open a connection (preface, SETTINGS, ACK), send one POST as
// HEADERS + DATA with literal HPACK fields (no dynamic table), and read
// frames until that stream ends. Nothing of node:http2's per-session state,
// so 10,000 of them cost the client little.

const frame = (type, flags, stream, payload = Buffer.alloc(0)) => {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type; h[4] = flags; h.writeUInt32BE(stream, 5);
  return Buffer.concat([h, payload]);
};
const PREFACE = Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), frame(4, 0, 0)]);
const SETTINGS_ACK = frame(4, 1, 0);
// Literal header field without indexing, name from the static table.
const hpackStr = (s) => { const b = Buffer.from(s); if (b.length > 126) throw new Error('long header'); return Buffer.concat([Buffer.from([b.length]), b]); };
const hpackIdx4 = (i) => (i < 15 ? Buffer.from([i]) : Buffer.from([15, i - 15]));
const literal = (nameIdx, value) => Buffer.concat([hpackIdx4(nameIdx), hpackStr(value)]);

function requestFrames(port, stream) {
  const block = Buffer.concat([
    Buffer.from([0x83, 0x86]),                  // :method POST, :scheme http (static 3, 6)
    literal(4, PATH), literal(1, `127.0.0.1:${port}`), // :path, :authority
    literal(31, 'application/json'), literal(23, `Bearer ${KEY}`),
    literal(28, String(Buffer.byteLength(reqBody))), // content-length
  ]);
  return Buffer.concat([frame(1, 0x4, stream, block), frame(0, 0x1, stream, Buffer.from(reqBody))]);
}

class RawH2 {
  constructor(port) { this.port = port; this.buf = Buffer.alloc(0); this.waiters = []; this.settings = false; this.acked = false; this.ended = new Set(); this.status = new Map(); }
  open() {
    return new Promise((resolve, reject) => {
      const s = net.connect({ port: this.port, host: '127.0.0.1', localAddress: srcAddr() });
      this.sock = s;
      s.on('connect', () => s.write(PREFACE));
      s.on('data', (d) => this.onData(d));
      s.on('error', (e) => { this.error = e; this.wake(); });
      s.on('close', () => { this.closed = true; this.wake(); });
      this.until(() => this.settings && this.acked).then(resolve, reject);
    });
  }
  onData(d) {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    while (this.buf.length >= 9) {
      const len = this.buf.readUIntBE(0, 3);
      if (this.buf.length < 9 + len) break;
      const type = this.buf[3], flags = this.buf[4], stream = this.buf.readUInt32BE(5) & 0x7fffffff;
      if (type === 4 && !(flags & 1)) { this.settings = true; this.sock.write(SETTINGS_ACK); }
      else if (type === 4) this.acked = true;
      else if (type === 1 && stream) this.status.set(stream, this.buf[9] === 0x88 ? 200 : -1); // :status 200 is static index 8
      else if (type === 7) this.goaway = true;
      else if (type === 6 && !(flags & 1)) this.sock.write(frame(6, 1, 0, this.buf.subarray(9, 17))); // PING ACK
      if ((type === 0 || type === 1) && (flags & 1) && stream) this.ended.add(stream);
      if (type === 3 && stream) this.ended.add(stream); // RST_STREAM
      this.buf = this.buf.subarray(9 + len);
    }
    this.wake();
  }
  wake() { const w = this.waiters; this.waiters = []; for (const f of w) f(); }
  until(cond, ms = 30000) {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('raw h2: timed out')), ms);
      const check = () => {
        if (cond()) { clearTimeout(t); resolve(); }
        else if (this.error || this.closed || this.goaway) { clearTimeout(t); reject(this.error ?? new Error(this.goaway ? 'GOAWAY' : 'closed')); }
        else this.waiters.push(check);
      };
      check();
    });
  }
  async request(stream) {
    this.sock.write(requestFrames(this.port, stream));
    await this.until(() => this.ended.has(stream));
    if (this.status.get(stream) !== 200) throw new Error(`raw h2: stream ${stream} did not answer 200`);
  }
  close(rst) { if (rst) this.sock.resetAndDestroy(); else this.sock.end(); }
}

// Run `fn` over items with at most `n` at a time.
async function pool(items, n, fn) {
  let i = 0;
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, async () => { while (i < items.length) await fn(items[i++]); }));
}
const openRaw = async (port, count) => {
  const cs = Array.from({ length: count }, () => new RawH2(port));
  await pool(cs, 256, (c) => c.open());
  return cs;
};
const closeAll = async (cs, rstEvery = 0) => {
  cs.forEach((c, i) => c.close(rstEvery && i % rstEvery === 0));
  await pool(cs, 1024, (c) => c.until(() => false).catch(() => {}));
};

// ---- obleth and the simulator ----

const baseCfg = (sim, extra) => ({
  upstreams: [{ name: 'sim', endpoints: [sim.url], max_inflight: 16 }],
  routes: [{ prefix: '/v1/', class: 'inference', upstream: 'sim' }],
  tenants: [{ name: 'bench', keys: [{ id: 'bench-1', secret: KEY }] }],
  limits: { max_connections: Math.max(opt.conns, 2000) + 1000, max_concurrent_streams: 1024 },
  // Idle connections must stay open while they are counted.
  timeouts: { keepalive_ms: 3600000, client_header_ms: 3600000, idle_ms: 3600000 },
  ...extra,
});
const admin = async () => ({ admin: { address: `127.0.0.1:${await freePort()}` } });
const adminJson = async (cfg, path) => (await fetch(`http://${cfg.admin.address}${path}`)).json();
const headers = { 'content-type': 'application/json', authorization: `Bearer ${KEY}` };
const results = {};
const verdicts = [];
const line = (ok, text) => { verdicts.push({ ok, text }); console.log(`${ok === null ? 'n/a ' : ok ? 'PASS' : 'MISS'} ${text}`); };

console.log(`# memory: ${machine()}`);
console.log(`# obleth RSS from /proc/PID/status; idle ${opt.conns} connections, ${opt.queued} queued requests, ${opt.rounds} growth rounds`);
const t00 = Date.now();

// ---- 1. idle connections ----

async function idle() {
  const t0 = Date.now();
  const sim = await startSim(dir, [], { name: 'sim-idle' });
  const ob = await startObleth(dir, baseCfg(sim, {}), { name: 'obleth-idle', wrap: WRAP });
  const p = ob.proc;
  // warm: a few connections and requests, so that one-off allocations
  // (upstream pool, log buffers, the first arena) are in the baseline
  const warm = await openRaw(ob.port, 64);
  await pool(warm, 64, (c) => c.request(1));
  await closeAll(warm);
  const r0 = await settle(ob, 'baseline');
  const cs = await openRaw(ob.port, opt.conns);
  const r1 = await settle(ob, 'open', 2000);
  await pool(cs, 200, (c) => c.request(1));
  const r2 = await settle(ob, 'after one request', 2000);
  const hwm = statusKiB(p.pid, 'VmHWM');
  await closeAll(cs);
  const r3 = await settle(ob, 'closed', 2000);
  // --malloc-stats: what glibc gives back when asked (free heap pages)
  let trimmed = null;
  if (opt.mallocStats) {
    await sh('gdb', ['-p', String(p.pid), '-batch', '-ex', 'call (int) malloc_trim(0)']);
    trimmed = await settle(ob, 'closed, after malloc_trim(0)');
  }
  const perFresh = (r1 - r0) / opt.conns, perUsed = (r2 - r0) / opt.conns;
  results.idle = { conns: opt.conns, baseline_kib: r0, open_kib: r1, after_request_kib: r2, closed_kib: r3, hwm_kib: hwm,
    per_conn_kib: perFresh, per_used_conn_kib: perUsed, trimmed_kib: trimmed, readings: ob.readings, seconds: (Date.now() - t0) / 1000 };
  console.log(`idle: baseline ${kib(r0)}, ${opt.conns} connections open ${kib(r1)} (+${f1(perFresh)} KiB each), ` +
    `after one request each ${kib(r2)} (+${f1(perUsed)} KiB each), all closed ${kib(r3)}` +
    `${trimmed ? ` (${kib(trimmed)} after malloc_trim(0))` : ''}; ${results.idle.seconds.toFixed(0)} s`);
  await stop(p);
  await stop(sim.proc);
}

// ---- 2. queued requests ----

async function queued() {
  const t0 = Date.now();
  const sim = await startSim(dir, ['--ttft-ms', '3600000'], { name: 'sim-queued' });
  const cfg = baseCfg(sim, { admission: { max_inflight: 1, max_queue: opt.queued + 1000, queue_timeout_ms: 3600000 }, ...(await admin()) });
  const ob = await startObleth(dir, cfg, { name: 'obleth-queued', wrap: WRAP });
  const p = ob.proc;
  const nconn = Math.ceil(opt.queued / 1000);
  const sessions = await Promise.all(Array.from({ length: nconn }, () => new Promise((resolve, reject) => {
    const s = http2.connect(ob.url, { maxSessionMemory: 1000, peerMaxConcurrentStreams: 1000 });
    s.on('remoteSettings', () => resolve(s));
    s.on('error', reject);
  })));
  const streams = [];
  const send = (s) => {
    const r = s.request({ ':method': 'POST', ':path': PATH, ...headers });
    r.on('error', () => {});
    r.on('response', () => {});
    r.end(reqBody);
    streams.push(r);
    return r;
  };
  const queuedNow = async () => (await adminJson(cfg, '/admin/fairshare')).queued;
  const inflightNow = async () => (await adminJson(cfg, '/admin/fairshare')).inflight;
  // the request that holds the only slot
  send(sessions[0]);
  for (let i = 0; i < 200 && (await inflightNow()) < 1; i++) await sleep(50);
  if ((await inflightNow()) < 1) fail(`queued: the first request never took the slot: ${JSON.stringify(await adminJson(cfg, '/admin/fairshare'))}`);
  // a small warm-up fill, cancelled, so that one-off allocations (the
  // scheduler's tenant and pool state) are in the baseline. Small, because
  // the measured requests reuse the heap it leaves free: with 1,000 of them
  // 2,000 measured requests looked half as dear as 10,000.
  const WARM = 100;
  const warm = Array.from({ length: WARM }, (_, i) => send(sessions[i % nconn]));
  for (let i = 0; i < 200 && (await queuedNow()) < WARM; i++) await sleep(50);
  for (const r of warm) r.close(http2.constants.NGHTTP2_CANCEL);
  for (let i = 0; i < 200 && (await queuedNow()) > 0; i++) await sleep(50);
  const r0 = await settle(ob, 'baseline');
  for (let i = 0; i < opt.queued; i++) send(sessions[i % nconn]);
  let q = 0;
  for (let i = 0; i < 1200 && (q = await queuedNow()) < opt.queued; i++) await sleep(50);
  if (q < opt.queued) fail(`queued: only ${q} of ${opt.queued} requests queued after 60 s: ${JSON.stringify(await adminJson(cfg, '/admin/fairshare'))}`);
  const r1 = await settle(ob, 'queued', 2000);
  const fairshare = await adminJson(cfg, '/admin/fairshare');
  for (const s of sessions) s.destroy();
  for (let i = 0; i < 200 && (await queuedNow()) > 0; i++) await sleep(50);
  const r2 = await settle(ob, 'closed', 2000);
  const per = (r1 - r0) / opt.queued;
  results.queued = { queued: q, connections: nconn, baseline_kib: r0, queued_kib: r1, released_kib: r2, per_request_kib: per,
    pools: fairshare.pools, readings: ob.readings, seconds: (Date.now() - t0) / 1000 };
  console.log(`queued: baseline ${kib(r0)} (${nconn} connections, 1 request in flight), ${q} queued ${kib(r1)} (+${f1(per)} KiB each), ` +
    `connections closed ${kib(r2)}; ${results.queued.seconds.toFixed(0)} s`);
  await stop(p);
  await stop(sim.proc);
}

// ---- 3. growth over a long run ----

async function growth() {
  const t0 = Date.now();
  const sim = await startSim(dir, ['--ttft-ms', '2'], { name: 'sim-growth' });
  const cfg = baseCfg(sim, { upstreams: [{ name: 'sim', endpoints: [sim.url], max_inflight: 8 }], ...(await admin()) });
  const ob = await startObleth(dir, cfg, { name: 'obleth-growth', wrap: WRAP });
  const p = ob.proc;
  const agent = new http.Agent({ keepAlive: true, maxSockets: 32 });
  const counts = { raw: 0, h2: 0, h2_cancelled: 0, h1: 0, errors: 0 };
  async function round() {
    // raw h2 connections: 2,000 opened, half of them serve a request, closed
    // half with FIN and half with RST
    const cs = await openRaw(ob.port, 2000);
    await pool(cs.filter((_, i) => i % 2 === 0), 200, (c) => c.request(1).catch(() => { counts.errors++; }));
    await closeAll(cs, 2);
    counts.raw += cs.length;
    // h2: 8 connections x 2,000 requests, 100 streams at a time each (8 slots:
    // most of them queue), every 10th cancelled as soon as it is sent
    const ss = await Promise.all(Array.from({ length: 8 }, () => new Promise((res, rej) => {
      const s = http2.connect(ob.url);
      s.on('remoteSettings', () => res(s));
      s.on('error', rej);
    })));
    await Promise.all(ss.map((s) => pool(Array.from({ length: 2000 }, (_, i) => i), 100, (i) => new Promise((res) => {
      const r = s.request({ ':method': 'POST', ':path': PATH, ...headers });
      r.on('error', () => {});
      r.on('close', res);
      r.on('response', () => {});
      r.on('data', () => {});
      r.end(reqBody);
      if (i % 10 === 0) { r.close(http2.constants.NGHTTP2_CANCEL); counts.h2_cancelled++; } else counts.h2++;
    }))));
    for (const s of ss) s.close();
    // h1: 1,000 keep-alive requests over 32 sockets
    await pool(Array.from({ length: 1000 }), 32, () => new Promise((res) => {
      const r = http.request({ host: '127.0.0.1', port: ob.port, method: 'POST', path: PATH, agent,
        headers: { ...headers, 'content-length': Buffer.byteLength(reqBody) } }, (resp) => { resp.resume(); resp.on('end', res); });
      r.on('error', () => { counts.errors++; res(); });
      r.end(reqBody);
    }));
    counts.h1 += 1000;
  }
  const series = [];
  for (let r = 0; r < opt.rounds; r++) {
    await round();
    const v = await settle(ob, `round ${r + 1}`, 1000);
    series.push(v);
    process.stderr.write(`growth round ${r + 1}/${opt.rounds}: ${kib(v)}\n`);
  }
  agent.destroy();
  await sleep(500);
  const open = (await (await fetch(`http://${cfg.admin.address}/metrics`)).text()).match(/^obleth_connections_open\{[^}]*\} \d+/gm) ?? [];
  // The heap reaches its working size over the first rounds (see
  // README): the reference is the RSS after the warm-up rounds, and the
  // slope is fitted over the rounds after them.
  const W = Math.min(Math.max(1, opt.growthWarmup), series.length);
  const ref = series[W - 1], last = series[series.length - 1], max = Math.max(...series);
  const tail = series.slice(W - 1), xm = (tail.length - 1) / 2, ym = tail.reduce((a, b) => a + b, 0) / tail.length;
  const slope = tail.length > 1 ? tail.reduce((a, y, i) => a + (i - xm) * (y - ym), 0) / tail.reduce((a, _, i) => a + (i - xm) ** 2, 0) : NaN;
  results.growth = { rounds: opt.rounds, warmup_rounds: W, series_kib: series, first_kib: series[0], ref_kib: ref, last_kib: last, max_kib: max,
    slope_kib_per_round: slope, counts, connections_open_after: open, readings: ob.readings, seconds: (Date.now() - t0) / 1000 };
  console.log(`growth: RSS after each round (KiB): ${series.join(' ')}; after the ${W} warm-up rounds ` +
    `${tail.length > 1 ? `${slope >= 0 ? '+' : ''}${slope.toFixed(1)} KiB per round (least squares over rounds ${W}..${series.length})` : ''}`);
  console.log(`growth: per round ${counts.raw / opt.rounds} raw h2 connections, ${(counts.h2 + counts.h2_cancelled) / opt.rounds} h2 requests ` +
    `(${counts.h2_cancelled / opt.rounds} cancelled), ${counts.h1 / opt.rounds} h1 requests; ${counts.errors} client errors; ` +
    `${results.growth.seconds.toFixed(0)} s; after the run: ${open.join(', ') || 'no connections_open series'}`);
  await stop(p);
  await stop(sim.proc);
}

if (want('idle')) await idle();
if (want('queued')) await queued();
if (want('growth')) await growth();

// ---- results ----

console.log(`\n## Results (${((Date.now() - t00) / 1000).toFixed(0)} s in all)\n`);
const rows = [];
if (results.idle) {
  const r = results.idle;
  rows.push([`${r.conns.toLocaleString('en-US')} idle h2 connections (preface + SETTINGS)`, kib(r.baseline_kib), kib(r.open_kib), `**${f1(r.per_conn_kib)} KiB** per connection`, `≤ ${TARGETS.idleKiB} KiB`]);
  rows.push([`the same after one request each`, kib(r.baseline_kib), kib(r.after_request_kib), `**${f1(r.per_used_conn_kib)} KiB** per connection`, `≤ ${TARGETS.idleKiB} KiB`]);
}
if (results.queued) {
  const r = results.queued;
  rows.push([`${r.queued.toLocaleString('en-US')} queued requests (${r.connections} h2 connections)`, kib(r.baseline_kib), kib(r.queued_kib), `**${f1(r.per_request_kib)} KiB** per request`, `≤ ${TARGETS.queuedKiB} KiB`]);
}
if (results.growth) {
  const r = results.growth;
  rows.push([`${r.rounds} rounds of open / close load`, `${kib(r.ref_kib)} (round ${r.warmup_rounds}; round 1: ${kib(r.first_kib)})`,
    `${kib(r.last_kib)} (round ${r.rounds}), max ${kib(r.max_kib)}`,
    `${r.last_kib - r.ref_kib >= 0 ? '+' : ''}${kib(r.last_kib - r.ref_kib)} (${r.slope_kib_per_round >= 0 ? '+' : ''}${f1(r.slope_kib_per_round)} KiB per round)`,
    `≤ +${kib(Math.max(TARGETS.growthKiB, TARGETS.growthFrac * r.ref_kib))}`]);
}
console.log(mdTable(['measurement', 'RSS before', 'RSS after', 'cost', 'target'], rows));
console.log('');
if (results.idle) {
  line(results.idle.per_conn_kib <= TARGETS.idleKiB, `idle h2 connection <= ${TARGETS.idleKiB} KiB: ${f1(results.idle.per_conn_kib)} KiB`);
  line(results.idle.per_used_conn_kib <= TARGETS.idleKiB, `idle h2 connection after one request <= ${TARGETS.idleKiB} KiB: ${f1(results.idle.per_used_conn_kib)} KiB`);
}
if (results.queued) line(results.queued.per_request_kib <= TARGETS.queuedKiB, `queued request <= ${TARGETS.queuedKiB} KiB: ${f1(results.queued.per_request_kib)} KiB`);
if (results.growth) {
  const r = results.growth, bound = Math.max(TARGETS.growthKiB, TARGETS.growthFrac * r.ref_kib);
  line(r.last_kib - r.ref_kib <= bound, `no growth across ${r.rounds} rounds: round ${r.rounds} ${kib(r.last_kib)} within ${kib(bound)} of round ` +
    `${r.warmup_rounds} (after the warm-up rounds) ${kib(r.ref_kib)}; ${f1(r.slope_kib_per_round)} KiB per round; from round 1: +${kib(r.last_kib - r.first_kib)}`);
}
if (opt.json) writeFileSync(opt.json, JSON.stringify({ opt, machine: machine(), results, verdicts }, null, 2));
