// The admin listener under hostile or malformed input, through raw sockets
// and real clients: a request head streamed without end is refused 431 with
// the gateway's memory bounded; a head trickled a byte at a time is closed
// 408 after admin.header_timeout_ms; a request without the admin token is
// refused 401 before its body is read; an oversized body is 413; every
// error is the admin API's JSON with Connection: close; connections past
// admin.max_connections get 503; pipelined requests are answered in order;
// admin JSON bodies are parsed strictly (trailing data and repeated keys are
// 400) and the purged tenant name is escaped in the answer. Proxied traffic
// on the same loop keeps working meanwhile.
import test from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startSim, startObleth, stop, curl, run, chatBody, tempDir, OBLETH, rig } from './lib.mjs';

const TOKEN = 'adm-41f0c2';
const AUTH = `Authorization: Bearer ${TOKEN}\r\n`;

const TENANTS = [{ name: 'alice', group: 'team', keys: [{ id: 'alice-1', secret: 'sk-alice' }] }];

// The simulator and obleth with an admin listener (lib's rig stops them).
async function fixture(admin = {}, extra = {}) {
  const r = rig();
  try {
    const sim = await r.sim();
    const gw = await r.gateway({
      upstreams: [{ name: 'sim', endpoints: [sim.url] }],
      routes: [{ prefix: '/v1/', class: 'inference', upstream: 'sim' }],
      groups: [{ name: 'team', weight: 1 }],
      tenants: TENANTS,
      admin: { address: '127.0.0.1:0', token: TOKEN, ...admin },
      ...extra,
    });
    assert.ok(gw.adminUrl, `admin listener logged:\n${gw.output.text}`);
    gw.adminPort = Number(new URL(gw.adminUrl).port);
    return { sim, gw, close: r.close };
  } catch (e) {
    await r.close();
    throw e;
  }
}

const chat = (gw) => curl(['--http1.1', '-i', '-H', 'content-type: application/json', '-H', 'authorization: Bearer sk-alice',
  '--data-binary', JSON.stringify(chatBody()), gw.url + '/v1/chat/completions']);

// A raw connection to the admin port: everything it receives, and promises
// for the server's end of the stream and for the socket closing.
function connect(port) {
  const s = net.connect(port, '127.0.0.1');
  const c = { s, data: '', error: null, ended: false };
  s.setEncoding('latin1');
  s.on('data', (d) => { c.data += d; });
  s.on('error', (e) => { c.error = e; });
  c.end = new Promise((r) => s.once('end', () => { c.ended = true; r(); }));
  c.closed = new Promise((r) => s.once('close', r));
  c.connected = new Promise((r, j) => { s.once('connect', r); s.once('error', j); });
  return c;
}

// True once c's data matches re, false if it closes first.
const seen = (c, re) => new Promise((res) => {
  const check = () => { if (re.test(c.data)) res(true); };
  c.s.on('data', check);
  c.s.once('close', () => res(false));
  check();
});

// Resolves with what p resolves with, or with `timedOut` after ms: the
// bound on waiting for an event that the fixed gateway sends within a
// fraction of it (and that a gateway without the fix never sends).
const within = (p, ms, timedOut = 'timeout') => {
  let t;
  return Promise.race([p, new Promise((r) => { t = setTimeout(() => r(timedOut), ms); })]).finally(() => clearTimeout(t));
};

// The responses in raw, in order: [{status, headers (lower-case), body}].
function responses(raw) {
  const out = [];
  let rest = raw;
  while (rest.length) {
    const end = rest.indexOf('\r\n\r\n');
    if (end < 0) break;
    const lines = rest.slice(0, end).split('\r\n');
    const status = Number(lines[0].split(' ')[1]);
    const headers = {};
    for (const l of lines.slice(1)) {
      const i = l.indexOf(':');
      headers[l.slice(0, i).toLowerCase()] = l.slice(i + 1).trim();
    }
    const len = Number(headers['content-length'] ?? 0);
    out.push({ status, headers, body: rest.slice(end + 4, end + 4 + len) });
    rest = rest.slice(end + 4 + len);
  }
  return out;
}

// One admin error answer: status, JSON in the admin API's shape, and the
// connection marked for closing.
function assertJsonError(raw, status, code) {
  const rs = responses(raw);
  assert.equal(rs.length, 1, `one answer: ${JSON.stringify(raw.slice(0, 400))}`);
  const r = rs[0];
  assert.equal(r.status, status, raw.slice(0, 400));
  assert.equal(r.headers['content-type'], 'application/json', raw.slice(0, 400));
  assert.equal(r.headers.connection, 'close', raw.slice(0, 400));
  const j = JSON.parse(r.body);
  assert.equal(typeof j.error.message, 'string');
  if (code) assert.equal(j.error.code, code, r.body);
  return j;
}

const procStatus = (pid, field) => Number(readFileSync(`/proc/${pid}/status`, 'utf8').match(new RegExp(`^${field}:\\s+(\\d+)`, 'm'))[1]);
// User + system CPU time of a process, in clock ticks (1/100 s).
const cpuTicks = (pid) => {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').slice(readFileSync(`/proc/${pid}/stat`, 'utf8').lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]);
};

test('a request head streamed without end is refused 431 in JSON; memory and CPU stay bounded, proxying goes on', { timeout: 60000 }, async () => {
  const r = await fixture();
  try {
    const pid = r.gw.proc.pid;
    assert.equal((await chat(r.gw)).status, 200);
    const rss0 = procStatus(pid, 'VmRSS');
    const cpu0 = cpuTicks(pid);
    const c = connect(r.gw.adminPort);
    await c.connected;
    let closed = false;
    c.closed.then(() => { closed = true; });
    c.s.write(`GET /metrics HTTP/1.1\r\nHost: x\r\n${AUTH}X-Long: `);
    const chunk = Buffer.alloc(64 << 10, 'a');
    const LIMIT = 64 << 20;
    let sent = 0;
    const proxied = chat(r.gw); // on the same loop, while the flood runs
    while (!closed && !c.error && sent < LIMIT) {
      sent += chunk.length;
      if (!c.s.write(chunk)) await Promise.race([new Promise((res) => c.s.once('drain', res)), c.closed]);
    }
    assert.ok(sent < LIMIT, `the connection was closed before ${LIMIT} bytes were sent (it took all of them)`);
    await c.closed;
    assertJsonError(c.data, 431, 'headers_too_large');
    const p = await proxied;
    assert.equal(p.status, 200, p.body);
    const grown = procStatus(pid, 'VmRSS') - rss0;
    assert.ok(grown < 4096, `RSS grew by ${grown} KiB after ${sent} bytes of head`);
    const cpu = cpuTicks(pid) - cpu0;
    assert.ok(cpu < 100, `CPU used while refusing the flood: ${cpu * 10} ms`);
    // the listener still serves
    const ok = await fetch(`${r.gw.adminUrl}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(ok.status, 200);
  } finally {
    await r.close();
  }
});

test('a head trickled a byte at a time is answered 408 and closed after admin.header_timeout_ms, a body after admin.body_timeout_ms; an idle connection is closed silently', { timeout: 60000 }, async () => {
  const r = await fixture({ header_timeout_ms: 1000, body_timeout_ms: 1000 });
  try {
    const pid = r.gw.proc.pid;
    const c = connect(r.gw.adminPort);
    await c.connected;
    const t0 = Date.now();
    const cpu0 = cpuTicks(pid);
    c.s.write(`GET /metrics HTTP/1.1\r\nHost: x\r\n${AUTH}X-Slow: `);
    const trickle = setInterval(() => { if (!c.s.destroyed) c.s.write('a'); }, 100);
    const got = await within(c.end, 15000);
    clearInterval(trickle);
    const took = Date.now() - t0;
    assert.notEqual(got, 'timeout', `a head trickled for ${took} ms is still open`);
    assert.ok(took >= 900, `closed after the header timeout, not before: ${took} ms`);
    assertJsonError(c.data, 408, 'request_timeout');
    assert.ok(cpuTicks(pid) - cpu0 < 50, 'no busy loop while waiting');
    assert.equal((await chat(r.gw)).status, 200);

    // a body trickled likewise
    const b = connect(r.gw.adminPort);
    await b.connected;
    const t1 = Date.now();
    b.s.write(`PUT /admin/tenants/alice HTTP/1.1\r\nHost: x\r\n${AUTH}Content-Length: 100\r\n\r\n{`);
    const slow = setInterval(() => { if (!b.s.destroyed) b.s.write(' '); }, 100);
    const gotBody = await within(b.end, 15000);
    clearInterval(slow);
    assert.notEqual(gotBody, 'timeout', 'a trickled body is cut off');
    assert.ok(Date.now() - t1 >= 900, 'after the body timeout, not before');
    assertJsonError(b.data, 408, 'request_timeout');
    b.s.destroy();

    // nothing sent at all: closed without an answer
    const idle = connect(r.gw.adminPort);
    await idle.connected;
    assert.notEqual(await within(idle.closed, 15000), 'timeout', 'an idle connection is closed');
    assert.equal(idle.data, '');
  } finally {
    await r.close();
  }
});

test('a request without the admin token is refused 401 at its head: the body is never read', { timeout: 30000 }, async () => {
  const r = await fixture();
  try {
    for (const [len, expect] of [[100, ''], [10 << 20, ''], [100, 'Expect: 100-continue\r\n']]) {
      const c = connect(r.gw.adminPort);
      await c.connected;
      // the head only: the body would follow, but the answer must not wait for it
      c.s.write(`PUT /admin/tenants/alice HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n${expect}Content-Length: ${len}\r\n\r\n`);
      assert.notEqual(await within(c.end, 15000), 'timeout', `answered without the body (Content-Length ${len}): ${c.data}`);
      assert.match(c.data, /^HTTP\/1\.1 401 /, 'no 100 Continue, no 413: the token is checked first');
      assertJsonError(c.data, 401, 'invalid_api_key');
      assert.match(c.data, /\r\nWWW-Authenticate: Bearer\r\n/);
      c.s.destroy();
    }
    // and nothing changed
    const t = await (await fetch(`${r.gw.adminUrl}/admin/tenants/alice`, { headers: { authorization: `Bearer ${TOKEN}` } })).json();
    assert.equal(t.weight, 1);
  } finally {
    await r.close();
  }
});

test('an admin body above admin.max_body_bytes is answered 413 in JSON; a body under it is read', { timeout: 30000 }, async () => {
  const r = await fixture({ max_body_bytes: 4096 });
  try {
    // Content-Length above the limit: refused before a body byte is read
    let c = connect(r.gw.adminPort);
    await c.connected;
    c.s.write(`PUT /admin/tenants/alice HTTP/1.1\r\nHost: x\r\n${AUTH}Content-Length: 5000\r\n\r\n`);
    assert.notEqual(await within(c.end, 15000), 'timeout', 'answered at the head');
    const j = assertJsonError(c.data, 413, 'request_too_large');
    assert.match(j.error.message, /admin\.max_body_bytes \(4096 bytes\)/);
    c.s.destroy();

    // chunked, growing past the limit
    c = connect(r.gw.adminPort);
    await c.connected;
    c.s.write(`PUT /admin/tenants/alice HTTP/1.1\r\nHost: x\r\n${AUTH}Transfer-Encoding: chunked\r\n\r\n`);
    for (let i = 0; i < 5; i++) c.s.write(`400\r\n${' '.repeat(1024)}\r\n`);
    assert.notEqual(await within(c.end, 15000), 'timeout', 'answered once the body passed the limit');
    assertJsonError(c.data, 413, 'request_too_large');
    c.s.destroy();

    // under the limit (white space around the object is fine), by fetch
    const body = `${' '.repeat(3000)}{"weight": 2}\n`;
    const ok = await fetch(`${r.gw.adminUrl}/admin/tenants/alice`, {
      method: 'PUT', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body,
    });
    assert.equal(ok.status, 200, await ok.clone().text());
    assert.equal((await ok.json()).weight, 2);
    // and by curl over the limit: the JSON 413
    const big = await curl(['-i', '-X', 'PUT', '-H', `authorization: Bearer ${TOKEN}`, '--data-binary',
      JSON.stringify({ weight: 3, pad: 'x'.repeat(5000) }), `${r.gw.adminUrl}/admin/tenants/alice`]);
    assert.equal(big.status, 413, big.body);
    assert.equal(JSON.parse(big.body.slice(big.body.indexOf('\r\n\r\n') + 4)).error.code, 'request_too_large');
    assert.equal((await chat(r.gw)).status, 200);
  } finally {
    await r.close();
  }
});

test('malformed heads get a JSON 400; pipelined requests are answered in order', { timeout: 30000 }, async () => {
  const r = await fixture();
  try {
    let c = connect(r.gw.adminPort);
    await c.connected;
    c.s.write('GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n');
    assert.notEqual(await within(c.end, 15000), 'timeout');
    assertJsonError(c.data, 400, 'bad_request');
    c.s.destroy();

    c = connect(r.gw.adminPort);
    await c.connected;
    c.s.write(`GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /admin/tenants/alice HTTP/1.1\r\nHost: x\r\n${AUTH}\r\n` +
      `PUT /admin/tenants/alice HTTP/1.1\r\nHost: x\r\n${AUTH}Content-Length: 12\r\n\r\n{"weight":5}` +
      `HEAD /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    assert.notEqual(await within(c.end, 15000), 'timeout');
    const rs = responses(c.data);
    assert.deepEqual(rs.map((x) => x.status), [200, 200, 200, 200], c.data);
    assert.equal(rs[0].body, 'ok\n');
    assert.equal(JSON.parse(rs[1].body).weight, 1);
    assert.equal(JSON.parse(rs[2].body).weight, 5);
    assert.equal(rs[3].body, '', 'HEAD: no body');
    assert.equal(rs[3].headers.connection, 'close');
    c.s.destroy();
    await c.closed;
  } finally {
    await r.close();
  }
});

test('past admin.max_connections open connections a new one is answered 503 and closed', { timeout: 30000 }, async () => {
  // A gateway of its own: no connection of another test may still be
  // closing on the server side.
  const r = await fixture({ max_connections: 3 });
  try {
    // three open connections (the limit), each answered once, and a fourth
    const held = [];
    for (let i = 0; i < 3; i++) { const h = connect(r.gw.adminPort); await h.connected; held.push(h); }
    // the gateway has accepted them once each has been answered
    for (const h of held) {
      h.s.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
      assert.equal(await within(seen(h, /\r\n\r\nok\n$/), 15000), true, `answered: ${h.data}`);
    }
    const over = connect(r.gw.adminPort);
    assert.notEqual(await within(over.closed, 15000), 'timeout');
    assertJsonError(over.data, 503, 'service_unavailable');
    for (const h of held) h.s.destroy();
    await Promise.all(held.map((h) => h.closed));
  } finally {
    await r.close();
  }
});

test('PUT bodies are parsed strictly (trailing data, repeated keys: 400); the purged tenant name is escaped', { timeout: 30000 }, async () => {
  const r = await fixture({}, { cache: { path: join(tempDir(), 'cache.mdb') } });
  try {
    const put = async (body) => {
      const res = await fetch(`${r.gw.adminUrl}/admin/tenants/alice`, {
        method: 'PUT', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body,
      });
      return { status: res.status, json: await res.json() };
    };
    for (const [body, why] of [['{"weight":3}x', /after the JSON object/], ['{"weight":3}{"weight":4}', /after the JSON object/],
      ['{"weight":3} // c', /after the JSON object/], ['{"weight":3}\u0000', /after the JSON object/],
      ['{"weight":3,"weight":5}', /repeated key "weight"/], ['{"disabled":false,"weight":4,"disabled":true}', /repeated key "disabled"/]]) {
      const res = await put(body);
      assert.equal(res.status, 400, `${JSON.stringify(body)}: ${JSON.stringify(res.json)}`);
      assert.match(res.json.error.message, why);
    }
    const t = await (await fetch(`${r.gw.adminUrl}/admin/tenants/alice`, { headers: { authorization: `Bearer ${TOKEN}` } })).json();
    assert.equal(t.weight, 1, 'no bad body applied');
    assert.equal(t.disabled, false);
    const ok = await put(' {"weight":3}\r\n\t ');
    assert.equal(ok.status, 200, JSON.stringify(ok.json));
    assert.equal(ok.json.weight, 3);

    const name = 'a"b\\c\n</x>\u0001é';
    const res = await fetch(`${r.gw.adminUrl}/admin/cache/purge?tenant=${encodeURIComponent(name)}`, {
      method: 'POST', headers: { authorization: `Bearer ${TOKEN}` },
    });
    const text = await res.text();
    assert.equal(res.status, 200, text);
    assert.deepEqual(JSON.parse(text), { purged: `t:${name}` }, text);
  } finally {
    await r.close();
  }
});

test('a purge query other than none or one ?tenant=NAME is 400 and purges nothing', { timeout: 30000 }, async () => {
  const r = await fixture({}, { cache: { path: join(tempDir(), 'cache.mdb') } });
  try {
    const ask = async () => {
      const res = await curl(['--http1.1', '-i', '-H', 'content-type: application/json', '-H', 'authorization: Bearer sk-alice',
        '--data-binary', JSON.stringify(chatBody({ max_tokens: 4, temperature: 0 })), r.gw.url + '/v1/chat/completions']);
      assert.equal(res.status, 200, res.body);
      return (res.body.match(/^x-obleth-cache: *(\S+)/mi) || [])[1];
    };
    const purge = async (query) => {
      const res = await fetch(`${r.gw.adminUrl}/admin/cache/purge${query}`, {
        method: 'POST', headers: { authorization: `Bearer ${TOKEN}` },
      });
      return { status: res.status, json: await res.json() };
    };
    assert.equal(await ask(), 'miss');
    assert.equal(await ask(), 'hit');
    // evhttp's query parser gives up on "tenant=alice&x" (a key without "=")
    // and a misspelt key is not found: either read as "purge everything".
    for (const q of ['?tenant=bob&x', '?tennant=bob', '?tenant=', '?tenant=bob&tenant=alice', '?tenant=bob&all=1', '?Tenant=bob', '?tenant=alice%00bob']) {
      const res = await purge(q);
      assert.equal(res.status, 400, `${q}: ${JSON.stringify(res.json)}`);
      assert.match(res.json.error.message, /tenant=NAME/, `${q}: ${JSON.stringify(res.json)}`);
      assert.equal(await ask(), 'hit', `${q} purged alice's entry`);
    }
    let res = await purge('?tenant=bob');
    assert.equal(res.status, 200, JSON.stringify(res.json));
    assert.equal(await ask(), 'hit', "a purge of bob keeps alice's entry");
    res = await purge(`?tenant=${'x'.repeat(400)}`);
    assert.deepEqual(res.json, { purged: `t:${'x'.repeat(400)}` }, 'a long name is not cut short');
    res = await purge('?tenant=alice');
    assert.equal(res.status, 200, JSON.stringify(res.json));
    assert.equal(await ask(), 'miss');
  } finally {
    await r.close();
  }
});

test('--check-config: admin limits are validated with their JSON path', { timeout: 30000 }, async () => {
  const dir = tempDir();
  const base = {
    listeners: [{ address: '127.0.0.1:0' }],
    upstreams: [{ name: 'sim', endpoints: ['http://127.0.0.1:9'] }],
  };
  const check = async (admin) => {
    const p = join(dir, `c${Math.random().toString(36).slice(2)}.json`);
    writeFileSync(p, JSON.stringify({ ...base, admin }));
    const res = await run(OBLETH, ['--check-config', p]);
    return { code: res.code, out: res.stdout + res.stderr };
  };
  let res = await check({ max_header_bytes: 100, max_body_bytes: -1, header_timeout_ms: 0, body_timeout_ms: 'x', max_connections: 0 });
  assert.equal(res.code, 1, res.out);
  for (const k of ['max_header_bytes', 'max_body_bytes', 'header_timeout_ms', 'body_timeout_ms', 'max_connections'])
    assert.match(res.out, new RegExp(`admin\\.${k}: expected`), res.out);
  res = await check({ max_header_bytes: 8192, max_body_bytes: 65536, header_timeout_ms: 5000, body_timeout_ms: 5000, max_connections: 16 });
  assert.equal(res.code, 0, res.out);
});
