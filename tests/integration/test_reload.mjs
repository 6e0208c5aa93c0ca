// Hot reload (SIGHUP and POST /admin/reload) through real clients: a reload
// under continuous load fails no request, even when it moves the upstream
// to another server and adds and removes a listener; an invalid file (bad
// JSON, an unknown key, a port that cannot be bound) changes nothing; new
// keys work at once and removed keys stop at once while a request already
// running under a removed key finishes, also on a connection that used it
// before (each connection remembers its last key); queued requests keep
// their place; listeners come and go.
import test from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import http from 'node:http';
import http2 from 'node:http2';
import { writeFileSync } from 'node:fs';
import { startSim, startObleth, stop, curl, chatBody, sseData, sleep } from './lib.mjs';
import { simStats, waitFor, WAIT_MS, holdSlot, rig } from './lib.mjs';

const TOKEN = 'adm-reload-3f9a';

const tenant = (name, group, ...secrets) => ({ name, group, keys: secrets.map((s, i) => ({ id: `${name}-${i + 1}`, secret: s })) });

function config(sim, over = {}) {
  return {
    admin: { address: '127.0.0.1:0', token: TOKEN },
    upstreams: [{ name: 'llm', endpoints: [sim.url], max_inflight: 4 }],
    routes: [{ prefix: '/v1/', class: 'inference', upstream: 'llm' }],
    groups: [{ name: 'prod', weight: 3 }, { name: 'batch', weight: 1 }],
    tenants: [tenant('alice', 'prod', 'sk-alice'), tenant('bob', 'batch', 'sk-bob')],
    ...over,
  };
}

// Rewrite the config file the gateway was started with.
function rewrite(gw, cfg) {
  writeFileSync(gw.configPath, typeof cfg === 'string' ? cfg : JSON.stringify({ listeners: [{ address: '127.0.0.1:0' }], ...cfg }, null, 2));
}

// The log reaches us on its own pipe, possibly after an HTTP answer that
// was sent later: poll for a line rather than reading once.
async function waitLog(gw, re, ms = WAIT_MS) {
  const end = Date.now() + ms;
  while (!re.test(gw.output.text) && Date.now() < end) await sleep(10);
  assert.match(gw.output.text, re);
}

async function adminReload(gw) {
  const r = await fetch(gw.adminUrl + '/admin/reload', { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` } });
  return { status: r.status, text: await r.text() };
}

// SIGHUP, then wait for the gateway to say how it went.
async function hup(gw) {
  const from = gw.output.text.length;
  gw.proc.kill('SIGHUP');
  const end = Date.now() + WAIT_MS;
  for (;;) {
    const t = gw.output.text.slice(from);
    if (/reloaded |reload of .* refused/.test(t)) return t;
    if (Date.now() > end) throw new Error(`no reload outcome logged:\n${t}`);
    await sleep(10);
  }
}

async function chat(url, key, body = chatBody()) {
  const r = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` }, body: JSON.stringify(body),
  });
  return { status: r.status, text: await r.text(), admission: r.headers.get('x-obleth-admission') };
}

// Workers sending chat requests (every other one streamed) until done.stop;
// each result says whether the client saw a complete, successful answer.
function load(url, keys, workers, done) {
  const results = [];
  const one = async (i) => {
    const stream = i % 2 === 0;
    const key = keys[i % keys.length];
    const t0 = Date.now();
    try {
      const r = await chat(url(), key, chatBody({ stream, max_tokens: 6, messages: [{ role: 'user', content: `load ${i}` }] }));
      const complete = r.status === 200 && (stream ? sseData(r.text).at(-1) === '[DONE]' : JSON.parse(r.text).choices?.length === 1);
      results.push({ i, key, stream, status: r.status, complete, ms: Date.now() - t0, text: r.status === 200 ? '' : r.text });
    } catch (e) {
      results.push({ i, key, stream, status: 0, complete: false, error: String(e) });
    }
  };
  let n = 0;
  const all = Promise.all(Array.from({ length: workers }, async () => {
    while (!done.stop) await one(n++);
  }));
  return { results, all };
}

test('a reload under continuous load fails no request (weights, keys, upstream moved, listener added and removed)', { timeout: 60000 }, async () => {
  const r$ = rig();
  const done = { stop: false };
  let l;
  try {
    const simA = await r$.sim(['--itl-ms', '3']);
    const simB = await r$.sim(['--itl-ms', '3']);
    const base = config(simA);
    const gw = await r$.gateway(base);
    l = load(() => gw.url, ['sk-alice', 'sk-bob'], 8, done);
    // the load runs across each config: some answers before the first
    // reload and between every two (counted, not timed)
    const answers = (n) => waitFor(() => l.results.length >= n, () => `${n} answers (${l.results.length} so far)`);
    await answers(10);
    const variants = [
      { ...base, groups: [{ name: 'prod', weight: 1 }, { name: 'batch', weight: 5 }] },
      { ...base, upstreams: [{ name: 'llm', endpoints: [simB.url], max_inflight: 4 }] },
      { ...base, upstreams: [{ name: 'llm', endpoints: [simB.url], max_inflight: 2 }], tenants: [...base.tenants, tenant('carol', 'batch', 'sk-carol')] },
      { ...base, listeners: [{ address: '127.0.0.1:0' }, { address: '127.0.0.1:0' }] },
      { ...base, upstreams: [{ name: 'llm', endpoints: [simA.url, simB.url], max_inflight: 6 }] },
      base,
    ];
    let k = 0;
    for (const v of variants) {
      rewrite(gw, v);
      if (k++ % 2 === 0) {
        const r = await adminReload(gw);
        assert.equal(r.status, 200, r.text);
        assert.deepEqual(JSON.parse(r.text), { reloaded: true });
      } else {
        assert.match(await hup(gw), /reloaded /);
      }
      await answers(l.results.length + 10);
    }
    done.stop = true;
    await l.all;
    const bad = l.results.filter((r) => !r.complete);
    assert.deepEqual(bad, [], `every request served completely across ${variants.length} reloads`);
    assert.ok(l.results.length >= 60, `a real load ran: ${l.results.length} requests`);
    const a = await (await fetch(`${simA.url}/sim/stats`)).json();
    const b = await (await fetch(`${simB.url}/sim/stats`)).json();
    assert.ok(a.requests > 0 && b.requests > 0, `both upstreams served while the pool moved: A ${a.requests}, B ${b.requests}`);
    assert.equal((gw.output.text.match(/ reloaded /g) || []).length, variants.length);
  } finally {
    done.stop = true;
    if (l) await l.all.catch(() => {});
    await r$.close();
  }
});

test('an invalid file changes nothing: bad JSON, an unknown key, a port that cannot be bound', { timeout: 30000 }, async () => {
  const r$ = rig();
  const blocker = net.createServer();
  try {
    const sim = await r$.sim();
    const gw = await r$.gateway(config(sim));
    const before = await chat(gw.url, 'sk-alice');
    assert.equal(before.status, 200);

    // Broken JSON by SIGHUP: logged, and the gateway goes on.
    rewrite(gw, '{"listeners": [');
    const log = await hup(gw);
    assert.match(log, /reload of .* refused/);
    assert.doesNotMatch(log, / reloaded /);

    // An unknown key by the API: 400 with the JSON path, and nothing changed
    // (a key the bad file would add does not work).
    const cfg = config(sim, { tenants: [tenant('alice', 'prod', 'sk-alice'), tenant('bob', 'batch', 'sk-bob'), tenant('dave', 'prod', 'sk-dave')] });
    rewrite(gw, { ...cfg, upstreams: [{ ...cfg.upstreams[0], colour: 'blue' }] });
    let r = await adminReload(gw);
    assert.equal(r.status, 400, r.text);
    const err = JSON.parse(r.text).error;
    assert.match(err.message, /upstreams\[0\]\.colour/);
    assert.match(err.message, /unchanged/);
    assert.equal((await chat(gw.url, 'sk-dave')).status, 401, 'the invalid file added no key');

    // A listener on a port someone else holds: the whole reload is refused.
    await new Promise((res) => blocker.listen(0, '127.0.0.1', res));
    const taken = blocker.address().port;
    rewrite(gw, { ...cfg, listeners: [{ address: '127.0.0.1:0' }, { address: `127.0.0.1:${taken}` }] });
    r = await adminReload(gw);
    assert.equal(r.status, 400, r.text);
    await waitLog(gw, new RegExp(`127\\.0\\.0\\.1:${taken}: cannot bind`));
    assert.equal((await chat(gw.url, 'sk-dave')).status, 401, 'nothing of the refused file is in force');

    // The old config still serves, and a valid file then applies.
    assert.equal((await chat(gw.url, 'sk-alice')).status, 200);
    rewrite(gw, cfg);
    r = await adminReload(gw);
    assert.equal(r.status, 200, r.text);
    assert.equal((await chat(gw.url, 'sk-dave')).status, 200);

    // The admin token is checked on reload like everywhere else.
    const noauth = await fetch(gw.adminUrl + '/admin/reload', { method: 'POST' });
    assert.equal(noauth.status, 401);
  } finally {
    blocker.close();
    await r$.close();
  }
});

test('new keys work at once, removed keys stop at once, a request running under a removed key finishes', { timeout: 30000 }, async () => {
  const r$ = rig();
  try {
    const sim = await r$.sim(['--itl-ms', '40']);
    const gw = await r$.gateway(config(sim));
    assert.equal((await chat(gw.url, 'sk-carol')).status, 401);
    // bob starts a stream of 30 tokens x 40 ms (about 1.2 s).
    const running = chat(gw.url, 'sk-bob', chatBody({ stream: true, max_tokens: 30 }));
    await waitFor(async () => (await simStats(sim)).requests === 1, 'bob\'s stream at the upstream');
    rewrite(gw, config(sim, { tenants: [tenant('alice', 'prod', 'sk-alice'), tenant('carol', 'batch', 'sk-carol')] }));
    const r = await adminReload(gw);
    assert.equal(r.status, 200, r.text);
    const bobNow = await chat(gw.url, 'sk-bob', chatBody({ max_tokens: 1 }));
    assert.equal(bobNow.status, 401, 'the removed key stops at once');
    assert.equal(JSON.parse(bobNow.text).error.code, 'invalid_api_key');
    const carol = await chat(gw.url, 'sk-carol', chatBody({ max_tokens: 1 }));
    assert.equal(carol.status, 200, 'the new key works at once');
    const bob = await running;
    assert.equal(bob.status, 200);
    const events = sseData(bob.text);
    assert.equal(events.at(-1), '[DONE]', 'the request that started before the reload finished');
    assert.equal(events.length, 30 + 3);
    await waitLog(gw, /" 200 \d+ [^\n]*tenant=bob group=batch key=bob-1 /); // logged under the tenant it started with
  } finally {
    await r$.close();
  }
});

// One request on an open connection: HTTP/1.1 through a keep-alive agent
// with one socket, or a stream of an HTTP/2 session.
function onConn(conn, key) {
  const body = JSON.stringify(chatBody({ max_tokens: 1 }));
  const headers = { 'content-type': 'application/json', authorization: `Bearer ${key}` };
  return new Promise((resolve, reject) => {
    if (conn.session) {
      const st = conn.session.request({ ':method': 'POST', ':path': '/v1/chat/completions', ...headers });
      let text = '', status = 0;
      st.setEncoding('utf8');
      st.on('response', (h) => { status = h[':status']; });
      st.on('data', (d) => { text += d; });
      st.on('end', () => resolve({ status, text }));
      st.on('error', reject);
      st.end(body);
      return;
    }
    const req = http.request(`${conn.url}/v1/chat/completions`, { method: 'POST', agent: conn.agent, headers }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { text += d; });
      res.on('end', () => resolve({ status: res.statusCode, text, socket: res.socket }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

test('a connection that used a key before a reload is answered by the new keys (HTTP/1.1 and HTTP/2)', { timeout: 30000 }, async () => {
  const r$ = rig();
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  let session;
  try {
    const sim = await r$.sim();
    const gw = await r$.gateway(config(sim));
    session = http2.connect(gw.url);
    const h1 = { url: gw.url, agent }, h2 = { session };
    const first = await onConn(h1, 'sk-bob');
    for (const c of [h1, h2]) {
      assert.equal((await onConn(c, 'sk-bob')).status, 200);
      assert.equal((await onConn(c, 'sk-bob')).status, 200, 'the same key again on the same connection');
    }
    // bob moves to another key, alice to another tenant.
    rewrite(gw, config(sim, { tenants: [tenant('carol', 'prod', 'sk-alice'), tenant('bob', 'batch', 'sk-bob2')] }));
    assert.equal((await adminReload(gw)).status, 200);
    for (const [name, c] of [['HTTP/1.1', h1], ['HTTP/2', h2]]) {
      const bob = await onConn(c, 'sk-bob');
      assert.equal(bob.status, 401, `${name}: the removed key stops on a connection that used it`);
      assert.equal(JSON.parse(bob.text).error.code, 'invalid_api_key');
      assert.equal((await onConn(c, 'sk-alice')).status, 200);
      assert.equal((await onConn(c, 'sk-alice')).status, 200);
    }
    const last = await onConn(h1, 'sk-bob2');
    assert.equal(last.status, 200);
    assert.equal(last.socket, first.socket, 'the HTTP/1.1 requests shared one connection');
    await waitLog(gw, /" 200 \d+ [^\n]*tenant=carol group=prod key=carol-1 /); // alice's key now names carol
    assert.doesNotMatch(gw.output.text, /tenant=alice /, 'no request was logged under alice');
  } finally {
    session?.close();
    agent.destroy();
    await r$.close();
  }
});

test('queued requests keep their place across a reload', { timeout: 30000 }, async () => {
  const r$ = rig();
  try {
    const sim = await r$.sim(['--ttft-ms', '150']);
    const cfg = config(sim, { upstreams: [{ name: 'llm', endpoints: [sim.url], max_inflight: 1 }] });
    const gw = await r$.gateway(cfg);
    const fairshare = async () => (await fetch(gw.adminUrl + '/admin/fairshare', { headers: { authorization: `Bearer ${TOKEN}` } })).json();
    // A holder keeps the only slot until the reload is done (its client
    // then hangs up); each request is sent once the one before it is
    // queued, so the arrival order is known however slow the machine.
    const holder = holdSlot(gw.url, 'sk-bob');
    await waitFor(async () => (await fairshare()).inflight === 1, 'the holder has the slot');
    const order = [];
    const reqs = [];
    for (let i = 0; i < 6; i++) {
      reqs.push(chat(gw.url, 'sk-alice', chatBody({ max_tokens: 1, messages: [{ role: 'user', content: `q${i}` }] }))
        .then((r) => { order.push(i); return r; }));
      await waitFor(async () => (await fairshare()).queued === i + 1, `q${i} queued`);
    }
    const fs = await fairshare();
    assert.ok(fs.queued >= 4, `requests are queued before the reload: ${JSON.stringify(fs)}`);
    // Weights and caps change; the queue must survive it.
    rewrite(gw, { ...cfg, groups: [{ name: 'prod', weight: 1 }, { name: 'batch', weight: 9 }], admission: { queue_timeout_ms: 20000 } });
    assert.match(await hup(gw), /reloaded /);
    holder.release();
    await holder.done;
    const rs = await Promise.all(reqs);
    for (const r of rs) assert.equal(r.status, 200, r.text);
    assert.ok(rs.filter((r) => r.admission === 'queued').length >= 4);
    assert.deepEqual(order, [0, 1, 2, 3, 4, 5], 'served in arrival order, none lost or re-queued at the back');
    // the last slot is given back as its exchange ends, just after its answer
    let after;
    await waitFor(async () => (after = await fairshare()).inflight === 0, () => `every slot given back: ${JSON.stringify(after)}`);
    assert.equal(after.queued, 0);
    assert.equal(after.groups.find((g) => g.name === 'batch').weight, 9, 'the new weights are in force');
  } finally {
    await r$.close();
  }
});

test('listeners are added and removed by a reload; the others keep serving', { timeout: 30000 }, async () => {
  const r$ = rig();
  try {
    const sim = await r$.sim();
    const cfg = config(sim);
    const gw = await r$.gateway(cfg);
    const from = gw.output.text.length;
    rewrite(gw, { ...cfg, listeners: [{ address: '127.0.0.1:0' }, { address: '127.0.0.1:0' }] });
    assert.equal((await adminReload(gw)).status, 200);
    // The log reaches us on its own pipe, possibly after the HTTP answer.
    await waitFor(() => / reloaded /.test(gw.output.text.slice(from)), 'the reload logged');
    const ports = [...gw.output.text.slice(from).matchAll(/listening on 127\.0\.0\.1:(\d+)/g)].map((m) => Number(m[1]));
    assert.equal(ports.length, 2, gw.output.text.slice(from));
    assert.equal(ports[0], gw.port, 'the first listener kept its socket');
    const added = ports[1];
    assert.notEqual(added, gw.port);
    const h2 = await curl(['--http2-prior-knowledge', '-H', 'authorization: Bearer sk-alice', '-H', 'content-type: application/json',
      '--data-binary', JSON.stringify(chatBody({ max_tokens: 1 })), `http://127.0.0.1:${added}/v1/chat/completions`]);
    assert.equal(h2.status, 200, h2.stderr);
    assert.equal(h2.httpVersion, '2');

    rewrite(gw, cfg);
    assert.equal((await adminReload(gw)).status, 200);
    const gone = await curl(['-H', 'authorization: Bearer sk-alice', `http://127.0.0.1:${added}/v1/models`]);
    assert.equal(gone.status, 0, 'the removed listener no longer accepts');
    assert.match(gone.stderr, /refused|connect/i);
    assert.equal((await chat(gw.url, 'sk-alice')).status, 200, 'the kept listener serves');
  } finally {
    await r$.close();
  }
});
