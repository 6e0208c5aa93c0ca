// Tenant identity and fairshare admission through real clients: 401 / 403,
// keys never forwarded, fast and queued admission headers, 429 when queues
// are full, 503 when the wait is too long, client deadlines, rpm / tpm
// limits, leaving the queue on disconnect, the slot released on every path,
// and the grant order under weights and groups.
import test from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import http2 from 'node:http2';
import { startSim, startObleth, stop, curl, simStats, chatBody, sseData, sleep, bearer, header, until } from './lib.mjs';
import { WAIT_MS, holdSlot } from './lib.mjs';

const json = ['-H', 'content-type: application/json'];

function tenants(extra = {}) {
  return [
    { name: 'alice', group: 'prod', keys: [{ id: 'alice-1', secret: 'sk-alice' }], models: ['*'], ...extra.alice },
    { name: 'bob', group: 'batch', keys: [{ id: 'bob-1', secret: 'sk-bob' }, { id: 'bob-old', secret: 'sk-bob-old', disabled: true }], models: ['sim-model'], ...extra.bob },
    { name: 'carol', group: 'batch', disabled: true, keys: [{ id: 'carol-1', secret: 'sk-carol' }] },
  ];
}

async function gateway(sim, { admission = {}, upstream = {}, tenantExtra = {}, routes } = {}) {
  return startObleth({
    upstreams: [
      { name: 'sim', endpoints: [sim.url], ...upstream },
      { name: 'echo', endpoints: [`${sim.url}/sim/echo`], credential: { header: 'authorization', value: 'Bearer upstream-secret' } },
      { name: 'echo-plain', endpoints: [`${sim.url}/sim/echo`] },
    ],
    routes: routes ?? [
      { prefix: '/v1/', class: 'inference', upstream: 'sim' },
      { prefix: '/echo/', class: 'passthrough', upstream: 'echo', rewrite: '/' },
      { prefix: '/plain/', class: 'inference', upstream: 'echo-plain', rewrite: '/' },
    ],
    groups: [{ name: 'prod', weight: 3 }, { name: 'batch', weight: 1 }],
    tenants: tenants(tenantExtra),
    admission: { cost: 'requests', ...admission },
    admin: { address: '127.0.0.1:0' },
  });
}

// Requests waiting in the gateway's queues, from its admin listener.
async function queued(gw) {
  const m = gw.output.text.match(/admin API on 127\.0\.0\.1:(\d+)/);
  return (await (await fetch(`http://127.0.0.1:${m[1]}/admin/fairshare`)).json()).queued;
}
// Requests holding a slot, from the same view.
async function inflight(gw) {
  const m = gw.output.text.match(/admin API on 127\.0\.0\.1:(\d+)/);
  return (await (await fetch(`http://127.0.0.1:${m[1]}/admin/fairshare`)).json()).inflight;
}

const chat = (gw, k, body = chatBody(), extra = []) =>
  curl(['--http1.1', '-i', ...json, ...(k ? bearer(k) : []), ...extra, '--data-binary', JSON.stringify(body), gw.url + '/v1/chat/completions']);
const bodyOf = (r) => r.body.slice(r.body.indexOf('\r\n\r\n') + 4);

test('identity: missing, unknown, disabled keys and models outside the allow-list', async () => {
  const sim = await startSim();
  const gw = await gateway(sim);
  try {
    const before = (await simStats(sim)).requests;
    let r = await chat(gw, null);
    assert.equal(r.status, 401);
    assert.equal(JSON.parse(bodyOf(r)).error.type, 'invalid_request_error');
    r = await chat(gw, 'sk-nobody');
    assert.equal(r.status, 401);
    assert.equal(JSON.parse(bodyOf(r)).error.code, 'invalid_api_key');
    r = await chat(gw, 'sk-carol');
    assert.equal(r.status, 403, 'disabled tenant');
    r = await chat(gw, 'sk-bob-old');
    assert.equal(r.status, 403, 'disabled key');
    r = await chat(gw, 'sk-bob', chatBody({ model: 'other-model' }));
    assert.equal(r.status, 403, 'model not in the allow-list');
    assert.equal(JSON.parse(bodyOf(r)).error.code, 'model_not_allowed');
    assert.equal((await simStats(sim)).requests, before, 'nothing refused reached the upstream');
    r = await chat(gw, 'sk-bob');
    assert.equal(r.status, 200);
    r = await curl(['--http2-prior-knowledge', '-i', ...json, '-H', 'x-api-key: sk-alice', '--data-binary', JSON.stringify(chatBody()), gw.url + '/v1/chat/completions']);
    assert.equal(r.status, 200, 'x-api-key over h2');
    assert.match(gw.output.text, /plain "secret"/, 'a plain secret is warned about at start-up');
  } finally {
    await stop(gw.proc); await stop(sim.proc);
  }
});

test('the tenant key is never forwarded; an upstream credential replaces it', async () => {
  const sim = await startSim();
  const gw = await gateway(sim);
  try {
    let r = await curl(['--http1.1', ...bearer('sk-alice'), '-H', 'x-api-key: sk-alice', gw.url + '/echo/sim/echo/x']);
    assert.equal(r.status, 200);
    let h = JSON.parse(r.body).headers.map(([n, v]) => [n.toLowerCase(), v]);
    assert.deepEqual(h.filter(([n]) => n === 'authorization'), [['authorization', 'Bearer upstream-secret']]);
    assert.equal(h.find(([n]) => n === 'x-api-key'), undefined);
    r = await curl(['--http1.1', ...json, ...bearer('sk-alice'), '--data-binary', JSON.stringify(chatBody()), gw.url + '/plain/v1/chat/completions']);
    h = JSON.parse(r.body).headers.map(([n]) => n.toLowerCase());
    assert.ok(!h.includes('authorization'), 'stripped without a credential');
    const plain = await curl(['--http1.1', gw.url + '/echo/sim/echo/x']);
    assert.equal(plain.status, 401, 'passthrough routes are authenticated too');
  } finally {
    await stop(gw.proc); await stop(sim.proc);
  }
});

test('fast and queued admission are visible in the response headers', async () => {
  const sim = await startSim(['--ttft-ms', '800']);
  const gw = await gateway(sim, { upstream: { max_inflight: 1 } });
  try {
    const first = chat(gw, 'sk-alice');
    assert.ok(await until(async () => (await simStats(sim)).in_flight === 1), 'the first request holds the slot');
    const second = await chat(gw, 'sk-alice');
    const a = await first;
    assert.equal(header(a.body, 'x-obleth-admission'), 'fast');
    assert.equal(header(a.body, 'x-obleth-queue-ms'), '0');
    assert.equal(header(second.body, 'x-obleth-admission'), 'queued');
    assert.ok(Number(header(second.body, 'x-obleth-queue-ms')) >= 100, header(second.body, 'x-obleth-queue-ms'));
    const st = await simStats(sim);
    assert.equal(st.requests, 2);
  } finally {
    await stop(gw.proc); await stop(sim.proc);
  }
});

test('a full queue answers 429 with Retry-After; a long wait answers 503', async () => {
  const sim = await startSim(['--ttft-ms', '800']);
  const gw = await gateway(sim, { upstream: { max_inflight: 1 }, tenantExtra: { alice: { max_queue: 1 } }, admission: { queue_timeout_ms: 400 } });
  try {
    const holder = chat(gw, 'sk-alice');
    assert.ok(await until(async () => (await simStats(sim)).in_flight === 1), 'the holder has the slot');
    const waiter = chat(gw, 'sk-alice');
    assert.ok(await until(async () => (await queued(gw)) === 1), 'the waiter is queued');
    const full = await chat(gw, 'sk-alice');
    assert.equal(full.status, 429);
    assert.ok(Number(header(full.body, 'retry-after')) >= 1);
    assert.equal(JSON.parse(bodyOf(full)).error.type, 'rate_limit_error');
    const w = await waiter;
    assert.equal(w.status, 503, 'waited past queue_timeout_ms');
    assert.ok(Number(header(w.body, 'retry-after')) >= 1);
    assert.equal(JSON.parse(bodyOf(w)).error.code, 'queue_timeout');
    assert.equal((await holder).status, 200);
    // a client deadline shortens the wait
    const h2 = chat(gw, 'sk-bob');
    assert.ok(await until(async () => (await inflight(gw)) === 1), 'the new holder has the slot');
    const d = await chat(gw, 'sk-bob', chatBody(), ['-H', 'x-request-timeout-ms: 100']);
    assert.equal(d.status, 503);
    // the gateway's own count of the wait (curl's start-up is not in it)
    const q = Number(header(d.body, 'x-obleth-queue-ms'));
    assert.ok(q < 350, `deadline honoured: ${q} ms in the queue, where queue_timeout_ms is 400`);
    await h2;
  } finally {
    await stop(gw.proc); await stop(sim.proc);
  }
});

test('rpm and tpm limits answer 429 with OpenAI rate-limit headers', async () => {
  const sim = await startSim();
  const gw = await gateway(sim, { tenantExtra: { alice: { rpm: 2 }, bob: { tpm: 100 } }, admission: { cost: 'tokens' } });
  try {
    assert.equal((await chat(gw, 'sk-alice')).status, 200);
    const ok = await chat(gw, 'sk-alice');
    assert.equal(ok.status, 200);
    assert.equal(header(ok.body, 'x-ratelimit-limit-requests'), '2');
    const r = await chat(gw, 'sk-alice');
    assert.equal(r.status, 429);
    assert.equal(header(r.body, 'x-ratelimit-limit-requests'), '2');
    assert.equal(header(r.body, 'x-ratelimit-remaining-requests'), '0');
    assert.match(header(r.body, 'x-ratelimit-reset-requests'), /^\d+(\.\d+)?(ms|s)$|^\d+m\d+s$/);
    assert.ok(Number(header(r.body, 'retry-after')) >= 1);
    assert.equal(JSON.parse(bodyOf(r)).error.code, 'rate_limit_exceeded');
    // bob: a request estimated above what is left of 100 tokens/minute
    const big = await chat(gw, 'sk-bob', chatBody({ max_tokens: 90 }));
    assert.equal(big.status, 200);
    const again = await chat(gw, 'sk-bob', chatBody({ max_tokens: 90 }));
    assert.equal(again.status, 429);
    assert.equal(header(again.body, 'x-ratelimit-limit-tokens'), '100');
  } finally {
    await stop(gw.proc); await stop(sim.proc);
  }
});

test('a client that disconnects while queued leaves the queue and never reaches the upstream', async () => {
  const sim = await startSim(['--ttft-ms', '600']);
  const gw = await gateway(sim, { upstream: { max_inflight: 1 } });
  try {
    const holder = chat(gw, 'sk-alice');
    assert.ok(await until(async () => (await inflight(gw)) === 1), 'the holder has the slot');
    // h1: close the socket while queued
    const body = JSON.stringify(chatBody());
    const s = net.connect(gw.port, '127.0.0.1');
    s.on('error', () => {});
    s.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-bob\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
    // h2: the client resets its stream while queued (RST_STREAM CANCEL)
    const session = http2.connect(gw.url);
    session.on('error', () => {});
    const h2req = session.request({ ':method': 'POST', ':path': '/v1/chat/completions', 'content-type': 'application/json', authorization: 'Bearer sk-bob' });
    h2req.on('error', () => {});
    h2req.end(body);
    assert.ok(await until(async () => (await queued(gw)) === 2), 'both clients are queued');
    s.destroy();
    h2req.close(http2.constants.NGHTTP2_CANCEL);
    assert.ok(await until(async () => (await queued(gw)) === 0), 'both left the queue');
    session.close();
    const next = await chat(gw, 'sk-alice');
    assert.equal(next.status, 200);
    assert.equal(header(next.body, 'x-obleth-admission'), 'queued');
    await holder;
    const st = await simStats(sim);
    assert.equal(st.requests, 2, 'the two clients that left never reached the simulator');
  } finally {
    await stop(gw.proc); await stop(sim.proc);
  }
});

test('the slot is released on every path: complete, client gone (h1, h2), upstream abort, upstream error, timeout', async () => {
  const sim = await startSim(['--itl-ms', '30']);
  const gw = await gateway(sim, { upstream: { max_inflight: 1, }, admission: { queue_timeout_ms: 2000 } });
  const fast = async (why) => {
    const r = await chat(gw, 'sk-alice', chatBody({ max_tokens: 1 }));
    assert.equal(r.status, 200, why);
    assert.equal(header(r.body, 'x-obleth-admission'), 'fast', `slot free after ${why}`);
  };
  const stream = JSON.stringify(chatBody({ stream: true, max_tokens: 100 }));
  try {
    await fast('start');
    await curl(['--http1.1', '--max-time', '0.3', ...json, ...bearer('sk-alice'), '--data-binary', stream, gw.url + '/v1/chat/completions']);
    assert.ok(await until(async () => (await inflight(gw)) === 0), 'the slot came back');
    await fast('h1 client gone mid-stream');
    await curl(['--http2-prior-knowledge', '--max-time', '0.3', ...json, ...bearer('sk-alice'), '--data-binary', stream, gw.url + '/v1/chat/completions']);
    assert.ok(await until(async () => (await inflight(gw)) === 0), 'the slot came back');
    await fast('h2 client reset mid-stream');
    await curl(['--http1.1', ...json, ...bearer('sk-alice'), '-H', 'x-sim-abort-after: 2', '--data-binary', stream, gw.url + '/v1/chat/completions']);
    await fast('upstream abort');
    const e = await curl(['--http1.1', ...json, ...bearer('sk-alice'), '-H', 'x-sim-status: 500', '--data-binary', stream, gw.url + '/v1/chat/completions']);
    assert.equal(e.status, 500);
    await fast('upstream error status');
  } finally {
    await stop(gw.proc); await stop(sim.proc);
  }
  const silent = net.createServer((c) => { c.on('data', () => {}); c.on('error', () => {}); });
  await new Promise((r) => silent.listen(0, '127.0.0.1', r));
  const gw2 = await startObleth({
    upstreams: [{ name: 'dead', endpoints: [`http://127.0.0.1:${silent.address().port}`], max_inflight: 1 }],
    routes: [{ prefix: '/', class: 'inference', upstream: 'dead' }],
    tenants: tenants(), groups: [{ name: 'prod' }, { name: 'batch' }],
    timeouts: { first_byte_ms: 300 },
  });
  try {
    for (let i = 0; i < 2; i++) {
      const r = await chat(gw2, 'sk-alice');
      assert.equal(r.status, 504);
      assert.equal(header(r.body, 'x-obleth-admission'), 'fast', 'the timed-out request gave its slot back');
    }
  } finally {
    await stop(gw2.proc);
    silent.close();
  }
});

// Hold the only slot, queue requests in a known order, release, and read
// the grant order from obleth's log: with one slot, each request finishes
// before the next is granted, so log lines come in grant order (client-side
// completion times are too close together to order).
async function grantOrder(sim, gw, plan) {
  // The admin listener says how many wait: each request is sent only once
  // the one before it is queued, so arrival order is the plan's even on a
  // loaded machine, and the holder is still running when the last arrives.
  const m = gw.output.text.match(/admin API on 127\.0\.0\.1:(\d+)/);
  assert.ok(m, 'grantOrder needs an admin listener');
  const queued = async () => (await (await fetch(`http://127.0.0.1:${m[1]}/admin/fairshare`)).json()).queued;
  // The holder keeps the slot until the plan is queued, however long that
  // takes, and then leaves (the slot comes back when the client goes).
  const holder = holdSlot(gw.url, 'sk-alice');
  assert.ok(await until(async () => (await (await fetch(`http://127.0.0.1:${m[1]}/admin/fairshare`)).json()).inflight === 1), 'the holder has the slot');
  const all = [];
  for (const [k, tag] of plan) {
    const before = await queued();
    all.push(curl(['--http1.1', ...bearer(k), gw.url + `/plain/sim/echo/${tag}`]));
    assert.ok(await until(async () => (await queued()) > before), `${tag} queued`);
  }
  assert.equal(await queued(), plan.length, 'every request of the plan waited behind the holder');
  holder.release();
  await holder.done;
  for (const r of await Promise.all(all)) assert.equal(r.status, 200, r.body);
  // each request is logged when it completes: wait for the last line
  const lines = () => [...gw.output.text.matchAll(/"GET \/plain\/sim\/echo\/(\w+) HTTP/g)].map((m) => m[1]);
  assert.ok(await until(() => lines().length === plan.length), gw.output.text);
  return lines();
}

test('weighted grant order inside a group follows tenant weights (1:3)', async () => {
  const sim = await startSim();
  const gw = await startObleth({
    upstreams: [{ name: 'sim', endpoints: [sim.url], max_inflight: 1 }],
    routes: [{ prefix: '/v1/', class: 'inference', upstream: 'sim' }, { prefix: '/plain/', class: 'inference', upstream: 'sim', rewrite: '/' }],
    tenants: [
      { name: 'alice', weight: 1, keys: [{ id: 'a', secret: 'sk-alice' }] },
      { name: 'bob', weight: 3, keys: [{ id: 'b', secret: 'sk-bob' }] },
    ],
    admission: { cost: 'requests', mode: 'weighted' },
    admin: { address: '127.0.0.1:0' },
  });
  try {
    const plan = [];
    for (let i = 0; i < 4; i++) plan.push(['sk-alice', `a${i}`]);
    for (let i = 0; i < 4; i++) plan.push(['sk-bob', `b${i}`]);
    const order = await grantOrder(sim, gw, plan);
    const firstFour = order.slice(0, 4).map((t) => t[0]).join('');
    assert.equal(firstFour.split('b').length - 1, 3, `bob gets 3 of the first 4 slots: ${order.join(' ')}`);
  } finally {
    await stop(gw.proc); await stop(sim.proc);
  }
});

test('hierarchical: groups by weight first (prod 3 : batch 1), FIFO under fifo mode', async () => {
  for (const mode of ['hierarchical', 'fifo']) {
    const sim = await startSim();
    const gw = await startObleth({
      upstreams: [{ name: 'sim', endpoints: [sim.url], max_inflight: 1 }],
      routes: [{ prefix: '/v1/', class: 'inference', upstream: 'sim' }, { prefix: '/plain/', class: 'inference', upstream: 'sim', rewrite: '/' }],
      groups: [{ name: 'prod', weight: 3 }, { name: 'batch', weight: 1 }],
      tenants: [
        { name: 'alice', group: 'prod', keys: [{ id: 'a', secret: 'sk-alice' }] },
        { name: 'bob', group: 'batch', keys: [{ id: 'b', secret: 'sk-bob' }] },
        { name: 'dave', group: 'batch', keys: [{ id: 'd', secret: 'sk-dave' }] },
      ],
      admission: { cost: 'requests', mode },
      admin: { address: '127.0.0.1:0' },
    });
    try {
      const plan = [];
      for (let i = 0; i < 3; i++) plan.push(['sk-bob', `b${i}`]);
      for (let i = 0; i < 3; i++) plan.push(['sk-dave', `d${i}`]);
      for (let i = 0; i < 3; i++) plan.push(['sk-alice', `a${i}`]);
      const order = await grantOrder(sim, gw, plan);
      if (mode === 'fifo') {
        assert.deepEqual(order, plan.map(([, t]) => t), 'fifo serves in arrival order');
      } else {
        const firstFour = order.slice(0, 4).map((t) => t[0]);
        assert.equal(firstFour.filter((c) => c === 'a').length, 3, `prod gets 3 of the first 4 slots: ${order.join(' ')}`);
        const batch = order.filter((t) => t[0] !== 'a').slice(0, 2).map((t) => t[0]).sort().join('');
        assert.equal(batch, 'bd', `batch alternates its tenants: ${order.join(' ')}`);
      }
    } finally {
      await stop(gw.proc); await stop(sim.proc);
    }
  }
});
