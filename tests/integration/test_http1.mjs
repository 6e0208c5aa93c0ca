// HTTP/1.1 client side through obleth to obleth-sim: proxying, streaming,
// routing, header rewriting, errors in OpenAI's shape, request smuggling
// shapes, limits and keep-alive. Clients: curl --http1.1 and raw sockets
// (for bytes curl refuses to send).
import test from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startSim, startObleth, stop, curl, simStats, chatBody, sseData, sleep } from './lib.mjs';
import { WAIT_MS } from './lib.mjs';

let sim, gw;

test.before(async () => {
  sim = await startSim(['--itl-ms', '50']);
  gw = await startObleth({
    upstreams: [
      { name: 'sim', endpoints: [sim.url] },
      { name: 'echo', endpoints: [`${sim.url}/sim/echo`] },
    ],
    routes: [
      { prefix: '/v1/', class: 'inference', upstream: 'sim' },
      { prefix: '/strict/v1/', class: 'inference', rewrite: '/v1/' },
      { prefix: '/echo/', class: 'passthrough', upstream: 'echo', rewrite: '/' },
      { prefix: '/sim/', class: 'passthrough', upstream: 'sim' },
    ],
    models: [
      { name: 'llama-3-70b', upstream: 'echo', upstream_model: 'meta-llama/Llama-3-70B-Instruct' },
      { name: 'plain-model', upstream: 'sim' },
    ],
    limits: { max_body_bytes: 4096, max_header_bytes: 2048 },
  });
});

test.after(async () => {
  await stop(gw.proc);
  await stop(sim.proc);
});

const post = (path, body, extra = []) =>
  curl(['--http1.1', '-H', 'content-type: application/json', '--data-binary', typeof body === 'string' ? body : JSON.stringify(body), ...extra, gw.url + path]);

// Send raw bytes, collect everything until the server closes, or until
// done(data) holds for a connection that stays open (or a backstop).
function raw(bytes, { waitMs = WAIT_MS, done } = {}) {
  return new Promise((resolve) => {
    const s = net.connect(gw.port, '127.0.0.1');
    let data = '';
    let closed = false;
    s.on('data', (d) => {
      data += d.toString('latin1');
      if (done && !closed && done(data)) { closed = true; clearTimeout(t); s.destroy(); resolve({ data, closed: false }); }
    });
    s.on('close', () => { closed = true; clearTimeout(t); resolve({ data, closed }); });
    s.on('error', () => {});
    s.write(bytes);
    const t = setTimeout(() => { if (!closed) { s.destroy(); resolve({ data, closed: false }); } }, waitMs);
  });
}

test('non-streaming chat completion is proxied with usage', async () => {
  const r = await post('/v1/chat/completions', chatBody());
  assert.equal(r.status, 200, r.stderr + r.body);
  assert.equal(r.httpVersion, '1.1');
  const j = JSON.parse(r.body);
  assert.equal(j.object, 'chat.completion');
  assert.equal(j.usage.completion_tokens, 8);
  assert.ok(j.choices[0].message.content.length > 0);
});

test('streamed tokens reach the client before the upstream has finished', async () => {
  const body = JSON.stringify(chatBody({ stream: true, max_tokens: 30, stream_options: { include_usage: true } }));
  const t0 = Date.now();
  const res = await fetch(gw.url + '/v1/chat/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, body });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /text\/event-stream/);
  const reader = res.body.getReader();
  let text = '';
  let firstTokenAt = 0;
  let statsAtFirst = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    text += Buffer.from(value).toString();
    if (!firstTokenAt && text.includes('"content":"')) {
      firstTokenAt = Date.now() - t0;
      statsAtFirst = await simStats(sim);
    }
  }
  const total = Date.now() - t0;
  // 30 tokens at 50 ms each take 1.5 s upstream; the first must arrive
  // before the end, while the upstream is still generating (the simulator's
  // count says so; a time margin would only measure the machine's load).
  assert.ok(firstTokenAt > 0 && firstTokenAt < total, `first token at ${firstTokenAt} ms of ${total} ms`);
  assert.equal(statsAtFirst.in_flight, 1, 'the upstream was still generating when the first token arrived');
  const events = sseData(text);
  assert.equal(events.at(-1), '[DONE]');
  const usage = JSON.parse(events.at(-2)).usage;
  assert.equal(usage.completion_tokens, 30);
});

test('upstream_model is patched into the body in place; other bytes unchanged', async () => {
  const body = '{ "messages" : [ {"role":"user","content":"hi"} ],\n  "model":  "llama-3-70b" , "temperature": 0.50 }';
  const r = await post('/v1/chat/completions', body);
  assert.equal(r.status, 200, r.body);
  const echo = JSON.parse(r.body);
  assert.equal(echo.path, '/sim/echo/v1/chat/completions');
  assert.equal(echo.body, body.replace('"llama-3-70b"', '"meta-llama/Llama-3-70B-Instruct"'));
  const cl = echo.headers.find(([n]) => n.toLowerCase() === 'content-length');
  assert.equal(Number(cl[1]), Buffer.byteLength(echo.body));
});

test('a model with no entry goes to the route upstream; none at all is model_not_found', async () => {
  const ok = await post('/v1/chat/completions', chatBody({ model: 'unlisted' }));
  assert.equal(ok.status, 200);
  assert.equal(JSON.parse(ok.body).model, 'unlisted');
  const nf = await post('/strict/v1/chat/completions', chatBody({ model: 'unlisted' }));
  assert.equal(nf.status, 404);
  const e = JSON.parse(nf.body).error;
  assert.equal(e.code, 'model_not_found');
  assert.equal(e.type, 'invalid_request_error');
  assert.match(e.message, /unlisted/);
  const listed = await post('/strict/v1/chat/completions', chatBody({ model: 'plain-model' }));
  assert.equal(listed.status, 200);
});

test('GET /v1/models is answered from the models list', async () => {
  const r = await curl(['--http1.1', gw.url + '/v1/models']);
  assert.equal(r.status, 200);
  const j = JSON.parse(r.body);
  assert.equal(j.object, 'list');
  assert.deepEqual(j.data.map((m) => m.id), ['llama-3-70b', 'plain-model']);
  assert.equal(j.data[0].object, 'model');
});

test('no route is 404 in the OpenAI error shape', async () => {
  const r = await curl(['--http1.1', gw.url + '/nowhere']);
  assert.equal(r.status, 404);
  const j = JSON.parse(r.body);
  assert.equal(typeof j.error.message, 'string');
  assert.equal(j.error.type, 'not_found_error');
  assert.ok('code' in j.error);
});

test('invalid JSON on an inference route is 400 invalid_request_error', async () => {
  const r = await post('/v1/chat/completions', '{"model": "x", ');
  assert.equal(r.status, 400);
  assert.equal(JSON.parse(r.body).error.type, 'invalid_request_error');
});

test('hop-by-hop headers are dropped, x-forwarded-for and x-request-id added, rewrite applied', async () => {
  const r = await curl(['--http1.1', '-H', 'x-forwarded-for: 203.0.113.9', '-H', 'connection: keep-alive, x-secret-hop',
    '-H', 'x-secret-hop: 1', '-H', 'keep-alive: timeout=5', '-H', 'x-custom: kept', '-i', gw.url + '/echo/sim/echo/a/b?q=1']);
  assert.equal(r.status, 200);
  const [head, body] = r.body.split('\r\n\r\n');
  const echo = JSON.parse(body);
  assert.equal(echo.path, '/sim/echo/sim/echo/a/b?q=1');
  const h = Object.fromEntries(echo.headers.map(([n, v]) => [n.toLowerCase(), v]));
  assert.equal(h['x-forwarded-for'], '203.0.113.9, 127.0.0.1');
  assert.equal(h['x-custom'], 'kept');
  assert.equal(h['x-secret-hop'], undefined);
  assert.equal(h['keep-alive'], undefined);
  assert.match(h['x-request-id'], /^[0-9a-f]{32}$/);
  // the same id is returned to the client
  assert.match(head, new RegExp(`x-request-id: ${h['x-request-id']}`, 'i'));
});

test('a client x-request-id is kept end to end', async () => {
  const r = await curl(['--http1.1', '-H', 'x-request-id: abc-123', gw.url + '/echo/sim/echo']);
  const h = Object.fromEntries(JSON.parse(r.body).headers.map(([n, v]) => [n.toLowerCase(), v]));
  assert.equal(h['x-request-id'], 'abc-123');
});

test('body above max_body_bytes is 413', async () => {
  const r = await post('/v1/chat/completions', chatBody({ pad: 'x'.repeat(5000) }));
  assert.equal(r.status, 413);
  assert.equal(JSON.parse(r.body).error.code, 'request_too_large');
});

test('header block above max_header_bytes is 431', async () => {
  const r = await curl(['--http1.1', '-H', `x-big: ${'a'.repeat(3000)}`, gw.url + '/v1/models']);
  assert.equal(r.status, 431);
  assert.ok(JSON.parse(r.body).error);
});

const smuggling = {
  'Content-Length with Transfer-Encoding': 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
  'differing duplicate Content-Length': 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde',
  'obs-fold': 'GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n',
  'bare CR': 'GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: 1\r2\r\n\r\n',
  'invalid token character in a field name': 'GET /v1/models HTTP/1.1\r\nHost: x\r\nX(A): 1\r\n\r\n',
  'whitespace before the colon': 'GET /v1/models HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n',
  'Transfer-Encoding not ending in chunked': 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n',
  'missing Host': 'GET /v1/models HTTP/1.1\r\n\r\n',
};

for (const [name, bytes] of Object.entries(smuggling)) {
  test(`request smuggling shape is rejected and the connection closed: ${name}`, async () => {
    const before = (await simStats(sim)).requests;
    const r = await raw(bytes + 'GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n');
    assert.match(r.data, /^HTTP\/1\.1 (400|501) /, r.data);
    assert.match(r.data, /connection: close/i);
    assert.equal(r.closed, true, 'connection closed');
    assert.equal((r.data.match(/HTTP\/1\.1 /g) || []).length, 1, 'the smuggled second request was not answered');
    const body = r.data.split('\r\n\r\n')[1];
    assert.ok(JSON.parse(body).error.message);
    assert.equal((await simStats(sim)).requests, before, 'nothing reached the upstream');
  });
}

test('pipelined requests are answered in order on one connection', async () => {
  const one = JSON.stringify(chatBody({ max_tokens: 3 }));
  const req = (id) => `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-request-id: req-${id}\r\nContent-Type: application/json\r\nContent-Length: ${one.length}\r\n\r\n${one}`;
  const r = await raw(req(1) + req(2) + `GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
  const ids = [...r.data.matchAll(/x-request-id: (\S+)/gi)].map((m) => m[1]);
  assert.deepEqual(ids.slice(0, 2), ['req-1', 'req-2']);
  assert.equal((r.data.match(/HTTP\/1\.1 200/g) || []).length, 3);
  assert.equal(r.closed, true);
});

test('chunked request bodies are accepted and forwarded with a length', async () => {
  const body = JSON.stringify(chatBody({ model: 'llama-3-70b' }));
  const chunked = `${(10).toString(16)}\r\n${body.slice(0, 10)}\r\n${(body.length - 10).toString(16)};ext=1\r\n${body.slice(10)}\r\n0\r\n\r\n`;
  const r = await raw(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${chunked}`);
  assert.match(r.data, /^HTTP\/1\.1 200/);
  const echo = JSON.parse(r.data.split('\r\n\r\n').slice(1).join('\r\n\r\n'));
  assert.equal(JSON.parse(echo.body).model, 'meta-llama/Llama-3-70B-Instruct');
});

test('Upgrade: h2c is ignored and answered over HTTP/1.1', async () => {
  const r = await raw('GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n', { done: (d) => d.includes('\r\n\r\n') });
  assert.match(r.data, /^HTTP\/1\.1 200 /);
  assert.doesNotMatch(r.data, /101 Switching/);
});

test('keep-alive reuses the connection for sequential requests', async () => {
  const r = await curl(['--http1.1', '-v', gw.url + '/v1/models', gw.url + '/v1/models']);
  assert.match(r.stderr, /Re-using existing connection|Reusing existing/);
});

test('an upstream that aborts mid-stream gives a truncated h1 response, never a complete one', async () => {
  const r = await post('/v1/chat/completions', chatBody({ stream: true, max_tokens: 10 }), ['-H', 'x-sim-abort-after: 3']);
  assert.notEqual(r.code, 0, 'curl reports the transfer as failed');
  assert.match(r.stderr, /(18|transfer closed|partial)/i);
  assert.ok(!r.body.includes('[DONE]'));
});

test('an unreachable upstream is 502 in the OpenAI error shape', async () => {
  const dead = await startObleth({
    upstreams: [{ name: 'dead', endpoints: ['http://127.0.0.1:1'] }],
    routes: [{ prefix: '/', class: 'passthrough', upstream: 'dead' }],
  });
  const r = await curl(['--http1.1', dead.url + '/v1/models']);
  assert.equal(r.status, 502);
  assert.equal(JSON.parse(r.body).error.code, 'bad_gateway');
  await stop(dead.proc);
});
