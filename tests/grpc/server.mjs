// A real grpc-js server for obleth's gRPC integration tests: the Echo
// service of echo.proto, over h2c or (with --tls) h2 over TLS.
//
//   node tests/grpc/server.mjs --port 0 [--host 127.0.0.1] [--tls CERT KEY]
//
// Prints one line "listening PORT" on stdout once bound. Test hooks travel
// in the request message (delay_ms, fail_code, count, ...) and in request
// metadata: keys starting with x-echo- are copied into the response's
// initial and trailing metadata.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const here = dirname(fileURLToPath(import.meta.url));
const clientsRequire = createRequire(join(here, '..', 'clients', 'package.json'));
const grpc = clientsRequire('@grpc/grpc-js');
const protoLoader = clientsRequire('@grpc/proto-loader');

const Echo = grpc.loadPackageDefinition(protoLoader.loadSync(join(here, 'echo.proto'),
  { keepCase: true, longs: Number, enums: String, defaults: true })).obleth.test.Echo;

// Counters for Stats: Echo calls other than Stats, and those cancelled.
// grpc-js emits 'cancelled' on a server call also after the handler itself
// ended it, so a call counts as cancelled only when it ended before the
// handler finished.
const stats = { calls: 0, cancelled: 0 };

function track(call) {
  stats.calls++;
  const state = { done: false, cancelled: false };
  call.on('cancelled', () => {
    if (state.done || state.cancelled) return;
    state.cancelled = true;
    stats.cancelled++;
  });
  return state;
}

function remainingDeadline(call) {
  const d = call.getDeadline();
  const ms = d instanceof Date ? d.getTime() : Number(d);
  return Number.isFinite(ms) ? ms - Date.now() : -1;
}

// The request's x-echo-* metadata, as a Metadata to send back and as
// "key: value" lines (binary values in base64) for the response message.
function echoMetadata(call) {
  const out = new grpc.Metadata();
  const lines = [];
  let bin = Buffer.alloc(0);
  for (const k of Object.keys(call.metadata.getMap())) {
    if (!k.startsWith('x-echo-')) continue;
    for (const v of call.metadata.get(k)) {
      out.add(k, v);
      lines.push(`${k}: ${Buffer.isBuffer(v) ? v.toString('base64') : v}`);
      if (k === 'x-echo-bin-bin') bin = v;
    }
  }
  lines.sort();
  const sawKey = call.metadata.get('authorization').length > 0 || call.metadata.get('x-api-key').length > 0;
  return { md: out, lines, bin, sawKey };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function failStatus(req, echo) {
  const md = echo.md.clone();
  md.set('x-detail-bin', Buffer.from([0x00, 0xff, 0x10, 0x80, 0x7f, 0x0a]));
  md.set('x-detail', 'plain detail');
  return { code: req.fail_code, details: req.fail_message, metadata: md };
}

const handlers = {
  async Unary(call, callback) {
    const st = track(call);
    const req = call.request;
    const deadline = remainingDeadline(call);
    const echo = echoMetadata(call);
    // An answer with x-echo metadata starts with response headers; one
    // without is a Trailers-Only response when it fails.
    if (echo.lines.length) call.sendMetadata(echo.md);
    if (req.delay_ms > 0) await sleep(req.delay_ms);
    if (st.cancelled) return;
    st.done = true;
    if (req.fail_code) return callback(failStatus(req, echo));
    callback(null, {
      text: req.text, count: req.count, seq: req.seq, deadline_ms: deadline,
      metadata: echo.lines, echo_bin: echo.bin, saw_api_key: echo.sawKey,
    }, echo.md.clone());
  },

  async ServerStream(call) {
    const st = track(call);
    const req = call.request;
    const deadline = remainingDeadline(call);
    const echo = echoMetadata(call);
    if (echo.lines.length) call.sendMetadata(echo.md);
    for (let i = 0; req.count < 0 || i < req.count; i++) {
      if (i > 0 && req.delay_ms > 0) await sleep(req.delay_ms);
      if (st.cancelled) return;
      call.write({ text: `${req.text} ${i}`, seq: i, deadline_ms: deadline });
      // an unbounded stream still yields to the event loop
      if (req.delay_ms <= 0 && i % 64 === 63) await sleep(0);
    }
    st.done = true;
    if (req.fail_code) return call.emit('error', failStatus(req, echo));
    call.end(echo.md.clone());
  },

  ClientStream(call, callback) {
    const st = track(call);
    const deadline = remainingDeadline(call);
    const texts = [];
    call.on('data', (m) => texts.push(m.text));
    call.on('end', () => {
      if (st.cancelled) return;
      st.done = true;
      callback(null, { text: texts.join(''), count: texts.length, deadline_ms: deadline });
    });
  },

  Bidi(call) {
    const st = track(call);
    const deadline = remainingDeadline(call);
    let n = 0;
    call.on('data', (m) => {
      if (st.cancelled) return;
      call.write({ text: `echo ${m.text}`, seq: m.seq, count: ++n, deadline_ms: deadline });
    });
    call.on('end', () => {
      if (st.cancelled) return;
      st.done = true;
      call.end();
    });
  },

  Stats(call, callback) {
    callback(null, { count: stats.cancelled, seq: stats.calls });
  },
};

async function main() {
  const argv = process.argv.slice(2);
  let port = 0, host = '127.0.0.1', tls = null;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--port') port = Number(argv[++i]);
    else if (argv[i] === '--host') host = argv[++i];
    else if (argv[i] === '--tls') { tls = { cert: argv[++i], key: argv[++i] }; }
    else { console.error(`unknown argument ${argv[i]}`); process.exit(2); }
  }
  const server = new grpc.Server();
  server.addService(Echo.service, handlers);
  const creds = tls
    ? grpc.ServerCredentials.createSsl(null, [{ cert_chain: readFileSync(tls.cert), private_key: readFileSync(tls.key) }], false)
    : grpc.ServerCredentials.createInsecure();
  server.bindAsync(`${host}:${port}`, creds, (err, bound) => {
    if (err) { console.error(err.message); process.exit(1); }
    process.stdout.write(`listening ${bound}\n`);
  });
  // forceShutdown: an unbounded stream in flight would keep tryShutdown waiting
  const quit = () => { server.forceShutdown(); process.exit(0); };
  process.on('SIGTERM', quit);
  process.on('SIGINT', quit);
}

main();
