"""Fixtures for the Python SDK's tests: a real `ferry serve` on a free 127.0.0.1 port
with a data folder of its own, and helpers to make users and wait for events.

TEST_FERRY_BIN names the server binary (crates/ferry-ffi/tests/python.rs builds it and sets
it); the `ferry` package must be importable with its library beside it (python.rs puts
both on PYTHONPATH). Without them the tests fail: they never skip.
"""

import asyncio
import itertools
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

import ferry

PASSWORD = "correct horse battery"

# Cheap password hashing (tests only), no rate limits (every test user comes from one
# address), a short shutdown.
SERVER_CONFIG = """\
[logic.password]
memory_kib = 64
iterations = 1
[logic.limits]
sends_per_user = { per_sec = 0.0, burst = 0.0 }
auth_per_user = { per_sec = 0.0, burst = 0.0 }
auth_per_ip = { per_sec = 0.0, burst = 0.0 }
register_per_ip = { per_sec = 0.0, burst = 0.0 }
[gateway]
shutdown_grace_ms = 300
[push.webpush]
vapid_private_key_file = "{vapid}"
subject = "mailto:tests@ferry.invalid"
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `ferry serve` process; restartable on the same port and data."""

    def __init__(self, root: Path):
        binary = os.environ.get("TEST_FERRY_BIN")
        if not binary or not Path(binary).is_file():
            raise RuntimeError(
                f"TEST_FERRY_BIN must name the ferry binary (cargo build -p ferry), got {binary!r}"
            )
        self.binary = binary
        self.root = root
        # A VAPID key, so the server takes Web Push and UnifiedPush targets.
        vapid = root / "vapid.pem"
        subprocess.run(
            ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(vapid)],
            check=True, capture_output=True,
        )
        self.config = root / "server.toml"
        self.config.write_text(SERVER_CONFIG.replace("{vapid}", str(vapid)))
        self.addr = f"127.0.0.1:{free_port()}"
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--config", str(self.config), "--data",
             str(self.root / "db"), "--listen", self.addr],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "FERRY_LOG": "warn"},
            text=True,
        )
        deadline = time.monotonic() + 30
        for line in self.proc.stdout:
            if line.startswith("ferry listening on"):
                break
            if time.monotonic() > deadline:
                break
        else:
            raise RuntimeError(f"ferry serve exited before listening ({self.proc.wait()})")
        # Keep reading, so the server never blocks on a full pipe.
        out = self.proc.stdout
        threading.Thread(target=lambda: [None for _ in out], daemon=True).start()

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self):
        self.kill()
        self.start()

    def config_for(self, username, password=PASSWORD, **kw):
        kw.setdefault("backoff_max_ms", 1000)
        return ferry.Config(servers=[self.addr], username=username, password=password, **kw)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("server"))
    yield s
    s.kill()


@pytest.fixture
def own_server(tmp_path):
    """A server of the test's own (one it may restart)."""
    s = Server(tmp_path)
    yield s
    s.kill()


_names = itertools.count()


def new_name(prefix):
    return f"{prefix}{os.getpid()}x{next(_names)}"


async def new_user(server, prefix, **kw):
    """Registers a fresh user and connects a client for it."""
    name = new_name(prefix)
    await ferry.register(server.config_for(name))
    return await ferry.connect(server.config_for(name, **kw))


async def next_matching(client, pred, timeout=15.0):
    """The next event `pred` accepts (others are passed over), within `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "no matching event in time"
        ev = await client.next_event(int(left * 1000))
        if ev is not None and pred(ev):
            return ev


async def drain(client, quiet=0.5):
    """Every event that comes until none has come for `quiet` s."""
    out = []
    while True:
        ev = await client.next_event(int(quiet * 1000))
        if ev is None:
            return out
        out.append(ev)


def is_message_from(sender):
    return lambda ev: ev.is_message() and ev.message.sender == sender


async def make_friends(a, b):
    """`a` asks, `b` accepts; both see the friendship."""
    await a.request_friend(b.username(), "hi")
    await next_matching(
        b, lambda ev: ev.is_friend_changed() and ev.kind == ferry.FriendEventKind.REQUEST_RECEIVED
    )
    await b.friend_action(ferry.FriendAction.ACCEPT, a.username())
    await next_matching(
        a, lambda ev: ev.is_friend_changed() and ev.kind == ferry.FriendEventKind.ADDED
    )


def run(coro):
    return asyncio.run(coro)
