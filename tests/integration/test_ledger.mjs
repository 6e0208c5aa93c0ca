// The usage ledger: one JSON line per finished request with what the client
// saw (status, tokens from the upstream's usage, cache outcome, tenant and
// key), every line written by the time obleth exits after SIGTERM, and
// size-based rotation.
import test from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { startSim, startObleth, stop, curl, chatBody, bearer } from './lib.mjs';

const json = ['-H', 'content-type: application/json'];

function config(sim, ledger) {
  return {
    upstreams: [{ name: 'sim', endpoints: [sim.url] }],
    routes: [{ prefix: '/v1/', class: 'inference', upstream: 'sim' }],
    tenants: [{ name: 'alice', group: 'prod', keys: [{ id: 'alice-1', secret: 'sk-alice' }] }],
    groups: [{ name: 'prod', weight: 2 }],
    cache: { path: 'cache.mdb' },
    ledger,
  };
}

function lines(path) {
  return readFileSync(path, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
}

test('ledger lines match what the clients saw, and are all written by exit', async () => {
  const sim = await startSim();
  const gw = await startObleth(config(sim, { path: 'ledger.jsonl' }));
  const path = join(gw.dir, 'ledger.jsonl');
  const seen = [];
  try {
    for (let i = 0; i < 3; i++) {
      const r = await curl(['-s', ...bearer('sk-alice'), ...json, '-d', JSON.stringify(chatBody({ max_tokens: 4 + i })), `${gw.url}/v1/chat/completions`]);
      seen.push({ status: r.status, usage: JSON.parse(r.body).usage });
    }
    // the same request again: a cache hit (writes are asynchronous: retry
    // until the answer is stored, however long a loaded machine takes)
    let hit = null;
    for (const end = Date.now() + 30000; !hit && Date.now() < end;) {
      const r = await curl(['-s', '-D', '-', ...bearer('sk-alice'), ...json, '-d', JSON.stringify(chatBody({ max_tokens: 4 })), `${gw.url}/v1/chat/completions`]);
      seen.push({ status: r.status, cache: /x-obleth-cache: (\w+)/i.exec(r.body)?.[1] });
      if (/x-obleth-cache: hit/i.test(r.body)) hit = r;
      else await new Promise((res) => setTimeout(res, 50));
    }
    assert.ok(hit, 'a hit');
    const bad = await curl(['-s', ...bearer('sk-nope'), ...json, '-d', JSON.stringify(chatBody()), `${gw.url}/v1/chat/completions`]);
    seen.push({ status: bad.status });
  } finally {
    await stop(gw.proc);
    await stop(sim.proc);
  }
  const got = lines(path);
  assert.equal(got.length, seen.length, 'one line per request, none lost at shutdown');
  for (let i = 0; i < 3; i++) {
    const l = got[i];
    assert.equal(l.status, 200);
    assert.equal(l.tenant, 'alice');
    assert.equal(l.group, 'prod');
    assert.equal(l.key_id, 'alice-1');
    assert.equal(l.class, 'inference');
    assert.equal(l.model, chatBody().model);
    assert.equal(l.admission, 'fast');
    assert.equal(l.tokens, 'actual');
    assert.equal(l.prompt_tokens, seen[i].usage.prompt_tokens);
    assert.equal(l.completion_tokens, seen[i].usage.completion_tokens);
    assert.equal(l.cache, 'miss');
    assert.match(l.request_id, /^[0-9a-f]{32}$/);
    assert.ok(l.total_ms >= l.ttfb_ms && l.ttfb_ms >= 0);
    assert.ok(l.bytes_in > 0 && l.bytes_out > 0);
    assert.match(l.upstream, /^127\.0\.0\.1:\d+$/);
    assert.match(l.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  }
  const hitLine = got[got.length - 2];
  assert.equal(hitLine.cache, 'hit');
  assert.equal(hitLine.admission, null, 'a hit is not admitted');
  assert.equal(hitLine.upstream, null, 'and touches no upstream');
  assert.equal(hitLine.tokens_saved, seen[0].usage.prompt_tokens + seen[0].usage.completion_tokens);
  const last = got[got.length - 1];
  assert.equal(last.status, 401);
  assert.equal(last.tenant, null);
});

test('the ledger rotates by size and keeps max_files old files', async () => {
  const sim = await startSim();
  const gw = await startObleth(config(sim, { path: 'ledger.jsonl', max_bytes: 4096, max_files: 2 }));
  const path = join(gw.dir, 'ledger.jsonl');
  try {
    for (let i = 0; i < 40; i++)
      await curl(['-s', '-o', '/dev/null', ...bearer('sk-alice'), ...json, '-H', 'cache-control: no-store', '-d', JSON.stringify(chatBody({ max_tokens: 2 })), `${gw.url}/v1/chat/completions`]);
  } finally {
    await stop(gw.proc);
    await stop(sim.proc);
  }
  assert.ok(existsSync(`${path}.1`) && existsSync(`${path}.2`), 'rotated files');
  assert.ok(!existsSync(`${path}.3`), 'no more than max_files');
  for (const p of [path, `${path}.1`, `${path}.2`]) {
    const text = readFileSync(p, 'utf8');
    assert.ok(text.length <= 4096 + 1024, `${p} near max_bytes (${text.length})`);
    for (const l of text.split('\n').filter(Boolean)) JSON.parse(l); // whole lines only
  }
});
