// Starts the real, unmodified @modelcontextprotocol/server-everything
// (installed and pinned in tests/clients) in its Streamable HTTP mode as a
// child process.
//
// How that server listens (dist/transports/streamableHttp.js): `node
// dist/index.js streamableHttp`, port from the PORT environment variable
// (default 3001), on every interface, endpoint path /mcp (POST, GET,
// DELETE). It prints "MCP Streamable HTTP Server listening on port N" on
// stderr, N being PORT as given: with PORT=0 it would bind an ephemeral port
// but print 0, so a free port is chosen here first (bound and closed), and
// the start is retried on another port if the server exits on EADDRINUSE.
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import net from 'node:net';

const here = dirname(fileURLToPath(import.meta.url));
const req = createRequire(join(here, '..', 'clients', 'package.json'));
const pkgDir = dirname(req.resolve('@modelcontextprotocol/server-everything/package.json'));
const pkg = req('@modelcontextprotocol/server-everything/package.json');
export const EVERYTHING_BIN = join(pkgDir, pkg.bin['mcp-server-everything']);
export const EVERYTHING_VERSION = pkg.version;

const children = new Set();
process.on('exit', () => { for (const c of children) { try { c.kill('SIGKILL'); } catch {} } });

// A port free right now on the loopback interface: bound, then closed.
export async function freePort() {
  const s = net.createServer();
  await new Promise((r, j) => { s.once('error', j); s.listen(0, '127.0.0.1', r); });
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

function startOnce(port) {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [EVERYTHING_BIN, 'streamableHttp'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, PORT: String(port) },
    });
    children.add(p);
    p.output = { text: '' };
    let done = false;
    const timer = setTimeout(() => {
      if (!done) { done = true; p.kill('SIGKILL'); reject(new Error(`server-everything not ready:\n${p.output.text}`)); }
    }, 30000); // a backstop: a loaded machine starts node slowly
    const onData = (c) => {
      p.output.text += c.toString();
      if (!done && /listening on port (\d+)/.test(p.output.text)) {
        done = true;
        clearTimeout(timer);
        resolve(p);
      }
    };
    p.stdout.on('data', onData);
    p.stderr.on('data', onData);
    p.on('exit', (code, sig) => {
      children.delete(p);
      p.exitInfo = { code, sig };
      if (!done) {
        done = true;
        clearTimeout(timer);
        const e = new Error(`server-everything exited (${code ?? sig}) before it was ready:\n${p.output.text}`);
        e.inUse = /EADDRINUSE|already in use/.test(p.output.text);
        reject(e);
      }
    });
  });
}

// Start one instance; resolves {proc, port, url (the /mcp endpoint), base}.
// proc.output.text collects its stdout and stderr (it logs "Session
// initialized with ID: …" for each session it creates).
export async function startEverything() {
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    try {
      const proc = await startOnce(port);
      return { proc, port, base: `http://127.0.0.1:${port}`, url: `http://127.0.0.1:${port}/mcp` };
    } catch (e) {
      if (!e.inUse || attempt >= 4) throw e;
    }
  }
}
