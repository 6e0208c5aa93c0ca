// "workers": N event-loop threads behind one SO_REUSEPORT listener, sharing
// one scheduler. Through real clients (curl over h1 and h2c, Node's http): connections spread over the workers and the metrics add them up;
// fairness is process-wide (the grant order across workers follows the
// weights); a slot freed on one worker goes to a request queued on another;
// queue timeouts and clients leaving the queue release everything; a reload
// reaches every worker; SIGTERM drains every worker and exits 0.
import test from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { startSim, startObleth, stop, curl, simStats, chatBody, sleep, bearer, until } from './lib.mjs';
import { WAIT_MS, holdSlot } from './lib.mjs';
import { writeFileSync } from 'node:fs';

const json = ['-H', 'content-type: application/json'];

function config(sim, over = {}) {
  return {
    workers: 2,
    upstreams: [{ name: 'sim', endpoints: [sim.url], max_inflight: 1 }],
    routes: [{ prefix: '/v1/', class: 'inference', upstream: 'sim' }],
    tenants: [
      { name: 'alice', weight: 1, keys: [{ id: 'a', secret: 'sk-alice' }] },
      { name: 'bob', weight: 3, keys: [{ id: 'b', secret: 'sk-bob' }] },
    ],
    admission: { cost: 'requests', mode: 'weighted' },
    admin: { address: '127.0.0.1:0' },
    ...over,
  };
}

const adminUrl = (gw) => `http://127.0.0.1:${gw.output.text.match(/admin API on 127\.0\.0\.1:(\d+)/)[1]}`;
const fairshare = async (gw) => (await fetch(adminUrl(gw) + '/admin/fairshare')).json();
const metrics = async (gw) => (await fetch(adminUrl(gw) + '/metrics')).text();
const metric = (text, series) => {
  const m = text.match(new RegExp('^' + series.replace(/[{}"=.]/g, '\\$&') + ' (\\S+)$', 'm'));
  return m ? Number(m[1]) : 0;
};

// alice holds the only slot until release() (see holdSlot).
async function hold(gw) {
  const h = holdSlot(gw.url, 'sk-alice');
  assert.ok(await until(async () => (await fairshare(gw)).inflight === 1), 'the holder has the slot');
  return h;
}

// One request on its own TCP connection (the kernel picks the worker).
function fresh(gw, k, extraHeaders = {}, body = chatBody({ max_tokens: 1 })) {
  return new Promise((resolve) => {
    const req = http.request(gw.url + '/v1/chat/completions', {
      method: 'POST', agent: false,
      headers: { 'content-type': 'application/json', authorization: `Bearer ${k}`, connection: 'close', ...extraHeaders },
    }, (res) => {
      let text = '';
      res.on('data', (d) => { text += d; });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, text, at: Date.now() }));
    });
    req.on('error', (e) => resolve({ status: 0, text: String(e), at: Date.now() }));
    req.end(JSON.stringify(body));
  });
}

test('two workers share one listener: connections spread over both, metrics add up', async () => {
  const sim = await startSim();
  const gw = await startObleth(config(sim, { upstreams: [{ name: 'sim', endpoints: [sim.url] }] }));
  try {
    assert.match(gw.output.text, /2 workers \(event-loop threads\) share one scheduler/);
    const n = 64;
    const rs = await Promise.all(Array.from({ length: n }, (_, i) => fresh(gw, i % 2 ? 'sk-alice' : 'sk-bob')));
    for (const r of rs) assert.equal(r.status, 200, r.text);
    // HTTP/2 (h2c prior knowledge) is served by the workers too.
    const h2 = await curl(['--http2-prior-knowledge', ...json, ...bearer('sk-bob'), '--data-binary', JSON.stringify(chatBody()), gw.url + '/v1/chat/completions']);
    assert.equal(h2.status, 200, h2.body);
    assert.equal(h2.httpVersion, '2');
    const m = await metrics(gw);
    const w0 = metric(m, 'obleth_worker_connections_total{worker="0"}');
    const w1 = metric(m, 'obleth_worker_connections_total{worker="1"}');
    assert.equal(w0 + w1, n + 1, m);
    // 2^-64 odds that the kernel's hash put all of them on one socket.
    assert.ok(w0 > 0 && w1 > 0, `both workers accepted connections: ${w0} / ${w1}`);
    assert.equal(metric(m, 'obleth_requests_total{class="inference",code="200",admission="fast"}'), n + 1, m);
    assert.equal(metric(m, 'obleth_upstream_attempts_total{upstream="sim",endpoint="' + sim.addr + '"}'), n + 1, m);
    const ids = new Set(rs.map((r) => r.headers['x-request-id']));
    assert.equal(ids.size, n, 'request ids are unique across workers');
  } finally {
    await stop(gw.proc); await stop(sim.proc);
  }
});

test('fairness is process-wide: grants across workers follow the weights (1:3)', async () => {
  const sim = await startSim();
  const gw = await startObleth(config(sim));
  try {
    // A holder takes the only slot; then 4 + 4 requests queue, each on its
    // own connection, so both workers queue some and the slot freed on one
    // worker is granted to requests of the other.
    const holder = await hold(gw);
    const plan = [];
    for (let i = 0; i < 4; i++) plan.push(['sk-alice', `a${i}`]);
    for (let i = 0; i < 4; i++) plan.push(['sk-bob', `b${i}`]);
    const all = [];
    for (const [k, tag] of plan) {
      const before = (await fairshare(gw)).queued;
      all.push(fresh(gw, k, { 'x-sim-delay-ms': '40' }).then((r) => ({ ...r, tag })));
      assert.ok(await until(async () => (await fairshare(gw)).queued > before), `${tag} queued`);
    }
    assert.equal((await fairshare(gw)).queued, plan.length);
    holder.release();
    const done = await Promise.all(all);
    for (const r of done) {
      assert.equal(r.status, 200, r.text);
      assert.equal(r.headers['x-obleth-admission'], 'queued');
    }
    const order = done.sort((x, y) => x.at - y.at).map((r) => r.tag);
    const firstFour = order.slice(0, 4).join('');
    assert.equal(firstFour.split('b').length - 1, 3, `bob gets 3 of the first 4 slots: ${order.join(' ')}`);
    const m = await metrics(gw);
    assert.ok(metric(m, 'obleth_worker_connections_total{worker="0"}') > 0 && metric(m, 'obleth_worker_connections_total{worker="1"}') > 0, m);
    const fs = await fairshare(gw);
    assert.equal(fs.inflight, 0);
    assert.equal(fs.queued, 0);
  } finally {
    await stop(gw.proc); await stop(sim.proc);
  }
});

test('queue timeouts and clients that leave release every slot on every worker', async () => {
  const sim = await startSim();
  const gw = await startObleth(config(sim, { admission: { cost: 'requests', queue_timeout_ms: 300 } }));
  try {
    const holder = await hold(gw);
    // Timed out in the queue: 503 with Retry-After, from whichever worker.
    const timedOut = await Promise.all(Array.from({ length: 12 }, () => fresh(gw, 'sk-bob')));
    for (const r of timedOut) {
      assert.equal(r.status, 503, r.text);
      assert.equal(JSON.parse(r.text).error.code, 'queue_timeout');
      assert.ok(r.headers['retry-after']);
    }
    // Clients that hang up while queued leave the queue.
    const reqs = [];
    for (let i = 0; i < 12; i++) {
      const req = http.request(gw.url + '/v1/chat/completions', {
        method: 'POST', agent: false, headers: { 'content-type': 'application/json', authorization: 'Bearer sk-bob' },
      });
      req.on('error', () => {});
      req.end(JSON.stringify(chatBody()));
      reqs.push(req);
    }
    assert.ok(await until(async () => (await fairshare(gw)).queued === 12), 'all 12 queued');
    for (const r of reqs) r.destroy();
    assert.ok(await until(async () => (await fairshare(gw)).queued === 0), 'the queue empties when clients leave');
    holder.release();
    assert.ok(await until(async () => (await fairshare(gw)).inflight === 0), 'the slot comes back');
    // Nothing leaked: the one slot is free for the next request at once.
    const after = await Promise.all(Array.from({ length: 6 }, () => fresh(gw, 'sk-alice')));
    for (const r of after) assert.equal(r.status, 200, r.text);
    const stats = await simStats(sim);
    assert.equal(stats.requests, 7, `only the holder and the last six reached the upstream: ${JSON.stringify(stats)}`);
  } finally {
    await stop(gw.proc); await stop(sim.proc);
  }
});

test('a reload reaches every worker; SIGTERM drains every worker and exits 0', async () => {
  const sim = await startSim();
  const cfg = config(sim, { upstreams: [{ name: 'sim', endpoints: [sim.url] }] });
  const gw = await startObleth(cfg);
  try {
    const before = await Promise.all(Array.from({ length: 16 }, () => fresh(gw, 'sk-carol')));
    for (const r of before) assert.equal(r.status, 401);
    cfg.tenants.push({ name: 'carol', keys: [{ id: 'c', secret: 'sk-carol' }] });
    writeFileSync(gw.configPath, JSON.stringify({ listeners: [{ address: '127.0.0.1:0' }], ...cfg }));
    const from = gw.output.text.length;
    gw.proc.kill('SIGHUP');
    assert.ok(await until(() => /reloaded /.test(gw.output.text.slice(from))), gw.output.text.slice(from));
    const after = await Promise.all(Array.from({ length: 32 }, () => fresh(gw, 'sk-carol')));
    for (const r of after) assert.equal(r.status, 200, r.text);
    const m = await metrics(gw);
    assert.ok(metric(m, 'obleth_worker_connections_total{worker="0"}') > 0 && metric(m, 'obleth_worker_connections_total{worker="1"}') > 0, m);
    // Slow streams on many connections (so on both workers) finish after SIGTERM.
    const arrived = (await simStats(sim)).requests;
    const slow = Array.from({ length: 16 }, () => fresh(gw, 'sk-alice', { 'x-sim-delay-ms': '400' }));
    assert.ok(await until(async () => (await simStats(sim)).requests === arrived + 16), 'every slow request reached the upstream');
    gw.proc.kill('SIGTERM');
    for (const r of await Promise.all(slow)) assert.equal(r.status, 200, r.text);
    // Wait for it to exit by itself: stop() would send a second SIGTERM,
    // which means "exit now" to a gateway still closing connections.
    await new Promise((r) => (gw.proc.exitInfo ? r() : gw.proc.once('exit', () => setImmediate(r))));
    const info = await stop(gw.proc);
    assert.equal(info.code, 0);
    // The first worker (signals, admin) ends last, once every worker drained.
    assert.equal(gw.output.text.match(/all connections closed; exiting/g)?.length, 1, gw.output.text.slice(-2000));
  } finally {
    await stop(gw.proc); await stop(sim.proc);
  }
});
