// The response cache on inference routes through real clients (curl over
// HTTP/1.1 and h2c, node:http, node:http2, the OpenAI Node SDK): hits that
// never reach the upstream and repeat the original bytes (streamed too),
// canonical keys, tenant / group / global scopes, Cache-Control, coalescing
// of identical requests in flight (and their leader's failures), aborted
// streams never stored, persistence across restarts, a corrupt or unusable
// file, the cache-purge CLI, bodies that are not JSON, deterministic_only,
// route switches and TTLs, and hits answered without an admission slot.
//
// The simulator's content is deterministic but every response carries a
// fresh `id` (and `created`), so a byte-identical hit also proves that the
// bytes came from the cache and not from a new generation.
import test from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import { randomBytes } from 'node:crypto';
import { writeFileSync, existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { startSim, startObleth, stop, curl, run, simStats, chatBody, sseData, sleep, tempDir, clientRequire, OBLETH } from './lib.mjs';
import { waitFor, rig, header } from './lib.mjs';

const OpenAI = clientRequire('openai').default ?? clientRequire('openai');

// ---- set-up ----

const TENANTS = [
  { name: 'alice', group: 'prod', keys: [{ id: 'alice-1', secret: 'sk-alice' }] },
  { name: 'bob', group: 'prod', keys: [{ id: 'bob-1', secret: 'sk-bob' }] },
  { name: 'carol', group: 'batch', keys: [{ id: 'carol-1', secret: 'sk-carol' }] },
];

function config(sim, { path, cache = {}, routes, upstream = {}, extra = {} } = {}) {
  return {
    upstreams: [{ name: 'sim', endpoints: [sim.url], ...upstream }],
    routes: routes ?? [{ prefix: '/v1/', class: 'inference', upstream: 'sim' }],
    groups: [{ name: 'prod', weight: 1 }, { name: 'batch', weight: 1 }],
    tenants: TENANTS,
    cache: { path: path ?? join(tempDir(), 'cache.mdb'), ...cache },
    ...extra,
  };
}

// ---- clients ----

const text = (b) => (typeof b === 'string' ? b : JSON.stringify(b));

// POST a body (an object, or a string sent as is) with curl -i. proto:
// 'h1' (--http1.1) or 'h2' (h2c with prior knowledge).
async function post(gw, body, { proto = 'h1', key = 'sk-alice', headers = [], path = '/v1/chat/completions' } = {}) {
  const args = [proto === 'h2' ? '--http2-prior-knowledge' : '--http1.1', '-i', '-N',
    '-H', 'content-type: application/json', '-H', 'expect:'];
  if (key) args.push('-H', `authorization: Bearer ${key}`);
  for (const h of headers) args.push('-H', h);
  args.push('--data-binary', text(body), gw.url + path);
  const r = await curl(args);
  const i = r.body.indexOf('\r\n\r\n');
  const head = i >= 0 ? r.body.slice(0, i) : r.body;
  return { ...r, head, payload: i >= 0 ? r.body.slice(i + 4) : '', cache: header(head, 'x-obleth-cache') };
}

const requests = async (sim) => (await simStats(sim)).requests;

// Send a repeat and report what the simulator saw while it was served.
// Read-your-writes (docs/config.md): once a response has been delivered,
// a store it makes is visible to the next identical request at once, so
// a repeat is a hit on its first try, and a store the gateway should not
// have made would already show; there is nothing to wait for. `misses` is
// kept for the callers that accept a miss's own answer (always empty).
async function untilHit(sim, send) {
  const before = await requests(sim);
  const r = await send();
  const seen = (await requests(sim)) - before;
  return { r, seen, misses: [] };
}

// The hit repeats one of the originals exactly.
function assertRepeats(actual, originals, msg) {
  const ok = originals.some((o) => { try { assert.deepEqual(actual, o); return true; } catch { return false; } });
  if (!ok) assert.deepEqual(actual, originals.at(-1), msg);
}

// A raw node:http POST on its own connection: {status, headers, body: Buffer}.
function h1post(gw, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(`${gw.url}/v1/chat/completions`, {
      method: 'POST', agent: false,
      headers: { 'content-type': 'application/json', authorization: 'Bearer sk-alice', ...headers },
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks), complete: res.complete }));
      res.on('error', (e) => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks), error: e }));
      res.on('aborted', () => {});
    });
    req.on('error', (e) => resolve({ status: 0, error: e, body: Buffer.alloc(0), headers: {} }));
    req.end(text(body));
    void reject;
  });
}

// A POST as one stream of an h2 session.
function h2post(session, body, headers = {}) {
  return new Promise((resolve) => {
    const s = session.request({ ':method': 'POST', ':path': '/v1/chat/completions', 'content-type': 'application/json',
      authorization: 'Bearer sk-alice', ...headers });
    const chunks = [];
    let head = {};
    s.on('response', (h) => { head = h; });
    s.on('data', (c) => chunks.push(c));
    s.on('end', () => resolve({ status: head[':status'], headers: head, body: Buffer.concat(chunks), rst: s.rstCode }));
    s.on('error', (e) => resolve({ status: head[':status'], headers: head, body: Buffer.concat(chunks), error: e }));
    s.end(text(body));
  });
}

const content = (payload) => JSON.parse(payload).choices[0].message.content;
const streamText = (payload) => sseData(payload).filter((d) => d !== '[DONE]')
  .map((d) => JSON.parse(d).choices[0]?.delta?.content ?? '').join('');

// ---- tests ----

test('a repeated request is a hit over HTTP/1.1 and h2, with the same body, and never reaches the upstream', { timeout: 20000 }, async () => {
  const r$ = rig();
  try {
    const sim = await r$.sim();
    const gw = await r$.gateway(config(sim));
    const direct = await (await fetch(`${sim.url}/v1/chat/completions`, { method: 'POST', body: JSON.stringify(chatBody()) })).json();

    for (const proto of ['h1', 'h2']) {
      const body = chatBody({ messages: [{ role: 'user', content: `first over ${proto}` }] });
      const before = await requests(sim);
      const miss = await post(gw, body, { proto });
      assert.equal(miss.status, 200, miss.stderr);
      assert.equal(miss.httpVersion, proto === 'h2' ? '2' : '1.1');
      assert.equal(miss.cache, 'miss');
      assert.equal(await requests(sim), before + 1, 'the miss reached the upstream');
      const { r: hit, seen, misses } = await untilHit(sim, () => post(gw, body, { proto }));
      assert.equal(hit.status, 200);
      assert.equal(hit.cache, 'hit', `${proto}: the repeated request is answered from the cache`);
      assert.equal(seen, 0, `${proto}: the simulator did not see the hit`);
      assertRepeats(hit.payload, [miss, ...misses].map((m) => m.payload), `${proto}: the hit repeats the original body byte for byte`);
      assert.match(header(hit.head, 'content-type'), /^application\/json/);
      // The other protocol reads the same entry.
      const other = await post(gw, body, { proto: proto === 'h2' ? 'h1' : 'h2' });
      assert.equal(other.cache, 'hit', 'h1 and h2 share entries');
      assert.equal(other.payload, hit.payload);
    }
    // The content is what the upstream generates for that prompt.
    const r = await post(gw, chatBody());
    assert.equal(r.cache, 'miss');
    assert.equal(content(r.payload), direct.choices[0].message.content);

    // The log line of a hit says what it saved: prompt + completion tokens.
    const usage = JSON.parse(r.payload).usage;
    const { r: h } = await untilHit(sim, () => post(gw, chatBody()));
    assert.equal(h.cache, 'hit');
    // a line is logged as its exchange ends, just after the answer
    await waitFor(() => new RegExp(`cache=hit tokens_saved=${usage.prompt_tokens + usage.completion_tokens}\\b`).test(gw.output.text), 'the hit logged');
    const lines = gw.output.text.split('\n').filter((l) => /cache=hit/.test(l));
    assert.ok(lines.length >= 5, `every hit is logged:\n${gw.output.text.slice(-2000)}`);
    assert.match(lines.at(-1), new RegExp(`cache=hit tokens_saved=${usage.prompt_tokens + usage.completion_tokens}\\b`));
  } finally {
    await r$.close();
  }
});

test('a streamed hit repeats the original SSE bytes (curl h1 and h2, the OpenAI SDK)', { timeout: 20000 }, async () => {
  const r$ = rig();
  try {
    const sim = await r$.sim(['--itl-ms', '2']);
    const gw = await r$.gateway(config(sim));
    for (const proto of ['h1', 'h2']) {
      const body = chatBody({ stream: true, max_tokens: 12, messages: [{ role: 'user', content: `stream over ${proto}` }] });
      const miss = await post(gw, body, { proto });
      assert.equal(miss.status, 200, miss.stderr);
      assert.equal(miss.cache, 'miss');
      assert.match(header(miss.head, 'content-type'), /^text\/event-stream/);
      assert.equal(sseData(miss.payload).at(-1), '[DONE]');
      const { r: hit, seen, misses } = await untilHit(sim, () => post(gw, body, { proto }));
      assert.equal(hit.cache, 'hit', `${proto}: streamed hit`);
      assert.equal(seen, 0);
      assert.match(header(hit.head, 'content-type'), /^text\/event-stream/);
      assertRepeats(hit.payload, [miss, ...misses].map((m) => m.payload), `${proto}: the replayed stream is byte-identical`);
      assert.equal(sseData(hit.payload).length, 12 + 3, 'role chunk, 12 tokens, finish chunk, [DONE]');
    }

    // The OpenAI SDK reads a streamed hit like any stream.
    const client = new OpenAI({ apiKey: 'sk-alice', baseURL: `${gw.url}/v1`, maxRetries: 0 });
    const req = { model: 'sim-model', messages: [{ role: 'user', content: 'stream through the SDK' }], max_tokens: 10, stream: true };
    const read = async () => {
      const { data, response } = await client.chat.completions.create(req).withResponse();
      const chunks = [];
      for await (const c of data) chunks.push(c);
      return { chunks, cache: response.headers.get('x-obleth-cache') };
    };
    const first = await read();
    assert.equal(first.cache, 'miss');
    const { r: second, seen, misses } = await untilHit(sim, read);
    assert.equal(second.cache, 'hit', 'the SDK got a hit');
    assert.equal(seen, 0);
    assertRepeats(second.chunks, [first, ...misses].map((m) => m.chunks), 'the SDK parsed the same chunks (ids included)');
    assert.equal(second.chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('').length > 0, true);
    assert.equal(second.chunks.at(-1).choices[0].finish_reason, 'length');
  } finally {
    await r$.close();
  }
});

test('canonical keys: key order, white space, user, stream_options and exclude_fields do not matter; stream and model do', { timeout: 20000 }, async () => {
  const r$ = rig();
  try {
    const sim = await r$.sim();
    const gw = await r$.gateway(config(sim, { cache: { exclude_fields: ['metadata'] } }));
    const base = { model: 'sim-model', messages: [{ role: 'user', content: 'canonical keys' }], max_tokens: 6, temperature: 0.5, user: 'u-1', metadata: { run: 1 } };
    const first = await post(gw, base);
    assert.equal(first.cache, 'miss');
    const { r: hit, misses: slow } = await untilHit(sim, () => post(gw, base));
    assert.equal(hit.cache, 'hit', 'the control: the same text is a hit');
    const stored = [first, ...slow].map((m) => m.payload);

    const variants = {
      'keys reordered (nested too)': JSON.stringify({ user: 'u-1', metadata: { run: 1 }, temperature: 0.5, max_tokens: 6, messages: [{ content: 'canonical keys', role: 'user' }], model: 'sim-model' }),
      'white space': '{\n  "model" : "sim-model",\t"messages": [ { "role" : "user", "content" : "canonical keys" } ] ,\r\n "max_tokens": 6, "temperature": 0.5, "user": "u-1", "metadata": {"run": 1}\n}\n',
      'a different user': { ...base, user: 'someone-else' },
      'no user': (({ user, ...rest }) => rest)(base),
      'stream_options added': { ...base, stream_options: { include_usage: true } },
      'a different excluded field': { ...base, metadata: { run: 2 } },
    };
    for (const [what, body] of Object.entries(variants)) {
      const before = await requests(sim);
      const r = await post(gw, body);
      assert.equal(r.status, 200, `${what}: ${r.payload}`);
      assert.equal(r.cache, 'hit', `${what} is the same key`);
      assert.equal(await requests(sim), before, `${what}: not sent upstream`);
      assertRepeats(r.payload, stored, `${what}: the stored answer`);
    }

    const misses = {
      'stream: true': { ...base, stream: true },
      'stream: false written out': { ...base, stream: false },
      'another model': { ...base, model: 'other-model' },
      'another prompt': { ...base, messages: [{ role: 'user', content: 'canonical keys!' }] },
      'a number written differently': JSON.stringify(base).replace('"temperature":0.5', '"temperature":0.50'),
    };
    for (const [what, body] of Object.entries(misses)) {
      const before = await requests(sim);
      const r = await post(gw, body);
      assert.equal(r.status, 200, `${what}: ${r.payload}`);
      assert.equal(r.cache, 'miss', `${what} is another key`);
      assert.equal(await requests(sim), before + 1, `${what}: sent upstream`);
    }
  } finally {
    await r$.close();
  }
});

test('scopes: a tenant entry is never served to another tenant; group and global scopes share', { timeout: 20000 }, async () => {
  const r$ = rig();
  try {
    const sim = await r$.sim();
    const gw = await r$.gateway(config(sim, {
      routes: [
        { prefix: '/v1/', class: 'inference', upstream: 'sim' },
        { prefix: '/grp/', class: 'inference', upstream: 'sim', rewrite: '/', cache: { scope: 'group' } },
        { prefix: '/all/', class: 'inference', upstream: 'sim', rewrite: '/', cache: { scope: 'global' } },
      ],
    }));
    const body = chatBody({ messages: [{ role: 'user', content: 'whose entry is this' }] });
    const as = (key, prefix = '') => post(gw, body, { key, path: `${prefix}/v1/chat/completions` });

    // Tenant scope (the default).
    assert.equal((await as('sk-alice')).cache, 'miss');
    assert.equal((await untilHit(sim, () => as('sk-alice'))).r.cache, 'hit');
    let before = await requests(sim);
    const bob = await as('sk-bob');
    assert.equal(bob.status, 200);
    assert.equal(bob.cache, 'miss', "alice's entry is not served to bob (same group)");
    assert.equal(await requests(sim), before + 1, "bob's request went upstream");
    const carol = await as('sk-carol');
    assert.equal(carol.cache, 'miss', "alice's entry is not served to carol");
    assert.equal((await untilHit(sim, () => as('sk-bob'))).r.cache, 'hit', 'bob has his own entry now');

    // Group scope: alice and bob (prod) share, carol (batch) does not.
    assert.equal((await as('sk-alice', '/grp')).cache, 'miss', 'a route scope makes another key');
    const { r: bobGrp, seen } = await untilHit(sim, () => as('sk-bob', '/grp'));
    assert.equal(bobGrp.cache, 'hit', "bob reads alice's group entry");
    assert.equal(seen, 0);
    assert.equal((await as('sk-carol', '/grp')).cache, 'miss', 'another group does not');

    // Global scope: everyone shares.
    const a = await as('sk-alice', '/all');
    assert.equal(a.cache, 'miss');
    const { r: c } = await untilHit(sim, () => as('sk-carol', '/all'));
    assert.equal(c.cache, 'hit', 'carol reads the global entry');
    assert.equal(c.payload, a.payload);
    before = await requests(sim);
    assert.equal((await as('sk-bob', '/all')).cache, 'hit');
    assert.equal(await requests(sim), before);
  } finally {
    await r$.close();
  }
});

test('Cache-Control: no-store bypasses lookup and store; no-cache skips the lookup but stores', { timeout: 20000 }, async () => {
  const r$ = rig();
  try {
    const sim = await r$.sim();
    const gw = await r$.gateway(config(sim));
    const b1 = chatBody({ messages: [{ role: 'user', content: 'no-store' }] });
    let before = await requests(sim);
    let r = await post(gw, b1, { headers: ['cache-control: no-store'] });
    assert.equal(r.status, 200);
    assert.equal(r.cache, 'bypass');
    r = await post(gw, b1, { headers: ['cache-control: no-store'] });
    assert.equal(r.cache, 'bypass');
    r = await post(gw, b1);
    assert.equal(r.cache, 'miss', 'nothing was stored by the no-store requests');
    assert.equal(await requests(sim), before + 3);
    // An existing entry is not looked up either.
    assert.equal((await untilHit(sim, () => post(gw, b1))).r.cache, 'hit', 'control: a plain request stores');
    before = await requests(sim);
    r = await post(gw, b1, { headers: ['Cache-Control: no-store'] });
    assert.equal(r.cache, 'bypass');
    assert.equal(await requests(sim), before + 1, 'no-store goes upstream even with an entry');

    const b2 = chatBody({ messages: [{ role: 'user', content: 'no-cache' }] });
    before = await requests(sim);
    r = await post(gw, b2, { headers: ['cache-control: no-cache'] });
    assert.equal(r.cache, 'miss');
    const { r: hit, seen, misses } = await untilHit(sim, () => post(gw, b2));
    assert.equal(hit.cache, 'hit', 'the no-cache answer was stored');
    assert.equal(seen, 0);
    assertRepeats(hit.payload, [r, ...misses].map((m) => m.payload));
    assert.equal(await requests(sim), before + 1 + misses.length);
    r = await post(gw, b2, { headers: ['cache-control: max-age=0, no-cache'] });
    assert.equal(r.cache, 'miss', 'no-cache skips the lookup of an existing entry');
    assert.equal(await requests(sim), before + 2 + misses.length);
    assert.notEqual(r.payload, hit.payload, 'a fresh generation (new id)');
    // The old entry answers until the replacement has landed.
    let again;
    for (const end = Date.now() + 1500; ;) {
      again = await post(gw, b2);
      if ((again.cache === 'hit' && again.payload !== hit.payload) || Date.now() > end) break;
      await sleep(20);
    }
    assert.equal(again.cache, 'hit');
    assert.equal(again.payload, r.payload, 'the no-cache answer replaced the entry');
  } finally {
    await r$.close();
  }
});

test('coalescing: 20 identical streams in flight reach the upstream once and get the same bytes', { timeout: 20000 }, async () => {
  const r$ = rig();
  try {
    const sim = await r$.sim(['--ttft-ms', '300', '--itl-ms', '20']);
    const gw = await r$.gateway(config(sim));
    const body = chatBody({ stream: true, max_tokens: 10, messages: [{ role: 'user', content: 'twenty at once' }] });
    let before = await requests(sim);
    const rs = await Promise.all(Array.from({ length: 20 }, () => h1post(gw, body)));
    assert.equal(await requests(sim), before + 1, 'one request reached the simulator');
    for (const r of rs) {
      assert.equal(r.status, 200, String(r.error));
      assert.ok(!r.error && r.complete, 'a complete response');
      assert.match(r.headers['content-type'], /^text\/event-stream/);
    }
    const bodies = new Set(rs.map((r) => r.body.toString('latin1')));
    assert.equal(bodies.size, 1, 'all 20 got the same bytes');
    const events = sseData(rs[0].body.toString());
    assert.equal(events.at(-1), '[DONE]');
    assert.equal(events.length, 10 + 3);
    const outcomes = rs.map((r) => r.headers['x-obleth-cache']);
    assert.equal(outcomes.filter((o) => o === 'miss').length, 1, `one leader: ${outcomes}`);
    assert.equal(outcomes.filter((o) => o === 'coalesced' || o === 'hit').length, 19, `19 followers: ${outcomes}`);
    assert.ok(outcomes.filter((o) => o === 'coalesced').length >= 1, 'at least one followed in flight');
    // The leader's answer was stored as well.
    const { r: hit, seen } = await untilHit(sim, () => post(gw, body));
    assert.equal(hit.cache, 'hit');
    assert.equal(seen, 0);
    assert.equal(hit.payload, rs[0].body.toString(), 'the hit repeats the coalesced bytes');

    // The same over h2: 10 streams on one connection.
    const session = http2.connect(gw.url);
    try {
      const b2 = { ...body, messages: [{ role: 'user', content: 'ten streams on one connection' }] };
      before = await requests(sim);
      const hs = await Promise.all(Array.from({ length: 10 }, () => h2post(session, b2)));
      assert.equal(await requests(sim), before + 1, 'h2: one request reached the simulator');
      for (const r of hs) assert.equal(r.status, 200, String(r.error));
      assert.equal(new Set(hs.map((r) => r.body.toString('latin1'))).size, 1, 'h2: all 10 got the same bytes');
      assert.equal(sseData(hs[0].body.toString()).at(-1), '[DONE]');
      const o2 = hs.map((r) => r.headers['x-obleth-cache']);
      assert.equal(o2.filter((o) => o === 'miss').length, 1, `h2: ${o2}`);
      assert.equal(o2.filter((o) => o === 'coalesced' || o === 'hit').length, 9, `h2: ${o2}`);
    } finally {
      session.close();
    }
  } finally {
    await r$.close();
  }
});

test("coalesced followers share their leader's failure, and a failed leader stores nothing", { timeout: 20000 }, async () => {
  const r$ = rig();
  try {
    const sim = await r$.sim(['--ttft-ms', '200', '--itl-ms', '40']);
    const gw = await r$.gateway(config(sim));

    // The leader gets a 503 (headers are not part of the key): its twins get the same 503.
    const b1 = chatBody({ messages: [{ role: 'user', content: 'a failing leader' }] });
    let before = await requests(sim);
    const lead = h1post(gw, b1, { 'x-sim-status': '503', 'x-sim-delay-ms': '400' });
    await waitFor(async () => (await requests(sim)) === before + 1, 'the leader at the upstream');
    const followers = await Promise.all(Array.from({ length: 4 }, () => h1post(gw, b1)));
    const l = await lead;
    assert.equal(l.status, 503);
    assert.equal(l.headers['x-obleth-cache'], 'miss');
    for (const f of followers) {
      assert.equal(f.headers['x-obleth-cache'], 'coalesced');
      assert.equal(f.status, 503, 'the same error as the leader');
      assert.equal(f.body.toString(), l.body.toString());
    }
    assert.equal(await requests(sim), before + 1);
    let r = await post(gw, b1);
    assert.equal(r.status, 200);
    assert.equal(r.cache, 'miss', 'the 503 was not stored');

    // The leader's stream is cut after 2 events: its followers' streams are cut too.
    const b2 = chatBody({ stream: true, max_tokens: 10, messages: [{ role: 'user', content: 'an aborted leader' }] });
    before = await requests(sim);
    // (the delay keeps the leader running while its followers arrive)
    const lead2 = h1post(gw, b2, { 'x-sim-abort-after': '2', 'x-sim-delay-ms': '1000' });
    await waitFor(async () => (await requests(sim)) === before + 1, 'the leader at the upstream');
    const f2 = await Promise.all(Array.from({ length: 4 }, () => h1post(gw, b2)));
    const l2 = await lead2;
    assert.ok(l2.error || !l2.complete, 'the leader saw an incomplete stream');
    for (const f of f2) {
      assert.equal(f.headers['x-obleth-cache'], 'coalesced');
      assert.ok(f.error || !f.complete || f.status !== 200, 'a follower of an aborted stream does not see a complete one');
      assert.notEqual(sseData(f.body.toString()).at(-1), '[DONE]');
    }
    assert.equal(await requests(sim), before + 1);
    r = await post(gw, b2);
    assert.equal(r.cache, 'miss', 'the aborted stream was not stored');
    assert.equal(sseData(r.payload).at(-1), '[DONE]');
  } finally {
    await r$.close();
  }
});

test('an aborted upstream stream is never stored', { timeout: 20000 }, async () => {
  const r$ = rig();
  try {
    const sim = await r$.sim(['--itl-ms', '5']);
    const gw = await r$.gateway(config(sim));
    const body = chatBody({ stream: true, max_tokens: 10, messages: [{ role: 'user', content: 'cut short' }] });
    for (const proto of ['h1', 'h2']) {
      const cut = await post(gw, body, { proto, headers: ['x-sim-abort-after: 2'] });
      assert.notEqual(cut.code, 0, `${proto}: curl saw the stream end early`);
      assert.equal(cut.cache, 'miss');
      assert.notEqual(sseData(cut.payload).at(-1), '[DONE]');
      const before = await requests(sim);
      const r = await post(gw, body, { proto });
      assert.equal(r.status, 200);
      assert.equal(r.cache, 'miss', `${proto}: the truncated stream was not stored`);
      assert.equal(await requests(sim), before + 1, 'it reached the simulator');
      assert.equal(sseData(r.payload).at(-1), '[DONE]');
      // Control: the complete stream is stored. Then evict it with a new body for the next round.
      const { r: hit, misses } = await untilHit(sim, () => post(gw, body, { proto }));
      assert.equal(hit.cache, 'hit');
      assertRepeats(hit.payload, [r, ...misses].map((m) => m.payload));
      body.messages = [{ role: 'user', content: 'cut short again' }];
    }
    // A non-streamed response cut by the upstream is not stored either.
    const nb = chatBody({ max_tokens: 10, messages: [{ role: 'user', content: 'cut short, not streamed' }] });
    const cut = await post(gw, nb, { headers: ['x-sim-abort-after: 2'] });
    const r = await post(gw, nb);
    assert.equal(r.status, 200);
    assert.equal(r.cache, 'miss', `the cut response (status ${cut.status}, curl ${cut.code}) was not stored`);
  } finally {
    await r$.close();
  }
});

test('persistence: entries survive a restart; a corrupt or unusable file is logged and served uncached', { timeout: 20000 }, async () => {
  const r$ = rig();
  try {
    const sim = await r$.sim();
    const path = join(tempDir(), 'persist.mdb');
    const body = chatBody({ messages: [{ role: 'user', content: 'remember me' }] });

    const gw1 = await startObleth(config(sim, { path }));
    let first, originals;
    try {
      first = await post(gw1, body);
      assert.equal(first.cache, 'miss');
      const { r: hit, misses } = await untilHit(sim, () => post(gw1, body));
      assert.equal(hit.cache, 'hit');
      originals = [first, ...misses].map((m) => m.payload);
    } finally {
      await stop(gw1.proc);
    }
    assert.ok(existsSync(path), 'the missing file was created');

    const gw2 = await startObleth(config(sim, { path }));
    try {
      const before = await requests(sim);
      const r = await post(gw2, body);
      assert.equal(r.cache, 'hit', 'a hit after the restart');
      // Every store had landed by the clean stop: the newest (the last miss) won.
      assert.equal(r.payload, originals.at(-1), 'the stored answer after the restart');
      assert.equal(await requests(sim), before);
    } finally {
      await stop(gw2.proc);
    }

    // Garbage over the file.
    writeFileSync(path, randomBytes(Math.max(statSync(path).size, 65536)));
    const gw3 = await startObleth(config(sim, { path }));
    try {
      const before = await requests(sim);
      const r = await post(gw3, body);
      assert.equal(r.status, 200, 'a corrupt file does not break serving');
      assert.equal(r.cache, 'miss');
      assert.equal(content(r.payload), content(first.payload), 'the answer is correct');
      assert.equal(await requests(sim), before + 1);
      assert.ok(gw3.output.text.includes(path), `the corrupt file is logged:\n${gw3.output.text}`);
      const again = await post(gw3, body);
      assert.equal(again.status, 200);
      assert.ok(['miss', 'hit'].includes(again.cache));
    } finally {
      await stop(gw3.proc);
    }

    // A path that cannot be created.
    const bad = join(tempDir(), 'no-such-dir', 'cache.mdb');
    const gw4 = await startObleth(config(sim, { path: bad }));
    try {
      const r = await post(gw4, body);
      assert.equal(r.status, 200);
      assert.equal(r.cache, 'miss');
      assert.equal((await post(gw4, body)).cache, 'miss', 'nothing can be stored');
      assert.ok(gw4.output.text.includes(bad), `the unusable path is logged:\n${gw4.output.text}`);
    } finally {
      await stop(gw4.proc);
    }
  } finally {
    await r$.close();
  }
});

test('cache-purge while the gateway runs: one tenant, then everything', { timeout: 20000 }, async () => {
  const r$ = rig();
  try {
    const sim = await r$.sim();
    const gw = await r$.gateway(config(sim));
    const body = chatBody({ messages: [{ role: 'user', content: 'purge me' }] });
    for (const key of ['sk-alice', 'sk-bob']) {
      assert.equal((await post(gw, body, { key })).cache, 'miss');
      assert.equal((await untilHit(sim, () => post(gw, body, { key }))).r.cache, 'hit');
    }

    let p = await run(OBLETH, ['cache-purge', '--config', gw.configPath, '--tenant', 'alice']);
    assert.equal(p.code, 0, p.stderr);
    let m = p.stdout.match(/^purged .*alice.*; (\d+) entries left$/m);
    assert.ok(m, `output: ${p.stdout}`);
    assert.equal(Number(m[1]), 1, "bob's entry is left");
    let before = await requests(sim);
    assert.equal((await post(gw, body, { key: 'sk-alice' })).cache, 'miss', "alice's entry is gone");
    assert.equal((await post(gw, body, { key: 'sk-bob' })).cache, 'hit', "bob's is not");
    assert.equal(await requests(sim), before + 1);
    assert.equal((await untilHit(sim, () => post(gw, body, { key: 'sk-alice' }))).r.cache, 'hit');

    p = await run(OBLETH, ['cache-purge', '--config', gw.configPath]);
    assert.equal(p.code, 0, p.stderr);
    m = p.stdout.match(/^purged .*; (\d+) entries left$/m);
    assert.ok(m, `output: ${p.stdout}`);
    assert.equal(Number(m[1]), 0);
    before = await requests(sim);
    assert.equal((await post(gw, body, { key: 'sk-alice' })).cache, 'miss');
    assert.equal((await post(gw, body, { key: 'sk-bob' })).cache, 'miss');
    assert.equal(await requests(sim), before + 2);
  } finally {
    await r$.close();
  }
});

test('a body that is not valid JSON is never cached', { timeout: 20000 }, async (t) => {
  const r$ = rig();
  try {
    const sim = await r$.sim();
    const gw = await r$.gateway(config(sim));
    const good = JSON.stringify(chatBody({ messages: [{ role: 'user', content: 'not json' }] }));
    const bodies = {
      'plain text': 'this is not JSON',
      'truncated JSON': good.slice(0, -3),
      'trailing bytes after the object': good + ' trailing',
      'two objects': good + good,
    };
    for (const [what, body] of Object.entries(bodies)) {
      const before = await requests(sim);
      const rs = [await post(gw, body)];
      rs.push(await post(gw, body));
      const seen = (await requests(sim)) - before;
      for (const r of rs) {
        assert.notEqual(r.cache, 'hit', `${what}: never a hit`);
        if (r.status === 400) {
          assert.equal(JSON.parse(r.payload).error.type, 'invalid_request_error', `${what}: an OpenAI error`);
        } else {
          assert.equal(r.cache, 'bypass', `${what}: status ${r.status}, cache ${r.cache}`);
        }
      }
      if (rs[0].status === 400) assert.equal(seen, 0, `${what}: the gateway's 400 does not reach the upstream`);
      else assert.equal(seen, 2, `${what}: both bypasses went upstream`);
      t.diagnostic(`${what}: status ${rs[0].status}, x-obleth-cache ${rs[0].cache ?? '(none)'}`);
    }
  } finally {
    await r$.close();
  }
});

test('deterministic_only: only temperature 0 or a seed is cached', { timeout: 20000 }, async () => {
  const r$ = rig();
  try {
    const sim = await r$.sim();
    const gw = await r$.gateway(config(sim, { cache: { deterministic_only: true } }));
    for (const [what, extra] of [['temperature 0.7', { temperature: 0.7 }], ['no temperature', {}]]) {
      const body = chatBody({ ...extra, messages: [{ role: 'user', content: `deterministic ${what}` }] });
      const before = await requests(sim);
      const r1 = await post(gw, body);
      assert.equal(r1.status, 200);
      assert.equal(r1.cache, 'bypass', what);
      const r2 = await post(gw, body);
      assert.equal(r2.cache, 'bypass', `${what}: not stored`);
      assert.equal(await requests(sim), before + 2);
    }
    for (const [what, extra] of [['temperature 0', { temperature: 0 }], ['a seed', { seed: 7, temperature: 0.7 }]]) {
      const body = chatBody({ ...extra, messages: [{ role: 'user', content: `deterministic ${what}` }] });
      const r1 = await post(gw, body);
      assert.equal(r1.cache, 'miss', what);
      const { r: r2, seen, misses } = await untilHit(sim, () => post(gw, body));
      assert.equal(r2.cache, 'hit', `${what} is cached`);
      assert.equal(seen, 0);
      assertRepeats(r2.payload, [r1, ...misses].map((m) => m.payload));
    }
  } finally {
    await r$.close();
  }
});

test('route switches: cache false, a route TTL, GET not cached', { timeout: 20000 }, async () => {
  const r$ = rig();
  try {
    const sim = await r$.sim();
    const gw = await r$.gateway(config(sim, {
      routes: [
        { prefix: '/v1/', class: 'inference', upstream: 'sim' },
        { prefix: '/off/', class: 'inference', upstream: 'sim', rewrite: '/', cache: false },
        { prefix: '/short/', class: 'inference', upstream: 'sim', rewrite: '/', cache: { ttl_s: 1 } },
      ],
    }));
    const body = chatBody({ messages: [{ role: 'user', content: 'route switches' }] });
    let before = await requests(sim);
    for (let i = 0; i < 3; i++) {
      const r = await post(gw, body, { path: '/off/v1/chat/completions' });
      assert.equal(r.status, 200);
      assert.notEqual(r.cache, 'hit');
      assert.notEqual(r.cache, 'miss', `cache: false does not look up (x-obleth-cache: ${r.cache})`);
    }
    assert.equal(await requests(sim), before + 3, 'cache: false: every request goes upstream');

    const short = (o) => post(gw, body, { path: '/short/v1/chat/completions', ...o });
    assert.equal((await short()).cache, 'miss');
    assert.equal((await untilHit(sim, short)).r.cache, 'hit');
    await sleep(1300);
    before = await requests(sim);
    assert.equal((await short()).cache, 'miss', 'expired after ttl_s: 1');
    assert.equal(await requests(sim), before + 1);

    before = await requests(sim);
    for (let i = 0; i < 2; i++) {
      const r = await curl(['--http1.1', '-i', '-H', 'authorization: Bearer sk-alice', gw.url + '/v1/models']);
      assert.equal(r.status, 200);
      assert.doesNotMatch(r.body, /^x-obleth-cache: *hit/im, 'GET is not cached');
    }
    assert.equal(await requests(sim), before + 2);
  } finally {
    await r$.close();
  }
});

test('a hit is answered before admission: it needs no free slot', { timeout: 20000 }, async () => {
  const r$ = rig();
  try {
    const sim = await r$.sim();
    const gw = await r$.gateway(config(sim, { upstream: { max_inflight: 1 }, extra: { admission: { queue_timeout_ms: 10000 } } }));
    const body = chatBody({ messages: [{ role: 'user', content: 'no slot needed' }] });
    assert.equal((await post(gw, body)).cache, 'miss');
    assert.equal((await untilHit(sim, () => post(gw, body))).r.cache, 'hit');

    // The only slot is held for 3 s by another request.
    let slowDone = false;
    const before = await requests(sim);
    const slow = post(gw, chatBody({ messages: [{ role: 'user', content: 'hold the slot' }] }), { headers: ['x-sim-delay-ms: 3000'] })
      .then((x) => { slowDone = true; return x; });
    await waitFor(async () => (await requests(sim)) === before + 1, 'the holder at the upstream');
    const r = await post(gw, body);
    assert.equal(r.status, 200);
    assert.equal(r.cache, 'hit');
    assert.equal(slowDone, false, 'the hit was answered while the holder still had the slot');
    assert.notEqual(header(r.head, 'x-obleth-admission'), 'queued');
    const s = await slow;
    assert.equal(s.status, 200);
    assert.equal(s.cache, 'miss');
  } finally {
    await r$.close();
  }
});

test('cache.fresh_id: a hit carries a new id of the same shape; every other byte is the stored one', { timeout: 20000 }, async () => {
  const r$ = rig();
  try {
    const sim = await r$.sim();
    const gw = await r$.gateway(config(sim, { cache: { fresh_id: true } }));
    // JSON: the top-level id differs, has the same prefix and length.
    const body = chatBody({ messages: [{ role: 'user', content: 'fresh ids, json' }] });
    const miss = await post(gw, body);
    assert.equal(miss.cache, 'miss');
    const { r: hit, misses } = await untilHit(sim, () => post(gw, body));
    assert.equal(hit.cache, 'hit');
    const orig = [miss, ...misses].at(-1).payload;
    const a = JSON.parse(orig), b = JSON.parse(hit.payload);
    assert.notEqual(b.id, a.id, 'a fresh id');
    assert.equal(b.id.length, a.id.length);
    assert.match(b.id, /^chatcmpl-[0-9a-f]+$/);
    assert.equal(hit.payload.length, orig.length);
    assert.equal(hit.payload.replaceAll(b.id, a.id), orig, 'nothing else changed');
    const again = await post(gw, body);
    assert.notEqual(JSON.parse(again.payload).id, b.id, 'each hit gets its own id');

    // SSE: every chunk carries the same new id; the events are otherwise the stored ones.
    const sbody = chatBody({ stream: true, max_tokens: 5, messages: [{ role: 'user', content: 'fresh ids, sse' }] });
    const smiss = await post(gw, sbody, { proto: 'h2' });
    assert.equal(smiss.cache, 'miss');
    const { r: shit, misses: smisses } = await untilHit(sim, () => post(gw, sbody, { proto: 'h2' }));
    assert.equal(shit.cache, 'hit');
    const sorig = [smiss, ...smisses].at(-1).payload;
    const ids = (p) => sseData(p).filter((d) => d !== '[DONE]').map((d) => JSON.parse(d).id);
    const oi = ids(sorig), ni = ids(shit.payload);
    assert.equal(ni.length, oi.length);
    assert.equal(new Set(ni).size, 1, 'one id across the stream');
    assert.notEqual(ni[0], oi[0]);
    assert.equal(shit.payload.replaceAll(ni[0], oi[0]), sorig, 'the same events otherwise');
  } finally {
    await r$.close();
  }
});

// ---- what a hit may answer, what a key covers, ordering (no waiting: each holds at once) ----

test('a model the tenant may not use is refused on group and global routes, also after another tenant cached it', { timeout: 30000 }, async () => {
  const r$ = rig();
  try {
    const sim = await r$.sim();
    const gw = await r$.gateway(config(sim, {
      routes: [
        { prefix: '/grp/', class: 'inference', upstream: 'sim', rewrite: '/', cache: { scope: 'group' } },
        { prefix: '/all/', class: 'inference', upstream: 'sim', rewrite: '/', cache: { scope: 'global' } },
      ],
      extra: {
        tenants: [
          { name: 'alice', group: 'prod', models: ['sim-model'], keys: [{ id: 'alice-1', secret: 'sk-alice' }] },
          { name: 'bob', group: 'prod', models: ['other-model'], keys: [{ id: 'bob-1', secret: 'sk-bob' }] },
          { name: 'carol', group: 'batch', keys: [{ id: 'carol-1', secret: 'sk-carol' }] },
        ],
      },
    }));
    for (const prefix of ['/grp', '/all']) {
      const body = chatBody({ messages: [{ role: 'user', content: `allowed models on ${prefix}` }] });
      const as = (key, o = {}) => post(gw, body, { key, path: `${prefix}/v1/chat/completions`, ...o });
      const uncached = await as('sk-bob', { headers: ['cache-control: no-store'] });
      assert.equal(uncached.status, 403, `${prefix}: the control, uncached: ${uncached.payload}`);
      assert.equal(JSON.parse(uncached.payload).error.code, 'model_not_allowed');

      assert.equal((await as('sk-alice')).cache, 'miss');
      assert.equal((await as('sk-alice')).cache, 'hit', `${prefix}: alice's repeat is a hit`);
      const before = await requests(sim);
      for (const proto of ['h1', 'h2']) {
        const r = await as('sk-bob', { proto });
        assert.equal(r.status, 403, `${prefix} ${proto}: bob may not use sim-model, cached or not: ${r.cache} ${r.payload}`);
        assert.equal(JSON.parse(r.payload).error.code, 'model_not_allowed');
        assert.equal(r.cache, undefined, 'refused before the cache step');
      }
      assert.equal(await requests(sim), before, 'nothing went upstream');
      if (prefix === '/all') assert.equal((await as('sk-carol')).cache, 'hit', 'the control: a tenant without an allow-list reads the entry');
    }

    // Nor may bob follow a twin in flight.
    const body = chatBody({ messages: [{ role: 'user', content: 'a twin in flight' }] });
    const path = '/all/v1/chat/completions';
    const before = await requests(sim);
    const lead = h1post({ url: `${gw.url}/all` }, body, { 'x-sim-delay-ms': '3000' });
    while ((await requests(sim)) === before) await new Promise((r) => setImmediate(r));
    const bob = await post(gw, body, { key: 'sk-bob', path });
    assert.equal(bob.status, 403, `bob does not follow alice's request in flight: ${bob.cache} ${bob.payload}`);
    const l = await lead;
    assert.equal(l.status, 200);
    assert.equal(l.headers['x-obleth-cache'], 'miss');
  } finally {
    await r$.close();
  }
});

test('the key covers the forwarded path and query: /v1/embeddings and /v1/completions with one body are separate entries', { timeout: 30000 }, async () => {
  const r$ = rig();
  try {
    const sim = await r$.sim();
    const gw = await r$.gateway(config(sim, {
      routes: [
        { prefix: '/v1/', class: 'inference', upstream: 'sim' },
        { prefix: '/echo/', class: 'inference', upstream: 'sim', rewrite: '/sim/echo/' },
      ],
    }));
    const body = { model: 'sim-model', prompt: 'one body, two endpoints', input: 'one body, two endpoints', max_tokens: 4 };
    const completion = await post(gw, body, { path: '/v1/completions' });
    assert.equal(completion.status, 200, completion.payload);
    assert.equal(completion.cache, 'miss');
    assert.equal(JSON.parse(completion.payload).object, 'text_completion');
    const embedding = await post(gw, body, { path: '/v1/embeddings' });
    assert.equal(embedding.status, 200, embedding.payload);
    assert.equal(embedding.cache, 'miss', 'another path is another key');
    assert.equal(JSON.parse(embedding.payload).object, 'list', `an embeddings answer, not the cached completion: ${embedding.payload.slice(0, 200)}`);
    const again = await post(gw, body, { path: '/v1/embeddings' });
    assert.equal(again.cache, 'hit');
    assert.equal(again.payload, embedding.payload);
    assert.equal((await post(gw, body, { path: '/v1/completions' })).payload, completion.payload);

    // The upstream echoes the path it got: a hit may only ever repeat its own.
    const chat = chatBody({ messages: [{ role: 'user', content: 'queries' }] });
    const echoed = (r) => JSON.parse(r.payload).path;
    for (const q of ['?a=1', '?a=2', '', '?a=1&b=2']) {
      const r = await post(gw, chat, { path: `/echo/x${q}` });
      assert.equal(r.status, 200, r.payload);
      assert.equal(r.cache, 'miss', `"${q}": another query is another key`);
      assert.equal(echoed(r), `/sim/echo/x${q}`);
    }
    for (const q of ['?a=1', '?a=2', '', '?a=1&b=2']) {
      const r = await post(gw, chat, { path: `/echo/x${q}` });
      assert.equal(r.cache, 'hit');
      assert.equal(echoed(r), `/sim/echo/x${q}`, 'the entry of this query');
    }
    assert.equal((await post(gw, chat, { path: '/echo/y?a=1' })).cache, 'miss', 'another path after the route prefix');
  } finally {
    await r$.close();
  }
});

test('read-your-writes: a repeat sent as soon as a miss completed is a hit, on any worker, streamed or not', { timeout: 60000 }, async () => {
  const r$ = rig();
  try {
    const sim = await r$.sim(['--itl-ms', '1']);
    const gw = await r$.gateway(config(sim, { extra: { workers: 2 } }));
    for (let i = 0; i < 20; i++) {
      for (const proto of ['h1', 'h2']) {
        const body = chatBody({ stream: i % 2 === 1, max_tokens: 4, messages: [{ role: 'user', content: `repeat ${i} ${proto}` }] });
        const miss = await post(gw, body, { proto });
        assert.equal(miss.status, 200, miss.payload);
        assert.equal(miss.cache, 'miss');
        // Each curl is a new connection: SO_REUSEPORT spreads them over both workers.
        const before = await requests(sim);
        const hit = await post(gw, body, { proto: proto === 'h1' ? 'h2' : 'h1' });
        assert.equal(hit.cache, 'hit', `round ${i} ${proto}: the repeat right after the miss`);
        assert.equal(hit.payload, miss.payload, 'byte-identical');
        assert.equal(await requests(sim), before);
      }
    }
    // Node's http on one keep-alive connection: the next request goes out the moment the response ended.
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      for (let i = 0; i < 20; i++) {
        const body = chatBody({ messages: [{ role: 'user', content: `keep-alive ${i}` }] });
        const send = () => new Promise((resolve, reject) => {
          const req = http.request(`${gw.url}/v1/chat/completions`, { method: 'POST', agent,
            headers: { 'content-type': 'application/json', authorization: 'Bearer sk-alice' } }, (res) => {
            const chunks = [];
            res.on('data', (c) => chunks.push(c));
            res.on('end', () => resolve({ cache: res.headers['x-obleth-cache'], body: Buffer.concat(chunks).toString() }));
          });
          req.on('error', reject);
          req.end(JSON.stringify(body));
        });
        const a = await send();
        const b = await send();
        assert.deepEqual([a.cache, b.cache], ['miss', 'hit'], `keep-alive round ${i}`);
        assert.equal(b.body, a.body);
      }
    } finally {
      agent.destroy();
    }
  } finally {
    await r$.close();
  }
});

test('the key covers the upstream model: a reload that points an alias at another upstream_model does not serve the old answers', { timeout: 30000 }, async () => {
  const r$ = rig();
  try {
    const sim = await r$.sim();
    const cfg = (upstreamModel) => config(sim, {
      path: join(tempDir(), 'alias.mdb'),
      routes: [{ prefix: '/echo/', class: 'inference', upstream: 'sim', rewrite: '/sim/echo/' }],
      extra: { listeners: [{ address: '127.0.0.1:0' }], models: [{ name: 'alias', upstream: 'sim', upstream_model: upstreamModel }] },
    });
    const first = cfg('sim-a');
    const gw = await r$.gateway(first);
    const body = chatBody({ model: 'alias', messages: [{ role: 'user', content: 'which model' }] });
    const sentModel = (r) => JSON.parse(JSON.parse(r.payload).body).model;
    const a = await post(gw, body, { path: '/echo/x' });
    assert.equal(a.cache, 'miss');
    assert.equal(sentModel(a), 'sim-a');
    assert.equal((await post(gw, body, { path: '/echo/x' })).cache, 'hit');

    writeFileSync(gw.configPath, JSON.stringify({ ...first, models: [{ name: 'alias', upstream: 'sim', upstream_model: 'sim-b' }] }));
    const from = gw.output.text.length;
    gw.proc.kill('SIGHUP');
    while (!/ reloaded /.test(gw.output.text.slice(from))) {
      assert.doesNotMatch(gw.output.text.slice(from), /refused/);
      await new Promise((r) => gw.proc.stderr.once('data', r));
    }
    const b = await post(gw, body, { path: '/echo/x' });
    assert.equal(b.cache, 'miss', 'another upstream model is another key');
    assert.equal(sentModel(b), 'sim-b', 'the answer of the model now configured');
    assert.equal((await post(gw, body, { path: '/echo/x' })).cache, 'hit');
  } finally {
    await r$.close();
  }
});

test('an upstream that compresses for one client is asked for identity: the entry is served to every client as plain bytes', { timeout: 30000 }, async () => {
  const { gzipSync } = await import('node:zlib');
  const asked = [];
  const up = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      asked.push(req.headers['accept-encoding']);
      const json = JSON.stringify({ id: 'chatcmpl-1', object: 'chat.completion', model: 'sim-model',
        choices: [{ index: 0, message: { role: 'assistant', content: `answer to ${body.length} bytes` }, finish_reason: 'stop' }] });
      if (/\bgzip\b/.test(req.headers['accept-encoding'] ?? '')) {
        const z = gzipSync(json);
        res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip', 'content-length': z.length });
        res.end(z);
      } else {
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(json) });
        res.end(json);
      }
    });
  });
  await new Promise((r) => up.listen(0, '127.0.0.1', r));
  const r$ = rig();
  try {
    const gw = await r$.gateway(config({ url: `http://127.0.0.1:${up.address().port}` }));
    const body = chatBody({ messages: [{ role: 'user', content: 'compressed upstream' }] });
    // curl without --compressed: what it receives is printed as it came.
    const gz = await post(gw, body, { headers: ['accept-encoding: gzip'] });
    assert.equal(gz.status, 200, gz.body);
    assert.equal(gz.cache, 'miss');
    assert.equal(asked.length, 1);
    assert.ok(!/gzip/.test(asked[0] ?? ''), `the upstream was asked for identity, not ${asked[0]}`);
    assert.equal(header(gz.head, 'content-encoding'), undefined, gz.head);
    const plain = await post(gw, body);
    assert.equal(plain.cache, 'hit');
    assert.equal(header(plain.head, 'content-encoding'), undefined, plain.head);
    assert.match(JSON.parse(plain.payload).choices[0].message.content, /^answer to /, 'plain JSON for a client that asked for no coding');
  } finally {
    try { await r$.close(); } finally { up.close(); up.closeAllConnections?.(); }
  }
});
