// Helpers shared by the benchmarks in this folder (Node 20, no npm
// packages): a scratch folder and child processes that are cleaned up at
// exit, readiness polling, h2load runs and their output, one-off HTTP/2
// requests, CPU and memory readings from /proc, percentiles and the
// machine line printed at the top of every report.
//
// Every process started here is recorded and killed (by its pid) when the
// benchmark exits, however it exits; the scratch folders are removed.
import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync, openSync, closeSync, rmSync, existsSync, readdirSync } from 'node:fs';
import { tmpdir, cpus, totalmem, availableParallelism } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import net from 'node:net';
import http2 from 'node:http2';

const here = dirname(fileURLToPath(import.meta.url));
export const OBLETH = process.env.OBLETH ?? join(here, '..', 'build', 'obleth');
export const OBLETH_SIM = process.env.OBLETH_SIM ?? join(here, '..', 'build', 'tests', 'sim', 'obleth-sim');

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const fail = (msg) => { console.error(msg); process.exit(1); };

// ---- command line ----

// Parse process.argv into `opt` (its defaults) by `spec`: an option that
// takes a value maps to [key, convert] (Number, String, list); a flag maps
// to a function that changes opt. Unknown options print `usage`, exit 2.
export function parseArgs(opt, spec, usage) {
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    const s = spec[argv[i]];
    const bad = !s ? `unknown option ${argv[i]}` : Array.isArray(s) && i + 1 >= argv.length ? `${argv[i]} needs a value` : null;
    if (bad) { console.error(`${bad}\nusage: ${usage}`); process.exit(2); }
    if (Array.isArray(s)) opt[s[0]] = s[1](argv[++i]);
    else s(opt);
  }
  return opt;
}
export const list = (v) => v.split(',');

// ---- processes and scratch folders (stopped / removed at exit) ----

const children = [];
const dirs = [];
process.on('exit', () => {
  for (const c of children) if (!c.exitInfo) { try { c.kill('SIGKILL'); } catch {} }
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(130));

// A fresh scratch folder under the system's temporary folder.
export function workDir(prefix) {
  const d = mkdtempSync(join(tmpdir(), prefix));
  dirs.push(d);
  return d;
}

// taskset prefix: `pin` is a CPU list ("1", "0,2-3") or null for none.
const pinned = (cmd, args, pin) => (pin == null ? [cmd, args] : ['taskset', ['-c', String(pin), cmd, ...args]]);

// Start `cmd args` with stdout and stderr appended to dir/logName (O_APPEND,
// so the log may be truncated while the process writes). The process keeps
// its pid through taskset and prlimit (both exec the command).
export function spawnLogged(dir, cmd, args, logName, { pin = null, env } = {}) {
  const fd = openSync(join(dir, logName), 'a');
  const [c, a] = pinned(cmd, args, pin);
  const p = spawn(c, a, { stdio: ['ignore', fd, fd], env: env ?? process.env });
  closeSync(fd);
  children.push(p);
  p.on('exit', (code, sig) => { p.exitInfo = { code, sig }; });
  return p;
}
export const logOf = (dir, name) => readFileSync(join(dir, name), 'utf8');

// SIGTERM, then SIGKILL after `ms`: {code, sig}.
export async function stop(p, ms = 10000) {
  if (!p.exitInfo) {
    p.kill('SIGTERM');
    const t = setTimeout(() => { try { p.kill('SIGKILL'); } catch {} }, ms);
    await new Promise((r) => (p.exitInfo ? r() : p.once('exit', r)));
    clearTimeout(t);
  }
  return p.exitInfo;
}

// Poll `fn` every 50 ms until it returns something truthy (returned); exit
// with "WHAT did not start" after `ms`.
export async function waitFor(what, fn, ms = 10000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) fail(`${what} did not start`);
    await sleep(50);
  }
}

export function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

// Whether something accepts TCP connections on 127.0.0.1:port.
export const tcpReady = (port) => new Promise((r) => {
  const c = net.connect(port, '127.0.0.1', () => { c.destroy(); r(true); });
  c.on('error', () => r(false));
});

// Run a command to completion: {code, stdout, stderr}. `pin` as above.
export function sh(cmd, args, { pin = null } = {}) {
  const [c, a] = pinned(cmd, args, pin);
  return new Promise((resolve) => execFile(c, a, { maxBuffer: 64 << 20 }, (err, stdout, stderr) =>
    resolve({ code: err ? (err.code ?? 1) : 0, stdout, stderr })));
}

export function requireTools(tools, hint) {
  for (const tool of tools)
    if (!process.env.PATH.split(':').some((d) => existsSync(join(d, tool)))) fail(`${tool} not found (${hint}, or bash .ci/install)`);
}
export function requireBinaries() {
  for (const [name, p] of [['obleth', OBLETH], ['obleth-sim', OBLETH_SIM]])
    if (!existsSync(p)) fail(`${name} not found at ${p} (ninja -C build, or set $OBLETH / $OBLETH_SIM)`);
}

// obleth-sim on an ephemeral port, logging to dir/<name>.log: {proc, port, url}.
export async function startSim(dir, args = [], { pin = null, name = 'sim' } = {}) {
  const log = `${name}.log`;
  const proc = spawnLogged(dir, OBLETH_SIM, ['--listen', '127.0.0.1:0', ...args], log, { pin });
  const m = await waitFor(name, () => {
    if (proc.exitInfo) fail(`${name} exited:\n${logOf(dir, log)}`);
    return logOf(dir, log).match(/listening on \S+:(\d+)/);
  });
  const port = Number(m[1]);
  return { proc, port, url: `http://127.0.0.1:${port}` };
}

// obleth with `cfg` written to dir/<name>.json, logging to dir/<name>.log.
// The config's first listener gets a free port picked here (with
// log_level warn there is no "listening on" line to read it from).
// `wrap` is a command prefix such as ['prlimit', '--nofile=65536'] or a
// valgrind command line: {proc, port, url, cfgPath, log}.
export async function startObleth(dir, cfg, { pin = null, name = 'obleth', wrap = [], ms = 10000 } = {}) {
  const port = await freePort();
  cfg = { ...cfg, listeners: [{ ...(cfg.listeners?.[0] ?? {}), address: `127.0.0.1:${port}` }, ...(cfg.listeners ?? []).slice(1)] };
  const cfgPath = join(dir, `${name}.json`);
  writeFileSync(cfgPath, JSON.stringify(cfg, null, 2));
  const log = `${name}.log`;
  const argv = [...wrap, OBLETH, '--config', cfgPath];
  const proc = spawnLogged(dir, argv[0], argv.slice(1), log, { pin });
  await waitFor(name, async () => {
    if (proc.exitInfo) fail(`${name} exited:\n${logOf(dir, log)}`);
    return tcpReady(port);
  }, ms);
  return { proc, port, url: `http://127.0.0.1:${port}`, cfgPath, log };
}

// The obleth configuration of the proxy-path benchmarks: one inference
// route to the simulator at simUrl (`protocol` http1 or h2c), one tenant with `key`,
// admission on but never saturated (max_inflight 100000 upstream and
// overall). Callers spread their own keys over it.
export const proxyConfig = (simUrl, key, protocol = 'http1') => ({
  upstreams: [{ name: 'sim', endpoints: [simUrl], max_inflight: 100000, protocol }],
  routes: [{ prefix: '/v1/', class: 'inference', upstream: 'sim' }],
  tenants: [{ name: 'bench', keys: [{ id: 'bench-1', secret: key }] }],
  admission: { max_inflight: 100000, max_queue: 100000 },
});

// `wrap` (a command prefix: prlimit, valgrind) + cmd + args, logged.
const spawnWrapped = (dir, wrap, cmd, args, log, pin) =>
  (wrap.length ? spawnLogged(dir, wrap[0], [...wrap.slice(1), cmd, ...args], log, { pin }) : spawnLogged(dir, cmd, args, log, { pin }));

async function ready(dir, name, proc, ports, ms) {
  await waitFor(name, async () => {
    if (proc.exitInfo) fail(`${name} exited:\n${logOf(dir, `${name}.log`)}`);
    for (const p of ports) if (!(await tcpReady(p))) return false;
    return true;
  }, ms);
}

// nghttpx as a plain proxy in front of 127.0.0.1:backendPort (HTTP/1.1, or
// h2c with `h2c`):
// one worker (-n1), no configuration file, its defaults otherwise (no
// access log). One cleartext port takes h2c and HTTP/1.1: {proc, h2, h1}.
// The worker is a child process of proc (processTree).
export async function startNghttpx(dir, backendPort, { pin = null, wrap = [], ms = 10000, h2c = false } = {}) {
  const port = await freePort();
  const proc = spawnWrapped(dir, wrap, 'nghttpx', ['--conf=/dev/null', `--frontend=127.0.0.1,${port};no-tls`,
    `--backend=127.0.0.1,${backendPort}${h2c ? ';;proto=h2' : ''}`, '-n1', '--no-ocsp'], 'nghttpx.log', pin);
  await ready(dir, 'nghttpx', proc, [port], ms);
  return { proc, h2: `http://127.0.0.1:${port}`, h1: `http://127.0.0.1:${port}` };
}

// HAProxy as a plain proxy in front of 127.0.0.1:backendPort (HTTP/1.1, or
// h2c with `h2c`):
// nbthread 1, mode http, one frontend `proto h2` and one HTTP/1.1
// frontend, no logging, defaults otherwise (http-reuse safe). HAProxy
// wants 2 x maxconn + a few descriptors and refuses to start without
// them: give `maxconn` to fit the open-files limit. {proc, h2, h1}.
export async function startHaproxy(dir, backendPort, { pin = null, wrap = [], maxconn = 4000, ms = 10000, h2c = false } = {}) {
  const p2 = await freePort(), p1 = await freePort();
  const cfg = join(dir, 'haproxy.cfg');
  writeFileSync(cfg, [
    'global', '  nbthread 1', `  maxconn ${maxconn}`,
    'defaults', '  mode http', '  timeout connect 5s', '  timeout client 60s', '  timeout server 60s',
    'frontend fe_h2', `  bind 127.0.0.1:${p2} proto h2`, '  default_backend sim',
    'frontend fe_h1', `  bind 127.0.0.1:${p1}`, '  default_backend sim',
    'backend sim', `  server sim1 127.0.0.1:${backendPort}${h2c ? ' proto h2' : ''}`, ''].join('\n'));
  const proc = spawnWrapped(dir, wrap, 'haproxy', ['-db', '-f', cfg], 'haproxy.log', pin);
  await ready(dir, 'haproxy', proc, [p2, p1], ms);
  return { proc, h2: `http://127.0.0.1:${p2}`, h1: `http://127.0.0.1:${p1}` };
}

// nghttpd (no TLS, one thread) serving `body` as the static file at `path`
// (the physical limit a cache hit is compared with); ready once it answers
// `probe` (a request: {body, headers}) with those bytes: {proc, url}.
export async function startNghttpd(dir, path, body, probe, { pin = null, wrap = [], ms = 10000 } = {}) {
  const www = join(dir, 'www');
  mkdirSync(join(www, dirname(path)), { recursive: true });
  writeFileSync(join(www, path), body);
  const port = await freePort();
  const proc = spawnWrapped(dir, wrap, 'nghttpd', ['--no-tls', '-a', '127.0.0.1', '-n', '1', '-d', www, String(port)], 'nghttpd.log', pin);
  const url = `http://127.0.0.1:${port}`;
  const got = await waitFor('nghttpd', async () => {
    try { return await h2request(url, path, probe.body, probe.headers); } catch { return null; }
  }, ms);
  if (got.status !== 200 || !got.body.equals(Buffer.from(body))) fail('nghttpd does not serve the same bytes');
  return { proc, url };
}

// ---- /proc readings ----

// CPU seconds a process has used so far, in user space and in the kernel
// (utime, stime: clock ticks of USER_HZ 100).
export function cpuSplit(pid) {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return { user: Number(fields[11]) / 100, sys: Number(fields[12]) / 100 };
}

// The pid and all its descendants (nghttpx and HAProxy may fork workers).
export function processTree(pid) {
  const out = [pid];
  for (let i = 0; i < out.length; i++) {
    try {
      for (const t of readdirSync(`/proc/${out[i]}/task`))
        for (const c of readFileSync(`/proc/${out[i]}/task/${t}/children`, 'utf8').trim().split(/\s+/))
          if (c) out.push(Number(c));
    } catch {}
  }
  return out;
}
// The same summed over the process tree: { user, sys } seconds.
export const treeCpuSplit = (pid) => processTree(pid).reduce((s, p) => {
  try { const c = cpuSplit(p); return { user: s.user + c.user, sys: s.sys + c.sys }; } catch { return s; }
}, { user: 0, sys: 0 });
export const treeCpuSeconds = (pid) => { const c = treeCpuSplit(pid); return c.user + c.sys; };

// Per-CPU busy and total jiffies from /proc/stat: [{busy, total}] by CPU
// number. Utilisation over a window: busy delta / total delta.
export function cpuTimes() {
  const out = [];
  for (const l of readFileSync('/proc/stat', 'utf8').split('\n')) {
    const m = l.match(/^cpu(\d+) (.*)/);
    if (!m) continue;
    const v = m[2].trim().split(/\s+/).map(Number); // user nice system idle iowait irq softirq steal
    const idle = v[3] + v[4];
    const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
    out[Number(m[1])] = { busy: total - idle, total };
  }
  return out;
}
export const cpuUtil = (a, b) => b.map((x, i) => (x.total - a[i].total > 0 ? (x.busy - a[i].busy) / (x.total - a[i].total) : NaN));

// A field of /proc/PID/status in KiB (VmRSS, VmHWM, RssAnon, ...).
export function statusKiB(pid, field = 'VmRSS') {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm'));
  return m ? Number(m[1]) : NaN;
}

// The open-files limits of this process: {soft, hard} (Infinity for unlimited).
export function nofileLimits() {
  const m = readFileSync('/proc/self/limits', 'utf8').match(/^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m);
  const n = (v) => (v === 'unlimited' ? Infinity : Number(v));
  return m ? { soft: n(m[1]), hard: n(m[2]) } : { soft: NaN, hard: NaN };
}

// A command prefix that runs a child with its open-files soft limit raised
// to the hard limit (raising the hard limit itself may not be allowed), or
// [] when it is there already.
export function nofileWrap() {
  const { soft, hard } = nofileLimits();
  if (!(hard > soft)) return [];
  const v = hard === Infinity ? 1048576 : hard;
  return ['prlimit', `--nofile=${v}:${v}`, '--'];
}

export function machine() {
  let model = cpus()[0]?.model ?? '?';
  try { model = readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*:\s*(.*)/)?.[1] ?? model; } catch {}
  let os = '';
  try { os = readFileSync('/etc/os-release', 'utf8').match(/^PRETTY_NAME="?([^"\n]*)/m)?.[1] ?? ''; } catch {}
  return `${availableParallelism()} CPUs (${model}), ${(totalmem() / 2 ** 30).toFixed(1)} GiB, ${os}, node ${process.version}`;
}

// ---- HTTP ----

// One h2 request on a fresh connection: {status, headers, body}.
export function h2request(url, path, body, headers, method = 'POST') {
  return new Promise((resolve, reject) => {
    const s = http2.connect(url);
    s.on('error', reject);
    const r = s.request({ ':method': method, ':path': path, ...headers });
    const chunks = [];
    let head;
    r.on('response', (h) => { head = h; });
    r.on('data', (c) => chunks.push(c));
    r.on('end', () => { s.close(); resolve({ status: head[':status'], headers: head, body: Buffer.concat(chunks) }); });
    r.on('error', reject);
    r.end(body);
  });
}

// Prometheus text: the sum of a metric's samples whose labels include all
// of `want` ({label: value}).
export const metric = (text, name, want = {}) => text.split('\n').filter((l) => l.startsWith(name + '{') || l.startsWith(name + ' '))
  .filter((l) => Object.entries(want).every(([k, v]) => l.includes(`${k}="${v}"`)))
  .reduce((a, l) => a + Number(l.split(' ').pop()), 0);

// ---- h2load ----

export function parseH2load(out) {
  const num = (re) => { const m = out.match(re); return m ? Number(m[1]) : NaN; };
  return {
    rps: num(/finished in [\d.]+m?s, ([\d.]+) req\/s/),
    done: num(/requests: \d+ total, \d+ started, (\d+) done/),
    succeeded: num(/(\d+) succeeded/),
    failed: num(/(\d+) failed/),
    errored: num(/(\d+) errored/),
    s2xx: num(/status codes: (\d+) 2xx/),
    non2xx: (() => { const m = out.match(/status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/); return m ? Number(m[1]) + Number(m[2]) + Number(m[3]) : NaN; })(),
    mean_ms: (() => { const m = out.match(/time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)/); return m ? Number(m[1]) * { us: 1e-3, ms: 1, s: 1e3 }[m[2]] : NaN; })(),
  };
}

// h2load counts a status only when the head arrives inside the measured
// window and a request only when it closes inside it: streams in flight
// at either edge (a head in the warm-up, a body cut at the end) make the
// 2xx count differ from the requests done by at most c x m (the requests
// that can be in flight at once). Anything else than clean 2xx counts
// against the run.
export const clean = (p, inflight) => p.failed === 0 && p.errored === 0 && p.succeeded === p.done && p.non2xx === 0 &&
  Math.abs(p.s2xx - p.done) <= inflight;

// The three h2load summary lines worth showing when a run is not clean.
export const h2loadSummary = (out) => out.split('\n').filter((l) => /^(requests|status codes|finished)/.test(l)).join('\n');

// h2load's --log-file: one row per request, tab-separated start time (µs
// since the epoch), status (-1 for a failed stream) and duration (µs).
// Returns {durations (µs, sorted), statuses: {status: count}, first, last}.
export function readH2loadLog(path) {
  const durations = [], statuses = {};
  let first = Infinity, last = -Infinity;
  for (const l of readFileSync(path, 'latin1').split('\n')) {
    if (!l) continue;
    const [start, status, dur] = l.split('\t');
    statuses[status] = (statuses[status] ?? 0) + 1;
    durations.push(Number(dur));
    first = Math.min(first, Number(start));
    last = Math.max(last, Number(start));
  }
  durations.sort((a, b) => a - b);
  return { durations, statuses, first, last };
}

// ---- statistics ----

// Nearest-rank percentile of a sorted array (p in 0..1).
export function pct(sorted, p) {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))];
}
export const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
export const median = (xs) => pct([...xs].sort((a, b) => a - b), 0.5);

// A markdown table from a header row and rows (arrays of cells).
export function mdTable(head, rows) {
  const line = (cells) => `| ${cells.join(' | ')} |`;
  return [line(head), line(head.map(() => '---')), ...rows.map(line)].join('\n');
}
