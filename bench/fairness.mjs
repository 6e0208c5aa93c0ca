#!/usr/bin/env node
// Fairness benchmark for obleth's admission scheduler.
//
//   node bench/fairness.mjs [--duration S] [--quick] [--window S] [--only a,b] [--json FILE]
//
// Starts a fresh obleth-sim and obleth per scenario on ephemeral loopback
// ports, drives closed-loop streaming chat clients per tenant (keep-alive
// HTTP/1.1, one node:http Agent per tenant), and prints per 5-second window:
// each tenant's share of the service (output tokens), its weighted max-min
// fair share (water-filling over demands), the error in percentage points,
// Jain's index over service / fair share, p50 / p99 of x-obleth-queue-ms, and
// the backend's utilisation (in_flight / slots from /sim/stats every 100 ms).
// A summary checks the targets and prints PASS / MISS; the exit status is 0
// whenever the benchmark itself ran (1 only if a process failed to start).
//
// Binaries: $OBLETH and $OBLETH_SIM, defaulting to ../build/obleth and
// ../build/tests/sim/obleth-sim relative to this file. See bench/README.md.
import http from 'node:http';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir, cpus, totalmem } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { monitorEventLoopDelay } from 'node:perf_hooks';

const here = dirname(fileURLToPath(import.meta.url));
const OBLETH = process.env.OBLETH || resolve(here, '../build/obleth');
const OBLETH_SIM = process.env.OBLETH_SIM || resolve(here, '../build/tests/sim/obleth-sim');

// ---------------------------------------------------------------- options

function parseArgs(argv) {
  const o = { duration: 30, window: 5, only: null, json: null, quick: false, fixed: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--quick') o.quick = true;
    else if (a === '--fixed-length') o.fixed = true;
    else if (a === '--duration') o.duration = Number(val());
    else if (a === '--window') o.window = Number(val());
    else if (a === '--only') o.only = val().split(',');
    else if (a === '--json') o.json = val();
    else if (a === '--help' || a === '-h') usage();
    else usage(`unknown argument ${a}`);
  }
  if (o.quick) o.duration = 10;
  if (!(o.duration > 0) || !(o.window > 0)) usage('--duration and --window must be positive');
  if (o.duration < 2 * o.window) usage('--duration must cover at least two windows (the first is warm-up)');
  return o;
}

function usage(err) {
  if (err) console.error(`fairness.mjs: ${err}`);
  console.error('usage: node bench/fairness.mjs [--duration S (default 30)] [--quick (= --duration 10)]\n' +
    '                               [--window S (default 5)] [--only backlogged,baseline,noisy,fifo] [--json FILE]\n' +
    '                               [--fixed-length (max_tokens 64 in every scenario)]');
  process.exit(err ? 2 : 0);
}

const opts = parseArgs(process.argv.slice(2));

// ---------------------------------------------------------------- workload constants

const SLOTS = 8;
const TTFT_MS = 50;
const ITL_MS = 10;
const MAX_TOKENS = 64;
// Scenarios 2-4 draw each request's max_tokens uniformly from this range
// (mean 64). With one fixed length the deterministic simulator phase-locks
// the slots (see README: "Why variable lengths"). --fixed-length turns it off.
const VAR_TOKENS = [32, 96];
const SAMPLE_MS = 100;           // /sim/stats and backlog sampling period
const DRAIN_MS = 15000;          // after the run: how long streaming requests may finish
const STAGGER_MS = TTFT_MS + (MAX_TOKENS - 1) * ITL_MS; // spread stream starts over one service time
const LIGHT_THINK_MS = [100, 300]; // uniform think time of the light tenant

const TARGETS = { shareErrPp: 3, jain: 0.99, util: 0.97, lightP99Ratio: 2 };

// One tenant of a scenario. group weight = the tenant's weight (one tenant per
// group, hierarchical mode), so the group weights are what the scheduler uses.
//   streams: closed-loop concurrency; think: [min,max] ms between requests
//   backlogged: the tenant always has work queued (demand = infinity); else its
//   demand is its no-wait offered rate: max_tokens per (service time + mean think).
function tenant(name, weight, streams, think = null) {
  return { name, weight, streams, think, backlogged: !think };
}
const meanTokens = (sc) => (sc.tokens[0] + sc.tokens[1]) / 2;

const SCENARIOS = [
  {
    name: 'backlogged', mode: 'hierarchical',
    what: 'three backlogged tenants, group weights 1:2:4 (one tenant per group), 16 streams each',
    tokens: [MAX_TOKENS, MAX_TOKENS],
    tenants: [tenant('t1', 1, 16), tenant('t2', 2, 16), tenant('t4', 4, 16)],
  },
  {
    name: 'baseline', mode: 'hierarchical',
    what: 'noisy-neighbour baseline without C: A light (1 stream, think 100-300 ms), B 8 streams; weights 1:1',
    tokens: VAR_TOKENS,
    tenants: [tenant('A', 1, 1, LIGHT_THINK_MS), tenant('B', 1, 8)],
  },
  {
    name: 'noisy', mode: 'hierarchical',
    what: 'A light, B 8 streams, C noisy 80 streams (10x B); weights 1:1:1',
    tokens: VAR_TOKENS,
    tenants: [tenant('A', 1, 1, LIGHT_THINK_MS), tenant('B', 1, 8), tenant('C', 1, 80)],
  },
  {
    name: 'fifo', mode: 'fifo',
    what: 'the noisy workload under mode fifo (fair shares computed with weights 1:1:1)',
    tokens: VAR_TOKENS,
    tenants: [tenant('A', 1, 1, LIGHT_THINK_MS), tenant('B', 1, 8), tenant('C', 1, 80)],
  },
];

// ---------------------------------------------------------------- processes

const children = new Set();
const tmpdirs = new Set();
function cleanup() {
  for (const c of children) { try { c.kill('SIGKILL'); } catch {} }
  for (const d of tmpdirs) { try { rmSync(d, { recursive: true, force: true }); } catch {} }
}
process.on('exit', cleanup);
process.on('SIGINT', () => { cleanup(); process.exit(130); });
process.on('SIGTERM', () => { cleanup(); process.exit(143); });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => performance.now();

function startAndWait(cmd, args, re, which) {
  return new Promise((resolveP, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(p);
    // keep only the tail of the output (obleth logs one line per request)
    const out = { text: '', add(s) { this.text = (this.text + s).slice(-65536); } };
    p.out = out;
    let done = false;
    const timer = setTimeout(() => {
      if (!done) { done = true; p.kill('SIGKILL'); reject(new Error(`${cmd} not ready after 10 s:\n${out.text}`)); }
    }, 10000);
    let seen = '';
    const onData = (chunk) => {
      const s = chunk.toString();
      out.add(s);
      if (done) return;
      seen += s;
      const m = seen.match(re);
      if (m) { done = true; clearTimeout(timer); seen = ''; resolveP({ proc: p, match: m }); }
    };
    p.stdout.on('data', which === 'stdout' ? onData : (c) => out.add(c.toString()));
    p.stderr.on('data', which === 'stderr' ? onData : (c) => out.add(c.toString()));
    p.on('exit', (code, sig) => {
      children.delete(p);
      p.exitInfo = { code, sig };
      if (!done) { done = true; clearTimeout(timer); reject(new Error(`${cmd} exited (${code ?? sig}) before it was ready:\n${out.text}`)); }
    });
  });
}

async function stopProc(p) {
  if (p.exitInfo) return p.exitInfo;
  const exited = new Promise((r) => p.once('exit', (code, sig) => r({ code, sig })));
  p.kill('SIGTERM');
  let timer;
  const info = await Promise.race([exited, new Promise((r) => { timer = setTimeout(() => r(null), 10000); })]);
  clearTimeout(timer);
  if (info) return info;
  p.kill('SIGKILL');
  await exited;
  return { code: null, sig: 'SIGKILL (still running 10 s after SIGTERM)' };
}

// CPU seconds (user + system) of a child from /proc/PID/stat; null off Linux.
const CLK_TCK = 100;
function procCpuS(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLK_TCK; // fields 14, 15 (utime, stime)
  } catch { return null; }
}

async function startSim() {
  const args = ['--listen', '127.0.0.1:0', '--slots', String(SLOTS), '--ttft-ms', String(TTFT_MS),
    '--itl-ms', String(ITL_MS), '--max-tokens', String(MAX_TOKENS)];
  const { proc, match } = await startAndWait(OBLETH_SIM, args, /listening on (\S+):(\d+)/, 'stdout');
  return { proc, port: Number(match[2]), args };
}

function gatewayConfig(sc, simPort) {
  return {
    listeners: [{ address: '127.0.0.1:0' }],
    upstreams: [{ name: 'sim', endpoints: [`http://127.0.0.1:${simPort}`], max_inflight: SLOTS }],
    routes: [{ prefix: '/v1/', class: 'inference', upstream: 'sim' }],
    groups: sc.tenants.map((t) => ({ name: `g-${t.name}`, weight: t.weight })),
    tenants: sc.tenants.map((t) => ({
      name: t.name, group: `g-${t.name}`, weight: 1,
      keys: [{ id: `${t.name}-key`, secret: `sk-bench-${t.name}` }],
    })),
    admission: {
      mode: sc.mode, cost: 'tokens', default_max_tokens: MAX_TOKENS,
      queue_timeout_ms: 120000, // nothing may time out: FIFO waits are seconds long
    },
  };
}

async function startObleth(cfg) {
  const dir = mkdtempSync(join(tmpdir(), 'obleth-bench-'));
  tmpdirs.add(dir);
  const path = join(dir, 'obleth.json');
  writeFileSync(path, JSON.stringify(cfg, null, 2));
  const { proc, match } = await startAndWait(OBLETH, ['--config', path], /listening on (\S+):(\d+)/, 'stderr');
  return { proc, port: Number(match[2]), configPath: path };
}

// ---------------------------------------------------------------- stats helpers

function pct(sorted, p) {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))];
}

// Weighted max-min fair allocation of `capacity` (water-filling): items
// {weight, demand}; a demand below the current level is met in full and the
// rest is shared again among the others in proportion to weight.
function waterfill(capacity, items) {
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
// bench uses one tenant per group, so this equals the flat version; it is
// written out so that multi-tenant groups can be added to SCENARIOS.
function fairAlloc(capacity, tenants /* {group, gweight, weight, demand} */) {
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

function jain(xs) {
  const n = xs.length;
  if (!n) return NaN;
  const s = xs.reduce((a, b) => a + b, 0);
  const s2 = xs.reduce((a, b) => a + b * b, 0);
  return s2 > 0 ? (s * s) / (n * s2) : NaN;
}

// ---------------------------------------------------------------- clients

// The request body: same prompt for every tenant (so prompt tokens are equal
// and the scheduler's cost estimate, prompt + max_tokens, is the same).
function bodyFor(maxTokens) {
  const b = Buffer.from(JSON.stringify({
    model: 'sim-model',
    messages: [{ role: 'user', content: 'Write a short paragraph about fair queueing.' }],
    max_tokens: maxTokens,
    stream: true,
    stream_options: { include_usage: true },
  }));
  b.maxTokens = maxTokens;
  return b;
}

// Parse the usage chunk from the last bytes of an SSE body.
function usageFrom(tail) {
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

class TenantLoad {
  constructor(spec, port, run) {
    this.spec = spec;
    this.port = port;
    this.run = run;
    this.agent = new http.Agent({ keepAlive: true, maxSockets: spec.streams, maxFreeSockets: spec.streams });
    // one prepared body per possible max_tokens: no JSON work per request
    this.lengths = run.tokens;
    this.bodies = [];
    for (let n = run.tokens[0]; n <= run.tokens[1]; n++) this.bodies.push(bodyFor(n));
    this.auth = `Bearer sk-bench-${spec.name}`;
    this.live = new Set();     // requests in progress
    this.waiting = 0;          // sent, response head not yet received (queued in the gateway)
    this.done = [];            // finished request records
    this.errors = new Map();   // status or error text -> count
    this.sent = [];            // [send time, max_tokens] of every request: the offered load
  }

  error(what) { this.errors.set(what, (this.errors.get(what) || 0) + 1); }

  one() {
    return new Promise((resolveP) => {
      const body = this.bodies[Math.floor(Math.random() * this.bodies.length)];
      const rec = { tSent: now(), tHead: 0, tFirst: 0, tEnd: 0, status: 0, admission: null, queueMs: NaN, usage: null, tail: [], tailLen: 0 };
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
      const req = http.request({ host: '127.0.0.1', port: this.port, method: 'POST', path: '/v1/chat/completions',
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
          if (!rec.usage) { this.error('no usage chunk'); finish(false); return; }
          finish(true);
        });
        res.on('error', () => { if (!this.run.stopping) this.error('response error'); finish(false); });
        res.on('aborted', () => { if (!this.run.stopping) this.error('response aborted'); finish(false); });
      });
      req.on('error', (e) => { if (!this.run.stopping) this.error(e.code || e.message); finish(false); });
      req.end(body);
    });
  }

  async worker(startDelay) {
    await sleep(startDelay);
    while (!this.run.stopping) {
      await this.one();
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
      this.workers.push(this.worker(this.spec.streams > 1 ? Math.random() * STAGGER_MS : 0));
    }
  }

  // At the end of the run: requests that have produced no token yet are
  // cancelled (they cannot add service inside the measured windows); the
  // ones that are streaming finish, so their tokens before the end count.
  cancelUnstarted() {
    for (const rec of this.live) if (!rec.tFirst) rec.req.destroy();
  }

  cancelAll() {
    for (const rec of this.live) rec.req.destroy();
  }
}

// ---------------------------------------------------------------- one scenario

async function getJson(agent, port, path) {
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

async function runScenario(sc) {
  const W = opts.window * 1000;
  const nWin = Math.floor(opts.duration / opts.window);
  const durationMs = nWin * W;
  const sim = await startSim();
  const cfg = gatewayConfig(sc, sim.port);
  let gw;
  try { gw = await startObleth(cfg); } catch (e) { await stopProc(sim.proc); throw e; }

  const run = { stopping: false, tokens: sc.tokens };
  const loads = sc.tenants.map((t) => new TenantLoad(t, gw.port, run));
  const statsAgent = new http.Agent({ keepAlive: true, maxSockets: 1 });

  // per window: utilisation samples, sim queued max, per-tenant backlog samples
  const win = Array.from({ length: nWin }, () => ({ utilSum: 0, utilN: 0, simQueuedMax: 0, backlog: sc.tenants.map(() => 0), samples: 0 }));
  const statErrors = [];
  const simStart = await getJson(statsAgent, sim.port, '/sim/stats');

  const cpu0 = { gw: procCpuS(gw.proc.pid), sim: procCpuS(sim.proc.pid), me: process.cpuUsage() };
  const lag = monitorEventLoopDelay({ resolution: 10 });
  lag.enable();

  const t0 = now();
  const widx = (t) => Math.floor((t - t0) / W);
  for (const l of loads) l.start();

  // sampler: /sim/stats every 100 ms, and each tenant's "something queued" flag
  let sampling = true;
  const sampler = (async () => {
    let next = t0 + SAMPLE_MS / 2;
    while (sampling) {
      await sleep(Math.max(0, next - now()));
      next += SAMPLE_MS;
      const t = now();
      const w = widx(t);
      if (w >= nWin) break;
      const backlogged = loads.map((l) => l.waiting > 0);
      try {
        const st = await getJson(statsAgent, sim.port, '/sim/stats');
        const wi = win[w];
        wi.utilSum += st.in_flight / SLOTS;
        wi.utilN++;
        wi.simQueuedMax = Math.max(wi.simQueuedMax, st.queued);
        wi.samples++;
        backlogged.forEach((b, i) => { if (b) wi.backlog[i]++; });
      } catch (e) { statErrors.push(e.message); }
    }
  })();

  // progress dots to stderr so a long run visibly lives
  while (now() - t0 < durationMs) {
    await sleep(Math.min(1000, durationMs - (now() - t0)));
    process.stderr.write('.');
  }
  process.stderr.write('\n');
  const tStop = now();
  run.stopping = true;
  sampling = false;
  await sampler;
  for (const l of loads) l.cancelUnstarted();
  const drain = Promise.all(loads.flatMap((l) => l.workers));
  const drained = await Promise.race([drain.then(() => true), sleep(DRAIN_MS).then(() => false)]);
  if (!drained) for (const l of loads) l.cancelAll();
  await drain;

  lag.disable();
  const wall = (now() - t0) / 1000;
  const cpu = {
    gw: cpu0.gw != null ? (procCpuS(gw.proc.pid) - cpu0.gw) / wall : null,
    sim: cpu0.sim != null ? (procCpuS(sim.proc.pid) - cpu0.sim) / wall : null,
    me: (() => { const u = process.cpuUsage(cpu0.me); return (u.user + u.system) / 1e6 / wall; })(),
    lagP99Ms: lag.percentile(99) / 1e6,
    lagMaxMs: lag.max / 1e6,
  };
  let simEnd = null;
  try { simEnd = await getJson(statsAgent, sim.port, '/sim/stats'); } catch {}
  statsAgent.destroy();
  for (const l of loads) l.agent.destroy();
  const gwExit = await stopProc(gw.proc);
  const simExit = await stopProc(sim.proc);
  const sanitizer = /(ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:)/.test(gw.proc.out.text);

  // ---- per-window accounting
  const T = sc.tenants.length;
  const tokens = Array.from({ length: nWin }, () => new Array(T).fill(0));
  const waits = Array.from({ length: nWin }, () => Array.from({ length: T }, () => []));
  const heads = Array.from({ length: nWin }, () => Array.from({ length: T }, () => []));
  const fast = Array.from({ length: nWin }, () => new Array(T).fill(0));
  const count = Array.from({ length: nWin }, () => new Array(T).fill(0));
  const headerIssues = [];
  loads.forEach((l, ti) => {
    for (const r of l.done) {
      const n = r.usage.completion_tokens;
      // token k (1..n) is credited at tFirst + (k-1)/(n-1) * (tEnd - tFirst):
      // the simulator emits one token per ITL between the first data chunk and the usage chunk.
      const span = n > 1 ? (r.tEnd - r.tFirst) / (n - 1) : 0;
      for (let k = 0; k < n; k++) {
        const w = widx(r.tFirst + k * span);
        if (w >= 0 && w < nWin && r.tFirst + k * span < tStop) tokens[w][ti]++;
      }
      if (!Number.isFinite(r.queueMs) || !r.admission) {
        if (headerIssues.length < 5) headerIssues.push(`${sc.tenants[ti].name}: admission=${r.admission} queue-ms=${r.queueMs}`);
        continue;
      }
      // queue wait is attributed to the window of the grant (sent + wait)
      const w = widx(r.tSent + r.queueMs);
      if (w >= 0 && w < nWin) {
        waits[w][ti].push(r.queueMs);
        heads[w][ti].push(r.tHead - r.tSent);
        count[w][ti]++;
        if (r.admission === 'fast') fast[w][ti]++;
      }
    }
  });

  // Demand. A backlogged tenant: infinite. A tenant that is not: the tokens it
  // asked for, placed where they would have been produced had every request
  // been granted on arrival (token k of a request sent at s at
  // s + TTFT + (k-1) * ITL). Its service can only fall short of that by what
  // is still queued, so a scheduler that serves it promptly scores ~0 error.
  const demand = Array.from({ length: nWin }, () => sc.tenants.map((t) => (t.backlogged ? Infinity : 0)));
  loads.forEach((l, ti) => {
    if (sc.tenants[ti].backlogged) return;
    for (const [s, n] of l.sent) for (let k = 0; k < n; k++) {
      const t = s + TTFT_MS + k * ITL_MS;
      const w = widx(t);
      if (w >= 0 && w < nWin && t < tStop) demand[w][ti]++;
    }
  });
  // what a light tenant would get per window if it never waited: max_tokens
  // per (service time + mean think time); to report its throughput loss
  const serviceMs = TTFT_MS + (meanTokens(sc) - 1) * ITL_MS;
  const nominal = sc.tenants.map((t) => (t.backlogged ? Infinity
    : (meanTokens(sc) * t.streams * W) / (serviceMs + (t.think[0] + t.think[1]) / 2)));

  const windows = [];
  for (let w = 0; w < nWin; w++) {
    const total = tokens[w].reduce((a, b) => a + b, 0);
    const alloc = fairAlloc(total, sc.tenants.map((t, i) => ({ group: `g-${t.name}`, gweight: t.weight, weight: 1, demand: demand[w][i] })));
    const rows = sc.tenants.map((t, i) => {
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
      util: win[w].utilN ? win[w].utilSum / win[w].utilN : NaN, simQueuedMax: win[w].simQueuedMax, samples: win[w].samples,
    });
  }

  // per tenant over all measured windows (warm-up excluded)
  const overall = sc.tenants.map((t, i) => {
    const ws = [], hs = [];
    let n = 0, f = 0;
    for (let w = 1; w < nWin; w++) { ws.push(...waits[w][i]); hs.push(...heads[w][i]); n += count[w][i]; f += fast[w][i]; }
    ws.sort((a, b) => a - b);
    hs.sort((a, b) => a - b);
    return {
      tenant: t.name, n, fast: f, qP50: pct(ws, 0.5), qP99: pct(ws, 0.99), qMax: ws.length ? ws[ws.length - 1] : NaN,
      headP50: pct(hs, 0.5), headP99: pct(hs, 0.99),
      errors: Object.fromEntries(loads[i].errors),
    };
  });

  return {
    name: sc.name, mode: sc.mode, what: sc.what, maxTokens: sc.tokens, tenants: sc.tenants, windows, overall, cpu,
    simRequests: simEnd ? simEnd.requests - simStart.requests : null,
    simCompleted: simEnd ? simEnd.completed - simStart.completed : null,
    gwExit, simExit, sanitizer, statErrors: statErrors.length, headerIssues,
    gwTail: gwExit.code === 0 && !sanitizer ? '' : gw.proc.out.text.slice(-3000),
  };
}

// ---------------------------------------------------------------- output

const f1 = (x) => (Number.isFinite(x) ? x.toFixed(1) : '-');
const f4 = (x) => (Number.isFinite(x) ? x.toFixed(4) : '-');
const ms = (x) => (Number.isFinite(x) ? String(Math.round(x)) : '-');
const pad = (s, n) => String(s).padStart(n);
const padr = (s, n) => String(s).padEnd(n);

function printScenario(r) {
  const mt = r.maxTokens[0] === r.maxTokens[1] ? `max_tokens ${r.maxTokens[0]}` : `max_tokens uniform ${r.maxTokens[0]}..${r.maxTokens[1]}`;
  console.log(`\n== ${r.name} (mode ${r.mode}): ${r.what}; ${mt}`);
  console.log(`   ${pad('win', 3)} ${padr('tenant', 6)} ${pad('w', 2)} ${pad('demand', 7)} ${pad('tokens', 6)} ${pad('share%', 6)} ${pad('fair%', 6)} ${pad('err pp', 6)} ` +
    `${pad('reqs', 4)} ${pad('fast', 4)} ${pad('q p50', 6)} ${pad('q p99', 6)} ${pad('backlog', 7)}`);
  for (const w of r.windows) {
    const label = `${w.index * opts.window}-${(w.index + 1) * opts.window}s`;
    w.rows.forEach((t, i) => {
      console.log(`   ${pad(i === 0 ? w.index : '', 3)} ${padr(t.tenant, 6)} ${pad(t.weight, 2)} ${pad(Number.isFinite(t.demand) ? Math.round(t.demand) : 'inf', 7)} ` +
        `${pad(t.tokens, 6)} ${pad(f1(t.share * 100), 6)} ${pad(f1(t.fair * 100), 6)} ${pad(f1(t.errPp), 6)} ` +
        `${pad(t.n, 4)} ${pad(t.fast, 4)} ${pad(ms(t.qP50), 6)} ${pad(ms(t.qP99), 6)} ${pad(f1(t.backlog * 100) + '%', 7)}`);
    });
    console.log(`   ${pad('', 3)} ${label}${w.warmup ? ' (warm-up, not scored)' : ''}: ${w.total} tokens, Jain ${f4(w.jain)}, ` +
      `utilisation ${f1(w.util * 100)}% (${w.samples} samples), sim queued max ${w.simQueuedMax}`);
  }
  console.log('   whole run (windows 1..): tenant  reqs  fast  queue-ms p50/p99/max  client head-latency p50/p99  errors');
  for (const o of r.overall) {
    const errs = Object.entries(o.errors).map(([k, v]) => `${k} x${v}`).join(', ') || '-';
    console.log(`   ${pad('', 24)} ${padr(o.tenant, 6)} ${pad(o.n, 5)} ${pad(o.fast, 5)}  ${pad(`${ms(o.qP50)}/${ms(o.qP99)}/${ms(o.qMax)}`, 20)}  ` +
      `${pad(`${ms(o.headP50)}/${ms(o.headP99)}`, 26)}  ${errs}`);
  }
  const c = r.cpu;
  const pc = (x) => (x == null ? '?' : `${Math.round(x * 100)}%`);
  console.log(`   CPU (of one core): obleth ${pc(c.gw)}, obleth-sim ${pc(c.sim)}, bench client ${pc(c.me)}; ` +
    `client event-loop lag p99 ${c.lagP99Ms.toFixed(1)} ms (max ${c.lagMaxMs.toFixed(1)} ms)`);
  console.log(`   simulator: ${r.simRequests} requests received, ${r.simCompleted} completed; ` +
    `obleth exit ${r.gwExit.code ?? r.gwExit.sig}${r.sanitizer ? ' SANITIZER REPORT' : ''}; sim exit ${r.simExit.code ?? r.simExit.sig}` +
    (r.statErrors ? `; ${r.statErrors} /sim/stats samples failed` : ''));
  if (r.headerIssues.length) console.log(`   responses without admission headers, e.g. ${r.headerIssues.join('; ')}`);
  if (r.gwTail) console.log(`   obleth output tail:\n${r.gwTail.replace(/^/gm, '     | ')}`);
}

function scored(r) { return r.windows.filter((w) => !w.warmup); }
const w0nominal = (ws, i) => ws[0].rows[i].nominal;

function summary(results) {
  const by = Object.fromEntries(results.map((r) => [r.name, r]));
  const lines = [];
  const verdicts = [];
  const line = (ok, text) => {
    const v = ok === null ? 'n/a ' : ok ? 'PASS' : 'MISS';
    verdicts.push({ verdict: v.trim(), text });
    lines.push(`  ${v}  ${text}`);
  };
  console.log('\n== summary against the targets (warm-up window excluded)');
  for (const name of ['backlogged', 'baseline', 'noisy']) {
    const r = by[name];
    if (!r) continue;
    const ws = scored(r);
    // share target: "while tenants are backlogged each share within 3 % of its
    // fair share": the backlogged tenants (demand inf), every scored window.
    // The light tenant's error is printed as information (see README).
    let maxErr = 0, maxRel = 0, where = '', lightErr = 0;
    for (const w of ws) w.rows.forEach((t, i) => {
      if (!r.tenants[i].backlogged) { lightErr = Math.max(lightErr, t.errPp); return; }
      if (t.errPp > maxErr) { maxErr = t.errPp; where = `${t.tenant} in window ${w.index}`; }
      if (t.relErr > maxRel) maxRel = t.relErr;
    });
    line(maxErr <= TARGETS.shareErrPp, `${name}: backlogged tenants' shares within ${TARGETS.shareErrPp} pp of their fair shares — max error ${f1(maxErr)} pp (${where}); ` +
      `max relative error ${f1(maxRel * 100)}% of the fair share`);
    r.tenants.forEach((t, i) => {
      if (t.backlogged) return;
      const got = ws.reduce((a, w) => a + w.rows[i].tokens, 0) / ws.length;
      lines.push(`  info  ${name}: light tenant ${t.name}: largest share error ${f1(lightErr)} pp; ${Math.round(got)} tokens per window = ` +
        `${f1((100 * got) / w0nominal(ws, i))}% of what it would get if it never waited (${Math.round(w0nominal(ws, i))})`);
    });
    const minJ = Math.min(...ws.map((w) => w.jain));
    line(minJ >= TARGETS.jain, `${name}: Jain >= ${TARGETS.jain} in every window — min ${f4(minJ)}`);
    const minU = Math.min(...ws.map((w) => w.util));
    const meanU = ws.reduce((s, w) => s + w.util, 0) / ws.length;
    line(minU >= TARGETS.util, `${name}: utilisation >= ${TARGETS.util * 100}% in every window — min ${f1(minU * 100)}%, mean ${f1(meanU * 100)}%`);
  }
  const light = (r) => r && r.overall.find((o) => o.tenant === 'A');
  const base = light(by.baseline);
  for (const name of ['noisy', 'fifo']) {
    const o = light(by[name]);
    if (!o || !base) continue;
    const ratio = o.qP99 / base.qP99;
    const ok = o.qP99 <= TARGETS.lightP99Ratio * base.qP99;
    const text = `${name}: light tenant's p99 queue wait with the 10x neighbour within ${TARGETS.lightP99Ratio}x of the baseline — ` +
      `${ms(o.qP99)} ms vs ${ms(base.qP99)} ms (${Number.isFinite(ratio) ? ratio.toFixed(2) + 'x' : 'n/a'}; p50 ${ms(o.qP50)} vs ${ms(base.qP50)} ms; ` +
      `${o.n} vs ${base.n} samples)`;
    if (name === 'noisy') line(ok, text);
    else lines.push(`  ref   ${text}`);
  }
  const fifo = by.fifo;
  if (fifo) {
    const ws = scored(fifo);
    const maxErr = Math.max(...ws.flatMap((w) => w.rows.map((t) => t.errPp)));
    const minJ = Math.min(...ws.map((w) => w.jain));
    const meanU = ws.reduce((s, w) => s + w.util, 0) / ws.length;
    lines.push(`  ref   fifo (the baseline the fair modes are compared against): max share error ${f1(maxErr)} pp, ` +
      `min Jain ${f4(minJ)}, mean utilisation ${f1(meanU * 100)}%`);
  }
  for (const l of lines) console.log(l);
  const bad = results.filter((r) => r.gwExit.code !== 0 || r.sanitizer || r.overall.some((o) => Object.keys(o.errors).length));
  if (bad.length) console.log(`  note: errors or an unclean obleth exit in: ${bad.map((r) => r.name).join(', ')} (see the scenario tables)`);
  return verdicts;
}

// ---------------------------------------------------------------- main

async function main() {
  for (const [what, p] of [['OBLETH', OBLETH], ['OBLETH_SIM', OBLETH_SIM]]) {
    if (!existsSync(p)) { console.error(`${what}: ${p} does not exist (build with ninja -C build, or set ${what})`); process.exit(1); }
  }
  const list = opts.only ? SCENARIOS.filter((s) => opts.only.includes(s.name)) : SCENARIOS;
  if (opts.fixed) for (const sc of SCENARIOS) sc.tokens = [MAX_TOKENS, MAX_TOKENS];
  if (opts.only && list.length !== opts.only.length) usage(`--only: known scenarios are ${SCENARIOS.map((s) => s.name).join(', ')}`);
  let model = '?';
  try { model = (readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*:\s*(.*)/) || [])[1] || cpus()[0]?.model || '?'; } catch {}
  console.log(`obleth fairness benchmark: ${opts.duration} s per scenario, ${opts.window} s windows (window 0 is warm-up)`);
  console.log(`machine: ${cpus().length} CPUs (${model}), ${(totalmem() / 2 ** 30).toFixed(1)} GiB, node ${process.version}`);
  console.log(`backend: obleth-sim --slots ${SLOTS} --ttft-ms ${TTFT_MS} --itl-ms ${ITL_MS} --max-tokens ${MAX_TOKENS}; ` +
    `obleth upstream max_inflight ${SLOTS}, cost tokens; every request: streaming chat with include_usage`);
  console.log(`binaries: ${OBLETH}\n          ${OBLETH_SIM}`);
  const results = [];
  for (const sc of list) {
    process.stderr.write(`running ${sc.name} `);
    const r = await runScenario(sc);
    printScenario(r);
    results.push(r);
  }
  const verdicts = summary(results);
  if (opts.json) {
    writeFileSync(opts.json, JSON.stringify({ opts, results: results.map(({ gwTail, ...r }) => r), verdicts }, (k, v) =>
      (v === Infinity ? 'inf' : v), 2));
    console.log(`\nresults written to ${opts.json}`);
  }
}

main().then(() => process.exit(0), (e) => { console.error(e.stack || String(e)); process.exit(1); });
