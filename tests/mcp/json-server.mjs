// A second kind of MCP upstream for the tests: the official SDK's own
// Streamable HTTP server transport (the pinned @modelcontextprotocol/sdk,
// unmodified) with enableJsonResponse, so requests are answered as one
// application/json body instead of an SSE stream. server-everything always
// answers requests with text/event-stream, and the tools/list filter has to
// be proven on both shapes.
//
// It runs in the test process on an ephemeral loopback port, one session
// per initialize, tools: echo, get-sum, get-env (the same names as
// server-everything, so the same allow-lists apply).
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const req = createRequire(join(here, '..', 'clients', 'package.json'));
const { Server } = req('@modelcontextprotocol/sdk/server/index.js');
const { StreamableHTTPServerTransport } = req('@modelcontextprotocol/sdk/server/streamableHttp.js');
const { ListToolsRequestSchema, CallToolRequestSchema } = req('@modelcontextprotocol/sdk/types.js');

const TOOLS = [
  { name: 'echo', description: 'Echoes back the input string', inputSchema: { type: 'object', properties: { message: { type: 'string' } }, required: ['message'] } },
  { name: 'get-sum', description: 'Returns the sum of two numbers', inputSchema: { type: 'object', properties: { a: { type: 'number' }, b: { type: 'number' } }, required: ['a', 'b'] } },
  { name: 'get-env', description: 'Returns the environment', inputSchema: { type: 'object', properties: {} } },
];

function makeServer() {
  const s = new Server({ name: 'obleth-test-json', version: '1.0.0' }, { capabilities: { tools: {} } });
  s.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: TOOLS }));
  s.setRequestHandler(CallToolRequestSchema, async (r) => {
    const a = r.params.arguments || {};
    if (r.params.name === 'echo') return { content: [{ type: 'text', text: `Echo: ${a.message}` }] };
    if (r.params.name === 'get-sum') return { content: [{ type: 'text', text: `The sum of ${a.a} and ${a.b} is ${a.a + a.b}.` }] };
    if (r.params.name === 'get-env') return { content: [{ type: 'text', text: '{}' }] };
    throw new Error(`unknown tool ${r.params.name}`);
  });
  return s;
}

// Resolves { port, base, url, close() }.
export async function startJsonServer() {
  const transports = new Map();
  const server = http.createServer(async (req, res) => {
    if (!req.url.startsWith('/mcp')) { res.writeHead(404); res.end(); return; }
    const sid = req.headers['mcp-session-id'];
    let t = sid ? transports.get(sid) : undefined;
    if (!t && sid) {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ jsonrpc: '2.0', id: null, error: { code: -32001, message: 'Session not found' } }));
      return;
    }
    if (!t) {
      t = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        enableJsonResponse: true,
        onsessioninitialized: (id) => transports.set(id, t),
      });
      t.onclose = () => { if (t.sessionId) transports.delete(t.sessionId); };
      await makeServer().connect(t);
    }
    await t.handleRequest(req, res);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const port = server.address().port;
  return {
    port, base: `http://127.0.0.1:${port}`, url: `http://127.0.0.1:${port}/mcp`, tools: TOOLS.map((t) => t.name),
    async close() {
      for (const t of transports.values()) { try { await t.close(); } catch {} }
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}
