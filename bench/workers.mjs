// Workers benchmark: how obleth's throughput grows from 1 to 2 (or more)
// event-loop threads ("workers": N) on the proxy path. One command, Node
// 20, no npm packages:
//
//   node bench/workers.mjs [--workers 1,2] [--duration S] [--rounds N] [--warm-up S] [--quick] [--json FILE]
//
// The request and the obleth configuration are the proxy-path benchmark's
// (tenant auth, admission on but never saturated, log_level warn), against
// one obleth-sim (HTTP/1.1 upstream, --threads 1). For each worker count
// one obleth runs; rounds are interleaved (the order of the gateways
// rotating each round) and the table shows medians over the rounds.
//
// Nothing is pinned: on a small machine the gateway's workers, h2load and
// the simulator share every CPU, which is the point — the question is what
// a second worker buys when the machine has the room. Per run the report
// gives requests per second, the gateway's CPU (cores used) and its CPU
// time per request, and the scheduler lock's contention (acquisitions that
// had to wait, from /metrics). If the CPU per request stays flat from 1 to
// N workers and contention stays low, throughput grows with the cores
// given to the gateway; the README explains the projection.
//
// Exits 0 once it has run; 1 only when something cannot be started or a
// run fails.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { availableParallelism } from 'node:os';
import {
  fail, workDir, freePort, sh, requireTools, requireBinaries, startSim, startObleth,
  treeCpuSeconds, cpuTimes, cpuUtil, parseH2load, clean, h2loadSummary, median, mdTable,
  machine, nofileWrap, metric, proxyConfig, parseArgs, list,
} from './lib.mjs';

const opt = parseArgs({ workers: [1, 2], duration: 8, rounds: 3, warmup: 1, json: null }, {
  '--workers': ['workers', (v) => list(v).map(Number)],
  '--duration': ['duration', Number], '--rounds': ['rounds', Number], '--warm-up': ['warmup', Number],
  '--json': ['json', String],
  '--quick': (o) => { o.duration = 3; o.rounds = 1; },
}, 'node bench/workers.mjs [--workers 1,2] [--duration S] [--rounds N] [--warm-up S] [--quick] [--json FILE]');
if (!opt.workers.every((n) => Number.isInteger(n) && n >= 1 && n <= 64)) fail('--workers: a list of counts 1..64');

requireTools(['h2load', 'prlimit'], 'apt-get install nghttp2-client util-linux');
requireBinaries();

const SHAPES = [
  { name: 'h2-64x10', label: 'h2 `-c 64 -m 10`', args: ['-c', '64', '-m', '10'], inflight: 640 },
  { name: 'h1-64', label: 'h1 `--h1 -c 64`', args: ['--h1', '-c', '64'], inflight: 64 },
];

const dir = workDir('obleth-bench-workers-');
const PATH = '/v1/chat/completions';
const KEY = 'sk-bench';
const reqBody = JSON.stringify({
  model: 'sim-model', max_tokens: 16,
  messages: [{ role: 'user', content: 'What does a proxy in front of an inference server cost?' }],
});
const bodyFile = join(dir, 'request.json');
writeFileSync(bodyFile, reqBody);

const sim = await startSim(dir, ['--slots', '1000000', '--threads', '1']);
const gateways = {};
for (const n of opt.workers) {
  const admin = `127.0.0.1:${await freePort()}`;
  const cfg = { ...proxyConfig(sim.url, KEY), workers: n, limits: { max_connections: 30000 }, log_level: 'warn', admin: { address: admin } };
  const ob = await startObleth(dir, cfg, { name: `obleth-w${n}`, wrap: nofileWrap() });
  gateways[n] = { ...ob, metrics: `http://${admin}/metrics` };
  const r = await fetch(ob.url + PATH, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` }, body: reqBody });
  if (r.status !== 200) fail(`obleth with ${n} worker(s) answered ${r.status}: ${await r.text()}`);
}

const lockCounts = async (g) => {
  const t = await (await fetch(g.metrics)).text();
  return { taken: metric(t, 'obleth_scheduler_lock_acquisitions_total'), waited: metric(t, 'obleth_scheduler_lock_contended_total') };
};

async function run(n, shape) {
  const g = gateways[n];
  const args = ['-t', '1', ...shape.args, '-D', String(opt.duration), '--warm-up-time', String(opt.warmup), '-d', bodyFile,
    '-H', 'content-type: application/json', '-H', `authorization: Bearer ${KEY}`, g.url + PATH];
  let t0 = null;
  const timer = setTimeout(async () => { t0 = { cpu: treeCpuSeconds(g.proc.pid), cores: cpuTimes(), lock: await lockCounts(g) }; },
    opt.warmup * 1000 + 100);
  const out = await sh('h2load', args);
  clearTimeout(timer);
  const t1 = { cpu: treeCpuSeconds(g.proc.pid), cores: cpuTimes(), lock: await lockCounts(g) };
  if (out.code !== 0) fail(`h2load against ${n} worker(s) failed:\n${out.stdout}${out.stderr}`);
  const p = parseH2load(out.stdout);
  p.clean = clean(p, shape.inflight);
  if (!p.clean) console.log(`  w${n} ${shape.name}: not clean:\n${h2loadSummary(out.stdout)}`);
  const secs = opt.duration - 0.1;
  if (t0) {
    p.cores = (t1.cpu - t0.cpu) / secs;
    p.cpu_us_per_req = ((t1.cpu - t0.cpu) * 1e6) / (p.rps * secs);
    p.core_util = cpuUtil(t0.cores, t1.cores);
    const taken = t1.lock.taken - t0.lock.taken;
    p.lock_per_req = taken / (p.rps * secs);
    p.lock_waited = taken ? (t1.lock.waited - t0.lock.waited) / taken : 0;
  }
  return p;
}

const pc = (x, d = 0) => (Number.isFinite(x) ? `${(x * 100).toFixed(d)}%` : '?');
const rotate = (xs, r) => xs.map((_, i) => xs[(i + r) % xs.length]);
console.log(`# workers: ${machine()}`);
console.log(`# nothing pinned (${availableParallelism()} CPUs shared by obleth, h2load -t 1 and obleth-sim --threads 1); ` +
  `${opt.rounds} interleaved rounds of ${opt.duration} s (+${opt.warmup} s warm-up); workers ${opt.workers.join(', ')}`);

const res = Object.fromEntries(SHAPES.map((s) => [s.name, Object.fromEntries(opt.workers.map((n) => [n, []]))]));
for (let r = 0; r < opt.rounds; r++)
  for (const shape of SHAPES)
    for (const n of rotate(opt.workers, r)) {
      const p = await run(n, shape);
      res[shape.name][n].push(p);
      console.log(`round ${r + 1} ${shape.name.padEnd(9)} workers ${String(n).padStart(2)}  ${p.rps.toFixed(0).padStart(7)} req/s  ` +
        `${p.clean ? 'clean' : 'NOT CLEAN'}, obleth ${pc(p.cores)} of a CPU (${p.cpu_us_per_req?.toFixed(1)} us/req), ` +
        `lock ${p.lock_per_req?.toFixed(1)}/req, waited ${pc(p.lock_waited, 2)}, CPUs ${p.core_util?.map((u) => pc(u)).join(' / ')}`);
    }

const med = (xs, k) => median(xs.map((p) => p[k]).filter(Number.isFinite));
const base = opt.workers[0];
const rows = [];
for (const shape of SHAPES)
  for (const n of opt.workers) {
    const xs = res[shape.name][n];
    const rps = med(xs, 'rps');
    rows.push([shape.label, String(n), rps.toFixed(0), `${(rps / med(res[shape.name][base], 'rps')).toFixed(2)}x`,
      med(xs, 'cores').toFixed(2), med(xs, 'cpu_us_per_req').toFixed(1), pc(med(xs, 'lock_waited'), 2),
      xs.every((p) => p.clean) ? 'yes' : 'NO']);
  }
console.log('\n' + mdTable(['load', 'workers', 'req/s', `vs ${base}`, 'obleth CPUs', 'obleth CPU µs/req', 'lock waits', 'clean'], rows));
if (opt.json) writeFileSync(opt.json, JSON.stringify({ machine: machine(), opt, res }, null, 2));
process.exit(0);
