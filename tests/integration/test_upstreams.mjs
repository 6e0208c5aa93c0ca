// Upstream pools: least-in-flight balancing across endpoints, retry of a
// connection failure on another endpoint, back-off of a refusing endpoint,
// timeouts (504), and slow readers pausing the upstream (bounded memory).
import test from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startSim, startObleth, stop, curl, simStats, chatBody, sleep } from './lib.mjs';
import { waitFor } from './lib.mjs';

const json = ['-H', 'content-type: application/json'];

test('requests spread over endpoints by least in flight', async () => {
  // Long streams (10 x 300 ms), sent from this process at once (no curl to
  // start per request), so all eight are in flight together even on a
  // loaded machine.
  const a = await startSim(['--itl-ms', '300']);
  const b = await startSim(['--itl-ms', '300']);
  const gw = await startObleth({
    upstreams: [{ name: 'pool', endpoints: [a.url, b.url] }],
    routes: [{ prefix: '/', class: 'inference', upstream: 'pool' }],
  });
  try {
    const body = JSON.stringify(chatBody({ max_tokens: 10 }));
    const all = [];
    for (let i = 0; i < 8; i++) {
      all.push(fetch(gw.url + '/v1/chat/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, body })
        .then(async (r) => { await r.text(); return r; }));
    }
    let sa, sb;
    await waitFor(async () => {
      [sa, sb] = [await simStats(a), await simStats(b)];
      return sa.requests + sb.requests === 8;
    }, 'all eight at the endpoints');
    assert.equal(sa.in_flight + sb.in_flight, 8);
    assert.equal(sa.in_flight, 4);
    assert.equal(sb.in_flight, 4);
    for (const r of await Promise.all(all)) assert.equal(r.status, 200);
  } finally {
    await stop(gw.proc); await stop(a.proc); await stop(b.proc);
  }
});

test('a refused endpoint is retried elsewhere and then skipped', async () => {
  const live = await startSim();
  const gw = await startObleth({
    upstreams: [{ name: 'pool', endpoints: ['http://127.0.0.1:1', live.url] }],
    routes: [{ prefix: '/', class: 'inference', upstream: 'pool' }],
    timeouts: { backoff_ms: 60000 },
  });
  for (let i = 0; i < 6; i++) {
    const r = await curl(['--http1.1', ...json, '--data-binary', JSON.stringify(chatBody()), gw.url + '/v1/chat/completions']);
    assert.equal(r.status, 200, `request ${i}: ${r.body}`);
  }
  const refusals = (gw.output.text.match(/127\.0\.0\.1:1\b/g) || []).length;
  assert.ok(refusals >= 1 && refusals <= 2, `refused endpoint tried ${refusals} times during back-off`);
  await stop(gw.proc); await stop(live.proc);
});

test('an upstream that accepts and never answers times out with 504', async () => {
  const silent = net.createServer((s) => { s.on('data', () => {}); s.on('error', () => {}); });
  await new Promise((r) => silent.listen(0, '127.0.0.1', r));
  const gw = await startObleth({
    upstreams: [{ name: 'silent', endpoints: [`http://127.0.0.1:${silent.address().port}`] }],
    routes: [{ prefix: '/', class: 'passthrough', upstream: 'silent' }],
    timeouts: { first_byte_ms: 500 },
  });
  const t0 = Date.now();
  const r = await curl(['--http1.1', gw.url + '/anything']);
  assert.equal(r.status, 504);
  assert.equal(JSON.parse(r.body).error.code, 'gateway_timeout');
  assert.ok(Date.now() - t0 < 10000, `answered after ${Date.now() - t0} ms`);
  await stop(gw.proc);
  silent.close();
});

test('a client that stops reading pauses the upstream instead of buffering without bound', async () => {
  const sim = await startSim();
  const gw = await startObleth({
    upstreams: [{ name: 'sim', endpoints: [sim.url] }],
    routes: [{ prefix: '/', class: 'inference', upstream: 'sim' }],
    limits: { stream_window_bytes: 16384 },
  });
  // 130000 tokens at full speed is about 20 MB of SSE, far more than the
  // kernel's socket buffers can hide; the client reads nothing for a while.
  const body = JSON.stringify(chatBody({ stream: true, max_tokens: 130000 }));
  const s = net.connect(gw.port, '127.0.0.1');
  try {
    s.pause();
    s.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
    // The whole answer exists upstream once the simulator counts it
    // completed: anything obleth would read without pausing is there.
    await waitFor(async () => (await simStats(sim)).completed === 1, 'the simulator to finish the answer');
    // The simulator queues its whole answer in its own memory, so what it
    // reports proves nothing. What obleth read does: /proc/PID/io rchar
    // counts every byte it read from any socket. Reading the upstream
    // without pausing would pull in most of the 20 MB.
    const rchar = () => Number(require_fs().readFileSync(`/proc/${gw.proc.pid}/io`, 'utf8').match(/rchar:\s+(\d+)/)[1]);
    const before = rchar();
    await sleep(1000);
    const after = rchar();
    assert.ok(after - before < 256 * 1024, `read ${after - before} bytes in 1 s while the client was not reading`);
    assert.ok(after < 10 * 1024 * 1024, `read ${after} bytes in all, far less than the 20 MB stream`);
    // now drain: everything arrives intact. The answer is chunked and a
    // chunk may end anywhere (even inside "[DONE]"), so wait for the last
    // chunk and look at the de-chunked tail.
    const parts = [];
    let bytes = 0;
    let tail = '';
    s.on('data', (d) => { parts.push(d); bytes += d.length; tail = (tail + d.toString('latin1')).slice(-16); });
    s.resume();
    for (let i = 0; i < 300 && !tail.endsWith('\r\n0\r\n\r\n'); i++) await sleep(100);
    assert.ok(tail.endsWith('\r\n0\r\n\r\n'), `the chunked answer ended after the client resumed (${bytes} bytes)`);
    const raw = Buffer.concat(parts);
    let at = raw.indexOf('\r\n\r\n') + 4;
    const decoded = [];
    for (;;) {
      const eol = raw.indexOf('\r\n', at);
      const size = parseInt(raw.subarray(at, eol).toString('latin1'), 16);
      if (!size) break;
      decoded.push(raw.subarray(eol + 2, eol + 2 + size));
      at = eol + 2 + size + 2;
    }
    assert.ok(Buffer.concat(decoded).subarray(-64).toString('latin1').includes('data: [DONE]'), 'the stream ends with [DONE]');
  } finally {
    s.destroy();
    await stop(gw.proc);
    await stop(sim.proc);
  }
});

test('an HTTP/2 client that stops reading pauses the upstream too', async () => {
  const http2 = await import('node:http2');
  const sim = await startSim();
  const gw = await startObleth({
    upstreams: [{ name: 'sim', endpoints: [sim.url] }],
    routes: [{ prefix: '/', class: 'inference', upstream: 'sim' }],
    limits: { stream_window_bytes: 16384 },
  });
  const session = http2.connect(gw.url);
  try {
    const req = session.request({ ':method': 'POST', ':path': '/v1/chat/completions', 'content-type': 'application/json' });
    req.end(JSON.stringify(chatBody({ stream: true, max_tokens: 130000 })));
    req.pause(); // no reading: node stops opening the stream's flow-control window
    await waitFor(async () => (await simStats(sim)).completed === 1, 'the simulator to finish the answer');
    const rchar = () => Number(require_fs().readFileSync(`/proc/${gw.proc.pid}/io`, 'utf8').match(/rchar:\s+(\d+)/)[1]);
    const before = rchar();
    await sleep(1000);
    const after = rchar();
    assert.ok(after - before < 256 * 1024, `read ${after - before} bytes in 1 s while the h2 client was not reading`);
    assert.ok(after < 10 * 1024 * 1024, `read ${after} bytes in all, far less than the 20 MB stream`);
    let tail = '';
    req.on('data', (d) => { tail = (tail + d.toString('latin1')).slice(-64); });
    const ended = new Promise((r) => req.on('end', r));
    req.resume();
    await ended;
    assert.ok(tail.includes('data: [DONE]'), 'stream completed after the client resumed');
  } finally {
    session.destroy();
    await stop(gw.proc);
    await stop(sim.proc);
  }
});

import { createRequire } from 'node:module';
const require_fs = () => createRequire(import.meta.url)('node:fs');
