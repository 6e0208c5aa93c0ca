// gRPC through obleth with real grpc-js clients and a real grpc-js server
// (tests/grpc/server.mjs): the four RPC kinds streaming both ways, metadata
// and trailers (binary too) carried intact, upstream statuses preserved,
// every status the gateway makes itself, deadlines bounded and propagated,
// a cancelled call releasing its slot, an h2 TLS upstream, the health
// service, and the HTTP answers to requests that cannot be gRPC.
import test from 'node:test';
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import net from 'node:net';
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startObleth, stop, curl, makeCerts, clientRequire, sleep, rig } from './lib.mjs';
import { waitFor, WAIT_MS } from './lib.mjs';

const grpc = clientRequire('@grpc/grpc-js');
const protoLoader = clientRequire('@grpc/proto-loader');
const { status: Code } = grpc;

const protoDir = join(dirname(fileURLToPath(import.meta.url)), '..', 'grpc');
const LOADER = { keepCase: true, longs: Number, enums: String, defaults: true };
const Echo = grpc.loadPackageDefinition(protoLoader.loadSync(join(protoDir, 'echo.proto'), LOADER)).obleth.test.Echo;
const Health = grpc.loadPackageDefinition(protoLoader.loadSync(join(protoDir, 'health.proto'), LOADER)).grpc.health.v1.Health;
const MsgCodec = Echo.service.Unary;

// ---- the upstream: tests/grpc/server.mjs as a child process ----

const servers = new Set();
process.on('exit', () => { for (const p of servers) { try { p.kill('SIGKILL'); } catch {} } });

function startEcho(args = []) {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [join(protoDir, 'server.mjs'), '--port', '0', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    servers.add(p);
    p.output = { text: '' };
    let done = false;
    const timer = setTimeout(() => { if (!done) { done = true; p.kill('SIGKILL'); reject(new Error(`echo server not ready:\n${p.output.text}`)); } }, WAIT_MS);
    const onData = (c) => {
      p.output.text += c.toString();
      const m = p.output.text.match(/^listening (\d+)$/m);
      if (m && !done) { done = true; clearTimeout(timer); resolve({ proc: p, port: Number(m[1]) }); }
    };
    p.stdout.on('data', onData);
    p.stderr.on('data', (c) => { p.output.text += c.toString(); });
    p.on('exit', (code, sig) => {
      servers.delete(p);
      p.exitInfo = { code, sig };
      if (!done) { done = true; clearTimeout(timer); reject(new Error(`echo server exited (${code ?? sig}):\n${p.output.text}`)); }
    });
  });
}

// ---- the gateway ----

function tenants() {
  return [
    { name: 'alice', keys: [{ id: 'alice-1', secret: 'sk-alice' }] },
    { name: 'bob', keys: [{ id: 'bob-1', secret: 'sk-bob' }] },
    { name: 'carol', disabled: true, keys: [{ id: 'carol-1', secret: 'sk-carol' }] },
    { name: 'dave', max_queue: 1, keys: [{ id: 'dave-1', secret: 'sk-dave' }] },
    { name: 'erin', rpm: 1, keys: [{ id: 'erin-1', secret: 'sk-erin' }] },
  ];
}

function gateway(echo, { upstream = {}, upstreams = [], routes = [], admission = {}, extra = {} } = {}) {
  return startObleth({
    upstreams: [{ name: 'echo', endpoints: [`http://127.0.0.1:${echo.port}`], protocol: 'h2c', max_inflight: 1, ...upstream }, ...upstreams],
    routes: [{ prefix: '/obleth.test.Echo/', class: 'grpc', upstream: 'echo' }, ...routes],
    tenants: tenants(),
    admission: { queue_timeout_ms: 30000, ...admission },
    grpc: { health: true },
    ...extra,
  });
}

// A port nothing listens on: bound, then closed.
async function closedPort() {
  const s = net.createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

// lib's rig, with the gRPC echo server and clients (closed before what
// they talk to: everything is stopped in reverse order).
function grpcRig() {
  const r = rig();
  r.echo = async (args) => { const e = await startEcho(args); r.defer(() => stop(e.proc)); return e; };
  r.gateway = async (echo, opts) => { const g = await gateway(echo, opts); r.defer(() => stop(g.proc)); return g; };
  r.client = (c) => { r.defer(() => c.close()); return c; };
  return r;
}

// ---- client helpers ----

const target = (port) => `127.0.0.1:${port}`;
const insecure = () => grpc.credentials.createInsecure();
const echoClient = (port) => new Echo(target(port), insecure());

function md(obj = {}) {
  const m = new grpc.Metadata();
  for (const [k, v] of Object.entries(obj)) m.add(k, v);
  return m;
}
const withKey = (k, obj = {}) => md({ authorization: `Bearer ${k}`, ...obj });
const deadline = (ms) => ({ deadline: Date.now() + ms });

// A unary call; resolves {err, res, headers, trailers, ms} and never rejects.
function unary(client, req, meta = md(), opts = {}, method = 'Unary') {
  const t0 = Date.now();
  return new Promise((resolve) => {
    const out = { headers: null, trailers: null };
    let pending = 2;
    const finish = () => { if (--pending === 0) resolve({ ...out, ms: Date.now() - t0 }); };
    const call = client[method](req, meta, opts, (err, res) => { out.err = err; out.res = res; finish(); });
    call.on('metadata', (m) => { out.headers = m; });
    call.on('status', (s) => { out.trailers = s.metadata; out.status = s; finish(); });
  });
}

// Any method path through a generic client (for routes with no service
// of their own in echo.proto).
function rawUnary(port, path, req, meta = md(), opts = {}) {
  const c = new grpc.Client(target(port), insecure());
  const t0 = Date.now();
  return new Promise((resolve) => {
    c.makeUnaryRequest(path, MsgCodec.requestSerialize, MsgCodec.responseDeserialize, req, meta, opts, (err, res) => {
      c.close();
      resolve({ err, res, ms: Date.now() - t0 });
    });
  });
}

// Read a server stream; resolves {msgs, times, err, status}.
function readStream(call) {
  const t0 = Date.now();
  return new Promise((resolve) => {
    const out = { msgs: [], times: [], err: null, headers: null };
    call.on('metadata', (m) => { out.headers = m; });
    call.on('data', (m) => { out.msgs.push(m); out.times.push(Date.now() - t0); });
    call.on('error', (e) => { out.err = e; });
    call.on('status', (s) => { out.status = s; setImmediate(() => resolve(out)); });
  });
}

// Wait until the echo server has seen n Echo calls, asked directly (the
// gateway's only slot may be held by the call waited for).
async function upstreamCalls(env, echo, n) {
  const direct = env.client(echoClient(echo.port));
  await waitFor(async () => (await unary(direct, {}, md(), deadline(5000), 'Stats')).res?.seq >= n, `${n} call(s) at the upstream`);
}

// Calls waiting in the gateway's queues, from its admin listener.
async function queued(gw) {
  const m = gw.output.text.match(/admin API on 127\.0\.0\.1:(\d+)/);
  return (await (await fetch(`http://127.0.0.1:${m[1]}/admin/fairshare`)).json()).queued;
}

function assertCode(r, code, what) {
  assert.ok(r.err, `${what}: expected status ${code}, the call succeeded`);
  assert.equal(r.err.code, code, `${what}: got ${r.err.code} (${r.err.details})`);
}

// Gateway-made statuses, seen on the wire: Trailers-Only (one HEADERS
// frame with END_STREAM carrying :status 200 and grpc-status).
function rawGrpc(port, path, headers, body = Buffer.alloc(5)) {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on('error', reject);
    const t0 = Date.now();
    const req = session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers', ...headers });
    const out = { headers: null, endStreamOnHeaders: false, trailers: null, data: Buffer.alloc(0) };
    req.on('response', (h, flags) => { out.headers = h; out.endStreamOnHeaders = !!(flags & http2.constants.NGHTTP2_FLAG_END_STREAM); });
    req.on('trailers', (t) => { out.trailers = t; });
    req.on('data', (d) => { out.data = Buffer.concat([out.data, d]); });
    req.on('error', (e) => { out.error = e; });
    req.on('close', () => { out.ms = Date.now() - t0; session.close(); resolve(out); });
    req.end(body);
  });
}

function frame(msg) {
  const payload = MsgCodec.requestSerialize(msg);
  const f = Buffer.alloc(5 + payload.length);
  f.writeUInt32BE(payload.length, 1);
  payload.copy(f, 5);
  return f;
}

// ---- tests ----

test('sanity: the grpc-js client and echo server work directly, without obleth', { timeout: 20000 }, async () => {
  const env = grpcRig();
  try {
    const echo = await env.echo();
    const client = env.client(echoClient(echo.port));
    const r = await unary(client, { text: 'hi' }, md({ 'x-echo-a': 'b' }), deadline(5000));
    assert.ifError(r.err);
    assert.equal(r.res.text, 'hi');
    assert.deepEqual(r.res.metadata, ['x-echo-a: b']);
    assert.ok(r.res.deadline_ms > 4000 && r.res.deadline_ms <= 5000, String(r.res.deadline_ms));
    const s = await readStream(client.ServerStream({ text: 's', count: 3 }, md(), deadline(5000)));
    assert.deepEqual(s.msgs.map((m) => m.text), ['s 0', 's 1', 's 2']);
    const f = await unary(client, { fail_code: 5, fail_message: 'ñ' }, md(), deadline(5000));
    assertCode(f, 5, 'direct failure');
    assert.equal(f.err.details, 'ñ');
  } finally {
    await env.close();
  }
});

test('the four RPC kinds stream through obleth: unary, server stream, client stream, bidi ping-pong', { timeout: 20000 }, async () => {
  const env = grpcRig();
  try {
    const echo = await env.echo();
    const gw = await env.gateway(echo, { upstream: { max_inflight: 4 } });
    const client = env.client(echoClient(gw.port));
    const u = await unary(client, { text: 'hello gRPC' }, withKey('sk-alice'), deadline(5000));
    assert.ifError(u.err);
    assert.equal(u.res.text, 'hello gRPC');
    assert.equal(u.status.code, Code.OK);

    // server streaming: messages arrive as they are sent, not at the end
    const s = await readStream(client.ServerStream({ text: 'tick', count: 5, delay_ms: 150 }, withKey('sk-alice'), deadline(5000)));
    assert.equal(s.err, null, s.err && s.err.message);
    assert.deepEqual(s.msgs.map((m) => m.text), ['tick 0', 'tick 1', 'tick 2', 'tick 3', 'tick 4']);
    assert.ok(s.times[4] - s.times[0] >= 450, `messages spread over time: ${s.times}`);

    // client streaming
    const c = await new Promise((resolve) => {
      const call = client.ClientStream(withKey('sk-alice'), deadline(5000), (err, res) => resolve({ err, res }));
      for (const t of ['a', 'bb', 'ccc']) call.write({ text: t });
      call.end();
    });
    assert.ifError(c.err);
    assert.equal(c.res.text, 'abbccc');
    assert.equal(c.res.count, 3);

    // bidi as ping-pong: each message is written only after the reply to
    // the previous one arrived, so nothing may wait for the request's end
    const replies = await new Promise((resolve, reject) => {
      const call = client.Bidi(withKey('sk-alice'), deadline(5000));
      const got = [];
      const N = 5;
      call.on('data', (m) => {
        got.push(m);
        if (got.length < N) call.write({ text: `ping ${got.length}`, seq: got.length });
        else call.end();
      });
      call.on('error', reject);
      call.on('status', (st) => { if (st.code === Code.OK) resolve(got); });
      call.write({ text: 'ping 0', seq: 0 });
    });
    assert.deepEqual(replies.map((m) => m.text), ['echo ping 0', 'echo ping 1', 'echo ping 2', 'echo ping 3', 'echo ping 4']);
    assert.deepEqual(replies.map((m) => m.count), [1, 2, 3, 4, 5]);
  } finally {
    await env.close();
  }
});

test('request metadata, response metadata and trailers (binary too) arrive intact; the API key does not reach the upstream', { timeout: 20000 }, async () => {
  const env = grpcRig();
  try {
    const echo = await env.echo();
    const gw = await env.gateway(echo);
    const client = env.client(echoClient(gw.port));
    const bin = Buffer.from([0x00, 0x01, 0x02, 0xff, 0xfe, 0x0a, 0x0d, 0x3a, 0x2c, 0x20]);
    for (const keyHeader of ['authorization', 'x-api-key']) {
      const meta = keyHeader === 'authorization' ? withKey('sk-alice') : md({ 'x-api-key': 'sk-alice' });
      meta.add('x-echo-text', 'hello, metadata');
      meta.add('x-echo-bin-bin', bin);
      const r = await unary(client, { text: 'm' }, meta, deadline(5000));
      assert.ifError(r.err);
      assert.deepEqual(r.res.metadata, [`x-echo-bin-bin: ${bin.toString('base64')}`, 'x-echo-text: hello, metadata'], 'what the server saw');
      assert.deepEqual(Buffer.from(r.res.echo_bin), bin, 'binary header bytes at the server');
      assert.equal(r.res.saw_api_key, false, `the tenant key (${keyHeader}) is not forwarded`);
      assert.deepEqual(r.headers.get('x-echo-text'), ['hello, metadata'], 'response initial metadata');
      assert.deepEqual(r.headers.get('x-echo-bin-bin'), [bin], 'binary response initial metadata');
      assert.deepEqual(r.trailers.get('x-echo-text'), ['hello, metadata'], 'trailing metadata');
      assert.deepEqual(r.trailers.get('x-echo-bin-bin'), [bin], 'binary trailing metadata');
    }
  } finally {
    await env.close();
  }
});

test('an upstream error status, non-ASCII message and binary trailers are preserved exactly', { timeout: 20000 }, async () => {
  const env = grpcRig();
  try {
    const echo = await env.echo();
    const gw = await env.gateway(echo);
    const client = env.client(echoClient(gw.port));
    const message = 'nicht gefunden: ünïcødé ✓ 100% "quoted" / 日本語';
    const detail = Buffer.from([0x00, 0xff, 0x10, 0x80, 0x7f, 0x0a]);
    // Trailers-Only from the upstream
    let r = await unary(client, { fail_code: Code.NOT_FOUND, fail_message: message }, withKey('sk-alice'), deadline(5000));
    assertCode(r, Code.NOT_FOUND, 'trailers-only upstream error');
    assert.equal(r.err.details, message);
    assert.deepEqual(r.err.metadata.get('x-detail-bin'), [detail]);
    assert.deepEqual(r.err.metadata.get('x-detail'), ['plain detail']);
    // headers, then trailers with the status
    r = await unary(client, { fail_code: Code.FAILED_PRECONDITION, fail_message: message }, withKey('sk-alice', { 'x-echo-k': 'v' }), deadline(5000));
    assertCode(r, Code.FAILED_PRECONDITION, 'upstream error after headers');
    assert.equal(r.err.details, message);
    assert.deepEqual(r.headers.get('x-echo-k'), ['v']);
    assert.deepEqual(r.err.metadata.get('x-detail-bin'), [detail]);
    assert.deepEqual(r.err.metadata.get('x-echo-k'), ['v']);
    // an error after some streamed messages
    const s = await readStream(client.ServerStream({ text: 'x', count: 2, fail_code: Code.ABORTED, fail_message: message }, withKey('sk-alice'), deadline(5000)));
    assert.deepEqual(s.msgs.map((m) => m.text), ['x 0', 'x 1']);
    assert.equal(s.status.code, Code.ABORTED);
    assert.equal(s.status.details, message);
    assert.deepEqual(s.status.metadata.get('x-detail-bin'), [detail]);
  } finally {
    await env.close();
  }
});

// Response headers and trailers with no message between them arrive from
// the upstream back to back, often in one read: an error after headers, an
// empty server stream. The trailers (and their grpc-status) must still be
// forwarded. Repeated, since how the frames fall into reads varies.
test('headers followed directly by trailers (no message) keep their trailers', { timeout: 20000 }, async () => {
  const env = grpcRig();
  try {
    const echo = await env.echo();
    const gw = await env.gateway(echo);
    const client = env.client(echoClient(gw.port));
    for (let i = 0; i < 20; i++) {
      const r = await unary(client, { fail_code: Code.FAILED_PRECONDITION, fail_message: `fail ${i}` }, withKey('sk-alice', { 'x-echo-k': `v${i}` }), deadline(5000));
      assertCode(r, Code.FAILED_PRECONDITION, `error after headers, try ${i}`);
      assert.equal(r.err.details, `fail ${i}`);
      assert.deepEqual(r.headers.get('x-echo-k'), [`v${i}`]);
      assert.deepEqual(r.err.metadata.get('x-echo-k'), [`v${i}`]);
    }
    for (let i = 0; i < 20; i++) {
      const s = await readStream(client.ServerStream({ text: 'none', count: 0 }, withKey('sk-alice', { 'x-echo-k': `e${i}` }), deadline(5000)));
      assert.equal(s.status.code, Code.OK, `empty stream, try ${i}: ${s.status.code} ${s.status.details}`);
      assert.equal(s.msgs.length, 0);
      assert.deepEqual(s.headers.get('x-echo-k'), [`e${i}`]);
      assert.deepEqual(s.status.metadata.get('x-echo-k'), [`e${i}`]);
    }
  } finally {
    await env.close();
  }
});

test('identity: missing or unknown key is UNAUTHENTICATED; disabled tenant or a route excluding it is PERMISSION_DENIED', { timeout: 20000 }, async () => {
  const env = grpcRig();
  try {
    const echo = await env.echo();
    const gw = await env.gateway(echo, {
      routes: [{ prefix: '/obleth.test.Private/', class: 'grpc', upstream: 'echo', tenants: ['alice'] }],
    });
    const client = env.client(echoClient(gw.port));
    assertCode(await unary(client, { text: 'x' }, md(), deadline(5000)), Code.UNAUTHENTICATED, 'no key');
    assertCode(await unary(client, { text: 'x' }, withKey('sk-nobody'), deadline(5000)), Code.UNAUTHENTICATED, 'unknown key');
    assertCode(await unary(client, { text: 'x' }, md({ 'x-api-key': 'sk-nobody' }), deadline(5000)), Code.UNAUTHENTICATED, 'unknown x-api-key');
    assertCode(await unary(client, { text: 'x' }, withKey('sk-carol'), deadline(5000)), Code.PERMISSION_DENIED, 'disabled tenant');
    // the route allows alice only: bob is denied before reaching anything;
    // alice reaches the upstream, which has no such service
    assertCode(await rawUnary(gw.port, '/obleth.test.Private/Unary', { text: 'x' }, withKey('sk-bob'), deadline(5000)), Code.PERMISSION_DENIED, 'route tenants excludes bob');
    assertCode(await rawUnary(gw.port, '/obleth.test.Private/Unary', { text: 'x' }, withKey('sk-alice'), deadline(5000)), Code.UNIMPLEMENTED, 'alice passes, the upstream has no such service');
    const ok = await unary(client, { text: 'x' }, withKey('sk-bob'), deadline(5000));
    assert.ifError(ok.err);
    const calls = await unary(client, {}, withKey('sk-bob'), deadline(5000), 'Stats');
    assert.equal(calls.res.seq, 1, 'of the Echo calls, only bob\'s admitted Unary reached the upstream');
  } finally {
    await env.close();
  }
});

test('no route for the path is UNIMPLEMENTED', { timeout: 20000 }, async () => {
  const env = grpcRig();
  try {
    const echo = await env.echo();
    const gw = await env.gateway(echo);
    assertCode(await rawUnary(gw.port, '/obleth.test.Nowhere/Unary', { text: 'x' }, withKey('sk-alice'), deadline(5000)), Code.UNIMPLEMENTED, 'no route');
  } finally {
    await env.close();
  }
});

test('a full tenant queue and the rpm limit are RESOURCE_EXHAUSTED with retry-after and grpc-retry-pushback-ms', { timeout: 20000 }, async () => {
  const env = grpcRig();
  try {
    const echo = await env.echo();
    const gw = await env.gateway(echo, { extra: { admin: { address: '127.0.0.1:0' } } });
    const client = env.client(echoClient(gw.port));
    const holder = unary(client, { text: 'hold', delay_ms: 1000 }, withKey('sk-alice'), deadline(5000));
    await upstreamCalls(env, echo, 1);
    const waiter = unary(client, { text: 'wait' }, withKey('sk-dave'), deadline(5000));
    await waitFor(async () => (await queued(gw)) === 1, 'the waiter queued');
    const full = await unary(client, { text: 'full' }, withKey('sk-dave'), deadline(5000));
    assertCode(full, Code.RESOURCE_EXHAUSTED, 'dave max_queue 1');
    // refused, not queued: a queued call would have been served after the
    // holder and the waiter, not refused
    const ra = full.err.metadata.get('retry-after');
    assert.equal(ra.length, 1, 'retry-after trailer');
    assert.ok(Number(ra[0]) >= 1, `retry-after ${ra[0]}`);
    const pb = full.err.metadata.get('grpc-retry-pushback-ms');
    assert.equal(pb.length, 1, 'grpc-retry-pushback-ms trailer');
    assert.match(String(pb[0]), /^\d+$/);
    assert.ifError((await holder).err);
    assert.ifError((await waiter).err);

    assert.ifError((await unary(client, { text: 'one' }, withKey('sk-erin'), deadline(5000))).err);
    const limited = await unary(client, { text: 'two' }, withKey('sk-erin'), deadline(5000));
    assertCode(limited, Code.RESOURCE_EXHAUSTED, 'erin rpm 1');
    assert.ok(Number(limited.err.metadata.get('retry-after')[0]) >= 1, 'retry-after on the rate limit');
    assert.match(String(limited.err.metadata.get('grpc-retry-pushback-ms')[0]), /^\d+$/);
  } finally {
    await env.close();
  }
});

test('the client deadline bounds the queue wait: DEADLINE_EXCEEDED, Trailers-Only from the gateway', { timeout: 20000 }, async () => {
  const env = grpcRig();
  try {
    const echo = await env.echo();
    const gw = await env.gateway(echo);
    const client = env.client(echoClient(gw.port));
    const holder = unary(client, { text: 'hold', delay_ms: 1500 }, withKey('sk-alice'), deadline(5000));
    await upstreamCalls(env, echo, 1);
    // raw h2: grpc-js would give up on its own at the deadline, so read the
    // gateway's own answer on the wire
    const r = await rawGrpc(gw.port, '/obleth.test.Echo/Unary', { 'grpc-timeout': '300m', authorization: 'Bearer sk-bob' }, frame({ text: 'late' }));
    assert.ok(r.headers, `a response (${r.error})`);
    assert.equal(r.headers[':status'], 200);
    assert.match(r.headers['content-type'] || '', /^application\/grpc/);
    assert.equal(r.headers['grpc-status'], '4', `grpc-status in the only HEADERS: ${JSON.stringify(r.headers)}`);
    assert.equal(r.endStreamOnHeaders, true, 'Trailers-Only: END_STREAM on the HEADERS frame');
    assert.equal(r.trailers, null);
    assert.equal(r.data.length, 0);
    // not before the deadline; had the wait gone on, the call would have
    // reached the upstream, which the count at the end rules out
    assert.ok(r.ms >= 250, `answered at the deadline (${r.ms} ms)`);
    // grpc-js: DEADLINE_EXCEEDED either way
    const g = await unary(client, { text: 'late' }, withKey('sk-bob'), deadline(300));
    assertCode(g, Code.DEADLINE_EXCEEDED, 'grpc-js deadline while queued');
    assert.ifError((await holder).err);
    const st = await unary(client, {}, withKey('sk-alice'), deadline(5000), 'Stats');
    assert.equal(st.res.seq, 1, 'the expired calls never reached the upstream, only the holder did');
  } finally {
    await env.close();
  }
});

test('UNAVAILABLE when the queue wait passes queue_timeout_ms and when the upstream refuses connections', { timeout: 20000 }, async () => {
  const env = grpcRig();
  try {
    const echo = await env.echo();
    const dead = await closedPort();
    const gw = await env.gateway(echo, {
      admission: { queue_timeout_ms: 300 },
      upstreams: [{ name: 'dead', endpoints: [`http://127.0.0.1:${dead}`], protocol: 'h2c' }],
      routes: [{ prefix: '/obleth.test.Dead/', class: 'grpc', upstream: 'dead' }],
    });
    const client = env.client(echoClient(gw.port));
    const holder = unary(client, { text: 'hold', delay_ms: 1200 }, withKey('sk-alice'), deadline(5000));
    await upstreamCalls(env, echo, 1);
    const q = await unary(client, { text: 'queued' }, withKey('sk-bob'), deadline(5000));
    assertCode(q, Code.UNAVAILABLE, 'queue_timeout_ms');
    assert.ok(q.ms >= 250, `after the queue timeout (${q.ms} ms)`);
    assert.ifError((await holder).err);
    const r = await rawUnary(gw.port, '/obleth.test.Dead/Unary', { text: 'x' }, withKey('sk-alice'), deadline(5000));
    assertCode(r, Code.UNAVAILABLE, 'connection refused');
  } finally {
    await env.close();
  }
});

test('deadlines propagate: the upstream sees the client deadline less the time spent queued in the gateway', { timeout: 20000 }, async () => {
  const env = grpcRig();
  try {
    const echo = await env.echo();
    const gw = await env.gateway(echo);
    const client = env.client(echoClient(gw.port));
    const fast = await unary(client, { text: 'd' }, withKey('sk-alice'), deadline(5000));
    assert.ifError(fast.err);
    assert.ok(fast.res.deadline_ms > 4000 && fast.res.deadline_ms < 5000, `upstream deadline ${fast.res.deadline_ms} ms of 5000`);
    const holder = unary(client, { text: 'hold', delay_ms: 2000 }, withKey('sk-alice'), deadline(5000));
    await upstreamCalls(env, echo, 2);
    const t0 = Date.now();
    const queued = await unary(client, { text: 'q' }, withKey('sk-bob'), deadline(5000));
    const waited = Date.now() - t0;
    assert.ifError(queued.err);
    assert.ok(waited >= 600, `the call waited for the slot (${waited} ms)`);
    assert.ok(queued.res.deadline_ms <= 5000 - 600 && queued.res.deadline_ms > 5000 - waited - 400,
      `upstream deadline ${queued.res.deadline_ms} ms after waiting ${waited} ms of 5000`);
    assert.ifError((await holder).err);
  } finally {
    await env.close();
  }
});

test('a cancelled call releases its slot and cancels the upstream call', { timeout: 20000 }, async () => {
  const env = grpcRig();
  try {
    const echo = await env.echo();
    const gw = await env.gateway(echo);
    const client = env.client(echoClient(gw.port));
    const before = await unary(client, {}, withKey('sk-alice'), deadline(5000), 'Stats');
    assert.ifError(before.err);
    const call = client.ServerStream({ text: 'forever', count: -1, delay_ms: 20 }, withKey('sk-alice'), deadline(5000));
    const seen = await new Promise((resolve, reject) => {
      const got = [];
      call.on('data', (m) => { got.push(m); if (got.length === 3) resolve(got); });
      call.on('error', (e) => { if (got.length < 3) reject(e); });
    });
    assert.equal(seen.length, 3);
    const status = new Promise((r) => call.on('status', r));
    call.cancel();
    assert.equal((await status).code, Code.CANCELLED);
    // the only slot is free again (a leaked one would hold this call until
    // its deadline)
    const next = await unary(client, { text: 'after' }, withKey('sk-bob'), deadline(10000));
    assert.ifError(next.err);
    let after;
    await waitFor(async () => {
      after = await unary(client, {}, withKey('sk-alice'), deadline(5000), 'Stats');
      assert.ifError(after.err);
      return after.res.count > before.res.count;
    }, 'the upstream to see its call cancelled');
    assert.equal(after.res.count, before.res.count + 1, 'the upstream saw its call cancelled');
  } finally {
    await env.close();
  }
});

test('an h2 upstream over TLS carries a unary call', { timeout: 20000 }, async () => {
  const env = grpcRig();
  try {
    const certs = await makeCerts();
    const echo = await env.echo(['--tls', certs.cert, certs.key]);
    const gw = await env.gateway(echo, { upstream: { protocol: 'h2', endpoints: [`https://127.0.0.1:${echo.port}`], tls_verify: false } });
    const client = env.client(echoClient(gw.port));
    const r = await unary(client, { text: 'over tls' }, withKey('sk-alice', { 'x-echo-t': 'tls' }), deadline(5000));
    assert.ifError(r.err);
    assert.equal(r.res.text, 'over tls');
    assert.deepEqual(r.trailers.get('x-echo-t'), ['tls']);
  } finally {
    await env.close();
  }
});

test('the gateway answers grpc.health.v1.Health/Check without an API key', { timeout: 20000 }, async () => {
  const env = grpcRig();
  try {
    const echo = await env.echo();
    const dead = await closedPort();
    const gw = await env.gateway(echo, {
      upstreams: [{ name: 'dead', endpoints: [`http://127.0.0.1:${dead}`], protocol: 'h2c' }],
      routes: [{ prefix: '/obleth.test.Dead/', class: 'grpc', upstream: 'dead' }],
      extra: { timeouts: { backoff_ms: 10000 } },
    });
    const health = env.client(new Health(target(gw.port), insecure()));
    const check = (service) => unary(health, { service }, md(), deadline(5000), 'Check');
    let r = await check('');
    assert.ifError(r.err);
    assert.equal(r.res.status, 'SERVING');
    r = await check('obleth.test.Echo');
    assert.ifError(r.err);
    assert.equal(r.res.status, 'SERVING');
    r = await check('obleth.test.Unknown');
    assertCode(r, Code.NOT_FOUND, 'unknown service');
    // every endpoint of its upstream in back-off: NOT_SERVING
    assertCode(await rawUnary(gw.port, '/obleth.test.Dead/Unary', { text: 'x' }, withKey('sk-alice'), deadline(5000)), Code.UNAVAILABLE, 'refused');
    r = await check('obleth.test.Dead');
    assert.ifError(r.err);
    assert.equal(r.res.status, 'NOT_SERVING');
  } finally {
    await env.close();
  }
});

test('application/grpc over HTTP/1.1 is 505; a non-gRPC content-type on a grpc route over h2 is 415', { timeout: 20000 }, async () => {
  const env = grpcRig();
  try {
    const echo = await env.echo();
    const gw = await env.gateway(echo);
    const url = `${gw.url}/obleth.test.Echo/Unary`;
    const key = ['-H', 'authorization: Bearer sk-alice'];
    let r = await curl(['--http1.1', ...key, '-H', 'content-type: application/grpc', '-H', 'te: trailers', '--data-binary', '@-', url], { input: frame({ text: 'x' }) });
    assert.equal(r.status, 505, r.body);
    assert.match(JSON.parse(r.body).error.message, /HTTP\/2/);
    r = await curl(['--http1.1', ...key, '-H', 'content-type: application/grpc+proto', '--data-binary', 'x', url]);
    assert.equal(r.status, 505, r.body);
    r = await curl(['--http2-prior-knowledge', ...key, '-H', 'content-type: application/json', '--data-binary', '{}', url]);
    assert.equal(r.status, 415, r.body);
    assert.equal(r.httpVersion, '2');
  } finally {
    await env.close();
  }
});

// An upstream that ignores grpc-timeout (answers nothing until cancelled):
// the gateway itself ends the call at the client's deadline and cancels the
// upstream stream.
test('the gateway ends a call at its deadline when the upstream ignores grpc-timeout, and cancels upstream', { timeout: 20000 }, async () => {
  const seen = [];
  const up = http2.createServer();
  up.on('stream', (stream, headers) => {
    const rec = { timeout: headers['grpc-timeout'], te: headers.te, closedBy: null };
    seen.push(rec);
    stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
    stream.on('close', () => { rec.closedBy = stream.rstCode; });
  });
  await new Promise((r) => up.listen(0, '127.0.0.1', r));
  const env = grpcRig();
  try {
    const gw = await env.gateway({ port: up.address().port });
    const r = await rawGrpc(gw.port, '/obleth.test.Echo/Unary', { 'grpc-timeout': '400m', authorization: 'Bearer sk-alice' }, frame({ text: 'x' }));
    assert.ok(r.headers, `a response (${r.error})`);
    assert.equal(r.headers[':status'], 200);
    assert.equal(r.endStreamOnHeaders, false, 'the upstream head was passed on first');
    assert.ok(r.trailers, 'the call ended with trailers');
    assert.equal(r.trailers['grpc-status'], '4', JSON.stringify(r.trailers));
    assert.ok(r.ms >= 350 && r.ms < 10000, `ended at the deadline (${r.ms} ms)`);
    assert.equal(seen.length, 1);
    assert.match(seen[0].timeout, /^\d{1,8}[umS]$/, 'grpc-timeout forwarded');
    assert.equal(seen[0].te, 'trailers');
    await waitFor(() => seen[0].closedBy !== null, 'the upstream stream closed');
    assert.equal(seen[0].closedBy, http2.constants.NGHTTP2_CANCEL, 'the upstream stream was cancelled');
    // the slot (max_inflight 1) is free again
    const again = await rawGrpc(gw.port, '/obleth.test.Echo/Unary', { 'grpc-timeout': '200m', authorization: 'Bearer sk-alice' }, frame({ text: 'y' }));
    assert.equal(again.trailers?.['grpc-status'], '4');
    assert.notEqual(again.headers['x-obleth-admission'], 'queued');
  } finally {
    await env.close();
    await new Promise((r) => up.close(r));
  }
});
