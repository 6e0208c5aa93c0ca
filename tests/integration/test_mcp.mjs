// MCP through obleth with real peers: the official TypeScript SDK client
// (StreamableHTTPClientTransport) and the reference server
// @modelcontextprotocol/server-everything in its Streamable HTTP mode, both
// pinned in tests/clients. Between obleth and every server instance sits a
// recording proxy (tests/mcp/recorder.mjs), so each assertion about what
// reached a server reads a record of what that server received.
//
// Covered: a whole session through the gateway (initialize, tools/list,
// tools/call, progress and log notifications streamed live, resumption with
// Last-Event-ID, DELETE), the per-tenant tool policy (denied calls answered
// by the gateway, tools/list filtered on SSE and on JSON answers), keys
// refused before anything is forwarded and never forwarded, session
// affinity across two instances with wrapped session ids and 404 for ids
// the gateway cannot route, -32700 for bodies that are not JSON, the
// per-tenant cap on open GET streams (also fleet-wide across two replicas in
// cluster mode, on a real redis-server), and the mcp= part of the log line.
import test from 'node:test';
import assert from 'node:assert/strict';
import { startObleth, startRedis, stop, clientRequire, sleep, until, rig } from './lib.mjs';
import { WAIT_MS, waitFor } from './lib.mjs';
import { startEverything } from '../mcp/everything.mjs';
import { startRecorder } from '../mcp/recorder.mjs';
import { startJsonServer } from '../mcp/json-server.mjs';

const { Client } = clientRequire('@modelcontextprotocol/sdk/client/index.js');
const { StreamableHTTPClientTransport, StreamableHTTPError } = clientRequire('@modelcontextprotocol/sdk/client/streamableHttp.js');
const { McpError } = clientRequire('@modelcontextprotocol/sdk/types.js');

const ALICE_TOOLS = ['echo', 'get-sum'];
const DENIED = 'get-env'; // exists on both servers, not in alice's list
const ACCEPT = 'application/json, text/event-stream';
// Every SDK request gives up after WAIT_MS (30 s; the SDK's default is
// 60 s), so a gateway that withholds an answer fails the test with a
// message instead of running it into meson's timeout.
const T = { timeout: WAIT_MS };

// ---- the rig: everything a test starts, stopped in reverse order ----

function mcpRig() {
  const r = rig();
  // One server-everything instance behind its own recorder.
  r.everything = async () => {
    const ev = await startEverything();
    r.defer(() => stop(ev.proc));
    const rec = await startRecorder(ev.port, { name: `everything:${ev.port}` });
    const x = { ...ev, rec, closed: false };
    r.defer(() => { if (!x.closed) return rec.close(); });
    // Stop the server and its recorder: the endpoint is gone.
    x.kill = async () => { x.closed = true; await rec.close(); await stop(ev.proc); };
    return x;
  };
  // The SDK's own server in JSON-answer mode behind a recorder.
  r.jsonServer = async () => {
    const js = await startJsonServer();
    r.defer(() => js.close());
    const rec = await startRecorder(js.port, { name: `json:${js.port}` });
    r.defer(() => rec.close());
    return { ...js, rec };
  };
  r.track = (c) => { r.defer(async () => { try { await c.close(); } catch {} }); return c; };
  return r;
}

// mcp_tools is keyed by upstream name, and the config refuses names of
// upstreams it does not have.
function tenants(upstream) {
  return [
    { name: 'alice', keys: [{ id: 'a', secret: 'sk-alice' }], max_streams: 2, mcp_tools: { [upstream]: ALICE_TOOLS } },
    { name: 'bob', keys: [{ id: 'b', secret: 'sk-bob' }] },
  ];
}

function mcpConfig(servers, { name = 'everything', upstream = {}, extra = {} } = {}) {
  return {
    upstreams: [{ name, endpoints: servers.map((s) => s.rec.url), max_inflight: 4, ...upstream }],
    routes: [{ prefix: '/mcp', class: 'mcp', upstream: name }],
    tenants: tenants(name),
    mcp: { session_secret: 'test-secret' },
    timeouts: { grace_ms: 3000 },
    ...extra,
  };
}

// ---- the SDK client ----

// Connect an SDK client to url (…/mcp) with a key. Every response the
// client's transport receives is noted in `seen` (method, status,
// mcp-session-id, content-type), notifications in `notes` (with arrival
// times), transport errors in `errors`.
async function sdk(url, key, { name = 'obleth-test', keyHeader = 'authorization', env } = {}) {
  const seen = [], notes = [], errors = [];
  const headers = key === undefined ? {} : keyHeader === 'authorization' ? { authorization: `Bearer ${key}` } : { [keyHeader]: key };
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers },
    reconnectionOptions: { maxRetries: 0, initialReconnectionDelay: 100, maxReconnectionDelay: 100, reconnectionDelayGrowFactor: 1 },
    fetch: async (u, init) => {
      const r = await fetch(u, init);
      seen.push({ method: init?.method, status: r.status, sessionId: r.headers.get('mcp-session-id'), contentType: r.headers.get('content-type') });
      return r;
    },
  });
  const client = new Client({ name, version: '1.0.0' });
  client.fallbackNotificationHandler = async (n) => { notes.push({ ...n, at: Date.now() }); };
  transport.onerror = (e) => errors.push(e);
  const c = { client, transport, seen, notes, errors, close: () => client.close() };
  if (env) env.track(c);
  await client.connect(transport, T); // chains the client's onerror after ours
  return c;
}

// ---- raw HTTP ----

function sseEvents(text) {
  return text.split(/\r?\n\r?\n/).map((block) => {
    const ev = { id: undefined, event: undefined, data: [] };
    for (const line of block.split(/\r?\n/)) {
      const m = line.match(/^([a-z]+): ?(.*)$/i);
      if (!m) continue;
      if (m[1] === 'data') ev.data.push(m[2]);
      else if (m[1] === 'id') ev.id = m[2];
      else if (m[1] === 'event') ev.event = m[2];
    }
    return { ...ev, data: ev.data.join('\n') };
  }).filter((e) => e.id !== undefined || e.data.length);
}

// The JSON-RPC messages of a response body, SSE or JSON.
function messagesOf(contentType, text) {
  const ct = (contentType || '').toLowerCase();
  let list = [];
  if (ct.startsWith('text/event-stream')) {
    for (const e of sseEvents(text)) if (e.data.trim()) list.push(JSON.parse(e.data));
  } else if (ct.startsWith('application/json') && text.trim()) {
    list.push(JSON.parse(text));
  }
  return list.flat();
}

function keyHeaders(key, header = 'authorization') {
  if (key === undefined) return {};
  return header === 'authorization' ? { authorization: `Bearer ${key}` } : { [header]: key };
}

async function post(url, body, { key, keyHeader, sid, version, accept = ACCEPT, headers = {}, timeout = WAIT_MS } = {}) {
  const h = { 'content-type': 'application/json', accept, ...keyHeaders(key, keyHeader), ...headers };
  if (sid) h['mcp-session-id'] = sid;
  if (version) h['mcp-protocol-version'] = version;
  const what = `POST ${typeof body === 'string' ? body.slice(0, 60) : JSON.stringify(body).slice(0, 120)}`;
  let r, text;
  try {
    r = await fetch(url, { method: 'POST', headers: h, body: typeof body === 'string' ? body : JSON.stringify(body), signal: AbortSignal.timeout(timeout) });
    text = await r.text();
  } catch (e) {
    const head = r && `status ${r.status} ${r.headers.get('content-type')} content-length ${r.headers.get('content-length')}, body not complete`;
    throw new Error(`${what}: ${head || 'no response'} after ${timeout} ms (${e.name}: ${e.message})`);
  }
  const contentType = r.headers.get('content-type') || '';
  let messages = [];
  try { messages = messagesOf(contentType, text); } catch (e) { messages = { error: e.message }; }
  return { status: r.status, headers: r.headers, contentType, sid: r.headers.get('mcp-session-id'), text, messages };
}

async function del(url, { key, sid, version } = {}) {
  const h = { ...keyHeaders(key) };
  if (sid) h['mcp-session-id'] = sid;
  if (version) h['mcp-protocol-version'] = version;
  const r = await fetch(url, { method: 'DELETE', headers: h, signal: AbortSignal.timeout(WAIT_MS) });
  return { status: r.status, text: await r.text() };
}

// Open a GET event stream and keep reading it in the background; resolves
// once the response head arrived: { status, contentType, text (grows),
// close() }.
async function openGet(url, { key, sid, version, lastEventId } = {}) {
  const ac = new AbortController();
  const h = { accept: 'text/event-stream', ...keyHeaders(key) };
  if (sid) h['mcp-session-id'] = sid;
  if (version) h['mcp-protocol-version'] = version;
  if (lastEventId) h['last-event-id'] = lastEventId;
  const timer = setTimeout(() => ac.abort(new Error(`no response head within ${WAIT_MS} ms`)), WAIT_MS);
  let r;
  try { r = await fetch(url, { method: 'GET', headers: h, signal: ac.signal }); } finally { clearTimeout(timer); }
  const out = { status: r.status, contentType: r.headers.get('content-type') || '', text: '', ended: false, close: () => ac.abort() };
  if (!r.ok) { out.text = await r.text(); out.ended = true; return out; }
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  (async () => {
    try { for (;;) { const { done, value } = await reader.read(); if (done) break; out.text += dec.decode(value, { stream: true }); } } catch {}
    out.ended = true;
  })();
  return out;
}

const initBody = (name, version, id = 1) => ({
  jsonrpc: '2.0', id, method: 'initialize',
  params: { protocolVersion: version, capabilities: {}, clientInfo: { name, version: '1.0.0' } },
});

// A session made by hand: initialize, then notifications/initialized.
async function rawSession(url, key, name, version = '2025-06-18') {
  const init = await post(url, initBody(name, version), { key });
  assert.equal(init.status, 200, `initialize for ${name}: ${init.status} ${init.text.slice(0, 300)}`);
  assert.ok(init.sid, `initialize for ${name} carries an mcp-session-id`);
  const res = init.messages.find((m) => m.id === 1);
  assert.ok(res && res.result, `initialize result for ${name}: ${init.text.slice(0, 300)}`);
  const ack = await post(url, { jsonrpc: '2.0', method: 'notifications/initialized' }, { key, sid: init.sid, version });
  assert.equal(ack.status, 202, `notifications/initialized for ${name}: ${ack.status} ${ack.text.slice(0, 300)}`);
  return { sid: init.sid, version, init };
}

// ---- record helpers ----

// A sync point for "nothing (else) reached the server": an initialize sent
// now through the gateway. The recorders run in this process and record a
// request on arrival, so once the marker is answered, whatever the gateway
// forwarded before it has been recorded. Resolves { rec: the recorder that
// got it, before: that recorder's records before the marker }.
let markers = 0;
async function marker(url, recs, key = 'sk-bob') {
  const name = `marker-${++markers}`;
  const r = await post(url, initBody(name, '2025-06-18'), { key });
  assert.equal(r.status, 200, `marker ${name}: ${r.status} ${r.text.slice(0, 300)}`);
  const rec = recs.find((x) => initRecord(x, name));
  assert.ok(rec, `marker ${name} reached a server`);
  return { rec, before: rec.records.slice(0, rec.records.indexOf(initRecord(rec, name))) };
}

// The initialize a server received from the client named `name`.
function initRecord(rec, name) {
  return rec.records.find((r) => r.json && r.json.method === 'initialize' && r.json.params?.clientInfo?.name === name);
}

// No request that reached a server carried a tenant's key, in any header.
function assertNoKeyForwarded(recs, secrets = ['sk-alice', 'sk-bob']) {
  for (const rec of recs) {
    for (const r of rec.records) {
      for (const [h, v] of Object.entries(r.headers)) {
        for (const s of secrets) assert.ok(!String(v).includes(s), `${rec.name}: request ${r.seq} (${r.method}) carried the key ${s} in ${h}`);
      }
      assert.equal(r.headers['x-api-key'], undefined, `${rec.name}: request ${r.seq} carried x-api-key`);
    }
  }
}

const toolNames = (list) => list.map((t) => t.name).sort();

// ---------------------------------------------------------------- sanity

test('sanity, without obleth: the SDK client and server-everything as the gateway will meet them', { timeout: 20000 }, async () => {
  const env = mcpRig();
  try {
    const ev = await env.everything();
    const c = await sdk(`${ev.rec.url}/mcp`, undefined, { name: 'sanity', env });
    const tools = toolNames((await c.client.listTools(undefined, T)).tools);
    for (const t of [...ALICE_TOOLS, DENIED, 'trigger-long-running-operation', 'toggle-simulated-logging'])
      assert.ok(tools.includes(t), `server-everything lists ${t}: ${tools}`);
    const r = await c.client.callTool({ name: 'echo', arguments: { message: 'direct' } }, undefined, T);
    assert.equal(r.content[0].text, 'Echo: direct');
    const init = initRecord(ev.rec, 'sanity');
    // What the gateway has to handle: every request answered as an SSE
    // stream (a priming event with an id and empty data first, for
    // 2025-11-25), the session id in a lower-case mcp-session-id header on
    // every answer, notifications answered 202 without a body.
    assert.match(init.contentType, /^text\/event-stream/);
    assert.match(init.resSessionId, /^[0-9a-f-]{36}$/);
    assert.equal(init.json.params.protocolVersion, '2025-11-25', 'the SDK client offers 2025-11-25');
    assert.match(init.resBody, /^id: \S+\ndata: \n\n/, 'priming event first');
    const list = ev.rec.rpcCalls('tools/list')[0];
    assert.match(list.contentType, /^text\/event-stream/);
    assert.equal(list.resSessionId, init.resSessionId, 'the session id header comes on every answer');
    assert.equal(list.protocolVersion, '2025-11-25');
    const note = ev.rec.rpcCalls('notifications/initialized')[0];
    assert.equal(note.status, 202);
    const get = await ev.rec.waitFor((x) => x.method === 'GET');
    assert.ok(get, 'the SDK client opens the GET stream after initialization');
    await c.transport.terminateSession();
    const d = ev.rec.records.find((x) => x.method === 'DELETE');
    assert.equal(d.status, 200);
    assert.equal(d.sessionId, init.resSessionId);
    // An accept without text/event-stream is refused by the server (406):
    // server-everything never answers a request as application/json.
    const j = await post(ev.url, initBody('json-only', '2025-06-18'), { accept: 'application/json' });
    assert.equal(j.status, 406);
    // An unknown session id is a 400 from server-everything, not a 404:
    // the gateway's 404 for ids it cannot route must be its own.
    const u = await post(ev.url, { jsonrpc: '2.0', id: 1, method: 'tools/list' }, { sid: 'made-up', version: '2025-06-18' });
    assert.equal(u.status, 400);
    // the SDK server in JSON mode answers application/json
    const js = await env.jsonServer();
    const cj = await sdk(`${js.rec.url}/mcp`, undefined, { name: 'sanity-json', env });
    assert.deepEqual(toolNames((await cj.client.listTools(undefined, T)).tools), ['echo', 'get-env', 'get-sum']);
    assert.match(js.rec.rpcCalls('tools/list')[0].contentType, /^application\/json/);
  } finally {
    await env.close();
  }
});

// ---------------------------------------------------------------- 1

test('a whole session through obleth with the SDK client: tools, live progress and log notifications, resumption, DELETE', { timeout: 20000 }, async () => {
  const env = mcpRig();
  try {
    const ev = await env.everything();
    const gw = await env.gateway(mcpConfig([ev]));
    const url = `${gw.url}/mcp`;
    const c = await sdk(url, 'sk-bob', { name: 'whole', env });
    const wrapped = c.transport.sessionId;
    assert.ok(wrapped, 'the client got a session id');
    const init = initRecord(ev.rec, 'whole');
    assert.ok(init, 'initialize reached the server');
    const serverSid = init.resSessionId;
    assert.notEqual(wrapped, serverSid, 'the client sees a wrapped id, not the server\'s');

    const tools = toolNames((await c.client.listTools(undefined, T)).tools);
    assert.ok(tools.includes('echo') && tools.includes('trigger-long-running-operation'), `bob lists every tool: ${tools}`);
    const e = await c.client.callTool({ name: 'echo', arguments: { message: 'through obleth' } }, undefined, T);
    assert.equal(e.content[0].text, 'Echo: through obleth');

    // progress notifications on the POST's SSE answer, each as it happens
    // (live: the server had not finished the call when the first arrived)
    const progress = [];
    const longCall = () => ev.rec.rpcCalls('tools/call').find((r) => r.rpc[0].tool === 'trigger-long-running-operation');
    const lr = await c.client.callTool({ name: 'trigger-long-running-operation', arguments: { duration: 1.2, steps: 3 } },
      undefined, { timeout: WAIT_MS, onprogress: (p) => progress.push({ ...p, serverDone: longCall()?.ended }) });
    assert.match(lr.content[0].text, /Long running operation completed/);
    assert.deepEqual(progress.map((p) => p.progress), [1, 2, 3]);
    assert.equal(progress[0].serverDone, false, 'the first progress arrived while the server was still working');

    // the GET stream: a log notification pushed by the server arrives
    const get = await ev.rec.waitFor((r) => r.method === 'GET' && r.sessionId === serverSid, 3000);
    assert.ok(get, 'the SDK client\'s GET stream reached the server with the server\'s session id');
    assert.equal(get.status, 200);
    const before = c.notes.length;
    const tog = await c.client.callTool({ name: 'toggle-simulated-logging', arguments: {} }, undefined, T);
    assert.match(tog.content[0].text, /Started simulated/);
    const log = await until(() => c.notes.slice(before).find((n) => n.method === 'notifications/message'));
    assert.ok(log, `a log notification came over the GET stream: ${JSON.stringify(c.notes)}`);
    assert.match(log.params.data, new RegExp(`SessionId ${serverSid}`));

    // resumption: Last-Event-ID passes through; the server replays the
    // echo answer that followed the priming event of that POST stream
    const echoRec = ev.rec.rpcCalls('tools/call').find((r) => r.rpc[0].tool === 'echo');
    const prime = echoRec.resBody.match(/^id: (\S+)/m)[1];
    const version = c.transport.protocolVersion;
    const resumed = await openGet(url, { key: 'sk-bob', sid: c.transport.sessionId, version, lastEventId: prime });
    try {
      assert.equal(resumed.status, 200, resumed.text);
      assert.match(resumed.contentType, /^text\/event-stream/);
      const replay = await until(() => resumed.text.includes('Echo: through obleth'));
      assert.ok(replay, `replayed events arrived: ${JSON.stringify(resumed.text)}`);
      const rg = ev.rec.records.find((r) => r.method === 'GET' && r.lastEventId === prime);
      assert.ok(rg, 'the server received Last-Event-ID');
      assert.equal(rg.sessionId, serverSid);
    } finally {
      resumed.close();
    }

    // every request of the session reached the server with its own id and
    // the negotiated MCP-Protocol-Version
    const mine = ev.rec.records.filter((r) => r !== init);
    assert.ok(mine.length >= 6);
    for (const r of mine) {
      assert.equal(r.sessionId, serverSid, `${r.method} ${JSON.stringify(r.rpc)} carried the server's session id`);
      assert.equal(r.protocolVersion, version, `${r.method} ${JSON.stringify(r.rpc)} carried MCP-Protocol-Version`);
    }
    const held = c.transport.sessionId;
    await c.transport.terminateSession();
    assert.equal(c.transport.sessionId, undefined);
    const d = await ev.rec.waitFor((r) => r.method === 'DELETE');
    assert.ok(d, 'DELETE reached the server');
    assert.equal(d.sessionId, serverSid);
    assert.equal(d.status, 200);
    assertNoKeyForwarded([ev.rec]);

    // One session, one id: the server repeats its id on every answer, and
    // the SDK client adopts whatever id an answer carries, so each answer
    // must carry the very id the client got from initialize.
    const shown = c.seen.filter((s) => s.sessionId !== null);
    assert.deepEqual([...new Set(shown.map((s) => s.sessionId))], [wrapped],
      `the client saw one stable session id, not one per answer: ${shown.map((s) => `${s.method} ${s.sessionId.slice(0, 16)}…`).join(', ')}`);
    assert.equal(held, wrapped, 'the client still held the id from initialize');
  } finally {
    await env.close();
  }
});

// ---------------------------------------------------------------- 2

test('tool policy: a denied tools/call is answered by the gateway (-32602, same id) and never reaches the server; tools/list filtered on SSE answers', { timeout: 20000 }, async () => {
  const env = mcpRig();
  try {
    const ev = await env.everything();
    const gw = await env.gateway(mcpConfig([ev]));
    const url = `${gw.url}/mcp`;

    const alice = await sdk(url, 'sk-alice', { name: 'alice-sdk', env });
    assert.deepEqual(toolNames((await alice.client.listTools(undefined, T)).tools), ALICE_TOOLS, 'alice sees exactly her tools');
    const ok = await alice.client.callTool({ name: 'echo', arguments: { message: 'allowed' } }, undefined, T);
    assert.equal(ok.content[0].text, 'Echo: allowed');
    await assert.rejects(alice.client.callTool({ name: DENIED, arguments: {} }, undefined, T), (e) => {
      assert.ok(e instanceof McpError, `a JSON-RPC error, got ${e}`);
      assert.equal(e.code, -32602, e.message);
      return true;
    });
    await assert.rejects(alice.client.callTool({ name: 'trigger-long-running-operation', arguments: { duration: 0.1, steps: 1 } }, undefined, T),
      (e) => e instanceof McpError && e.code === -32602);

    // raw: the error carries the request's own id (string and number)
    const s = await rawSession(url, 'sk-alice', 'alice-raw', '2025-06-18');
    for (const id of ['call-7', 4242]) {
      const r = await post(url, { jsonrpc: '2.0', id, method: 'tools/call', params: { name: DENIED, arguments: {} } }, { key: 'sk-alice', sid: s.sid, version: s.version });
      assert.equal(r.status, 200, `${r.status} ${r.text}`);
      assert.ok(Array.isArray(r.messages) && r.messages.length === 1, `one JSON-RPC message: ${r.contentType} ${r.text}`);
      const m = r.messages[0];
      assert.equal(m.jsonrpc, '2.0');
      assert.deepEqual(m.id, id);
      assert.equal(m.error?.code, -32602, r.text);
      assert.equal(m.result, undefined);
    }

    // bob sees every tool the server has (as a direct client sees them)
    const bob = await sdk(url, 'sk-bob', { name: 'bob-sdk', env });
    const direct = await sdk(`${ev.rec.url}/mcp`, undefined, { name: 'direct', env });
    const all = toolNames((await direct.client.listTools(undefined, T)).tools);
    assert.deepEqual(toolNames((await bob.client.listTools(undefined, T)).tools), all, 'bob sees all tools');
    assert.ok(all.includes(DENIED) && all.length > ALICE_TOOLS.length);
    const b = await bob.client.callTool({ name: DENIED, arguments: {} }, undefined, T);
    assert.ok(b.content?.length, 'bob may call it');

    // the server answered alice's tools/list in full: the gateway filtered it
    const aliceSid = initRecord(ev.rec, 'alice-sdk').resSessionId;
    const aliceList = ev.rec.records.find((r) => r.sessionId === aliceSid && r.rpc.some((m) => m.method === 'tools/list'));
    assert.ok(aliceList.resBody.includes(`"name":"${DENIED}"`), 'the server sent the full list');

    await marker(url, [ev.rec]);
    const denied = ev.rec.rpcCalls('tools/call').filter((r) => r.rpc.some((m) => m.tool === DENIED || m.tool === 'trigger-long-running-operation'));
    assert.equal(denied.length, 1, `only bob's call of ${DENIED} reached the server: ${JSON.stringify(denied.map((r) => r.rpc))}`);
    assert.notEqual(denied[0].sessionId, aliceSid);
    assert.equal(denied[0].sessionId, initRecord(ev.rec, 'bob-sdk').resSessionId);
    assertNoKeyForwarded([ev.rec]);

    // raw tools/list on the server's SSE answer, 2025-06-18 and 2025-03-26
    // (without the 2025-11-25 priming event, server-everything's SSE answer
    // is often complete at once and then comes with a Content-Length)
    for (const version of ['2025-06-18', '2025-03-26']) {
      const v = await rawSession(url, 'sk-alice', `alice-${version}`, version);
      const r = await post(url, { jsonrpc: '2.0', id: 11, method: 'tools/list' }, { key: 'sk-alice', sid: v.sid, version });
      assert.equal(r.status, 200, r.text);
      assert.match(r.contentType, /^text\/event-stream/, 'server-everything answers tools/list as SSE');
      const res = r.messages.find((m) => m.id === 11);
      assert.ok(res?.result, r.text);
      assert.deepEqual(toolNames(res.result.tools), ALICE_TOOLS, `alice's SSE tools/list (${version})`);
    }
  } finally {
    await env.close();
  }
});

test('tool policy: tools/list filtered on application/json answers too (the SDK server in JSON mode)', { timeout: 20000 }, async () => {
  const env = mcpRig();
  try {
    const js = await env.jsonServer();
    const gw = await env.gateway(mcpConfig([js], { name: 'jsonmcp' }));
    const url = `${gw.url}/mcp`;
    const alice = await sdk(url, 'sk-alice', { name: 'alice-json', env });
    assert.deepEqual(toolNames((await alice.client.listTools(undefined, T)).tools), ALICE_TOOLS);
    const s = await rawSession(url, 'sk-alice', 'alice-json-raw');
    const r = await post(url, { jsonrpc: '2.0', id: 'l1', method: 'tools/list' }, { key: 'sk-alice', sid: s.sid, version: s.version });
    assert.equal(r.status, 200, r.text);
    assert.match(r.contentType, /^application\/json/);
    const body = JSON.parse(r.text);
    assert.equal(body.id, 'l1');
    assert.deepEqual(toolNames(body.result.tools), ALICE_TOOLS);
    assert.equal(Number(r.headers.get('content-length') ?? Buffer.byteLength(r.text)), Buffer.byteLength(r.text), 'content-length matches the rewritten body');
    await assert.rejects(alice.client.callTool({ name: DENIED, arguments: {} }, undefined, T), (e) => e instanceof McpError && e.code === -32602);
    const bob = await sdk(url, 'sk-bob', { name: 'bob-json', env });
    assert.deepEqual(toolNames((await bob.client.listTools(undefined, T)).tools), ['echo', 'get-env', 'get-sum']);
    const listed = js.rec.rpcCalls('tools/list');
    assert.ok(listed.length >= 3);
    for (const l of listed) assert.match(l.contentType, /^application\/json/);
    await marker(url, [js.rec]);
    const calls = js.rec.rpcCalls('tools/call');
    assert.equal(calls.length, 0, `no tools/call reached the server: ${JSON.stringify(calls.map((c) => c.rpc))}`);
  } finally {
    await env.close();
  }
});

// ---------------------------------------------------------------- 3

test('identity: a missing or unknown key is 401 before anything reaches the server; keys are never forwarded', { timeout: 20000 }, async () => {
  const env = mcpRig();
  try {
    const ev = await env.everything();
    const gw = await env.gateway(mcpConfig([ev]));
    const url = `${gw.url}/mcp`;
    const cases = [
      ['no key', {}],
      ['unknown bearer', { key: 'sk-nobody' }],
      ['unknown x-api-key', { key: 'sk-nobody', keyHeader: 'x-api-key' }],
      ['empty bearer', { headers: { authorization: 'Bearer ' } }],
    ];
    for (const [what, opts] of cases) {
      const r = await post(url, initBody(`refused-${what}`, '2025-06-18'), opts);
      assert.equal(r.status, 401, `${what}: ${r.status} ${r.text}`);
    }
    const g = await openGet(url, { sid: 'whatever' });
    assert.equal(g.status, 401, `GET without key: ${g.status}`);
    assert.equal((await del(url, { sid: 'whatever' })).status, 401, 'DELETE without key');
    await assert.rejects(sdk(url, 'sk-wrong', { name: 'sdk-wrong', env }), (e) => {
      assert.ok(e instanceof StreamableHTTPError, `${e}`);
      assert.equal(e.code, 401);
      return true;
    });
    const { before: first } = await marker(url, [ev.rec]);
    assert.equal(first.length, 0, `nothing reached the server: ${JSON.stringify(first.map((r) => [r.method, r.rpc]))}`);

    // the right keys pass, in either header, and are not forwarded
    await rawSession(url, 'sk-bob', 'bob-bearer', '2025-06-18');
    const x = await post(url, initBody('bob-xkey', '2025-06-18'), { key: 'sk-bob', keyHeader: 'x-api-key' });
    assert.equal(x.status, 200, x.text);
    const c = await sdk(url, 'sk-alice', { name: 'alice-ok', env });
    await c.client.listTools(undefined, T);
    assert.ok(ev.rec.records.length >= 4);
    assertNoKeyForwarded([ev.rec]);
  } finally {
    await env.close();
  }
});

// ---------------------------------------------------------------- 4

test('affinity: six sessions over two instances each stay on the instance that created them; unreadable or gone sessions are 404', { timeout: 20000 }, async () => {
  const env = mcpRig();
  try {
    const a = await env.everything();
    const b = await env.everything();
    const gw = await env.gateway(mcpConfig([a, b]));
    const url = `${gw.url}/mcp`;
    const recs = [a.rec, b.rec];
    const sessions = [];
    for (let i = 0; i < 6; i++) {
      const name = `aff-${i}`;
      const c = await sdk(url, 'sk-bob', { name, env });
      const wrapped = c.transport.sessionId;
      await c.client.listTools(undefined, T);
      const r = await c.client.callTool({ name: 'echo', arguments: { message: name } }, undefined, T);
      assert.equal(r.content[0].text, `Echo: ${name}`);
      sessions.push({ name, c, wrapped });
    }
    // wait until every session's GET stream is open upstream
    for (const s of sessions) {
      const home = recs.find((rec) => initRecord(rec, s.name));
      assert.ok(home, `${s.name}: its initialize reached one instance`);
      assert.equal(recs.filter((rec) => initRecord(rec, s.name)).length, 1, `${s.name}: initialize reached exactly one instance`);
      s.home = home;
      s.serverSid = initRecord(home, s.name).resSessionId;
      assert.ok(await home.waitFor((r) => r.method === 'GET' && r.sessionId === s.serverSid, 3000), `${s.name}: GET stream on its instance`);
    }
    for (const s of sessions) await s.c.transport.terminateSession();
    for (const s of sessions) assert.ok(await s.home.waitFor((r) => r.method === 'DELETE' && r.sessionId === s.serverSid), `${s.name}: DELETE on its instance`);

    const used = new Set(sessions.map((s) => s.home.name));
    assert.equal(used.size, 2, `the six sessions were spread over both instances: ${sessions.map((s) => s.home.name)}`);
    for (const s of sessions) {
      assert.ok(s.wrapped && s.serverSid);
      assert.notEqual(s.wrapped, s.serverSid, `${s.name}: wrapped id differs from the server's`);
      const other = recs.find((r) => r !== s.home);
      const there = other.records.filter((r) => r.sessionId === s.serverSid || r.sessionId === s.wrapped);
      assert.equal(there.length, 0, `${s.name}: nothing of it reached the other instance`);
      const here = s.home.records.filter((r) => r.sessionId === s.serverSid);
      const kinds = here.map((r) => r.method === 'POST' ? r.rpc.map((m) => m.method).join('+') : r.method);
      for (const k of ['notifications/initialized', 'GET', 'tools/list', 'tools/call', 'DELETE'])
        assert.ok(kinds.includes(k), `${s.name}: ${k} reached its instance (saw ${kinds})`);
      assert.ok(here.every((r) => r.status !== 400 && r.status !== 404), `${s.name}: the server knew the session on every request: ${here.map((r) => r.status)}`);
      const calls = s.home.rpcCalls('tools/call').filter((r) => r.json.params.arguments.message === s.name);
      assert.equal(calls.length, 1);
      assert.equal(calls[0].sessionId, s.serverSid);
    }
    assert.equal(new Set(sessions.map((s) => s.wrapped)).size, 6);

    // an id the gateway cannot read: 404 from the gateway, nothing forwarded
    const before = a.rec.records.length + b.rec.records.length;
    const made = await post(url, { jsonrpc: '2.0', id: 1, method: 'tools/list' }, { key: 'sk-bob', sid: 'made-up-session-id', version: '2025-06-18' });
    assert.equal(made.status, 404, `made-up id: ${made.status} ${made.text}`);
    const w = sessions[0].wrapped;
    const tampered = w.slice(0, -2) + (w.at(-2) === 'A' ? 'B' : 'A') + w.at(-1);
    const t = await post(url, { jsonrpc: '2.0', id: 1, method: 'tools/list' }, { key: 'sk-bob', sid: tampered, version: '2025-06-18' });
    assert.equal(t.status, 404, `tampered id ${tampered}: ${t.status} ${t.text}`);
    const g = await openGet(url, { key: 'sk-bob', sid: 'made-up-session-id', version: '2025-06-18' });
    assert.equal(g.status, 404, 'GET with a made-up id');
    g.close();
    // a marker on each instance (new sessions spread over both)
    const marked = new Set();
    let sent = 0;
    while (marked.size < 2) {
      assert.ok(sent < 20, 'markers reached both instances');
      marked.add((await marker(url, recs)).rec);
      sent++;
    }
    assert.equal(a.rec.records.length + b.rec.records.length - sent, before, 'nothing reached a server');

    // an endpoint that is gone: 404, and a new session works on the other
    const live = await sdk(url, 'sk-bob', { name: 'survivor', env });
    await live.client.listTools(undefined, T);
    const home = recs.find((rec) => initRecord(rec, 'survivor'));
    const other = home === a.rec ? b : a;
    await (home === a.rec ? a : b).kill();
    await assert.rejects(live.client.callTool({ name: 'echo', arguments: { message: 'gone' } }, undefined, T), (e) => {
      assert.ok(e instanceof StreamableHTTPError, `${e}`);
      assert.equal(e.code, 404, e.message);
      return true;
    });
    const again = await sdk(url, 'sk-bob', { name: 'reborn', env });
    const r = await again.client.callTool({ name: 'echo', arguments: { message: 'reborn' } }, undefined, T);
    assert.equal(r.content[0].text, 'Echo: reborn');
    assert.ok(initRecord(other.rec, 'reborn'), 'the new session was created on the remaining instance');

    // each client saw one stable wrapped id on every answer
    for (const s of sessions) {
      const shown = new Set(s.c.seen.filter((x) => x.sessionId !== null).map((x) => x.sessionId));
      assert.deepEqual([...shown], [s.wrapped], `${s.name}: one session id on every answer, saw ${shown.size}`);
    }
  } finally {
    await env.close();
  }
});

// ---------------------------------------------------------------- 5

test('a body that is not JSON is 400 with a -32700 JSON-RPC error from the gateway; the gateway keeps serving', { timeout: 20000 }, async () => {
  const env = mcpRig();
  try {
    const ev = await env.everything();
    const gw = await env.gateway(mcpConfig([ev]));
    const url = `${gw.url}/mcp`;
    const s = await rawSession(url, 'sk-bob', 'malformed', '2025-06-18');
    const before = ev.rec.records.length;
    for (const [what, body, sid] of [['no session', 'this is not json', undefined], ['truncated, in a session', '{"jsonrpc":"2.0","id":1,"method":"tools/li', s.sid], ['bare brace', '{', s.sid]]) {
      const r = await post(url, body, { key: 'sk-bob', sid, version: s.version });
      assert.equal(r.status, 400, `${what}: ${r.status} ${r.text}`);
      assert.match(r.contentType, /^application\/json/, what);
      const e = JSON.parse(r.text);
      assert.equal(e.jsonrpc, '2.0', what);
      assert.equal(e.id, null, what);
      assert.equal(e.error?.code, -32700, `${what}: ${r.text}`);
      assert.equal(typeof e.error.message, 'string');
    }
    assert.equal((await marker(url, [ev.rec])).before.length, before, 'the gateway answered them itself');
    const ok = await post(url, { jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'echo', arguments: { message: 'still here' } } }, { key: 'sk-bob', sid: s.sid, version: s.version });
    assert.equal(ok.status, 200);
    assert.equal(ok.messages.find((m) => m.id === 2)?.result?.content[0].text, 'Echo: still here');
  } finally {
    await env.close();
  }
});

// A body the gateway's parser (cJSON: the first of two equal keys, strings
// cut at \u0000) and the server's (JSON.parse: the last key, the whole
// string) read differently would have the gateway check one call and the
// server run another. Each is 400 with a -32600 JSON-RPC error and reaches
// no server; the session keeps working.
test('ambiguous JSON-RPC bodies (duplicate keys, also escaped, in a message, its params or a batch; \\u0000) are 400 -32600 and never reach the server', { timeout: 20000 }, async () => {
  const env = mcpRig();
  try {
    const ev = await env.everything();
    const gw = await env.gateway(mcpConfig([ev]));
    const url = `${gw.url}/mcp`;
    const s = await rawSession(url, 'sk-alice', 'ambiguous', '2025-06-18');
    const attacks = {
      'duplicate params.name': `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"${DENIED}","arguments":{}}}`,
      'escaped duplicate params.name': `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","n\\u0061me":"${DENIED}","arguments":{}}}`,
      'duplicate method': `{"jsonrpc":"2.0","id":3,"method":"tools/list","method":"tools/call","params":{"name":"${DENIED}","arguments":{}}}`,
      'two params objects': `{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"echo","arguments":{"message":"x"}},"params":{"name":"${DENIED}","arguments":{}}}`,
      'duplicate id (the tools/list filter follows the first)': '{"jsonrpc":"2.0","id":5,"id":6,"method":"tools/list"}',
      'duplicate params.name in a batch': `[{"jsonrpc":"2.0","id":7,"method":"tools/list"},{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"echo","name":"${DENIED}","arguments":{}}}]`,
      '\\u0000 in the tool name': `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo\\u0000${DENIED}","arguments":{}}}`,
      '\\u0000 in a params key': `{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name\\u0000":"echo","name":"${DENIED}","arguments":{}}}`,
    };
    const before = ev.rec.records.length;
    for (const [what, body] of Object.entries(attacks)) {
      JSON.parse(body); // each is JSON as far as the server is concerned
      const r = await post(url, body, { key: 'sk-alice', sid: s.sid, version: s.version });
      assert.equal(r.status, 400, `${what}: ${r.status} ${r.text}`);
      assert.match(r.contentType, /^application\/json/, what);
      const e = JSON.parse(r.text);
      assert.equal(e.jsonrpc, '2.0', what);
      assert.equal(e.id, null, what);
      assert.equal(e.error?.code, -32600, `${what}: ${r.text}`);
      assert.equal(typeof e.error.message, 'string', what);
    }
    const tru = await post(url, '{"jsonrpc":"2.0","id":11,"method":"tools/list","params":{"cursor":tru}}', { key: 'sk-alice', sid: s.sid, version: s.version });
    assert.equal(tru.status, 400, tru.text);
    assert.equal(JSON.parse(tru.text).error?.code, -32700, `tru is not JSON: ${tru.text}`);
    // The gateway decides before it forwards; this allowed call is the next
    // thing the server sees.
    const ok = await post(url, { jsonrpc: '2.0', id: 12, method: 'tools/call', params: { name: 'echo', arguments: { message: 'still here' } } }, { key: 'sk-alice', sid: s.sid, version: s.version });
    assert.equal(ok.status, 200, ok.text);
    assert.equal(ok.messages.find((m) => m.id === 12)?.result?.content[0].text, 'Echo: still here');
    const reached = ev.rec.records.slice(before).map((r) => r.rpc);
    assert.deepEqual(reached, [[{ method: 'tools/call', id: 12, tool: 'echo' }]], `only the allowed call reached the server: ${JSON.stringify(reached)}`);
  } finally {
    await env.close();
  }
});

// ---------------------------------------------------------------- 6

test('GET streams: at most max_streams per tenant (429 beyond, before the server), freed on close; not counted as in-flight, while POSTs are', { timeout: 20000 }, async () => {
  const env = mcpRig();
  try {
    const ev = await env.everything();
    const gw = await env.gateway(mcpConfig([ev], { upstream: { max_inflight: 2 } }));
    const url = `${gw.url}/mcp`;
    const ss = [];
    for (let i = 0; i < 3; i++) ss.push(await rawSession(url, 'sk-alice', `streams-${i}`, '2025-06-18'));
    const sid = (i) => initRecord(ev.rec, `streams-${i}`).resSessionId;
    const open = [];
    try {
      for (let i = 0; i < 2; i++) {
        const g = await openGet(url, { key: 'sk-alice', sid: ss[i].sid, version: ss[i].version });
        open.push(g);
        assert.equal(g.status, 200, `stream ${i}: ${g.status} ${g.text}`);
        assert.match(g.contentType, /^text\/event-stream/);
      }
      const third = await openGet(url, { key: 'sk-alice', sid: ss[2].sid, version: ss[2].version });
      open.push(third);
      assert.equal(third.status, 429, `a third stream for alice: ${third.status} ${third.text}`);
      await marker(url, [ev.rec]);
      assert.equal(ev.rec.records.filter((r) => r.method === 'GET' && r.sessionId === sid(2)).length, 0, 'the refused GET never reached the server');

      // open streams hold no in-flight slot: with max_inflight 2 and four
      // streams open (alice 2, bob 2), POSTs are still admitted at once
      const b1 = await rawSession(url, 'sk-bob', 'streams-bob-1', '2025-06-18');
      const b2 = await rawSession(url, 'sk-bob', 'streams-bob-2', '2025-06-18');
      for (const b of [b1, b2]) {
        const g = await openGet(url, { key: 'sk-bob', sid: b.sid, version: b.version });
        open.push(g);
        assert.equal(g.status, 200, `bob's stream: ${g.status} ${g.text}`);
      }
      const calls = await Promise.all([ss[0], ss[1]].map((s, i) => post(url, { jsonrpc: '2.0', id: 5, method: 'tools/call', params: { name: 'echo', arguments: { message: `busy-${i}` } } }, { key: 'sk-alice', sid: s.sid, version: s.version })));
      for (const [i, c] of calls.entries()) {
        assert.equal(c.status, 200, c.text);
        assert.equal(c.messages.find((m) => m.id === 5)?.result?.content[0].text, `Echo: busy-${i}`);
        assert.notEqual(c.headers.get('x-obleth-admission'), 'queued', 'admitted without waiting for a stream to end');
      }

      // POSTs do hold a slot each until their answer ends: two long calls
      // take both, a third POST waits in the queue for one of them
      const long = (b, i) => post(url, { jsonrpc: '2.0', id: 20 + i, method: 'tools/call', params: { name: 'trigger-long-running-operation', arguments: { duration: 1, steps: 1 } } },
        { key: 'sk-bob', sid: b.sid, version: b.version });
      const ends = [];
      const holders = [long(b1, 0), long(b2, 1)].map((h) => h.then((r) => { ends.push('long'); return r; }));
      for (const id of [20, 21]) assert.ok(await ev.rec.waitFor((r) => r.json?.id === id), `long call ${id} reached the server`);
      const queued = await post(url, { jsonrpc: '2.0', id: 30, method: 'tools/call', params: { name: 'echo', arguments: { message: 'queued' } } }, { key: 'sk-alice', sid: ss[0].sid, version: ss[0].version });
      ends.push('queued');
      assert.equal(queued.status, 200, queued.text);
      assert.equal(queued.headers.get('x-obleth-admission'), 'queued', 'the third POST waited for a slot');
      assert.equal(ends[0], 'long', `it waited for a long call to end (${ends})`);
      for (const h of await Promise.all(holders)) assert.match(h.messages.find((m) => m.result)?.result.content[0].text ?? h.text, /Long running operation completed/);

      // closing one of alice's streams frees its place
      open[0].close();
      const fourth = await until(async () => {
        const g = await openGet(url, { key: 'sk-alice', sid: ss[2].sid, version: ss[2].version });
        if (g.status === 200) return g;
        g.close();
        return null;
      }, WAIT_MS, 100);
      assert.ok(fourth, 'after closing a stream alice may open another');
      open.push(fourth);
      assert.ok(await ev.rec.waitFor((r) => r.method === 'GET' && r.sessionId === sid(2) && r.status === 200, 2000), 'it reached the server');
    } finally {
      for (const g of open) g.close();
    }
  } finally {
    await env.close();
  }
});

// ---------------------------------------------------------------- 6b

// Cluster mode (docs/cluster.md): max_streams is fleet-wide. Each replica
// counts its own streams first (mcp/route.c, 2 each here, never reached),
// then asks the fleet (the "stream" op of cluster.lua) before forwarding,
// so one stream through each replica fills alice's 2.
test('cluster mode: max_streams counts a tenant\'s open GET streams across replicas', { timeout: 30000 }, async () => {
  const env = mcpRig();
  const redis = await startRedis();
  const open = [];
  const replicas = [];
  try {
    const ev = await env.everything();
    for (const id of ['m1', 'm2']) {
      const gw = await env.gateway(mcpConfig([ev], { extra: { cluster: { redis: redis.url, replica_id: id } } }));
      gw.id = id;
      gw.mcp = `${gw.url}/mcp`;
      await waitFor(() => /cluster: joined the fleet as/.test(gw.output.text), () => `${id} to join the fleet:\n${gw.output.text}`);
      replicas.push(gw);
    }
    const [m1, m2] = replicas;
    // What Redis counts: alice's open streams fleet-wide (field "s\0alice"
    // of obleth:n, a name no argv carries, so a script reads it) and per
    // replica (obleth:s:<id>).
    const fleetCount = async () => (await redis.cli(['EVAL', "return redis.call('HGET', 'obleth:n', 's' .. string.char(0) .. 'alice') or '0'", '0'])).trim();
    const replicaCount = async (gw) => (await redis.cli(['HGET', `obleth:s:${gw.id}`, 'alice'])).trim();
    // one session per GET (server-everything allows one GET stream per
    // session): two for the streams, one per replica for the refused ones
    const s1 = await rawSession(m1.mcp, 'sk-alice', 'fleet-streams-1');
    const s2 = await rawSession(m2.mcp, 'sk-alice', 'fleet-streams-2');
    const s3 = await rawSession(m1.mcp, 'sk-alice', 'fleet-streams-3');
    const s4 = await rawSession(m2.mcp, 'sk-alice', 'fleet-streams-4');
    const sid = (name) => initRecord(ev.rec, name).resSessionId;
    const reached = (name) => ev.rec.records.filter((r) => r.method === 'GET' && r.sessionId === sid(name));

    for (const [gw, s, name] of [[m1, s1, 'fleet-streams-1'], [m2, s2, 'fleet-streams-2']]) {
      const g = await openGet(gw.mcp, { key: 'sk-alice', sid: s.sid, version: s.version });
      open.push(g);
      assert.equal(g.status, 200, `${gw.id}: alice's stream: ${g.status} ${g.text}`);
      assert.match(g.contentType, /^text\/event-stream/);
      assert.ok(await ev.rec.waitFor((r) => r.method === 'GET' && r.sessionId === sid(name) && r.status === 200), `${gw.id}: the stream reached the server`);
    }
    assert.equal(await fleetCount(), '2', 'Redis counts alice\'s 2 streams fleet-wide');
    assert.equal(await replicaCount(m1), '1', 'one held by m1');
    assert.equal(await replicaCount(m2), '1', 'one held by m2');

    // a third, through either replica (each holds only 1 of its local 2): 429 from the fleet
    for (const [gw, s, name] of [[m1, s3, 'fleet-streams-3'], [m2, s4, 'fleet-streams-4']]) {
      const g = await openGet(gw.mcp, { key: 'sk-alice', sid: s.sid, version: s.version });
      open.push(g);
      assert.equal(g.status, 429, `${gw.id}: a third stream for alice: ${g.status} ${g.text}`);
      const e = JSON.parse(g.text);
      assert.equal(e.error?.code, 'too_many_streams', `${gw.id}: ${g.text}`);
      assert.match(e.error.message, /across the fleet/, `${gw.id}: refused by the fleet's count, not the replica's: ${g.text}`);
      await marker(gw.mcp, [ev.rec]);
      assert.deepEqual(reached(name), [], `${gw.id}: the refused GET never reached the server`);
    }
    assert.equal(await fleetCount(), '2', 'refused streams are not counted');

    // closing m1's stream frees the place for a stream through m2 (whose own count is still 1)
    open[0].close();
    const again = await waitFor(async () => {
      const g = await openGet(m2.mcp, { key: 'sk-alice', sid: s4.sid, version: s4.version });
      if (g.status === 200) return g;
      assert.equal(g.status, 429, `while m1's stream is being closed: ${g.status} ${g.text}`);
      return null;
    }, 'a new stream for alice through m2 once m1\'s is closed');
    open.push(again);
    assert.match(again.contentType, /^text\/event-stream/);
    assert.ok(await ev.rec.waitFor((r) => r.method === 'GET' && r.sessionId === sid('fleet-streams-4') && r.status === 200), 'it reached the server');
    assert.equal(await fleetCount(), '2');
    assert.equal(await replicaCount(m1), '', 'm1 holds none (a field at zero is deleted)');
    assert.equal(await replicaCount(m2), '2', 'm2 holds two');

    // every stream closed: the fleet's counters go back to zero
    for (const g of open) g.close();
    let n = '';
    await waitFor(async () => (n = (await redis.cli(['HGETALL', 'obleth:n'])).trim()) === '',
      () => `HGETALL obleth:n empty once every stream is closed: ${JSON.stringify(n)}`, 5000);
    // and stay there once the replicas leave (SIGTERM)
    for (const gw of replicas.reverse()) await stop(gw.proc);
    assert.equal((await redis.cli(['HGETALL', 'obleth:n'])).trim(), '', 'HGETALL obleth:n after both replicas stopped');
    assert.equal((await redis.cli(['KEYS', 'obleth:s:*'])).trim(), '', 'no replica holds a stream');
  } catch (e) {
    for (const gw of replicas) console.log(`--- ${gw.id} log ---\n${gw.output.text.split('\n').slice(-40).join('\n')}`);
    throw e;
  } finally {
    for (const g of open) g.close();
    try { await env.close(); } finally { await stop(redis.proc); }
  }
});

// ---------------------------------------------------------------- 7

test('the log line of each request names its JSON-RPC methods, and tools/call its tool (a batch, several)', { timeout: 20000 }, async () => {
  const env = mcpRig();
  try {
    const ev = await env.everything();
    const gw = await env.gateway(mcpConfig([ev]));
    const url = `${gw.url}/mcp`;
    const s = await rawSession(url, 'sk-bob', 'logs', '2025-06-18');
    let r = await post(url, { jsonrpc: '2.0', id: 2, method: 'tools/list' }, { key: 'sk-bob', sid: s.sid, version: s.version });
    assert.equal(r.status, 200);
    r = await post(url, { jsonrpc: '2.0', id: 3, method: 'tools/call', params: { name: 'echo', arguments: { message: 'log me' } } }, { key: 'sk-bob', sid: s.sid, version: s.version });
    assert.equal(r.status, 200);
    r = await post(url, [
      { jsonrpc: '2.0', id: 4, method: 'tools/call', params: { name: 'echo', arguments: { message: 'b' } } },
      { jsonrpc: '2.0', id: 5, method: 'tools/call', params: { name: 'get-sum', arguments: { a: 2, b: 3 } } },
    ], { key: 'sk-bob', sid: s.sid, version: s.version });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.messages.map((m) => m.id).sort(), [4, 5], `both answers of the batch: ${r.text}`);
    assert.equal(r.messages.find((m) => m.id === 5).result.content[0].text, 'The sum of 2 and 3 is 5.');
    const a = await rawSession(url, 'sk-alice', 'logs-alice', '2025-06-18');
    r = await post(url, { jsonrpc: '2.0', id: 6, method: 'tools/call', params: { name: DENIED, arguments: {} } }, { key: 'sk-alice', sid: a.sid, version: a.version });
    assert.equal(r.messages[0]?.error?.code, -32602);
    // a request's line is logged as its exchange ends, just after its answer
    await waitFor(() => new RegExp(`"POST /mcp .* mcp=tools/call:${DENIED}(\\s|$)`, 'm').test(gw.output.text), 'the denied call logged');
    const lines = gw.output.text.split('\n').filter((l) => l.includes('"POST /mcp '));
    const has = (re, what) => assert.ok(lines.some((l) => re.test(l)), `a log line with ${what}:\n${lines.join('\n')}`);
    has(/ mcp=initialize(\s|$)/, 'mcp=initialize');
    has(/ mcp=tools\/list(\s|$)/, 'mcp=tools/list');
    has(/ mcp=tools\/call:echo(\s|$)/, 'mcp=tools/call:echo');
    has(/ mcp=tools\/call:echo,tools\/call:get-sum(\s|$)/, 'the batch');
    has(new RegExp(` mcp=tools/call:${DENIED}(\\s|$)`), 'the denied call');
  } finally {
    await env.close();
  }
});
