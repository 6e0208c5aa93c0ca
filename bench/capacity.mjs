#!/usr/bin/env node
// Capacity benchmark (issue 17): upstream max_inflight "auto" against static
// limits, on one workload whose cost per request moves.
//
//   node bench/capacity.mjs [--quick] [--phase S (12)] [--window S (3)] [--warmup S (12)]
//                           [--only static-short,static-long,auto,auto-latency] [--json FILE]
//
// Per gateway setting a fresh obleth-sim (--slots 64, a KV cache in which
// ~32 short or ~6 long sequences fit) and a fresh obleth; three backlogged
// tenants, weights 1:2:4, 32 closed-loop streaming clients each. After a
// --warmup of short chats (not scored; the controller's cold start, which is
// reported), phases of --phase seconds: short chats, long-context requests (10x the prompt),
// mixed (half and half), then the same mix after POST /sim/config halves the
// slots and the KV cache. At each workload change the requests still queued
// in the gateway are cancelled and re-sent as the new kind (their streams
// carry on at once), so a phase is not spent draining the last one's queue.
// Settings, one after the other on the same workload: static max_inflight
// sized for the short phase, static sized for the long phase, "auto" with
// the simulator's /metrics, "auto" against a simulator without /metrics
// (--no-metrics: latency only).
//
// The first --window of each phase is its transition and is not scored.
// Per phase: the backend's running sequences and KV usage (/sim/stats every
// 50 ms) against the best static setting for that phase, its own waiting
// queue (mean, p99), preemptions, output tokens per second, fairness over
// the phase (share error, Jain; output tokens credited as produced),
// client-side time to first token p50 / p99 per tenant, and the time from
// the gateway's grant to the first token; for "auto" the gateway's limit
// (/admin/fairshare) and, after the halving, the time to re-converge.
// Prints PASS / MISS against the issue's targets; exits 0 once it has run
// (1 only when something does not start). See bench/README.md.
//
// Fairness is scored in the unit the gateway charges (cost "tokens":
// prompt + completion tokens of each response, credited as its tokens are
// produced); the same in output tokens only is printed beside it.
import http from 'node:http';
import { writeFileSync } from 'node:fs';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import {
  parseArgs, list, workDir, stop, fail, requireBinaries, startSim, startObleth, freePort, pct, mean, mdTable, machine,
  treeCpuSeconds, OBLETH, OBLETH_SIM, now, fairConfig, fairAlloc, jain, streamBody, TenantLoad, getJson, driveLoad, scoreRun,
  f1, f4, fmtMs,
} from './lib.mjs';

const SETTINGS = ['static-short', 'static-long', 'auto', 'auto-latency'];
const USAGE = 'node bench/capacity.mjs [--quick] [--phase S (12)] [--window S (3)] [--warmup S (12)] ' +
  `[--only ${SETTINGS.join(',')}] [--json FILE]`;
const opt = parseArgs({ phase: 12, window: 3, warmup: 12, only: SETTINGS, json: null, quick: false }, {
  '--quick': (o) => { o.quick = true; },
  '--phase': ['phase', Number],
  '--window': ['window', Number],
  '--warmup': ['warmup', Number],
  '--only': ['only', list],
  '--json': ['json', String],
  '--help': () => { console.log(`usage: ${USAGE}`); process.exit(0); },
}, USAGE);
if (opt.quick) { opt.phase = 6; opt.window = 2; opt.warmup = 2; }
// static-N: any other static max_inflight, to see what each value trades (a sweep)
const isStaticN = (s) => /^static-[1-9][0-9]*$/.test(s);
for (const s of opt.only) if (!SETTINGS.includes(s) && !isStaticN(s)) fail(`--only: known settings are ${SETTINGS.join(', ')}, static-N`);
if (!(opt.window > 0) || opt.phase < 2 * opt.window || (opt.phase * 1000) % (opt.window * 1000))
  fail('--phase must be a whole number of windows, at least two (the first of each phase is not scored)');
if (!(opt.warmup >= 0) || (opt.warmup * 1000) % (opt.window * 1000)) fail('--warmup must be a whole number of windows');

// ---------------------------------------------------------------- set-up

// The backend. A short chat holds SHORT_PROMPT tokens plus what it has
// generated (max_tokens uniform 32..96: 32 on average over its life), a long
// one 10x the prompt: in KV_TOKENS about 2048 / (32 + 32) = 32 short or
// 2048 / (320 + 32) = 5.8 long sequences fit. SLOTS (vLLM's max_num_seqs)
// never binds: the KV cache does, in every phase.
const SIM = { slots: 64, kvTokens: 2048, ttftMs: 50, itlMs: 10, maxTokens: 64 };
const TOKENS = [32, 96];
const SHORT_PROMPT = 32;                        // tokens (the simulator counts 4 characters a token)
const LONG_PROMPT = 10 * SHORT_PROMPT;
const MEAN_GEN = (TOKENS[0] + TOKENS[1]) / 4;   // tokens generated so far, on average over a sequence's life
const FIT_SHORT = Math.round(SIM.kvTokens / (SHORT_PROMPT + MEAN_GEN));   // 32
const FIT_LONG = Math.round(SIM.kvTokens / (LONG_PROMPT + MEAN_GEN));     // 6
const simArgs = (metrics) => ['--slots', String(SIM.slots), '--kv-tokens', String(SIM.kvTokens), '--ttft-ms', String(SIM.ttftMs),
  '--itl-ms', String(SIM.itlMs), '--max-tokens', String(SIM.maxTokens), ...(metrics ? [] : ['--no-metrics'])];

// phases: the fraction of long requests, and whether the capacity is halved at its start
const PHASES = [
  { name: 'short', long: 0 },
  { name: 'long', long: 1 },
  { name: 'mixed', long: 0.5 },
  { name: 'halved', long: 0.5, halve: true },
];
const HALF = { slots: SIM.slots / 2, kv_tokens: SIM.kvTokens / 2 };

const STREAMS = 32;                              // per tenant: more than the weight-4 tenant's share of any limit here
const TENANTS = [['t1', 1], ['t2', 2], ['t4', 4]].map(([name, weight]) => ({ name, weight, streams: STREAMS, think: null, backlogged: true }));
const SAMPLE_MS = 50;
const DRAIN_MS = 15000;

const CONFIGS = {
  'static-short': { maxInflight: FIT_SHORT, metrics: true, what: `static max_inflight ${FIT_SHORT} (what fits of the short chats)` },
  'static-long': { maxInflight: FIT_LONG, metrics: true, what: `static max_inflight ${FIT_LONG} (what fits of the long requests)` },
  auto: { maxInflight: 'auto', metrics: true, what: 'max_inflight "auto", capacity defaults, the simulator\'s /metrics' },
  'auto-latency': { maxInflight: 'auto', metrics: false, what: 'max_inflight "auto", capacity defaults, obleth-sim --no-metrics (latency only)' },
};
for (const s of opt.only.filter(isStaticN)) {
  const n = Number(s.slice(7));
  CONFIGS[s] = { maxInflight: n, metrics: true, what: `static max_inflight ${n}` };
}

const TARGETS = {
  auto: { util: 0.95, waitingMean: 0.5, shareErrPp: 3, jain: 0.99, reconvergeMs: 2000 },
  'auto-latency': { util: 0.85, shareErrPp: 5 },
};

// A user message of `tokens` tokens in the simulator's estimate (4 characters each).
const prompt = (tokens) => 'Summarise the following notes on fair queueing. '.repeat(Math.ceil((4 * tokens) / 48)).slice(0, 4 * tokens);
const BODIES = {
  short: Array.from({ length: TOKENS[1] - TOKENS[0] + 1 }, (_, i) => streamBody(TOKENS[0] + i, prompt(SHORT_PROMPT))),
  long: Array.from({ length: TOKENS[1] - TOKENS[0] + 1 }, (_, i) => streamBody(TOKENS[0] + i, prompt(LONG_PROMPT))),
};
const pick = (xs) => xs[Math.floor(Math.random() * xs.length)];

const dir = workDir('obleth-capacity-');

// ---------------------------------------------------------------- one setting

async function runSetting(name) {
  const c = CONFIGS[name];
  process.stderr.write(`running ${name} `);
  const P = opt.phase * 1000, W = opt.window * 1000, WU = opt.warmup * 1000;
  const nWin = (WU + PHASES.length * P) / W;
  const sim = await startSim(dir, simArgs(c.metrics), { name: `sim-${name}` });
  const admin = await freePort();
  const cfg = { ...fairConfig({ tenants: TENANTS, simUrl: sim.url, maxInflight: c.maxInflight }), admin: { address: `127.0.0.1:${admin}` } };
  cfg.admission.default_max_tokens = SIM.maxTokens;
  const gw = await startObleth(dir, cfg, { name: `obleth-${name}` });

  const run = { stopping: false, tokens: TOKENS, staggerMs: SIM.ttftMs + (SIM.maxTokens - 1) * SIM.itlMs, phase: 0 };
  run.body = () => pick(Math.random() < PHASES[run.phase].long ? BODIES.long : BODIES.short);
  const loads = TENANTS.map((t) => new TenantLoad(t, [gw.port], run));
  const statsAgent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const adminAgent = new http.Agent({ keepAlive: true, maxSockets: 1 });

  const samples = [];   // {t, running, waiting, kvUsed, kvTotal, preemptions, limit, source}
  const marks = [];     // {phase, t}: when each phase's switch happened
  const onSample = async (st, t) => {
    let cap = null;
    try { cap = (await getJson(adminAgent, admin, '/admin/fairshare')).pools?.[0]?.capacity?.[0] ?? null; } catch {}
    samples.push({ t, running: st.running, waiting: st.waiting, kvUsed: st.kv_tokens_used, kvTotal: st.kv_tokens_total,
      preemptions: st.preemptions, limit: cap ? cap.limit : c.maxInflight, source: cap ? cap.source : 'static' });
  };
  const events = PHASES.map((ph, k) => ({
    at: WU + k * P,
    fn: async () => {
      if (k === 0) { marks.push({ phase: k, t: now() }); return; }   // the warm-up's workload goes on
      run.phase = k;
      if (ph.halve) {
        const r = await fetch(`${sim.url}/sim/config`, { method: 'POST', body: JSON.stringify(HALF) });
        if (r.status !== 200) fail(`POST /sim/config: ${r.status} ${await r.text()}`);
      } else {
        for (const l of loads) l.cancelQueued();
      }
      marks.push({ phase: k, t: now() });
      process.stderr.write(ph.halve ? '/' : '|');
    },
  }));
  const cpu0 = { gw: treeCpuSeconds(gw.proc.pid), sim: treeCpuSeconds(sim.proc.pid), me: process.cpuUsage() };
  const lag = monitorEventLoopDelay({ resolution: 10 });
  lag.enable();
  const { t0, tStop, win, statErrors } = await driveLoad({ loads, run, simPort: sim.port, slots: SIM.slots, W, nWin, statsAgent,
    sampleMs: SAMPLE_MS, drainMs: DRAIN_MS, events, onSample });
  lag.disable();
  const wall = (now() - t0) / 1000;
  const cpu = {
    gw: (treeCpuSeconds(gw.proc.pid) - cpu0.gw) / wall, sim: (treeCpuSeconds(sim.proc.pid) - cpu0.sim) / wall,
    me: (() => { const u = process.cpuUsage(cpu0.me); return (u.user + u.system) / 1e6 / wall; })(), lagP99Ms: lag.percentile(99) / 1e6,
  };
  statsAgent.destroy();
  adminAgent.destroy();
  for (const l of loads) l.agent.destroy();
  const gwExit = await stop(gw.proc);
  await stop(sim.proc);

  const score = (unit) => scoreRun({ tenants: TENANTS, loads, t0, tStop, W, nWin, win, ttftMs: SIM.ttftMs, itlMs: SIM.itlMs, tokens: TOKENS, unit });
  const scored = score('total'), scoredOut = score('output');
  const r = {
    name, what: c.what, maxInflight: c.maxInflight, metrics: c.metrics,
    phases: PHASES.map((ph, k) => phaseStats({ k, ph, t0: t0 + WU, W, P, samples, scored, scoredOut, loads, wOff: WU / W })),
    reconverge: null, marks: marks.map((m) => ({ phase: PHASES[m.phase].name, atMs: m.t - t0 })),
    cancelled: loads.map((l) => l.cancelled), errors: loads.map((l) => Object.fromEntries(l.errors)),
    cpu, statErrors: statErrors.length, gwExit: gwExit.code ?? gwExit.sig, samples: samples.length,
    windows: scored.windows.map((w) => ({ index: w.index, total: w.total, tokens: w.rows.map((x) => x.tokens), backlog: w.rows.map((x) => x.backlog) })),
  };
  const halving = marks.find((m) => PHASES[m.phase].halve);
  if (halving) r.reconverge = reconvergence(samples, halving.t, t0 + WU + PHASES.length * P, r.phases[PHASES.length - 1], W);
  r.coldStart = coldStart(samples, t0, r.phases[0]);
  r.trace = samples.filter((_, i) => i % 2 === 0).map((s) => [Math.round(s.t - t0), s.running, s.waiting, s.kvUsed, s.limit]);
  printSetting(r);
  return r;
}

// Service shares of the scored windows ws (scoreRun windows) against 1:2:4.
function shareStats(ws) {
  const tokens = TENANTS.map((_, i) => ws.reduce((a, w) => a + w.rows[i].tokens, 0));
  const total = tokens.reduce((a, b) => a + b, 0);
  const fair = fairAlloc(total, TENANTS.map((t) => ({ group: `g-${t.name}`, gweight: t.weight, weight: 1, demand: Infinity }))).map((x) => x / total);
  const shares = tokens.map((x) => (total ? x / total : NaN));
  const errPp = shares.map((s, i) => Math.abs(s - fair[i]) * 100);
  return { total, tokens, shares, errPp, maxErrPp: Math.max(...errPp), jain: jain(shares.map((s, i) => s / fair[i])),
    winErrPp: Math.max(...ws.flatMap((w) => w.rows.map((x) => x.errPp))) };
}

// The scored part of phase k: [start + W, end); t0 is the end of the warm-up,
// wOff the number of warm-up windows.
function phaseStats({ k, ph, t0, P, W, samples, scored, scoredOut, loads, wOff }) {
  const from = t0 + k * P + W, to = t0 + (k + 1) * P;
  const ss = samples.filter((s) => s.t >= from && s.t < to);
  const all = samples.filter((s) => s.t >= t0 + k * P && s.t < to);
  const waits = ss.map((s) => s.waiting).sort((a, b) => a - b);
  const limits = ss.map((s) => s.limit).filter(Number.isFinite);
  // service credited to the scored windows of the phase: prompt + completion tokens, and output tokens only
  const inPhase = (w) => (w.index - wOff) * W >= k * P + W && (w.index - wOff + 1) * W <= (k + 1) * P;
  const ws = scored.windows.filter(inPhase);
  const sh = shareStats(ws), out = shareStats(scoredOut.windows.filter(inPhase));
  const outTokens = out.total;
  // time to first token of the requests whose first token came in the span
  const recs = loads.map((l) => l.done.filter((x) => x.tFirst >= from && x.tFirst < to));
  const sorted = (xs) => xs.sort((a, b) => a - b);
  const ttft = recs.map((rs) => sorted(rs.map((x) => x.tFirst - x.tSent)));
  const grant = sorted(recs.flat().filter((x) => Number.isFinite(x.queueMs)).map((x) => x.tFirst - x.tSent - x.queueMs));
  return {
    name: ph.name, long: ph.long, spanS: (to - from) / 1000,
    running: mean(ss.map((s) => s.running)), kv: mean(ss.map((s) => s.kvUsed / s.kvTotal)),
    waitingMean: mean(ss.map((s) => s.waiting)), waitingP99: pct(waits, 0.99), waitingMax: waits[waits.length - 1],
    preemptions: ss.length ? ss[ss.length - 1].preemptions - ss[0].preemptions : NaN,
    preemptionsPhase: all.length ? all[all.length - 1].preemptions - all[0].preemptions : NaN,
    tokensPerS: outTokens / ((to - from) / 1000), ...sh,
    out: { shares: out.shares, maxErrPp: out.maxErrPp, jain: out.jain },
    backlogMin: Math.min(...ws.flatMap((w) => w.rows.map((x) => x.backlog))),
    ttft: ttft.map((xs) => ({ n: xs.length, p50: pct(xs, 0.5), p99: pct(xs, 0.99) })),
    grant: { n: grant.length, p50: pct(grant, 0.5), p99: pct(grant, 0.99) },
    limit: limits.length ? { mean: mean(limits), min: Math.min(...limits), max: Math.max(...limits) } : null,
    samples: ss.length,
  };
}

// After the halving at tH. Re-converged: the start of the first 1 s span
// in which the backend's waiting mean is back within the target (<= 0.5)
// and the gateway's limit stays inside the range it keeps over the halved
// phase's scored span (its new level, probes included). Stricter, printed
// beside it: the same span must also hold the KV usage at >= 95 % of the
// scored span's mean (the backend as full as it will be). Also: when the
// limit first entered that range.
function reconvergence(samples, tH, tEnd, ph, W) {
  const after = samples.filter((s) => s.t >= tH && s.t < tEnd);
  const before = samples.filter((s) => s.t >= tH - 1000 && s.t < tH);
  const inRange = (x) => !ph.limit || (x.limit >= ph.limit.min && x.limit <= ph.limit.max);
  let at = NaN, strict = NaN;
  for (const s of after) {
    const span = after.filter((x) => x.t >= s.t && x.t < s.t + 1000);
    if (span[span.length - 1].t < s.t + 900) break;
    const ok = mean(span.map((x) => x.waiting)) <= 0.5 && span.every(inRange);
    if (ok && Number.isNaN(at)) at = s.t - tH;
    if (ok && mean(span.map((x) => x.kvUsed / x.kvTotal)) >= 0.95 * ph.kv) { strict = s.t - tH; break; }
  }
  const down = after.find(inRange);
  return {
    ms: at, strictMs: strict, limitBefore: before.length ? mean(before.map((s) => s.limit)) : NaN, limitAfter: ph.limit?.mean ?? NaN,
    limitRange: ph.limit ? [ph.limit.min, ph.limit.max] : null, limitInMs: down ? down.t - tH : NaN,
    waitingMax: Math.max(...after.filter((s) => s.t < tH + W).map((s) => s.waiting)),
  };
}

// The controller's cold start: from the start of the run to the first 1 s
// whose mean running count reaches 90 % of the short phase's scored mean.
function coldStart(samples, t0, ph) {
  for (const s of samples) {
    const span = samples.filter((x) => x.t >= s.t && x.t < s.t + 1000);
    if (span[span.length - 1].t < s.t + 900) break;
    if (mean(span.map((x) => x.running)) >= 0.9 * ph.running) return s.t - t0;
  }
  return NaN;
}

// ---------------------------------------------------------------- output

const pc = (x) => (Number.isFinite(x) ? `${Math.round(x * 100)}%` : '-');
const f2 = (x) => (Number.isFinite(x) ? x.toFixed(2) : '-');
const ttftCell = (t) => `${fmtMs(t.p50)}/${fmtMs(t.p99)}`;
const limitCell = (l) => (l ? `${f1(l.mean)} (${l.min}-${l.max})` : '-');

function printSetting(r) {
  console.log(`\n== ${r.name}: ${r.what}`);
  console.log(mdTable(['phase', 'running', 'KV used', 'out tokens/s', 'waiting mean / p99 / max', 'preempt', 'shares t1/t2/t4 %', 'err pp (window max)',
    'Jain', 'output only: err pp, Jain', 'backlog min', 'TTFT ms p50/p99 t1 · t2 · t4', 'grant→token p50/p99', 'limit mean (range)'],
  r.phases.map((p) => [p.name, f1(p.running), pc(p.kv), Math.round(p.tokensPerS), `${f2(p.waitingMean)} / ${p.waitingP99} / ${p.waitingMax}`,
    `${p.preemptions} (${p.preemptionsPhase})`, p.shares.map((s) => f1(s * 100)).join(' / '), `${f1(p.maxErrPp)} (${f1(p.winErrPp)})`,
    f4(p.jain), `${f1(p.out.maxErrPp)}, ${f4(p.out.jain)}`, pc(p.backlogMin), p.ttft.map(ttftCell).join(' · '), ttftCell(p.grant), limitCell(p.limit)])));
  console.log(`   cold start: running at 90% of the short phase's mean (${f1(0.9 * r.phases[0].running)}) from +${fmtMs(r.coldStart)} ms (warm-up ${opt.warmup} s, not scored)`);
  if (r.reconverge) {
    const x = r.reconverge;
    console.log(`   halving: limit ${f1(x.limitBefore)} (mean of the second before) -> ${f1(x.limitAfter)} (scored mean, range ${x.limitRange?.join('-')}), ` +
      `in that range from +${fmtMs(x.limitInMs)} ms; backend waiting up to ${x.waitingMax} in the first window; re-converged (1 s with waiting mean <= 0.5, ` +
      `limit in range) from +${fmtMs(x.ms)} ms; with KV >= 95% of the scored mean too from +${fmtMs(x.strictMs)} ms`);
  }
  const errs = r.errors.map((e, i) => Object.entries(e).map(([k, v]) => `${TENANTS[i].name} ${k} x${v}`).join(', ')).filter(Boolean).join('; ') || 'none';
  console.log(`   preemptions: in the scored span (in the whole phase); cancelled at the workload switches (re-sent as the new kind): ${r.cancelled.join(' / ')}; errors: ${errs}; ` +
    `CPU: obleth ${pc(r.cpu.gw)}, obleth-sim ${pc(r.cpu.sim)}, client ${pc(r.cpu.me)} (lag p99 ${r.cpu.lagP99Ms.toFixed(1)} ms); ` +
    `obleth exit ${r.gwExit}${r.statErrors ? `; ${r.statErrors} samples failed` : ''}`);
}

function summary(res) {
  const verdicts = [];
  const line = (ok, text) => { verdicts.push({ verdict: ok ? 'PASS' : 'MISS', text }); console.log(`  ${ok ? 'PASS' : 'MISS'}  ${text}`); };
  const info = (text) => { verdicts.push({ verdict: 'info', text }); console.log(`  info  ${text}`); };
  const by = Object.fromEntries(res.map((r) => [r.name, r]));
  const statics = res.filter((r) => r.maxInflight !== 'auto');
  // per phase and measure: the best static setting
  const best = PHASES.map((_, k) => {
    const pick = (f) => (statics.length ? statics.reduce((b, r) => (f(r.phases[k]) > f(b.phases[k]) ? r : b)) : null);
    const br = pick((p) => p.running), bk = pick((p) => p.kv), bt = pick((p) => p.tokensPerS);
    return { running: br?.phases[k].running ?? NaN, runningBy: br?.name, kv: bk?.phases[k].kv ?? NaN, kvBy: bk?.name,
      tokensPerS: bt?.phases[k].tokensPerS ?? NaN, tokensBy: bt?.name };
  });
  console.log('\n== summary: per phase, every setting (scored span of each phase; utilisation as a fraction of the best static setting for the phase)');
  PHASES.forEach((ph, k) => {
    const b = best[k];
    console.log(`\n-- ${ph.name}${ph.halve ? ` (slots ${HALF.slots}, kv_tokens ${HALF.kv_tokens} from its start)` : ''}: best static running ${f1(b.running)} (${b.runningBy ?? '-'}), ` +
      `KV ${pc(b.kv)} (${b.kvBy ?? '-'}), ${Math.round(b.tokensPerS)} tokens/s (${b.tokensBy ?? '-'})`);
    console.log(mdTable(['setting', 'running (of best)', 'KV used (of best)', 'out tokens/s (of best)', 'backend waiting mean / p99', 'preemptions',
      'share err pp', 'Jain', 'TTFT p50/p99 ms t1 · t2 · t4', 'grant→token p50/p99', 'limit'],
    res.map((r) => { const p = r.phases[k]; return [r.name, `${f1(p.running)} (${pc(p.running / b.running)})`, `${pc(p.kv)} (${pc(p.kv / b.kv)})`,
      `${Math.round(p.tokensPerS)} (${pc(p.tokensPerS / b.tokensPerS)})`, `${f2(p.waitingMean)} / ${p.waitingP99}`, p.preemptions, f1(p.maxErrPp), f4(p.jain),
      p.ttft.map(ttftCell).join(' · '), ttftCell(p.grant), limitCell(p.limit)]; })));
  });
  console.log('\n== targets');
  for (const name of ['auto', 'auto-latency']) {
    const r = by[name];
    if (!r) continue;
    const T = TARGETS[name];
    r.phases.forEach((p, k) => {
      const b = best[k];
      const ur = p.running / b.running, uk = p.kv / b.kv;
      const u = Math.min(ur, uk);
      if (Number.isFinite(u)) line(u >= T.util, `${name} ${p.name}: utilisation >= ${pc(T.util)} of the best static — running ${pc(ur)} (${f1(p.running)} vs ${f1(b.running)} ${b.runningBy}), ` +
        `KV ${pc(uk)} (${pc(p.kv)} vs ${pc(b.kv)} ${b.kvBy}); tokens/s ${pc(p.tokensPerS / b.tokensPerS)}`);
      else info(`${name} ${p.name}: utilisation not scored (run the static settings too)`);
      if (T.waitingMean != null) line(p.waitingMean <= T.waitingMean, `${name} ${p.name}: backend waiting mean <= ${T.waitingMean} — ${f2(p.waitingMean)} (p99 ${p.waitingP99})`);
      line(p.maxErrPp <= T.shareErrPp, `${name} ${p.name}: shares within ${T.shareErrPp} pp of 1:2:4 — max ${f1(p.maxErrPp)} pp (${p.shares.map((s) => f1(s * 100)).join(' / ')} %)`);
      if (T.jain != null) line(p.jain >= T.jain, `${name} ${p.name}: Jain >= ${T.jain} — ${f4(p.jain)}`);
    });
    if (T.reconvergeMs != null && r.reconverge) line(r.reconverge.ms <= T.reconvergeMs,
      `${name}: re-converged within ${T.reconvergeMs} ms of the capacity halving — ${fmtMs(r.reconverge.ms)} ms (limit in its new range ` +
      `${r.reconverge.limitRange?.join('-')} at +${fmtMs(r.reconverge.limitInMs)} ms; also KV back at 95% of the phase's mean: ${fmtMs(r.reconverge.strictMs)} ms)`);
  }
  for (const r of statics) {
    const bad = r.phases.filter((p) => p.maxErrPp > 3).map((p) => `${p.name} ${f1(p.maxErrPp)} pp`);
    info(`${r.name} (reference): backend waiting mean ${r.phases.map((p) => `${p.name} ${f2(p.waitingMean)}`).join(', ')}; ` +
      `share error over 3 pp in ${bad.join(', ') || 'no phase'}`);
  }
  const bl = res.flatMap((r) => r.phases.map((p) => p.backlogMin));
  info(`every tenant backlogged in the gateway: lowest fraction of 50 ms samples with a request queued, any scored window, any setting: ${pc(Math.min(...bl))}`);
  return verdicts;
}

// ---------------------------------------------------------------- main

requireBinaries();
const started = Date.now();
console.log(`obleth capacity benchmark: phases ${PHASES.map((p) => p.name).join(' -> ')}, ${opt.phase} s each, ` +
  `the first ${opt.window} s of each not scored; settings ${opt.only.join(', ')}`);
console.log(`machine: ${machine()}`);
console.log(`backend: obleth-sim ${simArgs(true).join(' ')} (--no-metrics for auto-latency); halved to slots ${HALF.slots}, kv_tokens ${HALF.kv_tokens} ` +
  `by POST /sim/config at the start of "halved"`);
console.log(`requests: streaming chat, max_tokens ${TOKENS[0]}..${TOKENS[1]}, prompt ${SHORT_PROMPT} tokens (short) or ${LONG_PROMPT} (long): ` +
  `${FIT_SHORT} short or ${FIT_LONG} long sequences fit the KV cache; tenants ${TENANTS.map((t) => `${t.name} (w${t.weight})`).join(', ')}, ${STREAMS} streams each`);
console.log(`binaries: ${OBLETH}\n          ${OBLETH_SIM}`);
const res = [];
for (const s of [...SETTINGS, ...opt.only.filter(isStaticN)]) if (opt.only.includes(s)) res.push(await runSetting(s));
const verdicts = summary(res);
console.log(`\nwall time ${((Date.now() - started) / 1000).toFixed(0)} s`);
if (opt.json) {
  writeFileSync(opt.json, JSON.stringify({ opt, sim: SIM, half: HALF, results: res, verdicts }, (k, v) => (v === Infinity ? 'inf' : v), 2));
  console.log(`results written to ${opt.json}`);
}
process.exit(0);
