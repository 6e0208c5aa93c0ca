#!/usr/bin/env node
// Cluster-mode benchmark (issue 16): three obleth replicas sharing one
// Redis against three independent replicas, on the fairness benchmark's
// set-up and scoring (bench/lib.mjs, "fair-share load").
//
//   node bench/cluster.mjs [--quick] [--duration S] [--window S] [--requests N]
//                          [--outage-ms MS] [--only fairness,noisy,latency,kill,redis] [--json FILE]
//
// Starts its own redis-server, obleth-sim and obleth replicas on ephemeral
// loopback ports (fresh ones per scenario) and measures, side by side:
//   fairness  tenants A (weight 1) on replica 1 only, B (2) on replica 2
//             only, C (4) on all three with 3x the streams: per 5 s window
//             shares against 1/7, 2/7, 4/7, Jain, utilisation and the
//             simulator's queue; cluster mode, then three independent
//             replicas with max_inflight 8 each, then 3 each (ceil(8/3)).
//   noisy     a light tenant on replica 1, a normal one on replica 2, a
//             10x noisy one on all three: the light tenant's p99 queue wait
//             against its baseline (without the noisy one).
//   (ops)     Redis calls per request, from /metrics, in the fairness run
//             and the latency run.
//   latency   sequential non-streamed requests at concurrency 1 through
//             one replica without a cluster block and one in cluster mode.
//   kill      SIGKILL of a replica holding slots (lease_ms 1500): how long
//             until the others fill the pool again.
//   redis     SIGKILL of Redis, restart (empty) after --outage-ms: how long
//             until every replica is back in shared mode; failed requests.
// Prints PASS / MISS against the issue's targets; exits 0 once it has run
// (1 only when something does not start). See bench/README.md.
import http from 'node:http';
import { writeFileSync } from 'node:fs';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import {
  parseArgs, list, workDir, spawnLogged, logOf, stop, waitFor, freePort, tcpReady, sh, fail, requireTools, requireBinaries,
  startSim, startObleth, metric, pct, mean, mdTable, sleep, machine, treeCpuSeconds, OBLETH, OBLETH_SIM,
  now, FAIR, simArgs, fairConfig, TenantLoad, getJson, driveLoad, scoreRun, printWindows, f1, f4, fmtMs,
} from './lib.mjs';

const USAGE = 'node bench/cluster.mjs [--quick] [--duration S (25)] [--window S (5)] [--requests N (2000)] ' +
  '[--outage-ms MS (2125)] [--only fairness,noisy,latency,kill,redis] [--json FILE]';
const SECTIONS = ['fairness', 'noisy', 'latency', 'kill', 'redis'];
const opt = parseArgs({ duration: 25, window: 5, requests: 2000, outageMs: 2125, only: SECTIONS, json: null, quick: false }, {
  '--quick': (o) => { o.quick = true; },
  '--duration': ['duration', Number],
  '--window': ['window', Number],
  '--requests': ['requests', Number],
  '--outage-ms': ['outageMs', Number],
  '--only': ['only', list],
  '--json': ['json', String],
  '--help': () => { console.log(`usage: ${USAGE}`); process.exit(0); },
}, USAGE);
if (opt.quick) { opt.duration = 10; opt.requests = 300; }
for (const s of opt.only) if (!SECTIONS.includes(s)) fail(`--only: known sections are ${SECTIONS.join(', ')}`);
if (!(opt.window > 0) || opt.duration < 2 * opt.window) fail('--duration must cover at least two windows (the first is warm-up)');

const T = FAIR.targets;
const REPLICAS = 3;
const SPLIT = Math.ceil(FAIR.slots / REPLICAS);     // 3: each replica's share of 8 slots, rounded up
const KILL_LEASE_MS = 1500;
const dir = workDir('obleth-cluster-');
let seq = 0;                                          // log and config names: one set per process started

// ---------------------------------------------------------------- processes

async function startRedis(port = null) {
  port ??= await freePort();
  const proc = spawnLogged(dir, 'redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    `redis-${port}.log`);
  await waitFor('redis-server', () => {
    if (proc.exitInfo) fail(`redis-server exited:\n${logOf(dir, `redis-${port}.log`)}`);
    return tcpReady(port);
  });
  return { proc, port, url: `redis://127.0.0.1:${port}/0` };
}
const redisCli = (r, ...args) => sh('redis-cli', ['-p', String(r.port), ...args]);

// A fleet of n replicas in front of sim: the fairness gateway (fairConfig),
// upstream max_inflight `maxInflight`, an admin listener each, and with
// `redis` a cluster block (replica_id r1..rn). In cluster mode, ready once
// every replica reports shared mode and n live replicas.
async function startFleet({ sim, tenants, maxInflight = FAIR.slots, redis = null, leaseMs = null, n = REPLICAS }) {
  const reps = [];
  for (let i = 1; i <= n; i++) {
    const admin = await freePort();
    const cfg = {
      ...fairConfig({ tenants, simUrl: sim.url, maxInflight }),
      admin: { address: `127.0.0.1:${admin}` },
      ...(redis ? { cluster: { redis: redis.url, replica_id: `r${i}`, ...(leaseMs ? { lease_ms: leaseMs } : {}) } } : {}),
    };
    const gw = await startObleth(dir, cfg, { name: `obleth-${++seq}-r${i}` });
    reps.push({ ...gw, id: `r${i}`, admin });
  }
  if (redis) await waitFor('shared mode on every replica', async () => {
    for (const r of reps) {
      const m = await metricsOf(r).catch(() => '');
      if (metric(m, 'obleth_cluster_mode', { mode: 'shared' }) !== 1 || metric(m, 'obleth_cluster_replicas') !== n) return false;
    }
    return true;
  });
  return reps;
}
const metricsOf = async (r) => (await fetch(`http://127.0.0.1:${r.admin}/metrics`)).text();
const adminJson = async (r, path) => (await fetch(`http://127.0.0.1:${r.admin}${path}`)).json();

// ---------------------------------------------------------------- Redis calls and counters

const OPS = ['connect', 'join', 'admit', 'release', 'cancel', 'beat', 'config', 'stream', 'info', 'budget', 'leave', 'publish'];
// Per replica: calls by op (every result), failed calls, finished requests.
function opCounts(text) {
  const ops = Object.fromEntries(OPS.map((o) => [o, metric(text, 'obleth_cluster_redis_ops_total', { op: o })]));
  const failed = metric(text, 'obleth_cluster_redis_ops_total', { result: 'error' }) + metric(text, 'obleth_cluster_redis_ops_total', { result: 'timeout' });
  return { ops, failed, requests: metric(text, 'obleth_requests_total') };
}
// Summed over replicas, after minus before: calls per finished request.
function opsPerRequest(before, after) {
  const d = { requests: 0, failed: 0, ops: Object.fromEntries(OPS.map((o) => [o, 0])) };
  before.forEach((b, i) => {
    const a = after[i];
    d.requests += a.requests - b.requests;
    d.failed += a.failed - b.failed;
    for (const o of OPS) d.ops[o] += a.ops[o] - b.ops[o];
  });
  const total = Object.values(d.ops).reduce((s, x) => s + x, 0);
  const per = (x) => (d.requests ? x / d.requests : NaN);
  return {
    requests: d.requests, calls: total, failed: d.failed, ops: d.ops,
    admit: per(d.ops.admit), release: per(d.ops.release), cancel: per(d.ops.cancel), beat: per(d.ops.beat),
    other: per(total - d.ops.admit - d.ops.release - d.ops.cancel - d.ops.beat), total: per(total),
  };
}

// obleth_cluster_redis_seconds, after minus before: count, mean and the
// bucket bounds holding the median and the 99th percentile.
function redisLatency(before, after) {
  const buckets = (t) => t.split('\n').filter((l) => l.startsWith('obleth_cluster_redis_seconds_bucket{'))
    .map((l) => ({ le: l.match(/le="([^"]+)"/)[1], n: Number(l.split(' ').pop()) }));
  const b0 = buckets(before), b1 = buckets(after);
  const cum = b1.map((b, i) => ({ le: b.le, n: b.n - b0[i].n }));
  const count = metric(after, 'obleth_cluster_redis_seconds_count') - metric(before, 'obleth_cluster_redis_seconds_count');
  const sum = metric(after, 'obleth_cluster_redis_seconds_sum') - metric(before, 'obleth_cluster_redis_seconds_sum');
  const q = (p) => cum.find((b) => b.n >= p * count)?.le ?? '?';
  const us = (le) => (le === '+Inf' ? '+Inf' : `${Math.round(Number(le) * 1e6)} µs`);
  return { count, meanUs: count ? (sum / count) * 1e6 : NaN, p50le: us(q(0.5)), p99le: us(q(0.99)), buckets: cum };
}

// After traffic: the fleet's counters (cluster.lua's hash <ns>:n) and its
// request entries (<ns>:e) must be back at zero. Polls up to 3 s (releases
// in flight), then returns what is left: {ok, left: [field=value], entries}.
async function leftovers(redis) {
  let left = [], entries = 0;
  const end = Date.now() + 3000;
  for (;;) {
    const h = (await redisCli(redis, '--no-raw', 'HGETALL', 'obleth:n')).stdout.trim().split('\n').filter(Boolean)
      .map((l) => l.replace(/^\d+\) "?/, '').replace(/"$/, ''));
    left = [];
    for (let i = 0; i + 1 < h.length; i += 2) if (Number(h[i + 1]) !== 0) left.push(`${h[i].replace(/\\x00/g, '/')}=${h[i + 1]}`);
    entries = Number((await redisCli(redis, 'HLEN', 'obleth:e')).stdout.trim()) || 0;
    if ((!left.length && !entries) || Date.now() > end) break;
    await sleep(100);
  }
  return { ok: !left.length && !entries, left, entries };
}

// ---------------------------------------------------------------- one load scenario

// tenants: {name, weight, streams, think, backlogged, replicas: [1-based replica numbers]}
function tenant(name, weight, streams, replicas, think = null) {
  return { name, weight, streams, think, backlogged: !think, replicas };
}

async function runLoad({ name, what, deployment, maxInflight, tenants, tokens }) {
  process.stderr.write(`running ${name} `);
  const W = opt.window * 1000;
  const nWin = Math.floor(opt.duration / opt.window);
  const redis = deployment === 'cluster' ? await startRedis() : null;
  const sim = await startSim(dir, simArgs(), { name: `sim-${++seq}` });
  const reps = await startFleet({ sim, tenants, maxInflight, redis });

  const run = { stopping: false, tokens, staggerMs: FAIR.staggerMs };
  // stream i of a tenant goes to its i-th replica (round robin): C's 48 streams are 16 per replica
  const loads = tenants.map((t) => new TenantLoad(t, t.replicas.map((i) => reps[i - 1].port), run));
  const statsAgent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  // Redis calls per request over the scored windows (the start's queue filling and the end's cancels left out)
  const snap = async () => (redis ? (await Promise.all(reps.map(metricsOf))).map(opCounts) : null);
  let m0 = null, m1 = null;
  const simStart = await getJson(statsAgent, sim.port, '/sim/stats');
  const pids = [...reps.map((r) => r.proc.pid)];
  const cpu0 = { gw: pids.reduce((s, p) => s + treeCpuSeconds(p), 0), sim: treeCpuSeconds(sim.proc.pid),
    redis: redis ? treeCpuSeconds(redis.proc.pid) : 0, me: process.cpuUsage() };
  const lag = monitorEventLoopDelay({ resolution: 10 });
  lag.enable();
  const { t0, tStop, win, statErrors } = await driveLoad({ loads, run, simPort: sim.port, slots: FAIR.slots, W, nWin, statsAgent,
    sampleMs: FAIR.sampleMs, drainMs: FAIR.drainMs, afterWarmup: async () => { m0 = await snap(); }, beforeStop: async () => { m1 = await snap(); } });
  lag.disable();
  const wall = (now() - t0) / 1000;
  const cpu = {
    gw: (pids.reduce((s, p) => s + treeCpuSeconds(p), 0) - cpu0.gw) / wall,
    sim: (treeCpuSeconds(sim.proc.pid) - cpu0.sim) / wall,
    redis: redis ? (treeCpuSeconds(redis.proc.pid) - cpu0.redis) / wall : null,
    me: (() => { const u = process.cpuUsage(cpu0.me); return (u.user + u.system) / 1e6 / wall; })(),
    lagP99Ms: lag.percentile(99) / 1e6,
  };
  const simEnd = await getJson(statsAgent, sim.port, '/sim/stats');
  const ops = redis ? opsPerRequest(m0, m1) : null;
  const rest = redis ? await leftovers(redis) : null;
  statsAgent.destroy();
  for (const l of loads) l.agent.destroy();
  const exits = [];
  for (const r of reps) exits.push(await stop(r.proc));
  await stop(sim.proc);
  if (redis) await stop(redis.proc);

  const scored = scoreRun({ tenants, loads, t0, tStop, W, nWin, win, ttftMs: FAIR.ttftMs, itlMs: FAIR.itlMs, tokens });
  const r = { name, what, deployment, maxInflight, tenants,
    ...scored, cpu, ops, leftovers: rest, statErrors: statErrors.length,
    simRequests: simEnd.requests - simStart.requests, exits: exits.map((e) => e.code ?? e.sig) };
  printLoad(r);
  return r;
}

const pc = (x) => (x == null ? '-' : `${Math.round(x * 100)}%`);
function printLoad(r) {
  console.log(`\n== ${r.name}: ${r.what}`);
  printWindows(r, opt.window);
  console.log(`   CPU (of one core): obleth ${pc(r.cpu.gw)} (${REPLICAS} replicas), redis-server ${pc(r.cpu.redis)}, ` +
    `obleth-sim ${pc(r.cpu.sim)}, bench client ${pc(r.cpu.me)} (event-loop lag p99 ${r.cpu.lagP99Ms.toFixed(1)} ms); ` +
    `replica exits ${r.exits.join(', ')}${r.statErrors ? `; ${r.statErrors} /sim/stats samples failed` : ''}`);
  if (r.ops) console.log(`   Redis calls per request: ${opsLine(r.ops)}`);
  if (r.leftovers) console.log(`   Redis counters after the run: ${r.leftovers.ok ? 'all zero' : `LEFT ${r.leftovers.left.join(' ')}, ${r.leftovers.entries} entries`}`);
  if (r.headerIssues.length) console.log(`   responses without admission headers, e.g. ${r.headerIssues.join('; ')}`);
}
const f2 = (x) => (Number.isFinite(x) ? x.toFixed(2) : '-');
const opsLine = (o) => `admit ${f2(o.admit)}, release ${f2(o.release)}, cancel ${f2(o.cancel)}, beat ${f2(o.beat)}, ` +
  `other ${f2(o.other)}; total ${f2(o.total)} (${o.calls} calls for ${o.requests} requests, ${o.failed} failed)`;

// ---------------------------------------------------------------- scenarios

// Uneven spread: A only on replica 1, B only on 2, C on all three with 3x the streams.
const UNEVEN = [tenant('A', 1, 16, [1]), tenant('B', 2, 16, [2]), tenant('C', 4, 48, [1, 2, 3])];
const FIXED = [FAIR.maxTokens, FAIR.maxTokens];
// Noisy neighbour: A light (1 stream, think time) on 1, B (8 streams) on 2, C (80 streams) on all three.
const LIGHT = tenant('A', 1, 1, [1], FAIR.lightThinkMs);
const NORMAL = tenant('B', 1, 8, [2]);
const NOISY = tenant('C', 1, 80, [1, 2, 3]);

async function fairnessSection() {
  const what = 'A (w1) 16 streams on r1, B (w2) 16 on r2, C (w4) 48 on r1-r3 (16 each); max_tokens 64';
  return [
    await runLoad({ name: 'uneven / cluster', what: `${what}; cluster mode, pool max_inflight 8`, deployment: 'cluster', maxInflight: FAIR.slots, tenants: UNEVEN, tokens: FIXED }),
    await runLoad({ name: 'uneven / independent x8', what: `${what}; no cluster block, max_inflight 8 on each replica`, deployment: 'independent', maxInflight: FAIR.slots, tenants: UNEVEN, tokens: FIXED }),
    await runLoad({ name: `uneven / independent x${SPLIT}`, what: `${what}; no cluster block, max_inflight ${SPLIT} (ceil(8/3)) on each replica`, deployment: 'independent', maxInflight: SPLIT, tenants: UNEVEN, tokens: FIXED }),
  ];
}

async function noisySection() {
  const tok = FAIR.varTokens;
  const w = 'A light (1 stream, think 100-300 ms) on r1, B 8 streams on r2';
  return [
    await runLoad({ name: 'noisy baseline / cluster', what: `${w}; weights 1:1; cluster mode; max_tokens 32..96`, deployment: 'cluster', maxInflight: FAIR.slots, tenants: [LIGHT, NORMAL], tokens: tok }),
    await runLoad({ name: 'noisy / cluster', what: `${w}, C 80 streams on r1-r3; weights 1:1:1; cluster mode`, deployment: 'cluster', maxInflight: FAIR.slots, tenants: [LIGHT, NORMAL, NOISY], tokens: tok }),
    await runLoad({ name: 'noisy / independent x8', what: `${w}, C 80 streams on r1-r3; weights 1:1:1; no cluster block, max_inflight 8 each`, deployment: 'independent', maxInflight: FAIR.slots, tenants: [LIGHT, NORMAL, NOISY], tokens: tok }),
  ];
}

// ---------------------------------------------------------------- latency at concurrency 1

const latBody = Buffer.from(JSON.stringify({ model: 'sim-model', messages: [{ role: 'user', content: 'Say hello.' }], max_tokens: 16 }));
function timedPost(port, agent, auth) {
  return new Promise((resolve, reject) => {
    const t = process.hrtime.bigint();
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/v1/chat/completions', agent,
      headers: { 'content-type': 'application/json', 'content-length': String(latBody.length), authorization: auth } }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 200 ? resolve(Number(process.hrtime.bigint() - t) / 1e6) : reject(new Error(`HTTP ${res.statusCode}`))));
    });
    req.on('error', reject);
    req.end(latBody);
  });
}

async function latencySection() {
  process.stderr.write('running latency\n');
  const redis = await startRedis();
  const sim = await startSim(dir, ['--slots', '256', '--ttft-ms', '0', '--itl-ms', '0', '--max-tokens', '16'], { name: `sim-${++seq}` });
  const tenants = [tenant('L', 1, 1, [1])];
  const [plain] = await startFleet({ sim, tenants, n: 1 });
  const [clustered] = await startFleet({ sim, tenants, redis, n: 1 });
  const targets = [
    { name: 'direct to obleth-sim', port: sim.port },
    { name: 'one replica, no cluster block', port: plain.port },
    { name: 'one replica, cluster mode', port: clustered.port, rep: clustered },
  ].map((t) => ({ ...t, agent: new http.Agent({ keepAlive: true, maxSockets: 1 }), ms: [] }));
  const auth = 'Bearer sk-bench-L';
  for (let i = 0; i < 100; i++) for (const t of targets) await timedPost(t.port, t.agent, auth);   // warm-up
  const before = await metricsOf(clustered);
  let errors = 0;
  for (let i = 0; i < opt.requests; i++) {
    // interleaved, the order rotating: drift in the machine's speed hits all alike
    for (let k = 0; k < targets.length; k++) {
      const t = targets[(i + k) % targets.length];
      try { t.ms.push(await timedPost(t.port, t.agent, auth)); } catch { errors++; }
    }
  }
  const after = await metricsOf(clustered);
  for (const t of targets) t.agent.destroy();
  const ops = opsPerRequest([opCounts(before)], [opCounts(after)]);
  const lat = redisLatency(before, after);
  await stop(plain.proc); await stop(clustered.proc); await stop(sim.proc); await stop(redis.proc);
  const rows = targets.map((t) => {
    const s = [...t.ms].sort((a, b) => a - b);
    return { name: t.name, n: s.length, p50: pct(s, 0.5), p99: pct(s, 0.99), mean: mean(s) };
  });
  const [, p, c] = rows;
  const r = { rows, errors, ops, redisLatency: lat, addedP50: c.p50 - p.p50, addedP99: c.p99 - p.p99 };
  console.log(`\n== latency: ${opt.requests} sequential non-streamed requests per path (max_tokens 16, simulator ttft 0 / itl 0), interleaved`);
  console.log(mdTable(['path', 'requests', 'p50 ms', 'p99 ms', 'mean ms'], rows.map((x) => [x.name, x.n, x.p50.toFixed(3), x.p99.toFixed(3), x.mean.toFixed(3)])));
  console.log(`   cluster mode adds ${(r.addedP50 * 1000).toFixed(0)} µs at p50, ${(r.addedP99 * 1000).toFixed(0)} µs at p99; errors ${errors}`);
  console.log(`   Redis calls per request (uncontended): ${opsLine(ops)}`);
  console.log(`   obleth_cluster_redis_seconds over the run: ${lat.count} calls, mean ${lat.meanUs.toFixed(0)} µs, p50 <= ${lat.p50le}, p99 <= ${lat.p99le}`);
  return r;
}

// ---------------------------------------------------------------- recovery: a replica killed

// A simulator sampler: {t, inFlight, queued} every `ms` until stopped.
function sampleSim(sim, ms) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const out = [];
  let on = true;
  const done = (async () => {
    let next = now();
    while (on) {
      try { const s = await getJson(agent, sim.port, '/sim/stats'); out.push({ t: now(), inFlight: s.in_flight, queued: s.queued }); } catch {}
      next += ms;
      await sleep(Math.max(0, next - now()));
    }
    agent.destroy();
  })();
  return { out, stop: async () => { on = false; await done; } };
}

const errorsOf = (loads) => loads.reduce((s, l) => s + [...l.errors.values()].reduce((a, b) => a + b, 0), 0);
const errorKinds = (loads) => Object.entries(Object.fromEntries(loads.flatMap((l) => [...l.errors]))).map(([k, v]) => `${k} x${v}`).join(', ') || '-';
async function endLoad(loads, run) {
  run.stopping = true;
  for (const l of loads) l.cancelUnstarted();
  const drain = Promise.all(loads.flatMap((l) => l.workers));
  if (!(await Promise.race([drain.then(() => true), sleep(FAIR.drainMs).then(() => false)]))) for (const l of loads) l.cancelAll();
  await drain;
  for (const l of loads) l.agent.destroy();
}

async function killSection() {
  process.stderr.write('running kill ');
  const redis = await startRedis();
  const sim = await startSim(dir, simArgs(), { name: `sim-${++seq}` });
  const tenants = [tenant('A', 1, 12, [1, 2, 3]), tenant('B', 2, 12, [1, 2, 3])];
  const reps = await startFleet({ sim, tenants, redis, leaseMs: KILL_LEASE_MS });
  const run = { stopping: false, tokens: FAIR.varTokens, staggerMs: FAIR.staggerMs };
  const loads = tenants.map((t) => new TenantLoad(t, t.replicas.map((i) => reps[i - 1].port), run));
  const samples = sampleSim(sim, 10);
  for (const l of loads) l.start();
  await sleep(opt.quick ? 2000 : 3000);
  // the victim: the replica holding the most slots in the fleet's view (Redis,
  // through /admin/cluster), once one holds at least its third (3 of 8); at most 2 s more
  const holds = (view, id) => Object.values(view.replicas.find((x) => x.id === id)?.holdings ?? {}).reduce((a, b) => a + b, 0);
  let view, victim;
  for (const end = now() + 2000; ;) {
    view = await adminJson(reps[0], '/admin/cluster');
    victim = reps.reduce((a, b) => (holds(view, b.id) > holds(view, a.id) ? b : a));
    if (holds(view, victim.id) >= SPLIT || now() > end) break;
    await sleep(20);
  }
  const others = reps.filter((r) => r !== victim);
  const held = holds(view, victim.id);
  const queuedFleet = view.fleet?.queued;
  for (const l of loads) l.drop(victim.port);
  victim.proc.kill('SIGKILL');
  const tKill = now();
  process.stderr.write('x');
  // when the others count the victim out (obleth_cluster_replicas drops to
  // 2), and what the fleet says the victim holds until then
  let tReaped = NaN, heldMax = held;
  const until = tKill + KILL_LEASE_MS + 3500;
  while (now() < until) {
    if (!Number.isFinite(tReaped)) {
      const m = await Promise.all(others.map(metricsOf));
      if (m.every((t) => metric(t, 'obleth_cluster_replicas') === REPLICAS - 1)) tReaped = now();
      heldMax = Math.max(heldMax, holds(await adminJson(others[0], '/admin/cluster'), victim.id));
    }
    await sleep(50);
  }
  process.stderr.write('\n');
  await samples.stop();
  await endLoad(loads, run);
  const rest = await leftovers(redis);
  for (const r of others) await stop(r.proc);
  await stop(sim.proc); await stop(redis.proc);

  const S = FAIR.slots;
  const pre = samples.out.filter((s) => s.t >= tKill - 1000 && s.t < tKill);
  const post = samples.out.filter((s) => s.t >= tKill);
  const dip = post.find((s) => s.inFlight < S);
  // recovered: the start of the first 1 s span after the dip began whose mean in_flight / slots >= 97 %
  let tFull = NaN;
  if (dip) {
    for (const s of post.filter((x) => x.t >= dip.t)) {
      const span = post.filter((x) => x.t >= s.t && x.t < s.t + 1000);
      if (span.length && span[span.length - 1].t > s.t + 900 && mean(span.map((x) => x.inFlight)) / S >= T.util) { tFull = s.t; break; }
    }
  }
  const buckets = [];
  for (let b = -500; b < KILL_LEASE_MS + 3000; b += 250) {
    const xs = samples.out.filter((s) => s.t >= tKill + b && s.t < tKill + b + 250).map((s) => s.inFlight);
    buckets.push({ from: b, mean: xs.length ? mean(xs) : NaN });
  }
  const r = {
    leaseMs: KILL_LEASE_MS, victim: victim.id, held, heldMax, queuedFleet, preUtil: pre.length ? mean(pre.map((s) => s.inFlight)) / S : NaN,
    dipMs: dip ? dip.t - tKill : NaN, minInFlight: Math.min(...post.map((s) => s.inFlight)),
    fullMs: dip ? tFull - tKill : 0, reapedMs: tReaped - tKill, lost: loads.reduce((s, l) => s + l.lost, 0),
    errors: errorsOf(loads), errorKinds: errorKinds(loads), leftovers: rest, buckets, samples: samples.out.length,
  };
  console.log(`\n== kill: 3 replicas in cluster mode (lease_ms ${KILL_LEASE_MS}), A (w1) and B (w2) 12 streams each on r1-r3, max_tokens 32..96; SIGKILL ${victim.id}`);
  console.log(`   ${victim.id} held ${held} of ${S} slots at the kill (fleet queue ${queuedFleet}); utilisation in the second before ${f1(r.preUtil * 100)}%; ` +
    `slots the fleet counted as ${victim.id}'s between the kill and its reaping: up to ${heldMax} (${heldMax - held} granted to its queue after the kill)`);
  console.log(`   simulator in_flight (mean per 250 ms, 10 ms samples) from 0.5 s before the kill:\n     ` +
    buckets.map((b) => `${b.from >= 0 ? '+' : ''}${(b.from / 1000).toFixed(2)}s ${f1(b.mean)}`).join('  '));
  console.log(`   pool below full from +${fmtMs(r.dipMs)} ms (min in_flight ${r.minInFlight}); full again (1 s at >= ${T.util * 100}%) from +${fmtMs(r.fullMs)} ms; ` +
    `the others counted ${victim.id} out at +${fmtMs(r.reapedMs)} ms`);
  console.log(`   requests lost with ${victim.id}: ${r.lost}; errors on ${others.map((o) => o.id).join(', ')}: ${r.errors} (${r.errorKinds}); Redis counters after: ` +
    `${rest.ok ? 'all zero' : `LEFT ${rest.left.join(' ')}, ${rest.entries} entries`}`);
  return r;
}

// ---------------------------------------------------------------- recovery: Redis killed and restarted

async function redisSection() {
  process.stderr.write('running redis ');
  let redis = await startRedis();
  const sim = await startSim(dir, simArgs(), { name: `sim-${++seq}` });
  const tenants = [tenant('A', 1, 12, [1, 2, 3]), tenant('B', 2, 12, [1, 2, 3])];
  const reps = await startFleet({ sim, tenants, redis });
  const run = { stopping: false, tokens: FAIR.varTokens, staggerMs: FAIR.staggerMs };
  const loads = tenants.map((t) => new TenantLoad(t, t.replicas.map((i) => reps[i - 1].port), run));
  const samples = sampleSim(sim, 10);
  // every replica's mode, every 25 ms: the first time each one reports fallback / shared after t
  const modes = [];
  let polling = true;
  const poller = (async () => {
    while (polling) {
      const t = now();
      const m = await Promise.all(reps.map((r) => metricsOf(r).catch(() => '')));
      modes.push({ t, shared: m.map((x) => metric(x, 'obleth_cluster_mode', { mode: 'shared' }) === 1),
        fallback: m.map((x) => metric(x, 'obleth_cluster_mode', { mode: 'fallback' }) === 1) });
      await sleep(25);
    }
  })();
  for (const l of loads) l.start();
  await sleep(opt.quick ? 2000 : 3000);
  const doneBefore = loads.reduce((s, l) => s + l.done.length, 0);
  redis.proc.kill('SIGKILL');
  const tKill = now();
  process.stderr.write('x');
  await sleep(opt.outageMs);
  const tUp = now();                                   // the restart: timed from the spawn
  redis = await startRedis(redis.port);
  process.stderr.write('^');
  await waitFor('shared mode after the restart', () => {
    const last = modes[modes.length - 1];
    return last && last.t > tUp && last.shared.every(Boolean);
  }, 15000);
  await sleep(2000);
  process.stderr.write('\n');
  polling = false;
  await poller;
  await samples.stop();
  await endLoad(loads, run);
  const rest = await leftovers(redis);
  const fallbacks = await Promise.all(reps.map(async (r) => metric(await metricsOf(r), 'obleth_cluster_fallbacks_total')));
  for (const r of reps) await stop(r.proc);
  await stop(sim.proc); await stop(redis.proc);

  const first = (after, pred) => modes.find((m) => m.t >= after && pred(m));
  const fb = reps.map((_, i) => first(tKill, (m) => m.fallback[i]));
  const back = reps.map((_, i) => first(tUp, (m) => m.shared[i]));
  const allBack = first(tUp, (m) => m.shared.every(Boolean));
  const outage = samples.out.filter((s) => s.t >= tKill && s.t < tUp);
  const rejoin = samples.out.filter((s) => s.t >= tUp && s.t < tUp + 2000);
  const recs = loads.flatMap((l) => l.done);
  const during = recs.filter((x) => x.tSent < tUp && x.tEnd > tKill);
  const S = FAIR.slots;
  const r = {
    outageMs: tUp - tKill, toFallbackMs: fb.map((m) => (m ? m.t - tKill : NaN)), toSharedMs: back.map((m) => (m ? m.t - tUp : NaN)),
    allSharedMs: allBack ? allBack.t - tUp : NaN, fallbacks,
    errors: errorsOf(loads), errorKinds: errorKinds(loads), doneBefore, served: recs.length,
    overlapping: during.length, outageMaxInFlight: Math.max(...outage.map((s) => s.inFlight)), outageMaxQueued: Math.max(...outage.map((s) => s.queued)),
    rejoinMaxQueued: Math.max(...rejoin.map((s) => s.queued)),
    rejoinQueuedMs: (() => { const q = rejoin.filter((s) => s.queued > 1); return q.length ? q[q.length - 1].t - tUp : 0; })(),
    outageUtil: outage.length ? mean(outage.map((s) => Math.min(s.inFlight, S))) / S : NaN,
    // request times (send to last byte) per tenant: the median of all, the longest of those overlapping the outage
    times: loads.map((l, i) => {
      const d = (xs) => xs.map((x) => x.tEnd - x.tSent).sort((a, b) => a - b);
      const all = d(l.done), over = d(l.done.filter((x) => x.tSent < tUp && x.tEnd > tKill));
      return { tenant: tenants[i].name, p50: pct(all, 0.5), max: all[all.length - 1], overlapMax: over[over.length - 1] };
    }),
    leftovers: rest,
  };
  console.log(`\n== redis: 3 replicas in cluster mode (lease_ms 3000, op_timeout_ms 200, fallback split), A (w1) and B (w2) 12 streams each on r1-r3; ` +
    `SIGKILL redis-server, restart it empty on the same port after ${opt.outageMs} ms`);
  console.log(`   fallback reported (kill -> mode fallback 1): ${r.toFallbackMs.map((x, i) => `r${i + 1} +${fmtMs(x)} ms`).join(', ')}`);
  console.log(`   shared again (restart -> mode shared 1): ${r.toSharedMs.map((x, i) => `r${i + 1} +${fmtMs(x)} ms`).join(', ')}; all three +${fmtMs(r.allSharedMs)} ms`);
  console.log(`   during the outage (${fmtMs(r.outageMs)} ms): simulator in_flight max ${r.outageMaxInFlight} (split: ${REPLICAS} x ceil(8/3) = ${REPLICAS * SPLIT}), ` +
    `queued max ${r.outageMaxQueued}, utilisation ${f1(r.outageUtil * 100)}%`);
  console.log(`   in the 2 s after the restart: simulator queued max ${r.rejoinMaxQueued} (forwarded beyond the 8 slots while the replicas re-join` +
    `${r.rejoinQueuedMs ? `; more than 1 queued until +${fmtMs(r.rejoinQueuedMs)} ms` : ''})`);
  console.log(`   requests: ${r.served} served, ${r.overlapping} of them overlapping the outage; failed ${r.errors} (${r.errorKinds}); ` +
    `request time p50 / longest / longest overlapping the outage: ` +
    `${r.times.map((x) => `${x.tenant} ${fmtMs(x.p50)} / ${fmtMs(x.max)} / ${fmtMs(x.overlapMax)} ms`).join(', ')}; obleth_cluster_fallbacks_total ${fallbacks.join(' / ')}; Redis counters after: ` +
    `${rest.ok ? 'all zero' : `LEFT ${rest.left.join(' ')}, ${rest.entries} entries`}`);
  return r;
}

// ---------------------------------------------------------------- summary

const scoredWins = (r) => r.windows.filter((w) => !w.warmup);
function loadSummary(r) {
  const ws = scoredWins(r);
  let maxErr = 0, where = '';
  for (const w of ws) w.rows.forEach((t, i) => {
    if (!r.tenants[i].backlogged) return;    // the light tenant: reported, not scored (as in fairness.mjs)
    if (!(t.errPp <= maxErr)) { maxErr = t.errPp; where = `${t.tenant}, window ${w.index}`; }
  });
  const shares = r.tenants.map((_, i) => {
    const tok = ws.reduce((s, w) => s + w.rows[i].tokens, 0), all = ws.reduce((s, w) => s + w.total, 0);
    return all ? tok / all : NaN;
  });
  return {
    maxErr, where, minJain: Math.min(...ws.map((w) => w.jain)), minUtil: Math.min(...ws.map((w) => w.util)),
    meanUtil: mean(ws.map((w) => w.util)), simQueuedMax: Math.max(...ws.map((w) => w.simQueuedMax)),
    simQueuedMean: mean(ws.map((w) => w.simQueuedMean)), shares,
  };
}

function summary(res) {
  const verdicts = [];
  const line = (ok, text) => { verdicts.push({ verdict: ok ? 'PASS' : 'MISS', text }); console.log(`  ${ok ? 'PASS' : 'MISS'}  ${text}`); };
  const info = (text) => { verdicts.push({ verdict: 'info', text }); console.log(`  info  ${text}`); };
  console.log('\n== summary (warm-up window excluded)');
  if (res.fairness) {
    console.log(mdTable(['deployment', 'share A / B / C (fair 14.3 / 28.6 / 57.1)', 'max err pp', 'min Jain', 'utilisation min / mean', 'sim queued max / mean'],
      res.fairness.map((r) => { const s = loadSummary(r); return [r.name, s.shares.map((x) => f1(x * 100)).join(' / '), `${f1(s.maxErr)} (${s.where})`,
        f4(s.minJain), `${f1(s.minUtil * 100)} / ${f1(s.meanUtil * 100)} %`, `${s.simQueuedMax} / ${f1(s.simQueuedMean)}`]; })));
    for (const r of res.fairness) {
      const s = loadSummary(r);
      const tag = r.deployment === 'cluster' ? '' : ' (reference)';
      const put = r.deployment === 'cluster' ? line : (ok, text) => info(`${ok ? 'would pass' : 'misses'}: ${text}`);
      put(s.maxErr <= T.shareErrPp, `${r.name}${tag}: every share within ${T.shareErrPp} pp of fair, every window — max ${f1(s.maxErr)} pp (${s.where})`);
      put(s.minJain >= T.jain, `${r.name}${tag}: Jain >= ${T.jain} every window — min ${f4(s.minJain)}`);
      put(s.minUtil >= T.util, `${r.name}${tag}: utilisation >= ${T.util * 100}% every window — min ${f1(s.minUtil * 100)}%; sim queued max ${s.simQueuedMax}`);
    }
  }
  if (res.noisy) {
    const [base, ...rest] = res.noisy;
    const light = (r) => r.overall.find((o) => o.tenant === 'A');
    const b = light(base);
    console.log(mdTable(['run', 'light A: requests', 'queue ms p50 / p99', 'first token ms p50 / p99', 'max err pp (B, C)', 'min Jain', 'util mean', 'sim queued max'],
      res.noisy.map((r) => { const o = light(r), s = loadSummary(r); return [r.name, o.n, `${fmtMs(o.qP50)} / ${fmtMs(o.qP99)}`,
        `${fmtMs(o.firstP50)} / ${fmtMs(o.firstP99)}`, f1(s.maxErr), f4(s.minJain), `${f1(s.meanUtil * 100)} %`, s.simQueuedMax]; })));
    for (const r of rest) {
      const o = light(r);
      const text = `${r.name}: light tenant's p99 queue wait within ${T.lightP99Ratio}x of its baseline — ${fmtMs(o.qP99)} vs ${fmtMs(b.qP99)} ms ` +
        `(${(o.qP99 / b.qP99).toFixed(2)}x); first token p99 ${fmtMs(o.firstP99)} vs ${fmtMs(b.firstP99)} ms (${(o.firstP99 / b.firstP99).toFixed(2)}x)`;
      if (r.deployment === 'cluster') line(o.qP99 <= T.lightP99Ratio * b.qP99, text);
      else info(`reference: ${text}`);
      if (r.deployment === 'cluster') {
        const s = loadSummary(r);
        line(s.maxErr <= T.shareErrPp && s.minJain >= T.jain && s.minUtil >= T.util,
          `${r.name}: B and C within ${T.shareErrPp} pp, Jain >= ${T.jain}, utilisation >= ${T.util * 100}% — ${f1(s.maxErr)} pp, ${f4(s.minJain)}, ${f1(s.minUtil * 100)}%`);
      }
    }
  }
  const ops = res.fairness?.find((r) => r.ops)?.ops;
  if (ops) info(`Redis calls per request under saturation (uneven / cluster): ${opsLine(ops)}`);
  if (res.latency) {
    const o = res.latency.ops;
    line(o.admit <= 1.01 && o.release <= 1.01, `uncontended: at most one Redis call at admission and one at release — admit ${f2(o.admit)}, release ${f2(o.release)} per request`);
    info(`added latency of cluster mode at concurrency 1: p50 +${(res.latency.addedP50 * 1000).toFixed(0)} µs, p99 +${(res.latency.addedP99 * 1000).toFixed(0)} µs; ` +
      `Redis call mean ${res.latency.redisLatency.meanUs.toFixed(0)} µs`);
  }
  if (res.kill) {
    const k = res.kill;
    line(k.fullMs <= k.leaseMs + 1000 && k.errors === 0,
      `replica SIGKILL (held ${k.held} slots): pool full again within lease_ms + 1 s = ${k.leaseMs + 1000} ms — ${fmtMs(k.fullMs)} ms; errors elsewhere ${k.errors}`);
    line(k.heldMax <= k.held, `its queue blocks nobody: no slot granted to the dead replica's queued requests (counted at ${k.heldMax}, ` +
      `it held ${k.held}); the simulator's in_flight fell to ${k.minInFlight} (of ${FAIR.slots}) until its lease ran out`);
  }
  if (res.redis) {
    const x = res.redis;
    line(x.allSharedMs <= 2000, `Redis restarted: every replica shared again within 2 s — ${fmtMs(x.allSharedMs)} ms`);
    line(x.toFallbackMs.every((v) => v <= 200 + 250), `Redis killed: every replica in fallback within op_timeout_ms (200 ms; metrics polled every 25 ms) — ${x.toFallbackMs.map((v) => fmtMs(v)).join(' / ')} ms`);
    line(x.errors === 0, `Redis outage: no request failed — ${x.errors} failed of ${x.served}`);
    info(`while the replicas re-join the restarted Redis, the simulator queued up to ${x.rejoinMaxQueued} (pool overshoot; ${x.outageMaxQueued} during the outage itself, ` +
      `where split allows ${REPLICAS * SPLIT} for ${FAIR.slots} slots)`);
  }
  const dirty = [...(res.fairness ?? []), ...(res.noisy ?? []), res.kill, res.redis].filter((r) => r?.leftovers && !r.leftovers.ok);
  if ([...(res.fairness ?? []), ...(res.noisy ?? []), res.kill, res.redis].some((r) => r?.leftovers))
    line(!dirty.length, `Redis counters back at zero after every cluster run${dirty.length ? ` — not after ${dirty.map((r) => r.name ?? 'recovery').join(', ')}` : ''}`);
  return verdicts;
}

// ---------------------------------------------------------------- main

requireBinaries();
requireTools(['redis-server', 'redis-cli'], 'apt-get install redis-server redis-tools');
const started = Date.now();
console.log(`obleth cluster benchmark: ${opt.duration} s per load scenario, ${opt.window} s windows (window 0 is warm-up); sections ${opt.only.join(', ')}`);
console.log(`machine: ${machine()}`);
console.log(`backend: obleth-sim ${simArgs().join(' ')}; ${REPLICAS} obleth replicas, cost tokens, streaming chat with include_usage`);
console.log(`binaries: ${OBLETH}\n          ${OBLETH_SIM}\n          ${(await sh('redis-server', ['--version'])).stdout.trim()}`);
const res = {};
if (opt.only.includes('fairness')) res.fairness = await fairnessSection();
if (opt.only.includes('noisy')) res.noisy = await noisySection();
if (opt.only.includes('latency')) res.latency = await latencySection();
if (opt.only.includes('kill')) res.kill = await killSection();
if (opt.only.includes('redis')) res.redis = await redisSection();
const verdicts = summary(res);
console.log(`\nwall time ${((Date.now() - started) / 1000).toFixed(0)} s`);
if (opt.json) {
  writeFileSync(opt.json, JSON.stringify({ opt, results: res, verdicts }, (k, v) => (v === Infinity ? 'inf' : v), 2));
  console.log(`results written to ${opt.json}`);
}
process.exit(0);
