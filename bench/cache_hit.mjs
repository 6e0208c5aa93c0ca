// Cache-hit benchmark: what a response-cache hit costs in obleth, against
// the physical limit of serving the same bytes as a static file from
// nghttpd, in the same run. One command, Node 20, no npm packages:
//
//   node bench/cache_hit.mjs [--duration S] [--rounds N] [-c N] [-m N] [-t N] [--warm-up S]
//                            [--body json|sse] [--max-tokens N] [--log-level L] [--json FILE] [--quick]
//
// Both servers run one thread on loopback; h2load (one thread) POSTs the
// same request body with the same headers to the same path on each, in
// interleaved rounds. The simulator's request count is read before and
// after: a hit must never reach the upstream. Prints PASS / MISS per check
// and exits 0 once it has run; 1 only when something cannot be started or
// the set-up is wrong (no hit after warming, different bytes). See
// bench/README.md.
import { writeFileSync, openSync, closeSync, readSync, fstatSync } from 'node:fs';
import { join } from 'node:path';
import { availableParallelism } from 'node:os';
import {
  sleep, fail, workDir, sh, startSim, startObleth, startNghttpd, requireTools, requireBinaries,
  cpuSplit, h2request, parseH2load, clean, h2loadSummary, median, stop, parseArgs,
} from './lib.mjs';

const TARGET = 1.2; // a hit may cost at most 1.2x the static file: obleth rps >= nghttpd rps / 1.2

// ---- options ----

const opt = parseArgs({ duration: 10, rounds: 3, c: 16, m: 10, t: 1, warmup: 1, body: 'json', json: null, maxTokens: 64, logLevel: null }, {
  '--duration': ['duration', Number], '--rounds': ['rounds', Number], '-c': ['c', Number], '-m': ['m', Number], '-t': ['t', Number],
  '--warm-up': ['warmup', Number], '--body': ['body', String], '--max-tokens': ['maxTokens', Number], '--json': ['json', String],
  '--log-level': ['logLevel', String], '--quick': (o) => { o.duration = 3; o.rounds = 1; },
}, 'node bench/cache_hit.mjs [--duration S] [--rounds N] [-c N] [-m N] [-t N] [--warm-up S] [--body json|sse] [--max-tokens N] ' +
  '[--log-level L] [--json FILE] [--quick]');
if (!['json', 'sse'].includes(opt.body)) { console.error('--body is json or sse'); process.exit(2); }

requireTools(['h2load', 'nghttpd'], 'apt-get install nghttp2-client nghttp2-server');
requireBinaries();

// ---- processes (stopped at exit, by pid) ----

const dir = workDir('obleth-bench-cache-');

// Scan a log from byte offset `from` to its end, a chunk at a time (a run
// writes hundreds of MB of access lines): {end, lines, hits}.
function scanLog(name, from, isLine, isHit) {
  const fd = openSync(join(dir, name), 'r');
  const end = fstatSync(fd).size;
  const buf = Buffer.alloc(4 << 20);
  let pos = from, rest = '', lines = 0, hits = 0;
  while (pos < end) {
    const n = readSync(fd, buf, 0, Math.min(buf.length, end - pos), pos);
    if (n <= 0) break;
    pos += n;
    const parts = (rest + buf.toString('latin1', 0, n)).split('\n');
    rest = parts.pop();
    for (const l of parts) if (isLine(l)) { lines++; if (isHit(l)) hits++; }
  }
  closeSync(fd);
  return { end: pos - Buffer.byteLength(rest, 'latin1'), lines, hits };
}

// ---- set-up ----

const PATH = '/v1/chat/completions';
const KEY = 'sk-bench';
const reqBody = JSON.stringify({
  model: 'sim-model', max_tokens: opt.maxTokens, temperature: 0,
  messages: [{ role: 'system', content: 'You are a helpful assistant.' },
    { role: 'user', content: 'What does a response cache in an inference gateway save?' }],
  ...(opt.body === 'sse' ? { stream: true } : {}),
});
const bodyFile = join(dir, 'request.json');
writeFileSync(bodyFile, reqBody);
const headers = { 'content-type': 'application/json', authorization: `Bearer ${KEY}` };

// Placement as in proxy_path.mjs: the server under test (obleth, then
// nghttpd) alone on CPU 1, h2load and the simulator on the others, so both
// servers get the same CPU and neither competes with the load.
const ncpu = availableParallelism();
const SERVER_CPU = ncpu > 1 ? '1' : null;
const LOAD_CPUS = ncpu > 1 ? ['0', ...(ncpu > 2 ? [`2-${ncpu - 1}`] : [])].join(',') : null;

const sim = await startSim(dir, [], { name: 'sim', pin: LOAD_CPUS });
const simRequests = async () => (await (await fetch(`${sim.url}/sim/stats`)).json()).requests;

const gw = await startObleth(dir, {
  upstreams: [{ name: 'sim', endpoints: [sim.url] }],
  routes: [{ prefix: '/v1/', class: 'inference', upstream: 'sim' }],
  tenants: [{ name: 'bench', keys: [{ id: 'bench-1', secret: KEY }] }],
  cache: { path: join(dir, 'cache.mdb') },
  ...(opt.logLevel ? { log_level: opt.logLevel } : {}),
}, { pin: SERVER_CPU });
const gwUrl = gw.url;

// Warm the cache: the first request is a miss, then poll until it is a hit.
const first = await h2request(gwUrl, PATH, reqBody, headers);
if (first.status !== 200 || first.headers['x-obleth-cache'] !== 'miss')
  fail(`warm-up: expected a 200 miss, got ${first.status} ${first.headers['x-obleth-cache']}:\n${first.body}`);
// A repeat sent before the store landed misses too and stores its own
// answer: the hit repeats one of the misses.
let hit;
const misses = [first];
for (let i = 0; i < 100; i++) {
  hit = await h2request(gwUrl, PATH, reqBody, headers);
  if (hit.headers['x-obleth-cache'] === 'hit') break;
  misses.push(hit);
  await sleep(20);
}
if (hit.headers['x-obleth-cache'] !== 'hit') fail('warm-up: no hit after 2 s');
if (!misses.some((m) => hit.body.equals(m.body))) fail('warm-up: the hit differs from every original response');

// nghttpd serves the same bytes as a static file at the same path.
const ngd = await startNghttpd(dir, PATH, hit.body, { body: reqBody, headers }, { pin: SERVER_CPU });
const ng = ngd.proc, ngUrl = ngd.url;

// ---- rounds ----

const targets = { obleth: { url: gwUrl, pid: gw.proc.pid }, nghttpd: { url: ngUrl, pid: ng.pid } };
const results = { obleth: [], nghttpd: [] };
const h2loadArgs = (url) => ['-t', String(opt.t), '-c', String(opt.c), '-m', String(opt.m),
  '-D', String(opt.duration), '--warm-up-time', String(opt.warmup),
  '-d', bodyFile, '-H', `content-type: ${headers['content-type']}`, '-H', `authorization: ${headers.authorization}`, url + PATH];

console.log(`# cache_hit: h2load ${h2loadArgs('URL').slice(0, 10).join(' ')} ...; ${opt.rounds} interleaved rounds; ` +
  `hit body ${hit.body.length} bytes (${opt.body === 'sse' ? 'SSE stream' : 'JSON'}), request body ${reqBody.length} bytes`);
const simBefore = await simRequests();
let logBefore = fstatSync(openSync(join(dir, 'obleth.log'), 'r')).size;
let nonHits = 0, hits = 0;
for (let r = 0; r < opt.rounds; r++) {
  const order = r % 2 === 0 ? ['obleth', 'nghttpd'] : ['nghttpd', 'obleth'];
  for (const name of order) {
    const t = targets[name];
    // Server CPU over h2load's measuring window (after its warm-up).
    let cpu0 = null;
    const timer = setTimeout(() => { cpu0 = cpuSplit(t.pid); }, opt.warmup * 1000 + 100);
    const out = await sh('h2load', h2loadArgs(t.url), { pin: LOAD_CPUS });
    clearTimeout(timer);
    const cpu1 = cpuSplit(t.pid);
    const cpu = cpu0 === null ? NaN : cpu1.user + cpu1.sys - cpu0.user - cpu0.sys;
    const sys = cpu0 === null ? NaN : cpu1.sys - cpu0.sys;
    if (out.code !== 0) fail(`h2load against ${name} failed:\n${out.stdout}${out.stderr}`);
    const p = parseH2load(out.stdout);
    if (!clean(p, opt.c * opt.m))
      console.log(`round ${r + 1} ${name}: h2load reports something other than ${p.done} clean 2xx:\n${h2loadSummary(out.stdout)}`);
    p.cpu_us_per_req = (cpu * 1e6) / (p.rps * (opt.duration - 0.1));
    p.sys_us_per_req = (sys * 1e6) / (p.rps * (opt.duration - 0.1)); // of which in the kernel
    p.cpu_s = cpu;
    if (name === 'obleth') {
      await sleep(200); // the last log lines
      const scan = scanLog('obleth.log', logBefore, (l) => l.includes(`"POST ${PATH} `), (l) => / cache=hit tokens_saved=\d+/.test(l));
      logBefore = scan.end;
      hits += scan.hits;
      nonHits += scan.lines - scan.hits;
    }
    results[name].push(p);
    console.log(`round ${r + 1} ${name.padEnd(7)} ${p.rps.toFixed(0).padStart(8)} req/s  ${p.succeeded} ok ${p.failed} failed ${p.errored} errored, ` +
      `${p.s2xx} 2xx, mean ${p.mean_ms.toFixed(2)} ms, server cpu ${p.cpu_us_per_req.toFixed(1)} us/req ` +
      `(${(p.cpu_us_per_req - p.sys_us_per_req).toFixed(1)} user + ${p.sys_us_per_req.toFixed(1)} kernel)`);
  }
}
const simAfter = await simRequests();

// ---- summary ----

// Medians, as in proxy_path.mjs: on a shared VM one disturbed round would
// move a mean by more than the effect measured.
const sum = (name, k) => median(results[name].map((p) => p[k]));
const o = sum('obleth', 'rps'), n = sum('nghttpd', 'rps');
const oc = sum('obleth', 'cpu_us_per_req'), nc = sum('nghttpd', 'cpu_us_per_req');
const allOk = Object.values(results).flat().every((p) => clean(p, opt.c * opt.m));
const ratio = n / o;
console.log('');
const split = (name) => { const k = sum(name, 'sys_us_per_req'); return `(${(sum(name, 'cpu_us_per_req') - k).toFixed(1)} user + ${k.toFixed(1)} kernel)`; };
console.log(`obleth (cache hit)   ${o.toFixed(0)} req/s  ${oc.toFixed(1)} us cpu/req ${split('obleth')}`);
console.log(`nghttpd (static)     ${n.toFixed(0)} req/s  ${nc.toFixed(1)} us cpu/req ${split('nghttpd')}`);
console.log(`cost of a hit: ${ratio.toFixed(3)}x the static file by req/s (obleth at ${(100 * o / n).toFixed(1)} % of nghttpd), ` +
  `${(oc / nc).toFixed(3)}x by server CPU per request`);
// "Costs" read both ways: the throughput the server reaches and the CPU it
// spends per request; both must be within the target.
const cpuRatio = oc / nc;
console.log(`${ratio <= TARGET && cpuRatio <= TARGET ? 'PASS' : 'MISS'} target: a hit costs at most ${TARGET}x the static file, ` +
  `by req/s (obleth >= ${(n / TARGET).toFixed(0)} req/s) and by CPU per request (<= ${(nc * TARGET).toFixed(2)} us)`);
console.log(`${simAfter === simBefore ? 'PASS' : 'MISS'} upstream untouched: simulator requests ${simBefore} before, ${simAfter} after`);
if (opt.logLevel && opt.logLevel !== 'info' && opt.logLevel !== 'debug')
  console.log(`n/a  every obleth request a hit (no access lines at log_level ${opt.logLevel}; the simulator count above still holds)`);
else console.log(`${nonHits === 0 && hits > 0 ? 'PASS' : 'MISS'} every logged obleth request was a hit: ${hits} hits, ${nonHits} others`);
console.log(`${allOk ? 'PASS' : 'MISS'} every request answered 2xx (no failures, no errors, no other status)`);

if (opt.json) writeFileSync(opt.json, JSON.stringify({ opt, hit_bytes: hit.body.length, request_bytes: reqBody.length, results,
  obleth_rps: o, nghttpd_rps: n, ratio, cpu_ratio: cpuRatio, sim_requests_before: simBefore, sim_requests_after: simAfter, hits, non_hits: nonHits }, null, 2));

for (const p of [ng, gw.proc, sim.proc]) await stop(p);
if (gw.proc.exitInfo.code !== 0) fail(`obleth exited ${gw.proc.exitInfo.code ?? gw.proc.exitInfo.sig} on SIGTERM`);
