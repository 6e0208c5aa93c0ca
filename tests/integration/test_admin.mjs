// The admin listener and the Prometheus metrics through real clients:
// /healthz and /readyz without a token (readyz follows connection back-off),
// 401 for a wrong or missing admin token, /metrics that promtool accepts and
// whose counters match what the clients did, live tenant weight changes
// under load, disabling and re-enabling a tenant, /admin/fairshare while a
// load runs, cache purge through the API, capped per-tenant series, and the
// config check for a non-loopback admin address without a token.
//
// The admin listener binds port 0 and logs "admin API on HOST:PORT" with the
// port it got; startObleth() only reads the client listeners' "listening on"
// lines, so gw.port is the client side.
import test from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startSim, startObleth, stop, curl, run, simStats, chatBody, sseData, sleep, tempDir, OBLETH } from './lib.mjs';
import { waitFor, holdSlot, freePort, rig, bearer, header } from './lib.mjs';

const TOKEN = 'adm-7c1d9e0b5a';
const json = ['-H', 'content-type: application/json'];
const bodyOf = (r) => r.body.slice(r.body.indexOf('\r\n\r\n') + 4);

// ---- set-up ----

// obleth with an admin block on an ephemeral loopback port. token: the admin
// token (null: none). Resolves with gw.port / gw.url for the client
// listener and gw.adminUrl for the admin listener.
async function gateway(config, { token = TOKEN } = {}) {
  const gw = await startObleth({ ...config, admin: { address: '127.0.0.1:0', ...(token ? { token } : {}) } });
  const a = gw.output.text.match(/admin API on 127\.0\.0\.1:(\d+)/);
  if (!a) { await stop(gw.proc); throw new Error(`admin listener not logged:\n${gw.output.text}`); }
  gw.adminPort = Number(a[1]);
  assert.ok(gw.adminPort > 0 && gw.adminPort !== gw.port);
  gw.adminUrl = `http://127.0.0.1:${gw.adminPort}`;
  return gw;
}

// lib's rig, whose gateways have an admin listener (gateway() above).
function adminRig() {
  const r = rig();
  r.gateway = async (cfg, opts) => { const g = await gateway(cfg, opts); r.defer(() => stop(g.proc)); return g; };
  return r;
}

const TENANTS = [
  { name: 'alice', group: 'team', keys: [{ id: 'alice-1', secret: 'sk-alice' }] },
  { name: 'bob', group: 'team', keys: [{ id: 'bob-1', secret: 'sk-bob' }] },
  { name: 'carol', group: 'other', keys: [{ id: 'carol-1', secret: 'sk-carol' }] },
];

function config(sim, { upstream = {}, admission = {}, extra = {} } = {}) {
  return {
    upstreams: [{ name: 'sim', endpoints: [sim.url], ...upstream }],
    routes: [{ prefix: '/v1/', class: 'inference', upstream: 'sim' }],
    groups: [{ name: 'team', weight: 1 }, { name: 'other', weight: 1 }],
    tenants: TENANTS,
    admission: { cost: 'requests', ...admission },
    ...extra,
  };
}

// ---- clients ----

// One admin request with node's fetch. token: sent as "Bearer <token>"
// unless null; headers override (a raw Authorization value).
async function admin(gw, path, { method = 'GET', token = TOKEN, body, headers = {} } = {}) {
  const h = {};
  if (token) h.authorization = `Bearer ${token}`;
  Object.assign(h, headers);
  if (body !== undefined) h['content-type'] = 'application/json';
  const r = await fetch(gw.adminUrl + path, {
    method, headers: h, body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await r.text();
  let parsed;
  try { parsed = JSON.parse(text); } catch { parsed = undefined; }
  return { status: r.status, headers: r.headers, text, json: parsed };
}

const chat = (gw, k, body = chatBody(), extra = []) =>
  curl(['--http1.1', '-i', ...json, ...(k ? bearer(k) : []), ...extra, '--data-binary', JSON.stringify(body), gw.url + '/v1/chat/completions']);

// ---- Prometheus text ----

// Samples of a text exposition: [{name, labels, value}].
function samples(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/);
    assert.ok(m, `a sample line: ${JSON.stringify(line)}`);
    const labels = {};
    if (m[2]) for (const l of m[2].matchAll(/([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

const pick = (ss, name, where = {}) =>
  ss.filter((s) => s.name === name && Object.entries(where).every(([k, v]) => s.labels[k] === v));
const total = (ss, name, where) => pick(ss, name, where).reduce((a, s) => a + s.value, 0);

async function metrics(gw) {
  const r = await admin(gw, '/metrics');
  assert.equal(r.status, 200, r.text);
  return { text: r.text, ss: samples(r.text) };
}

async function promtool(text) {
  const r = await run('promtool', ['check', 'metrics'], { input: text });
  assert.equal(r.code, 0, `promtool check metrics exited ${r.code}:\n${r.stdout}${r.stderr}`);
}

// Histogram buckets are cumulative, +Inf is the count.
function checkHistogram(ss, name) {
  const byClass = new Map();
  for (const s of pick(ss, `${name}_bucket`)) {
    const k = s.labels.class;
    if (!byClass.has(k)) byClass.set(k, []);
    byClass.get(k).push(s);
  }
  for (const [cls, bs] of byClass) {
    for (let i = 1; i < bs.length; i++) assert.ok(bs[i].value >= bs[i - 1].value, `${name}{class=${cls}} buckets cumulative`);
    assert.equal(bs.at(-1).labels.le, '+Inf');
    assert.equal(bs.at(-1).value, total(ss, `${name}_count`, { class: cls }), `${name}{class=${cls}} +Inf == count`);
  }
}

// ---- tests ----

test('healthz and readyz need no token; readyz is 503 while the only endpoint is in back-off', { timeout: 30000 }, async () => {
  const r$ = adminRig();
  try {
    const dead = await freePort(); // nothing listens there: connections are refused
    const gw = await r$.gateway({
      upstreams: [{ name: 'dead', endpoints: [`http://127.0.0.1:${dead}`] }],
      routes: [{ prefix: '/v1/', class: 'inference', upstream: 'dead' }],
      timeouts: { backoff_ms: 60000 },
    });
    for (const token of [null, 'wrong-token']) {
      const h = await admin(gw, '/healthz', { token });
      assert.equal(h.status, 200);
      assert.equal(h.text.trim(), 'ok');
      const r = await admin(gw, '/readyz', { token });
      assert.equal(r.status, 200, `ready before any connection failed: ${r.text}`);
    }
    const c = await chat(gw, null);
    assert.ok(c.status >= 500, `a refused upstream answers 5xx (got ${c.status})`);
    for (const token of [null, 'wrong-token', TOKEN]) {
      const r = await admin(gw, '/readyz', { token });
      assert.equal(r.status, 503, `not ready while the only endpoint is backed off: ${r.status} ${r.text}`);
      const h = await admin(gw, '/healthz', { token });
      assert.equal(h.status, 200, 'healthz stays 200');
    }
  } finally {
    await r$.close();
  }

  const r2 = adminRig();
  try {
    const sim = await r2.sim();
    const gw = await r2.gateway(config(sim));
    assert.equal((await admin(gw, '/readyz', { token: null })).status, 200, 'ready with a live endpoint');
    assert.equal((await chat(gw, 'sk-alice')).status, 200);
    assert.equal((await admin(gw, '/readyz', { token: null })).status, 200, 'still ready after a good request');
  } finally {
    await r2.close();
  }
});

test('a wrong or missing admin token is answered 401 with a JSON error, and changes nothing', { timeout: 30000 }, async () => {
  const r$ = adminRig();
  try {
    const sim = await r$.sim();
    const gw = await r$.gateway(config(sim));
    const endpoints = [
      ['GET', '/metrics'],
      ['GET', '/admin/fairshare'],
      ['GET', '/admin/tenants/alice'],
      ['PUT', '/admin/tenants/alice', { weight: 7, disabled: true }],
      ['PUT', '/admin/groups/team', { weight: 9 }],
      ['POST', '/admin/cache/purge'],
    ];
    const wrong = [
      { token: null },
      { token: 'wrong-token' },
      { token: TOKEN + 'x' },
      { token: TOKEN.slice(0, -1) },
      { token: null, headers: { authorization: TOKEN } },
      { token: null, headers: { authorization: `Basic ${TOKEN}` } },
      { token: null, headers: { authorization: 'Bearer ' } },
    ];
    for (const [method, path, body] of endpoints) {
      for (const w of wrong) {
        const r = await admin(gw, path, { method, body, ...w });
        const what = `${method} ${path} with ${JSON.stringify(w)}`;
        assert.equal(r.status, 401, `${what}: ${r.status} ${r.text}`);
        assert.ok(r.json && typeof r.json.error === 'object' && typeof r.json.error.message === 'string',
          `${what}: JSON error body: ${r.text}`);
        assert.doesNotMatch(r.text, /obleth_requests_total|"tenants"/, `${what}: nothing leaked`);
      }
    }
    // nothing the refused PUTs asked for was applied
    const t = await admin(gw, '/admin/tenants/alice');
    assert.equal(t.status, 200, t.text);
    assert.equal(t.json.weight, 1);
    assert.equal(t.json.disabled, false);
    assert.equal((await chat(gw, 'sk-alice')).status, 200, 'alice still served');
    const fs = await admin(gw, '/admin/fairshare');
    assert.equal(fs.status, 200, fs.text);
    assert.equal(fs.json.groups.find((g) => g.name === 'team').weight, 1);
    // the right token opens everything
    assert.equal((await admin(gw, '/metrics')).status, 200);
  } finally {
    await r$.close();
  }
});

test('--check-config: a non-loopback admin address needs a token', { timeout: 30000 }, async () => {
  const dir = tempDir();
  const base = {
    listeners: [{ address: '127.0.0.1:0' }],
    upstreams: [{ name: 'sim', endpoints: ['http://127.0.0.1:9'] }],
    routes: [{ prefix: '/v1/', class: 'inference', upstream: 'sim' }],
  };
  const check = async (admin) => {
    const p = join(dir, `c${Math.random().toString(36).slice(2)}.json`);
    writeFileSync(p, JSON.stringify({ ...base, admin }));
    const r = await run(OBLETH, ['--check-config', p]);
    return { code: r.code, out: r.stdout + r.stderr };
  };
  let r = await check({ address: '0.0.0.0:9901' });
  assert.equal(r.code, 1, r.out);
  assert.ok(r.out.includes('admin: a non-loopback admin address (0.0.0.0:9901) needs a "token"'), r.out);
  r = await check({ address: '0.0.0.0:9901', token: 's3cret' });
  assert.equal(r.code, 0, r.out);
  r = await check({ address: '127.0.0.1:9901' });
  assert.equal(r.code, 0, r.out);
  r = await check({});
  assert.equal(r.code, 0, `the default address is loopback: ${r.out}`);
});

test('/metrics passes promtool and its counters match what the clients did', { timeout: 30000 }, async () => {
  const r$ = adminRig();
  try {
    const sim = await r$.sim();
    const gw = await r$.gateway(config(sim));
    const usage = { prompt: 0, completion: 0 };
    // h1, not streamed, two tenants
    for (const k of ['sk-alice', 'sk-bob']) {
      const r = await chat(gw, k, chatBody({ max_tokens: 5 }));
      assert.equal(r.status, 200, r.body);
      assert.equal(r.httpVersion, '1.1');
      const u = JSON.parse(bodyOf(r)).usage;
      usage.prompt += u.prompt_tokens;
      usage.completion += u.completion_tokens;
    }
    // h2, streamed, with the usage chunk
    const s = await curl(['--http2-prior-knowledge', '-N', ...json, ...bearer('sk-alice'), '--data-binary',
      JSON.stringify(chatBody({ max_tokens: 7, stream: true, stream_options: { include_usage: true } })), gw.url + '/v1/chat/completions']);
    assert.equal(s.status, 200, s.body);
    assert.equal(s.httpVersion, '2');
    const last = sseData(s.body).filter((d) => d !== '[DONE]').map((d) => JSON.parse(d)).find((c) => c.usage);
    assert.ok(last, `a usage chunk: ${s.body}`);
    usage.prompt += last.usage.prompt_tokens;
    usage.completion += last.usage.completion_tokens;
    // h1 401 (no key), h2 404 (no route)
    const u = await chat(gw, null);
    assert.equal(u.status, 401);
    const n = await curl(['--http2-prior-knowledge', ...bearer('sk-alice'), gw.url + '/nowhere']);
    assert.equal(n.status, 404);
    assert.equal(n.httpVersion, '2');
    assert.equal((await simStats(sim)).requests, 3);

    // connections are counted when the gateway sees them close: wait for that
    let m;
    await waitFor(async () => { m = await metrics(gw); return total(m.ss, 'obleth_connections_open') === 0; }, 'every connection seen closed');
    await promtool(m.text);
    const ss = m.ss;
    for (const s of ss) assert.match(s.name, /^obleth_/, `prefix: ${s.name}`);

    // requests by code
    assert.equal(total(ss, 'obleth_requests_total'), 5, m.text);
    assert.equal(total(ss, 'obleth_requests_total', { code: '200' }), 3);
    assert.equal(total(ss, 'obleth_requests_total', { code: '200', class: 'inference', admission: 'fast' }), 3);
    assert.equal(total(ss, 'obleth_requests_total', { code: '401' }), 1);
    assert.equal(total(ss, 'obleth_requests_total', { code: '404' }), 1);
    for (const s of pick(ss, 'obleth_requests_total')) {
      assert.ok('class' in s.labels && 'code' in s.labels && 'admission' in s.labels, JSON.stringify(s.labels));
    }
    // tokens as the simulator reported them
    assert.equal(total(ss, 'obleth_prompt_tokens_total', { class: 'inference' }), usage.prompt);
    assert.equal(total(ss, 'obleth_completion_tokens_total', { class: 'inference' }), usage.completion);
    assert.equal(total(ss, 'obleth_completion_tokens_total'), usage.completion);
    // latency histograms
    for (const h of ['obleth_queue_wait_seconds', 'obleth_time_to_first_byte_seconds', 'obleth_request_duration_seconds']) {
      assert.match(m.text, new RegExp(`^# TYPE ${h} histogram$`, 'm'));
      checkHistogram(ss, h);
    }
    assert.equal(total(ss, 'obleth_request_duration_seconds_count'), 5, 'every finished request has a duration');
    assert.equal(total(ss, 'obleth_queue_wait_seconds_count'), 3, 'every admitted request has a queue wait');
    assert.equal(total(ss, 'obleth_time_to_first_byte_seconds_count', { class: 'inference' }), 3, 'ttfb of the upstream answers');
    // the upstream endpoint
    const ep = { upstream: 'sim', endpoint: sim.addr };
    assert.equal(total(ss, 'obleth_upstream_attempts_total', ep), 3, m.text);
    assert.equal(total(ss, 'obleth_upstream_failures_total', ep), 0);
    assert.equal(pick(ss, 'obleth_upstream_inflight', ep).length, 1);
    assert.equal(total(ss, 'obleth_upstream_inflight', ep), 0);
    // the pool
    assert.equal(total(ss, 'obleth_pool_inflight', { pool: 'sim' }), 0);
    assert.equal(total(ss, 'obleth_pool_queued', { pool: 'sim' }), 0);
    assert.equal(pick(ss, 'obleth_pool_slots', { pool: 'sim' }).length, 1);
    // connections by protocol: three curl runs over h1, two over h2
    assert.equal(total(ss, 'obleth_connections_total', { protocol: 'http1' }), 3, m.text);
    assert.equal(total(ss, 'obleth_connections_total', { protocol: 'http2' }), 2);
    assert.equal(total(ss, 'obleth_connections_open', { protocol: 'http1' }), 0);
    assert.equal(total(ss, 'obleth_connections_open', { protocol: 'http2' }), 0);
    // no per-tenant series unless asked for, no cache gauge without a cache
    assert.equal(ss.filter((s) => s.name.startsWith('obleth_tenant_')).length, 0);
    assert.equal(pick(ss, 'obleth_cache_entries').length, 0);
    // the admin requests themselves are not client traffic
    const again = await metrics(gw);
    assert.equal(total(again.ss, 'obleth_requests_total'), 5);
  } finally {
    await r$.close();
  }
});

// Closed-loop clients: each sends a request as soon as its previous one is
// answered; with one slot and a 100 ms generation, the answers come one by
// one, so completion times give the grant order.
function loadClients(gw, plan, done) {
  const events = [];
  const loops = [];
  for (const [tenant, k, n] of plan) {
    for (let i = 0; i < n; i++) {
      loops.push((async () => {
        while (!done.stop) {
          const r = await fetch(gw.url + '/v1/chat/completions', {
            method: 'POST',
            headers: { 'content-type': 'application/json', authorization: `Bearer ${k}` },
            body: JSON.stringify(chatBody({ max_tokens: 1 })),
          });
          await r.text();
          events.push({ tenant, t: Date.now(), status: r.status, admission: r.headers.get('x-obleth-admission') });
        }
      })());
    }
  }
  return { events, all: Promise.all(loops) };
}

// A tenant's share of the answers numbered from to to (windows are counted
// in grants, not in time: a loaded machine serves fewer per second).
const share = (events, from, to, tenant) => {
  const w = events.slice(from, to);
  return { n: w.length, mine: w.filter((e) => e.tenant === tenant).length, share: w.filter((e) => e.tenant === tenant).length / (w.length || 1) };
};

test('a weight change under load takes effect at once (no reload)', { timeout: 60000 }, async (tc) => {
  const r$ = adminRig();
  const done = { stop: false };
  let load;
  try {
    const sim = await r$.sim(['--ttft-ms', '100']);
    const gw = await r$.gateway(config(sim, { upstream: { max_inflight: 1 }, admission: { mode: 'hierarchical' } }));
    load = loadClients(gw, [['alice', 'sk-alice', 4], ['bob', 'sk-bob', 4]], done);
    const answers = (n) => waitFor(() => load.events.length >= n, () => `${n} answers (${load.events.length} so far)`);
    await answers(8); // every client is in its loop
    const t1 = load.events.length;
    await answers(t1 + 30);
    const t2 = load.events.length;
    const put = await admin(gw, '/admin/tenants/bob', { method: 'PUT', body: { weight: 4 } });
    assert.equal(put.status, 200, put.text);
    assert.equal(put.json.name, 'bob');
    assert.equal(put.json.weight, 4);
    await answers(t2 + 10); // the requests queued before the change
    const t3 = load.events.length;
    await answers(t3 + 30);
    const t4 = load.events.length;
    done.stop = true;
    await load.all;
    const before = share(load.events, t1, t2, 'bob');
    const after = share(load.events, t3, t4, 'bob');
    const msg = `bob before ${before.mine}/${before.n}, after ${after.mine}/${after.n}`;
    tc.diagnostic(msg);
    assert.ok(before.n >= 15 && after.n >= 15, `enough grants to judge: ${msg}`);
    assert.ok(before.share >= 0.35 && before.share <= 0.65, `equal weights share about 50%: ${msg}`);
    assert.ok(after.share >= 0.7, `weight 4 : 1 gives bob at least 70%: ${msg}`);
    assert.ok(after.share - before.share >= 0.15, `bob's share rose visibly: ${msg}`);
    for (const e of load.events) assert.equal(e.status, 200, `every request served across the change: ${JSON.stringify(e)}`);
    assert.ok(load.events.filter((e) => e.admission === 'queued').length > load.events.length / 2, 'the tenants were backlogged');
    assert.doesNotMatch(gw.output.text, /reload/i, 'no reload');
    const t = await admin(gw, '/admin/tenants/bob');
    assert.equal(t.json.weight, 4);
  } finally {
    done.stop = true;
    if (load) await load.all.catch(() => {});
    await r$.close();
  }
});

test('a tenant disabled through the API is refused 403, re-enabled it is served; 404 and 400', { timeout: 30000 }, async () => {
  const r$ = adminRig();
  try {
    const sim = await r$.sim();
    const gw = await r$.gateway(config(sim));
    assert.equal((await chat(gw, 'sk-alice')).status, 200);
    let r = await admin(gw, '/admin/tenants/alice', { method: 'PUT', body: { disabled: true } });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.name, 'alice');
    assert.equal(r.json.group, 'team');
    assert.equal(r.json.disabled, true);
    const before = (await simStats(sim)).requests;
    const refused = await chat(gw, 'sk-alice');
    assert.equal(refused.status, 403, 'disabled at once');
    assert.equal(typeof JSON.parse(bodyOf(refused)).error.message, 'string');
    const refused2 = await curl(['--http2-prior-knowledge', ...json, '-H', 'x-api-key: sk-alice', '--data-binary',
      JSON.stringify(chatBody()), gw.url + '/v1/chat/completions']);
    assert.equal(refused2.status, 403, 'over h2 with x-api-key too');
    assert.equal((await simStats(sim)).requests, before, 'nothing of a disabled tenant reaches the upstream');
    assert.equal((await chat(gw, 'sk-bob')).status, 200, 'other tenants unaffected');
    r = await admin(gw, '/admin/tenants/alice');
    assert.equal(r.status, 200);
    assert.equal(r.json.disabled, true);
    r = await admin(gw, '/admin/tenants/alice', { method: 'PUT', body: { disabled: false } });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.disabled, false);
    assert.equal((await chat(gw, 'sk-alice')).status, 200, 're-enabled');

    // unknown tenants and groups
    for (const [method, path, body] of [['GET', '/admin/tenants/nobody'], ['PUT', '/admin/tenants/nobody', { weight: 2 }],
      ['PUT', '/admin/tenants/nobody', { disabled: true }], ['PUT', '/admin/groups/nogroup', { weight: 2 }]]) {
      r = await admin(gw, path, { method, body });
      assert.equal(r.status, 404, `${method} ${path}: ${r.status} ${r.text}`);
      assert.equal(typeof r.json?.error?.message, 'string', `JSON error: ${r.text}`);
    }

    // bad bodies change nothing, not even in part
    const bad = ['', 'not json', '[]', 'null', '{}', '{"weight":', { weight: 0 }, { weight: -1 }, { weight: 1.5 },
      { weight: '2' }, { weight: null }, { disabled: 'yes' }, { disabled: 1 }, { wieght: 2 },
      { weight: 2, disabled: 'yes' }, { weight: 0, disabled: true }];
    for (const body of bad) {
      r = await admin(gw, '/admin/tenants/alice', { method: 'PUT', body });
      assert.equal(r.status, 400, `body ${JSON.stringify(body)}: ${r.status} ${r.text}`);
      assert.equal(typeof r.json?.error?.message, 'string', `JSON error: ${r.text}`);
    }
    r = await admin(gw, '/admin/tenants/alice');
    assert.equal(r.json.weight, 1, 'weight untouched by bad bodies');
    assert.equal(r.json.disabled, false, 'disabled untouched by bad bodies');
    assert.equal((await chat(gw, 'sk-alice')).status, 200);
    for (const body of ['', '{}', { weight: 0 }, { weight: 'x' }, { disabled: true }]) {
      r = await admin(gw, '/admin/groups/team', { method: 'PUT', body });
      assert.equal(r.status, 400, `group body ${JSON.stringify(body)}: ${r.status} ${r.text}`);
    }

    // good weight changes show in the tenant and fairshare JSON
    r = await admin(gw, '/admin/tenants/alice', { method: 'PUT', body: { weight: 3, disabled: false } });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.weight, 3);
    r = await admin(gw, '/admin/groups/team', { method: 'PUT', body: { weight: 5 } });
    assert.equal(r.status, 200, r.text);
    const fs = (await admin(gw, '/admin/fairshare')).json;
    assert.equal(fs.groups.find((g) => g.name === 'team').weight, 5);
    assert.equal(fs.tenants.find((t) => t.name === 'alice').weight, 3);

    // no cache configured: purge is 404
    r = await admin(gw, '/admin/cache/purge', { method: 'POST' });
    assert.equal(r.status, 404, r.text);
  } finally {
    await r$.close();
  }
});

test('/admin/fairshare and the pool gauges show requests in flight and queued while a load runs', { timeout: 30000 }, async () => {
  const r$ = adminRig();
  try {
    const sim = await r$.sim(['--ttft-ms', '600']);
    const gw = await r$.gateway(config(sim, { upstream: { max_inflight: 1 } }));
    let fs = (await admin(gw, '/admin/fairshare')).json;
    assert.equal(fs.mode, 'hierarchical');
    assert.equal(fs.inflight, 0);
    assert.equal(fs.queued, 0);
    assert.deepEqual(fs.pools.map((p) => [p.name, p.slots, p.inflight, p.queued]), [['sim', 1, 0, 0]]);
    assert.deepEqual(fs.groups.map((g) => g.name).sort(), ['other', 'team']);
    assert.deepEqual(fs.tenants.map((t) => t.name).sort(), ['alice', 'bob', 'carol']);
    for (const t of fs.tenants) {
      for (const f of ['group', 'weight', 'disabled', 'inflight', 'queued', 'service', 'deficit']) assert.ok(f in t, `tenant ${t.name} has ${f}`);
    }
    for (const g of fs.groups) for (const f of ['weight', 'inflight', 'queued', 'service', 'deficit']) assert.ok(f in g, `group ${g.name} has ${f}`);
    assert.equal(typeof fs.max_inflight, 'number');

    // alice's first request holds the only slot until the view is checked
    // (its client then hangs up), however long the others take to queue.
    const holder = holdSlot(gw.url, 'sk-alice');
    await waitFor(async () => (await admin(gw, '/admin/fairshare')).json.inflight === 1, 'the holder has the slot');
    const reqs = [];
    for (const k of ['sk-alice', 'sk-bob', 'sk-bob']) {
      const before = (await admin(gw, '/admin/fairshare')).json.queued;
      reqs.push(chat(gw, k, chatBody({ max_tokens: 1 })));
      await waitFor(async () => (fs = (await admin(gw, '/admin/fairshare')).json).queued > before, `${k} queued`);
    }
    const t = (n) => fs.tenants.find((x) => x.name === n);
    const g = (n) => fs.groups.find((x) => x.name === n);
    const view = JSON.stringify(fs);
    assert.equal(fs.inflight, 1, view);
    assert.equal(fs.queued, 3, view);
    assert.deepEqual(fs.pools.map((p) => [p.name, p.slots, p.inflight, p.queued]), [['sim', 1, 1, 3]], view);
    assert.deepEqual([t('alice').inflight, t('alice').queued], [1, 1], view);
    assert.deepEqual([t('bob').inflight, t('bob').queued], [0, 2], view);
    assert.deepEqual([t('carol').inflight, t('carol').queued], [0, 0], view);
    assert.deepEqual([g('team').inflight, g('team').queued], [1, 3], view);
    assert.deepEqual([g('other').inflight, g('other').queued], [0, 0], view);

    const m = await metrics(gw);
    assert.equal(total(m.ss, 'obleth_pool_inflight', { pool: 'sim' }), 1, m.text);
    assert.equal(total(m.ss, 'obleth_pool_queued', { pool: 'sim' }), 3);
    assert.equal(total(m.ss, 'obleth_pool_slots', { pool: 'sim' }), 1);
    assert.equal(total(m.ss, 'obleth_upstream_inflight', { upstream: 'sim', endpoint: sim.addr }), 1);

    // a weight change keeps the queued requests where they are
    const put = await admin(gw, '/admin/tenants/bob', { method: 'PUT', body: { weight: 5 } });
    assert.equal(put.status, 200, put.text);
    assert.equal(put.json.queued, 2, put.text);
    fs = (await admin(gw, '/admin/fairshare')).json;
    assert.equal(fs.queued, 3, JSON.stringify(fs));

    holder.release();
    await holder.done;
    for (const r of await Promise.all(reqs)) assert.equal(r.status, 200, r.body);
    // the last slot is given back as its exchange ends, just after its answer
    await waitFor(async () => (fs = (await admin(gw, '/admin/fairshare')).json).inflight === 0, () => `the slot back: ${JSON.stringify(fs)}`);
    assert.equal(fs.queued, 0);
    assert.deepEqual(fs.pools.map((p) => [p.inflight, p.queued]), [[0, 0]]);
    assert.equal(t('alice').service, 2, `cost "requests": one per request: ${JSON.stringify(fs)}`);
    assert.equal(t('bob').service, 2);
    assert.equal(t('carol').service, 0);
  } finally {
    await r$.close();
  }
});

test('cache purge through the admin API: a hit, purge, a miss (per tenant and all), each at once', { timeout: 30000 }, async () => {
  const r$ = adminRig();
  try {
    const sim = await r$.sim();
    // Two workers: the purge (admin loop), the stores and the lookups run on different threads.
    const gw = await r$.gateway(config(sim, { extra: { workers: 2, cache: { path: join(tempDir(), 'cache.mdb') } } }));
    const body = chatBody({ max_tokens: 4, temperature: 0 });
    const ask = async (k, b = body) => {
      const r = await chat(gw, k, b);
      assert.equal(r.status, 200, r.body);
      return header(r.body, 'x-obleth-cache');
    };
    // A completed response is readable at once: no waiting for the store's writer.
    assert.equal(await ask('sk-alice'), 'miss');
    assert.equal(await ask('sk-alice'), 'hit');
    assert.equal(await ask('sk-bob'), 'miss', 'tenant scope');
    assert.equal(await ask('sk-bob'), 'hit');
    let m = await metrics(gw);
    await promtool(m.text);
    // The gauge counts what the writer has put on disk: it catches up.
    while (total(m.ss, 'obleth_cache_entries') !== 2) {
      assert.ok(total(m.ss, 'obleth_cache_entries') < 2, m.text);
      m = await metrics(gw);
    }
    assert.ok(total(m.ss, 'obleth_cache_requests_total', { outcome: 'hit' }) >= 2);
    assert.ok(total(m.ss, 'obleth_cache_requests_total', { outcome: 'miss' }) >= 2);
    assert.ok(total(m.ss, 'obleth_cache_hit_bytes_total') > 0);
    assert.ok(total(m.ss, 'obleth_cache_tokens_saved_total') > 0);

    let r = await admin(gw, '/admin/cache/purge', { method: 'POST', token: null });
    assert.equal(r.status, 401, 'purge needs the token');
    assert.equal(await ask('sk-bob'), 'hit', 'a refused purge purged nothing');

    // Each purge is final when it answers: the next request misses, even
    // though the writer may not have deleted anything yet.
    for (let round = 0; round < 5; round++) {
      r = await admin(gw, '/admin/cache/purge?tenant=bob', { method: 'POST' });
      assert.equal(r.status, 200, r.text);
      assert.equal(await ask('sk-bob'), 'miss', `round ${round}: bob's entries purged`);
      assert.equal(await ask('sk-alice'), 'hit', "alice's entries kept");
      assert.equal(await ask('sk-bob'), 'hit', 'the answer after the purge is stored');
    }

    r = await admin(gw, '/admin/cache/purge', { method: 'POST' });
    assert.equal(r.status, 200, r.text);
    assert.equal(await ask('sk-alice'), 'miss', 'everything purged');
    assert.equal(await ask('sk-bob'), 'miss');
    const before = (await simStats(sim)).requests;
    assert.equal(await ask('sk-alice'), 'hit', 'the cache works after a purge');
    assert.equal((await simStats(sim)).requests, before);

    // A purge right after a store, before the writer could have written it.
    for (let round = 0; round < 10; round++) {
      const b = chatBody({ max_tokens: 4, messages: [{ role: 'user', content: `stored, then purged ${round}` }] });
      assert.equal(await ask('sk-alice', b), 'miss');
      r = await admin(gw, '/admin/cache/purge', { method: 'POST' });
      assert.equal(r.status, 200, r.text);
      assert.equal(await ask('sk-alice', b), 'miss', `round ${round}: a write still queued is purged too`);
    }

    // A response in flight when the purge answers is not stored after it.
    const slow = chatBody({ max_tokens: 4, messages: [{ role: 'user', content: 'in flight during a purge' }] });
    const seen = (await simStats(sim)).requests;
    const lead = chat(gw, 'sk-alice', slow, ['-H', 'x-sim-delay-ms: 1000']);
    while ((await simStats(sim)).requests === seen) await new Promise((res) => setImmediate(res));
    r = await admin(gw, '/admin/cache/purge', { method: 'POST' });
    assert.equal(r.status, 200, r.text);
    const l = await lead;
    assert.equal(l.status, 200);
    assert.equal(header(l.body, 'x-obleth-cache'), 'miss');
    assert.equal(await ask('sk-alice', slow), 'miss', 'the answer begun before the purge was not stored');
    assert.equal(await ask('sk-alice', slow), 'hit');
    m = await metrics(gw);
    assert.equal(total(m.ss, 'obleth_cache_write_errors_total'), 0, 'nothing was counted as a write error');
  } finally {
    await r$.close();
  }
});

test('per-tenant series are capped at metrics.max_tenants', { timeout: 30000 }, async () => {
  const families = ['obleth_tenant_inflight', 'obleth_tenant_queued', 'obleth_tenant_service_total',
    'obleth_tenant_service_share', 'obleth_tenant_weight_share'];
  for (const [metricsCfg, want] of [[{ per_tenant: true, max_tenants: 1 }, 1], [{ per_tenant: true }, 3]]) {
    const r$ = adminRig();
    try {
      const sim = await r$.sim();
      const gw = await r$.gateway(config(sim, { extra: { metrics: metricsCfg } }));
      for (const k of ['sk-alice', 'sk-bob', 'sk-carol', 'sk-bob']) assert.equal((await chat(gw, k)).status, 200);
      const m = await metrics(gw);
      await promtool(m.text);
      const what = JSON.stringify(metricsCfg);
      for (const f of families) {
        assert.match(m.text, new RegExp(`^# TYPE ${f} (gauge|counter)$`, 'm'), `${what}: ${f} declared`);
        assert.equal(pick(m.ss, f).length, want, `${what}: ${f} has ${want} series:\n${m.text}`);
      }
      const names = new Set(m.ss.filter((s) => 'tenant' in s.labels).map((s) => s.labels.tenant));
      assert.equal(names.size, want, `${what}: tenants with series: ${[...names]}`);
      for (const n of names) assert.ok(['alice', 'bob', 'carol'].includes(n), n);
      const fs = (await admin(gw, '/admin/fairshare')).json;
      for (const s of pick(m.ss, 'obleth_tenant_service_total')) {
        assert.equal(s.value, fs.tenants.find((t) => t.name === s.labels.tenant).service, `${what}: service of ${s.labels.tenant}`);
      }
      for (const f of ['obleth_tenant_service_share', 'obleth_tenant_weight_share']) {
        for (const s of pick(m.ss, f)) assert.ok(s.value >= 0 && s.value <= 1, `${f} in 0..1: ${s.value}`);
      }
    } finally {
      await r$.close();
    }
  }
});
