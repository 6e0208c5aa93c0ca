// The command line: --version, --check-config (every problem with its JSON
// path, exit 1), unknown keys, relative paths.
import test from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { OBLETH, run, tempDir } from './lib.mjs';

test('--version prints the version', async () => {
  const r = await run(OBLETH, ['--version']);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /^obleth \d+\.\d+\.\d+/);
});

test('--check-config accepts a valid file', async () => {
  const d = tempDir();
  const p = join(d, 'ok.json');
  writeFileSync(p, JSON.stringify({ listeners: [{ address: '127.0.0.1:8080' }], upstreams: [{ name: 'a', endpoints: ['http://127.0.0.1:8000'] }], routes: [{ prefix: '/v1/', class: 'inference', upstream: 'a' }] }));
  const r = await run(OBLETH, ['--check-config', p]);
  assert.equal(r.code, 0, r.stderr);
});

test('--check-config lists every problem with its JSON path and exits 1', async () => {
  const d = tempDir();
  const p = join(d, 'bad.json');
  writeFileSync(p, JSON.stringify({
    listeners: [{ address: '127.0.0.1:8080', bogus: 1 }],
    upstreams: [{ name: 'a', endpoints: ['http://127.0.0.1:8000', 'ftp://x'] }],
    routes: [{ prefix: '/v1/', class: 'inference', upstream: 'missing' }],
    limits: { max_body_bytes: -1 },
    extra: true,
  }));
  const r = await run(OBLETH, ['--check-config', p]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /upstreams\[0\]\.endpoints\[1\]: not an http:\/\/ or https:\/\/ URL/);
  assert.match(r.stderr, /listeners\[0\]\.bogus: unknown key/);
  assert.match(r.stderr, /routes\[0\]\.upstream: no upstream named "missing"/);
  assert.match(r.stderr, /limits\.max_body_bytes: /);
  assert.match(r.stderr, /extra: unknown key/);
});

test('a missing TLS file is reported relative to the config folder', async () => {
  const d = tempDir();
  const p = join(d, 'tls.json');
  writeFileSync(p, JSON.stringify({ listeners: [{ address: '127.0.0.1:0', tls: { cert: 'nope.pem', key: 'nope.key' } }], upstreams: [], routes: [] }));
  const r = await run(OBLETH, ['--config', p], { timeout: 5000 });
  assert.equal(r.code, 1);
  assert.ok(r.stderr.includes(join(d, 'nope.pem')), r.stderr);
});

test('unknown command line is a usage error', async () => {
  const r = await run(OBLETH, ['--frobnicate']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /usage/);
});
