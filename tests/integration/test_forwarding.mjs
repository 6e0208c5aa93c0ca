// What obleth forwards and how it frames answers, against a tiny upstream
// written on node:net so the test controls the exact wire bytes: response
// framing for odd-case and unknown methods (a body left unread on a pooled
// connection would become another client's answer), X-Forwarded-*, every
// Connection field, cookie crumbs, Expect, x-request-id in the access log,
// :path bytes, ambiguous API keys and the /v1/models list per tenant.
// Clients: raw sockets (h1), node:http2, curl and nghttp.
import test from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import http2 from 'node:http2';
import { startObleth, stop, curl, run } from './lib.mjs';

// The upstream. /echo... answers at once with what it received (method,
// path, every header line as sent). Any other path answers "answer to
// <METHOD> <path>": exactly HEAD gets the head only; every other method,
// whatever its case, gets its head first and its body later, once the
// next bytes arrive on that connection or after a short while, as a slow
// backend would. The held body is itself shaped like an HTTP response, as
// an attacker's would be.
function startUpstream() {
  const seen = [];
  let nsock = 0;
  const server = net.createServer((sock) => {
    const id = ++nsock;
    let buf = Buffer.alloc(0);
    let held = null;
    const flush = () => { if (held) { const h = held; held = null; clearTimeout(h.timer); sock.write(h.body); } };
    sock.on('error', () => {});
    sock.on('close', () => { if (held) clearTimeout(held.timer); });
    sock.on('data', (d) => {
      flush();
      buf = Buffer.concat([buf, d]);
      for (;;) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
        const [method, path] = lines[0].split(' ');
        const headers = lines.slice(1).map((l) => { const i = l.indexOf(':'); return [l.slice(0, i).toLowerCase(), l.slice(i + 1).trim()]; });
        const cl = Number(headers.find(([n]) => n === 'content-length')?.[1] ?? 0);
        if (buf.length < end + 4 + cl) return;
        buf = buf.subarray(end + 4 + cl);
        seen.push({ sock: id, method, path, headers });
        if (path.startsWith('/echo')) {
          const body = JSON.stringify({ method, path, headers, lines: lines.slice(1) });
          sock.write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
          continue;
        }
        const inner = `answer to ${method} ${path}`;
        const body = `HTTP/1.1 200 OK\r\ncontent-length: ${inner.length}\r\n\r\n${inner}`;
        sock.write(`HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: ${body.length}\r\n\r\n`);
        if (method === 'HEAD') continue;
        held = { body, timer: setTimeout(flush, 150) };
      }
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () =>
    resolve({ server, seen, url: `http://127.0.0.1:${server.address().port}` })));
}

// One HTTP/1.1 exchange on a raw socket: resolves `head` once the response
// head is in, `done` with {status, headers, body} once Content-Length bytes
// of body followed (none for HEAD), or with what came when the server closed.
function h1(port, request, { head = false } = {}) {
  const s = net.connect(port, '127.0.0.1');
  let data = Buffer.alloc(0);
  let onHead, onDone;
  const headP = new Promise((r) => { onHead = r; });
  const doneP = new Promise((r) => { onDone = r; });
  let parsed = null;
  const check = (closed) => {
    if (!parsed) {
      const end = data.indexOf('\r\n\r\n');
      if (end < 0) { if (closed) onDone({ status: 0, headers: {}, body: data.toString('latin1'), closed }); return; }
      const lines = data.subarray(0, end).toString('latin1').split('\r\n');
      const headers = {};
      for (const l of lines.slice(1)) { const i = l.indexOf(':'); headers[l.slice(0, i).toLowerCase()] = l.slice(i + 1).trim(); }
      parsed = { status: Number(lines[0].split(' ')[1]), headers, start: end + 4 };
      onHead(parsed);
    }
    const want = head ? 0 : Number(parsed.headers['content-length'] ?? -1);
    const have = data.length - parsed.start;
    if ((want >= 0 && have >= want) || closed)
      onDone({ status: parsed.status, headers: parsed.headers, body: data.subarray(parsed.start).toString('latin1'), closed });
  };
  s.on('data', (d) => { data = Buffer.concat([data, d]); check(false); });
  s.on('close', () => check(true));
  s.on('error', () => {});
  s.write(request);
  return { head: headP, done: doneP.finally(() => s.destroy()) };
}

// One HTTP/2 exchange with node:http2 (prior knowledge): resolves `head`
// with the response headers, `done` with {status, body}.
function h2(url, headers, { body } = {}) {
  const session = http2.connect(url);
  session.on('error', () => {});
  const req = session.request(headers, { endStream: body === undefined });
  if (body !== undefined) req.end(body);
  const head = new Promise((r) => req.on('response', r));
  const done = new Promise((resolve) => {
    let status = 0;
    const chunks = [];
    req.on('response', (h) => { status = h[':status']; });
    req.on('data', (c) => chunks.push(c));
    const end = (err) => { session.close(); resolve({ status, body: Buffer.concat(chunks).toString('latin1'), err }); };
    req.on('end', () => end());
    req.on('error', (e) => end(e));
  });
  return { head, done };
}

const inner = (method, path) => `answer to ${method} ${path}`;
const framed = (method, path) => `HTTP/1.1 200 OK\r\ncontent-length: ${inner(method, path).length}\r\n\r\n${inner(method, path)}`;
const hdr = (echo) => Object.fromEntries(echo.headers.map(([n, v]) => [n, v]));

let up, gw;

test.before(async () => {
  up = await startUpstream();
  gw = await startObleth({
    // The second listener is one clients reach directly: its X-Forwarded-For is the peer alone.
    listeners: [{ address: '127.0.0.1:0' }, { address: '127.0.0.1:0', x_forwarded_for: 'replace' }],
    upstreams: [{ name: 'odd', endpoints: [up.url] }],
    routes: [{ prefix: '/', class: 'passthrough', upstream: 'odd' }],
  });
});

test.after(async () => {
  await stop(gw.proc);
  up.server.close();
});

for (const method of ['head', 'Head', 'PURGE']) {
  test(`h1: the body of an answer to "${method}" reaches its client, and the next request on the pooled connection gets its own answer`, async () => {
    const a = h1(gw.port, `${method} /a-${method} HTTP/1.1\r\nhost: x\r\n\r\n`);
    await a.head;
    // Another client, once the first answer's head went out: under the old
    // rule its request went out on the connection still holding /a's body.
    const b = await h1(gw.port, `GET /b-${method} HTTP/1.1\r\nhost: x\r\n\r\n`).done;
    assert.equal(b.status, 200);
    assert.equal(b.body, framed('GET', `/b-${method}`));
    const r = await a.done;
    assert.equal(r.status, 200);
    assert.equal(r.body, framed(method, `/a-${method}`));
  });
}

test('h1: HEAD keeps its Content-Length and gets no body; the connection stays usable', async () => {
  const a = await h1(gw.port, 'HEAD /h HTTP/1.1\r\nhost: x\r\n\r\n', { head: true }).done;
  assert.equal(a.status, 200);
  assert.equal(a.headers['content-length'], String(framed('HEAD', '/h').length));
  const b = await h1(gw.port, 'GET /after-head HTTP/1.1\r\nhost: x\r\n\r\n').done;
  assert.equal(b.body, framed('GET', '/after-head'));
});

test('h2: the body of an answer to "head" reaches its client, and the next request gets its own answer', async () => {
  const a = h2(gw.url, { ':method': 'head', ':path': '/h2-a' });
  await a.head;
  const b = await h2(gw.url, { ':method': 'GET', ':path': '/h2-b' }).done;
  assert.equal(b.status, 200);
  assert.equal(b.body, framed('GET', '/h2-b'));
  const r = await a.done;
  assert.equal(r.err, undefined);
  assert.equal(r.status, 200);
  assert.equal(r.body, framed('head', '/h2-a'));
  // The same from an h1 client after an h2 "head".
  const c = h2(gw.url, { ':method': 'head', ':path': '/h2-c' });
  await c.head;
  const d = await h1(gw.port, 'GET /h1-d HTTP/1.1\r\nhost: x\r\n\r\n').done;
  assert.equal(d.body, framed('GET', '/h1-d'));
  assert.equal((await c.done).body, framed('head', '/h2-c'));
});

test('X-Forwarded-Proto is ours alone; X-Forwarded-For keeps every client value and adds the peer; Forwarded passes as sent', async () => {
  const r = await h1(gw.port, 'GET /echo/xf HTTP/1.1\r\nhost: x\r\nx-forwarded-proto: https\r\nx-forwarded-for: 203.0.113.1\r\n' +
    'X-Forwarded-For: 198.51.100.2\r\nforwarded: for=192.0.2.60;proto=https\r\n\r\n').done;
  const echo = JSON.parse(r.body);
  const proto = echo.headers.filter(([n]) => n === 'x-forwarded-proto');
  assert.deepEqual(proto, [['x-forwarded-proto', 'http']]);
  const xff = echo.headers.filter(([n]) => n === 'x-forwarded-for');
  assert.deepEqual(xff, [['x-forwarded-for', '203.0.113.1, 198.51.100.2, 127.0.0.1']]);
  assert.equal(hdr(echo).forwarded, 'for=192.0.2.60;proto=https');
  // Over HTTP/2 the client writes :scheme itself: the connection decides.
  const r2 = await h2(gw.url, { ':method': 'GET', ':path': '/echo/xf2', ':scheme': 'https', 'x-forwarded-proto': 'https' }).done;
  assert.deepEqual(JSON.parse(r2.body).headers.filter(([n]) => n === 'x-forwarded-proto'), [['x-forwarded-proto', 'http']]);
});

test('a listener with x_forwarded_for "replace" sends the peer alone, whatever the client wrote', async () => {
  const req = 'GET /echo/xr HTTP/1.1\r\nhost: x\r\nx-forwarded-for: 203.0.113.1\r\nX-Forwarded-For: 198.51.100.2\r\n\r\n';
  const replaced = JSON.parse((await h1(gw.ports[1], req).done).body);
  assert.deepEqual(replaced.headers.filter(([n]) => n === 'x-forwarded-for'), [['x-forwarded-for', '127.0.0.1']]);
  const r2 = await h2(`http://127.0.0.1:${gw.ports[1]}`, { ':method': 'GET', ':path': '/echo/xr2', 'x-forwarded-for': '203.0.113.1' }).done;
  assert.deepEqual(JSON.parse(r2.body).headers.filter(([n]) => n === 'x-forwarded-for'), [['x-forwarded-for', '127.0.0.1']]);
  // The default listener appends, on the same gateway.
  const appended = JSON.parse((await h1(gw.ports[0], req).done).body);
  assert.deepEqual(appended.headers.filter(([n]) => n === 'x-forwarded-for'), [['x-forwarded-for', '203.0.113.1, 198.51.100.2, 127.0.0.1']]);
});

test('every Connection field names hop-by-hop fields, not only the first', async () => {
  const r = await h1(gw.port, 'GET /echo/conn HTTP/1.1\r\nhost: x\r\nconnection: keep-alive\r\nconnection: x-secret\r\n' +
    'x-secret: 1\r\nx-kept: 2\r\n\r\n').done;
  const h = hdr(JSON.parse(r.body));
  assert.equal(h['x-secret'], undefined);
  assert.equal(h['x-kept'], '2');
});

test('h2 cookie crumbs reach an HTTP/1.1 upstream as one field joined with "; "', async () => {
  const r = await run('nghttp', ['-H', 'cookie: a=1', '-H', 'cookie: b=2', '-H', 'cookie: c=3', gw.url + '/echo/cookie']);
  assert.equal(r.code, 0, r.stderr);
  const lines = JSON.parse(r.stdout).lines.filter((l) => /^cookie:/i.test(l));
  assert.deepEqual(lines, ['cookie: a=1; b=2; c=3']);
});

test('Expect: 100-continue is answered by obleth and not forwarded', async () => {
  const r = await curl(['--http1.1', '-H', 'expect: 100-continue', '--data-binary', 'x'.repeat(2000), gw.url + '/echo/expect']);
  assert.equal(r.status, 200);
  const echo = JSON.parse(r.body);
  assert.equal(hdr(echo).expect, undefined);
  assert.equal(hdr(echo)['content-length'], '2000');
});

test('a client x-request-id with spaces or quotes is replaced, and cannot forge access-log fields', async () => {
  const r = await h1(gw.port, 'GET /echo/rid HTTP/1.1\r\nhost: x\r\nx-request-id: a" tenant=evil key="k\r\n\r\n').done;
  const rid = hdr(JSON.parse(r.body))['x-request-id'];
  assert.match(rid, /^[0-9a-f]{32}$/);
  assert.equal(r.headers['x-request-id'], rid);
  const line = await waitFor(() => gw.output.text.split('\n').find((l) => l.includes(`rid=${rid}`)));
  assert.doesNotMatch(line, /tenant=evil/);
  // A plain client id is still kept end to end.
  const k = await h1(gw.port, 'GET /echo/rid2 HTTP/1.1\r\nhost: x\r\nx-request-id: abc-123\r\n\r\n').done;
  assert.equal(hdr(JSON.parse(k.body))['x-request-id'], 'abc-123');
  // A quote in the path is escaped in the access line.
  await h1(gw.port, 'GET /echo/q"uote HTTP/1.1\r\nhost: x\r\nx-request-id: quote-path\r\n\r\n').done;
  const q = await waitFor(() => gw.output.text.split('\n').find((l) => l.includes('rid=quote-path')));
  assert.match(q, /"GET \/echo\/q\\x22uote HTTP\/1\.1"/);
});

test('h2 :path bytes >= 0x80 are refused with 400, as the HTTP/1.1 parser refuses them', async () => {
  const before = up.seen.length;
  const r = await h2(gw.url, { ':method': 'GET', ':path': '/echo/\u00e9t\u00e9' }).done;
  assert.equal(r.status, 400);
  const h1r = await h1(gw.port, Buffer.concat([Buffer.from('GET /echo/'), Buffer.from([0xc3, 0xa9]), Buffer.from(' HTTP/1.1\r\nhost: x\r\n\r\n')])).done;
  assert.equal(h1r.status, 400);
  assert.equal(up.seen.length, before, 'nothing reached the upstream');
  const ok = await h2(gw.url, { ':method': 'GET', ':path': '/echo/%C3%A9t%C3%A9' }).done;
  assert.equal(JSON.parse(ok.body).path, '/echo/%C3%A9t%C3%A9');
});

// Poll the gateway's output (access lines are flushed by the worker on its
// own schedule) until pick() finds something.
async function waitFor(pick) {
  for (;;) {
    const v = pick();
    if (v) return v;
    await new Promise((r) => gw.proc.stderr.once('data', r));
  }
}

test('API keys: two Authorization fields, or Authorization and x-api-key naming different keys, are 400', async () => {
  const keyed = await startObleth({
    upstreams: [{ name: 'odd', endpoints: [up.url] }],
    routes: [{ prefix: '/v1/', class: 'inference', upstream: 'odd' }, { prefix: '/', class: 'passthrough', upstream: 'odd' }],
    models: [{ name: 'm-alice', upstream: 'odd' }, { name: 'm-bob', upstream: 'odd' }, { name: 'm-shared', upstream: 'odd' }],
    groups: [{ name: 'g' }],
    tenants: [
      { name: 'alice', group: 'g', keys: [{ id: 'a', secret: 'sk-alice' }], models: ['m-alice', 'm-shared'] },
      { name: 'bob', group: 'g', keys: [{ id: 'b', secret: 'sk-bob' }], models: ['m-bob', 'm-shared'] },
    ],
  });
  try {
    const ask = (lines) => h1(keyed.port, `GET /echo/k HTTP/1.1\r\nhost: x\r\n${lines}\r\n`).done;
    for (const lines of [
      'authorization: Bearer sk-alice\r\nauthorization: Bearer sk-bob\r\n',
      'authorization: Bearer sk-alice\r\nauthorization: Bearer sk-alice\r\n',
      'authorization: Bearer sk-alice\r\nx-api-key: sk-bob\r\n',
      'x-api-key: sk-bob\r\nx-api-key: sk-alice\r\n',
    ]) {
      const r = await ask(lines);
      assert.equal(r.status, 400, lines);
      const e = JSON.parse(r.body).error;
      assert.equal(e.type, 'invalid_request_error');
      assert.equal(e.code, 'ambiguous_api_key');
    }
    assert.equal((await ask('authorization: Bearer sk-alice\r\nx-api-key: sk-alice\r\n')).status, 200, 'the same key twice');
    assert.equal((await ask('x-api-key: sk-bob\r\n')).status, 200);

    // /v1/models lists the models the caller may use, no others.
    const ids = async (key) => JSON.parse((await curl(['-H', `authorization: Bearer ${key}`, keyed.url + '/v1/models'])).body).data.map((m) => m.id);
    assert.deepEqual(await ids('sk-alice'), ['m-alice', 'm-shared']);
    assert.deepEqual(await ids('sk-bob'), ['m-bob', 'm-shared']);
  } finally {
    await stop(keyed.proc);
  }
});
