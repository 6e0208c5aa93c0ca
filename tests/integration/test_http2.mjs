// HTTP/2 on the client side (TLS with ALPN, and h2c with prior knowledge on
// the cleartext port that also speaks HTTP/1.1) and on the upstream side
// (h2c to obleth-sim --h2c, h2 over TLS to another obleth). Clients: curl
// and nghttp.
import test from 'node:test';
import assert from 'node:assert/strict';
import { startSim, startObleth, stop, curl, run, makeCerts, simStats, chatBody, sseData } from './lib.mjs';

let sim, simH2, gw, certs, tlsPort, clearPort;

test.before(async () => {
  certs = await makeCerts();
  sim = await startSim(['--itl-ms', '40']);
  simH2 = await startSim(['--h2c', '--itl-ms', '40']);
  gw = await startObleth({
    listeners: [{ address: '127.0.0.1:0' }, { address: '127.0.0.1:0', tls: { cert: certs.cert, key: certs.key } }],
    upstreams: [
      { name: 'sim', endpoints: [sim.url] },
      { name: 'simh2', endpoints: [simH2.url], protocol: 'h2c' },
    ],
    routes: [
      { prefix: '/v1/', class: 'inference', upstream: 'sim' },
      { prefix: '/h2up/', class: 'inference', upstream: 'simh2', rewrite: '/' },
      { prefix: '/sim/', class: 'passthrough', upstream: 'sim' },
    ],
  });
  [clearPort, tlsPort] = gw.ports;
});

test.after(async () => {
  await stop(gw.proc);
  await stop(sim.proc);
  await stop(simH2.proc);
});

const tlsUrl = (p) => `https://localhost:${tlsPort}${p}`;
const clearUrl = (p) => `http://127.0.0.1:${clearPort}${p}`;
const json = ['-H', 'content-type: application/json'];

test('h2 over TLS (ALPN h2): chat completion', async () => {
  const r = await curl(['--http2', '--cacert', certs.ca, ...json, '--data-binary', JSON.stringify(chatBody()), tlsUrl('/v1/chat/completions')]);
  assert.equal(r.status, 200, r.stderr);
  assert.equal(r.httpVersion, '2');
  assert.equal(JSON.parse(r.body).usage.completion_tokens, 8);
});

test('TLS with ALPN http/1.1 still works', async () => {
  const r = await curl(['--http1.1', '--cacert', certs.ca, tlsUrl('/sim/stats')]);
  assert.equal(r.status, 200, r.stderr);
  assert.equal(r.httpVersion, '1.1');
});

test('h2c with prior knowledge on the cleartext port', async () => {
  const r = await curl(['--http2-prior-knowledge', ...json, '--data-binary', JSON.stringify(chatBody()), clearUrl('/v1/chat/completions')]);
  assert.equal(r.status, 200, r.stderr);
  assert.equal(r.httpVersion, '2');
  assert.equal(JSON.parse(r.body).object, 'chat.completion');
});

test('h2 streaming: SSE events arrive complete and end with [DONE]', async () => {
  const body = JSON.stringify(chatBody({ stream: true, max_tokens: 12, stream_options: { include_usage: true } }));
  const r = await curl(['--http2', '--cacert', certs.ca, '-N', ...json, '--data-binary', body, tlsUrl('/v1/chat/completions')]);
  assert.equal(r.status, 200);
  const ev = sseData(r.body);
  assert.equal(ev.at(-1), '[DONE]');
  assert.equal(JSON.parse(ev.at(-2)).usage.completion_tokens, 12);
  const content = ev.slice(0, -2).map((e) => JSON.parse(e).choices[0]?.delta?.content ?? '').join('');
  const full = await curl(['--http2', '--cacert', certs.ca, ...json, '--data-binary', JSON.stringify(chatBody({ max_tokens: 12 })), tlsUrl('/v1/chat/completions')]);
  assert.equal(content, JSON.parse(full.body).choices[0].message.content, 'streamed text equals the non-streamed text');
});

test('h2: an upstream abort mid-stream resets the client stream with INTERNAL_ERROR', async () => {
  const body = JSON.stringify(chatBody({ stream: true, max_tokens: 10 }));
  const r = await curl(['--http2-prior-knowledge', ...json, '-H', 'x-sim-abort-after: 3', '--data-binary', body, clearUrl('/v1/chat/completions')]);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /INTERNAL_ERROR|not closed cleanly|stream.*reset/i, r.stderr);
  assert.ok(!r.body.includes('[DONE]'));
  const n = await run('nghttp', ['-v', '-H', ':method: POST', '-H', 'x-sim-abort-after: 2', '-d', '-', clearUrl('/v1/chat/completions')], { input: body });
  assert.match(n.stdout, /recv RST_STREAM frame[\s\S]*error_code=INTERNAL_ERROR/);
});

test('h2: many concurrent streams on one connection', async () => {
  const urls = [];
  for (let i = 0; i < 20; i++) urls.push(clearUrl(`/sim/stats?i=${i}`));
  const r = await run('nghttp', ['-n', '-s', '-m', '1', ...urls]);
  assert.equal(r.code, 0, r.stderr);
  const n = await run('nghttp', ['-nv', clearUrl('/sim/stats?a'), clearUrl('/v1/models'), clearUrl('/sim/stats?b')]);
  assert.equal((n.stdout.match(/recv HEADERS frame/g) || []).length, 3);
});

test('h2c upstream: streaming through an HTTP/2 upstream', async () => {
  const before = (await simStats(simH2)).requests;
  const body = JSON.stringify(chatBody({ stream: true, max_tokens: 6 }));
  const r = await curl(['--http1.1', '-N', ...json, '--data-binary', body, clearUrl('/h2up/v1/chat/completions')]);
  assert.equal(r.status, 200, r.body);
  assert.equal(sseData(r.body).at(-1), '[DONE]');
  assert.equal((await simStats(simH2)).requests, before + 1);
  const echo = await curl(['--http2-prior-knowledge', clearUrl('/h2up/sim/echo/x')]);
  assert.equal(JSON.parse(echo.body).protocol, 'HTTP/2');
});

test('h2c upstream: an abort mid-stream reaches an h2 client as RST_STREAM', async () => {
  const body = JSON.stringify(chatBody({ stream: true, max_tokens: 10 }));
  const r = await curl(['--http2-prior-knowledge', ...json, '-H', 'x-sim-abort-after: 2', '--data-binary', body, clearUrl('/h2up/v1/chat/completions')]);
  assert.notEqual(r.code, 0);
  assert.ok(!r.body.includes('[DONE]'));
});

test('h2 over TLS upstream (ALPN h2, verified with tls_ca)', async () => {
  const front = await startObleth({
    upstreams: [{ name: 'tls', endpoints: [`https://localhost:${tlsPort}`], protocol: 'h2', tls_ca: certs.ca }],
    routes: [{ prefix: '/', class: 'passthrough', upstream: 'tls' }],
  });
  const body = JSON.stringify(chatBody({ stream: true, max_tokens: 5 }));
  const r = await curl(['--http1.1', '-N', ...json, '--data-binary', body, front.url + '/v1/chat/completions']);
  assert.equal(r.status, 200, r.body + r.stderr);
  assert.equal(sseData(r.body).at(-1), '[DONE]');
  await stop(front.proc);
});

test('an h2 request body above the limit is 413', async () => {
  const small = await startObleth({
    upstreams: [{ name: 'sim', endpoints: [sim.url] }],
    routes: [{ prefix: '/', class: 'inference', upstream: 'sim' }],
    limits: { max_body_bytes: 1000 },
  });
  const r = await curl(['--http2-prior-knowledge', ...json, '--data-binary', JSON.stringify(chatBody({ pad: 'y'.repeat(5000) })), small.url + '/v1/chat/completions']);
  assert.equal(r.status, 413);
  assert.equal(JSON.parse(r.body).error.code, 'request_too_large');
  await stop(small.proc);
});
