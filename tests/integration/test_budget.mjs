// Token budgets through real clients: a tenant is served until its budget
// is used up and then answered 429 insufficient_quota in OpenAI's shape
// (fetch and the OpenAI SDK, which gives up at once), a key's budget limits
// only that key, restarts (graceful, and a kill after the writer's
// interval) keep the counts in budgets.path, an unusable budgets.path still
// enforces from memory, cache hits and passthrough routes are never charged
// or refused, streams are charged, gRPC calls of an exhausted tenant get
// RESOURCE_EXHAUSTED, and the admin view, the metrics (promtool) and the
// ledger show it all.
import test from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startSim, startObleth, stop, run, simStats, chatBody, sseData, sleep, tempDir, clientRequire } from './lib.mjs';
import { waitFor } from './lib.mjs';

const OpenAI = clientRequire('openai').default ?? clientRequire('openai');
const grpc = clientRequire('@grpc/grpc-js');
const protoLoader = clientRequire('@grpc/proto-loader');
const protoDir = join(dirname(fileURLToPath(import.meta.url)), '..', 'grpc');
const Echo = grpc.loadPackageDefinition(protoLoader.loadSync(join(protoDir, 'echo.proto'), { keepCase: true, defaults: true }))
  .obleth.test.Echo;

const TOKEN = 'adm-budget-5e2f';

// ---- set-up ----

// The counts budgets.path holds for a name as of its last commit (rows
// "<kind><name>\0<period>" -> 8 bytes big-endian in the named database
// "counters"), read by LMDB's own mdb_dump in a read transaction: what it
// sees is committed, so it survives a kill.
async function storedCounts(path, name) {
  if (!existsSync(path)) return [];
  const r = await run('mdb_dump', ['-n', '-s', 'counters', path]);
  if (r.code !== 0) return [];
  const lines = r.stdout.split('\n');
  const data = lines.indexOf('HEADER=END');
  if (data < 0) return [];
  const want = Buffer.from(name + '\0');
  const out = [];
  for (let i = data + 1; i + 1 < lines.length && lines[i] !== 'DATA=END'; i += 2) {
    const key = Buffer.from(lines[i].trim(), 'hex'), val = Buffer.from(lines[i + 1].trim(), 'hex');
    if (key.subarray(1, 1 + want.length).equals(want) && val.length === 8) out.push(Number(val.readBigUInt64BE(0)));
  }
  return out;
}

// obleth in front of the simulator: /v1/ inference, /echo/ passthrough,
// with an admin listener on an ephemeral port (gw.adminUrl).
async function gateway(sim, { tenants, budgets, extra = {} }) {
  const gw = await startObleth({
    upstreams: [{ name: 'sim', endpoints: [sim.url] }, { name: 'echo', endpoints: [`${sim.url}/sim/echo`] }],
    routes: [
      { prefix: '/v1/', class: 'inference', upstream: 'sim' },
      { prefix: '/echo/', class: 'passthrough', upstream: 'echo', rewrite: '/' },
    ],
    tenants,
    ...(budgets ? { budgets } : {}),
    admin: { address: '127.0.0.1:0', token: TOKEN },
    ...extra,
  });
  const a = gw.output.text.match(/admin API on 127\.0\.0\.1:(\d+)/);
  if (!a) { await stop(gw.proc); throw new Error(`admin listener not logged:\n${gw.output.text}`); }
  gw.adminUrl = `http://127.0.0.1:${a[1]}`;
  return gw;
}

// A test body given a rig: everything it starts is stopped in reverse
// order at its end (also when starting failed half-way); a sanitizer
// report or an unclean exit fails the test.
function withRig(body) {
  return async () => {
    const procs = [], closers = [];
    const r = {
      async sim(args) { const s = await startSim(args); procs.push(s.proc); return s; },
      async gateway(sim, opts) { const g = await gateway(sim, opts); procs.push(g.proc); return g; },
      // Stop one process early (a restart); the end skips it.
      async stop(p, sig) { procs.splice(procs.indexOf(p), 1); return stop(p, sig); },
      onClose(fn) { closers.push(fn); },
    };
    try {
      await body(r);
    } finally {
      for (const fn of closers) fn();
      let first = null;
      for (const p of procs.reverse()) { try { await stop(p); } catch (e) { first ??= e; } }
      if (first) throw first;
    }
  };
}

async function chat(gw, key, body = chatBody(), headers = {}) {
  const r = await fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}`, ...headers },
    body: JSON.stringify(body),
  });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch {}
  return { status: r.status, headers: r.headers, text, json };
}

const usedBy = (r) => r.json.usage.prompt_tokens + r.json.usage.completion_tokens;

async function admin(gw, path) {
  const r = await fetch(gw.adminUrl + path, { headers: { authorization: `Bearer ${TOKEN}` } });
  return { status: r.status, text: await r.text() };
}
const tenantView = async (gw, name) => JSON.parse((await admin(gw, `/admin/tenants/${name}`)).text);

// Send chat requests with key until one is refused; returns the tokens the
// served ones used, how many were served and the refusal. no-store: a
// cache, when configured, must not answer them.
async function spend(gw, key, limit = 20) {
  let used = 0;
  for (let served = 0; served < limit; served++) {
    const r = await chat(gw, key, chatBody(), { 'cache-control': 'no-store' });
    if (r.status !== 200) return { used, served, refused: r };
    used += usedBy(r);
  }
  throw new Error(`${key} was never refused`);
}

function assertQuota(r, whose) {
  assert.equal(r.status, 429);
  assert.equal(r.json.error.type, 'insufficient_quota');
  assert.equal(r.json.error.code, 'insufficient_quota');
  assert.equal(r.json.error.param, null);
  assert.match(r.json.error.message, new RegExp(`^You exceeded your current quota: this ${whose}'s budget of \\d+ tokens`));
  assert.equal(r.headers.get('x-should-retry'), 'false');
  assert.equal(r.headers.get('x-obleth-admission'), 'budget');
}

const today = () => new Date().toISOString().slice(0, 10);
const thisMonth = () => new Date().toISOString().slice(0, 7);

// ---- tests ----

test('a tenant is served until its budget is used up, then 429 insufficient_quota (fetch and the OpenAI SDK), shown by admin, metrics and ledger', { timeout: 30000 }, withRig(async (r) => {
  const sim = await r.sim();
  const gw = await r.gateway(sim, {
    tenants: [
      { name: 'acme', budget_tokens: 40, budget_period: 'day', keys: [{ id: 'acme-1', secret: 'sk-acme' }] },
      { name: 'other', keys: [{ id: 'other-1', secret: 'sk-other' }] },
    ],
    budgets: { path: join(tempDir(), 'budgets.mdb') },
    extra: { ledger: { path: 'ledger.jsonl' } },
  });
  const first = await chat(gw, 'sk-acme');
  assert.equal(first.status, 200);
  const per = usedBy(first);
  const { used, served, refused } = await spend(gw, 'sk-acme');
  const total = per + used;
  assert.equal(served + 1, Math.ceil(40 / per), 'served while the count was under the budget');
  assert.ok(total >= 40 && total - per < 40, 'the last one served took the count over, none after');
  assertQuota(refused, 'tenant');
  assert.match(refused.json.error.message, /budget of 40 tokens per day is used up/);
  assert.match(refused.json.error.message, /it renews at \d{4}-\d\d-\d\dT00:00:00Z\.$/);
  assert.equal((await simStats(sim)).requests, served + 1, 'the refused request never reached the upstream');
  assert.equal((await chat(gw, 'sk-other')).status, 200, 'another tenant is not affected');

  // The SDK raises RateLimitError with the code, and does not retry.
  const client = new OpenAI({ apiKey: 'sk-acme', baseURL: `${gw.url}/v1`, maxRetries: 3 });
  await assert.rejects(client.chat.completions.create(chatBody()), (e) => {
    assert.ok(e instanceof OpenAI.RateLimitError, `RateLimitError, got ${e?.constructor?.name}`);
    assert.equal(e.status, 429);
    assert.equal(e.code, 'insufficient_quota');
    assert.equal(e.type, 'insufficient_quota');
    return true;
  });

  const view = await tenantView(gw, 'acme');
  assert.deepEqual(view.budget, {
    tokens: 40, period: 'day', period_id: `d:${today()}`, used: total, remaining: 0,
    renews_at: new Date(Date.parse(`${today()}T00:00:00Z`) + 86400000).toISOString().replace('.000Z', 'Z'),
  });
  assert.deepEqual(view.keys, [{ id: 'acme-1', disabled: false, budget: null }]);
  assert.equal((await tenantView(gw, 'other')).budget, null);

  const m = (await admin(gw, '/metrics')).text;
  assert.match(m, new RegExp(`^obleth_budget_used_tokens\\{tenant="acme"\\} ${total}$`, 'm'));
  assert.match(m, /^obleth_budget_limit_tokens\{tenant="acme"\} 40$/m);
  assert.doesNotMatch(m, /tenant="other"/, 'no series for a tenant without a budget');
  assert.match(m, /^obleth_budget_write_errors_total 0$/m);
  assert.match(m, /^obleth_requests_total\{class="inference",code="429",admission="budget"\} 2$/m,
    'curl once, the SDK once: x-should-retry: false stopped its retries');
  const pt = await run('promtool', ['check', 'metrics'], { input: m });
  assert.equal(pt.code, 0, `promtool check metrics:\n${pt.stdout}${pt.stderr}`);

  await r.stop(gw.proc);
  const lines = readFileSync(join(gw.dir, 'ledger.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  const budgetLines = lines.filter((l) => l.admission === 'budget');
  assert.equal(budgetLines.length, 2);
  for (const l of budgetLines) {
    assert.equal(l.status, 429);
    assert.equal(l.tenant, 'acme');
    assert.equal(l.note, 'budget=tenant');
  }
}));

test('a key budget limits only that key; a tenant budget counts every key', { timeout: 30000 }, withRig(async (r) => {
  const sim = await r.sim();
  const gw = await r.gateway(sim, {
    tenants: [{
      name: 'team', budget_tokens: 1000000, budget_period: 'total',
      keys: [{ id: 'ci', secret: 'sk-ci', budget_tokens: 20 }, { id: 'dev', secret: 'sk-dev' }],
    }],
    budgets: { path: join(tempDir(), 'budgets.mdb') },
  });
  const { used, served, refused } = await spend(gw, 'sk-ci');
  assert.ok(served >= 1 && used >= 20);
  assertQuota(refused, 'API key');
  assert.match(refused.json.error.message, /budget of 20 tokens per month is used up/);
  const dev = await chat(gw, 'sk-dev');
  assert.equal(dev.status, 200, 'the tenant\'s other key goes on');
  const view = await tenantView(gw, 'team');
  assert.equal(view.budget.used, used + usedBy(dev), 'the tenant budget counts both keys');
  assert.equal(view.budget.period, 'total');
  assert.equal(view.budget.period_id, 'total');
  assert.equal(view.budget.renews_at, null);
  assert.deepEqual(view.keys[0].budget, {
    tokens: 20, period: 'month', period_id: `m:${thisMonth()}`, used, remaining: 0, renews_at: view.keys[0].budget.renews_at,
  });
  assert.match(view.keys[0].budget.renews_at, /^\d{4}-\d\d-01T00:00:00Z$/);
  assert.equal(view.keys[1].budget, null);
}));

test('budgets.path keeps the counts across restarts: graceful, and killed after the writer ran', { timeout: 40000 }, withRig(async (r) => {
  const sim = await r.sim();
  const path = join(tempDir(), 'budgets.mdb');
  const tenants = [{ name: 'acme', budget_tokens: 40, keys: [{ id: 'acme-1', secret: 'sk-acme', budget_tokens: 1000 }] }];
  let gw = await r.gateway(sim, { tenants, budgets: { path } });
  const { used, refused } = await spend(gw, 'sk-acme');
  assertQuota(refused, 'tenant');
  await r.stop(gw.proc); // SIGTERM: the store writes the last charges at exit

  gw = await r.gateway(sim, { tenants, budgets: { path } });
  assert.match(gw.output.text, /budgets: 2 counters loaded/);
  assertQuota(await chat(gw, 'sk-acme'), 'tenant');
  let view = await tenantView(gw, 'acme');
  assert.equal(view.budget.used, used, 'the tenant count survived the restart');
  assert.equal(view.keys[0].budget.used, used, 'so did the key count');
  await r.stop(gw.proc);

  // A higher budget in the new config: the same count, room again. The
  // charge is written by the writer thread within its 500 ms interval, so
  // a kill once it is committed to the file loses nothing.
  tenants[0].budget_tokens = 10000;
  gw = await r.gateway(sim, { tenants, budgets: { path } });
  const more = await chat(gw, 'sk-acme');
  assert.equal(more.status, 200);
  let seen = [];
  await waitFor(async () => (seen = await storedCounts(path, 'acme')).includes(used + usedBy(more)), () => `the new count in the file (${seen})`);
  await r.stop(gw.proc, 'SIGKILL');

  gw = await r.gateway(sim, { tenants, budgets: { path } });
  view = await tenantView(gw, 'acme');
  assert.equal(view.budget.used, used + usedBy(more), 'the count written before the kill survived it');
  assert.equal(view.budget.remaining, 10000 - used - usedBy(more));
}));

test('an unusable budgets.path is a warning: budgets are enforced from memory', { timeout: 20000 }, withRig(async (r) => {
  const sim = await r.sim();
  const gw = await r.gateway(sim, {
    tenants: [{ name: 'acme', budget_tokens: 10, keys: [{ id: 'acme-1', secret: 'sk-acme' }] }],
    budgets: { path: join(tempDir(), 'no', 'such', 'folder', 'budgets.mdb') },
  });
  assert.match(gw.output.text, /warn budgets .*budgets\.mdb: .*; enforcing budgets in memory only/);
  assert.equal((await chat(gw, 'sk-acme')).status, 200);
  assertQuota(await chat(gw, 'sk-acme'), 'tenant');
}));

test('cache hits and passthrough routes are neither charged nor refused; streams are charged', { timeout: 20000 }, withRig(async (r) => {
  const sim = await r.sim();
  const gw = await r.gateway(sim, {
    tenants: [{ name: 'acme', budget_tokens: 40, keys: [{ id: 'acme-1', secret: 'sk-acme' }] }],
    extra: { cache: { path: 'cache.mdb' } },
  });
  const body = chatBody({ temperature: 0 });
  const miss = await chat(gw, 'sk-acme', body);
  assert.equal(miss.headers.get('x-obleth-cache'), 'miss');
  // the cache's writer thread stores the answer: wait until it is there
  await waitFor(async () => /^obleth_cache_entries [1-9]/m.test((await admin(gw, '/metrics')).text), 'the answer stored in the cache');
  const hit = await chat(gw, 'sk-acme', body);
  assert.equal(hit.headers.get('x-obleth-cache'), 'hit');
  assert.equal((await tenantView(gw, 'acme')).budget.used, usedBy(miss), 'the hit was not charged');

  // A stream that asks for no usage chunk is charged the gateway's estimate, not nothing.
  const before = (await tenantView(gw, 'acme')).budget.used;
  const s = await chat(gw, 'sk-acme', chatBody({ stream: true }), { 'cache-control': 'no-store' });
  assert.equal(s.status, 200);
  assert.ok(!sseData(s.text).some((d) => d !== '[DONE]' && JSON.parse(d).usage), 'no usage chunk was sent');
  const afterStream = (await tenantView(gw, 'acme')).budget.used;
  assert.ok(afterStream > before, `a stream without usage is charged (${before} -> ${afterStream})`);

  const { refused } = await spend(gw, 'sk-acme');
  assertQuota(refused, 'tenant');
  const spent = (await tenantView(gw, 'acme')).budget.used;
  const again = await chat(gw, 'sk-acme', body);
  assert.equal(again.status, 200, 'a cached answer costs nothing, so an exhausted tenant still gets it');
  assert.equal(again.headers.get('x-obleth-cache'), 'hit');
  const pass = await fetch(`${gw.url}/echo/sim/echo/x`, { headers: { authorization: 'Bearer sk-acme' } });
  assert.equal(pass.status, 200, 'passthrough routes are not admitted, so not budgeted');
  await pass.text();
  assert.equal((await tenantView(gw, 'acme')).budget.used, spent);
}));

test('a gRPC call of an exhausted tenant gets RESOURCE_EXHAUSTED (grpc-js)', { timeout: 20000 }, withRig(async (r) => {
  const port = await new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
  const sim = await r.sim();
  const gw = await r.gateway(sim, {
    tenants: [
      { name: 'acme', budget_tokens: 10, keys: [{ id: 'acme-1', secret: 'sk-acme' }] },
      { name: 'other', keys: [{ id: 'other-1', secret: 'sk-other' }] },
    ],
    // Nothing listens there: a call that got past admission would be UNAVAILABLE.
    extra: {
      upstreams: [{ name: 'sim', endpoints: [sim.url] }, { name: 'echo', endpoints: [`${sim.url}/sim/echo`] },
        { name: 'grpc', endpoints: [`http://127.0.0.1:${port}`], protocol: 'h2c' }],
      routes: [{ prefix: '/v1/', class: 'inference', upstream: 'sim' },
        { prefix: '/obleth.test.Echo/', class: 'grpc', upstream: 'grpc' }],
    },
  });
  const { refused } = await spend(gw, 'sk-acme');
  assertQuota(refused, 'tenant');
  const client = new Echo(`127.0.0.1:${gw.port}`, grpc.credentials.createInsecure());
  r.onClose(() => client.close());
  const call = (key) => new Promise((resolve) => {
    const md = new grpc.Metadata();
    md.add('authorization', `Bearer ${key}`);
    client.Unary({ text: 'hi' }, md, { deadline: Date.now() + 5000 }, (err) => resolve(err));
  });
  const err = await call('sk-acme');
  assert.equal(err?.code, grpc.status.RESOURCE_EXHAUSTED, `RESOURCE_EXHAUSTED, got ${err?.code} ${err?.details}`);
  assert.match(err.details, /exceeded your current quota/);
  const other = await call('sk-other');
  assert.equal(other?.code, grpc.status.UNAVAILABLE, 'a tenant with no budget gets past admission');
}));
