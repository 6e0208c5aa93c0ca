// CPU per request: instructions (callgrind's Ir) that obleth executes per
// request on its three hot paths. One command, Node 20, no npm packages:
//
//   node bench/cpu.mjs [--requests N] [--warm-up N] [-c N] [--only proxy-h2,proxy-h1,cache-hit,admission] [--no-peers]
//                      [--top N] [--keep DIR] [--json FILE] [--quick]
//
// For each path a fresh obleth runs under valgrind --tool=callgrind in
// front of obleth-sim (instant answers, HTTP/1.1). h2load sends a warm-up,
// then `callgrind_control --zero`, N requests, `callgrind_control --dump`;
// Ir of the dump / N is the number in the table. Instruction counts do not
// depend on the machine's load, so this benchmark can run on a busy
// machine, and a change of a few per cent is a real change.
//
// callgrind acts on a command only while the process runs code, so after
// each command the script sends GET /healthz to obleth's admin listener
// every 100 ms until the command is done ("pokes"; each costs a few
// thousand instructions, counted and shown).
//
// Paths (h2load -c 8 -m 1 unless -c says otherwise; log_level info):
//   proxy-h2   POST /v1/chat/completions over h2, tenant key, admission on
//              (never saturated), forwarded to the simulator
//   proxy-h1   the same over HTTP/1.1 (h2load --h1)
//   cache-hit  the same request repeated with the cache on: every measured
//              request is a hit (checked in /metrics)
//   admission  admission.max_inflight 1: 8 clients, 7 of them always queued
//              (the share of queued grants is checked in /metrics)
//
// Reference (unless --no-peers): nghttpx and HAProxy as plain proxies on
// the proxy-h2 load, and obleth again, measured by the difference of two
// whole runs (see peer() below), so that obleth's count can be set against
// the proxies that bench/proxy_path.mjs compares it with; and nghttpd
// serving the cached answer as a static file on the cache-hit load, what
// bench/cache_hit.mjs compares a hit with.
//
// Exits 0 once it has run; 1 when something cannot be started or a check
// fails. See bench/README.md.
import { writeFileSync, readdirSync, readFileSync, mkdirSync, cpSync } from 'node:fs';
import { join } from 'node:path';
import {
  sleep, fail, workDir, startSim, startObleth, requireBinaries, requireTools, sh, freePort, parseH2load, h2loadSummary, h2request,
  machine, mdTable, stop, metric, proxyConfig, startNghttpx, startHaproxy, startNghttpd,
  parseArgs, list,
} from './lib.mjs';

const opt = parseArgs({ requests: 2000, warmup: 200, c: 8, only: null, top: 6, keep: null, json: null, quick: false, peers: true }, {
  '--no-peers': (o) => { o.peers = false; },
  '--requests': ['requests', Number], '--warm-up': ['warmup', Number], '-c': ['c', Number], '--only': ['only', list],
  '--top': ['top', Number], '--keep': ['keep', String], '--json': ['json', String],
  '--quick': (o) => { o.quick = true; o.requests = 300; o.warmup = 50; },
}, 'node bench/cpu.mjs [--requests N] [--warm-up N] [-c N] [--only proxy-h2,proxy-h1,cache-hit,admission] [--no-peers] [--top N] ' +
  '[--keep DIR] [--json FILE] [--quick]');
requireTools(['valgrind', 'callgrind_control', 'callgrind_annotate', 'h2load', ...(opt.peers ? ['nghttpx', 'haproxy', 'nghttpd'] : [])],
  'apt-get install valgrind nghttp2-client nghttp2-proxy nghttp2-server haproxy');
requireBinaries();

const dir = workDir('obleth-bench-cpu-');
const PATH = '/v1/chat/completions';
const KEY = 'sk-bench';
const reqBody = JSON.stringify({
  model: 'sim-model', max_tokens: 16, temperature: 0,
  messages: [{ role: 'user', content: 'How many instructions does a gateway spend on one request?' }],
});
const bodyFile = join(dir, 'request.json');
writeFileSync(bodyFile, reqBody);
const headers = { 'content-type': 'application/json', authorization: `Bearer ${KEY}` };

const PATHS = [
  { name: 'proxy-h2', what: 'proxy path, h2 client', h1: false, cfg: {} },
  { name: 'proxy-h1', what: 'proxy path, HTTP/1.1 client', h1: true, cfg: {} },
  { name: 'cache-hit', what: 'cache hit, h2 client', h1: false, cache: true, cfg: {} },
  { name: 'admission', what: 'queued in admission (max_inflight 1), h2 client', h1: false, cfg: { admission: { max_inflight: 1 } } },
].filter((p) => !opt.only || opt.only.includes(p.name));
if (!PATHS.length) fail('--only: paths are proxy-h2, proxy-h1, cache-hit, admission');

const sim = await startSim(dir, ['--slots', '100000'], { name: 'sim' });

// Send a callgrind command and poke obleth until it has been carried out.
async function command(pid, args, pokeUrl) {
  let done = false;
  const p = sh('callgrind_control', [...args, String(pid)]).then((r) => { done = true; return r; });
  let pokes = 0;
  await sleep(100);
  while (!done) {
    try { await fetch(pokeUrl); } catch {}
    pokes++;
    await sleep(100);
  }
  const r = await p;
  if (r.code !== 0 || !/OK/.test(r.stdout)) fail(`callgrind_control ${args.join(' ')} ${pid} failed:\n${r.stdout}${r.stderr}`);
  return pokes;
}

const h2load = (url, n, h1) => sh('h2load', [...(h1 ? ['--h1'] : ['-m', '1']), '-c', String(opt.c), '-n', String(n),
  '-d', bodyFile, '-H', `content-type: ${headers['content-type']}`, '-H', `authorization: ${headers.authorization}`, url + PATH]);

let hitBody = null; // the cached answer, for nghttpd's reference run

async function measure(path) {
  const t0 = Date.now();
  const adminPort = await freePort();
  const cfg = {
    ...proxyConfig(sim.url, KEY),
    admin: { address: `127.0.0.1:${adminPort}` },
    ...(path.cache ? { cache: { path: join(dir, `cache-${path.name}.mdb`) } } : {}),
    ...path.cfg,
  };
  const out = join(dir, `callgrind.${path.name}`);
  const ob = await startObleth(dir, cfg, { name: `obleth-${path.name}`, ms: 60000,
    wrap: ['valgrind', '--tool=callgrind', `--callgrind-out-file=${out}.%p`, '--dump-instr=no'] });
  const pid = ob.proc.pid;
  const poke = `http://127.0.0.1:${adminPort}/healthz`;
  if (path.cache) {
    // the first request stores the entry (written by a thread): wait for a hit
    let hit = null;
    for (let i = 0; i < 100 && hit !== 'hit'; i++) {
      const r = await h2request(ob.url, PATH, reqBody, headers);
      hit = r.headers['x-obleth-cache'];
      if (hit !== 'hit') await sleep(50);
      else hitBody = r.body;
    }
    if (hit !== 'hit') fail('cache-hit: no hit after warming');
  }
  const warm = parseH2load((await h2load(ob.url, opt.warmup, path.h1)).stdout);
  if (warm.s2xx !== opt.warmup) fail(`${path.name}: warm-up answered ${warm.s2xx} of ${opt.warmup} 2xx`);
  const before = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  const zeroPokes = await command(pid, ['--zero'], poke);
  const t1 = Date.now();
  const run = await h2load(ob.url, opt.requests, path.h1);
  const secs = (Date.now() - t1) / 1000;
  const dumpPokes = await command(pid, [`--dump=${path.name}`], poke);
  const after = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  const p = parseH2load(run.stdout);
  if (p.s2xx !== opt.requests) fail(`${path.name}: ${p.s2xx} of ${opt.requests} answered 2xx:\n${h2loadSummary(run.stdout)}`);
  const d = (name, want) => metric(after, name, want) - metric(before, name, want);
  const served = d('obleth_requests_total', { code: '200' });
  const queued = d('obleth_requests_total', { code: '200', admission: 'queued' });
  const hits = d('obleth_cache_requests_total', { outcome: 'hit' });
  const dump = readdirSync(dir).find((f) => f.startsWith(`callgrind.${path.name}.${pid}.`));
  if (!dump) fail(`${path.name}: no callgrind dump in ${dir}`);
  const ann = await sh('callgrind_annotate', ['--inclusive=no', '--auto=no', '--threshold=100', join(dir, dump)]);
  const ir = Number((ann.stdout.match(/^([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS/m)?.[1] ?? '').replace(/,/g, ''));
  if (!Number.isFinite(ir) || !ir) fail(`${path.name}: no totals in the callgrind dump:\n${ann.stdout.slice(0, 2000)}`);
  // Top functions by self cost. The frames that were on the stack when the
  // counters were zeroed (main, event_base_dispatch, ...) show as 100 %:
  // an artefact of --zero, left out.
  const top = ann.stdout.split('\n').map((l) => l.match(/^\s*([\d,]+) \(\s*([\d.]+)%\)\s+(.*)$/))
    .filter((m) => m && !/PROGRAM TOTALS/.test(m[3]) && Number(m[2]) < 99).slice(0, opt.top)
    .map((m) => {
      const f = m[3].trim().match(/^(.*):([^:\s]+(?:'\d+)?) \[(.*)\]$/); // file:function [object]
      return { ir: Number(m[1].replace(/,/g, '')), pct: Number(m[2]), fn: f ? `${f[2]} (${f[1].split('/').pop()}, ${f[3].split('/').pop()})` : m[3].trim() };
    });
  if (opt.keep) { mkdirSync(opt.keep, { recursive: true }); cpSync(join(dir, dump), join(opt.keep, `callgrind.out.${path.name}`)); }
  await stop(ob.proc, 30000);
  const r = { path: path.name, what: path.what, requests: opt.requests, ir, ir_per_request: ir / opt.requests, served, queued, hits,
    pokes: zeroPokes + dumpPokes, seconds: (Date.now() - t0) / 1000, req_per_s_under_valgrind: opt.requests / secs, top };
  console.log(`${path.name}: ${ir.toLocaleString('en-US')} Ir / ${opt.requests} requests = ${Math.round(r.ir_per_request).toLocaleString('en-US')} Ir per request; ` +
    `${served} answered 200 (${queued} queued, ${hits} cache hits); ${r.pokes} pokes; ${r.seconds.toFixed(0)} s`);
  for (const t of top) console.log(`    ${Math.round(t.ir / opt.requests).toLocaleString('en-US').padStart(8)} Ir/req  ${t.pct.toFixed(1).padStart(5)}%  ${t.fn}`);
  return r;
}

// Reference: nghttpx and HAProxy as plain proxies (the proxy_path set-up)
// on the proxy-h2 load, and obleth measured the same way. callgrind_control
// cannot reach nghttpx's worker (a forked child), so each server runs twice
// under callgrind, with W and W + N requests, and the difference of the
// totals written at exit, over N, is its Ir per request: start-up,
// connection set-up and shut-down cancel out.
async function peer(name) {
  const t0 = Date.now();
  const totals = [];
  for (const n of [opt.warmup, opt.warmup + opt.requests]) {
    const d = join(dir, `peer-${name}-${n}`);
    mkdirSync(d);
    const wrap = ['valgrind', '--tool=callgrind', `--callgrind-out-file=${join(d, 'callgrind.%p')}`, '--dump-instr=no'];
    const s = name === 'nghttpx' ? await startNghttpx(d, sim.port, { wrap, ms: 60000 })
      : name === 'haproxy' ? await startHaproxy(d, sim.port, { wrap, ms: 60000 })
        : name === 'nghttpd' ? await startNghttpd(d, PATH, hitBody, { body: reqBody, headers }, { wrap, ms: 60000 })
          : await startObleth(d, proxyConfig(sim.url, KEY), { wrap, ms: 60000 });
    const p = parseH2load((await h2load(s.h2 ?? s.url, n, false)).stdout);
    if (p.s2xx !== n) fail(`${name}: ${p.s2xx} of ${n} answered 2xx`);
    await stop(s.proc, 30000);
    await sleep(500); // nghttpx's master waits for its worker; the files are complete when it exits
    totals.push(readdirSync(d).filter((f) => f.startsWith('callgrind.'))
      .reduce((a, f) => a + Number(readFileSync(join(d, f), 'utf8').match(/^summary: (\d+)/m)?.[1] ?? NaN), 0));
  }
  const r = { name, ir_per_request: (totals[1] - totals[0]) / opt.requests, totals, seconds: (Date.now() - t0) / 1000 };
  console.log(`reference ${name}: (${totals[1].toLocaleString('en-US')} − ${totals[0].toLocaleString('en-US')}) Ir / ${opt.requests} = ` +
    `${Math.round(r.ir_per_request).toLocaleString('en-US')} Ir per request; ${r.seconds.toFixed(0)} s`);
  return r;
}

const t00 = Date.now();
console.log(`# cpu: ${machine()}`);
console.log(`# valgrind --tool=callgrind; per path: ${opt.warmup} warm-up requests, counters zeroed, ${opt.requests} measured requests ` +
  `(h2load ${'-c ' + opt.c} -m 1 / --h1), request body ${reqBody.length} bytes; top functions by self cost per path`);
const results = [];
for (const path of PATHS) results.push(await measure(path));
const peers = [];
if (opt.peers) for (const name of ['nghttpx', 'haproxy', 'obleth', ...(hitBody ? ['nghttpd'] : [])]) peers.push(await peer(name));
await stop(sim.proc);

console.log(`\n## Results (${((Date.now() - t00) / 1000).toFixed(0)} s in all)\n`);
console.log(mdTable(['path', 'client', 'requests', 'Ir per request', 'checks'], results.map((r) => {
  const p = PATHS.find((x) => x.name === r.path);
  const checks = p.cache ? `${r.hits} of ${r.served} hits` : p.cfg.admission ? `${r.queued} of ${r.served} queued` : `${r.queued} queued`;
  return [`\`${r.path}\``, p.h1 ? `h1 \`--h1 -c ${opt.c}\`` : `h2 \`-c ${opt.c} -m 1\``, String(r.requests),
    `**${Math.round(r.ir_per_request).toLocaleString('en-US')}**`, checks];
})));
if (peers.length) {
  const label = { nghttpx: 'nghttpx (plain proxy, `-n1`)', haproxy: 'HAProxy (plain proxy, `nbthread 1`)', obleth: 'obleth `proxy-h2`, measured the same way',
    nghttpd: 'nghttpd (`-n 1`) serving the cached answer as a static file, against obleth `cache-hit`' };
  const hitIr = results.find((r) => r.path === 'cache-hit')?.ir_per_request;
  console.log(`\nReference, on the \`proxy-h2\` load (nghttpd: on the \`cache-hit\` load): whole-process totals at exit, ` +
    `(W + N requests) − (W requests), over N = ${opt.requests}:\n`);
  console.log(mdTable(['server', 'Ir per request', 'obleth / server'], peers.map((p) => [label[p.name],
    `**${Math.round(p.ir_per_request).toLocaleString('en-US')}**`,
    p.name === 'obleth' ? '—' : `${((p.name === 'nghttpd' ? hitIr : peers.find((x) => x.name === 'obleth').ir_per_request) / p.ir_per_request).toFixed(2)}×`])));
}
console.log('');
let ok = true;
for (const r of results) {
  const p = PATHS.find((x) => x.name === r.path);
  if (p.cache && r.hits < r.requests) { ok = false; console.log(`MISS ${r.path}: only ${r.hits} of ${r.requests} requests were cache hits`); }
  if (p.cfg.admission && r.queued < r.requests / 2) { ok = false; console.log(`MISS ${r.path}: only ${r.queued} of ${r.requests} requests were queued`); }
  if (!p.cache && !p.cfg.admission && r.queued) { ok = false; console.log(`MISS ${r.path}: ${r.queued} requests were queued (the proxy path must not queue)`); }
}
if (ok) console.log('PASS every path did what it is named for (hits were hits, queued requests queued, the proxy path never queued)');
if (opt.json) writeFileSync(opt.json, JSON.stringify({ opt, machine: machine(), results, peers }, null, 2));
