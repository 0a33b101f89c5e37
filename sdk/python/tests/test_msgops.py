"""Message operations and search (docs/protocol.md §4a and Search) through the Python SDK,
against a real `ferry serve`: a reply quotes what it answers, an edit reaches the peer,
reactions are counted, a hide reaches the user's other device (and nobody else), pins
come and go, and search finds Chinese and English text for the users who may read it
and nothing for a stranger."""

import asyncio
import time

import pytest

import ferry
from conftest import drain, is_message_from, make_friends, new_user, next_matching, run


async def friends_pair(server):
    ann = await new_user(server, "ann")
    bob = await new_user(server, "bob")
    await make_friends(ann, bob)
    await drain(ann)
    await drain(bob)
    return ann, bob


async def received(client, sender, text):
    """The message `text` from `sender`, as `client` receives it."""
    ev = await next_matching(
        client, lambda e: is_message_from(sender)(e) and e.message.text == text)
    return ev.message


async def search_until(client, want, **query):
    """Searches until `want` hits come back (the index follows the store within about two
    seconds), for at most 15 s; the last page either way."""
    deadline = time.monotonic() + 15
    while True:
        page = await client.search(ferry.SearchQuery(**query))
        if len(page.hits) >= want or time.monotonic() > deadline:
            return page
        await asyncio.sleep(0.1)


def test_a_reply_quotes_the_message_it_answers(server):
    async def main():
        ann, bob = await friends_pair(server)
        ack = await ann.send_text(bob.username(), "tea at five?")
        await received(bob, ann.username(), "tea at five?")
        reply = await bob.reply(ack.msg_id, "yes, at the usual place")
        got = await received(ann, bob.username(), "yes, at the usual place")
        assert got.msg_id == reply.msg_id and got.recipient == ann.username()
        q = got.quote
        assert q is not None
        assert (q.msg_id, q.sender, q.text, q.kind, q.recalled) == (
            ack.msg_id, ann.username(), "tea at five?", ferry.MediaKind.UNSPECIFIED, False)
        # A plain message quotes nothing and was never edited.
        plain = await ann.send_text(bob.username(), "plain")
        got = await received(bob, ann.username(), "plain")
        assert got.msg_id == plain.msg_id and got.quote is None and got.edited_ms == 0

        # A message the replier may not read is NOT_FOUND; 0 is the caller's mistake.
        dan = await new_user(server, "dan")
        with pytest.raises(ferry.FerryError.Server) as e:
            await dan.reply(ack.msg_id, "not mine to answer")
        assert e.value.code == ferry.ErrorCode.NOT_FOUND
        with pytest.raises(ferry.FerryError.InvalidArgument):
            await dan.reply(0, "nothing")
        for c in (ann, bob, dan):
            await c.close()

    run(main())


def test_an_edit_reaches_the_peer(server):
    async def main():
        ann, bob = await friends_pair(server)
        ack = await ann.send_text(bob.username(), "see you at 6")
        await received(bob, ann.username(), "see you at 6")
        await ann.edit(ack.msg_id, "see you at 7")
        # A retry (the same text) is harmless and logs nothing more.
        await ann.edit(ack.msg_id, "see you at 7")
        ev = await next_matching(bob, lambda e: e.is_edit())
        assert (ev.msg_id, ev.text, ev.by, ev.group_id, ev.gseq) == (
            ack.msg_id, "see you at 7", ann.username(), 0, 0)
        assert ev.seq > 0 and ev.edited_ms >= ack.time_ms
        # The sender's other devices learn it too: its own inbox has the entry.
        mine = await next_matching(ann, lambda e: e.is_edit())
        assert (mine.msg_id, mine.text) == (ack.msg_id, "see you at 7")
        assert [e for e in await drain(bob) if e.is_edit()] == []
        # Only the sender edits.
        with pytest.raises(ferry.FerryError.Server) as e:
            await bob.edit(ack.msg_id, "see you never")
        assert e.value.code == ferry.ErrorCode.PERMISSION_DENIED
        # A device syncing afterwards gets the message with the edited text.
        late = await ferry.connect(server.config_for(bob.username()))
        got = await received(late, ann.username(), "see you at 7")
        assert got.msg_id == ack.msg_id and got.edited_ms == ev.edited_ms
        for c in (ann, bob, late):
            await c.close()

    run(main())


def test_reactions_are_counted(server):
    async def main():
        ann, bob = await friends_pair(server)
        ack = await ann.send_text(bob.username(), "we won!")
        await received(bob, ann.username(), "we won!")
        await bob.react(ack.msg_id, "👍")
        ev = await next_matching(ann, lambda e: e.is_reaction())
        assert (ev.msg_id, ev.emoji, ev.by, ev.added, ev.count) == (
            ack.msg_id, "👍", bob.username(), True, 1)
        await ann.react(ack.msg_id, "👍")
        await ann.react(ack.msg_id, "🎉")
        await ann.react(ack.msg_id, "🎉")  # already there: nothing changes

        r = await ann.reactions(ack.msg_id)
        assert [(c.emoji, c.count, c.mine) for c in r.counts] == [("👍", 2, True), ("🎉", 1, True)]
        assert r.users == [] and r.next_after == 0
        r = await bob.reactions(ack.msg_id, "👍")
        assert sorted(r.users) == sorted([ann.username(), bob.username()])
        assert {c.emoji: c.mine for c in r.counts} == {"👍": True, "🎉": False}
        # A page at a time.
        first = await bob.reactions(ack.msg_id, "👍", 0, 1)
        assert len(first.users) == 1 and first.next_after != 0
        second = await bob.reactions(ack.msg_id, "👍", first.next_after, 1)
        assert sorted(first.users + second.users) == sorted([ann.username(), bob.username()])

        await bob.unreact(ack.msg_id, "👍")
        ev = await next_matching(
            ann, lambda e: e.is_reaction() and not e.added and e.by == bob.username())
        assert (ev.emoji, ev.count) == ("👍", 1)
        r = await bob.reactions(ack.msg_id)
        assert sorted((c.emoji, c.count, c.mine) for c in r.counts) == sorted(
            [("👍", 1, False), ("🎉", 1, False)])

        with pytest.raises(ferry.FerryError.Server) as e:
            await bob.react(ack.msg_id, "two words")
        assert e.value.code == ferry.ErrorCode.INVALID_ARGUMENT
        with pytest.raises(ferry.FerryError.InvalidArgument):
            await bob.reactions(ack.msg_id, "")
        dan = await new_user(server, "dan")
        with pytest.raises(ferry.FerryError.Server) as e:
            await dan.react(ack.msg_id, "👍")
        assert e.value.code == ferry.ErrorCode.NOT_FOUND
        for c in (ann, bob, dan):
            await c.close()

    run(main())


def test_a_hide_reaches_the_users_other_device_and_nobody_else(server):
    async def main():
        ann, bob = await friends_pair(server)
        # A second device of ann's (no state folder: a new device id).
        ann2 = await ferry.connect(server.config_for(ann.username()))
        await drain(ann2)
        keep = await bob.send_text(ann.username(), "keep this")
        gone = await bob.send_text(ann.username(), "forget this")
        await received(ann2, bob.username(), "forget this")
        await drain(ann)
        await drain(bob)

        await ann.hide([gone.msg_id])
        for device in (ann, ann2):
            ev = await next_matching(device, lambda e: e.is_hide())
            assert ev.msg_ids == [gone.msg_id] and ev.seq > 0
        # Hidden already: no entry again.
        await ann.hide([gone.msg_id])
        assert [e for e in await drain(ann2) if e.is_hide()] == []
        # Bob's chat does not change.
        assert [e for e in await drain(bob, 1.0) if e.is_hide()] == []

        # A device that syncs later gets the message and then the hide.
        late = await ferry.connect(server.config_for(ann.username()))
        seen = []
        await next_matching(late, lambda e: seen.append(e) or e.is_hide())
        ids = [e.message.msg_id for e in seen if e.is_message()]
        assert keep.msg_id in ids and gone.msg_id in ids

        # Search leaves the hidden message out for ann, not for bob.
        found = await search_until(bob, 1, text="forget")
        assert [h.message.msg_id for h in found.hits] == [gone.msg_id]
        found = await search_until(ann, 1, text="keep")
        assert [h.message.msg_id for h in found.hits] == [keep.msg_id]
        assert (await ann.search(ferry.SearchQuery(text="forget"))).hits == []

        with pytest.raises(ferry.FerryError.Server) as e:
            await ann.hide([])
        assert e.value.code == ferry.ErrorCode.INVALID_ARGUMENT
        for c in (ann, ann2, bob, late):
            await c.close()

    run(main())


def test_pins_in_a_chat_and_in_a_group(server):
    async def main():
        ann, bob = await friends_pair(server)
        ack = await bob.send_text(ann.username(), "the address is 12 Elm St")
        await received(ann, bob.username(), "the address is 12 Elm St")
        chat_with_bob = ferry.Destination.USER(bob.username())
        await ann.pin(chat_with_bob, ack.msg_id)
        ev = await next_matching(bob, lambda e: e.is_pin())
        # Each side sees the conversation by the other party's name.
        assert ev.conversation == ferry.Destination.USER(ann.username())
        assert (ev.msg_id, ev.by, ev.pinned) == (ack.msg_id, ann.username(), True)
        pins = await bob.pins(ferry.Destination.USER(ann.username()))
        assert [(p.msg_id, p.by) for p in pins] == [(ack.msg_id, ann.username())]
        assert pins[0].time_ms > 0
        await bob.unpin(ferry.Destination.USER(ann.username()), ack.msg_id)
        ev = await next_matching(ann, lambda e: e.is_pin() and not e.pinned)
        assert (ev.msg_id, ev.by, ev.conversation) == (ack.msg_id, bob.username(), chat_with_bob)
        assert await ann.pins(chat_with_bob) == []

        # In a group only the owner and admins pin; every member sees it in the log.
        group = await ann.create_group("pins", [bob.username()], False)
        where = ferry.Destination.GROUP(group.group_id)
        said = await bob.send_group_text(group.group_id, "agenda: search", [])
        with pytest.raises(ferry.FerryError.Server) as e:
            await bob.pin(where, said.msg_id)
        assert e.value.code == ferry.ErrorCode.PERMISSION_DENIED
        await ann.pin(where, said.msg_id)
        # (Bob's own unpin above is in his inbox first.)
        ev = await next_matching(bob, lambda e: e.is_pin() and e.pinned)
        assert (ev.conversation, ev.msg_id, ev.seq) == (where, said.msg_id, 0) and ev.gseq > 0
        assert [p.msg_id for p in await bob.pins(where)] == [said.msg_id]

        with pytest.raises(ferry.FerryError.InvalidArgument):
            await ann.pins(ferry.Destination.GROUP(0))
        dan = await new_user(server, "dan")
        with pytest.raises(ferry.FerryError.Server) as e:
            await dan.pin(ferry.Destination.USER(ann.username()), ack.msg_id)
        assert e.value.code == ferry.ErrorCode.NOT_FOUND
        for c in (ann, bob, dan):
            await c.close()

    run(main())


def test_search_finds_chinese_and_english_for_those_who_may_read_it(server):
    async def main():
        ann, bob = await friends_pair(server)
        dan = await new_user(server, "dan")
        cafe = await ann.send_text(bob.username(), "Dinner at Café Lumière tonight?")
        duck = await bob.send_text(ann.username(), "明天我们去北京烤鸭店吃饭吧")

        def search(client, want, **q):
            return search_until(client, want, highlight=True, **q)

        page = await search(ann, 1, text="北京烤鸭")
        assert [h.message.msg_id for h in page.hits] == [duck.msg_id] and page.total == 1
        hit = page.hits[0]
        assert (hit.message.text, hit.message.sender, hit.message.outgoing) == (
            "明天我们去北京烤鸭店吃饭吧", bob.username(), False)
        # The highlight marks the words in the snippet (byte ranges of its UTF-8).
        raw = hit.snippet.encode()
        marked = "".join(raw[r.start:r.end].decode() for r in hit.ranges)
        assert hit.ranges and "北京" in marked

        page = await search(bob, 1, text="cafe")
        assert [h.message.msg_id for h in page.hits] == [cafe.msg_id]
        hit = page.hits[0]
        assert hit.message.outgoing is False and hit.message.sender == ann.username()
        assert any(hit.snippet.encode()[r.start:r.end].decode().lower() == "café"
                   for r in hit.ranges)

        # The filters and paging: both messages of the chat, one per page, newest first.
        page = await search(ann, 1, peer=bob.username(), limit=1)
        assert page.total == 2 and [h.message.msg_id for h in page.hits] == [duck.msg_id]
        assert page.next is not None
        last = await ann.search(ferry.SearchQuery(peer=bob.username(), limit=1, page=page.next))
        assert [h.message.msg_id for h in last.hits] == [cafe.msg_id] and last.next is None
        mine = await ann.search(ferry.SearchQuery(sender=ann.username()))
        assert [h.message.msg_id for h in mine.hits] == [cafe.msg_id]
        assert mine.hits[0].message.outgoing and mine.hits[0].snippet == ""
        images = await ann.search(ferry.SearchQuery(kinds=[ferry.SearchKind.IMAGE]))
        assert images.hits == [] and images.total == 0

        # A stranger finds neither.
        for text in ("北京烤鸭", "cafe", "Lumière", ""):
            page = await dan.search(ferry.SearchQuery(text=text))
            assert page.hits == [] and page.total == 0, text

        with pytest.raises(ferry.FerryError.Server) as e:
            await dan.search(ferry.SearchQuery(peer=dan.username() + "nobody"))
        assert e.value.code == ferry.ErrorCode.UNKNOWN_USER
        with pytest.raises(ferry.FerryError.Server) as e:
            await dan.search(ferry.SearchQuery(text="x" * 1025))
        assert e.value.code == ferry.ErrorCode.INVALID_ARGUMENT
        with pytest.raises(ferry.FerryError.InvalidArgument):
            await dan.search(ferry.SearchQuery(sender=""))
        for c in (ann, bob, dan):
            await c.close()

    run(main())
