// Proxy-path benchmark: what obleth costs as a proxy, against the same
// obleth-sim reached directly, through nghttpx and through HAProxy, in one
// run. One command, Node 20, no npm packages:
//
//   node bench/proxy_path.mjs [--duration S] [--rounds N] [--warm-up S] [--quick] [--no-warn] [--no-latency]
//                             [--only h2-16x10,h2-64x100,h1-64] [--upstream h1|h2c] [--sim-threads N] [--max-tokens N]
//                             [--json FILE]
//
// The request is a small non-streamed chat completion (POST
// /v1/chat/completions, max_tokens 16) that the simulator answers at once.
// obleth runs with tenant auth (one key) and admission on (max_inflight
// 100000: never saturated), log_level info (the default) and, as a fifth
// column, warn. nghttpx (-n1) and HAProxy (nbthread 1) are plain proxies
// with their defaults. Every proxy reaches the simulator over HTTP/1.1
// (--upstream h2c: over h2c); the direct h2 path is a second simulator
// started with --h2c.
//
// Placement: the proxy under test runs alone on CPU 1 (taskset); h2load
// and the simulators share the other CPUs. The direct path must be clearly
// faster than every proxied one, else the load side limits the comparison
// (a MISS line says so), and every proxy must use its whole CPU, else the
// load side held it back (another MISS line; then compare by CPU per
// request, printed too). Rounds are interleaved, the order of the servers
// rotating each round; the tables show the median over the rounds.
//
// Latency: h2load --log-file (one line per request: start, status,
// duration in µs) at concurrency 1 (-c 1 -m 1) and at 80 % of obleth's
// measured capacity (-c 16 -m 10 --rps R/16); p50 / p99 per server, and
// what each proxy adds over the direct path.
//
// Prints PASS / MISS per target and exits 0 once it has run; 1 only when
// something cannot be started or a path answers wrongly. See bench/README.md.
import { writeFileSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { availableParallelism } from 'node:os';
import {
  sleep, fail, workDir, freePort, sh, requireTools, requireBinaries, startSim, startObleth,
  treeCpuSeconds, treeCpuSplit, processTree, cpuTimes, cpuUtil, h2request, parseH2load, clean, h2loadSummary, readH2loadLog, pct, median, mdTable,
  machine, stop, nofileWrap, nofileLimits, metric, startNghttpx, startHaproxy, proxyConfig,
  parseArgs, list,
} from './lib.mjs';

const TARGETS = { vsNghttpx: 1.2, vsHaproxy: 1.0, addedP99C1Us: 200, directMargin: 1.1, proxyBusy: 0.9 };

// ---- options ----

const opt = parseArgs({ duration: 10, rounds: 3, warmup: 1, warn: true, latency: true, only: null, simThreads: 1, maxTokens: 16, json: null, quick: false,
  upstream: 'h1' }, {
  '--upstream': ['upstream', String],
  '--duration': ['duration', Number], '--rounds': ['rounds', Number], '--warm-up': ['warmup', Number],
  '--no-warn': (o) => { o.warn = false; }, '--no-latency': (o) => { o.latency = false; }, '--only': ['only', list],
  '--sim-threads': ['simThreads', Number], '--max-tokens': ['maxTokens', Number], '--json': ['json', String],
  '--quick': (o) => { o.quick = true; o.duration = 3; o.rounds = 1; },
}, 'node bench/proxy_path.mjs [--duration S] [--rounds N] [--warm-up S] [--quick] [--no-warn] [--no-latency] ' +
  '[--only h2-16x10,h2-64x100,h1-64] [--upstream h1|h2c] [--sim-threads N] [--max-tokens N] [--json FILE]');
if (!['h1', 'h2c'].includes(opt.upstream)) fail('--upstream is h1 or h2c');

const SHAPES = [
  { name: 'h2-16x10', label: 'h2 `-c 16 -m 10`', args: ['-c', '16', '-m', '10'], h1: false, inflight: 160 },
  { name: 'h2-64x100', label: 'h2 `-c 64 -m 100`', args: ['-c', '64', '-m', '100'], h1: false, inflight: 6400 },
  { name: 'h1-64', label: 'h1 `--h1 -c 64`', args: ['--h1', '-c', '64'], h1: true, inflight: 64 },
].filter((s) => !opt.only || opt.only.includes(s.name));
if (!SHAPES.length) fail('--only: shapes are h2-16x10, h2-64x100, h1-64');

requireTools(['h2load', 'nghttpx', 'haproxy', 'taskset', 'prlimit'], 'apt-get install nghttp2-client nghttp2-proxy haproxy util-linux');
requireBinaries();

// CPU 1 for the proxy under test, the others for h2load and the simulators.
const ncpu = availableParallelism();
const PROXY_CPU = ncpu > 1 ? '1' : null;
const LOAD_CPUS = ncpu > 1 ? ['0', ...(ncpu > 2 ? [`2-${ncpu - 1}`] : [])].join(',') : null;
const NOFILE = nofileWrap();
const nofile = Math.min(nofileLimits().hard, 1048576);
// HAProxy wants 2 x maxconn + a few descriptors and refuses to start without them.
const HAPROXY_MAXCONN = Math.min(30000, Math.floor((nofile - 100) / 2));

// ---- set-up ----

const dir = workDir('obleth-bench-proxy-');
const PATH = '/v1/chat/completions';
const KEY = 'sk-bench';
const reqBody = JSON.stringify({
  model: 'sim-model', max_tokens: opt.maxTokens,
  messages: [{ role: 'user', content: 'What does a proxy in front of an inference server cost?' }],
});
const bodyFile = join(dir, 'request.json');
writeFileSync(bodyFile, reqBody);
const headers = { 'content-type': 'application/json', authorization: `Bearer ${KEY}` };

const simArgs = ['--slots', '1000000', '--threads', String(opt.simThreads)];
const simH1 = await startSim(dir, simArgs, { pin: LOAD_CPUS, name: 'sim-h1' });
const simH2 = await startSim(dir, [...simArgs, '--h2c'], { pin: LOAD_CPUS, name: 'sim-h2c' });

// Every proxy's upstream: the HTTP/1.1 simulator, or with --upstream h2c
// the h2c one (then the load side's work per proxied request is the same
// as on the direct h2 path: one h2c server either way).
const H2C = opt.upstream === 'h2c';
const backend = H2C ? simH2 : simH1;
const oblethCfg = (logLevel) => ({ ...proxyConfig(backend.url, KEY, H2C ? 'h2c' : 'http1'), limits: { max_connections: 30000 }, log_level: logLevel });
async function startOb(logLevel, name) {
  const admin = `127.0.0.1:${await freePort()}`;
  const ob = await startObleth(dir, { ...oblethCfg(logLevel), admin: { address: admin } }, { pin: PROXY_CPU, name, wrap: NOFILE });
  return { proc: ob.proc, h2: ob.url, h1: ob.url, log: ob.log, metrics: `http://${admin}/metrics` };
}

const servers = {
  direct: { label: 'direct', proc: null, h2: simH2.url, h1: simH1.url },
  nghttpx: { label: 'nghttpx', ...(await startNghttpx(dir, backend.port, { pin: PROXY_CPU, wrap: NOFILE, h2c: H2C })) },
  haproxy: { label: 'HAProxy', ...(await startHaproxy(dir, backend.port, { pin: PROXY_CPU, wrap: NOFILE, maxconn: HAPROXY_MAXCONN, h2c: H2C })) },
  obleth: { label: 'obleth', ...(await startOb('info', 'obleth')) },
  ...(opt.warn ? { 'obleth-warn': { label: 'obleth (warn)', ...(await startOb('warn', 'obleth-warn')) } } : {}),
};
const names = Object.keys(servers);
const proxies = names.filter((n) => n !== 'direct');

// Every path answers 200 with the same body (the completion id and the
// creation time differ per response; obleth adds headers).
const normal = (b) => b.toString().replace(/"id":"chatcmpl-[0-9a-f]+"/, '"id":"X"').replace(/"created":\d+/, '"created":0');
let reference = null;
for (const n of names) for (const proto of ['h2', 'h1']) {
  const url = servers[n][proto];
  let status, body;
  if (proto === 'h2') ({ status, body } = await h2request(url, PATH, reqBody, headers));
  else { const r = await fetch(url + PATH, { method: 'POST', headers, body: reqBody }); status = r.status; body = Buffer.from(await r.arrayBuffer()); }
  if (status !== 200) fail(`${n} over ${proto} answered ${status}:\n${body}`);
  reference ??= normal(body);
  if (normal(body) !== reference) fail(`${n} over ${proto} answered a different body:\n${body}\nexpected (normalised):\n${reference}`);
}

// ---- runs ----

const h2loadArgs = (url, extra) => ['-t', '1', ...extra, '-D', String(opt.duration), '--warm-up-time', String(opt.warmup),
  '-d', bodyFile, '-H', `content-type: ${headers['content-type']}`, '-H', `authorization: ${headers.authorization}`, url + PATH];

// Truncate the obleth access logs between runs (they are opened O_APPEND).
const truncateLogs = () => { for (const n of proxies) if (servers[n].log) truncateSync(join(dir, servers[n].log), 0); };

// One h2load run against `name`: h2load's numbers, the server's CPU (its
// whole process tree: nghttpx forks a worker) and each CPU's utilisation
// over the measured window (after the warm-up).
async function run(name, shape, extra = [], logFile = null) {
  const s = servers[name];
  const url = shape.h1 ? s.h1 : s.h2;
  const args = h2loadArgs(url, [...shape.args, ...extra, ...(logFile ? ['--log-file', logFile] : [])]);
  // (the direct path's server is the simulators)
  const sample = () => {
    const sim = treeCpuSeconds(simH1.proc.pid) + treeCpuSeconds(simH2.proc.pid);
    const own = s.proc ? treeCpuSplit(s.proc.pid) : null;
    return { cpu: own ? own.user + own.sys : sim, sys: own ? own.sys : NaN, sim, cores: cpuTimes() };
  };
  let t0 = null;
  const timer = setTimeout(() => { t0 = sample(); }, opt.warmup * 1000 + 100);
  const out = await sh('h2load', args, { pin: LOAD_CPUS });
  clearTimeout(timer);
  const t1 = sample();
  if (out.code !== 0) fail(`h2load against ${name} failed:\n${out.stdout}${out.stderr}`);
  const p = parseH2load(out.stdout);
  p.clean = clean(p, shape.inflight);
  if (!p.clean) console.log(`  ${name} ${shape.name}: h2load reports something other than ${p.done} clean 2xx:\n${h2loadSummary(out.stdout)}`);
  const secs = opt.duration - 0.1;
  if (t0) {
    p.server_cpu = (t1.cpu - t0.cpu) / secs;          // cores used by the server
    p.sim_cpu = (t1.sim - t0.sim) / secs;
    p.cpu_us_per_req = ((t1.cpu - t0.cpu) * 1e6) / (p.rps * secs);
    p.sys_us_per_req = ((t1.sys - t0.sys) * 1e6) / (p.rps * secs); // of which in the kernel
    p.core_util = cpuUtil(t0.cores, t1.cores);
  }
  truncateLogs();
  return p;
}

const rotate = (xs, r) => xs.map((_, i) => xs[(i + r) % xs.length]);
const pc = (x) => (Number.isFinite(x) ? `${Math.round(x * 100)}%` : '?');
const f0 = (x) => (Number.isFinite(x) ? x.toFixed(0) : '-');
const f2 = (x) => (Number.isFinite(x) ? x.toFixed(2) : '-');
const runLine = (r, name, what, p) => console.log(`round ${r + 1} ${what.padEnd(10)} ${name.padEnd(11)} ${f0(p.rps).padStart(7)} req/s  ` +
  `${p.clean ? 'clean' : 'NOT CLEAN'}, server ${pc(p.server_cpu)} of a CPU (${p.cpu_us_per_req?.toFixed(1) ?? '?'} us/req), ` +
  `sims ${pc(p.sim_cpu)}, CPUs ${p.core_util?.map(pc).join(' / ') ?? '?'}`);

const t00 = Date.now();
console.log(`# proxy_path: ${machine()}`);
console.log(`# proxies on CPU ${PROXY_CPU ?? '(not pinned)'} (upstream ${H2C ? 'h2c' : 'HTTP/1.1'}), h2load and simulators on CPU ${LOAD_CPUS ?? '(not pinned)'}; ` +
  `${opt.rounds} interleaved rounds of ${opt.duration} s (+${opt.warmup} s warm-up); request body ${reqBody.length} bytes, ` +
  `response body ${reference.length} bytes; every path checked: 200, same body`);

const tput = Object.fromEntries(SHAPES.map((s) => [s.name, Object.fromEntries(names.map((n) => [n, []]))]));
for (let r = 0; r < opt.rounds; r++)
  for (const shape of SHAPES)
    for (const n of rotate(names, r)) {
      const p = await run(n, shape);
      tput[shape.name][n].push(p);
      runLine(r, n, shape.name, p);
    }
const med = (xs, k) => median(xs.map((p) => p[k]).filter(Number.isFinite));

// Latency: per-request durations from h2load's log, pooled over the rounds.
const lat = {};
let rate = NaN;
if (opt.latency) {
  const loads = [{ name: 'c1', label: 'concurrency 1 (`-c 1 -m 1`)', args: ['-c', '1', '-m', '1'], inflight: 1 }];
  // The same with the proxy moved onto the load's CPU for the run: each
  // request then crosses no CPU boundary, as on the direct path, so what
  // is added is the proxy's own time (and two context switches), not the
  // cross-CPU wake-ups, which on a VM cost tens of microseconds each and
  // vary from day to day (see bench/README.md).
  if (PROXY_CPU) loads.push({ name: 'c1same', label: 'concurrency 1, proxy on the load\'s CPU', args: ['-c', '1', '-m', '1'], inflight: 1, sameCpu: true });
  const cap = tput['h2-16x10'] ? med(tput['h2-16x10'].obleth, 'rps') : NaN;
  if (Number.isFinite(cap)) {
    rate = Math.max(16, Math.round((0.8 * cap) / 16)) * 16;
    loads.push({ name: 'p80', label: `80 % of obleth's capacity (${rate} req/s: \`-c 16 -m 10 --rps ${rate / 16}\`)`,
      args: ['-c', '16', '-m', '10', '--rps', String(rate / 16)], inflight: 160, rate });
  } else console.log('(80 % latency needs the h2-16x10 shape: skipped)');
  const latNames = names.filter((n) => n !== 'obleth-warn');
  for (const load of loads) lat[load.name] = { load, per: Object.fromEntries(latNames.map((n) => [n, { durations: [], rps: [], statuses: {} }])) };
  for (let r = 0; r < opt.rounds; r++)
    for (const load of loads)
      for (const n of rotate(latNames, r)) {
        const logFile = join(dir, `lat-${load.name}-${n}-${r}.tsv`);
        const moved = load.sameCpu && servers[n].proc ? processTree(servers[n].proc.pid) : [];
        for (const pid of moved) await sh('taskset', ['-a', '-p', '-c', LOAD_CPUS, String(pid)]);
        const p = await run(n, { ...load, h1: false }, [], logFile);
        for (const pid of moved) await sh('taskset', ['-a', '-p', '-c', PROXY_CPU, String(pid)]);
        const l = readH2loadLog(logFile);
        const acc = lat[load.name].per[n];
        for (const d of l.durations) acc.durations.push(d); // (a spread overflows the stack at 100,000s)
        acc.rps.push(p.rps);
        for (const [k, v] of Object.entries(l.statuses)) acc.statuses[k] = (acc.statuses[k] ?? 0) + v;
        runLine(r, n, load.name, p);
        console.log(`${' '.repeat(26)}p50 ${pct(l.durations, 0.5)} us, p99 ${pct(l.durations, 0.99)} us (${l.durations.length} requests)`);
      }
  for (const L of Object.values(lat)) for (const a of Object.values(L.per)) {
    a.durations.sort((x, y) => x - y);
    a.p50 = pct(a.durations, 0.5);
    a.p99 = pct(a.durations, 0.99);
  }
}

// ---- results ----

const ratio = (a, b) => a / b;
const x = (v) => (Number.isFinite(v) ? `${v.toFixed(2)}×` : '-');
const shown = names;
console.log(`\n## Results (median of ${opt.rounds} round${opt.rounds > 1 ? 's' : ''} of ${opt.duration} s; ${((Date.now() - t00) / 1000).toFixed(0)} s in all)\n`);
console.log('Requests per second:\n');
console.log(mdTable(['load', ...shown.map((n) => servers[n].label), 'obleth / nghttpx', 'obleth / HAProxy', 'obleth / direct'],
  SHAPES.map((s) => {
    const v = Object.fromEntries(shown.map((n) => [n, med(tput[s.name][n], 'rps')]));
    return [s.label, ...shown.map((n) => f0(v[n])), x(ratio(v.obleth, v.nghttpx)), x(ratio(v.obleth, v.haproxy)), x(ratio(v.obleth, v.direct))];
  })));
console.log('\nServer CPU per request (µs, from /proc/PID/stat over the measured window) and how busy each CPU was ' +
  `(CPU ${PROXY_CPU ?? '-'}: the proxy; CPU ${LOAD_CPUS ?? '-'}: h2load and the simulators):\n`);
console.log(mdTable(['load', ...shown.map((n) => servers[n].label)], SHAPES.map((s) => [s.label, ...shown.map((n) => {
  const ps = tput[s.name][n];
  const u = median(ps.map((p) => p.core_util?.[0]).filter(Number.isFinite));
  const srv = med(ps, 'server_cpu');
  return `${f2(med(ps, 'cpu_us_per_req'))} µs (server ${pc(srv)}, load CPU ${pc(u)})`;
})])));
console.log('\nThe same CPU per request split into user space and the kernel (system calls, and on loopback the TCP ' +
  'delivery to the receiving socket, which Linux charges to the sender):\n');
console.log(mdTable(['load', ...proxies.map((n) => servers[n].label)], SHAPES.map((s) => [s.label, ...proxies.map((n) => {
  const ps = tput[s.name][n];
  const all = med(ps, 'cpu_us_per_req'), sys = med(ps, 'sys_us_per_req');
  return `${f2(all - sys)} user + ${f2(sys)} kernel`;
})])));
console.log('\nRatios by server CPU per request (what each server would do with the whole CPU: the fair comparison when a ' +
  'proxy was not CPU-bound, see the CPU-bound lines below):\n');
console.log(mdTable(['load', 'obleth / nghttpx', 'obleth / HAProxy', 'obleth (warn) / nghttpx', 'obleth (warn) / HAProxy'], SHAPES.map((s) => {
  const us = Object.fromEntries(shown.map((n) => [n, med(tput[s.name][n], 'cpu_us_per_req')]));
  return [s.label, x(us.nghttpx / us.obleth), x(us.haproxy / us.obleth), x(us.nghttpx / us['obleth-warn']), x(us.haproxy / us['obleth-warn'])];
})));
if (opt.latency) {
  console.log('\nLatency (µs, from h2load\'s per-request log, all rounds pooled), and what a proxy adds over the direct path:\n');
  const rows = [];
  for (const L of Object.values(lat)) for (const n of Object.keys(L.per)) {
    const a = L.per[n], d = L.per.direct;
    rows.push([L.load.label, servers[n].label, f0(median(a.rps)), String(a.p50), String(a.p99),
      n === 'direct' ? '—' : `+${a.p50 - d.p50}`, n === 'direct' ? '—' : `+${a.p99 - d.p99}`]);
  }
  console.log(mdTable(['load', 'server', 'req/s', 'p50', 'p99', 'added p50', 'added p99'], rows));
}

console.log('');
const verdicts = [];
const line = (ok, text) => { verdicts.push({ ok, text }); console.log(`${ok ? 'PASS' : 'MISS'} ${text}`); };
for (const s of SHAPES) {
  const v = Object.fromEntries(names.map((n) => [n, med(tput[s.name][n], 'rps')]));
  line(v.obleth >= TARGETS.vsNghttpx * v.nghttpx, `${s.name}: obleth >= ${TARGETS.vsNghttpx}x nghttpx: ${f0(v.obleth)} vs ${f0(v.nghttpx)} req/s (${x(v.obleth / v.nghttpx)})`);
  line(v.obleth >= TARGETS.vsHaproxy * v.haproxy, `${s.name}: obleth >= ${TARGETS.vsHaproxy}x HAProxy: ${f0(v.obleth)} vs ${f0(v.haproxy)} req/s (${x(v.obleth / v.haproxy)})`);
  const best = Math.max(...proxies.map((n) => v[n]));
  const bestName = proxies.find((n) => v[n] === best);
  line(v.direct >= TARGETS.directMargin * best, `${s.name}: the simulator is not the bottleneck: direct ${f0(v.direct)} req/s >= ` +
    `${TARGETS.directMargin}x the fastest proxied path (${bestName} ${f0(best)}: ${x(v.direct / best)})`);
  // The direct check is necessary, not sufficient: a proxied request costs
  // the load side more than a direct one (with HTTP/1.1 upstreams the
  // simulator reads and writes once per request instead of once per batch
  // of h2 frames). A proxy that did not use its whole CPU was held back by
  // the load side: its req/s is not its capacity.
  const idle = proxies.filter((n) => !(med(tput[s.name][n], 'server_cpu') >= TARGETS.proxyBusy));
  line(!idle.length, `${s.name}: every proxy CPU-bound (>= ${pc(TARGETS.proxyBusy)} of its CPU): ` +
    proxies.map((n) => `${servers[n].label} ${pc(med(tput[s.name][n], 'server_cpu'))}`).join(', ') +
    (idle.length ? `; CPU 0 at ${pc(median(tput[s.name][idle[0]].map((p) => p.core_util?.[0]).filter(Number.isFinite)))}: ` +
      `compare these by CPU per request (ratios table above)${H2C ? '' : ', or see --upstream h2c'}` : ''));
}
if (opt.latency) {
  for (const k of ['c1', 'c1same']) {
    if (!lat[k]) continue;
    const c1 = lat[k].per;
    const others = proxies.filter((n) => c1[n] && n !== 'obleth').map((n) => `${servers[n].label} +${c1[n].p99 - c1.direct.p99}`).join(', ');
    line(c1.obleth.p99 - c1.direct.p99 < TARGETS.addedP99C1Us, `latency obleth adds at ${lat[k].load.label}, p99 < ${TARGETS.addedP99C1Us} us: ` +
      `+${c1.obleth.p99 - c1.direct.p99} us (${c1.obleth.p99} vs ${c1.direct.p99} us; p50 +${c1.obleth.p50 - c1.direct.p50} us; ${others})`);
  }
  if (lat.p80) for (const n of Object.keys(lat.p80.per)) {
    const got = median(lat.p80.per[n].rps);
    if (got < 0.95 * rate) console.log(`note ${servers[n].label} did not sustain the 80 % rate: ${f0(got)} of ${rate} req/s (its latency there is a saturated queue)`);
  }
}
// obleth's admission was on and never saturated: every request granted fast.
for (const n of proxies.filter((k) => servers[k].metrics)) {
  const m = await (await fetch(servers[n].metrics)).text();
  const fast = metric(m, 'obleth_requests_total', { admission: 'fast' }), queued = metric(m, 'obleth_requests_total', { admission: 'queued' });
  const other = metric(m, 'obleth_requests_total') - fast - queued;
  line(queued === 0 && other === 0 && fast > 0, `${servers[n].label}: admission on and never saturated: ${fast} requests admitted fast, ${queued} queued, ${other} other`);
}
const allClean = Object.values(tput).flatMap((t) => Object.values(t).flat()).every((p) => p.clean);
line(allClean, 'every request answered 2xx (no failures, no errors, no other status)');

if (opt.json) writeFileSync(opt.json, JSON.stringify({ opt, machine: machine(), tput, rate,
  latency: Object.fromEntries(Object.entries(lat).map(([k, L]) => [k, Object.fromEntries(Object.entries(L.per).map(([n, a]) => [n, { p50: a.p50, p99: a.p99, rps: a.rps, statuses: a.statuses, n: a.durations.length }]))])),
  verdicts }, null, 2));

for (const n of [...proxies].reverse()) await stop(servers[n].proc);
for (const s of [simH1, simH2]) await stop(s.proc);
await sleep(0);
