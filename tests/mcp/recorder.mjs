// A recording HTTP/1.1 reverse proxy for the MCP tests: put between obleth
// and one MCP server, it forwards every request and response unchanged,
// streaming both ways (an SSE response reaches obleth event by event), and
// keeps a record of what the server received and answered:
//
//   { seq, method, path, headers, sessionId, protocolVersion, lastEventId,
//     body, json, rpc: [{method, id, tool}], status, resHeaders,
//     resSessionId, contentType, resBody, ended, aborted }
//
// `headers` are the request headers as received (lower-case names);
// `json` is the parsed body (undefined when it is empty or not JSON);
// `rpc` lists the JSON-RPC messages in it (a batch gives several);
// `resBody` grows as the response streams. Records are in arrival order.
import http from 'node:http';

const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer']);

function strip(headers) {
  const out = {};
  for (const [k, v] of Object.entries(headers)) if (!HOP.has(k)) out[k] = v;
  return out;
}

function rpcOf(json) {
  if (json === undefined || json === null) return [];
  const list = Array.isArray(json) ? json : [json];
  return list.map((m) => ({
    method: m && typeof m === 'object' ? m.method : undefined,
    id: m && typeof m === 'object' ? m.id : undefined,
    tool: m && m.method === 'tools/call' && m.params ? m.params.name : undefined,
  }));
}

// Start a recorder in front of http://host:targetPort. Resolves
// { port, url, records, close(), waitFor(pred, ms), sessionsCreated() }.
export async function startRecorder(targetPort, { host = '127.0.0.1', name = `rec:${targetPort}` } = {}) {
  const records = [];
  const agent = new http.Agent({ keepAlive: true });
  let seq = 0;
  const server = http.createServer((req, res) => {
    const rec = {
      seq: ++seq, recorder: name, method: req.method, path: req.url, headers: { ...req.headers },
      sessionId: req.headers['mcp-session-id'], protocolVersion: req.headers['mcp-protocol-version'],
      lastEventId: req.headers['last-event-id'], body: '', json: undefined, rpc: [],
      status: null, resHeaders: null, resSessionId: undefined, contentType: undefined,
      resBody: '', ended: false, aborted: false,
    };
    records.push(rec);
    const chunks = [];
    const up = http.request({
      host, port: targetPort, method: req.method, path: req.url, agent,
      headers: { ...strip(req.headers), host: `${host}:${targetPort}` },
    });
    up.on('response', (ur) => {
      rec.status = ur.statusCode;
      rec.resHeaders = { ...ur.headers };
      rec.resSessionId = ur.headers['mcp-session-id'];
      rec.contentType = ur.headers['content-type'];
      res.writeHead(ur.statusCode, strip(ur.headers));
      res.flushHeaders();
      ur.on('data', (c) => { rec.resBody += c.toString(); res.write(c); });
      ur.on('end', () => { rec.ended = true; res.end(); });
      ur.on('error', () => { rec.aborted = true; res.destroy(); });
    });
    up.on('error', (e) => {
      rec.error = e.message;
      if (!res.headersSent) { res.writeHead(502, { 'content-type': 'text/plain' }); res.end(`recorder: ${e.message}`); }
      else res.destroy();
    });
    req.on('data', (c) => { chunks.push(c); up.write(c); });
    req.on('end', () => {
      rec.body = Buffer.concat(chunks).toString();
      if (rec.body.length) { try { rec.json = JSON.parse(rec.body); } catch {} }
      rec.rpc = rpcOf(rec.json);
      up.end();
    });
    // The client side (obleth) went away before the response ended: the
    // server sees its connection close too, as it would without us.
    res.on('close', () => { if (!res.writableFinished) { rec.aborted = true; up.destroy(); } });
  });
  server.on('connection', (s) => s.setNoDelay(true));
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const port = server.address().port;
  return {
    name, port, records,
    url: `http://127.0.0.1:${port}`,
    // Every record (so far) of a JSON-RPC method, e.g. 'tools/call'.
    rpcCalls(method) { return records.filter((r) => r.rpc.some((m) => m.method === method)); },
    // The session ids the server issued (on its initialize answers).
    sessionsCreated() { return records.filter((r) => r.resSessionId && r.rpc.some((m) => m.method === 'initialize')).map((r) => r.resSessionId); },
    // The first record pred accepts, waited for; undefined after a bound
    // that ms only raises (30 s: a loaded machine may take many times the
    // usual latency to forward a request).
    async waitFor(pred, ms = 30000) {
      const t0 = Date.now();
      for (;;) {
        const r = records.find(pred);
        if (r) return r;
        if (Date.now() - t0 > Math.max(ms, 30000)) return undefined;
        await new Promise((res) => setTimeout(res, 20));
      }
    },
    async close() {
      server.closeAllConnections();
      agent.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}
