// The official OpenAI Node SDK (tests/clients, pinned by package-lock.json)
// talking to obleth as if it were OpenAI: streaming and non-streaming chat
// completions, completions, embeddings, models, and errors the SDK raises.
import test from 'node:test';
import assert from 'node:assert/strict';
import { startSim, startObleth, stop, clientRequire } from './lib.mjs';

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
