// Helpers shared by the benchmarks in this folder (Node 20, no npm
// packages): a scratch folder and child processes that are cleaned up at
// exit, readiness polling, h2load runs and their output, one-off HTTP/2
// requests, CPU and memory readings from /proc, percentiles, the machine
// line printed at the top of every report, and the fair-share load and its
// per-window scoring (fairness.mjs, cluster.mjs).
//
// Every process started here is recorded and killed (by its pid) when the
// benchmark exits, however it exits; the scratch folders are removed.
import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync, openSync, closeSync, rmSync, existsSync, readdirSync } from 'node:fs';
import { tmpdir, cpus, totalmem, availableParallelism } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import net from 'node:net';
import http from 'node:http';
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

// ---- fair-share load and its scoring (fairness.mjs, cluster.mjs) ----
//
// Closed-loop streaming chat tenants against one or more gateways, the
// simulator sampled every 100 ms, and the service each tenant got scored
// per window against its weighted max-min fair share. bench/README.md,
// "Fairness benchmark", describes the method.

export const now = () => performance.now();

// The fairness set-up: obleth-sim with `slots` slots, ttftMs to the first
// token and itlMs per further token (a 64-token request holds its slot
// 680 ms); lengths fixed at maxTokens or drawn from varTokens (mean 64); the
// light tenant's think time; the sampling period; how long streams may
// finish after a run; stream starts spread over one service time; and the
// targets of issue 16 / the fairness benchmark.
export const FAIR = {
  slots: 8, ttftMs: 50, itlMs: 10, maxTokens: 64, varTokens: [32, 96], lightThinkMs: [100, 300],
  sampleMs: 100, drainMs: 15000, staggerMs: 50 + 63 * 10,
  targets: { shareErrPp: 3, jain: 0.99, util: 0.97, lightP99Ratio: 2 },
};
export const simArgs = () => ['--slots', String(FAIR.slots), '--ttft-ms', String(FAIR.ttftMs), '--itl-ms', String(FAIR.itlMs),
  '--max-tokens', String(FAIR.maxTokens)];

// The gateway of the fairness set-up: one upstream (the simulator at
// simUrl, max_inflight = its slots unless told), hierarchical mode with
// every tenant alone in group g-<name> whose weight is the tenant's (so the
// group-level scheduler is what is measured), key sk-bench-<name>, cost in
// tokens, and a queue timeout nothing reaches (FIFO waits are seconds long).
export const fairConfig = ({ tenants, simUrl, mode = 'hierarchical', maxInflight = FAIR.slots }) => ({
  listeners: [{ address: '127.0.0.1:0' }],
  upstreams: [{ name: 'sim', endpoints: [simUrl], max_inflight: maxInflight }],
  routes: [{ prefix: '/v1/', class: 'inference', upstream: 'sim' }],
  groups: tenants.map((t) => ({ name: `g-${t.name}`, weight: t.weight })),
  tenants: tenants.map((t) => ({
    name: t.name, group: `g-${t.name}`, weight: 1,
    keys: [{ id: `${t.name}-key`, secret: `sk-bench-${t.name}` }],
  })),
  admission: { mode, cost: 'tokens', default_max_tokens: FAIR.maxTokens, queue_timeout_ms: 120000 },
});

// Weighted max-min fair allocation of `capacity` (water-filling): items
// {weight, demand}; a demand below the current level is met in full and the
// rest is shared again among the others in proportion to weight.
export function waterfill(capacity, items) {
  const alloc = items.map(() => 0);
  let active = items.map((_, i) => i).filter((i) => items[i].demand > 0 && items[i].weight > 0);
  let remaining = capacity;
  while (active.length && remaining > 1e-9) {
    const W = active.reduce((s, i) => s + items[i].weight, 0);
    const level = remaining / W;
    const sat = active.filter((i) => items[i].demand <= items[i].weight * level);
    if (!sat.length) {
      for (const i of active) alloc[i] = items[i].weight * level;
      break;
    }
    for (const i of sat) { alloc[i] = items[i].demand; remaining -= items[i].demand; }
    active = active.filter((i) => !sat.includes(i));
  }
  return alloc;
}

// Hierarchical water-filling: across groups by group weight (a group's demand
// is the sum of its tenants'), then inside each group by tenant weight. The
// benchmarks use one tenant per group, so this equals the flat version; it is
// written out so that multi-tenant groups can be added to their scenarios.
export function fairAlloc(capacity, tenants /* {group, gweight, weight, demand} */) {
  const groups = [...new Set(tenants.map((t) => t.group))];
  const gItems = groups.map((g) => {
    const ts = tenants.filter((t) => t.group === g);
    return { weight: ts[0].gweight, demand: ts.reduce((s, t) => s + t.demand, 0) };
  });
  const gAlloc = waterfill(capacity, gItems);
  const out = tenants.map(() => 0);
  groups.forEach((g, gi) => {
    const idx = tenants.map((t, i) => (t.group === g ? i : -1)).filter((i) => i >= 0);
    const a = waterfill(gAlloc[gi], idx.map((i) => ({ weight: tenants[i].weight, demand: tenants[i].demand })));
    idx.forEach((i, k) => { out[i] = a[k]; });
  });
  return out;
}

// Jain's index (Σx)² / (n Σx²).
export function jain(xs) {
  const n = xs.length;
  if (!n) return NaN;
  const s = xs.reduce((a, b) => a + b, 0);
  const s2 = xs.reduce((a, b) => a + b * b, 0);
  return s2 > 0 ? (s * s) / (n * s2) : NaN;
}

// The request body: same prompt for every tenant (so prompt tokens are equal
// and the scheduler's cost estimate, prompt + max_tokens, is the same).
// `content` is the user message (obleth-sim counts ~4 characters a token).
export function streamBody(maxTokens, content = 'Write a short paragraph about fair queueing.') {
  const b = Buffer.from(JSON.stringify({
    model: 'sim-model',
    messages: [{ role: 'user', content }],
    max_tokens: maxTokens,
    stream: true,
    stream_options: { include_usage: true },
  }));
  b.maxTokens = maxTokens;
  return b;
}

// Parse the usage chunk from the last bytes of an SSE body.
export function usageFrom(tail) {
  const s = Buffer.concat(tail).toString('utf8');
  const i = s.lastIndexOf('"usage"');
  if (i < 0) return null;
  const start = s.lastIndexOf('data: ', i);
  const end = s.indexOf('\n', i);
  try {
    const u = JSON.parse(s.slice(start + 6, end < 0 ? undefined : end)).usage;
    return u && typeof u.completion_tokens === 'number' ? u : null;
  } catch { return null; }
}

// One tenant's closed-loop load: spec {name, streams, think: [min, max] ms
// or null}; its key is `sk-bench-<name>`. Stream i sends to gateway port
// ports[i % ports.length] (several ports: replicas of one gateway). run:
// {stopping, tokens: [min, max] max_tokens drawn uniformly per request,
// staggerMs: stream starts are spread over this long, and optionally
// body(): the next request's body (a streamBody), which then replaces the
// uniform draw, so a run can change its workload as it goes}.
export class TenantLoad {
  constructor(spec, ports, run) {
    this.spec = spec;
    this.ports = ports;
    this.run = run;
    this.agent = new http.Agent({ keepAlive: true, maxSockets: spec.streams, maxFreeSockets: spec.streams });
    // one prepared body per possible max_tokens: no JSON work per request
    this.bodies = [];
    for (let n = run.tokens[0]; n <= run.tokens[1]; n++) this.bodies.push(streamBody(n));
    this.auth = `Bearer sk-bench-${spec.name}`;
    this.live = new Set();     // requests in progress
    this.waiting = 0;          // sent, response head not yet received (queued in the gateway)
    this.done = [];            // finished request records
    this.errors = new Map();   // status or error text -> count
    this.sent = [];            // [send time, max_tokens] of every request: the offered load
    this.dead = new Set();     // ports of replicas killed on purpose (drop)
    this.lost = 0;             // requests that failed because their replica was killed
    this.cancelled = 0;        // requests cancelled on purpose while queued (cancelQueued)
  }

  error(what) { this.errors.set(what, (this.errors.get(what) || 0) + 1); }

  one(port) {
    return new Promise((resolveP) => {
      const body = this.run.body ? this.run.body() : this.bodies[Math.floor(Math.random() * this.bodies.length)];
      const rec = { port, tSent: now(), tHead: 0, tFirst: 0, tEnd: 0, status: 0, admission: null, queueMs: NaN, usage: null, tail: [], tailLen: 0,
        cancelled: false };
      this.sent.push([rec.tSent, body.maxTokens]);
      this.waiting++;
      let headSeen = false;
      let settled = false;
      const finish = (ok) => {
        if (settled) return;
        settled = true;
        if (!headSeen) this.waiting--;
        this.live.delete(rec);
        rec.tail = null;
        if (ok) this.done.push(rec);
        resolveP(rec);
      };
      // a transport failure: expected after stop (cancelled) or on a killed replica
      const broken = (what) => {
        if (rec.cancelled) this.cancelled++;
        else if (this.dead.has(port)) this.lost++;
        else if (!this.run.stopping) this.error(what);
        finish(false);
      };
      const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/v1/chat/completions',
        agent: this.agent, headers: { 'content-type': 'application/json', 'content-length': String(body.length), authorization: this.auth } });
      rec.req = req;
      this.live.add(rec);
      req.on('response', (res) => {
        headSeen = true;
        this.waiting--;
        rec.tHead = now();
        rec.status = res.statusCode;
        rec.admission = res.headers['x-obleth-admission'] || null;
        rec.queueMs = Number(res.headers['x-obleth-queue-ms']);
        res.on('data', (chunk) => {
          if (!rec.tFirst) rec.tFirst = now();
          // keep only the last few KB: the usage chunk is at the very end
          rec.tail.push(chunk);
          rec.tailLen += chunk.length;
          while (rec.tail.length > 1 && rec.tailLen - rec.tail[0].length >= 4096) rec.tailLen -= rec.tail.shift().length;
        });
        res.on('end', () => {
          rec.tEnd = now();
          if (rec.status !== 200) {
            this.error(`HTTP ${rec.status}`);
            finish(false);
            return;
          }
          rec.usage = usageFrom(rec.tail);
          if (!rec.usage) { if (this.dead.has(port)) { this.lost++; finish(false); return; } this.error('no usage chunk'); finish(false); return; }
          finish(true);
        });
        res.on('error', () => broken('response error'));
        res.on('aborted', () => broken('response aborted'));
      });
      req.on('error', (e) => broken(e.code || e.message));
      req.end(body);
    });
  }

  async worker(startDelay, port) {
    await sleep(startDelay);
    while (!this.run.stopping && !this.dead.has(port)) {
      await this.one(port);
      if (this.run.stopping) break;
      if (this.spec.think) {
        const [lo, hi] = this.spec.think;
        await sleep(lo + Math.random() * (hi - lo));
      }
    }
  }

  start() {
    this.workers = [];
    for (let i = 0; i < this.spec.streams; i++) {
      // spread the starts over one service time so the streams do not complete in lockstep
      this.workers.push(this.worker(this.spec.streams > 1 ? Math.random() * this.run.staggerMs : 0, this.ports[i % this.ports.length]));
    }
  }

  // The replica on `port` is about to be killed: its streams stop, and
  // their requests that fail count as lost, not as errors.
  drop(port) { this.dead.add(port); }

  // At the end of the run: requests that have produced no token yet are
  // cancelled (they cannot add service inside the measured windows); the
  // ones that are streaming finish, so their tokens before the end count.
  cancelUnstarted() {
    for (const rec of this.live) if (!rec.tFirst) rec.req.destroy();
  }

  cancelAll() {
    for (const rec of this.live) rec.req.destroy();
  }

  // Cancel the requests still queued in the gateway (no response head yet),
  // counted in `cancelled`, not as errors; their streams send the next
  // request at once. The workload changes without waiting for a queue of
  // the old requests to drain.
  cancelQueued() {
    for (const rec of this.live) if (!rec.tHead) { rec.cancelled = true; rec.req.destroy(); }
  }
}

// GET a JSON document over `agent` (2 s timeout).
export async function getJson(agent, port, path) {
  return new Promise((resolveP, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent }, (res) => {
      const parts = [];
      res.on('data', (c) => parts.push(c));
      res.on('end', () => { try { resolveP(JSON.parse(Buffer.concat(parts).toString())); } catch (e) { reject(e); } });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(2000, () => req.destroy(new Error('timeout')));
  });
}

// Run `loads` (TenantLoads sharing `run`) for nWin windows of W ms: sample
// the simulator's /sim/stats every sampleMs into per-window utilisation
// (in_flight / slots), its queued maximum and mean, and each tenant's
// "something queued in the gateway" flag; print a dot a second to stderr;
// then stop: requests without a token yet are cancelled, streaming ones may
// finish (at most drainMs). Optional hooks: afterWarmup() runs when window
// 0 ends, beforeStop() when the last one does (before anything is
// cancelled); events [{at: ms after the start, fn}] run at their times;
// onSample(stats, t) gets every /sim/stats sample (awaited, in order).
// Returns {t0, tStop, win, statErrors}.
export async function driveLoad({ loads, run, simPort, slots, W, nWin, statsAgent, sampleMs = 100, drainMs = 15000,
  afterWarmup = null, beforeStop = null, events = [], onSample = null }) {
  const win = Array.from({ length: nWin }, () => ({ utilSum: 0, utilN: 0, simQueuedMax: 0, simQueuedSum: 0, backlog: loads.map(() => 0), samples: 0 }));
  const statErrors = [];
  const t0 = now();
  const widx = (t) => Math.floor((t - t0) / W);
  for (const l of loads) l.start();
  const warm = afterWarmup ? sleep(W).then(afterWarmup) : null;
  const timed = Promise.all(events.map((e) => sleep(e.at).then(e.fn)));
  let sampling = true;
  const sampler = (async () => {
    let next = t0 + sampleMs / 2;
    while (sampling) {
      await sleep(Math.max(0, next - now()));
      next += sampleMs;
      const w = widx(now());
      if (w >= nWin) break;
      const backlogged = loads.map((l) => l.waiting > 0);
      try {
        const t = now();
        const st = await getJson(statsAgent, simPort, '/sim/stats');
        if (onSample) await onSample(st, t);
        const wi = win[w];
        wi.utilSum += st.in_flight / slots;
        wi.utilN++;
        wi.simQueuedMax = Math.max(wi.simQueuedMax, st.queued);
        wi.simQueuedSum += st.queued;
        wi.samples++;
        backlogged.forEach((b, i) => { if (b) wi.backlog[i]++; });
      } catch (e) { statErrors.push(e.message); }
    }
  })();
  const durationMs = nWin * W;
  while (now() - t0 < durationMs) {
    await sleep(Math.min(1000, durationMs - (now() - t0)));
    process.stderr.write('.');
  }
  process.stderr.write('\n');
  const tStop = now();
  await warm;
  await timed;
  if (beforeStop) await beforeStop();
  run.stopping = true;
  sampling = false;
  await sampler;
  for (const l of loads) l.cancelUnstarted();
  const drain = Promise.all(loads.flatMap((l) => l.workers));
  const drained = await Promise.race([drain.then(() => true), sleep(drainMs).then(() => false)]);
  if (!drained) for (const l of loads) l.cancelAll();
  await drain;
  return { t0, tStop, win, statErrors };
}

// Score a driveLoad run per window. tenants: {name, weight (its group's),
// streams, think, backlogged}, in the order of `loads`; each is alone in
// group g-<name>. Service is output tokens, each credited to the window it
// was produced in; the fair share is water-filled over the demands (inf
// for a backlogged tenant, else what it asked for, placed where it would
// have been produced without waiting: token k of a request sent at s at
// s + ttftMs + (k-1) * itlMs). tokens: the run's [min, max] max_tokens.
// unit 'total' counts service as prompt + completion tokens (what cost
// "tokens" charges), a response's prompt spread over its output tokens;
// only for backlogged tenants (a light tenant's demand is in output tokens).
// Returns {windows, overall}; window 0 is the warm-up.
export function scoreRun({ tenants, loads, t0, tStop, W, nWin, win, ttftMs, itlMs, tokens: range, unit = 'output' }) {
  if (unit === 'total' && tenants.some((t) => !t.backlogged)) throw new Error("scoreRun: unit 'total' needs backlogged tenants");
  const widx = (t) => Math.floor((t - t0) / W);
  const T = tenants.length;
  const tokens = Array.from({ length: nWin }, () => new Array(T).fill(0));
  const waits = Array.from({ length: nWin }, () => Array.from({ length: T }, () => []));
  const heads = Array.from({ length: nWin }, () => Array.from({ length: T }, () => []));
  const firsts = Array.from({ length: nWin }, () => Array.from({ length: T }, () => []));
  const fast = Array.from({ length: nWin }, () => new Array(T).fill(0));
  const count = Array.from({ length: nWin }, () => new Array(T).fill(0));
  const headerIssues = [];
  loads.forEach((l, ti) => {
    for (const r of l.done) {
      const n = r.usage.completion_tokens;
      // token k (1..n) is credited at tFirst + (k-1)/(n-1) * (tEnd - tFirst):
      // the simulator emits one token per ITL between the first data chunk and the usage chunk.
      const span = n > 1 ? (r.tEnd - r.tFirst) / (n - 1) : 0;
      const each = unit === 'total' && n > 0 ? (n + (r.usage.prompt_tokens || 0)) / n : 1;
      for (let k = 0; k < n; k++) {
        const w = widx(r.tFirst + k * span);
        if (w >= 0 && w < nWin && r.tFirst + k * span < tStop) tokens[w][ti] += each;
      }
      if (!Number.isFinite(r.queueMs) || !r.admission) {
        if (headerIssues.length < 5) headerIssues.push(`${tenants[ti].name}: admission=${r.admission} queue-ms=${r.queueMs}`);
        continue;
      }
      // queue wait is attributed to the window of the grant (sent + wait)
      const w = widx(r.tSent + r.queueMs);
      if (w >= 0 && w < nWin) {
        waits[w][ti].push(r.queueMs);
        heads[w][ti].push(r.tHead - r.tSent);
        firsts[w][ti].push(r.tFirst - r.tSent);
        count[w][ti]++;
        if (r.admission === 'fast') fast[w][ti]++;
      }
    }
  });

  // Demand. A backlogged tenant: infinite. A tenant that is not: the tokens it
  // asked for, placed where they would have been produced had every request
  // been granted on arrival. Its service can only fall short of that by what
  // is still queued, so a scheduler that serves it promptly scores ~0 error.
  const demand = Array.from({ length: nWin }, () => tenants.map((t) => (t.backlogged ? Infinity : 0)));
  loads.forEach((l, ti) => {
    if (tenants[ti].backlogged) return;
    for (const [s, n] of l.sent) for (let k = 0; k < n; k++) {
      const t = s + ttftMs + k * itlMs;
      const w = widx(t);
      if (w >= 0 && w < nWin && t < tStop) demand[w][ti]++;
    }
  });
  // what a light tenant would get per window if it never waited: max_tokens
  // per (service time + mean think time); to report its throughput loss
  const meanTok = (range[0] + range[1]) / 2;
  const serviceMs = ttftMs + (meanTok - 1) * itlMs;
  const nominal = tenants.map((t) => (t.backlogged ? Infinity
    : (meanTok * t.streams * W) / (serviceMs + (t.think[0] + t.think[1]) / 2)));

  const windows = [];
  for (let w = 0; w < nWin; w++) {
    const total = tokens[w].reduce((a, b) => a + b, 0);
    const alloc = fairAlloc(total, tenants.map((t, i) => ({ group: `g-${t.name}`, gweight: t.weight, weight: 1, demand: demand[w][i] })));
    const rows = tenants.map((t, i) => {
      const share = total ? tokens[w][i] / total : NaN;
      const fair = total ? alloc[i] / total : NaN;
      const ws = waits[w][i].slice().sort((a, b) => a - b);
      const hs = heads[w][i].slice().sort((a, b) => a - b);
      return {
        tenant: t.name, weight: t.weight, demand: demand[w][i], nominal: nominal[i], tokens: tokens[w][i], share, fair,
        errPp: Math.abs(share - fair) * 100,
        relErr: fair > 0 ? Math.abs(share - fair) / fair : NaN,
        n: count[w][i], fast: fast[w][i],
        qP50: pct(ws, 0.5), qP99: pct(ws, 0.99), headP50: pct(hs, 0.5), headP99: pct(hs, 0.99),
        backlog: win[w].samples ? win[w].backlog[i] / win[w].samples : NaN,
      };
    });
    const xs = rows.filter((r) => r.fair > 0).map((r) => r.share / r.fair);
    windows.push({
      index: w, warmup: w === 0, total, rows, jain: jain(xs),
      util: win[w].utilN ? win[w].utilSum / win[w].utilN : NaN, simQueuedMax: win[w].simQueuedMax,
      simQueuedMean: win[w].samples ? win[w].simQueuedSum / win[w].samples : NaN, samples: win[w].samples,
    });
  }

  // per tenant over all measured windows (warm-up excluded)
  const overall = tenants.map((t, i) => {
    const ws = [], hs = [], fs = [];
    let n = 0, f = 0;
    for (let w = 1; w < nWin; w++) { ws.push(...waits[w][i]); hs.push(...heads[w][i]); fs.push(...firsts[w][i]); n += count[w][i]; f += fast[w][i]; }
    ws.sort((a, b) => a - b);
    hs.sort((a, b) => a - b);
    fs.sort((a, b) => a - b);
    return {
      tenant: t.name, n, fast: f, qP50: pct(ws, 0.5), qP99: pct(ws, 0.99), qMax: ws.length ? ws[ws.length - 1] : NaN,
      headP50: pct(hs, 0.5), headP99: pct(hs, 0.99), firstP50: pct(fs, 0.5), firstP99: pct(fs, 0.99),
      errors: Object.fromEntries(loads[i].errors), lost: loads[i].lost,
    };
  });
  return { windows, overall, headerIssues };
}

// Number formats of the reports ('-' for NaN): one decimal, four, whole ms.
export const f1 = (x) => (Number.isFinite(x) ? x.toFixed(1) : '-');
export const f4 = (x) => (Number.isFinite(x) ? x.toFixed(4) : '-');
export const fmtMs = (x) => (Number.isFinite(x) ? String(Math.round(x)) : '-');
const padl = (s, n) => String(s).padStart(n);
const padr = (s, n) => String(s).padEnd(n);

// Print a scored run (scoreRun's windows and overall): one row per tenant
// and window, a line per window, then per tenant over the scored windows.
export function printWindows(r, windowS) {
  console.log(`   ${padl('win', 3)} ${padr('tenant', 6)} ${padl('w', 2)} ${padl('demand', 7)} ${padl('tokens', 6)} ${padl('share%', 6)} ${padl('fair%', 6)} ${padl('err pp', 6)} ` +
    `${padl('reqs', 4)} ${padl('fast', 4)} ${padl('q p50', 6)} ${padl('q p99', 6)} ${padl('backlog', 7)}`);
  for (const w of r.windows) {
    const label = `${w.index * windowS}-${(w.index + 1) * windowS}s`;
    w.rows.forEach((t, i) => {
      console.log(`   ${padl(i === 0 ? w.index : '', 3)} ${padr(t.tenant, 6)} ${padl(t.weight, 2)} ${padl(Number.isFinite(t.demand) ? Math.round(t.demand) : 'inf', 7)} ` +
        `${padl(t.tokens, 6)} ${padl(f1(t.share * 100), 6)} ${padl(f1(t.fair * 100), 6)} ${padl(f1(t.errPp), 6)} ` +
        `${padl(t.n, 4)} ${padl(t.fast, 4)} ${padl(fmtMs(t.qP50), 6)} ${padl(fmtMs(t.qP99), 6)} ${padl(f1(t.backlog * 100) + '%', 7)}`);
    });
    console.log(`   ${padl('', 3)} ${label}${w.warmup ? ' (warm-up, not scored)' : ''}: ${w.total} tokens, Jain ${f4(w.jain)}, ` +
      `utilisation ${f1(w.util * 100)}% (${w.samples} samples), sim queued max ${w.simQueuedMax}`);
  }
  console.log('   whole run (windows 1..): tenant  reqs  fast  queue-ms p50/p99/max  client head-latency p50/p99  errors');
  for (const o of r.overall) {
    const errs = Object.entries(o.errors).map(([k, v]) => `${k} x${v}`).join(', ') || '-';
    console.log(`   ${padl('', 24)} ${padr(o.tenant, 6)} ${padl(o.n, 5)} ${padl(o.fast, 5)}  ${padl(`${fmtMs(o.qP50)}/${fmtMs(o.qP99)}/${fmtMs(o.qMax)}`, 20)}  ` +
      `${padl(`${fmtMs(o.headP50)}/${fmtMs(o.headP99)}`, 26)}  ${errs}`);
  }
}
