// The encrypted long link (docs/protocol.md §1.4, §1.5): the first frame (HELLO with a
// Noise IK message, or RESUME with a ticket), reading its answer (taking off a TICKET
// frame), and the SEALED records after it.

import { expand, extract } from "@noble/hashes/hkdf.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { fromBinary } from "@bufbuild/protobuf";
import { concat, randomBytes, u64be, utf8 } from "./bytes.js";
import * as cmd from "./cmd.js";
import { encodeFrame, parseFrames, type Frame } from "./frame.js";
import { aeadOpen, aeadSeal, IkInitiator, RecordCipher, type KeyPair } from "./noise.js";
import { MAX_RECORD_PLAIN } from "./sealed.js";
import { ResumptionSchema } from "./gen/ferry_pb.js";


/** A resumption ticket as kept on the device. */
export interface Ticket {
  ticket: Uint8Array;
  secret: Uint8Array;
  expiresMs: number;
}

/** The keys of an established link: seal outgoing frames, open incoming records. */
export class SecureChannel {
  private tx: RecordCipher;
  private rx: RecordCipher;
  constructor(c2s: Uint8Array, s2c: Uint8Array) {
    this.tx = new RecordCipher(c2s);
    this.rx = new RecordCipher(s2c);
  }
  /** Plain frame-stream bytes → SEALED frames (each ≤ 65 519 plain bytes). */
  seal(plain: Uint8Array): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (let off = 0; off < plain.length; off += MAX_RECORD_PLAIN) {
      out.push(encodeFrame(cmd.SEALED, 0, this.tx.seal(plain.subarray(off, off + MAX_RECORD_PLAIN))));
    }
    return out;
  }
  /** One SEALED frame's body → plain bytes of the frame stream; throws when it does not open. */
  open(body: Uint8Array): Uint8Array {
    return this.rx.open(body);
  }
}

/** What a handshake answer carried: the login answer frames and maybe a ticket. */
export interface HandshakeResult {
  channel: SecureChannel;
  frames: Frame[];
  ticket: Ticket | undefined;
}

/** Takes a TICKET frame off the front of a handshake answer's payload. */
function takeTicket(payload: Uint8Array): { frames: Frame[]; ticket: Ticket | undefined } {
  const frames = parseFrames(payload);
  let ticket: Ticket | undefined;
  if (frames[0]?.cmd === cmd.TICKET) {
    const r = fromBinary(ResumptionSchema, frames[0].body);
    ticket = { ticket: r.ticket, secret: r.secret, expiresMs: Number(r.expiresMs) };
    frames.shift();
  }
  return { frames, ticket };
}

/** A full handshake: the HELLO frame carrying `login` (a whole LOGIN frame). */
export class HelloHandshake {
  private ik: IkInitiator;
  readonly frame: Uint8Array;
  constructor(serverKey: Uint8Array, login: Uint8Array, opts: { s?: KeyPair; e?: KeyPair } = {}) {
    this.ik = new IkInitiator(serverKey, opts);
    this.frame = encodeFrame(cmd.HELLO, 0, this.ik.writeMessage1(login));
  }
  /** Reads the `HELLO|0x80` answer's body; throws when it does not open. */
  finish(body: Uint8Array): HandshakeResult {
    const { payload, c2s, s2c } = this.ik.readMessage2(body);
    return { channel: new SecureChannel(c2s, s2c), ...takeTicket(payload) };
  }
}

/** The key schedule of §1.5. */
export function resumeKeys(secret: Uint8Array, clientNonce: Uint8Array, serverNonce?: Uint8Array) {
  const early = extract(sha256, secret, clientNonce);
  const kLogin = expand(sha256, early, utf8.encode("ferry resume login"), 32);
  if (!serverNonce) return { kLogin };
  const main = extract(sha256, secret, concat(clientNonce, serverNonce));
  return {
    kLogin,
    kAnswer: expand(sha256, main, utf8.encode("ferry resume answer"), 32),
    kC2s: expand(sha256, main, utf8.encode("ferry resume c2s"), 32),
    kS2c: expand(sha256, main, utf8.encode("ferry resume s2c"), 32),
  };
}

const ZERO_NONCE = new Uint8Array(12);

/** A resumed login: the RESUME frame carrying `login`. */
export class ResumeHandshake {
  readonly frame: Uint8Array;
  private clientNonce: Uint8Array;
  constructor(
    private t: Ticket,
    login: Uint8Array,
    opts: { sentMs?: bigint; clientNonce?: Uint8Array } = {},
  ) {
    if (t.ticket.length > 1024) throw new RangeError("ticket over 1024 bytes");
    this.clientNonce = opts.clientNonce ?? randomBytes(16);
    const sentMs = opts.sentMs ?? BigInt(Date.now());
    const len = new Uint8Array(2);
    new DataView(len.buffer).setUint16(0, t.ticket.length, false);
    const head = concat(u64be(sentMs), this.clientNonce, len, t.ticket);
    const { kLogin } = resumeKeys(t.secret, this.clientNonce);
    this.frame = encodeFrame(cmd.RESUME, 0, concat(head, aeadSeal(kLogin, ZERO_NONCE, head, login)));
  }
  /** Reads the `RESUME|0x80` answer's body; throws when it does not open. A ticket
   *  in the answer replaces the one used; without one, the one used stays. */
  finish(body: Uint8Array): HandshakeResult {
    if (body.length < 32) throw new Error("resume answer too short");
    const serverNonce = body.slice(0, 16);
    const k = resumeKeys(this.t.secret, this.clientNonce, serverNonce);
    const payload = aeadOpen(k.kAnswer!, ZERO_NONCE, serverNonce, body.slice(16));
    const { frames, ticket } = takeTicket(payload);
    return { channel: new SecureChannel(k.kC2s!, k.kS2c!), frames, ticket: ticket ?? this.t };
  }
}
