// The official OpenAI Node SDK (tests/clients, pinned by package-lock.json)
// talking to obleth as if it were OpenAI: streaming and non-streaming chat
// completions, completions, embeddings, models, and errors the SDK raises.
import test from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { startSim, startObleth, stop, clientRequire, simStats, tempDir } from './lib.mjs';

const OpenAI = clientRequire('openai').default ?? clientRequire('openai');
let sim, gw, client;

test.before(async () => {
  sim = await startSim(['--itl-ms', '5']);
  gw = await startObleth({
    upstreams: [{ name: 'sim', endpoints: [sim.url] }],
    routes: [{ prefix: '/v1/', class: 'inference' }],
    models: [{ name: 'gpt-sim', upstream: 'sim', upstream_model: 'sim-model' }],
  });
  client = new OpenAI({ apiKey: 'sk-test', baseURL: `${gw.url}/v1`, maxRetries: 0 });
});

test.after(async () => {
  await stop(gw.proc);
  await stop(sim.proc);
});

const messages = [{ role: 'user', content: 'Explain deficit round robin in one line.' }];

test('non-streaming chat completion', async () => {
  const r = await client.chat.completions.create({ model: 'gpt-sim', messages, max_tokens: 7 });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.usage.completion_tokens, 7);
  assert.ok(r.choices[0].message.content.length > 0);
});

test('streaming chat completion with usage', async () => {
  const stream = await client.chat.completions.create({
    model: 'gpt-sim', messages, max_tokens: 9, stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  let usage = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    if (chunk.choices[0]?.delta?.content) text += chunk.choices[0].delta.content;
    if (chunk.usage) usage = chunk.usage;
  }
  assert.ok(chunks >= 9);
  assert.equal(usage.completion_tokens, 9);
  const full = await client.chat.completions.create({ model: 'gpt-sim', messages, max_tokens: 9 });
  assert.equal(text, full.choices[0].message.content);
});

test('completions and embeddings', async () => {
  const c = await client.completions.create({ model: 'gpt-sim', prompt: 'Once upon a time', max_tokens: 4 });
  assert.equal(c.object, 'text_completion');
  assert.equal(c.usage.completion_tokens, 4);
  const e = await client.embeddings.create({ model: 'gpt-sim', input: ['a', 'b'] });
  assert.equal(e.data.length, 2);
  assert.ok(Array.isArray(e.data[0].embedding));
});

test('models list comes from the gateway config', async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.deepEqual(ids, ['gpt-sim']);
});

test('an unknown model is a NotFoundError with code model_not_found', async () => {
  await assert.rejects(client.chat.completions.create({ model: 'nope', messages }), (err) => {
    assert.equal(err.status, 404);
    assert.equal(err.code, 'model_not_found');
    return true;
  });
});

// Bodies the gateway and a Python or Node upstream would read differently:
// obleth (cJSON, its scans) read the first of two equal keys and cut a
// string at \u0000, json.loads and JSON.parse read the last key and the
// whole string. Each would have been checked (allow-list, routing, cost) as
// one request and served as another; each is 400 invalid_json and reaches
// no upstream, on a route with the cache (whose fast path reads the model
// first) and on one without.
test('ambiguous bodies (duplicate keys, also escaped; \\u0000 in the model) are 400 invalid_json and never reach the upstream', async () => {
  const s = await startSim();
  let g;
  try {
    g = await startObleth({
      upstreams: [{ name: 'sim', endpoints: [s.url] }],
      routes: [{ prefix: '/v1/', class: 'inference' }, { prefix: '/nc/v1/', class: 'inference', rewrite: '/v1/', cache: false }],
      models: [{ name: 'sim-model', upstream: 'sim' }, { name: 'llama-3-8b', upstream: 'sim' }],
      tenants: [{ name: 'bob', keys: [{ id: 'b', secret: 'sk-bob' }], models: ['sim-model'] }],
      cache: { path: join(tempDir(), 'cache.mdb') },
    });
    const msgs = '"messages":[{"role":"user","content":"hi"}]';
    const attacks = {
      'escaped duplicate model': `{"model":"sim-model","mod\\u0065l":"llama-3-8b",${msgs}}`,
      'duplicate model': `{"model":"sim-model","model":"llama-3-8b",${msgs}}`,
      '\\u0000 in the model': `{"model":"sim-model\\u0000llama-3-8b",${msgs}}`,
      '\\u0000 in a model key': `{"model\\u0000":"sim-model","model":"llama-3-8b",${msgs}}`,
      'escaped duplicate max_tokens': `{"model":"sim-model","max_tokens":1,${msgs},"max_t\\u006fkens":100000}`,
      'duplicate stream': `{"model":"sim-model","stream":false,${msgs},"stream":true}`,
      'tru': `{"model":"sim-model",${msgs},"logprobs":tru}`,
    };
    const post = async (path, body) => {
      const r = await fetch(`${g.url}${path}`, { method: 'POST', headers: { authorization: 'Bearer sk-bob', 'content-type': 'application/json' }, body, signal: AbortSignal.timeout(5000) });
      return { status: r.status, text: await r.text() };
    };
    const before = (await simStats(s)).requests;
    for (const path of ['/v1/chat/completions', '/nc/v1/chat/completions']) {
      for (const [what, body] of Object.entries(attacks)) {
        // twice: the second may be answered from what the first left behind (the cache's memo of bodies)
        for (const round of [1, 2]) {
          const r = await post(path, body);
          const where = `${what} on ${path}, round ${round}: ${r.status} ${r.text}`;
          assert.equal(r.status, 400, where);
          const e = JSON.parse(r.text).error;
          assert.equal(e?.code, 'invalid_json', where);
          assert.equal(e.type, 'invalid_request_error', where);
          assert.equal(typeof e.message, 'string', where);
        }
      }
    }
    assert.equal((await simStats(s)).requests, before, 'no ambiguous body reached the upstream');
    // An escaped key alone is no ambiguity: it is read decoded, as the upstream reads it.
    const ok = await post('/nc/v1/chat/completions', `{"mod\\u0065l":"sim-model",${msgs},"max_tokens":3}`);
    assert.equal(ok.status, 200, ok.text);
    assert.equal(JSON.parse(ok.text).usage.completion_tokens, 3);
    const denied = await post('/v1/chat/completions', `{"mod\\u0065l":"llama-3-8b",${msgs}}`);
    assert.equal(denied.status, 403, denied.text);
    assert.equal(JSON.parse(denied.text).error.code, 'model_not_allowed');
    assert.equal((await simStats(s)).requests, before + 1, 'only the valid request reached the upstream');
  } finally {
    if (g) await stop(g.proc);
    await stop(s.proc);
  }
});
