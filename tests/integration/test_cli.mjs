// The command line: --version, --check-config (every problem with its JSON
// path, exit 1), unknown keys, relative paths.
import test from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { OBLETH, makeCerts, run, tempDir } from './lib.mjs';

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
  assert.doesNotMatch(r.stderr, /\(null\)/);
});

test('--check-config fails on missing or unreadable TLS files, with their JSON paths', async () => {
  const d = tempDir();
  mkdirSync(join(d, 'adir'));
  writeFileSync(join(d, 'key.pem'), 'not read by --check-config\n');
  const p = join(d, 'tls.json');
  writeFileSync(p, JSON.stringify({
    listeners: [{ address: '127.0.0.1:0', tls: { cert: 'nope.pem', key: 'key.pem' } }, { address: '127.0.0.1:0', tls: { cert: 'adir', key: 'gone.key' } }],
    upstreams: [{ name: 'a', endpoints: ['https://127.0.0.1:1'], tls_ca: '/nonexistent/ca.pem' }],
    routes: [],
  }));
  const r = await run(OBLETH, ['--check-config', p]);
  assert.equal(r.code, 1, r.stdout);
  assert.ok(r.stderr.includes(`listeners[0].tls.cert: cannot read ${join(d, 'nope.pem')}: No such file or directory`), r.stderr);
  assert.ok(r.stderr.includes(`listeners[1].tls.cert: cannot read ${join(d, 'adir')}: Is a directory`), r.stderr);
  assert.ok(r.stderr.includes(`listeners[1].tls.key: cannot read ${join(d, 'gone.key')}: No such file or directory`), r.stderr);
  assert.ok(r.stderr.includes('upstreams[0].tls_ca: cannot read /nonexistent/ca.pem: No such file or directory'), r.stderr);
  assert.doesNotMatch(r.stderr, /listeners\[0\]\.tls\.key/);
  assert.match(r.stderr, /4 problems/);

  // A FIFO would block the check (and a reload, on the event loop) until written to.
  const fifo = join(d, 'fifo.pem');
  assert.equal((await run('mkfifo', [fifo])).code, 0);
  writeFileSync(p, JSON.stringify({ listeners: [{ address: '127.0.0.1:0', tls: { cert: fifo, key: fifo } }], upstreams: [], routes: [] }));
  const f = await run(OBLETH, ['--check-config', p]);
  assert.equal(f.code, 1, f.stdout);
  assert.ok(f.stderr.includes(`listeners[0].tls.cert: cannot read ${fifo}: not a regular file`), f.stderr);
});

test('a TLS file that is not PEM stops start-up with OpenSSL\'s reason, never "(null)"', async () => {
  const d = tempDir();
  writeFileSync(join(d, 'bad.pem'), 'garbage\n');
  const p = join(d, 'tls.json');
  writeFileSync(p, JSON.stringify({ listeners: [{ address: '127.0.0.1:0', tls: { cert: 'bad.pem', key: 'bad.pem' } }], upstreams: [], routes: [] }));
  const r = await run(OBLETH, ['--config', p], { timeout: 5000 });
  assert.equal(r.code, 1);
  assert.match(r.stderr, /cannot load certificate \S+bad\.pem: no start line/);
  assert.doesNotMatch(r.stderr, /\(null\)/);
});

test('--check-config loads TLS files as start-up does: not PEM, a key of another certificate, a bad CA bundle', async () => {
  const c = await makeCerts();
  const d = tempDir();
  writeFileSync(join(d, 'bad.pem'), 'garbage\n');
  const p = join(d, 'tls.json');
  const cfg = (listener, ca) => ({
    listeners: [{ address: '127.0.0.1:0', tls: listener }],
    upstreams: [{ name: 'a', endpoints: ['https://127.0.0.1:1'], tls_ca: ca }],
    routes: [],
  });
  const check = async (o) => { writeFileSync(p, JSON.stringify(o)); return run(OBLETH, ['--check-config', p]); };

  let r = await check(cfg({ cert: c.cert, key: c.key }, c.ca));
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /: ok$/m);

  r = await check(cfg({ cert: 'bad.pem', key: c.key }, c.ca));
  assert.equal(r.code, 1);
  assert.match(r.stderr, /listener 127\.0\.0\.1:0: cannot load certificate \S+bad\.pem: no start line/);

  r = await check(cfg({ cert: c.ca, key: c.key }, c.ca)); // the CA's certificate with the server's key
  assert.equal(r.code, 1);
  assert.match(r.stderr, /cannot load key \S+server\.key: \S/);

  r = await check(cfg({ cert: c.cert, key: c.key }, join(d, 'bad.pem')));
  assert.equal(r.code, 1);
  assert.match(r.stderr, /upstream a: cannot load CA certificates \S+bad\.pem/);
  for (const e of [r.stderr]) assert.doesNotMatch(e, /\(null\)/);
});

test('unknown command line is a usage error', async () => {
  const r = await run(OBLETH, ['--frobnicate']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /usage/);
});
