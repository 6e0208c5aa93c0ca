// Cluster mode (issue 16) through real clients: three obleth replicas share
// one redis-server (Debian's, started per test on an ephemeral loopback
// port) in front of one obleth-sim. Each test checks what a user of the
// fleet sees: the pool's, a tenant's and the queues' caps hold fleet-wide;
// the fleet grants slots in weighted fair order whatever replica a request
// came through; rpm and token budgets (a tenant's, a key's) count fleet-wide; admin changes made
// on one replica reach the others within a second; replicas whose configs
// disagree say so; a replica killed while holding slots gives them back
// within its lease; Redis killed, frozen or restarted empty costs no
// request, and a slot whose request ends while its replica joins again is
// not left counted; a second live replica with the same id does not start; the
// metrics pass promtool; the Redis password is never shown. After every
// test's traffic the fleet's counters in Redis are back to zero.
import test from 'node:test';
import assert from 'node:assert/strict';
import { startSim, startObleth, startRedis, stop, simStats, chatBody, sleep, waitFor, run, holdSlot, WAIT_MS } from './lib.mjs';

// ---- set-up ----

const TENANTS = [
  { name: 'a', weight: 1, keys: [{ id: 'a-1', secret: 'sk-a' }] },
  { name: 'b', weight: 2, keys: [{ id: 'b-1', secret: 'sk-b' }] },
  { name: 'c', weight: 4, keys: [{ id: 'c-1', secret: 'sk-c' }] },
];

// One replica's config: the simulator as upstream "sim" behind /v1/, an
// admin listener, and the cluster block (replica id r<i+1>). opts.upstream,
// opts.admission and opts.cluster are merged in; opts.extra(i) adds (or
// replaces) top-level keys for replica i (f: the fleet so far).
function replicaConfig(f, i, opts) {
  const extra = opts.extra ? opts.extra(i, f) : {};
  return {
    upstreams: [{ name: 'sim', endpoints: [f.sim.url], max_inflight: 4, ...opts.upstream }],
    routes: [{ prefix: '/v1/', class: 'inference', upstream: 'sim' }],
    tenants: opts.tenants ?? TENANTS,
    ...(opts.groups ? { groups: opts.groups } : {}),
    admission: { cost: 'requests', ...opts.admission },
    admin: { address: '127.0.0.1:0' },
    ...extra,
    cluster: { redis: f.redis.url, replica_id: `r${i + 1}`, ...opts.cluster, ...extra.cluster },
  };
}

// Start replica i and wait until it has joined the fleet. gw.adminUrl is
// its admin listener, gw.id its replica id.
async function startReplica(f, i, opts, { files, joined = true } = {}) {
  const cfg = replicaConfig(f, i, opts);
  const gw = await startObleth(cfg, { files: files ?? (opts.files ? opts.files(i) : {}) });
  f.gws.push(gw);
  const a = gw.output.text.match(/admin API on 127\.0\.0\.1:(\d+)/);
  assert.ok(a, `admin listener logged:\n${gw.output.text}`);
  gw.adminUrl = `http://127.0.0.1:${a[1]}`;
  gw.id = cfg.cluster.replica_id;
  gw.redisUrl = cfg.cluster.redis;
  if (joined) await waitFor(() => /cluster: joined the fleet as/.test(gw.output.text), () => `${gw.id} to join the fleet:\n${gw.output.text}`);
  return gw;
}

// redis-server, obleth-sim (args: opts.sim) and opts.n (3) replicas; waits
// until the first replica's /admin/cluster lists all of them.
async function startFleet(f, opts) {
  f.redis = await startRedis(opts.redis ?? {});
  f.sim = await startSim(opts.sim ?? []);
  const n = opts.n ?? 3;
  for (let i = 0; i < n; i++) await startReplica(f, i, opts);
  await waitFor(async () => (await clusterView(f.gws[0])).replicas?.length === n, `${n} replicas in /admin/cluster`);
}

// A test on its own fleet. After body, the fleet's counters in Redis must
// go back to zero (every slot, queue entry and reservation given back);
// then everything is stopped, replicas first (a sanitizer report or an
// unclean exit fails the test).
function fleetTest(name, opts, body, timeout = 60000) {
  test(name, { timeout }, async () => {
    const f = { gws: [], redis: null, sim: null };
    let err = null;
    try {
      await startFleet(f, opts);
      await body(f);
      await countersAtZero(f);
    } catch (e) {
      err = e;
    }
    for (const gw of f.gws.reverse()) {
      if (gw.proc.exitInfo) continue; // killed by the test
      try { await stop(gw.proc); } catch (e) { err ??= e; }
    }
    for (const p of [f.sim?.proc, f.redis?.proc]) {
      if (!p) continue;
      try { p.kill('SIGCONT'); } catch {}
      try { await stop(p); } catch (e) { err ??= e; }
    }
    if (err) {
      for (const gw of f.gws) console.log(`--- ${gw.id} log (cluster lines) ---\n` +
        gw.output.text.split('\n').filter((l) => /cluster|error|warn/i.test(l)).slice(-40).join('\n'));
      throw err;
    }
  });
}

// Every counter in Redis back to zero: cluster.lua deletes a field of
// <ns>:n that reaches 0, the per-replica sets of held (gm:) and queued
// (qm:) members disappear when emptied, and so does the "r" (reserved)
// field of a budget's hash (<ns>:b\0<kind>\0<name>\0<period>; its name holds
// NULs, which no argv can carry, so a script lists them).
const RESERVED = "local o = {} for _, k in ipairs(redis.call('KEYS', 'obleth:b*')) do " +
  "local r = redis.call('HGET', k, 'r') if r then o[#o + 1] = k .. ' r=' .. r end end return o";
async function countersAtZero(f) {
  let n = '', keys = '', reserved = '';
  try {
    await waitFor(async () => {
      n = (await f.redis.cli(['HGETALL', 'obleth:n'])).trim();
      keys = (await f.redis.cli(['KEYS', 'obleth:*m:*'])).trim();
      reserved = (await f.redis.cli(['EVAL', RESERVED, '0'])).trim();
      return n === '' && keys === '' && reserved === '';
    }, 'the counters', 5000);
  } catch {
    // what is left, for the report: the members and their entries (pool, tenant, cost, replica, ...)
    const members = [];
    for (const k of keys.split('\n').filter(Boolean)) members.push(`${k}: ${(await f.redis.cli(['SMEMBERS', k])).trim()}`);
    const entries = (await f.redis.cli(['HGETALL', 'obleth:e'])).trim();
    assert.fail(`the fleet's counters back to zero: HGETALL obleth:n = ${JSON.stringify(n)}, KEYS obleth:*m:* = ` +
      `${JSON.stringify(keys)}, budget reservations = ${JSON.stringify(reserved)}; members ${JSON.stringify(members)}, ` +
      `HGETALL obleth:e = ${JSON.stringify(entries)}`);
  }
}

// ---- clients ----

// One chat completion with fetch. Resolves (never rejects) with status (0
// when the request failed or ran past timeout ms), headers, text, json,
// ms (its duration) and end (when it ended).
async function chat(gw, key, { body = chatBody(), headers = {}, timeout = WAIT_MS } = {}) {
  const t0 = Date.now();
  try {
    const r = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST', body: JSON.stringify(body), signal: AbortSignal.timeout(timeout),
      headers: { 'content-type': 'application/json', authorization: `Bearer ${key}`, ...headers },
    });
    const text = await r.text();
    let json;
    try { json = JSON.parse(text); } catch {}
    return { status: r.status, headers: r.headers, text, json, ms: Date.now() - t0, end: Date.now() };
  } catch (e) {
    return { status: 0, error: String(e), text: '', ms: Date.now() - t0, end: Date.now() };
  }
}

async function adminReq(gw, path, { method = 'GET', body } = {}) {
  const r = await fetch(gw.adminUrl + path, {
    method, ...(body !== undefined ? { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } } : {}),
  });
  const text = await r.text();
  let json;
  try { json = JSON.parse(text); } catch {}
  return { status: r.status, text, json };
}
const clusterView = async (gw) => (await adminReq(gw, '/admin/cluster')).json;
const fairshare = async (gw) => (await adminReq(gw, '/admin/fairshare')).json;
const tenantView = async (gw, name) => (await adminReq(gw, `/admin/tenants/${name}`)).json;
const metricsText = async (gw) => (await adminReq(gw, '/metrics')).text;

// The value of one sample ("name{labels}" exactly as exposed), or undefined.
function sample(text, series) {
  for (const line of text.split('\n')) {
    if (line.startsWith(series + ' ')) return Number(line.slice(series.length + 1));
  }
  return undefined;
}
async function modeOf(gw) {
  const m = await metricsText(gw);
  if (sample(m, 'obleth_cluster_mode{mode="shared"}') === 1) return 'shared';
  if (sample(m, 'obleth_cluster_mode{mode="fallback"}') === 1) return 'fallback';
  return '?';
}
const fleetTenant = (fs, name) => fs.fleet.tenants.find((t) => t.name === name);

// Requests the simulator has received and not yet finished (held in its
// x-sim-delay-ms timer, waiting for a slot or generating).
const simOutstanding = (s) => s.requests - s.completed - s.aborted - s.client_gone;

// Poll /sim/stats every few ms until stop(); resolves with the largest
// in_flight, queued and outstanding seen.
function watchSim(sim) {
  const seen = { in_flight: 0, queued: 0, outstanding: 0, polls: 0 };
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      const s = await simStats(sim);
      seen.in_flight = Math.max(seen.in_flight, s.in_flight);
      seen.queued = Math.max(seen.queued, s.queued);
      seen.outstanding = Math.max(seen.outstanding, simOutstanding(s));
      seen.polls++;
      await sleep(3);
    }
  })();
  return { seen, stop: async () => { stopped = true; await loop; return seen; } };
}

// Closed-loop clients: perReplica loops on each replica, each sending the
// next request as soon as the last one ended (key: keys[(replica + loop) %
// keys.length]), until finish(). Records every request.
function traffic(gws, keys, { perReplica = 3, timeout = 10000 } = {}) {
  const done = [];
  let stopping = false;
  const loops = [];
  gws.forEach((gw, i) => {
    for (let j = 0; j < perReplica; j++) {
      loops.push((async () => {
        while (!stopping) {
          const r = await chat(gw, keys[(i + j) % keys.length], { timeout });
          done.push({ gw: gw.id, status: r.status, ms: r.ms, end: r.end, what: r.status === 200 ? '' : r.error ?? r.text });
        }
      })());
    }
  });
  return {
    done,
    count: () => done.length,
    finish: async () => { stopping = true; await Promise.all(loops); return done; },
  };
}

// No request failed (every answer 200) and none hung (each ended well
// within the client's 10 s timeout).
function assertAllServed(done, what) {
  const bad = done.filter((d) => d.status !== 200);
  assert.equal(bad.length, 0, `${what}: ${bad.length} of ${done.length} requests failed: ${JSON.stringify(bad.slice(0, 5))}`);
  const slowest = Math.max(...done.map((d) => d.ms));
  assert.ok(slowest < 5000, `${what}: no request hangs (slowest ${slowest} ms)`);
}

const waitMore = (tr, n, what) => { const base = tr.count(); return waitFor(() => tr.count() >= base + n, what); };

// ---- 1. global caps ----

fleetTest('global caps: an upstream max_inflight of 4 holds across 3 replicas (the simulator never queues)', {
  sim: ['--slots', '4', '--ttft-ms', '150'],
}, async (f) => {
  const w = watchSim(f.sim);
  const keys = ['sk-a', 'sk-b', 'sk-c'];
  const rs = await Promise.all(Array.from({ length: 40 }, (_, i) => chat(f.gws[i % 3], keys[Math.floor(i / 3) % 3])));
  const seen = await w.stop();
  assert.deepEqual(rs.map((r) => r.status), Array(40).fill(200), rs.find((r) => r.status !== 200)?.text);
  assert.ok(seen.polls > 20, `the simulator was watched (${seen.polls} polls)`);
  assert.ok(seen.in_flight <= 4, `the simulator's in_flight never above the pool of 4 (max ${seen.in_flight})`);
  assert.equal(seen.in_flight, 4, 'the pool was used in full');
  assert.equal(seen.queued, 0, 'the simulator never had to queue a request');
  const queued = rs.filter((r) => r.headers.get('x-obleth-admission') === 'queued').length;
  assert.ok(queued >= 30, `most requests waited in the fleet's queue (${queued} of 40)`);
  // the last releases reach Redis just after their responses' last bytes
  for (const gw of f.gws) {
    let fs;
    await waitFor(async () => (fs = await fairshare(gw)).fleet.pools[0].inflight === 0,
      () => `${gw.id}'s view of the fleet's pool back to 0: ${JSON.stringify(fs?.fleet)}`, 5000);
    assert.equal(fs.fleet.mode, 'shared');
    assert.equal(fs.fleet.replicas, 3);
    assert.deepEqual(fs.fleet.pools, [{ name: 'sim', slots: 4, inflight: 0, queued: 0 }]);
  }
});

fleetTest('global caps hold with "workers": 2 per replica (every worker\'s requests go through the first worker\'s Redis link)', {
  sim: ['--slots', '4', '--ttft-ms', '100'],
  extra: () => ({ workers: 2 }),
}, async (f) => {
  const w = watchSim(f.sim);
  const keys = ['sk-a', 'sk-b', 'sk-c'];
  // many short-lived connections, so the kernel spreads them over both workers (SO_REUSEPORT)
  const rs = await Promise.all(Array.from({ length: 48 }, (_, i) =>
    chat(f.gws[i % 3], keys[i % 3], { headers: { connection: 'close' } })));
  const seen = await w.stop();
  assert.deepEqual(rs.map((r) => r.status), Array(48).fill(200), rs.find((r) => r.status !== 200)?.text);
  assert.ok(seen.in_flight <= 4, `the simulator's in_flight never above the pool of 4 (max ${seen.in_flight})`);
  assert.equal(seen.queued, 0, 'the simulator never had to queue a request');
  for (const gw of f.gws) {
    let fs;
    await waitFor(async () => (fs = await fairshare(gw)).fleet.pools[0].inflight === 0,
      () => `${gw.id}'s view of the fleet's pool back to 0: ${JSON.stringify(fs?.fleet)}`, 5000);
  }
});

fleetTest('global caps: a tenant max_inflight of 2 holds fleet-wide when its requests arrive on all 3 replicas', {
  tenants: [...TENANTS, { name: 'capped', max_inflight: 2, keys: [{ id: 'capped-1', secret: 'sk-capped' }] }],
  upstream: { max_inflight: 0 },
}, async (f) => {
  const w = watchSim(f.sim);
  let maxFleet = 0, maxQueued = 0, fleetPolls = 0, stopped = false;
  const poll = (async () => {
    while (!stopped) {
      const fs = await fairshare(f.gws[fleetPolls % 3]);
      const t = fleetTenant(fs, 'capped');
      maxFleet = Math.max(maxFleet, t.inflight);
      maxQueued = Math.max(maxQueued, t.queued);
      fleetPolls++;
      await sleep(5);
    }
  })();
  const rs = await Promise.all(Array.from({ length: 6 }, (_, i) =>
    chat(f.gws[i % 3], 'sk-capped', { headers: { 'x-sim-delay-ms': '400' } })));
  const seen = await w.stop();
  stopped = true;
  await poll;
  assert.deepEqual(rs.map((r) => r.status), Array(6).fill(200));
  assert.ok(seen.outstanding <= 2, `the simulator never had more than 2 of the tenant's requests (max ${seen.outstanding})`);
  assert.equal(seen.outstanding, 2, 'the tenant used its 2');
  assert.ok(maxFleet <= 2, `/admin/fairshare fleet: the tenant's in-flight never above 2 (max ${maxFleet})`);
  assert.ok(maxQueued >= 2, `/admin/fairshare fleet: the rest queued (max ${maxQueued})`);
  assert.equal(rs.filter((r) => r.headers.get('x-obleth-admission') === 'queued').length, 4, 'four waited for the cap');
  // three batches of two: 400 ms each
  const last = Math.max(...rs.map((r) => r.ms));
  assert.ok(last >= 1150, `the six ran two at a time (the last took ${last} ms)`);
});

fleetTest('global caps: admission.max_queue and a tenant max_queue count the queues of every replica (429 queue_full)', {
  tenants: [...TENANTS, { name: 'q', max_queue: 2, keys: [{ id: 'q-1', secret: 'sk-q' }] }],
  upstream: { max_inflight: 1 },
  admission: { max_queue: 3 },
}, async (f) => {
  const [r1, r2, r3] = f.gws;
  const hold = holdSlot(r1.url, 'sk-a');
  const fleetCounts = async () => (await fairshare(r2)).fleet;
  await waitFor(async () => (await fleetCounts()).inflight === 1, 'the one slot held');
  const waiting = [];
  // the tenant's queue cap: two queued through r1 and r2, the third (r3) is refused
  waiting.push(chat(r1, 'sk-q'), chat(r2, 'sk-q'));
  await waitFor(async () => (await fleetCounts()).queued === 2, 'two of q queued');
  let r = await chat(r3, 'sk-q');
  assert.equal(r.status, 429, r.text);
  assert.equal(r.json.error.code, 'queue_full');
  assert.match(r.headers.get('retry-after') ?? '', /^\d+$/);
  // the fleet's queue cap: one more (b, through r3) fills it, then nobody queues anywhere
  waiting.push(chat(r3, 'sk-b'));
  await waitFor(async () => (await fleetCounts()).queued === 3, 'three queued in the fleet');
  for (const [gw, k] of [[r1, 'sk-c'], [r2, 'sk-b'], [r3, 'sk-a']]) {
    r = await chat(gw, k);
    assert.equal(r.status, 429, `${gw.id}: ${r.text}`);
    assert.equal(r.json.error.code, 'queue_full');
    assert.match(r.headers.get('retry-after') ?? '', /^\d+$/);
  }
  hold.release();
  await hold.done;
  const rs = await Promise.all(waiting);
  assert.deepEqual(rs.map((x) => x.status), [200, 200, 200], 'the queued ones are served once the slot is free');
});

// ---- 1b. max_inflight "auto" ----

const FAST = { lease_ms: 1500, op_timeout_ms: 200 };

// Mean in_flight and queued of the simulator over ms (sampled every 20 ms).
async function simMeans(sim, ms) {
  const s = [];
  for (const end = Date.now() + ms; Date.now() < end;) {
    const x = await simStats(sim);
    s.push(x);
    await sleep(20);
  }
  return { in: s.reduce((a, x) => a + x.in_flight, 0) / s.length, q: s.reduce((a, x) => a + x.queued, 0) / s.length };
}

fleetTest('max_inflight "auto" across 2 replicas: one controller\'s limit is the fleet\'s, it grows on load sent through the other replica, and a killed owner is replaced within 2 s', {
  n: 2,
  cluster: FAST,
  upstream: { max_inflight: 'auto', capacity: { min: 1, max: 64, interval_ms: 100 } },
  sim: ['--slots', '8', '--ttft-ms', '40', '--itl-ms', '5', '--max-tokens', '16'],
}, async (f) => {
  const cap = async (gw) => (await fairshare(gw)).pools[0].capacity[0];
  let cs;
  await waitFor(async () => {
    cs = await Promise.all(f.gws.map(cap));
    return cs.every((c) => c.fleet && c.source === 'metrics') && cs.filter((c) => c.fleet.owner).length === 1;
  }, () => `one replica to own the controller: ${JSON.stringify(cs)}`);
  const ownerAt = cs.findIndex((c) => c.fleet.owner);
  const owner = f.gws[ownerAt], other = f.gws[1 - ownerAt];
  assert.match(owner.output.text, /capacity: upstream sim: this replica's controller now sets the fleet's limits/);
  assert.match(other.output.text, /capacity: upstream sim: this replica follows the fleet's limits/);
  // All the load goes through the follower: the owner's controller sees
  // the fleet's requests in flight (not its own replica's, which are none),
  // so the limit grows to the backend's 8 slots, and no further.
  const tr = traffic([other], ['sk-a', 'sk-b', 'sk-c'], { perReplica: 16 });
  let done;
  try {
    await sleep(3000);
    let m = await simMeans(f.sim, 1500);
    cs = await Promise.all(f.gws.map(cap));
    for (const c of cs) assert.ok(c.limit >= 7 && c.limit <= 10, `limit near the 8 slots: ${JSON.stringify(cs)}`);
    assert.ok(Math.abs(cs[0].limit - cs[1].limit) <= 1, `both replicas apply the owner's limit: ${JSON.stringify(cs)}`);
    assert.ok(m.in >= 0.9 * 8, `the backend is kept busy: mean in_flight ${m.in.toFixed(2)} of 8`);
    assert.ok(m.q <= 1, `the backend's own queue stays near empty: mean ${m.q.toFixed(2)}`);
    for (const gw of f.gws) assert.match(await metricsText(gw), /obleth_upstream_capacity\{upstream="sim",endpoint="127\.0\.0\.1:\d+"\} ([789]|10)\n/);

    const t0 = Date.now();
    await stop(owner.proc, 'SIGKILL');
    await waitFor(async () => (await cap(other)).fleet?.owner === true, `${other.id} to take the controller over`, 3000);
    const took = Date.now() - t0;
    console.log(`${other.id} owns the capacity controller ${took} ms after ${owner.id}'s SIGKILL`);
    assert.ok(took <= 2000, `taken over ${took} ms after the kill (lease 1 s + one interval)`);
    assert.match(other.output.text, /capacity: upstream sim: this replica's controller now sets the fleet's limits/);
    await sleep(1500);
    m = await simMeans(f.sim, 1500);
    const c = await cap(other);
    assert.ok(c.limit >= 7 && c.limit <= 10, `limit near the 8 slots after the take-over: ${JSON.stringify(c)}`);
    assert.ok(m.in >= 0.9 * 8, `busy after the take-over: mean in_flight ${m.in.toFixed(2)} of 8`);
    assert.ok(m.q <= 1, `no backend queue after the take-over: mean ${m.q.toFixed(2)}`);
  } finally {
    done = await tr.finish(); // also when an assertion failed: the client loops must end
  }
  assertAllServed(done, `through ${other.id}`);
});

// ---- 2. global fairness ----

// Completions of each tenant in every 5 s window (sliding by 250 ms) from
// warm-up to the end of the run: shares and Jain's index on
// weight-normalised shares.
function windows(done, { from, to, weights, width = 5000, step = 250 }) {
  const out = [];
  for (let s = from; s + width <= to; s += step) {
    const n = {};
    for (const k of Object.keys(weights)) n[k] = 0;
    for (const d of done) if (d.end >= s && d.end < s + width) n[d.tenant]++;
    const total = Object.values(n).reduce((a, b) => a + b, 0);
    const share = {}, norm = [];
    for (const k of Object.keys(weights)) { share[k] = n[k] / total; norm.push(share[k] / weights[k]); }
    const jain = norm.reduce((a, b) => a + b, 0) ** 2 / (norm.length * norm.reduce((a, b) => a + b * b, 0));
    out.push({ start: s - from, n, total, share, jain });
  }
  return out;
}

fleetTest('global fairness: A (weight 1) only via r1, B (2) only via r2, C (4) via all three with 3x the streams get 1/7, 2/7, 4/7', {
  sim: ['--slots', '4', '--ttft-ms', '75'],
}, async (f) => {
  const [r1, r2, r3] = f.gws;
  const weights = { a: 1, b: 2, c: 4 };
  const streams = [[r1, 'a', 4], [r2, 'b', 4], [r1, 'c', 4], [r2, 'c', 4], [r3, 'c', 4]];
  const RUN_MS = 7500, WARM_MS = 1000;
  const t0 = Date.now();
  const stopAt = t0 + RUN_MS;
  const done = [];
  const failed = [];
  const loops = [];
  for (const [gw, tenant, n] of streams) {
    for (let i = 0; i < n; i++) {
      loops.push((async () => {
        while (Date.now() < stopAt) {
          const r = await chat(gw, `sk-${tenant}`, { timeout: 10000 });
          if (r.status !== 200) failed.push({ tenant, status: r.status, text: r.text || r.error });
          else done.push({ tenant, gw: gw.id, end: r.end, ms: r.ms });
        }
      })());
    }
  }
  // utilisation: the simulator's slots in use, sampled while every tenant is backlogged
  const util = [];
  const sampler = (async () => {
    while (Date.now() < stopAt) {
      const s = await simStats(f.sim);
      if (Date.now() > t0 + WARM_MS) util.push(s.in_flight);
      await sleep(20);
    }
  })();
  await Promise.all([...loops, sampler]);
  assert.deepEqual(failed, [], 'every request served');
  const ws = windows(done, { from: t0 + WARM_MS, to: stopAt, weights });
  assert.ok(ws.length >= 3, `${ws.length} windows`);
  const fmt = (w) => `[${(w.start / 1000).toFixed(2)}s +5s] n=${JSON.stringify(w.n)} shares a=${(w.share.a * 100).toFixed(1)}% ` +
    `b=${(w.share.b * 100).toFixed(1)}% c=${(w.share.c * 100).toFixed(1)}% jain=${w.jain.toFixed(4)}`;
  const report = ws.map(fmt).join('\n');
  const meanUtil = util.reduce((a, b) => a + b, 0) / Math.max(1, util.length) / 4;
  console.log(`fairness windows (utilisation ${(meanUtil * 100).toFixed(1)}% of 4 slots, ${done.length} completions):\n${report}`);
  for (const w of ws) {
    for (const [k, wt] of Object.entries(weights)) {
      const want = wt / 7;
      assert.ok(Math.abs(w.share[k] - want) <= 0.03,
        `tenant ${k}'s share ${(w.share[k] * 100).toFixed(1)}% is within 3 points of ${(want * 100).toFixed(1)}% in ${fmt(w)}\nall windows:\n${report}`);
    }
    assert.ok(w.jain >= 0.99, `Jain's index ${w.jain.toFixed(4)} >= 0.99 in ${fmt(w)}\nall windows:\n${report}`);
  }
});

// ---- 3. rate limits and budgets fleet-wide ----

fleetTest('rpm counts fleet-wide: rpm 6, 12 requests through 3 replicas: 6 served, 6 answered 429 rate_limit_exceeded with Retry-After', {
  tenants: [...TENANTS, { name: 'limited', rpm: 6, keys: [{ id: 'limited-1', secret: 'sk-limited' }] }],
}, async (f) => {
  const rs = await Promise.all(Array.from({ length: 12 }, (_, i) => chat(f.gws[i % 3], 'sk-limited')));
  const ok = rs.filter((r) => r.status === 200);
  const refused = rs.filter((r) => r.status === 429);
  assert.equal(ok.length, 6, `served: ${rs.map((r) => r.status).join(',')}`);
  assert.equal(refused.length, 6);
  for (const r of refused) {
    assert.equal(r.json.error.code, 'rate_limit_exceeded', r.text);
    assert.match(r.headers.get('retry-after') ?? '', /^[1-9]\d*$/, 'Retry-After in whole seconds');
  }
  // every replica refuses the next one too
  for (const gw of f.gws) assert.equal((await chat(gw, 'sk-limited')).status, 429, gw.id);
});

fleetTest('token budgets count fleet-wide: concurrent requests through 3 replicas reserve their estimate, the total never overshoots, later ones get 429 insufficient_quota', {
  tenants: [...TENANTS, { name: 'metered', budget_tokens: 100, budget_period: 'day', keys: [{ id: 'metered-1', secret: 'sk-metered' }] }],
  upstream: { max_inflight: 0 },
}, async (f) => {
  const body = chatBody({ max_tokens: 4 });
  // one request held: what it reserves shows on every replica
  const first = chat(f.gws[0], 'sk-metered', { body, headers: { 'x-sim-delay-ms': '500' } });
  let view;
  await waitFor(async () => (view = (await tenantView(f.gws[2], 'metered')).budget).reserved > 0, 'the reservation visible on r3');
  const reserve = view.reserved;
  assert.equal(view.scope, 'fleet');
  assert.equal(view.used, 0);
  assert.equal(view.remaining, 100 - reserve);
  const r0 = await first;
  assert.equal(r0.status, 200, r0.text);
  const usage0 = r0.json.usage.total_tokens;
  await waitFor(async () => (view = (await tenantView(f.gws[1], 'metered')).budget).used === usage0 && view.reserved === 0,
    () => `the first request settled (used ${usage0}, nothing reserved) in r2's view: ${JSON.stringify(view)}`, 5000);
  // then 24 at once, 8 through each replica, each held 400 ms upstream
  let maxHeld = 0, stopped = false;
  const poll = (async () => {
    for (let i = 0; !stopped; i++) {
      const b = (await tenantView(f.gws[i % 3], 'metered')).budget;
      maxHeld = Math.max(maxHeld, b.used + b.reserved);
      await sleep(5);
    }
  })();
  const rs = await Promise.all(Array.from({ length: 24 }, (_, i) =>
    chat(f.gws[i % 3], 'sk-metered', { body, headers: { 'x-sim-delay-ms': '400' } })));
  stopped = true;
  await poll;
  const served = [r0, ...rs.filter((r) => r.status === 200)];
  const refused = rs.filter((r) => r.status === 429);
  assert.equal(served.length + refused.length, 25, rs.map((r) => r.status).join(','));
  for (const r of refused) assert.equal(r.json.error.code, 'insufficient_quota', r.text);
  const used = served.reduce((a, r) => a + r.json.usage.total_tokens, 0);
  const estimateError = served.reduce((a, r) => a + Math.max(0, r.json.usage.total_tokens - reserve), 0);
  assert.ok(maxHeld <= 100, `used + reserved never above the budget (max ${maxHeld})`);
  assert.ok(used <= 100 + estimateError, `used ${used} <= 100 + estimate error ${estimateError} (reserve ${reserve}, ${served.length} served)`);
  assert.equal(served.length, Math.floor(100 / reserve), `as many served as reservations fit (reserve ${reserve})`);
  for (const gw of f.gws) {
    let b;
    await waitFor(async () => (b = (await tenantView(gw, 'metered')).budget).used === used && b.reserved === 0,
      () => `${gw.id} to show the fleet's used count ${used} and nothing reserved: ${JSON.stringify(b)}`, 5000);
    assert.equal(b.scope, 'fleet', gw.id);
    assert.equal(b.remaining, 100 - used, gw.id);
  }
  assert.ok(100 - used < reserve, 'what is left cannot take another request');
  for (const gw of f.gws) {
    const r = await chat(gw, 'sk-metered', { body });
    assert.equal(r.status, 429, `${gw.id}: ${r.text}`);
    assert.equal(r.json.error.code, 'insufficient_quota');
  }
});

// A key's budget (the tenant has none): the same reservations, counted
// under the key's id; the tenant's other key is not charged or refused.
fleetTest('key budgets count fleet-wide: a key with budget_tokens 100 through 3 replicas concurrently never overshoots, later requests with it get 429 insufficient_quota, the tenant\'s other key still works', {
  tenants: [...TENANTS, {
    name: 'keyed', keys: [
      { id: 'keyed-1', secret: 'sk-keyed-1', budget_tokens: 100, budget_period: 'day' },
      { id: 'keyed-2', secret: 'sk-keyed-2' },
    ],
  }],
  upstream: { max_inflight: 0 },
}, async (f) => {
  const body = chatBody({ max_tokens: 4 });
  const keyBudget = async (gw, id = 'keyed-1') => (await tenantView(gw, 'keyed')).keys.find((k) => k.id === id).budget;
  // one request held: what it reserves shows on every replica
  const first = chat(f.gws[0], 'sk-keyed-1', { body, headers: { 'x-sim-delay-ms': '500' } });
  let view;
  await waitFor(async () => (view = await keyBudget(f.gws[2])).reserved > 0, 'the reservation visible on r3');
  const reserve = view.reserved;
  assert.equal(view.scope, 'fleet');
  assert.equal(view.tokens, 100);
  assert.equal(view.period, 'day');
  assert.equal(view.used, 0);
  assert.equal(view.remaining, 100 - reserve);
  const tv = await tenantView(f.gws[2], 'keyed');
  assert.equal(tv.budget, null, 'the tenant has no budget of its own');
  assert.equal(tv.keys.find((k) => k.id === 'keyed-2').budget, null, 'nor its other key');
  const r0 = await first;
  assert.equal(r0.status, 200, r0.text);
  const usage0 = r0.json.usage.total_tokens;
  await waitFor(async () => (view = await keyBudget(f.gws[1])).used === usage0 && view.reserved === 0,
    () => `the first request settled (used ${usage0}, nothing reserved) in r2's view: ${JSON.stringify(view)}`, 5000);
  // then 24 at once, 8 through each replica, each held 400 ms upstream
  let maxHeld = 0, polls = 0, stopped = false;
  const poll = (async () => {
    for (let i = 0; !stopped; i++) {
      const b = await keyBudget(f.gws[i % 3]);
      maxHeld = Math.max(maxHeld, b.used + b.reserved);
      polls++;
      await sleep(5);
    }
  })();
  const rs = await Promise.all(Array.from({ length: 24 }, (_, i) =>
    chat(f.gws[i % 3], 'sk-keyed-1', { body, headers: { 'x-sim-delay-ms': '400' } })));
  stopped = true;
  await poll;
  const served = [r0, ...rs.filter((r) => r.status === 200)];
  const refused = rs.filter((r) => r.status === 429);
  assert.equal(served.length + refused.length, 25, rs.map((r) => r.status).join(','));
  for (const r of refused) {
    assert.equal(r.json.error.code, 'insufficient_quota', r.text);
    assert.match(r.json.error.message, /API key's budget of 100 tokens per day/, r.text);
  }
  const used = served.reduce((a, r) => a + r.json.usage.total_tokens, 0);
  const estimateError = served.reduce((a, r) => a + Math.max(0, r.json.usage.total_tokens - reserve), 0);
  console.log(`keyed-1: reserve ${reserve} per request, ${served.length} served (${used} tokens used), ${refused.length} refused, ` +
    `used + reserved at most ${maxHeld} in ${polls} polls`);
  assert.ok(polls > 10, `the key's budget was watched (${polls} polls)`);
  assert.ok(maxHeld <= 100, `used + reserved never above the key's budget (max ${maxHeld})`);
  assert.ok(used <= 100 + estimateError, `used ${used} <= 100 + estimate error ${estimateError} (reserve ${reserve}, ${served.length} served)`);
  assert.equal(served.length, 1 + Math.floor((100 - usage0) / reserve),
    `as many served as reservations fit (the first used ${usage0}, then reserve ${reserve} each)`);
  for (const gw of f.gws) {
    let b;
    await waitFor(async () => (b = await keyBudget(gw)).used === used && b.reserved === 0,
      () => `${gw.id} to show the fleet's used count ${used} for keyed-1 and nothing reserved: ${JSON.stringify(b)}`, 5000);
    assert.equal(b.scope, 'fleet', gw.id);
    assert.equal(b.remaining, 100 - used, gw.id);
  }
  assert.ok(100 - used < reserve, 'what is left cannot take another request');
  // later requests with that key: refused on every replica, naming the key's budget
  for (const gw of f.gws) {
    const r = await chat(gw, 'sk-keyed-1', { body });
    assert.equal(r.status, 429, `${gw.id}: ${r.text}`);
    assert.equal(r.json.error.code, 'insufficient_quota');
    assert.match(r.json.error.message, /API key/, `${gw.id}: ${r.text}`);
    assert.equal(r.headers.get('x-should-retry'), 'false', gw.id);
  }
  // the tenant's other key: served on every replica, and not charged to keyed-1
  for (const gw of f.gws) {
    const r = await chat(gw, 'sk-keyed-2', { body });
    assert.equal(r.status, 200, `${gw.id}: the other key of the tenant: ${r.text}`);
  }
  for (const gw of f.gws) {
    const b = await keyBudget(gw);
    assert.deepEqual([b.used, b.reserved], [used, 0], `${gw.id}: keyed-1's count unchanged by keyed-2's requests`);
  }
});

// ---- 4. live changes ----

fleetTest('admin changes on one replica reach the others within 1 s: tenant weight, disabled, group weight, cache purge', {
  groups: [{ name: 'prod', weight: 3 }, { name: 'batch', weight: 1 }],
  tenants: [
    { name: 'a', group: 'prod', weight: 1, keys: [{ id: 'a-1', secret: 'sk-a' }] },
    { name: 'b', group: 'batch', weight: 2, keys: [{ id: 'b-1', secret: 'sk-b' }] },
  ],
  extra: () => ({ cache: { path: 'cache.mdb' } }), // each replica its own file, in its own folder
}, async (f) => {
  const [r1, r2, r3] = f.gws;
  // every condition must hold within 1 s of the change's answer
  let since = 0;
  const within1s = (cond, what) => waitFor(cond, what, Math.max(0, since + 1000 - Date.now()));
  const change = async (gw, path, body, method = 'PUT') => {
    const r = await adminReq(gw, path, { method, body });
    since = Date.now();
    assert.equal(r.status, 200, r.text);
    return r.json;
  };
  // tenant weight
  assert.equal((await change(r1, '/admin/tenants/a', { weight: 5 })).weight, 5);
  for (const gw of [r2, r3]) await within1s(async () => (await tenantView(gw, 'a')).weight === 5, `${gw.id} to show weight 5`);
  // disabled: shown, and refused with 403 by every replica
  assert.equal((await change(r1, '/admin/tenants/b', { disabled: true })).disabled, true);
  for (const gw of [r2, r3]) {
    await within1s(async () => (await tenantView(gw, 'b')).disabled === true, `${gw.id} to show b disabled`);
    await within1s(async () => (await chat(gw, 'sk-b')).status === 403, `${gw.id} to refuse b with 403`);
  }
  const refused = await chat(r1, 'sk-b');
  assert.equal(refused.status, 403);
  assert.equal(refused.json.error.code, 'tenant_disabled');
  assert.equal((await change(r2, '/admin/tenants/b', { disabled: false })).disabled, false);
  for (const gw of [r1, r3]) {
    await within1s(async () => (await tenantView(gw, 'b')).disabled === false, `${gw.id} to show b enabled`);
    await within1s(async () => (await chat(gw, 'sk-b')).status === 200, `${gw.id} to serve b again`);
  }
  // group weight
  await change(r1, '/admin/groups/batch', { weight: 7 });
  for (const gw of [r2, r3]) {
    await within1s(async () => (await fairshare(gw)).groups.find((g) => g.name === 'batch')?.weight === 7, `${gw.id} to show group batch weight 7`);
  }
  // cache purge: r2 and r3 hold an entry; a purge on r1 empties theirs too
  const body = chatBody({ temperature: 0 });
  for (const gw of [r2, r3]) {
    const m = await chat(gw, 'sk-a', { body });
    assert.equal(m.status, 200, m.text);
    assert.equal(m.headers.get('x-obleth-cache'), 'miss', gw.id);
    const h = await chat(gw, 'sk-a', { body });
    assert.equal(h.headers.get('x-obleth-cache'), 'hit', `${gw.id}: a repeat is a hit`);
  }
  await change(r1, '/admin/cache/purge', undefined, 'POST');
  for (const gw of [r2, r3]) {
    await within1s(async () => (await chat(gw, 'sk-a', { body })).headers.get('x-obleth-cache') === 'miss', `${gw.id}: the repeat is a miss after the purge`);
    assert.match(gw.output.text, /cluster: cache purge \(all\) from replica r1/);
  }
});

// ---- 5. configs that disagree ----

fleetTest('replicas whose caps and weights differ say so: /admin/cluster configs_agree false, same_config false, a log line', {
  cluster: { lease_ms: 1500, op_timeout_ms: 200 },
  extra: (i) => (i === 2 ? { tenants: TENANTS.map((t) => (t.name === 'c' ? { ...t, weight: 5 } : t)) } : {}),
}, async (f) => {
  const [r1, r2, r3] = f.gws;
  let v;
  await waitFor(async () => (v = await clusterView(r1)).configs_agree === false, () => `r1's /admin/cluster to say configs_agree false: ${JSON.stringify(v)}`);
  assert.equal(v.live_replicas, 3);
  const same = Object.fromEntries(v.replicas.map((x) => [x.id, x.same_config]));
  assert.deepEqual(same, { r1: true, r2: true, r3: false }, JSON.stringify(v.replicas));
  v = await clusterView(r3);
  await waitFor(async () => (v = await clusterView(r3)).configs_agree === false, 'r3 to say configs_agree false');
  assert.deepEqual(Object.fromEntries(v.replicas.map((x) => [x.id, x.same_config])), { r1: false, r2: false, r3: true });
  for (const gw of f.gws) {
    await waitFor(() => /cluster: the 3 live replicas run 2 different sets of caps and weights/.test(gw.output.text),
      `${gw.id} to log the disagreement`);
  }
  // an admin change on r3 that makes them equal again is seen too
  const r = await adminReq(r3, '/admin/tenants/c', { method: 'PUT', body: { weight: 4 } });
  assert.equal(r.status, 200, r.text);
  await waitFor(async () => (v = await clusterView(r1)).configs_agree === true, () => `configs agree again: ${JSON.stringify(v)}`);
  await waitFor(() => /every live replica runs the same caps and weights again/.test(r2.output.text), 'r2 to log the agreement');
});

// ---- 6. faults ----

fleetTest('a replica killed with SIGKILL while holding slots and queued requests: within lease_ms + 1 s the others get the slots', {
  cluster: FAST,
  upstream: { max_inflight: 4 },
}, async (f) => {
  const [r1, r2, r3] = f.gws;
  const holds = [];
  for (let i = 0; i < 4; i++) holds.push(holdSlot(r3.url, 'sk-c'));
  await waitFor(async () => (await fairshare(r1)).fleet.inflight === 4, 'r3 holding the 4 slots');
  for (let i = 0; i < 2; i++) holds.push(holdSlot(r3.url, 'sk-c'));
  await waitFor(async () => (await fairshare(r1)).fleet.queued === 2, "r3's 2 requests queued");
  // requests on r1 and r2 queue behind r3's (C's weight is the largest, they go first)
  const waiting = [chat(r1, 'sk-a'), chat(r2, 'sk-b')];
  await waitFor(async () => (await fairshare(r1)).fleet.queued === 4, 'r1 and r2 requests queued');
  const cv = await clusterView(r1);
  assert.deepEqual(cv.replicas.find((x) => x.id === 'r3').holdings, { sim: 4 });
  const t0 = Date.now();
  await stop(r3.proc, 'SIGKILL');
  const rs = await Promise.all(waiting);
  const took = Date.now() - t0;
  console.log(`r1's and r2's queued requests served ${rs.map((r) => r.end - t0).join(' and ')} ms after r3's SIGKILL (lease_ms 1500)`);
  assert.deepEqual(rs.map((r) => r.status), [200, 200], rs.map((r) => r.text).join('\n'));
  assert.ok(took <= 1500 + 1000, `r1's and r2's queued requests served ${took} ms after the kill (lease_ms 1500 + 1 s)`);
  await Promise.all(holds.map((h) => h.done));
  // the pool is whole again: 4 new holders through r1 and r2 all get a slot
  const fresh = [];
  for (let i = 0; i < 4; i++) fresh.push(holdSlot(f.gws[i % 2].url, 'sk-a'));
  await waitFor(async () => { const fs = await fairshare(r2); return fs.fleet.inflight === 4 && fs.fleet.queued === 0; },
    'the 4 slots held through r1 and r2', 2000);
  const c = await clusterView(r1);
  assert.deepEqual(c.replicas.map((x) => x.id).sort(), ['r1', 'r2'], 'r3 is counted out');
  for (const h of fresh) h.release();
  await Promise.all(fresh.map((h) => h.done));
  await waitFor(async () => (await fairshare(r1)).fleet.inflight === 0, 'the fleet in-flight back to 0');
});

fleetTest('Redis killed while traffic flows: no request fails or hangs; fallback within op_timeout_ms, logged once; restarted empty, every replica is back to shared within 2 s', {
  cluster: FAST,
  sim: ['--slots', '4', '--ttft-ms', '40'],
}, async (f) => {
  await waitFor(async () => (await Promise.all(f.gws.map(metricsText))).every((m) => sample(m, 'obleth_cluster_replicas') === 3),
    'every replica counting 3 replicas');
  const tr = traffic(f.gws, ['sk-a', 'sk-b', 'sk-c']);
  await waitMore(tr, 30, 'traffic in shared mode');
  const port = f.redis.port;
  const t0 = Date.now();
  await stop(f.redis.proc, 'SIGKILL');
  await waitFor(async () => (await Promise.all(f.gws.map(modeOf))).every((m) => m === 'fallback'), 'every replica in fallback');
  const tFallback = Date.now() - t0;
  console.log(`Redis SIGKILL: every replica in fallback after ${tFallback} ms`);
  assert.ok(tFallback <= 200 + 500, `fallback ${tFallback} ms after the kill (op_timeout_ms 200)`);
  await waitMore(tr, 30, 'traffic in fallback');
  f.redis = await startRedis({ port });
  const t1 = Date.now();
  await waitFor(async () => (await Promise.all(f.gws.map(modeOf))).every((m) => m === 'shared'), 'every replica back to shared');
  const tBack = Date.now() - t1;
  console.log(`Redis restarted empty: every replica shared again after ${tBack} ms`);
  assert.ok(tBack <= 2000, `shared again ${tBack} ms after Redis came back`);
  await waitFor(async () => (await clusterView(f.gws[0])).replicas?.length === 3, '/admin/cluster listing 3 replicas again', 2000);
  await waitMore(tr, 30, 'traffic in shared mode again');
  const done = await tr.finish();
  assertAllServed(done, 'Redis killed and restarted');
  for (const gw of f.gws) {
    const falls = gw.output.text.match(/cluster: .*falling back to split limits/g) ?? [];
    assert.equal(falls.length, 1, `${gw.id} logs the fallback once:\n${falls.join('\n')}`);
    assert.match(gw.output.text, /cluster: Redis answers again; shared mode/);
    assert.equal(sample(await metricsText(gw), 'obleth_cluster_fallbacks_total'), 1, gw.id);
  }
});

fleetTest('Redis frozen (SIGSTOP) for 1.5 s during traffic: no request fails or hangs; fallback, then shared again after SIGCONT', {
  cluster: FAST,
  sim: ['--slots', '4', '--ttft-ms', '40'],
}, async (f) => {
  const tr = traffic(f.gws, ['sk-a', 'sk-b', 'sk-c']);
  await waitMore(tr, 30, 'traffic in shared mode');
  const t0 = Date.now();
  f.redis.proc.kill('SIGSTOP');
  let modes = [];
  try {
    await waitFor(async () => (modes = await Promise.all(f.gws.map(modeOf))).every((m) => m === 'fallback'),
      () => `every replica in fallback (${modes})`, 1400);
    const tFallback = Date.now() - t0;
    console.log(`Redis SIGSTOP: every replica in fallback after ${tFallback} ms`);
    assert.ok(tFallback <= 200 + 500, `fallback ${tFallback} ms after the freeze (op_timeout_ms 200)`);
    await waitFor(() => Date.now() - t0 >= 1500, 'the 1.5 s freeze'); // a fixed freeze is the point of the test
  } finally {
    f.redis.proc.kill('SIGCONT');
  }
  const t1 = Date.now();
  await waitFor(async () => (modes = await Promise.all(f.gws.map(modeOf))).every((m) => m === 'shared'),
    () => `every replica back to shared (${modes})`);
  const tBack = Date.now() - t1;
  console.log(`Redis SIGCONT: every replica shared again after ${tBack} ms`);
  assert.ok(tBack <= 2000, `shared again ${tBack} ms after SIGCONT`);
  await waitMore(tr, 30, 'traffic in shared mode again');
  const done = await tr.finish();
  assertAllServed(done, 'Redis frozen');
  for (const gw of f.gws) {
    const falls = gw.output.text.match(/cluster: .*falling back to split limits/g) ?? [];
    assert.equal(falls.length, 1, `${gw.id} logs the fallback once:\n${falls.join('\n')}`);
    assert.match(gw.output.text, /cluster: Redis answers again; shared mode/);
    assert.equal(sample(await metricsText(gw), 'obleth_cluster_fallbacks_total'), 1, gw.id);
  }
});

// A replica that joins again re-asserts the slots it holds. Redis is held
// (CLIENT PAUSE WRITE: the set-up's SCRIPT LOAD and SUBSCRIBE are answered,
// the join's EVALSHA waits) so that the join is on its way when the one
// request holding a slot ends: that slot must not stay counted.
fleetTest('Redis restarted empty: a request that ends while its replica is joining again leaves no slot counted', {
  cluster: { lease_ms: 3000, op_timeout_ms: 1000 },
}, async (f) => {
  const [r1] = f.gws;
  const hold = holdSlot(r1.url, 'sk-b');
  await waitFor(async () => (await f.redis.cli(['HGET', 'obleth:n', 'a'])).trim() === '1', 'the slot counted in Redis');
  const port = f.redis.port;
  await stop(f.redis.proc, 'SIGKILL');
  await waitFor(async () => (await Promise.all(f.gws.map(modeOf))).every((m) => m === 'fallback'), 'every replica in fallback');
  f.redis = await startRedis({ port });
  assert.equal((await f.redis.cli(['CLIENT', 'PAUSE', '5000', 'WRITE'])).trim(), 'OK');
  let unpaused = false;
  try {
    await waitFor(async () => (await f.redis.cli(['PUBSUB', 'NUMSUB', 'obleth:w:r1'])).trim().endsWith('1'),
      "r1's set-up answered (subscribed): its join is sent", 3000);
    await sleep(100); // the join's EVALSHA is on its way (a fixed step: nothing outside shows it)
    hold.release();
    await hold.done;
    await waitFor(async () => (await fairshare(r1)).inflight === 0, 'r1 to let the request go (its own view: it is not shared yet)', 3000);
    assert.equal((await f.redis.cli(['CLIENT', 'UNPAUSE'])).trim(), 'OK');
    unpaused = true;
  } finally {
    if (!unpaused) await f.redis.cli(['CLIENT', 'UNPAUSE']);
  }
  await waitFor(async () => (await Promise.all(f.gws.map(modeOf))).every((m) => m === 'shared'), 'every replica shared again');
  // (fleetTest then checks that nothing is left counted)
});

fleetTest('a second live replica with the same replica_id does not start (after waiting lease_ms + 0.5 s)', {
  cluster: FAST,
}, async (f) => {
  const t0 = Date.now();
  let err = null;
  try {
    await startReplica(f, 0, { cluster: FAST });
  } catch (e) {
    err = e;
  }
  const took = Date.now() - t0;
  console.log(`the duplicate r1 gave up after ${took} ms (lease_ms 1500)`);
  assert.ok(err, 'the duplicate started');
  assert.match(err.message, /exited \(1\) before it was ready/, err.message);
  assert.match(err.message, /replica_id/, err.message);
  assert.ok(took >= 1500, `it waited for the lease first (${took} ms)`);
  assert.ok(took < 1500 + 500 + 2000, `and not much longer (${took} ms)`);
  // the original r1 is unaffected
  assert.equal(await modeOf(f.gws[0]), 'shared');
  assert.equal((await chat(f.gws[0], 'sk-a')).status, 200);
  assert.deepEqual((await clusterView(f.gws[1])).replicas.map((x) => x.id).sort(), ['r1', 'r2', 'r3']);
});

// ---- 7. metrics ----

fleetTest('/metrics of a replica in cluster mode passes promtool check metrics', {}, async (f) => {
  for (let i = 0; i < 6; i++) assert.equal((await chat(f.gws[i % 3], 'sk-a')).status, 200);
  const m = await metricsText(f.gws[0]);
  const r = await run('promtool', ['check', 'metrics'], { input: m });
  assert.equal(r.code, 0, `promtool check metrics exited ${r.code}:\n${r.stdout}${r.stderr}`);
  assert.equal(sample(m, 'obleth_cluster_mode{mode="shared"}'), 1);
  assert.equal(sample(m, 'obleth_cluster_mode{mode="fallback"}'), 0);
  assert.ok(sample(m, 'obleth_cluster_redis_ops_total{op="admit",result="ok"}') >= 2);
  assert.ok(sample(m, 'obleth_cluster_redis_seconds_count') > 0);
  await waitFor(async () => sample(await metricsText(f.gws[0]), 'obleth_cluster_replicas') === 3, 'obleth_cluster_replicas 3');
});

// ---- 8. the password ----

const PASSWORD = 'Zq7-s3cr3t/p@ss:w0rd';
fleetTest('the Redis password (in the URL or password_file) is in no log line, not in /metrics, not in /admin/cluster', {
  redis: { password: PASSWORD },
  cluster: FAST,
  // r1 and r2 carry it %-encoded in cluster.redis, r3 reads it from password_file
  extra: (i, f) => ({
    cluster: i === 2 ? { password_file: 'redis.pass' } : { redis: `redis://:${encodeURIComponent(PASSWORD)}@127.0.0.1:${f.redis.port}/0` },
  }),
  files: (i) => (i === 2 ? { 'redis.pass': PASSWORD + '\n' } : {}),
}, async (f) => {
  const secrets = [PASSWORD, encodeURIComponent(PASSWORD), 's3cr3t'];
  for (let i = 0; i < 6; i++) assert.equal((await chat(f.gws[i % 3], 'sk-b')).status, 200);
  // an outage, so the error lines are written too
  const port = f.redis.port;
  await stop(f.redis.proc, 'SIGKILL');
  await waitFor(async () => (await Promise.all(f.gws.map(modeOf))).every((m) => m === 'fallback'), 'fallback');
  // a fourth replica starting meanwhile logs the URL it cannot reach
  const r4 = await startReplica(f, 3, { cluster: FAST, extra: () => ({ cluster: { redis: f.gws[0].redisUrl } }) }, { joined: false });
  await waitFor(() => /cluster: Redis at \S+ cannot be reached/.test(r4.output.text), 'r4 to log that Redis cannot be reached');
  f.redis = await startRedis({ port, password: PASSWORD });
  await waitFor(async () => (await Promise.all(f.gws.map(modeOf))).every((m) => m === 'shared'), 'shared again');
  await waitFor(async () => (await clusterView(f.gws[0])).replicas?.length === 4, '4 replicas in /admin/cluster');
  assert.match(r4.output.text, new RegExp(`cluster: Redis at redis://:\\*\\*\\*@127\\.0\\.0\\.1:${port}/0 cannot be reached`));
  for (const gw of f.gws) {
    const cv = await adminReq(gw, '/admin/cluster');
    assert.equal(cv.json.mode, 'shared');
    const want = gw.id === 'r3' ? `redis://127.0.0.1:${port}/0` : `redis://:***@127.0.0.1:${port}/0`;
    assert.equal(cv.json.redis, want, gw.id);
    const views = { log: gw.output.text, metrics: await metricsText(gw), cluster: cv.text, fairshare: (await adminReq(gw, '/admin/fairshare')).text };
    for (const [where, text] of Object.entries(views)) {
      for (const s of secrets) assert.ok(!text.includes(s), `${gw.id}: the password (${JSON.stringify(s)}) appears in ${where}`);
    }
  }
});
