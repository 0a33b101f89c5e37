// The Noise Protocol Framework (revision 34) handshakes Ferry uses, on the noble
// primitives: Noise_IK_25519_ChaChaPoly_BLAKE2s (initiator: the long link, §1.4) and
// Noise_N_25519_ChaChaPoly_BLAKE2s (initiator and responder: sealed short-link requests
// and their answers, §3.1). Empty prologue, no PSK. Only the state machine is written
// here; every primitive is noble's (x25519, ChaCha20-Poly1305, BLAKE2s, HMAC).

import { x25519 } from "@noble/curves/ed25519.js";
import { chacha20poly1305 } from "@noble/ciphers/chacha.js";
import { blake2s } from "@noble/hashes/blake2.js";
import { hmac } from "@noble/hashes/hmac.js";
import { concat, randomBytes, utf8 } from "./bytes.js";

const DHLEN = 32;
const HASHLEN = 32;
const EMPTY = new Uint8Array(0);

export interface KeyPair {
  priv: Uint8Array;
  pub: Uint8Array;
}

export function keyPair(priv: Uint8Array = randomBytes(32)): KeyPair {
  return { priv, pub: x25519.getPublicKey(priv) };
}

function dh(priv: Uint8Array, pub: Uint8Array): Uint8Array {
  return x25519.getSharedSecret(priv, pub);
}

/** The 12-byte ChaCha20-Poly1305 nonce of Noise and of Ferry's records: 4 zero bytes ‖
 *  the counter as u64 little-endian. */
export function recordNonce(n: bigint): Uint8Array {
  const nonce = new Uint8Array(12);
  new DataView(nonce.buffer).setBigUint64(4, n, true);
  return nonce;
}

export function aeadSeal(key: Uint8Array, nonce: Uint8Array, ad: Uint8Array, plain: Uint8Array): Uint8Array {
  return chacha20poly1305(key, nonce, ad).encrypt(plain);
}

/** Opens; throws on a bad tag. */
export function aeadOpen(key: Uint8Array, nonce: Uint8Array, ad: Uint8Array, sealed: Uint8Array): Uint8Array {
  return chacha20poly1305(key, nonce, ad).decrypt(sealed);
}

function hkdf2(ck: Uint8Array, ikm: Uint8Array): [Uint8Array, Uint8Array] {
  const temp = hmac(blake2s, ck, ikm);
  const o1 = hmac(blake2s, temp, Uint8Array.of(1));
  const o2 = hmac(blake2s, temp, concat(o1, Uint8Array.of(2)));
  return [o1, o2];
}

class SymmetricState {
  ck: Uint8Array;
  h: Uint8Array;
  k: Uint8Array | undefined;
  n = 0n;

  constructor(protocolName: string) {
    const name = utf8.encode(protocolName);
    if (name.length <= HASHLEN) {
      this.h = new Uint8Array(HASHLEN);
      this.h.set(name);
    } else {
      this.h = blake2s(name);
    }
    this.ck = this.h.slice();
    this.mixHash(EMPTY); // the empty prologue
  }

  mixHash(data: Uint8Array): void {
    this.h = blake2s(concat(this.h, data));
  }

  mixKey(ikm: Uint8Array): void {
    const [ck, k] = hkdf2(this.ck, ikm);
    this.ck = ck;
    this.k = k;
    this.n = 0n;
  }

  encryptAndHash(plain: Uint8Array): Uint8Array {
    const c = this.k ? aeadSeal(this.k, recordNonce(this.n++), this.h, plain) : plain;
    this.mixHash(c);
    return c;
  }

  decryptAndHash(c: Uint8Array): Uint8Array {
    const p = this.k ? aeadOpen(this.k, recordNonce(this.n++), this.h, c) : c;
    this.mixHash(c);
    return p;
  }

  split(): [Uint8Array, Uint8Array] {
    return hkdf2(this.ck, EMPTY);
  }
}

/** Noise IK, initiator side: message 1 out, message 2 in, then the two keys. */
export class IkInitiator {
  private ss = new SymmetricState("Noise_IK_25519_ChaChaPoly_BLAKE2s");
  private e: KeyPair;
  private s: KeyPair;
  private rs: Uint8Array;

  /** `s` and `e` are fresh unless given (the test vectors give them). */
  constructor(serverStatic: Uint8Array, opts: { s?: KeyPair; e?: KeyPair } = {}) {
    this.rs = serverStatic;
    this.s = opts.s ?? keyPair();
    this.e = opts.e ?? keyPair();
    this.ss.mixHash(this.rs); // <- s
  }

  /** `-> e, es, s, ss` with `payload`. */
  writeMessage1(payload: Uint8Array): Uint8Array {
    const ss = this.ss;
    ss.mixHash(this.e.pub);
    ss.mixKey(dh(this.e.priv, this.rs));
    const encS = ss.encryptAndHash(this.s.pub);
    ss.mixKey(dh(this.s.priv, this.rs));
    const encP = ss.encryptAndHash(payload);
    return concat(this.e.pub, encS, encP);
  }

  /** `<- e, ee, se`: the payload, and the keys (client → server, server → client).
   *  Throws when the message does not open. */
  readMessage2(msg: Uint8Array): { payload: Uint8Array; c2s: Uint8Array; s2c: Uint8Array } {
    if (msg.length < DHLEN + 16) throw new Error("handshake answer too short");
    const ss = this.ss;
    const re = msg.slice(0, DHLEN);
    ss.mixHash(re);
    ss.mixKey(dh(this.e.priv, re));
    ss.mixKey(dh(this.s.priv, re));
    const payload = ss.decryptAndHash(msg.slice(DHLEN));
    const [c2s, s2c] = ss.split();
    return { payload, c2s, s2c };
  }
}

/** Noise IK, responder side (for tests and tools: a client never needs it). */
export class IkResponder {
  private ss = new SymmetricState("Noise_IK_25519_ChaChaPoly_BLAKE2s");
  private re: Uint8Array | undefined;
  private rs: Uint8Array | undefined;

  constructor(private s: KeyPair, private e: KeyPair = keyPair()) {
    this.ss.mixHash(s.pub);
  }

  readMessage1(msg: Uint8Array): Uint8Array {
    const ss = this.ss;
    this.re = msg.slice(0, DHLEN);
    ss.mixHash(this.re);
    ss.mixKey(dh(this.s.priv, this.re));
    this.rs = ss.decryptAndHash(msg.slice(DHLEN, DHLEN + DHLEN + 16));
    ss.mixKey(dh(this.s.priv, this.rs));
    return ss.decryptAndHash(msg.slice(DHLEN + DHLEN + 16));
  }

  writeMessage2(payload: Uint8Array): { msg: Uint8Array; c2s: Uint8Array; s2c: Uint8Array } {
    const ss = this.ss;
    if (!this.re || !this.rs) throw new Error("message 1 first");
    ss.mixHash(this.e.pub);
    ss.mixKey(dh(this.e.priv, this.re));
    ss.mixKey(dh(this.e.priv, this.rs));
    const enc = ss.encryptAndHash(payload);
    const [c2s, s2c] = ss.split();
    return { msg: concat(this.e.pub, enc), c2s, s2c };
  }
}

/** Noise N, initiator: the one message `-> e, es` with `payload`, and the sending key. */
export function nWrite(
  recipientStatic: Uint8Array,
  payload: Uint8Array,
  e: KeyPair = keyPair(),
): { msg: Uint8Array; key: Uint8Array } {
  const ss = new SymmetricState("Noise_N_25519_ChaChaPoly_BLAKE2s");
  ss.mixHash(recipientStatic);
  ss.mixHash(e.pub);
  ss.mixKey(dh(e.priv, recipientStatic));
  const enc = ss.encryptAndHash(payload);
  return { msg: concat(e.pub, enc), key: ss.split()[0] };
}

/** Noise N, responder: opens the one message with the static key `s`; throws when it
 *  does not open. */
export function nRead(s: KeyPair, msg: Uint8Array): { payload: Uint8Array; key: Uint8Array } {
  if (msg.length < DHLEN + 16) throw new Error("handshake message too short");
  const ss = new SymmetricState("Noise_N_25519_ChaChaPoly_BLAKE2s");
  ss.mixHash(s.pub);
  const re = msg.slice(0, DHLEN);
  ss.mixHash(re);
  ss.mixKey(dh(s.priv, re));
  const payload = ss.decryptAndHash(msg.slice(DHLEN));
  return { payload, key: ss.split()[0] };
}

/** One direction of sealed records: ChaCha20-Poly1305 under a key, the counter as nonce. */
export class RecordCipher {
  private n = 0n;
  constructor(private key: Uint8Array) {}
  seal(plain: Uint8Array): Uint8Array {
    return aeadSeal(this.key, recordNonce(this.n++), EMPTY, plain);
  }
  open(sealed: Uint8Array): Uint8Array {
    return aeadOpen(this.key, recordNonce(this.n++), EMPTY, sealed);
  }
}
