// Raw HTTP/2 for the integration tests: a socket that records what it
// receives, hand-built frames and HPACK blocks (literals only), and a client
// connection that parses the frames coming back. Real client libraries will
// not send malformed or hostile frames, so the tests that need them use these.
import net from 'node:net';
import tls from 'node:tls';
import { waitFor, WAIT_MS } from './lib.mjs';

// Poll fn until it returns a truthy value; fail with what() after a bound.
// ms is only a floor for that bound: every wait here is for an event (a
// frame, a close), and a loaded machine may take many times the usual
// latency to show it.
export const until = (fn, ms, what) => waitFor(fn, what, Math.max(ms, WAIT_MS));

// A socket that records what it receives and when it was closed. With
// tls ({ ca }), a TLS connection to localhost offering ALPN h2 only.
export function rawConnect(port, { tls: tlsOpts } = {}) {
  return new Promise((resolve, reject) => {
    const s = tlsOpts
      ? tls.connect({ port, host: '127.0.0.1', servername: 'localhost', ca: tlsOpts.ca, ALPNProtocols: ['h2'] })
      : net.connect(port, '127.0.0.1');
    s.text = '';
    s.received = 0;
    s.closedAt = null;
    s.gone = new Promise((r) => s.once('close', () => { s.closedAt = Date.now(); r(); }));
    s.on('data', (d) => { s.received += d.length; if (s.text.length < 65536) s.text += d.toString('latin1'); });
    s.on('error', () => {});
    s.once(tlsOpts ? 'secureConnect' : 'connect', () => resolve(s));
    s.once('error', reject);
  });
}

export const T = { DATA: 0, HEADERS: 1, PRIORITY: 2, RST_STREAM: 3, SETTINGS: 4, PUSH_PROMISE: 5, PING: 6, GOAWAY: 7,
  WINDOW_UPDATE: 8, CONTINUATION: 9 };
export const F = { END_STREAM: 1, ACK: 1, END_HEADERS: 4 };
export const E = { NO_ERROR: 0, PROTOCOL_ERROR: 1, INTERNAL_ERROR: 2, FLOW_CONTROL_ERROR: 3, STREAM_CLOSED: 5,
  FRAME_SIZE_ERROR: 6, REFUSED_STREAM: 7, CANCEL: 8, ENHANCE_YOUR_CALM: 11 };
export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');

export function frame(type, flags, id, payload = Buffer.alloc(0)) {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(id, 5);
  return Buffer.concat([h, payload]);
}

export function settingsFrame(pairs) {
  const b = Buffer.alloc(6 * pairs.length);
  pairs.forEach(([k, v], i) => { b.writeUInt16BE(k, 6 * i); b.writeUInt32BE(v, 6 * i + 2); });
  return frame(T.SETTINGS, 0, 0, b);
}

export const rstFrame = (id, code) => { const b = Buffer.alloc(4); b.writeUInt32BE(code); return frame(T.RST_STREAM, 0, id, b); };

// HPACK (RFC 7541) integers and plain (non-Huffman) strings.
export function hpInt(flags, prefix, n) {
  const max = (1 << prefix) - 1;
  if (n < max) return Buffer.from([flags | n]);
  const out = [flags | max];
  n -= max;
  while (n >= 128) { out.push((n & 127) | 128); n = Math.floor(n / 128); }
  out.push(n);
  return Buffer.from(out);
}
export const hpStr = (s) => { const b = Buffer.from(s); return Buffer.concat([hpInt(0, 7, b.length), b]); };
// Literal field with a new name, not indexed / with incremental indexing.
export const hpLit = (name, value) => Buffer.concat([Buffer.from([0]), hpStr(name), hpStr(value)]);
export const hpLitIndexed = (name, value) => Buffer.concat([Buffer.from([0x40]), hpStr(name), hpStr(value)]);
export const hpIndexed = (i) => hpInt(0x80, 7, i);

export function requestBlock(method, path, extra = []) {
  return Buffer.concat([hpLit(':method', method), hpLit(':scheme', 'http'), hpLit(':path', path),
    hpLit(':authority', '127.0.0.1'), ...extra.map(([n, v]) => hpLit(n, v))]);
}

// The :status of a response header block. The client announces a header
// table size of 0, so the gateway's encoder uses the static table and
// literals only; a Huffman-coded status is made of digits, whose codes are
// all this needs (RFC 7541 Appendix B).
export function decodeStatus(block) {
  const readInt = (i, prefix) => {
    const max = (1 << prefix) - 1;
    let n = block[i] & max;
    i++;
    if (n < max) return [n, i];
    let m = 0;
    for (;;) { const b = block[i++]; n += (b & 127) * 2 ** m; m += 7; if (!(b & 128)) break; }
    return [n, i];
  };
  const readStr = (i) => {
    const huff = block[i] & 0x80;
    const [len, j] = readInt(i, 7);
    const raw = block.subarray(j, j + len);
    return [huff ? huffDigits(raw) : raw.toString('latin1'), j + len];
  };
  const STATIC_STATUS = { 8: '200', 9: '204', 10: '206', 11: '304', 12: '400', 13: '404', 14: '500' };
  let i = 0;
  while (i < block.length) {
    const b = block[i];
    if (b & 0x80) {
      const [idx, j] = readInt(i, 7);
      if (STATIC_STATUS[idx]) return Number(STATIC_STATUS[idx]);
      i = j;
    } else if ((b & 0xe0) === 0x20) {
      i = readInt(i, 5)[1]; // dynamic table size update
    } else {
      const [nameIdx, j] = readInt(i, b & 0x40 ? 6 : 4);
      let k = j;
      if (nameIdx === 0) k = readStr(k)[1];
      const [value, next] = readStr(k);
      if (nameIdx >= 8 && nameIdx <= 14) return Number(value);
      i = next;
    }
  }
  return null;
}

function huffDigits(buf) {
  let bits = '';
  for (const b of buf) bits += b.toString(2).padStart(8, '0');
  let out = '';
  let i = 0;
  while (i + 5 <= bits.length) {
    const five = parseInt(bits.slice(i, i + 5), 2);
    if (five <= 2) { out += String(five); i += 5; continue; }
    if (i + 6 > bits.length) break;
    const six = parseInt(bits.slice(i, i + 6), 2);
    if (six >= 0x19 && six <= 0x1f) { out += String(six - 0x19 + 3); i += 6; continue; }
    break; // EOS padding (all ones) or a non-digit
  }
  return out;
}

// A raw HTTP/2 client connection: sends the preface and its SETTINGS (header
// table size 0 plus any given; or the bytes given as preface instead),
// acknowledges the server's SETTINGS unless told not to, and records every
// frame it receives. s.next(pred) resolves with the first frame that
// matches, or rejects once the connection closes without one: tests wait
// for the frame they expect, never for a timer.
export async function h2Connect(port, { settings = [], ack = true, preface, tls: tlsOpts } = {}) {
  const s = await rawConnect(port, { tls: tlsOpts });
  const waiters = new Set();
  s.frames = [];
  let buf = Buffer.alloc(0);
  s.removeAllListeners('data');
  s.on('data', (d) => {
    s.received += d.length;
    buf = buf.length ? Buffer.concat([buf, d]) : d;
    while (buf.length >= 9) {
      const len = buf.readUIntBE(0, 3);
      if (buf.length < 9 + len) break;
      const f = { type: buf[3], flags: buf[4], id: buf.readUInt32BE(5) & 0x7fffffff, payload: buf.subarray(9, 9 + len), at: Date.now() };
      buf = buf.subarray(9 + len);
      if (s.frames.length < 100000) s.frames.push(f);
      if (ack && f.type === T.SETTINGS && !(f.flags & F.ACK)) s.write(frame(T.SETTINGS, F.ACK, 0));
      for (const w of waiters) if (w.pred(f)) { waiters.delete(w); w.resolve(f); }
    }
  });
  s.gone.then(() => {
    for (const w of waiters) w.reject(new Error(`connection closed before ${w.what}; frames: ${summary(s)}`));
    waiters.clear();
  });
  s.write(preface ?? Buffer.concat([PREFACE, settingsFrame([[1, 0], ...settings])]));
  s.next = (pred, what = 'the expected frame') => new Promise((resolve, reject) => {
    const f = s.find(pred);
    if (f) return resolve(f);
    if (s.closedAt) return reject(new Error(`connection closed before ${what}; frames: ${summary(s)}`));
    waiters.add({ pred, what, resolve, reject });
  });
  s.find = (pred) => s.frames.find(pred);
  s.waitFor = (pred, ms, what) => until(() => s.find(pred), ms, () => `${what}; frames: ${summary(s)}`);
  s.status = (id) => {
    const h = s.find((f) => f.type === T.HEADERS && f.id === id);
    return h ? decodeStatus(h.payload) : null;
  };
  s.goaway = () => {
    const g = s.find((f) => f.type === T.GOAWAY);
    return g ? { lastId: g.payload.readUInt32BE(0) & 0x7fffffff, code: g.payload.readUInt32BE(4) } : null;
  };
  return s;
}

export function summary(s) {
  const names = Object.fromEntries(Object.entries(T).map(([k, v]) => [v, k]));
  return s.frames.slice(-12).map((f) => `${names[f.type] ?? f.type}(${f.id}${f.type === T.RST_STREAM || f.type === T.GOAWAY ? ' code ' + f.payload.readUInt32BE(f.type === T.GOAWAY ? 4 : 0) : ''})`).join(' ') +
    ` (${s.frames.length} in all, closed: ${!!s.closedAt})`;
}
