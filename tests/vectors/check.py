#!/usr/bin/env python3
"""Recomputes docs/protocol.md's test vectors with implementations other than Ferry's.

Every block between `<!-- vectors:NAME:start -->` and `<!-- vectors:NAME:end -->` is read
from the document (`name value` lines; a line indented deeper than the block's fence goes
on the value above it) and each output is computed again from its inputs with PyPI's
`noiseprotocol` (the Noise handshakes and transport messages) and `cryptography`
(X25519, ChaCha20-Poly1305, HKDF-SHA256). The Rust unit tests check the same
blocks against Ferry's code, so the document, the code and a second implementation agree.

Usage: python3 tests/vectors/check.py [path/to/protocol.md]. Exit status 0: every vector
matches; 1: a list of what differs.
"""

import pathlib
import re
import sys
import warnings

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from noise.connection import Keypair, NoiseConnection

SEALED, HELLO, RESUME = 0x0A, 0x09, 0x0B
RECORD_MAX = 65519
FAILURES = []


class Block:
    def __init__(self, doc, name):
        start, end = f"<!-- vectors:{name}:start -->", f"<!-- vectors:{name}:end -->"
        a, e = doc.index(start) + len(start), doc.index(end)
        self.name, self.fields, indent = name, {}, 0
        last = None
        for line in doc[a:e].splitlines():
            if line.lstrip().startswith("```"):
                indent = len(line) - len(line.lstrip())
                continue
            if not line.strip():
                continue
            line = line[min(indent, len(line) - len(line.lstrip())):]
            if line.startswith(" "):
                self.fields[last] += " " + line.strip()
                continue
            key, _, value = line.partition(" ")
            assert key not in self.fields, f"{name}: {key} twice"
            self.fields[key], last = value.strip(), key

    def text(self, key):
        return self.fields[key]

    def hex(self, key):
        return bytes.fromhex("".join(self.fields[key].split()))

    def num(self, key):
        return int(self.fields[key].replace(" ", ""))

    def check(self, key, computed):
        want = self.hex(key)
        if want != bytes(computed):
            FAILURES.append(f"{self.name}.{key}: document {want.hex()}, computed {bytes(computed).hex()}")


def frame(cmd, body, req_id=0):
    """A Ferry frame: u24 BE length, command, u32 BE request id, body."""
    return len(body).to_bytes(3, "big") + bytes([cmd]) + req_id.to_bytes(4, "big") + bytes(body)


def public(private):
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def nonce(n):
    """Noise's ChaChaPoly nonce: 4 zero bytes, the counter as u64 little-endian."""
    return b"\0" * 4 + n.to_bytes(8, "little")


def noise(name, initiator, **keys):
    c = NoiseConnection.from_name(name.encode())
    c.set_as_initiator() if initiator else c.set_as_responder()
    for kind, key in keys.items():
        if kind == "rs":
            c.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, key)
        else:
            c.set_keypair_from_private_bytes({"s": Keypair.STATIC, "e": Keypair.EPHEMERAL}[kind], key)
    # The prologue stays empty: NoiseConnection's default, as in the document.
    c.start_handshake()
    return c


def noise_ik(doc):
    b = Block(doc, "noise-ik")
    server = public(b.hex("server_static_private"))
    b.check("server_static_public", server)
    name = "Noise_IK_25519_ChaChaPoly_BLAKE2s"
    client = noise(name, True, s=b.hex("client_static_private"), e=b.hex("client_ephemeral_private"), rs=server)
    srv = noise(name, False, s=b.hex("server_static_private"), e=b.hex("server_ephemeral_private"))
    m1 = client.write_message(b.hex("login_frame"))
    b.check("hello", frame(HELLO, m1))
    assert srv.read_message(bytes(m1)) == b.hex("login_frame")
    m2 = srv.write_message(b.hex("answer_payload"))
    b.check("hello_answer", frame(HELLO | 0x80, m2))
    assert client.read_message(bytes(m2)) == b.hex("answer_payload")
    # The split: the initiator's sending key is the first, client -> server.
    k_c2s = client.noise_protocol.cipher_state_encrypt.k
    k_s2c = client.noise_protocol.cipher_state_decrypt.k
    b.check("k_c2s", k_c2s)
    b.check("k_s2c", k_s2c)
    c2s = client.encrypt(b.hex("record_c2s_plain"))
    b.check("record_c2s", frame(SEALED, c2s))
    b.check("record_c2s", frame(SEALED, ChaCha20Poly1305(b.hex("k_c2s")).encrypt(nonce(0), b.hex("record_c2s_plain"), None)))
    assert srv.decrypt(bytes(c2s)) == b.hex("record_c2s_plain")
    s2c = srv.encrypt(b.hex("record_s2c_plain"))
    b.check("record_s2c", frame(SEALED, s2c))
    b.check("record_s2c", frame(SEALED, ChaCha20Poly1305(b.hex("k_s2c")).encrypt(nonce(0), b.hex("record_s2c_plain"), None)))


def varint(n):
    """Protobuf's varint: 7 bits a byte, least significant first, high bit = more."""
    out = bytearray()
    while True:
        if n < 0x80:
            out.append(n)
            return bytes(out)
        out.append((n & 0x7F) | 0x80)
        n >>= 7


def compact(doc):
    """Protocol 2 (section 1.6): the frames of 1.1 re-headed with varints, sealed in
    records headed by a varint length, under 1.4's keys (first record each way)."""
    b = Block(doc, "compact")
    ik = Block(doc, "noise-ik")
    assert b.hex("k_c2s") == ik.hex("k_c2s") and b.hex("k_s2c") == ik.hex("k_s2c")
    for d in ("c2s", "s2c"):
        frames, out = b.hex(f"{d}_frames"), bytearray()
        while frames:
            length = int.from_bytes(frames[0:3], "big")
            cmd, req_id = frames[3], int.from_bytes(frames[4:8], "big")
            out += varint(length) + bytes([cmd]) + varint(req_id) + frames[8 : 8 + length]
            frames = frames[8 + length :]
        b.check(f"{d}_compact", out)
        sealed = ChaCha20Poly1305(b.hex(f"k_{d}")).encrypt(nonce(0), bytes(out), None)
        b.check(f"record_{d}", varint(len(sealed)) + sealed)


def noise_n(to_public, ephemeral, cmd, meta, body):
    """A one-way Noise N message to `to_public` carrying `meta`, then `body` as records."""
    c = noise("Noise_N_25519_ChaChaPoly_BLAKE2s", True, e=ephemeral, rs=to_public)
    out = frame(cmd, c.write_message(meta))
    for i in range(0, len(body), RECORD_MAX):
        out += frame(SEALED, c.encrypt(body[i : i + RECORD_MAX]))
    return out


def sealed(doc):
    b = Block(doc, "sealed")
    server_private = b.hex("server_static_private")
    reply_public = public(b.hex("reply_private"))
    b.check("reply_public", reply_public)
    body, token = b.hex("body"), b.text("token").encode()
    meta = reply_public + b.num("sent_ms").to_bytes(8, "big") + len(body).to_bytes(4, "big")
    meta += bytes([len(token)]) + token
    request = noise_n(public(server_private), b.hex("request_ephemeral_private"), HELLO, meta, body)
    b.check("request", request)
    # The server's side: open the request with its static key (a Noise N responder).
    srv = noise("Noise_N_25519_ChaChaPoly_BLAKE2s", False, s=server_private)
    hello_len = int.from_bytes(request[:3], "big")
    assert srv.read_message(request[8 : 8 + hello_len]) == meta
    assert srv.decrypt(request[8 + hello_len + 8 :]) == body
    answer_body = b.hex("answer_body")
    answer = noise_n(reply_public, b.hex("answer_ephemeral_private"), HELLO | 0x80, len(answer_body).to_bytes(4, "big"), answer_body)
    b.check("answer", answer)


def upload(doc):
    b = Block(doc, "upload")
    offset = b.num("offset")
    n = b"\0" * 4 + offset.to_bytes(8, "big")
    aad = b.text("media_id").encode("ascii") + offset.to_bytes(8, "big")
    b.check("nonce", n)
    b.check("aad", aad)
    b.check("data", ChaCha20Poly1305(b.hex("upload_key")).encrypt(n, b.hex("chunk"), aad))


def hkdf_extract(salt, ikm):
    h = hmac.HMAC(salt, hashes.SHA256())
    h.update(ikm)
    return h.finalize()


def hkdf_expand(prk, info):
    return HKDFExpand(hashes.SHA256(), 32, info).derive(prk)


def resume(doc):
    b = Block(doc, "resume")
    secret, cn, sn = b.hex("secret"), b.hex("client_nonce"), b.hex("server_nonce")
    k_login = hkdf_expand(hkdf_extract(cn, secret), b"ferry resume login")
    main = hkdf_extract(cn + sn, secret)
    keys = {k: hkdf_expand(main, f"ferry resume {k[2:]}".encode()) for k in ("k_answer", "k_c2s", "k_s2c")}
    b.check("k_login", k_login)
    for k, v in keys.items():
        b.check(k, v)
    ticket = b.hex("ticket")
    head = b.num("sent_ms").to_bytes(8, "big") + cn + len(ticket).to_bytes(2, "big") + ticket
    sealed_login = ChaCha20Poly1305(k_login).encrypt(b"\0" * 12, b.hex("login_frame"), head)
    b.check("resume", frame(RESUME, head + sealed_login))
    answer = sn + ChaCha20Poly1305(keys["k_answer"]).encrypt(b"\0" * 12, b.hex("answer_payload"), sn)
    b.check("resume_answer", frame(RESUME | 0x80, answer))
    epoch = b.num("ticket_epoch").to_bytes(4, "big")
    ticket_key = hkdf_expand(hkdf_extract(b"ferry ticket key v1", b.hex("ticket_static_private")), epoch)
    b.check("ticket_key", ticket_key)
    b.check("ticket_secret", hkdf_expand(ticket_key, b"ferry ticket secret" + b.hex("ticket_nonce")))


def main():
    # noiseprotocol warns when an ephemeral key is given: fixed ones are what vectors are.
    warnings.filterwarnings("ignore", message="One of ephemeral keypairs is already set")
    root = pathlib.Path(__file__).resolve().parents[2]
    path = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else root / "docs" / "protocol.md"
    doc = path.read_text(encoding="utf-8")
    names = set(re.findall(r"<!-- vectors:([a-z0-9-]+):start -->", doc))
    checks = {"noise-ik": noise_ik, "compact": compact, "sealed": sealed, "upload": upload, "resume": resume}
    if names != set(checks):
        FAILURES.append(f"vector blocks in the document {sorted(names)}, checked here {sorted(checks)}")
    for name, check in checks.items():
        if name in names:
            try:
                check(doc)
            except Exception as e:  # a block that cannot be read or opened is a failure too
                FAILURES.append(f"{name}: {type(e).__name__}: {e}")
    if FAILURES:
        print("docs/protocol.md test vectors that another implementation does not reproduce:")
        print("\n".join(FAILURES))
        return 1
    print(f"{len(checks)} vector blocks of {path} reproduced by noiseprotocol and cryptography")
    return 0


if __name__ == "__main__":
    sys.exit(main())
