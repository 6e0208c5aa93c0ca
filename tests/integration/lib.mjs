// Shared harness for the integration tests: starts obleth-sim and obleth on
// ephemeral loopback ports, runs real clients (curl, nghttp, the OpenAI SDK)
// against them, and stops everything at the end of a test file.
//
// Binaries come from meson through the environment: OBLETH, OBLETH_SIM.
import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import net from 'node:net';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const here = dirname(fileURLToPath(import.meta.url));
export const OBLETH = process.env.OBLETH;
export const OBLETH_SIM = process.env.OBLETH_SIM;
if (!OBLETH || !OBLETH_SIM) throw new Error('OBLETH and OBLETH_SIM must point at the built binaries');

const children = new Set();
const tmpdirs = new Set();
process.on('exit', () => {
  for (const c of children) { try { c.kill('SIGKILL'); } catch {} }
  for (const d of tmpdirs) { try { rmSync(d, { recursive: true, force: true }); } catch {} }
});

export function tempDir() {
  const d = mkdtempSync(join(tmpdir(), 'obleth-test-'));
  tmpdirs.add(d);
  return d;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Poll cond() (sync or async) until it returns a truthy value, and return
// that value. Tests wait for an event they can observe (a counter, a log
// line, a close), never for a time: WAIT_MS is only a backstop far beyond
// any loaded machine's latency, and past it the test fails naming what it
// waited for (what: a string or a function giving one).
export const WAIT_MS = 30000;
export async function waitFor(cond, what = 'the condition', ms = WAIT_MS) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > end) throw new Error(`waited ${ms} ms for ${typeof what === 'function' ? what() : what}`);
    await sleep(10);
  }
}

// Poll cond() every step ms like waitFor, but answer false instead of
// failing when ms passes (for a test that asserts on the outcome itself, or
// that something did not happen).
export async function until(cond, ms = WAIT_MS, step = 5) {
  for (const end = Date.now() + ms; ; await sleep(step)) {
    const v = await cond();
    if (v) return v;
    if (Date.now() >= end) return false;
  }
}

// What a test starts, stopped at its end in reverse order, whatever failed
// in between: r.sim(args) and r.gateway(config, opts) start obleth-sim and
// obleth (a gateway with an admin listener gets adminUrl); r.defer(fn)
// registers any other clean-up (a server's close, a client's). close()
// runs them all and throws the first error.
export function rig() {
  const closers = [];
  const r = {
    defer(fn) { closers.push(fn); },
    async sim(args) { const s = await startSim(args); r.defer(() => stop(s.proc)); return s; },
    async gateway(config, opts) {
      const g = await startObleth(config, opts);
      r.defer(() => stop(g.proc));
      const a = g.output.text.match(/admin API on 127\.0\.0\.1:(\d+)/);
      if (config.admin && !a) throw new Error(`admin listener not logged:\n${g.output.text}`);
      if (a) g.adminUrl = `http://127.0.0.1:${a[1]}`;
      g.cfg = config;
      return g;
    },
    server(s) { r.defer(() => s.close()); return s; },
    async close() {
      let first = null;
      for (const f of closers.splice(0).reverse()) { try { await f(); } catch (e) { first ??= e; } }
      if (first) throw first;
    },
  };
  return r;
}

// curl's arguments for an API key, and a header of a raw (curl -i) answer.
export const bearer = (k) => ['-H', `authorization: Bearer ${k}`];
export const header = (raw, name) => (raw.match(new RegExp(`^${name}: *(.*?)\\r?$`, 'im')) || [])[1];

// A chat request that holds an upstream slot until release(): the
// simulator delays it far beyond any test, and release() hangs up (the
// gateway gives the slot back when its client goes). Tests queue others
// behind it however long that takes on a loaded machine; done settles once
// the client side is gone.
export function holdSlot(url, key) {
  const ac = new AbortController();
  const done = fetch(`${url}/v1/chat/completions`, {
    method: 'POST', signal: ac.signal, body: JSON.stringify(chatBody({ max_tokens: 1 })),
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}`, 'x-sim-delay-ms': '600000' },
  }).then((r) => r.text()).catch(() => {});
  return { release: () => ac.abort(), done };
}

// Spawn a process and resolve once a line of its output matches re.
function startAndWait(cmd, args, re, stream, opts = {}) {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
    children.add(p);
    const out = { text: '' };
    p.output = out;
    p.isObleth = cmd === OBLETH;
    let done = false;
    const timer = setTimeout(() => { if (!done) { done = true; p.kill('SIGKILL'); reject(new Error(`${cmd} not ready:\n${out.text}`)); } }, WAIT_MS);
    const onData = (chunk) => {
      out.text += chunk.toString();
      const m = out.text.match(re);
      if (m && !done) {
        done = true;
        clearTimeout(timer);
        resolve({ proc: p, match: m, output: out });
      }
    };
    p.stdout.on('data', stream === 'stdout' ? onData : (c) => { out.text += c.toString(); });
    p.stderr.on('data', stream === 'stderr' ? onData : (c) => { out.text += c.toString(); });
    p.on('exit', (code, sig) => {
      children.delete(p);
      p.exitInfo = { code, sig };
      if (!done) { done = true; clearTimeout(timer); reject(new Error(`${cmd} exited (${code ?? sig}) before it was ready:\n${out.text}`)); }
    });
  });
}

export async function startSim(args = []) {
  const { proc, match, output } = await startAndWait(OBLETH_SIM, ['--listen', '127.0.0.1:0', ...args],
    /listening on (\S+):(\d+)/, 'stdout');
  const port = Number(match[2]);
  return { proc, port, addr: `127.0.0.1:${port}`, url: `http://127.0.0.1:${port}`, output, h2c: args.includes('--h2c') };
}

// Start obleth on a config object (written to a temporary folder). Listener
// addresses default to one cleartext loopback listener on an ephemeral port.
export async function startObleth(config, { files = {} } = {}) {
  const dir = tempDir();
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  const cfg = { listeners: [{ address: '127.0.0.1:0' }], ...config };
  const path = join(dir, 'obleth.json');
  writeFileSync(path, JSON.stringify(cfg, null, 2));
  const n = cfg.listeners.length;
  const re = new RegExp(Array(n).fill('listening on (\\S+):(\\d+)[^\\n]*\\n').join('[\\s\\S]*'));
  const { proc, match, output } = await startAndWait(OBLETH, ['--config', path], re, 'stderr');
  const ports = [];
  for (let i = 0; i < n; i++) ports.push(Number(match[2 + i * 2]));
  return { proc, port: ports[0], ports, url: `http://127.0.0.1:${ports[0]}`, output, dir, configPath: path };
}

// A loopback port nothing listens on now (the kernel's pick; closed again
// at once, so another process could take it before the caller binds it).
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// Debian's redis-server on a loopback port, persisting nothing (so a restart
// on the same port starts empty), tracked and killed on exit like the other
// children. port: reuse one (a restart); password: --requirepass, which
// cli() passes too. Resolves once redis-cli ping answers PONG, with
// {proc, port, url, password, cli(args) -> stdout}.
export async function startRedis({ port, password } = {}) {
  port ??= await freePort();
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'];
  if (password !== undefined) args.push('--requirepass', password);
  const p = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(p);
  p.output = { text: '' };
  p.stdout.on('data', (c) => { p.output.text += c.toString(); });
  p.stderr.on('data', (c) => { p.output.text += c.toString(); });
  p.on('exit', (code, sig) => { children.delete(p); p.exitInfo = { code, sig }; });
  const auth = password !== undefined ? ['--no-auth-warning', '-a', password] : [];
  const cli = async (a) => (await run('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...auth, ...a])).stdout;
  await waitFor(async () => {
    if (p.exitInfo) throw new Error(`redis-server exited (${p.exitInfo.code ?? p.exitInfo.sig}):\n${p.output.text}`);
    return (await cli(['ping'])).trim() === 'PONG';
  }, () => `redis-server on port ${port} to answer PONG:\n${p.output.text}`);
  return { proc: p, port, url: `redis://127.0.0.1:${port}/0`, password, cli };
}

// Stop a child. A sanitizer report in its output, or obleth not exiting 0
// on SIGTERM, fails the calling test: memory errors in the gateway must
// never pass unnoticed just because the client saw the right bytes.
export async function stop(p, sig = 'SIGTERM') {
  const info = await new Promise((resolve) => {
    if (p.exitInfo) return resolve(p.exitInfo);
    p.once('exit', (code, s) => resolve({ code, sig: s }));
    p.kill(sig);
  });
  await new Promise((r) => setImmediate(r));
  const text = p.output ? p.output.text : '';
  const m = text.match(/(ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:)[\s\S]{0,3000}/);
  if (m) throw new Error(`sanitizer report from ${p.spawnfile}:\n${m[0]}`);
  if (p.isObleth && sig === 'SIGTERM' && info.code !== 0)
    throw new Error(`obleth exited ${info.code ?? info.sig} on SIGTERM:\n${text.slice(-3000)}`);
  return info;
}

// Run a command; resolve with {code, stdout, stderr} (never rejects on a
// non-zero exit, tests assert on it).
export function run(cmd, args, { input, timeout = 30000, encoding = 'utf8' } = {}) {
  return new Promise((resolve) => {
    const p = execFile(cmd, args, { timeout, maxBuffer: 64 << 20, encoding }, (err, stdout, stderr) => {
      resolve({ code: err ? (err.code ?? 1) : 0, stdout, stderr, err });
    });
    if (input !== undefined) { p.stdin.write(input); p.stdin.end(); }
  });
}

// curl with -sS and the status code appended after a marker line.
export async function curl(args, opts) {
  const r = await run('curl', ['-sS', '-w', '\n__STATUS__%{http_code} %{http_version}', ...args], opts);
  const i = r.stdout.lastIndexOf('\n__STATUS__');
  const tail = i >= 0 ? r.stdout.slice(i + 11).trim().split(' ') : ['0', '0'];
  return { ...r, body: i >= 0 ? r.stdout.slice(0, i) : r.stdout, status: Number(tail[0]), httpVersion: tail[1] };
}

export async function simStats(sim) {
  if (sim.h2c) {
    const r = await run('curl', ['-sS', '--http2-prior-knowledge', `${sim.url}/sim/stats`]);
    return JSON.parse(r.stdout);
  }
  const r = await fetch(`${sim.url}/sim/stats`);
  return r.json();
}

// The Node SDKs installed from tests/clients (package-lock.json pins them).
export function clientRequire(name) {
  const req = createRequire(join(here, '..', 'clients', 'package.json'));
  return req(name);
}

// A throw-away CA and a server certificate for 127.0.0.1 / localhost.
export async function makeCerts() {
  const dir = tempDir();
  const o = (args) => run('openssl', args);
  const p = (f) => join(dir, f);
  await o(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=obleth test CA',
    '-keyout', p('ca.key'), '-out', p('ca.pem')]);
  await o(['req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-keyout', p('server.key'),
    '-out', p('server.csr')]);
  writeFileSync(p('ext.cnf'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n');
  const r = await o(['x509', '-req', '-in', p('server.csr'), '-CA', p('ca.pem'), '-CAkey', p('ca.key'),
    '-CAcreateserial', '-days', '1', '-extfile', p('ext.cnf'), '-out', p('server.pem')]);
  if (!existsSync(p('server.pem'))) throw new Error('openssl failed: ' + r.stderr);
  return { dir, ca: p('ca.pem'), cert: p('server.pem'), key: p('server.key') };
}

export function chatBody(extra = {}) {
  return { model: 'sim-model', messages: [{ role: 'user', content: 'Say something about fair queues.' }], max_tokens: 8, ...extra };
}

// Parse an SSE stream body into data payloads.
export function sseData(text) {
  return text.split('\n\n').map((e) => e.trim()).filter((e) => e.startsWith('data: ')).map((e) => e.slice(6));
}
