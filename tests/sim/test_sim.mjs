// Tests for obleth-sim, the vLLM-shaped upstream simulator.
// Usage: node test_sim.mjs /path/to/obleth-sim
// Node 20, no packages: node:test, node:assert, node:child_process, node:http2.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import http2 from 'node:http2';
import net from 'node:net';

const SIM = process.argv[2] ?? process.env.OBLETH_SIM;
if (!SIM) {
  console.error('usage: node test_sim.mjs /path/to/obleth-sim');
  process.exit(2);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Poll cond() until it returns a truthy value, which is returned. A wait is
// for an event; the 30 s bound is only a backstop for a loaded machine.
async function waitFor(cond, what, ms = 30000) {
  for (const end = Date.now() + ms; ; await sleep(5)) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > end) throw new Error(`waited ${ms} ms for ${what}`);
  }
}

// Start a simulator on an ephemeral port; resolves once it printed its line.
function startSim(args = []) {
  return new Promise((resolve, reject) => {
    const proc = spawn(SIM, ['--listen', '127.0.0.1:0', ...args], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const rl = createInterface({ input: proc.stdout });
    const timer = setTimeout(() => reject(new Error('sim did not start')), 30000);
    proc.once('error', reject);
    proc.once('exit', (code) => reject(new Error(`sim exited early: ${code}`)));
    rl.once('line', (line) => {
      clearTimeout(timer);
      const m = /^listening on (\S+):(\d+)$/.exec(line);
      if (!m) return reject(new Error(`unexpected first line: ${line}`));
      const port = Number(m[2]);
      resolve({
        proc,
        port,
        base: `http://127.0.0.1:${port}`,
        stop: () =>
          new Promise((r) => {
            proc.removeAllListeners('exit');
            proc.once('exit', r);
            proc.kill('SIGTERM');
          }),
      });
    });
  });
}

const chatBody = (extra = {}) => ({
  model: 'test-model',
  messages: [
    { role: 'system', content: 'You are terse.' },
    { role: 'user', content: 'Tell me about fair queueing.' },
  ],
  ...extra,
});

async function postJSON(base, path, body, headers = {}) {
  const res = await fetch(base + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { res, json: await res.json() };
}

async function stats(base) {
  return (await fetch(base + '/sim/stats')).json();
}

// Split an SSE text into its data payloads.
function sseData(text) {
  return text
    .split('\n\n')
    .filter((e) => e.length > 0)
    .map((e) => {
      assert.ok(e.startsWith('data: '), `event without data: ${JSON.stringify(e)}`);
      return e.slice(6);
    });
}

// Read a fetch body chunk by chunk; { text, error } (error when it broke).
async function readAll(res) {
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let text = '';
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      text += dec.decode(value, { stream: true });
    }
    return { text, error: null };
  } catch (err) {
    return { text, error: err };
  }
}

// One HTTP/2 request on session; resolves { status, headers, text, error, rstCode }.
function h2req(session, { method = 'POST', path, headers = {}, body }) {
  return new Promise((resolve) => {
    const req = session.request({ ':method': method, ':path': path, ...headers });
    let status = 0;
    let hdrs = {};
    let text = '';
    let error = null;
    req.setEncoding('utf8');
    req.on('response', (h) => {
      status = h[':status'];
      hdrs = h;
    });
    req.on('data', (d) => (text += d));
    req.on('error', (e) => (error = e));
    req.on('close', () => resolve({ status, headers: hdrs, text, error, rstCode: req.rstCode }));
    if (body !== undefined) req.end(typeof body === 'string' ? body : JSON.stringify(body));
    else req.end();
  });
}

// Raw HTTP/1.1 exchange over a socket; resolves with everything read until close.
function rawHttp(port, payload, { waitMs = 30000 } = {}) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    let data = '';
    const t = setTimeout(() => sock.destroy(), waitMs);
    sock.setEncoding('latin1');
    sock.on('data', (d) => (data += d));
    sock.on('error', () => {});
    sock.on('close', () => {
      clearTimeout(t);
      resolve(data);
    });
    sock.on('connect', () => sock.write(payload));
  });
}

describe('HTTP/1.1 basics', () => {
  let sim;
  before(async () => {
    sim = await startSim(['--max-tokens', '12', '--model', 'served-model']);
  });
  after(async () => sim.stop());

  test('non-streaming chat: shape and usage', async () => {
    const { res, json } = await postJSON(sim.base, '/v1/chat/completions', chatBody());
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /^application\/json/);
    assert.match(json.id, /^chatcmpl-[0-9a-f]+$/);
    assert.equal(json.object, 'chat.completion');
    assert.equal(typeof json.created, 'number');
    assert.equal(json.model, 'test-model');
    assert.equal(json.choices.length, 1);
    const c = json.choices[0];
    assert.equal(c.index, 0);
    assert.equal(c.message.role, 'assistant');
    assert.equal(typeof c.message.content, 'string');
    assert.equal(c.logprobs, null);
    assert.equal(c.finish_reason, 'stop'); // no max_tokens: ends after --max-tokens
    const chars = 'You are terse.'.length + 'Tell me about fair queueing.'.length;
    assert.equal(json.usage.prompt_tokens, Math.ceil(chars / 4));
    assert.equal(json.usage.completion_tokens, 12);
    assert.equal(json.usage.total_tokens, json.usage.prompt_tokens + 12);
    // one word per token, each with a leading space
    assert.equal(c.message.content.match(/ [a-z]+/g).length, 12);
    assert.equal(c.message.content.match(/ [a-z]+/g).join(''), c.message.content);
  });

  test('max_tokens wins and gives finish_reason length', async () => {
    const { json } = await postJSON(sim.base, '/v1/chat/completions', chatBody({ max_tokens: 5 }));
    assert.equal(json.usage.completion_tokens, 5);
    assert.equal(json.choices[0].finish_reason, 'length');
    const { json: j2 } = await postJSON(
      sim.base,
      '/v1/chat/completions',
      chatBody({ max_completion_tokens: 3 }),
    );
    assert.equal(j2.usage.completion_tokens, 3);
    // a shorter answer is a prefix of a longer one
    assert.ok(json.choices[0].message.content.startsWith(j2.choices[0].message.content));
  });

  test('determinism: same body, same content and usage', async () => {
    const a = (await postJSON(sim.base, '/v1/chat/completions', chatBody())).json;
    const b = (await postJSON(sim.base, '/v1/chat/completions', chatBody())).json;
    assert.equal(a.choices[0].message.content, b.choices[0].message.content);
    assert.deepEqual(a.usage, b.usage);
    const c = (
      await postJSON(sim.base, '/v1/chat/completions', {
        ...chatBody(),
        messages: [{ role: 'user', content: 'something else entirely' }],
      })
    ).json;
    assert.notEqual(a.choices[0].message.content, c.choices[0].message.content);
  });

  test('streaming chat: events, content, include_usage, [DONE]', async () => {
    const plain = (await postJSON(sim.base, '/v1/chat/completions', chatBody({ max_tokens: 7 })))
      .json;
    const res = await fetch(sim.base + '/v1/chat/completions', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(
        chatBody({ max_tokens: 7, stream: true, stream_options: { include_usage: true } }),
      ),
    });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /^text\/event-stream/);
    const { text, error } = await readAll(res);
    assert.equal(error, null);
    const data = sseData(text);
    assert.equal(data.at(-1), '[DONE]');
    const chunks = data.slice(0, -1).map((d) => JSON.parse(d));
    // role chunk, 7 token chunks, finish chunk, usage chunk
    assert.equal(chunks.length, 1 + 7 + 1 + 1);
    for (const ch of chunks) {
      assert.equal(ch.object, 'chat.completion.chunk');
      assert.equal(ch.id, chunks[0].id);
      assert.equal(ch.model, 'test-model');
    }
    assert.deepEqual(chunks[0].choices[0].delta, { role: 'assistant', content: '' });
    const tokens = chunks.slice(1, 8).map((ch) => ch.choices[0].delta.content);
    assert.ok(tokens.every((t) => /^ [a-z]+$/.test(t)));
    assert.equal(tokens.join(''), plain.choices[0].message.content);
    const fin = chunks[8].choices[0];
    assert.equal(fin.finish_reason, 'length');
    assert.deepEqual(fin.delta, {});
    const u = chunks[9];
    assert.deepEqual(u.choices, []);
    assert.equal(u.usage.completion_tokens, 7);
    assert.equal(u.usage.prompt_tokens, plain.usage.prompt_tokens);
    assert.equal(u.usage.total_tokens, plain.usage.total_tokens);
  });

  test('streaming without include_usage has no usage chunk', async () => {
    const res = await fetch(sim.base + '/v1/chat/completions', {
      method: 'POST',
      body: JSON.stringify(chatBody({ max_tokens: 2, stream: true })),
    });
    const data = sseData((await readAll(res)).text);
    assert.equal(data.length, 1 + 2 + 1 + 1);
    assert.equal(data.at(-1), '[DONE]');
    assert.ok(data.slice(0, -1).every((d) => JSON.parse(d).usage === undefined));
  });

  test('completions: text shapes, streaming and not', async () => {
    const body = { model: 'm', prompt: 'Once upon a time', max_tokens: 4 };
    const { json } = await postJSON(sim.base, '/v1/completions', body);
    assert.match(json.id, /^cmpl-/);
    assert.equal(json.object, 'text_completion');
    assert.equal(json.choices[0].finish_reason, 'length');
    assert.equal(json.usage.prompt_tokens, 4);
    assert.equal(json.usage.completion_tokens, 4);
    const res = await fetch(sim.base + '/v1/completions', {
      method: 'POST',
      body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    });
    const data = sseData((await readAll(res)).text);
    assert.equal(data.at(-1), '[DONE]');
    const chunks = data.slice(0, -1).map((d) => JSON.parse(d));
    assert.equal(chunks.length, 4 + 1 + 1);
    assert.ok(chunks.every((c) => c.object === 'text_completion'));
    assert.equal(chunks.slice(0, 4).map((c) => c.choices[0].text).join(''), json.choices[0].text);
    assert.equal(chunks[4].choices[0].finish_reason, 'length');
    assert.equal(chunks[5].usage.completion_tokens, 4);
  });

  test('embeddings shape', async () => {
    const { json } = await postJSON(sim.base, '/v1/embeddings', {
      model: 'emb',
      input: ['first text', 'second'],
    });
    assert.equal(json.object, 'list');
    assert.equal(json.model, 'emb');
    assert.equal(json.data.length, 2);
    json.data.forEach((d, i) => {
      assert.equal(d.object, 'embedding');
      assert.equal(d.index, i);
      assert.equal(d.embedding.length, 8);
      assert.ok(d.embedding.every((x) => typeof x === 'number' && Math.abs(x) <= 1));
    });
    assert.equal(json.usage.prompt_tokens, 3 + 2);
    assert.equal(json.usage.total_tokens, 5);
    const again = (await postJSON(sim.base, '/v1/embeddings', { model: 'emb', input: 'first text' }))
      .json;
    assert.deepEqual(again.data[0].embedding, json.data[0].embedding);
  });

  test('models shape', async () => {
    const res = await fetch(sim.base + '/v1/models');
    const json = await res.json();
    assert.equal(json.object, 'list');
    assert.equal(json.data.length, 1);
    const m = json.data[0];
    assert.equal(m.id, 'served-model');
    assert.equal(m.object, 'model');
    assert.equal(m.owned_by, 'vllm');
    assert.equal(m.root, 'served-model');
    assert.equal(m.parent, null);
    assert.equal(typeof m.created, 'number');
    assert.equal(typeof m.max_model_len, 'number');
  });

  test('404 and 400 shapes', async () => {
    const res = await fetch(sim.base + '/v2/nothing');
    assert.equal(res.status, 404);
    const j = await res.json();
    assert.equal(j.object, 'error');
    assert.equal(j.type, 'NotFoundError');
    assert.equal(j.code, 404);
    assert.equal(typeof j.message, 'string');
    const bad = await postJSON(sim.base, '/v1/chat/completions', '{"messages": [');
    assert.equal(bad.res.status, 400);
    assert.equal(bad.json.object, 'error');
    assert.equal(bad.json.type, 'BadRequestError');
    assert.equal(bad.json.code, 400);
    const zero = await postJSON(sim.base, '/v1/chat/completions', chatBody({ max_tokens: 0 }));
    assert.equal(zero.res.status, 400);
  });

  test('x-sim-status and x-sim-delay-ms', async () => {
    const { res, json } = await postJSON(sim.base, '/v1/chat/completions', chatBody(), {
      'x-sim-status': '503',
    });
    assert.equal(res.status, 503);
    assert.equal(json.code, 503);
    assert.equal(json.object, 'error');
    const t0 = Date.now();
    const d = await postJSON(sim.base, '/v1/chat/completions', chatBody(), {
      'x-sim-delay-ms': '150',
    });
    assert.equal(d.res.status, 200);
    assert.ok(Date.now() - t0 >= 140, 'delay applied');
  });

  test('/sim/echo returns method, path, headers in order and body', async () => {
    const res = await fetch(sim.base + '/sim/echo/some/path?x=1', {
      method: 'POST',
      headers: { 'X-First': 'one', 'x-second': 'two', 'content-type': 'text/plain' },
      body: 'hello body',
    });
    const j = await res.json();
    assert.equal(j.method, 'POST');
    assert.equal(j.path, '/sim/echo/some/path?x=1');
    assert.equal(j.protocol, 'HTTP/1.1');
    assert.equal(j.body, 'hello body');
    const names = j.headers.map(([n]) => n.toLowerCase());
    assert.ok(names.indexOf('x-first') >= 0 && names.indexOf('x-first') < names.indexOf('x-second'));
    assert.deepEqual(
      j.headers.find(([n]) => n.toLowerCase() === 'x-second'),
      [j.headers.find(([n]) => n.toLowerCase() === 'x-second')[0], 'two'],
    );
    const g = await (await fetch(sim.base + '/sim/echo')).json();
    assert.equal(g.method, 'GET');
    assert.equal(g.body, '');
  });

  test('chunked request body, keep-alive and pipelining over a raw socket', async () => {
    const slow = JSON.stringify(chatBody({ stream: true, max_tokens: 2 }));
    const req0 =
      'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-sim-delay-ms: 50\r\n' +
      `Content-Length: ${slow.length}\r\n\r\n${slow}`;
    const req1 =
      'POST /sim/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n' +
      '5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: t\r\n\r\n';
    const req2 = 'GET /sim/echo/two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n';
    const out = await rawHttp(sim.port, req0 + req1 + req2);
    const parts = out.split('HTTP/1.1 200 OK');
    assert.equal(parts.length, 4, out);
    // responses in request order although the first one was answered late
    assert.match(parts[1], /chat\.completion\.chunk[^]*\[DONE\][^]*\r\n0\r\n\r\n$/);
    assert.match(parts[2], /"body":"hello world"/);
    assert.match(parts[3], /"path":"\/sim\/echo\/two"/);
  });

  test('bad input: garbage, huge Content-Length, stays alive', async () => {
    const g = await rawHttp(sim.port, 'GARBAGE\x00\x01 nonsense\r\n\r\n');
    assert.match(g, /^HTTP\/1\.1 400 /);
    const big = await rawHttp(
      sim.port,
      'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 40000000\r\n\r\n',
    );
    assert.match(big, /^HTTP\/1\.1 413 /);
    const both = await rawHttp(
      sim.port,
      'POST /sim/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc',
    );
    assert.match(both, /^HTTP\/1\.1 400 /);
    const long = await rawHttp(sim.port, 'GET /' + 'a'.repeat(70000) + ' HTTP/1.1\r\n\r\n');
    assert.match(long, /^HTTP\/1\.1 431 /);
    const res = await fetch(sim.base + '/v1/models');
    assert.equal(res.status, 200);
  });

  test('/sim/* is not counted; /sim/reset resets', async () => {
    await fetch(sim.base + '/sim/reset', { method: 'POST' });
    let s = await stats(sim.base);
    assert.equal(s.requests, 0);
    await fetch(sim.base + '/sim/echo');
    await postJSON(sim.base, '/v1/chat/completions', chatBody());
    await fetch(sim.base + '/v1/models');
    s = await stats(sim.base);
    assert.equal(s.requests, 2);
    assert.equal(s.completed, 2);
    assert.equal(s.by_path['/v1/chat/completions'], 1);
    assert.equal(s.by_path['/v1/models'], 1);
    assert.equal(s.in_flight, 0);
    assert.equal(s.queued, 0);
  });
});

describe('HTTP/1.1 slots, timing and aborts', () => {
  let sim;
  before(async () => {
    sim = await startSim(['--slots', '1', '--ttft-ms', '200', '--max-tokens', '4']);
  });
  after(async () => sim.stop());

  test('--slots 1: the second request waits FIFO', async () => {
    await fetch(sim.base + '/sim/reset', { method: 'POST' });
    const t0 = Date.now();
    const a = postJSON(sim.base, '/v1/chat/completions', chatBody());
    await waitFor(async () => (await stats(sim.base)).in_flight === 1, 'the first holding the slot');
    const b = postJSON(sim.base, '/v1/chat/completions', chatBody());
    await waitFor(async () => (await stats(sim.base)).queued === 1, 'the second waiting');
    const s = await stats(sim.base);
    assert.equal(s.in_flight, 1);
    assert.equal(s.queued, 1);
    assert.equal((await a).res.status, 200);
    const ta = Date.now() - t0;
    assert.equal((await b).res.status, 200);
    const tb = Date.now() - t0;
    assert.ok(ta >= 190, `first took ${ta}`);
    assert.ok(tb >= 390, `second waited for the first: ${tb}`);
    const s2 = await stats(sim.base);
    assert.equal(s2.queued, 0);
    assert.equal(s2.in_flight, 0);
    assert.equal(s2.completed, 2);
  });

  test('a waiting client that disconnects leaves the queue', async () => {
    await fetch(sim.base + '/sim/reset', { method: 'POST' });
    const a = postJSON(sim.base, '/v1/chat/completions', chatBody());
    await waitFor(async () => (await stats(sim.base)).in_flight === 1, 'the first holding the slot');
    const ac = new AbortController();
    const b = fetch(sim.base + '/v1/chat/completions', {
      method: 'POST',
      body: JSON.stringify(chatBody()),
      signal: ac.signal,
    }).catch((e) => e);
    await waitFor(async () => (await stats(sim.base)).queued === 1, 'the second waiting');
    ac.abort();
    await b;
    await waitFor(async () => (await stats(sim.base)).client_gone === 1, 'the disconnect seen');
    const s = await stats(sim.base);
    assert.equal(s.queued, 0);
    assert.equal(s.client_gone, 1);
    assert.equal((await a).res.status, 200);
    const s2 = await stats(sim.base);
    assert.equal(s2.in_flight, 0);
    assert.equal(s2.completed, 1);
  });

  test('x-sim-abort-after: streaming ends early without [DONE]', async () => {
    await fetch(sim.base + '/sim/reset', { method: 'POST' });
    const res = await fetch(sim.base + '/v1/chat/completions', {
      method: 'POST',
      headers: { 'x-sim-abort-after': '2' },
      body: JSON.stringify(chatBody({ stream: true })),
    });
    assert.equal(res.status, 200);
    const { text, error } = await readAll(res);
    assert.ok(!text.includes('[DONE]'));
    assert.ok(error !== null || !text.includes('finish_reason":"stop'), 'broken stream');
    const tokens = text
      .split('\n\n')
      .filter((e) => e.startsWith('data: {'))
      .map((e) => JSON.parse(e.slice(6)))
      .filter((c) => c.choices[0]?.delta?.content);
    assert.equal(tokens.length, 2);
    const s = await stats(sim.base);
    assert.equal(s.aborted, 1);
    assert.equal(s.in_flight, 0);
  });

  test('x-sim-abort-after: non-streaming body is cut short', async () => {
    const res = await fetch(sim.base + '/v1/chat/completions', {
      method: 'POST',
      headers: { 'x-sim-abort-after': '1' },
      body: JSON.stringify(chatBody()),
    });
    assert.equal(res.status, 200);
    const { error } = await readAll(res);
    assert.ok(error, 'body read rejects');
  });
});

describe('fail-rate', () => {
  let sim;
  before(async () => {
    sim = await startSim(['--fail-rate', '0.5', '--seed', '7', '--max-tokens', '3']);
  });
  after(async () => sim.stop());

  test('about half of the responses abort, deterministically counted', async () => {
    let broken = 0;
    const N = 40;
    for (let i = 0; i < N; i++) {
      const res = await fetch(sim.base + '/v1/chat/completions', {
        method: 'POST',
        body: JSON.stringify(chatBody({ stream: i % 2 === 0 })),
      });
      const { text, error } = await readAll(res);
      if (error || (i % 2 === 0 && !text.includes('[DONE]'))) broken++;
    }
    assert.ok(broken > 5 && broken < 35, `broken ${broken}/${N}`);
    const s = await stats(sim.base);
    assert.equal(s.aborted, broken);
    assert.equal(s.completed, N - broken);
  });
});

describe('h2c', () => {
  let sim;
  let session;
  before(async () => {
    sim = await startSim(['--h2c', '--max-tokens', '6', '--itl-ms', '5']);
    session = http2.connect(sim.base);
    await new Promise((r, j) => {
      session.once('connect', r);
      session.once('error', j);
    });
  });
  after(async () => {
    session.close();
    await sim.stop();
  });

  test('non-streaming and streaming chat over one connection', async () => {
    const body = chatBody({ max_tokens: 5 });
    const plain = await h2req(session, { path: '/v1/chat/completions', body });
    assert.equal(plain.status, 200);
    const pj = JSON.parse(plain.text);
    assert.equal(pj.object, 'chat.completion');
    const st = await h2req(session, {
      path: '/v1/chat/completions',
      body: { ...body, stream: true, stream_options: { include_usage: true } },
    });
    assert.equal(st.status, 200);
    assert.match(st.headers['content-type'], /^text\/event-stream/);
    const data = sseData(st.text);
    assert.equal(data.at(-1), '[DONE]');
    const chunks = data.slice(0, -1).map((d) => JSON.parse(d));
    const content = chunks
      .filter((c) => c.choices.length && c.choices[0].delta.content)
      .map((c) => c.choices[0].delta.content)
      .join('');
    assert.equal(content, pj.choices[0].message.content);
    assert.equal(chunks.at(-1).usage.completion_tokens, 5);
  });

  test('multiplexing: concurrent streams interleave', async () => {
    // Judged by the order of events, not by a duration: served one after
    // the other, no stream would get data before the one ahead of it ended.
    let seq = 0;
    const reqs = [];
    for (let i = 0; i < 20; i++) {
      reqs.push(new Promise((resolve, reject) => {
        const out = { text: '', first: null, end: null };
        const req = session.request({ ':method': 'POST', ':path': '/v1/chat/completions' });
        req.setEncoding('utf8');
        req.on('data', (d) => { out.first ??= ++seq; out.text += d; });
        req.on('end', () => { out.end = ++seq; resolve(out); });
        req.on('error', reject);
        req.end(JSON.stringify(chatBody({ stream: true, max_tokens: 10 })));
      }));
    }
    const out = await Promise.all(reqs);
    for (const r of out) assert.equal(sseData(r.text).at(-1), '[DONE]');
    const firstEnd = Math.min(...out.map((r) => r.end));
    const started = out.filter((r) => r.first < firstEnd).length;
    assert.ok(started >= 2, `${started} streams had data before the first one ended`);
  });

  test('x-sim-abort-after resets the stream with INTERNAL_ERROR', async () => {
    const r = await h2req(session, {
      path: '/v1/chat/completions',
      headers: { 'x-sim-abort-after': '2' },
      body: chatBody({ stream: true }),
    });
    assert.equal(r.status, 200);
    assert.ok(r.error, 'stream errors');
    assert.equal(r.rstCode, http2.constants.NGHTTP2_INTERNAL_ERROR);
    assert.ok(!r.text.includes('[DONE]'));
    const nonstream = await h2req(session, {
      path: '/v1/chat/completions',
      headers: { 'x-sim-abort-after': '1' },
      body: chatBody(),
    });
    assert.equal(nonstream.rstCode, http2.constants.NGHTTP2_INTERNAL_ERROR);
    assert.ok(nonstream.error);
  });

  test('echo, models, embeddings, 404 over h2', async () => {
    const e = await h2req(session, {
      path: '/sim/echo/h2?q=1',
      headers: { 'x-custom': 'v' },
      body: 'payload',
    });
    const ej = JSON.parse(e.text);
    assert.equal(ej.protocol, 'HTTP/2');
    assert.equal(ej.path, '/sim/echo/h2?q=1');
    assert.equal(ej.body, 'payload');
    assert.deepEqual(
      ej.headers.find(([n]) => n === 'x-custom'),
      ['x-custom', 'v'],
    );
    const m = await h2req(session, { method: 'GET', path: '/v1/models' });
    assert.equal(JSON.parse(m.text).data[0].id, 'sim-model');
    const emb = await h2req(session, { path: '/v1/embeddings', body: { input: 'x' } });
    assert.equal(JSON.parse(emb.text).data[0].embedding.length, 8);
    const nf = await h2req(session, { method: 'GET', path: '/nope' });
    assert.equal(nf.status, 404);
    assert.equal(JSON.parse(nf.text).type, 'NotFoundError');
  });

  test('a reset by the client counts as client_gone', async () => {
    await h2req(session, { path: '/sim/reset' });
    const req = session.request({ ':method': 'POST', ':path': '/v1/chat/completions' });
    req.on('error', () => {});
    req.end(JSON.stringify(chatBody({ stream: true, max_tokens: 200 })));
    await new Promise((r) => req.once('data', r));
    req.close(http2.constants.NGHTTP2_CANCEL);
    const s = await waitFor(async () => {
      const st = JSON.parse((await h2req(session, { method: 'GET', path: '/sim/stats' })).text);
      return st.client_gone === 1 && st;
    }, 'the reset seen');
    assert.equal(s.client_gone, 1);
    assert.equal(s.in_flight, 0);
  });
});

describe('threads', () => {
  let sim;
  before(async () => {
    sim = await startSim(['--threads', '3', '--slots', '2', '--ttft-ms', '100']);
  });
  after(async () => sim.stop());

  test('global slots across threads', async () => {
    // Six requests, two slots in all (not per thread): never more than two
    // run, so they take at least three rounds of ttft.
    const t0 = Date.now();
    const reqs = [];
    for (let i = 0; i < 6; i++) {
      // separate connections so they spread over the threads
      reqs.push(
        fetch(sim.base + '/v1/chat/completions', {
          method: 'POST',
          body: JSON.stringify(chatBody()),
        }).then((r) => r.json()),
      );
    }
    let done = false;
    const all = Promise.all(reqs).finally(() => { done = true; });
    let most = 0;
    while (!done) {
      most = Math.max(most, (await stats(sim.base)).in_flight);
      await sleep(5);
    }
    const out = await all;
    assert.ok(out.every((j) => j.object === 'chat.completion'));
    assert.ok(most <= 2, `at most two in flight (saw ${most})`);
    assert.ok(Date.now() - t0 >= 290, `three rounds of 100 ms (${Date.now() - t0} ms)`);
  });
});
