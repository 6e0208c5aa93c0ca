// The fleet scheduler (src/cluster/cluster.lua) in a real redis-server,
// driven over RESP with no gateway: the test is the replicas. It loads the
// script with SCRIPT LOAD and calls its operations with EVALSHA exactly as
// src/cluster/cluster.c does (ARGV: op, namespace, replica id, epoch, then
// the operation's own; names joined with "\0", so every argument goes out
// as a Buffer), and checks the decisions: fast path and caps, FIFO inside a
// tenant across replicas, weighted and hierarchical shares, cost
// correction, tenant max_inflight (in one pool and across pools),
// max_queue answers, cancel, reaping a replica whose lease ran out, a
// second replica under a live id, rpm / tpm buckets, budgets, the
// capacity controller's lease (max_inflight "auto"), and that a
// fleet at rest leaves no counter behind. Grants to another replica are
// seen both in gm:<id> and on the <ns>:w:<id> channel (a second connection
// subscribes). Each test runs in its own namespace, so none sees another's
// state.
import test from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startRedis, stop, waitFor, sleep } from './lib.mjs';

const LUA = readFileSync(join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'cluster', 'cluster.lua'));
const Z = '\0';

// ---- a tiny RESP2 client ----

// Commands go out as arrays of bulk strings (every argument a Buffer, so a
// "\0" is sent as is); replies come back as numbers, strings (bulk and
// status; null for nil), arrays, or Error objects for error replies (a
// test asserts on them instead of catching). A connection that subscribed
// hands "message" pushes to onMessage.
class Resp {
  static connect(port) {
    return new Promise((resolve, reject) => {
      const sock = net.connect(port, '127.0.0.1');
      sock.once('error', reject);
      sock.once('connect', () => { sock.off('error', reject); resolve(new Resp(sock)); });
    });
  }

  constructor(sock) {
    this.sock = sock;
    this.buf = Buffer.alloc(0);
    this.pending = [];
    this.onMessage = null;
    sock.on('data', (d) => this.feed(d));
    sock.on('error', (e) => this.fail(e));
    sock.on('close', () => this.fail(new Error('redis connection closed')));
  }

  fail(e) {
    for (const p of this.pending.splice(0)) p.reject(e);
  }

  feed(d) {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    for (;;) {
      const r = parse(this.buf, 0);
      if (!r) return;
      this.buf = this.buf.subarray(r.next);
      const v = r.value;
      if (this.onMessage && Array.isArray(v) && v[0] === 'message') { this.onMessage(v[1], v[2]); continue; }
      const p = this.pending.shift();
      if (!p) throw new Error(`unexpected reply ${JSON.stringify(v)}`);
      p.resolve(v);
    }
  }

  call(...args) {
    const parts = [Buffer.from(`*${args.length}\r\n`)];
    for (const a of args) {
      const b = Buffer.isBuffer(a) ? a : Buffer.from(String(a));
      parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'));
    }
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject });
      this.sock.write(Buffer.concat(parts));
    });
  }

  close() {
    this.sock.removeAllListeners('close');
    this.sock.destroy();
  }
}

// One reply at buf[at..], or null when it is not all there yet.
function parse(buf, at) {
  const eol = buf.indexOf('\r\n', at);
  if (eol < 0) return null;
  const type = String.fromCharCode(buf[at]);
  const line = buf.toString('latin1', at + 1, eol);
  const next = eol + 2;
  switch (type) {
    case '+': return { value: line, next };
    case '-': return { value: new Error(line), next };
    case ':': return { value: Number(line), next };
    case '$': {
      const n = Number(line);
      if (n < 0) return { value: null, next };
      if (buf.length < next + n + 2) return null;
      return { value: buf.toString('latin1', next, next + n), next: next + n + 2 };
    }
    case '*': {
      const n = Number(line);
      if (n < 0) return { value: null, next };
      const out = [];
      let p = next;
      for (let i = 0; i < n; i++) {
        const r = parse(buf, p);
        if (!r) return null;
        out.push(r.value);
        p = r.next;
      }
      return { value: out, next: p };
    }
    default: throw new Error(`bad RESP type ${JSON.stringify(type)}`);
  }
}

// ---- the scheduler's operations ----

let redis, conn, sha, nsSeq = 0;

// A replica: id, epoch once joined, and each operation with cluster.lua's
// ARGV layout. reply() throws on an error reply, so a script error is
// never taken for an answer.
function replica(ns, id) {
  const r = {
    id, ns, epoch: '0',
    async op(name, ...rest) {
      const v = await conn.call('EVALSHA', sha, 0, name, ns, id, r.epoch, ...rest);
      if (v instanceof Error) throw v;
      return v;
    },
    // config: {field: value} (fields are cluster.lua's: cap, qcap, p\0<pool>,
    // tw\0<tenant>, tg\0<tenant>, gw\0<group>, tc\0<tenant>, tqc\0<tenant>,
    // mode); held: [reqid, pool, tenant, cost, reserved, tbk, kbk] rows.
    async join({ nonce = 'n-' + id, lease = 60000, digest = 'd1', config = {}, streams = [], held = [] } = {}) {
      const pairs = Object.entries(config).flat();
      const v = await r.op('join', nonce, lease, digest, pairs.length / 2, ...pairs,
        streams.length / 2, ...streams, ...held.flat());
      if (v[0] > 0) r.epoch = String(v[0]);
      return v;
    },
    admit(reqid, pool, tenant, { cost = 1, rpm = 0, tpm = 0, take = 0, reserve = 0, tbk = '', tlim = 0, kbk = '', klim = 0 } = {}) {
      return r.op('admit', reqid, pool, tenant, cost, rpm, tpm, take, reserve, tbk, tlim, kbk, klim);
    },
    release(reqid, { cost = 1, used = 0, refund = 0 } = {}) { return r.op('release', reqid, cost, used, refund); },
    cancel(reqid) { return r.op('cancel', reqid); },
    beat(digest = 'd1') { return r.op('beat', digest); },
    budget(...keys) { return r.op('budget', ...keys); },
    info() { return r.op('info'); },
    // reqids this replica holds slots for (gm:<id>)
    async granted() {
      return (await conn.call('SMEMBERS', `${ns}:gm:${id}`)).map((m) => m.slice(id.length + 1)).sort();
    },
  };
  return r;
}

// A fresh namespace with replicas A and B joined (both with config and
// lease), and a subscriber on both grant channels (heard: [id, reqid]).
async function fleet(config = {}, { lease = 60000 } = {}) {
  const ns = `t${++nsSeq}`;
  const A = replica(ns, 'A'), B = replica(ns, 'B');
  assert.deepEqual(await A.join({ config, lease }), [1, 1], 'A joins as epoch 1, alone');
  assert.deepEqual(await B.join({ config, lease }), [2, 2], 'B joins as epoch 2, two live');
  const sub = await Resp.connect(redis.port);
  const heard = [];
  sub.onMessage = (ch, msg) => heard.push([ch.slice(ns.length + 3), msg]);
  // one channel a call: SUBSCRIBE answers once per channel
  assert.deepEqual(await sub.call('SUBSCRIBE', `${ns}:w:A`), ['subscribe', `${ns}:w:A`, 1]);
  assert.deepEqual(await sub.call('SUBSCRIBE', `${ns}:w:B`), ['subscribe', `${ns}:w:B`, 2]);
  return { ns, A, B, sub, heard };
}

async function hgetall(key) {
  const v = await conn.call('HGETALL', key);
  const o = {};
  for (let i = 0; i < v.length; i += 2) o[v[i]] = Number.isNaN(Number(v[i + 1])) ? v[i + 1] : Number(v[i + 1]);
  return o;
}
const counters = (ns) => hgetall(`${ns}:n`);

// (k) A fleet at rest: no counter, no entry, nothing queued or held.
async function assertAtRest(f) {
  f.sub.close();
  assert.deepEqual(await counters(f.ns), {}, `${f.ns}:n is empty at rest`);
  assert.equal(await conn.call('HLEN', `${f.ns}:e`), 0, 'no member entries left');
  assert.equal(await conn.call('ZCARD', `${f.ns}:qp`), 0, 'no pool with a backlog');
  for (const id of ['A', 'B']) {
    assert.equal(await conn.call('SCARD', `${f.ns}:gm:${id}`), 0, `nothing held by ${id}`);
    assert.equal(await conn.call('SCARD', `${f.ns}:qm:${id}`), 0, `nothing queued by ${id}`);
  }
  const left = (await conn.call('KEYS', `${f.ns}:q*`)).filter((k) => k !== `${f.ns}:qp`);
  assert.deepEqual(left, [], 'no queue sorted sets left');
}

const GRANT = [0, 0, -1, -1];
const QUEUED = [1, 0, -1, -1];

test.before(async () => {
  redis = await startRedis();
  conn = await Resp.connect(redis.port);
  sha = await conn.call('SCRIPT', 'LOAD', LUA);
  assert.match(sha, /^[0-9a-f]{40}$/);
});

test.after(async () => {
  if (conn) conn.close();
  if (redis) await stop(redis.proc);
});

test('a replica that never joined is not registered; an unknown op is an error reply', async () => {
  const f = await fleet();
  const X = replica(f.ns, 'X');
  assert.deepEqual(await X.admit('x1', 'P', 't'), [-1]);
  assert.deepEqual(await X.op('nope'), [-1], 'whatever the op');
  await assert.rejects(f.A.op('nope'), /unknown operation nope/);
  await assertAtRest(f);
});

test('(a) fast path, pool and global caps, FIFO inside a tenant across replicas', async () => {
  const f = await fleet({ [`p${Z}P`]: 2, [`p${Z}Q`]: 2, cap: 3 });
  const { A, B } = f;
  assert.deepEqual(await A.admit('a1', 'P', 't'), GRANT, 'first request: granted at once');
  assert.deepEqual(await B.admit('b1', 'P', 't'), GRANT, 'second: granted (pool cap 2)');
  assert.deepEqual(await A.admit('a2', 'P', 't'), QUEUED, 'third: queued at the pool cap');
  assert.deepEqual(await B.admit('b2', 'P', 't'), QUEUED);
  assert.deepEqual(await A.admit('a3', 'P', 't'), QUEUED);
  assert.deepEqual(await B.admit('b3', 'P', 't'), QUEUED);
  assert.deepEqual(await A.admit('q1', 'Q', 'u'), GRANT, 'other pool: granted (3 of the global 3)');
  assert.deepEqual(await A.admit('q2', 'Q', 'u'), QUEUED, 'other pool under its cap: queued at the global cap');
  assert.deepEqual(await counters(f.ns),
    { a: 3, q: 5, [`p${Z}P`]: 2, [`p${Z}Q`]: 1, [`pq${Z}P`]: 4, [`pq${Z}Q`]: 1, [`t${Z}t`]: 2, [`t${Z}u`]: 1, [`tq${Z}t`]: 4, [`tq${Z}u`]: 1 });
  assert.deepEqual(await A.granted(), ['a1', 'q1']);
  assert.deepEqual(await B.granted(), ['b1']);

  // Releasing in P gives P's slot to P's queue head (a2, fleet-wide FIFO).
  assert.deepEqual(await A.release('a1'), [1]);
  assert.deepEqual(await A.granted(), ['a2', 'q1']);
  // Releasing in Q frees a global slot; Q's own queue goes first.
  assert.deepEqual(await A.release('q1'), [1]);
  assert.deepEqual(await A.granted(), ['a2', 'q2']);
  // Releasing in Q again: nothing waits in Q; under the global cap P is
  // pumped too, but P is at its own cap (a2, b1), so nothing moves.
  assert.deepEqual(await A.release('q2'), [1]);
  assert.deepEqual(await A.granted(), ['a2']);
  assert.deepEqual(await B.granted(), ['b1']);
  // The rest of t's queue, in arrival order whichever replica queued it.
  for (const [r, id] of [[B, 'b1'], [A, 'a2'], [B, 'b2'], [A, 'a3'], [B, 'b3']]) {
    assert.deepEqual(await r.release(id), [1], `release ${id}`);
  }
  await waitFor(() => f.heard.length === 5, () => `5 grant messages, heard ${JSON.stringify(f.heard)}`);
  assert.deepEqual(f.heard.map(([ch, m]) => `${ch}:${m}`), ['A:a2', 'A:q2', 'B:b2', 'A:a3', 'B:b3'],
    'each grant published on its owner\'s channel, in FIFO order');
  assert.deepEqual(await A.release('nope'), [0], 'release of an unknown request: 0');
  assert.deepEqual(await B.release('b1'), [0], 'release twice: 0');
  await assertAtRest(f);
});

// Cap 1 in pool P, one holder; queue `plan` ({tenant: [replica, n]...}),
// then release whatever is held `rounds` times, each release handing the
// slot to the next in fair order. estimate(tenant) is the admit's cost,
// actual(tenant) the release's (default: the estimate). Checks that each
// grant is held by, and published to, the replica that queued it, and FIFO
// inside each tenant; puts the fleet back at rest. Returns the tenants in
// grant order.
async function pumpShares(f, plan, rounds, { estimate = () => 1, actual = (t) => estimate(t) } = {}) {
  const { A, B } = f;
  const who = { A, B };
  assert.deepEqual(await A.admit('h0', 'P', 'holder', { cost: estimate('holder') }), GRANT);
  const byReq = new Map([['h0', ['A', 'holder']]]);
  for (const [tenant, reps, n] of plan) {
    for (let i = 0; i < n; i++) {
      const rid = reps[i % reps.length];
      const reqid = `${tenant}.${i}`;
      byReq.set(reqid, [rid, tenant]);
      assert.deepEqual(await who[rid].admit(reqid, 'P', tenant, { cost: estimate(tenant) }), QUEUED, `queue ${reqid}`);
    }
  }
  const grants = [];
  let held = 'h0';
  for (let i = 0; i < rounds; i++) {
    const [rid, tenant] = byReq.get(held);
    assert.deepEqual(await who[rid].release(held, { cost: actual(tenant) }), [1], `release ${held}`);
    const a = await A.granted(), b = await B.granted();
    assert.equal(a.length + b.length, 1, `exactly one held after a release (${a} / ${b})`);
    held = a.length ? a[0] : b[0];
    assert.equal(byReq.get(held)[0], a.length ? 'A' : 'B', `${held} is held by the replica that queued it`);
    grants.push(held);
  }
  // Every grant was published to its owner's channel, in order.
  await waitFor(() => f.heard.length >= rounds, () => `${rounds} grant messages, heard ${f.heard.length}`);
  assert.deepEqual(f.heard.map(([ch, m]) => `${ch}:${m}`), grants.map((g) => `${byReq.get(g)[0]}:${g}`));
  // FIFO inside each tenant
  const seen = {};
  for (const g of grants) {
    const [t, i] = g.split('.');
    assert.equal(Number(i), seen[t] ?? 0, `${t}'s requests granted in arrival order`);
    seen[t] = Number(i) + 1;
  }
  // Back to rest: cancel what is queued, release what is held.
  for (const [reqid, [rid]] of byReq) {
    if (reqid === held || grants.includes(reqid) || reqid === 'h0') continue;
    assert.deepEqual(await who[rid].cancel(reqid), [1], `cancel queued ${reqid}`);
  }
  const [rid, tenant] = byReq.get(held);
  assert.deepEqual(await who[rid].release(held, { cost: actual(tenant) }), [1]);
  return grants.map((g) => g.split('.')[0]);
}

// Counts of each tenant, and the largest gap, over every prefix of the
// grant order, between a tenant's grants and its share of them.
function shares(order, want) {
  const n = {}, sum = Object.values(want).reduce((a, b) => a + b, 0);
  let worst = 0;
  order.forEach((t, i) => {
    n[t] = (n[t] ?? 0) + 1;
    for (const [u, w] of Object.entries(want)) worst = Math.max(worst, Math.abs((n[u] ?? 0) - (i + 1) * w / sum));
  });
  return { n, worst };
}

test('(b) weights 1:2:4 across replicas: 1/7, 2/7, 4/7 of 700 grants', async (t) => {
  const f = await fleet({ [`p${Z}P`]: 1, [`tw${Z}y`]: 2, [`tw${Z}z`]: 4 });
  const order = await pumpShares(f, [['x', ['A'], 150], ['y', ['B'], 250], ['z', ['A', 'B'], 450]], 700);
  const { n, worst } = shares(order, { x: 1, y: 2, z: 4 });
  t.diagnostic(`grants ${JSON.stringify(n)}, worst prefix gap ${worst.toFixed(2)}`);
  assert.ok(Math.abs(n.x - 100) <= 1 && Math.abs(n.y - 200) <= 1 && Math.abs(n.z - 400) <= 1, JSON.stringify(n));
  assert.ok(worst <= 2, `every prefix within 2 grants of the weights (worst ${worst})`);
  await assertAtRest(f);
});

test('(c) hierarchical: groups 3:1, tenants share their group by weight', async (t) => {
  // g1 (weight 3): t1 (1), t2 (2); g2 (weight 1): t3 (1), t4 (1). Shares:
  // t1 3/4*1/3 = 1/4, t2 1/2, t3 1/8, t4 1/8.
  const f = await fleet({
    [`p${Z}P`]: 1, [`gw${Z}g1`]: 3, [`gw${Z}g2`]: 1, [`tw${Z}t2`]: 2,
    [`tg${Z}t1`]: 'g1', [`tg${Z}t2`]: 'g1', [`tg${Z}t3`]: 'g2', [`tg${Z}t4`]: 'g2',
  });
  const order = await pumpShares(f, [['t1', ['A'], 260], ['t2', ['B'], 460], ['t3', ['A', 'B'], 160], ['t4', ['B'], 160]], 800);
  const { n, worst } = shares(order, { t1: 2, t2: 4, t3: 1, t4: 1 });
  t.diagnostic(`grants ${JSON.stringify(n)}, worst prefix gap ${worst.toFixed(2)}`);
  assert.ok(Math.abs(n.t1 - 200) <= 1 && Math.abs(n.t2 - 400) <= 1 && Math.abs(n.t3 - 100) <= 1 && Math.abs(n.t4 - 100) <= 1,
    JSON.stringify(n));
  assert.ok(worst <= 3, `every prefix within 3 grants of the shares (worst ${worst})`);
  await assertAtRest(f);
});

test('(d) cost correction: actual cost 4x the estimate gets a quarter of the grants', async (t) => {
  // Equal weights, equal estimates (10). u's requests really cost 40, v's
  // 10: once corrected at release, u is served a quarter as often as v,
  // and the two get the same service in actual cost.
  const f = await fleet({ [`p${Z}P`]: 1 });
  const order = await pumpShares(f, [['u', ['A'], 150], ['v', ['B'], 450]], 500,
    { estimate: () => 10, actual: (t) => (t === 'u' ? 40 : 10) });
  const n = { u: order.filter((t) => t === 'u').length, v: order.filter((t) => t === 'v').length };
  t.diagnostic(`grants ${JSON.stringify(n)}`);
  assert.ok(Math.abs(n.u - 100) <= 2 && Math.abs(n.v - 400) <= 2, `u ${n.u}, v ${n.v} of 500: want 100 / 400`);
  assert.ok(Math.abs(n.u * 40 - n.v * 10) <= 40, `service in actual cost: u ${n.u * 40}, v ${n.v * 10}`);
  await assertAtRest(f);
});

test('(e) tenant max_inflight: a capped tenant is skipped, then served after its release', async () => {
  const f = await fleet({ [`p${Z}P`]: 3, [`tc${Z}x`]: 1 });
  const { A, B } = f;
  assert.deepEqual(await A.admit('x1', 'P', 'x'), GRANT);
  assert.deepEqual(await A.admit('x2', 'P', 'x'), QUEUED, 'x at its cap: queued though the pool has room');
  assert.deepEqual(await B.admit('y1', 'P', 'y'), GRANT, 'y: granted past x\'s queue (x is not eligible)');
  assert.deepEqual(await B.admit('y2', 'P', 'y'), GRANT);
  assert.deepEqual(await B.admit('y3', 'P', 'y'), QUEUED, 'pool full');
  assert.deepEqual(await B.release('y1'), [1]);
  assert.deepEqual(await B.granted(), ['y2', 'y3'], 'the free slot skips capped x (queued first) for y3');
  assert.deepEqual(await A.granted(), ['x1']);
  assert.deepEqual(await B.release('y2'), [1]);
  assert.deepEqual(await A.granted(), ['x1'], 'still capped: x2 waits with a slot free');
  assert.equal((await counters(f.ns))[`tq${Z}x`], 1);
  assert.deepEqual(await A.release('x1'), [1]);
  assert.deepEqual(await A.granted(), ['x2'], 'x2 served once x1 is released');
  await waitFor(() => f.heard.length === 2, () => `2 grant messages, heard ${JSON.stringify(f.heard)}`);
  assert.deepEqual(f.heard, [['B', 'y3'], ['A', 'x2']], 'each grant published on its owner\'s channel');
  for (const [r, id] of [[A, 'x2'], [B, 'y3']]) assert.deepEqual(await r.release(id), [1]);
  await assertAtRest(f);
});

test('(e2) tenant max_inflight across pools: its release in one pool serves its request waiting in another', async () => {
  // x may hold 1 slot fleet-wide. x1 holds one in P; x2 waits in Q, which
  // has room, only for x's cap. Releasing x1 must grant x2: nothing else
  // will ever happen in Q.
  const f = await fleet({ [`tc${Z}x`]: 1 });
  const { A } = f;
  assert.deepEqual(await A.admit('x1', 'P', 'x'), GRANT);
  assert.deepEqual(await A.admit('x2', 'Q', 'x'), QUEUED, 'x at its cap');
  assert.deepEqual(await A.release('x1'), [1]);
  const held = await A.granted();
  const c = await counters(f.ns);
  // Put the fleet back to rest before asserting, so a failure here does not
  // leave later tests a dirty server.
  if (held.includes('x2')) assert.deepEqual(await A.release('x2'), [1]);
  else assert.deepEqual(await A.cancel('x2'), [1]);
  assert.deepEqual(held, ['x2'], `x2 granted in Q once x1 left P (counters after the release: ${JSON.stringify(c)})`);
  await assertAtRest(f);
});

test('(e3) a cap set by config on a waiting tenant, then its request cancelled, leaves nothing behind', async () => {
  // x waits in P (full); the config op caps x while it holds a slot in Z,
  // so x leaves P's sets; then x's request is cancelled. P must not stay
  // listed as a pool with a backlog (<ns>:qp).
  const f = await fleet({ [`p${Z}P`]: 1 });
  const { A } = f;
  assert.deepEqual(await A.admit('h', 'P', 'h'), GRANT);
  assert.deepEqual(await A.admit('x0', 'Z', 'x'), GRANT);
  assert.deepEqual(await A.admit('x1', 'P', 'x'), QUEUED);
  assert.deepEqual(await A.op('config', 'd1', Buffer.from(`tc${Z}x`), 1), [1]);
  assert.deepEqual(await A.cancel('x1'), [1]);
  assert.deepEqual(await A.release('h'), [1]);
  assert.deepEqual(await A.release('x0'), [1]);
  await assertAtRest(f);
});

test('(f) max_queue and tenant max_queue answer 5 and 4', async () => {
  const f = await fleet({ [`p${Z}P`]: 1, qcap: 3, [`tqc${Z}t`]: 1 });
  const { A, B } = f;
  assert.deepEqual(await A.admit('h', 'P', 'a'), GRANT);
  assert.deepEqual(await A.admit('a1', 'P', 'a'), QUEUED);
  assert.deepEqual(await B.admit('t1', 'P', 't'), QUEUED);
  assert.deepEqual(await A.admit('t2', 'P', 't'), [4, 0, 0, 0], 't\'s queue is full (1), fleet-wide');
  assert.deepEqual(await B.admit('a2', 'P', 'a'), QUEUED);
  assert.deepEqual(await A.admit('a3', 'P', 'a'), [5, 0, 0, 0], 'the queue is full (3)');
  assert.deepEqual(await B.admit('t3', 'P', 't'), [4, 0, 0, 0], 'a tenant at its own cap hears 4 first');
  assert.equal((await counters(f.ns)).q, 3, 'refusals queue nothing');
  assert.equal(await conn.call('HEXISTS', `${f.ns}:e`, `A${Z}a3`), 0, 'a refused request leaves no entry');
  for (const [r, id] of [[A, 'a1'], [B, 't1'], [B, 'a2']]) assert.deepEqual(await r.cancel(id), [1]);
  assert.deepEqual(await A.release('h'), [1]);
  await assertAtRest(f);
});

test('(g) cancel: a queued request answers 1, a granted one 2 and frees its slot', async () => {
  const f = await fleet({ [`p${Z}P`]: 1 });
  const { A, B } = f;
  assert.deepEqual(await A.admit('g1', 'P', 't'), GRANT);
  assert.deepEqual(await A.admit('g2', 'P', 't'), QUEUED);
  assert.deepEqual(await B.admit('g3', 'P', 'u'), QUEUED);
  assert.deepEqual(await A.cancel('g2'), [1], 'queued: 1');
  assert.deepEqual(await A.cancel('g2'), [0], 'gone: 0');
  assert.equal((await counters(f.ns)).q, 1);
  assert.deepEqual(await A.cancel('g1'), [2], 'granted: 2');
  assert.deepEqual(await B.granted(), ['g3'], 'its slot went to the next in line');
  await waitFor(() => f.heard.length === 1);
  assert.deepEqual(f.heard, [['B', 'g3']]);
  assert.deepEqual(await A.release('g1'), [0], 'a cancelled request is not released again');
  assert.deepEqual(await B.cancel('g3'), [2]);
  assert.deepEqual(await B.cancel('never'), [0]);
  await assertAtRest(f);
});

test('(h) reap: a replica past its lease is reaped by another\'s beat', async () => {
  const lease = 1000;
  const f = await fleet({ [`p${Z}P`]: 2 }, { lease });
  const { A, B } = f;
  const bk = 'bud-B';
  assert.deepEqual(await B.admit('b1', 'P', 't', { reserve: 50, tbk: bk, tlim: 1000 }), GRANT);
  assert.deepEqual(await B.admit('b2', 'P', 't'), GRANT);
  assert.deepEqual(await B.admit('b3', 'P', 't', { reserve: 20, tbk: bk, tlim: 1000 }), QUEUED);
  assert.deepEqual(await A.admit('a1', 'P', 'u'), QUEUED);
  assert.deepEqual(await A.budget(bk), [[0, 70]]);
  // B goes silent; A keeps beating. Until B's lease has run out nothing moves.
  assert.deepEqual(await A.beat(), [2, 1], 'two live replicas, one config');
  assert.deepEqual(await A.granted(), []);
  await sleep(lease + 100);
  assert.deepEqual(await A.beat(), [1, 1], 'B reaped: one live replica');
  assert.deepEqual(await A.granted(), ['a1'], 'B\'s slots went back, and the next in line got one');
  await waitFor(() => f.heard.length === 1);
  assert.deepEqual(f.heard, [['A', 'a1']], 'the grant of a reap is published to its owner');
  assert.deepEqual(await counters(f.ns), { a: 1, [`p${Z}P`]: 1, [`t${Z}u`]: 1 }, 'B\'s held and queued counts are gone');
  assert.equal(await conn.call('HEXISTS', `${f.ns}:e`, `B${Z}b3`), 0, 'B\'s queued request is gone');
  assert.equal(await conn.call('ZSCORE', `${f.ns}:reps`, 'B'), null);
  for (const k of ['gm', 'qm', 'h', 'rep']) assert.equal(await conn.call('EXISTS', `${f.ns}:${k}:B`), 0, `${k}:B deleted`);
  assert.deepEqual(await A.budget(bk), [[50, 0]], 'a reaped holder\'s reservation is charged, a queued one\'s dropped');
  assert.deepEqual(await B.admit('b4', 'P', 't'), [-1], 'the reaped replica is not registered');
  assert.deepEqual(await A.release('a1'), [1]);
  await assertAtRest(f);
});

test('(h2) a replica that missed two heartbeats gets no grant: its queued requests are parked, and back in place once it is heard from', async () => {
  const lease = 900; // suspect after 600 ms without a call, reaped after 900
  const f = await fleet({ [`p${Z}P`]: 1 }, { lease });
  const { A, B } = f;
  assert.deepEqual(await A.admit('a1', 'P', 'u'), GRANT);
  assert.deepEqual(await B.admit('b1', 'P', 't'), QUEUED, 'B queues first');
  assert.deepEqual(await A.admit('a2', 'P', 'u'), QUEUED);
  await sleep(650); // B silent: suspect, not yet reaped
  assert.deepEqual(await A.release('a1'), [1]);
  assert.deepEqual(await B.granted(), [], 'no slot is granted to a replica that is probably dead');
  assert.deepEqual(await A.granted(), ['a2'], 'the next request of a live replica got it');
  assert.deepEqual(await counters(f.ns), { a: 1, [`p${Z}P`]: 1, [`t${Z}u`]: 1, q: 1, [`pq${Z}P`]: 1, [`tq${Z}t`]: 1 },
    'the parked request still counts as queued');
  // B is heard from again (any call): its request is back in line, first
  assert.deepEqual(await B.beat(), [2, 1]);
  assert.deepEqual(await A.admit('a3', 'P', 'u'), QUEUED);
  assert.deepEqual(await A.release('a2'), [1]);
  assert.deepEqual(await B.granted(), ['b1'], 'B\'s request kept its place (it arrived before a3)');
  assert.deepEqual(await B.release('b1'), [1]);
  assert.deepEqual(await A.granted(), ['a3']);
  assert.deepEqual(await A.release('a3'), [1]);
  await assertAtRest(f);
});

test('(i) join under a live id with another nonce answers -2; the same nonce re-joins', async () => {
  const f = await fleet();
  const { A, ns } = f;
  assert.deepEqual(await A.admit('a1', 'P', 't'), GRANT);
  const imposter = replica(ns, 'A');
  const v = await imposter.join({ nonce: 'other' });
  assert.equal(v.length, 2);
  assert.equal(v[0], -2, 'a live id with another nonce: -2');
  assert.ok(v[1] >= 0 && v[1] < 60000, `and the age of its last beat (${v[1]} ms)`);
  assert.deepEqual(await A.granted(), ['a1'], 'the live replica keeps what it holds');
  // The same replica re-joining (it lost Redis) states what it holds: a1
  // stays, with a new epoch; the old epoch is no longer registered.
  const again = replica(ns, 'A');
  const w = await again.join({ held: [['a1', 'P', 't', 1, 0, '', '']] });
  assert.deepEqual(w, [3, 2], 'a new epoch, still two replicas');
  assert.deepEqual(await A.admit('a2', 'P', 't'), [-1], 'the old epoch is not registered');
  assert.deepEqual(await again.granted(), ['a1']);
  assert.deepEqual(await counters(ns), { a: 1, [`p${Z}P`]: 1, [`t${Z}t`]: 1 });
  assert.deepEqual(await again.release('a1'), [1]);
  await assertAtRest(f);
});

test('(j) rpm and tpm buckets; budgets reserve at admit and settle at release', async () => {
  const f = await fleet();
  const { A, B } = f;
  assert.deepEqual(await A.admit('r1', 'P', 'r', { rpm: 3 }), [0, 0, 2, -1], 'rpm 3: 2 left');
  assert.deepEqual(await B.admit('r2', 'P', 'r', { rpm: 3 }), [0, 0, 1, -1], 'fleet-wide: 1 left');
  assert.deepEqual(await A.admit('r3', 'P', 'r', { rpm: 3 }), [0, 0, 0, -1]);
  const w = await B.admit('r4', 'P', 'r', { rpm: 3 });
  assert.equal(w.length, 4);
  assert.equal(w[0], 2, '4th within the minute: rate limited');
  assert.ok(w[1] > 19000 && w[1] <= 20000, `wait about 60000 / 3 ms (${w[1]})`);
  assert.deepEqual(w.slice(2), [0, -1]);

  assert.deepEqual(await A.admit('k1', 'P', 'k', { tpm: 100, take: 60 }), [0, 0, -1, 40], 'tpm 100, take 60: 40 left');
  const t = await A.admit('k2', 'P', 'k', { tpm: 100, take: 60 });
  assert.equal(t[0], 3, 'tpm short');
  assert.ok(t[1] > 11000 && t[1] <= 12000, `wait about 20 tokens at 100 / min (${t[1]})`);
  assert.deepEqual(t.slice(2), [-1, 0]);
  // k1 used 10 of its 60: the release refunds 50.
  assert.deepEqual(await A.release('k1', { refund: 50 }), [1]);
  const k3 = await A.admit('k3', 'P', 'k', { tpm: 100, take: 60 });
  assert.equal(k3[0], 0, 'after the refund the take fits');
  assert.ok(k3[3] >= 30 && k3[3] <= 31, `about 30 left (${k3[3]})`);

  // budgets: tenant budget 250, each request reserves 100
  const b = { reserve: 100, tbk: 'bt', tlim: 250 };
  assert.deepEqual(await A.admit('m1', 'P', 'm', b), GRANT);
  assert.deepEqual(await B.admit('m2', 'P', 'm', b), GRANT);
  assert.deepEqual(await A.budget('bt'), [[0, 200]]);
  assert.deepEqual(await A.admit('m3', 'P', 'm', b), [6, 0, 250, 200], 'third: used 0, limit 250, reserved 200');
  assert.deepEqual(await A.release('m1', { used: 30 }), [1]);
  assert.deepEqual(await A.budget('bt'), [[30, 100]], 'release settles: 30 used, m1\'s reservation dropped');
  assert.deepEqual(await A.admit('m3', 'P', 'm', b), GRANT, '30 + 100 + 100 fits in 250');
  assert.deepEqual(await A.admit('m4', 'P', 'm', b), [6, 30, 250, 200]);
  // a key budget is checked after the tenant's, and answers 7
  assert.deepEqual(await A.admit('m5', 'P', 'm', { reserve: 100, kbk: 'bk', klim: 50 }), [7, 0, 50, 0]);
  assert.deepEqual(await B.release('m2', { used: 100 }), [1]);
  assert.deepEqual(await A.cancel('m3'), [2], 'a cancelled grant drops its reservation, charges nothing');
  assert.deepEqual(await A.budget('bt', 'bk'), [[130, 0], [0, 0]]);
  for (const [r, id] of [[A, 'r1'], [B, 'r2'], [A, 'r3'], [A, 'k3']]) assert.deepEqual(await r.release(id), [1]);
  await assertAtRest(f);
});

test('(l) capacity: one replica\'s limits are in force fleet-wide, by lease; growing slots grant the queue', async () => {
  const f = await fleet({ [`p${Z}P`]: 1 });
  const { A, B, ns } = f;
  const capacity = (r, slots, limits, lease = 300) => r.op('capacity', 'P', lease, slots, ...limits);
  assert.deepEqual(await A.admit('a1', 'P', 't'), GRANT);
  assert.deepEqual(await B.admit('b1', 'P', 't'), QUEUED);
  assert.deepEqual(await B.admit('b2', 'P', 't'), QUEUED);
  // A asks first: it owns the controller; its slots are the pool's now,
  // and the queue is granted up to them at once
  assert.deepEqual(await capacity(A, 3, [2, 1]), [1, 1, 2, 1], 'A: owner, 1 in flight, its limits in force');
  assert.equal(await conn.call('HGET', `${ns}:cfg`, `p${Z}P`), '3');
  assert.deepEqual(await B.granted(), ['b1', 'b2'], 'the larger pool granted both queued requests');
  await waitFor(() => f.heard.length === 2, () => `2 grants heard, ${JSON.stringify(f.heard)}`);
  // B asks with other numbers: it follows, and is told A's and the fleet's in flight
  assert.deepEqual(await capacity(B, 9, [5, 4]), [0, 3, 2, 1], 'B: follower, 3 in flight fleet-wide, A\'s limits');
  assert.equal(await conn.call('HGET', `${ns}:cfg`, `p${Z}P`), '3', 'a follower does not set the slots');
  // A renews and lowers: a lower pool grants nothing and takes nothing back
  assert.deepEqual(await capacity(A, 2, [1, 1]), [1, 3, 1, 1]);
  assert.deepEqual(await capacity(B, 9, [5, 4]), [0, 3, 1, 1]);
  const ttl = await conn.call('PTTL', `${ns}:cap${Z}P`);
  assert.ok(ttl > 0 && ttl <= 300, `the lease expires (${ttl} ms)`);
  // A stops renewing (killed): once the lease lapses, the next to ask owns it
  await sleep(350);
  assert.equal(await conn.call('EXISTS', `${ns}:cap${Z}P`), 0, 'the lease lapsed');
  assert.deepEqual(await capacity(B, 9, [5, 4]), [1, 3, 5, 4], 'B took over');
  assert.equal(await conn.call('HGET', `${ns}:cfg`, `p${Z}P`), '9');
  assert.deepEqual(await capacity(A, 2, [1, 1]), [0, 3, 5, 4], 'A, back, follows B');
  for (const [r, id] of [[A, 'a1'], [B, 'b1'], [B, 'b2']]) assert.deepEqual(await r.release(id), [1]);
  await assertAtRest(f);
});

test('(k) info shows the fleet; every namespace is at rest', async () => {
  const f = await fleet({ [`p${Z}P`]: 1 });
  const { A, B, ns } = f;
  assert.deepEqual(await A.admit('a1', 'P', 't'), GRANT);
  assert.deepEqual(await B.admit('b1', 'P', 't'), QUEUED);
  const [reps, n] = await A.info();
  reps.sort((x, y) => (x[0] < y[0] ? -1 : 1));
  assert.deepEqual(reps.map((r) => [r[0], r[2], r[3]]), [['A', 'd1', ['P', '1']], ['B', 'd1', []]]);
  for (const r of reps) assert.ok(Number.isInteger(r[1]) && r[1] >= 0 && r[1] < 60000, `age ${r[1]}`);
  const fields = {};
  for (let i = 0; i < n.length; i += 2) fields[n[i]] = n[i + 1];
  assert.equal(n.length, 12);
  assert.deepEqual(fields, { a: '1', [`p${Z}P`]: '1', [`t${Z}t`]: '1', q: '1', [`pq${Z}P`]: '1', [`tq${Z}t`]: '1' });
  assert.deepEqual(await B.cancel('b1'), [1]);
  assert.deepEqual(await A.release('a1'), [1]);
  await assertAtRest(f);
  for (let i = 1; i <= nsSeq; i++) assert.deepEqual(await counters(`t${i}`), {}, `t${i}:n is empty`);
});
