// Sealed short-link requests and their answers (docs/protocol.md §3.1): each direction a
// one-way Noise_N session — the request to the server's static key, the answer to a fresh
// reply key the request carries.

import { concat, readU32be, u32be, u64be, utf8 } from "./bytes.js";
import * as cmd from "./cmd.js";
import { encodeFrame, parseFrames } from "./frame.js";
import { keyPair, nRead, nWrite, RecordCipher, type KeyPair } from "./noise.js";

export const CONTENT_TYPE = "application/x-ferry-sealed";
/** Plain bytes per SEALED record at most. */
export const MAX_RECORD_PLAIN = 65519;

function records(key: Uint8Array, body: Uint8Array): Uint8Array[] {
  const c = new RecordCipher(key);
  const out: Uint8Array[] = [];
  for (let off = 0; off < body.length; off += MAX_RECORD_PLAIN) {
    out.push(encodeFrame(cmd.SEALED, 0, c.seal(body.subarray(off, off + MAX_RECORD_PLAIN))));
  }
  return out;
}

/** Seals a request body (with the token inside, or "") to the server's key. Returns the
 *  wire bytes and the reply key pair that opens the answer. */
export function sealRequest(
  serverKey: Uint8Array,
  token: string,
  body: Uint8Array,
  sentMs: bigint,
  opts: { e?: KeyPair; reply?: KeyPair } = {},
): { wire: Uint8Array; reply: KeyPair } {
  const reply = opts.reply ?? keyPair();
  const tok = utf8.encode(token);
  if (tok.length > 255) throw new RangeError("token over 255 bytes");
  const payload = concat(reply.pub, u64be(sentMs), u32be(body.length), Uint8Array.of(tok.length), tok);
  const { msg, key } = nWrite(serverKey, payload, opts.e);
  return { wire: concat(encodeFrame(cmd.HELLO, 0, msg), ...records(key, body)), reply };
}

/** Seals an answer body to `replyKey` (what the server does; for tests). */
export function sealAnswer(replyKey: Uint8Array, body: Uint8Array, e?: KeyPair): Uint8Array {
  const { msg, key } = nWrite(replyKey, u32be(body.length), e);
  return concat(encodeFrame(cmd.response(cmd.HELLO), 0, msg), ...records(key, body));
}

/** Opens a sealed answer with the request's reply key pair; throws when it does not open. */
export function openAnswer(reply: KeyPair, wire: Uint8Array): Uint8Array {
  const frames = parseFrames(wire);
  const [hello, ...rest] = frames;
  if (!hello || hello.cmd !== cmd.response(cmd.HELLO) || hello.reqId !== 0) {
    throw new Error("a sealed answer starts with HELLO|0x80");
  }
  const { payload, key } = nRead(reply, hello.body);
  if (payload.length !== 4) throw new Error("sealed answer: bad length field");
  const len = readU32be(payload, 0);
  const c = new RecordCipher(key);
  const parts: Uint8Array[] = [];
  let got = 0;
  for (const f of rest) {
    if (f.cmd !== cmd.SEALED || f.reqId !== 0) throw new Error("sealed answer: a frame that is not SEALED");
    const p = c.open(f.body);
    if (p.length > MAX_RECORD_PLAIN) throw new Error("sealed answer: record too large");
    got += p.length;
    parts.push(p);
  }
  if (got !== len) throw new Error(`sealed answer: ${got} bytes, ${len} announced`);
  return concat(...parts);
}
