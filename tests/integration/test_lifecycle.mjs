// Process lifecycle: graceful shutdown on SIGTERM (in-flight streams finish,
// new connections are refused, exit code 0), SIGINT, the request log line,
// and start-up failures.
import test from 'node:test';
import assert from 'node:assert/strict';
import { startSim, startObleth, stop, curl, chatBody, sseData, sleep } from './lib.mjs';
import net from 'node:net';
import { simStats, waitFor } from './lib.mjs';

// True once a TCP connect to port is refused (the listener is closed).
const refuses = (port) => new Promise((resolve) => {
  const s = net.connect(port, '127.0.0.1');
  s.on('connect', () => { s.destroy(); resolve(false); });
  s.on('error', () => resolve(true));
});

test('SIGTERM lets an in-flight stream finish, refuses new connections, exits 0', async () => {
  const sim = await startSim(['--itl-ms', '100']);
  const gw = await startObleth({
    upstreams: [{ name: 'sim', endpoints: [sim.url] }],
    routes: [{ prefix: '/', class: 'inference', upstream: 'sim' }],
    timeouts: { grace_ms: 10000 },
  });
  const body = JSON.stringify(chatBody({ stream: true, max_tokens: 15 }));
  const inflight = curl(['--http1.1', '-N', '-H', 'content-type: application/json', '--data-binary', body, gw.url + '/v1/chat/completions']);
  const inflightH2 = curl(['--http2-prior-knowledge', '-N', '-H', 'content-type: application/json', '--data-binary', body, gw.url + '/v1/chat/completions']);
  await waitFor(async () => (await simStats(sim)).requests === 2, 'both streams at the upstream');
  const exited = stop(gw.proc, 'SIGTERM');
  await waitFor(() => refuses(gw.port), 'the listener closed');
  const refused = await curl(['--http1.1', '--max-time', '2', gw.url + '/v1/models']);
  assert.equal(refused.status, 0, 'new connections are refused while draining');
  const [r1, r2] = await Promise.all([inflight, inflightH2]);
  assert.equal(r1.status, 200);
  assert.equal(sseData(r1.body).at(-1), '[DONE]', 'h1 stream completed');
  assert.equal(r2.status, 200);
  assert.equal(sseData(r2.body).at(-1), '[DONE]', 'h2 stream completed');
  const { code } = await exited;
  assert.equal(code, 0);
  // one log line per request with method, path, status, bytes, duration, upstream
  assert.match(gw.output.text, /"POST \/v1\/chat\/completions HTTP\/1\.1" 200 \d+ [\d.]+ms .*upstream=127\.0\.0\.1:\d+/);
  assert.match(gw.output.text, /"POST \/v1\/chat\/completions HTTP\/2" 200 /);
  await stop(sim.proc);
});

test('streams still running when the grace period ends are cut, and the process exits 0', async () => {
  const sim = await startSim(['--itl-ms', '200']);
  const gw = await startObleth({
    upstreams: [{ name: 'sim', endpoints: [sim.url] }],
    routes: [{ prefix: '/', class: 'inference', upstream: 'sim' }],
    timeouts: { grace_ms: 300 },
  });
  const body = JSON.stringify(chatBody({ stream: true, max_tokens: 50 }));
  const inflight = curl(['--http1.1', '-N', '-H', 'content-type: application/json', '--data-binary', body, gw.url + '/v1/chat/completions']);
  await waitFor(async () => (await simStats(sim)).requests === 1, 'the stream at the upstream');
  const t0 = Date.now();
  const { code } = await stop(gw.proc, 'SIGTERM');
  assert.equal(code, 0);
  // the stream alone would run 10 s more
  assert.ok(Date.now() - t0 < 7000, `exited after ${Date.now() - t0} ms`);
  const r = await inflight;
  assert.notEqual(r.code, 0, 'the cut stream is visibly truncated');
  await stop(sim.proc);
});

test('a listener that cannot bind makes start-up fail with a message', async () => {
  const sim = await startSim();
  const gw = await startObleth({ upstreams: [{ name: 'sim', endpoints: [sim.url] }], routes: [] });
  await assert.rejects(startObleth({ listeners: [{ address: `127.0.0.1:${gw.port}` }], upstreams: [], routes: [] }),
    /cannot bind/);
  await stop(gw.proc);
  await stop(sim.proc);
});

test('listeners take host names and bracketed IPv6 addresses', async () => {
  const sim = await startSim();
  const gw = await startObleth({
    listeners: [{ address: 'localhost:0' }, { address: '[::1]:0' }],
    upstreams: [{ name: 'sim', endpoints: [sim.url] }],
    routes: [{ prefix: '/', class: 'passthrough', upstream: 'sim' }],
  });
  const v4 = await curl(['--http1.1', `http://localhost:${gw.ports[0]}/sim/stats`]);
  assert.equal(v4.status, 200);
  const v6 = await curl(['--http2-prior-knowledge', `http://[::1]:${gw.ports[1]}/sim/stats`]);
  assert.equal(v6.status, 200);
  assert.equal(v6.httpVersion, '2');
  await stop(gw.proc);
  await stop(sim.proc);
});
