"""The independent check of Ferry's Web Push requests: another implementation decrypts
the body (Mozilla's http_ece, RFC 8188/8291 aes128gcm) and verifies the VAPID JWT
(Mozilla's py_vapid, and the claims here), playing the browser whose subscription Ferry
pushed to. Run by crates/ferry-push/tests/webpush_interop.rs in target/push-venv.

    check_webpush.py gen DIR
        makes the browser's P-256 key pair and auth secret (DIR/ua.pem, DIR/auth),
        prints {"p256dh": ..., "auth": ...} (base64url) for the subscription
    check_webpush.py check DIR BODY_FILE AUTHORIZATION AUDIENCE
        decrypts BODY_FILE with DIR's key and auth secret, verifies AUTHORIZATION
        (`vapid t=<JWT>, k=<key>`) for AUDIENCE, prints
        {"payload": <decrypted JSON>, "claims": {...}, "rs": n, "key_id_len": n}

Any failure is an exception: a non-zero exit with the reason.
"""

import base64
import json
import os
import struct
import sys
import time

import http_ece
import py_vapid
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def gen(folder):
    key = ec.generate_private_key(ec.SECP256R1())
    auth = os.urandom(16)
    with open(os.path.join(folder, "ua.pem"), "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with open(os.path.join(folder, "auth"), "wb") as f:
        f.write(auth)
    public = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    print(json.dumps({"p256dh": b64url(public), "auth": b64url(auth)}))


def check(folder, body_file, authorization, audience):
    with open(os.path.join(folder, "ua.pem"), "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    with open(os.path.join(folder, "auth"), "rb") as f:
        auth = f.read()
    with open(body_file, "rb") as f:
        body = f.read()
    rs, key_id_len = struct.unpack("!IB", body[16:21])
    plaintext = http_ece.decrypt(
        body, private_key=key, auth_secret=auth, version="aes128gcm"
    )
    payload = json.loads(plaintext.decode("utf-8"))

    # RFC 8292: `vapid t=<JWT>, k=<public key>`.
    scheme, _, params = authorization.partition(" ")
    assert scheme == "vapid", "scheme %r is not vapid" % scheme
    parts = dict(p.strip().split("=", 1) for p in params.split(","))
    token, public = parts["t"], parts["k"]
    # py_vapid verifies the ES256 signature with the key in `k`.
    assert py_vapid.Vapid02.verify("vapid t=%s,k=%s" % (token, public)), (
        "py_vapid: the VAPID JWT signature does not verify"
    )
    header = json.loads(unb64url(token.split(".")[0]))
    claims = json.loads(unb64url(token.split(".")[1]))
    assert header.get("alg") == "ES256", header
    assert claims.get("aud") == audience, (claims, audience)
    now = time.time()
    assert now < claims["exp"] <= now + 24 * 3600, claims
    assert claims["sub"].startswith("mailto:") or claims["sub"].startswith(
        "https://"
    ), claims
    print(
        json.dumps(
            {"payload": payload, "claims": claims, "rs": rs, "key_id_len": key_id_len}
        )
    )


def main():
    if sys.argv[1] == "gen":
        gen(sys.argv[2])
    elif sys.argv[1] == "check":
        check(*sys.argv[2:6])
    else:
        raise SystemExit("usage: check_webpush.py gen DIR | check DIR BODY AUTH AUD")


if __name__ == "__main__":
    main()
