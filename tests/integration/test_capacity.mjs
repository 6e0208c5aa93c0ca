// max_inflight "auto" (issue 17) through real clients: obleth scrapes each
// endpoint's /metrics (obleth-sim answers in vLLM's names), keeps the
// backend's own queue near empty while using its slots, follows a capacity
// drop, falls back to time to first token when there are no metrics, stays
// within its bounds whatever a broken /metrics sends (malformed, huge,
// slow), and takes an endpoint that goes down out of its pool until it is
// back.
import test from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { startSim, startObleth, stop, simStats, chatBody, sleep, waitFor } from './lib.mjs';

function config(endpoints, capacity = {}) {
  return {
    upstreams: [{ name: 'llm', endpoints, max_inflight: 'auto', capacity: { min: 1, max: 64, interval_ms: 100, ...capacity } }],
    routes: [{ prefix: '/v1/', class: 'inference', upstream: 'llm' }],
    admission: { cost: 'requests', queue_timeout_ms: 60000 },
    admin: { address: '127.0.0.1:0' },
  };
}

function adminUrl(gw) {
  return `http://127.0.0.1:${gw.output.text.match(/admin API on 127\.0\.0\.1:(\d+)/)[1]}`;
}

async function pool(gw) {
  return (await (await fetch(`${adminUrl(gw)}/admin/fairshare`)).json()).pools[0];
}

// n closed-loop clients; stop() waits for them and gives the statuses.
function load(gw, n, body = chatBody()) {
  let stopped = false;
  const statuses = {};
  const one = async () => {
    while (!stopped) {
      try {
        const r = await fetch(`${gw.url}/v1/chat/completions`, {
          method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json' },
          signal: AbortSignal.timeout(30000),
        });
        await r.text();
        statuses[r.status] = (statuses[r.status] || 0) + 1;
      } catch (e) {
        statuses.error = (statuses.error || 0) + 1;
      }
    }
  };
  const loops = Array.from({ length: n }, one);
  return { async stop() { stopped = true; await Promise.all(loops); return statuses; } };
}

// Sample the simulator every 20 ms: mean and max of in_flight / queued.
function watch(sim) {
  let stopped = false;
  const s = [];
  const run = (async () => {
    while (!stopped) {
      const x = await simStats(sim);
      s.push({ t: Date.now(), in: x.in_flight, q: x.queued });
      await sleep(20);
    }
  })();
  return {
    since(t0) {
      const w = s.filter((x) => x.t >= t0);
      return { n: w.length, in: w.reduce((a, x) => a + x.in, 0) / w.length, q: w.reduce((a, x) => a + x.q, 0) / w.length };
    },
    async stop() { stopped = true; await run; },
  };
}

test('metrics: the limit follows the backend\'s slots, its own queue stays near empty, and a capacity drop is followed within 2 s', { timeout: 60000 }, async () => {
  const sim = await startSim(['--slots', '8', '--ttft-ms', '40', '--itl-ms', '5', '--max-tokens', '16']);
  const gw = await startObleth(config([sim.url]));
  const w = watch(sim);
  const l = load(gw, 24);
  try {
    await waitFor(async () => (await pool(gw)).capacity[0].source === 'metrics', 'the source to be metrics');
    // settled: the pool's slots near the simulator's 8, its queue near empty
    await sleep(2500);
    const t0 = Date.now();
    await sleep(1500);
    let m = w.since(t0);
    const p = await pool(gw);
    assert.equal(p.capacity.length, 1);
    assert.ok(p.capacity[0].limit >= 7 && p.capacity[0].limit <= 10, `limit near the 8 slots: ${JSON.stringify(p.capacity[0])}`);
    assert.ok(m.in >= 0.9 * 8, `the backend is kept busy: mean in_flight ${m.in.toFixed(2)} of 8`);
    assert.ok(m.q <= 1, `the backend's own queue stays near empty: mean ${m.q.toFixed(2)}`);
    assert.equal(typeof p.capacity[0].running, 'number');
    assert.equal(typeof p.capacity[0].waiting, 'number');
    // half the GPUs go away
    const r = await fetch(`${sim.url}/sim/config`, { method: 'POST', body: JSON.stringify({ slots: 4 }) });
    assert.equal(r.status, 200, await r.text());
    const tDrop = Date.now();
    await waitFor(async () => (await pool(gw)).capacity[0].limit <= 5, 'the limit to follow the drop', 2500);
    assert.ok(Date.now() - tDrop <= 2500, `followed within 2 s (+ one scrape): ${Date.now() - tDrop} ms`);
    await sleep(1500);
    const t1 = Date.now();
    await sleep(1500);
    m = w.since(t1);
    assert.ok(m.in >= 0.9 * 4, `busy after the drop: mean in_flight ${m.in.toFixed(2)} of 4`);
    assert.ok(m.q <= 1, `the backend's queue near empty after the drop: mean ${m.q.toFixed(2)}`);
    const metrics = await (await fetch(`${adminUrl(gw)}/metrics`)).text();
    assert.match(metrics, /obleth_upstream_capacity\{upstream="llm",endpoint="127\.0\.0\.1:\d+"\} \d+/);
    assert.match(metrics, /obleth_upstream_backend_waiting\{upstream="llm",endpoint="127\.0\.0\.1:\d+"\} /);
    assert.match(metrics, /obleth_upstream_capacity_source\{upstream="llm",endpoint="127\.0\.0\.1:\d+",source="metrics"\} 1/);
    assert.match(gw.output.text, /capacity: upstream llm endpoint 127\.0\.0\.1:\d+: limit from metrics/);
  } finally {
    const st = await l.stop();
    await w.stop();
    assert.deepEqual(Object.keys(st), ['200'], `every request served: ${JSON.stringify(st)}`);
    await stop(gw.proc);
    await stop(sim.proc);
  }
});

test('no /metrics: the latency signal takes over and every request is served', { timeout: 30000 }, async () => {
  const sim = await startSim(['--slots', '4', '--ttft-ms', '50', '--no-metrics']);
  const gw = await startObleth(config([sim.url]));
  const l = load(gw, 12);
  try {
    await waitFor(async () => (await pool(gw)).capacity[0].source === 'latency', 'the source to be latency');
    await sleep(3000);
    const p = await pool(gw);
    assert.ok(p.capacity[0].limit >= 1 && p.capacity[0].limit <= 64, JSON.stringify(p.capacity[0]));
    assert.match(p.capacity[0].last_scrape_error, /did not answer 200/);
    assert.match(gw.output.text, /limit from latency/);
  } finally {
    const st = await l.stop();
    assert.deepEqual(Object.keys(st), ['200'], `every request served: ${JSON.stringify(st)}`);
    await stop(gw.proc);
    await stop(sim.proc);
  }
});

// A backend whose /metrics is broken in one of several ways; chat answers at once.
function brokenBackend(kind) {
  const srv = http.createServer((req, res) => {
    if (req.url === '/metrics') {
      if (kind === 'malformed') return res.end('vllm:num_requests_running{model_name="m" 3\nvllm:num_requests_waiting 0\n');
      if (kind === 'huge') {
        res.writeHead(200, { 'content-type': 'text/plain' });
        const chunk = '# ' + 'x'.repeat(1 << 16) + '\n';
        let sent = 0;
        const more = () => { while (sent < 64 << 20) { sent += chunk.length; if (!res.write(chunk)) return res.once('drain', more); } res.end(); };
        res.on('error', () => {});
        return more();
      }
      if (kind === 'slow') return setTimeout(() => { try { res.end('vllm:num_requests_running 1\nvllm:num_requests_waiting 0\n'); } catch {} }, 5000);
    }
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ id: 'x', object: 'chat.completion', choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }], usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 } }));
    });
  });
  return new Promise((r) => srv.listen(0, '127.0.0.1', () => r({ srv, url: `http://127.0.0.1:${srv.address().port}` })));
}

for (const kind of ['malformed', 'huge', 'slow']) {
  test(`a ${kind} /metrics is refused, bounded, and the limit stays within its bounds`, { timeout: 30000 }, async () => {
    const b = await brokenBackend(kind);
    const gw = await startObleth(config([b.url], { min: 2, max: 16 }));
    const l = load(gw, 6);
    try {
      await waitFor(async () => (await pool(gw)).capacity[0].source === 'latency', 'the source to leave static for latency');
      await sleep(1000);
      const c = (await pool(gw)).capacity[0];
      assert.ok(c.limit >= 2 && c.limit <= 16, JSON.stringify(c));
      assert.ok(c.last_scrape_error, JSON.stringify(c));
      assert.equal(c.running, null, 'nothing was taken from the broken answer');
      const rss = Number((await (await fetch(`${adminUrl(gw)}/metrics`)).text()).match(/process_resident_memory_bytes (\d+)/)?.[1] ?? 0);
      if (rss) assert.ok(rss < 256 << 20, `memory stays bounded: ${rss} bytes`);
    } finally {
      const st = await l.stop();
      assert.deepEqual(Object.keys(st), ['200'], `every request served: ${JSON.stringify(st)}`);
      await stop(gw.proc);
      b.srv.closeAllConnections?.();
      b.srv.close();
    }
  });
}

test('an endpoint that goes down leaves the pool, and comes back into it', { timeout: 60000 }, async () => {
  const a = await startSim(['--slots', '4', '--ttft-ms', '20']);
  let b = await startSim(['--slots', '4', '--ttft-ms', '20']);
  const port = b.port;
  const gw = await startObleth(config([a.url, b.url]));
  const l = load(gw, 12);
  try {
    await waitFor(async () => (await pool(gw)).capacity.every((c) => c.source === 'metrics' && c.limit >= 3), 'both endpoints measured');
    await stop(b.proc, 'SIGKILL');
    await waitFor(async () => { const p = await pool(gw); return p.capacity[1].down && p.capacity[1].limit === 0 && p.slots === p.capacity[0].limit; },
      'the dead endpoint out of the pool');
    b = await startSim(['--slots', '4', '--ttft-ms', '20', '--listen', `127.0.0.1:${port}`]);
    await waitFor(async () => { const p = await pool(gw); return !p.capacity[1].down && p.capacity[1].limit >= 1; }, 'the endpoint back');
  } finally {
    await l.stop();
    await stop(gw.proc);
    await stop(a.proc);
    await stop(b.proc);
  }
});

test('"workers": 2 and two endpoints of 12 and 4 slots: each endpoint\'s limit follows its own slots, and both workers together keep each one busy without a queue', { timeout: 60000 }, async () => {
  const a = await startSim(['--slots', '12', '--ttft-ms', '40', '--itl-ms', '5', '--max-tokens', '16']);
  const b = await startSim(['--slots', '4', '--ttft-ms', '40', '--itl-ms', '5', '--max-tokens', '16']);
  const gw = await startObleth({ ...config([a.url, b.url]), workers: 2 });
  const wa = watch(a), wb = watch(b);
  const l = load(gw, 32);
  try {
    await waitFor(async () => (await pool(gw)).capacity.every((c) => c.source === 'metrics'), 'both endpoints measured');
    await sleep(3500);
    const t0 = Date.now();
    await sleep(1500);
    const p = await pool(gw);
    const [ma, mb] = [wa.since(t0), wb.since(t0)];
    assert.ok(p.capacity[0].limit >= 11 && p.capacity[0].limit <= 14, `the 12-slot endpoint's limit: ${JSON.stringify(p.capacity)}`);
    assert.ok(p.capacity[1].limit >= 3 && p.capacity[1].limit <= 6, `the 4-slot endpoint's limit: ${JSON.stringify(p.capacity)}`);
    assert.equal(p.slots, p.capacity[0].limit + p.capacity[1].limit, 'the pool is their sum');
    assert.ok(ma.in >= 0.85 * 12 && mb.in >= 0.85 * 4, `both busy: mean in_flight ${ma.in.toFixed(2)} of 12, ${mb.in.toFixed(2)} of 4`);
    assert.ok(ma.q <= 1 && mb.q <= 1, `no backend queue: mean ${ma.q.toFixed(2)} and ${mb.q.toFixed(2)}`);
  } finally {
    const st = await l.stop();
    await wa.stop();
    await wb.stop();
    assert.deepEqual(Object.keys(st), ['200'], `every request served: ${JSON.stringify(st)}`);
    await stop(gw.proc);
    await stop(a.proc);
    await stop(b.proc);
  }
});
