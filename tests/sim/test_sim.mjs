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

// ---------------------------------------------------------------- KV cache

// A chat body whose prompt is exactly `tokens` tokens by the sim's estimate
// (ceil(characters / 4) over the message texts).
const kvBody = (tokens, extra = {}) => ({
  model: 'test-model',
  messages: [{ role: 'user', content: 'abcd'.repeat(tokens) }],
  ...extra,
});

async function simConfig(base, body) {
  const res = await fetch(base + '/sim/config', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: res.status, json: await res.json() };
}

// A streaming request read to its end; resolves { text, error, end } with
// the time its last byte arrived.
async function streamAll(base, body, signal) {
  const res = await fetch(base + '/v1/chat/completions', {
    method: 'POST',
    body: JSON.stringify({ ...body, stream: true }),
    signal,
  });
  const out = await readAll(res);
  return { ...out, status: res.status, end: Date.now() };
}

const contentOf = (text) =>
  sseData(text)
    .filter((d) => d !== '[DONE]')
    .map((d) => JSON.parse(d))
    .filter((c) => c.choices.length && c.choices[0].delta.content)
    .map((c) => c.choices[0].delta.content)
    .join('');

// A request held in the sim until aborted (long --ttft-ms); resolves when
// the sim has counted it as running or waiting.
function holdRequest(base, body) {
  const ac = new AbortController();
  const done = fetch(base + '/v1/chat/completions', {
    method: 'POST',
    body: JSON.stringify(body),
    signal: ac.signal,
  }).catch((e) => e);
  return { abort: () => ac.abort(), done };
}

describe('KV cache: admission, FIFO waiting, long prompts', () => {
  let sim;
  before(async () => {
    sim = await startSim(['--kv-tokens', '100', '--slots', '8', '--ttft-ms', '400', '--max-tokens', '4']);
  });
  after(async () => sim.stop());

  test('a sequence starts only when its prompt fits; the others wait FIFO', async () => {
    await fetch(sim.base + '/sim/reset', { method: 'POST' });
    const t = {};
    const post = (name, tokens) =>
      postJSON(sim.base, '/v1/chat/completions', kvBody(tokens)).then((r) => {
        t[name] = Date.now();
        return r;
      });
    const a = post('a', 60);
    await waitFor(async () => (await stats(sim.base)).running === 1, 'A running');
    const b = post('b', 50); // 60 + 50 > 100: waits although 7 slots are free
    await waitFor(async () => (await stats(sim.base)).waiting === 1, 'B waiting');
    const c = post('c', 10); // would fit, but B is ahead of it
    await waitFor(async () => (await stats(sim.base)).waiting === 2, 'C waiting');
    const s = await stats(sim.base);
    assert.equal(s.running, 1, 'C did not overtake B');
    assert.equal(s.in_flight, s.running);
    assert.equal(s.queued, s.waiting);
    assert.equal(s.kv_tokens_used, 60, 'A holds its prompt during prefill');
    assert.equal(s.kv_tokens_total, 100);
    assert.equal(s.slots, 8);
    const ra = await a;
    assert.equal(ra.json.usage.prompt_tokens, 60);
    assert.equal(ra.json.usage.completion_tokens, 4);
    // A's KV (64 by its end) is freed: B and C both fit now, in order.
    const s2 = await waitFor(async () => {
      const st = await stats(sim.base);
      return st.running === 2 && st;
    }, 'B and C running');
    assert.equal(s2.waiting, 0);
    assert.ok(s2.kv_tokens_used >= 60 && s2.kv_tokens_used <= 68, `kv ${s2.kv_tokens_used}`);
    const [rb, rc] = await Promise.all([b, c]);
    assert.equal(rb.json.usage.prompt_tokens, 50);
    assert.equal(rc.json.usage.prompt_tokens, 10);
    assert.ok(t.c - t.a >= 380, `C waited for A's whole generation (${t.c - t.a} ms)`);
    const s3 = await stats(sim.base);
    assert.deepEqual([s3.running, s3.waiting, s3.kv_tokens_used, s3.preemptions], [0, 0, 0, 0]);
    assert.equal(s3.prompt_tokens, 120);
    assert.equal(s3.generation_tokens, 12);
  });

  test('long prompts take more KV: 8 short ones run at once, 10x longer ones two by two', async () => {
    for (const [tokens, running] of [[10, 8], [40, 2]]) {
      await fetch(sim.base + '/sim/reset', { method: 'POST' });
      const reqs = [];
      for (let i = 0; i < 8; i++) reqs.push(postJSON(sim.base, '/v1/chat/completions', kvBody(tokens)));
      const s = await waitFor(async () => {
        const st = await stats(sim.base);
        return st.running + st.waiting === 8 && st;
      }, 'all eight in the sim');
      assert.equal(s.running, running, `${tokens}-token prompts: ${JSON.stringify(s)}`);
      assert.equal(s.kv_tokens_used, running * tokens);
      const out = await Promise.all(reqs);
      assert.ok(out.every((r) => r.json.usage.prompt_tokens === tokens));
    }
    // completions prompts are estimated alike
    const p = postJSON(sim.base, '/v1/completions', { prompt: 'wxyz'.repeat(30), max_tokens: 2 });
    const s = await waitFor(async () => {
      const st = await stats(sim.base);
      return st.running === 1 && st;
    }, 'the completion running');
    assert.equal(s.kv_tokens_used, 30);
    assert.equal((await p).json.usage.prompt_tokens, 30);
  });

  test('--max-model-len is capped at --kv-tokens: a request that could never fit is a 400', async () => {
    const models = await (await fetch(sim.base + '/v1/models')).json();
    assert.equal(models.data[0].max_model_len, 100);
    const r = await postJSON(sim.base, '/v1/chat/completions', kvBody(98, { max_tokens: 4 }));
    assert.equal(r.res.status, 400);
    assert.match(r.json.message, /maximum context length is 100 tokens/);
  });
});

describe('KV cache: preemption', () => {
  let sim;
  before(async () => {
    sim = await startSim(['--kv-tokens', '100', '--slots', '8', '--ttft-ms', '20', '--itl-ms', '10']);
  });
  after(async () => sim.stop());

  test('the newest sequence is preempted, re-queued at the head and recomputed', async () => {
    await fetch(sim.base + '/sim/reset', { method: 'POST' });
    // A (oldest, streaming) and B (newest, not streaming): 40 + 40 prompt
    // tokens, 40 tokens each; the cache overflows after 20 generated tokens.
    const a = streamAll(sim.base, kvBody(40, { max_tokens: 40 }));
    await waitFor(async () => (await stats(sim.base)).running === 1, 'A running');
    const b = postJSON(sim.base, '/v1/chat/completions', kvBody(40, { max_tokens: 40 })).then((r) => ({
      ...r,
      end: Date.now(),
    }));
    const s = await waitFor(async () => {
      const st = await stats(sim.base);
      return st.preemptions === 1 && st;
    }, 'a preemption');
    assert.equal(s.running, 1);
    assert.equal(s.waiting, 1, 'the preempted sequence waits');
    assert.ok(s.kv_tokens_used <= 100);
    const m = await scrape(sim.base);
    assert.equal(m.value('vllm:num_preemptions_total'), 1);
    const [ra, rb] = await Promise.all([a, b]);
    // B (the newest) was preempted: it can run again only after A is done
    // (B needs 40 + its generated tokens, A holds up to 80).
    assert.ok(ra.end <= rb.end, 'A, never preempted, finished first');
    assert.equal(ra.error, null);
    assert.equal(sseData(ra.text).at(-1), '[DONE]');
    assert.equal(contentOf(ra.text).match(/ [a-z]+/g).length, 40);
    assert.equal(rb.res.status, 200);
    assert.equal(rb.json.usage.completion_tokens, 40);
    assert.equal(rb.json.usage.prompt_tokens, 40);
    const s2 = await stats(sim.base);
    assert.deepEqual([s2.running, s2.waiting, s2.kv_tokens_used], [0, 0, 0]);
    assert.equal(s2.preemptions, 1, 'alone, each of them fits');
    assert.equal(s2.prompt_tokens, 80, 'a recomputed prompt is counted once');
    assert.equal(s2.generation_tokens, 80);
    assert.equal(s2.completed, 2);
    // the answers are those of an undisturbed run
    const ref = await postJSON(sim.base, '/v1/chat/completions', kvBody(40, { max_tokens: 40 }));
    assert.equal(rb.json.choices[0].message.content, ref.json.choices[0].message.content);
    assert.equal(contentOf(ra.text), ref.json.choices[0].message.content);
  });

  test('a sequence alone in a cache lowered under it waits for room instead of spinning', async () => {
    await fetch(sim.base + '/sim/reset', { method: 'POST' });
    const a = streamAll(sim.base, kvBody(50, { max_tokens: 30 }));
    await waitFor(async () => (await stats(sim.base)).kv_tokens_used >= 55, 'A generating');
    assert.equal((await simConfig(sim.base, { kv_tokens: 60 })).status, 200);
    const s = await waitFor(async () => {
      const st = await stats(sim.base);
      return st.waiting === 1 && st;
    }, 'A preempted');
    assert.equal(s.running, 0);
    await sleep(200); // 20 prefills' worth: a spinning restart would show here
    const s2 = await stats(sim.base);
    assert.equal(s2.preemptions, 1);
    assert.equal(s2.waiting, 1);
    assert.equal((await simConfig(sim.base, { kv_tokens: 100 })).status, 200);
    const ra = await a;
    assert.equal(contentOf(ra.text).match(/ [a-z]+/g).length, 30);
    assert.equal(sseData(ra.text).at(-1), '[DONE]');
    const s3 = await stats(sim.base);
    assert.deepEqual([s3.running, s3.waiting, s3.kv_tokens_used], [0, 0, 0]);
  });
});

describe('KV cache under threads', () => {
  let sim;
  before(async () => {
    sim = await startSim(['--threads', '3', '--kv-tokens', '300', '--slots', '6', '--ttft-ms', '5', '--itl-ms', '2']);
  });
  after(async () => sim.stop());

  test('one cache for all threads: bounds hold, preemptions happen, every answer is whole', async () => {
    await fetch(sim.base + '/sim/reset', { method: 'POST' });
    // Six running need at least 6 * (30 + 30) > 300: preemption is certain.
    const shapes = [];
    for (let i = 0; i < 30; i++) shapes.push({ prompt: 30 + ((i * 7) % 21), n: 30 + ((i * 11) % 21), stream: i % 3 !== 0 });
    const reqs = shapes.map((sh) =>
      sh.stream
        ? streamAll(sim.base, kvBody(sh.prompt, { max_tokens: sh.n }))
        : postJSON(sim.base, '/v1/chat/completions', kvBody(sh.prompt, { max_tokens: sh.n })),
    );
    let done = false;
    const all = Promise.all(reqs).finally(() => (done = true));
    const seen = { kv: 0, running: 0 };
    while (!done) {
      const st = await stats(sim.base);
      seen.kv = Math.max(seen.kv, st.kv_tokens_used);
      seen.running = Math.max(seen.running, st.running);
      await sleep(3);
    }
    const out = await all;
    assert.ok(seen.kv <= 300, `kv never above the cache (${seen.kv})`);
    assert.ok(seen.running <= 6, `running never above the slots (${seen.running})`);
    out.forEach((r, i) => {
      if (shapes[i].stream) {
        assert.equal(r.error, null);
        assert.equal(contentOf(r.text).match(/ [a-z]+/g).length, shapes[i].n);
      } else {
        assert.equal(r.json.usage.completion_tokens, shapes[i].n);
      }
    });
    const s = await stats(sim.base);
    assert.deepEqual([s.running, s.waiting, s.kv_tokens_used], [0, 0, 0]);
    assert.ok(s.preemptions >= 1, `preemptions ${s.preemptions}`);
    assert.equal(s.prompt_tokens, shapes.reduce((a, sh) => a + sh.prompt, 0));
    assert.equal(s.generation_tokens, shapes.reduce((a, sh) => a + sh.n, 0));
    const m = await scrape(sim.base);
    assert.equal(m.value('vllm:num_preemptions_total'), s.preemptions);
    assert.equal(m.value('vllm:time_to_first_token_seconds_count'), 30);
  });
});

describe('/sim/config', () => {
  let sim;
  before(async () => {
    sim = await startSim(['--kv-tokens', '1000', '--slots', '8', '--ttft-ms', '60000']);
  });
  after(async () => sim.stop());

  test('lowering capacity preempts the newest, raising admits the waiters', async () => {
    await fetch(sim.base + '/sim/reset', { method: 'POST' });
    assert.deepEqual(await (await fetch(sim.base + '/sim/config')).json(), {
      slots: 8, kv_tokens: 1000, metrics: true,
    });
    const held = [];
    for (let i = 1; i <= 4; i++) {
      held.push(holdRequest(sim.base, kvBody(100)));
      await waitFor(async () => (await stats(sim.base)).running === i, `request ${i} running`);
    }
    const check = async (want, what) => {
      const s = await stats(sim.base);
      const got = Object.fromEntries(Object.keys(want).map((k) => [k, s[k]]));
      assert.deepEqual(got, want, what);
    };
    let r = await simConfig(sim.base, { kv_tokens: 250 });
    assert.equal(r.status, 200);
    assert.deepEqual(r.json, { slots: 8, kv_tokens: 250, metrics: true });
    await check({ running: 2, waiting: 2, kv_tokens_used: 200, kv_tokens_total: 250, preemptions: 2 }, 'a smaller cache');
    r = await simConfig(sim.base, { kv_tokens: 1000 });
    await check({ running: 4, waiting: 0, kv_tokens_used: 400, preemptions: 2 }, 'the cache back');
    r = await simConfig(sim.base, { slots: 1 });
    assert.deepEqual(r.json, { slots: 1, kv_tokens: 1000, metrics: true });
    await check({ running: 1, waiting: 3, kv_tokens_used: 100, slots: 1, preemptions: 5 }, 'one slot');
    r = await simConfig(sim.base, { slots: 8, kv_tokens: 0 });
    await check({ running: 4, waiting: 0, kv_tokens_used: 400, kv_tokens_total: 0 }, 'unlimited');
    const m = await scrape(sim.base);
    assert.equal(m.value('vllm:kv_cache_usage_perc'), 0, 'an unlimited cache reads 0');
    assert.equal(m.value('vllm:num_requests_running'), 4);

    // a sequence larger than the whole cache waits until the cache grows
    await simConfig(sim.base, { kv_tokens: 450 });
    held.push(holdRequest(sim.base, kvBody(100)));
    await waitFor(async () => (await stats(sim.base)).waiting === 1, 'the fifth waiting');
    await check({ running: 4, waiting: 1, kv_tokens_used: 400 }, 'no room for a fifth');
    await simConfig(sim.base, { kv_tokens: 500 });
    await check({ running: 5, waiting: 0, kv_tokens_used: 500 }, 'room for the fifth');

    for (const h of held) h.abort();
    await Promise.all(held.map((h) => h.done));
    await waitFor(async () => (await stats(sim.base)).client_gone === 5, 'the aborts seen');
    await check({ running: 0, waiting: 0, kv_tokens_used: 0 }, 'all gone');
    await simConfig(sim.base, { kv_tokens: 1000 });
  });

  test('a bad body is a 400 and changes nothing', async () => {
    const before = await (await fetch(sim.base + '/sim/config')).json();
    for (const body of [
      '{"slots": ',
      '[1]',
      '"x"',
      '',
      { slots: 0 },
      { slots: 2.5 },
      { slots: '4' },
      { kv_tokens: -1 },
      { kv_tokens: 1e12 },
      { metrics: 1 },
      { slot: 4 },
      { slots: 4, kv_tokens: -5 }, // all or nothing
    ]) {
      const r = await simConfig(sim.base, body);
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.equal(r.json.object, 'error');
      assert.equal(r.json.code, 400);
    }
    assert.deepEqual(await (await fetch(sim.base + '/sim/config')).json(), before);
    const del = await fetch(sim.base + '/sim/config', { method: 'DELETE' });
    assert.equal(del.status, 405);
    assert.deepEqual((await simConfig(sim.base, {})).json, before, 'an empty object changes nothing');
  });
});

// ---------------------------------------------------------------- /metrics

// A strict reader of the Prometheus text format 0.0.4 as the sim writes it:
// every sample belongs to a family announced by # HELP then # TYPE, names
// and label names are valid, values are numbers. Returns the families, the
// samples and value(name, labels) (the one sample matching).
function parseMetrics(text) {
  assert.ok(text.endsWith('\n'), 'ends with a newline');
  const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
  const families = new Map();
  const samples = [];
  let cur = null;
  for (const line of text.slice(0, -1).split('\n')) {
    let m;
    if ((m = /^# HELP (\S+) (.+)$/.exec(line))) {
      assert.match(m[1], NAME);
      assert.ok(!families.has(m[1]), `family ${m[1]} once`);
      cur = { name: m[1], help: m[2], type: null };
      families.set(m[1], cur);
    } else if ((m = /^# TYPE (\S+) (counter|gauge|histogram|summary|untyped)$/.exec(line))) {
      assert.equal(m[1], cur?.name, `# TYPE follows its # HELP: ${line}`);
      assert.equal(cur.type, null);
      cur.type = m[2];
    } else {
      m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
      assert.ok(m, `sample line: ${JSON.stringify(line)}`);
      const [, name, lab = '', val] = m;
      assert.ok(cur?.type, `sample after # TYPE: ${line}`);
      const suffixes = cur.type === 'histogram' ? ['_bucket', '_sum', '_count'] : [''];
      assert.ok(suffixes.some((s) => name === cur.name + s), `${name} belongs to ${cur.name}`);
      const labels = {};
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)/gy;
      let lm;
      let pos = 0;
      while (pos < lab.length && (lm = re.exec(lab))) {
        labels[lm[1]] = lm[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
        pos = re.lastIndex;
      }
      assert.equal(pos, lab.length, `labels parse: ${lab}`);
      const value = val === '+Inf' ? Infinity : val === '-Inf' ? -Infinity : Number(val);
      assert.ok(!Number.isNaN(value) || val === 'NaN', `value ${val}`);
      samples.push({ name, labels, value });
    }
  }
  const value = (name, labels = {}) => {
    const hit = samples.filter(
      (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
    );
    assert.equal(hit.length, 1, `one sample ${name} ${JSON.stringify(labels)}`);
    return hit[0].value;
  };
  return { families, samples, value };
}

async function scrape(base) {
  const res = await fetch(base + '/metrics');
  assert.equal(res.status, 200);
  return { ...parseMetrics(await res.text()), res };
}

// promtool check metrics: exit 0, or 3 (lint problems) when the only
// problem is the colon in vLLM's own names, which promtool's linter flags
// on real vLLM too. A parse error exits 1.
function promtool(text) {
  return new Promise((resolve, reject) => {
    const p = spawn('promtool', ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, out }));
    p.stdin.end(text);
  });
}

describe('/metrics', () => {
  let sim;
  const model = 'org/model "v1"\\x';
  before(async () => {
    sim = await startSim(['--kv-tokens', '500', '--ttft-ms', '300', '--max-tokens', '5', '--model', model]);
  });
  after(async () => sim.stop());

  test("vLLM's names, types and label; promtool parses it", async () => {
    const m = await scrape(sim.base);
    assert.equal(m.res.headers.get('content-type'), 'text/plain; version=0.0.4; charset=utf-8');
    const want = {
      'vllm:num_requests_running': 'gauge',
      'vllm:num_requests_waiting': 'gauge',
      'vllm:kv_cache_usage_perc': 'gauge',
      'vllm:gpu_cache_usage_perc': 'gauge',
      'vllm:num_preemptions_total': 'counter',
      'vllm:prompt_tokens_total': 'counter',
      'vllm:generation_tokens_total': 'counter',
      'vllm:time_to_first_token_seconds': 'histogram',
    };
    for (const [name, type] of Object.entries(want)) {
      assert.equal(m.families.get(name)?.type, type, name);
      assert.ok(m.families.get(name).help.length > 0);
    }
    assert.ok(m.samples.every((s) => s.labels.model_name === model), 'model_name on every sample');
    const r = await promtool((await (await fetch(sim.base + '/metrics')).text()));
    const problems = r.out.split('\n').filter((l) => l.trim() && !/should not contain ':'/.test(l));
    assert.ok(r.code === 0 || (r.code === 3 && problems.length === 0), `promtool exited ${r.code}:\n${r.out}`);
  });

  test('consistent with /sim/stats and with what the clients got', async () => {
    await fetch(sim.base + '/sim/reset', { method: 'POST' });
    const t0 = Date.now();
    const p = postJSON(sim.base, '/v1/chat/completions', kvBody(125));
    const s = await waitFor(async () => {
      const st = await stats(sim.base);
      return st.running === 1 && st;
    }, 'the request in prefill');
    let m = await scrape(sim.base);
    assert.equal(m.value('vllm:num_requests_running'), s.running);
    assert.equal(m.value('vllm:num_requests_waiting'), s.waiting);
    assert.equal(m.value('vllm:kv_cache_usage_perc'), 125 / 500);
    assert.equal(m.value('vllm:gpu_cache_usage_perc'), 125 / 500);
    const first = await p;
    const took = (Date.now() - t0) / 1000;
    const stream = await streamAll(sim.base, kvBody(7, { max_tokens: 3 }));
    const emb = await postJSON(sim.base, '/v1/embeddings', { input: 'abcdefgh' });
    assert.equal(emb.json.usage.prompt_tokens, 2);
    const st = await stats(sim.base);
    m = await scrape(sim.base);
    assert.equal(st.prompt_tokens, 125 + 7 + 2);
    assert.equal(m.value('vllm:prompt_tokens_total'), st.prompt_tokens);
    assert.equal(st.generation_tokens, first.json.usage.completion_tokens + contentOf(stream.text).match(/ [a-z]+/g).length);
    assert.equal(m.value('vllm:generation_tokens_total'), st.generation_tokens);
    assert.equal(m.value('vllm:num_preemptions_total'), st.preemptions);
    assert.equal(m.value('vllm:kv_cache_usage_perc'), 0);
    // the histogram: cumulative buckets, +Inf = count = two generations
    const h = 'vllm:time_to_first_token_seconds';
    const buckets = m.samples.filter((x) => x.name === `${h}_bucket`);
    assert.ok(buckets.length > 10);
    for (let i = 1; i < buckets.length; i++) {
      assert.ok(buckets[i].value >= buckets[i - 1].value, 'cumulative');
      const le = (b) => (b.labels.le === '+Inf' ? Infinity : Number(b.labels.le));
      assert.ok(le(buckets[i]) > le(buckets[i - 1]), 'le ascending');
    }
    assert.equal(buckets.at(-1).labels.le, '+Inf');
    assert.equal(m.value(`${h}_count`), 2);
    assert.equal(m.value(`${h}_bucket`, { le: '+Inf' }), 2);
    assert.equal(m.value(`${h}_bucket`, { le: '0.25' }), 0, 'both waited a 300 ms prefill');
    assert.equal(m.value(`${h}_bucket`, { le: '2.5' }), 2);
    const sum = m.value(`${h}_sum`);
    assert.ok(sum >= 0.59 && sum <= took + 1.5, `ttft sum ${sum}`);
    // scrapes are not requests
    assert.equal(st.requests, 3);
    assert.ok(st.metrics_scrapes >= 1);
    assert.equal(st.by_path['/metrics'], undefined);
    const post = await fetch(sim.base + '/metrics', { method: 'POST' });
    assert.equal(post.status, 405);
  });
});

describe('--no-metrics', () => {
  let sim;
  before(async () => {
    sim = await startSim(['--no-metrics']);
  });
  after(async () => sim.stop());

  test('/metrics answers 404 until /sim/config turns it on', async () => {
    const res = await fetch(sim.base + '/metrics');
    assert.equal(res.status, 404);
    const j = await res.json();
    assert.equal(j.object, 'error');
    assert.equal(j.type, 'NotFoundError');
    assert.equal((await stats(sim.base)).metrics_scrapes, 0);
    assert.equal((await simConfig(sim.base, { metrics: true })).json.metrics, true);
    assert.equal((await fetch(sim.base + '/metrics')).status, 200);
    assert.equal((await simConfig(sim.base, { metrics: false })).json.metrics, false);
    assert.equal((await fetch(sim.base + '/metrics')).status, 404);
  });
});
