"""The Python SDK against a real `ferry serve`: chat, catch-up, a server restart, a
network change, errors as exceptions, media with progress, and the app's lifecycle."""

import asyncio
import base64
import time

import pytest

import ferry
from conftest import (
    PASSWORD,
    drain,
    is_message_from,
    make_friends,
    new_name,
    new_user,
    next_matching,
    run,
)


def test_two_clients_chat(server):
    async def main():
        ann = await new_user(server, "ann")
        bob = await new_user(server, "bob")
        await make_friends(ann, bob)
        ack = await ann.send_text(bob.username(), "hello bob")
        assert ack.msg_id > 0 and ack.seq > 0
        ev = await next_matching(bob, is_message_from(ann.username()))
        m = ev.message
        assert (m.text, m.recipient, m.outgoing, m.msg_id) == (
            "hello bob", bob.username(), False, ack.msg_id)
        assert m.seq > 0 and m.gseq == 0 and m.group_id == 0
        await bob.send_text(ann.username(), "hello ann")
        seen = []
        ev = await next_matching(
            ann, lambda e: seen.append(e) or is_message_from(bob.username())(e))
        assert ev.message.text == "hello ann"
        # The sender's inbox holds their own message too, marked outgoing, before the
        # answer.
        mine = [e.message for e in seen if e.is_message() and e.message.outgoing]
        assert [m.text for m in mine] == ["hello bob"] and mine[0].seq < ev.message.seq
        for c in (ann, bob):
            await c.close()
        with pytest.raises(ferry.FerryError.Closed):
            await ann.send_text(bob.username(), "after close")

    run(main())


def test_an_offline_client_catches_up_exactly_once_and_in_order(server, tmp_path):
    async def main():
        ann = await new_user(server, "ann")
        bob_name = new_name("bob")
        await ferry.register(server.config_for(bob_name))
        state = str(tmp_path / "bob-state")
        bob = await ferry.connect(server.config_for(bob_name, state_dir=state))
        await make_friends(ann, bob)
        await drain(bob)
        await bob.close()

        texts = [f"while you were away {i}" for i in range(8)]
        for t in texts:
            await ann.send_text(bob_name, t)

        bob = await ferry.connect(server.config_for(bob_name, state_dir=state))
        got = []
        while len(got) < len(texts):
            ev = await next_matching(bob, is_message_from(ann.username()))
            got.append(ev.message)
        # Nothing more comes: each message once.
        extra = [e for e in await drain(bob, 1.0) if e.is_message()]
        assert extra == []
        assert [m.text for m in got] == texts
        seqs = [m.seq for m in got]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        synckey = bob.synckey()
        assert synckey >= seqs[-1]
        await bob.close()

        # A third start brings nothing again.
        bob = await ferry.connect(server.config_for(bob_name, state_dir=state))
        await next_matching(bob, lambda e: e.is_connected())
        assert [e for e in await drain(bob, 1.0) if e.is_message()] == []
        assert bob.synckey() == synckey
        await bob.close()
        await ann.close()

    run(main())


def test_a_restarted_server_is_survived(own_server):
    async def main():
        ann = await new_user(own_server, "ann")
        bob = await new_user(own_server, "bob")
        await make_friends(ann, bob)
        await drain(bob)
        own_server.restart()
        ev = await next_matching(bob, lambda e: e.is_disconnected() or e.is_connected())
        assert ev.is_disconnected(), ev
        await next_matching(bob, lambda e: e.is_connected(), timeout=20)
        # The sender retries until the new process stores it.
        await ann.send_text(bob.username(), "after the restart")
        ev = await next_matching(bob, is_message_from(ann.username()))
        assert ev.message.text == "after the restart"
        await ann.close()
        await bob.close()

    run(main())


def test_network_changed_reconnects(server):
    async def main():
        ann = await new_user(server, "ann")
        bob = await new_user(server, "bob", network="wifi:home")
        await make_friends(ann, bob)
        await drain(bob)
        first = bob.endpoint()
        assert first is not None
        bob.network_changed("cell:test")
        ev = await next_matching(bob, lambda e: e.is_connected())
        assert ev.endpoint == first and ev.transport == ferry.Transport.TCP
        assert bob.status() == ferry.Status.CONNECTED
        await ann.send_text(bob.username(), "on the new network")
        ev = await next_matching(bob, is_message_from(ann.username()))
        assert ev.message.text == "on the new network"
        await ann.close()
        await bob.close()

    run(main())


def test_a_bad_password_is_an_exception_with_the_servers_code(server):
    async def main():
        name = new_name("carl")
        await ferry.register(server.config_for(name))
        with pytest.raises(ferry.FerryError.Server) as e:
            await ferry.connect(server.config_for(name, password="not the password"))
        assert e.value.code == ferry.ErrorCode.BAD_CREDENTIALS
        assert e.value.code_name == "BAD_CREDENTIALS"
        with pytest.raises(ferry.FerryError.Server) as e:
            await ferry.register(server.config_for(name))
        assert e.value.code == ferry.ErrorCode.USER_EXISTS
        with pytest.raises(ferry.FerryError.InvalidArgument):
            await ferry.connect(ferry.Config(servers=[], username=name, password=PASSWORD))

    run(main())


def test_a_refused_send_is_an_exception_with_the_servers_code(server):
    async def main():
        ann = await new_user(server, "ann")
        stranger = await new_user(server, "dan")
        with pytest.raises(ferry.FerryError.Server) as e:
            await ann.send_text(stranger.username(), "we are not friends")
        assert e.value.code == ferry.ErrorCode.PERMISSION_DENIED
        assert e.value.code_name == "PERMISSION_DENIED"
        with pytest.raises(ferry.FerryError.Server) as e:
            await ann.send_text(new_name("nobody"), "nobody is there")
        assert e.value.code == ferry.ErrorCode.UNKNOWN_USER
        await ann.close()
        await stranger.close()

    run(main())


class Progress(ferry.ProgressListener):
    def __init__(self):
        self.seen = []

    def on_progress(self, done, total):
        self.seen.append((done, total))


def test_media_goes_and_comes_back_with_progress(server):
    async def main():
        ann = await new_user(server, "ann")
        bob = await new_user(server, "bob")
        await make_friends(ann, bob)
        data = bytes(range(256)) * 4096  # 1 MiB: several chunks
        up = Progress()
        sent = await ann.send_file(
            ferry.Destination.USER(bob.username()), data, "notes.bin", up)
        assert sent.media.size == len(data) and sent.media.kind == ferry.MediaKind.FILE
        assert up.seen[-1] == (len(data), len(data))
        ev = await next_matching(bob, is_message_from(ann.username()))
        media = ev.message.media
        assert media is not None and media.file_name == "notes.bin"
        down = Progress()
        got = await bob.download(media.media_id, down)
        assert got == data
        assert down.seen[-1] == (len(data), len(data))
        await ann.close()
        await bob.close()

    run(main())


def test_groups_listener_and_the_apps_lifecycle(server):
    async def main():
        ann = await new_user(server, "ann", background_grace_ms=100)
        bob = await new_user(server, "bob")
        await make_friends(ann, bob)
        await drain(ann)
        group = await ann.create_group("tea", [bob.username()], False)
        assert group.owner == ann.username()
        info = await bob.group_info(group.group_id)
        assert sorted(m.username for m in info.members) == sorted(
            [ann.username(), bob.username()])

        # Bob hears through a listener, on the SDK's event thread.
        heard = asyncio.Queue()
        loop = asyncio.get_running_loop()

        class Listener(ferry.EventListener):
            def on_event(self, event):
                loop.call_soon_threadsafe(heard.put_nowait, event)

        bob.set_listener(Listener())
        with pytest.raises(ferry.FerryError.InvalidArgument):
            await bob.next_event(10)
        ack = await ann.send_group_text(group.group_id, "hi all", [bob.username()])
        while True:
            ev = await asyncio.wait_for(heard.get(), 15)
            if ev.is_message() and ev.message.group_id == group.group_id:
                break
        assert ev.message.gseq == ack.seq and ev.message.mentions == [bob.username()]

        # In the background the link closes after the grace; in the foreground it is back.
        ann.app_backgrounded()
        deadline = time.monotonic() + 10
        while ann.status() != ferry.Status.BACKGROUND:
            assert time.monotonic() < deadline, ann.status()
            await asyncio.sleep(0.05)
        await bob.send_text(ann.username(), "while you were in the background")
        ann.app_foregrounded()
        await ann.wait_connected(10_000)
        ev = await next_matching(ann, is_message_from(bob.username()))
        assert ev.message.text == "while you were in the background"
        await ann.close()
        await bob.close()

    run(main())


def test_push_targets_and_payloads(server):
    async def main():
        ann = await new_user(server, "ann")
        b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
        target = ferry.unified_push_target(
            "https://up.ferry.invalid/ann", b64(b"\x04" + bytes(range(64))), b64(bytes(16)))
        stored = await ann.register_push(target)
        assert stored.provider == ferry.PushProvider.UNIFIED_PUSH
        assert stored.endpoint == "https://up.ferry.invalid/ann"
        assert stored.device_id == ann.device_id()
        assert [t.endpoint for t in await ann.push_targets()] == [stored.endpoint]
        await ann.unregister_push(None)
        assert await ann.push_targets() == []
        # A provider the server has no credentials for is refused with its code.
        with pytest.raises(ferry.FerryError.Server) as e:
            await ann.register_push(ferry.fcm_target("fcm-token-1", ""))
        assert e.value.code == ferry.ErrorCode.INVALID_ARGUMENT
        data = ferry.parse_push_payload(
            '{"aps": {"badge": 2}, "ferry": {"v": 1, "seq": 5, "count": 2, "kind": "message"}}')
        assert (data.seq, data.count, data.kind) == (5, 2, "message")
        with pytest.raises(ferry.FerryError.Protocol):
            ferry.parse_push_payload("not json")
        assert await ann.logout(False) >= 1
        with pytest.raises(ferry.FerryError.Closed):
            await ann.send_text(ann.username(), "after logout")

    run(main())
