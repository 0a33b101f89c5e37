"""Conversation state and forwarding (docs/protocol.md §4b) through the Python SDK,
against a real `ferry serve`: archive, mute, mark-unread, draft and clear reach the user's
other device as `Conv` events and nobody else; a 1:1 retention reaches both parties and a
group's every member (`Retention`); a cleared group's older messages come to a new device
of that user without content (`NoContent`) while a newer one comes whole; a forward
carries the original's author and text to a third user; refusals are clear."""

import pytest

import ferry
from conftest import drain, is_message_from, make_friends, new_user, next_matching, run


async def conv_events(client, want, timeout=15.0):
    """The next `want` `Conv` events of `client`."""
    out = []
    while len(out) < want:
        out.append(await next_matching(client, lambda e: e.is_conv(), timeout))
    return out


def test_conversation_state_reaches_the_users_other_device_and_nobody_else(server):
    async def main():
        ann = await new_user(server, "ann")
        bob = await new_user(server, "bob")
        await make_friends(ann, bob)
        ann2 = await ferry.connect(server.config_for(ann.username()))
        m1 = await bob.send_text(ann.username(), "one")
        m2 = await ann.send_text(bob.username(), "two")
        await next_matching(ann2, lambda e: e.is_message() and e.message.msg_id == m2.msg_id)
        for c in (ann, ann2, bob):
            await drain(c)

        peer = ferry.Destination.USER(bob.username())
        s = await ann.archive(peer, True)
        assert (s.conversation, s.archived) == (peer, True)
        s = await ann2.mute(peer, -1)
        assert (s.muted_until_ms, s.archived) == (-1, True)
        s = await ann.mark_unread(peer, True)
        assert s.unread
        s = await ann.set_draft(peer, "see you at 8")
        assert s.draft == "see you at 8" and s.draft_ms > 0
        s = await ann2.clear_history(peer)
        assert s.cleared_before_msg_id == m2.msg_id and m1.msg_id < m2.msg_id

        # Each change reaches the other device as the whole state, in inbox order.
        got = await conv_events(ann2, 5)
        assert all(e.seq > 0 and e.state.conversation == peer for e in got)
        last = got[-1].state
        assert (last.archived, last.muted_until_ms, last.unread, last.draft,
                last.cleared_before_msg_id) == (True, -1, True, "see you at 8", m2.msg_id)

        # The server lists it; bob has no state and got no Conv event.
        mine = [c for c in await ann.conversations() if c.conversation == peer]
        assert len(mine) == 1 and mine[0].archived and mine[0].draft == "see you at 8"
        assert await bob.conversations() == []
        assert [e for e in await drain(bob) if e.is_conv()] == []

        # Several fields at once; False, 0 and "" present are changes; the clear stays.
        states = await ann.conv_set([ferry.ConvChange(
            conversation=peer, archived=False, unread=False, muted_until_ms=0, draft="")])
        after = next(c for c in states if c.conversation == peer)
        assert (after.archived, after.unread, after.muted_until_ms, after.draft,
                after.cleared_before_msg_id) == (False, False, 0, "", m2.msg_id)
        (ev,) = await conv_events(ann2, 1)
        assert ev.state == after

        # Refusals.
        with pytest.raises(ferry.FerryError.Server) as e:
            await ann.set_draft(peer, "x" * 4001)
        assert e.value.code == ferry.ErrorCode.TOO_LARGE
        with pytest.raises(ferry.FerryError.Server) as e:
            await ann.archive(ferry.Destination.USER("nobody-here"), True)
        assert e.value.code == ferry.ErrorCode.UNKNOWN_USER
        with pytest.raises(ferry.FerryError.Server) as e:
            await ann.set_retention(peer, 30)
        assert e.value.code == ferry.ErrorCode.INVALID_ARGUMENT
        with pytest.raises(ferry.FerryError.InvalidArgument):
            await ann.archive(ferry.Destination.GROUP(0), True)
        with pytest.raises(ferry.FerryError.InvalidArgument):
            await ann.mute(peer, -2)
        for c in (ann, ann2, bob):
            await c.close()

    run(main())


def test_retention_reaches_both_parties_and_every_member(server):
    async def main():
        ann = await new_user(server, "ann")
        bob = await new_user(server, "bob")
        await make_friends(ann, bob)
        await drain(ann)
        await drain(bob)
        s = await ann.set_retention(ferry.Destination.USER(bob.username()), 3600)
        assert s.retention_secs == 3600
        (theirs,) = await conv_events(bob, 1)
        assert theirs.state.conversation == ferry.Destination.USER(ann.username())
        assert theirs.state.retention_secs == 3600
        (mine,) = await conv_events(ann, 1)
        assert mine.state.retention_secs == 3600

        group = await ann.create_group("kept an hour", [bob.username()], False)
        where = ferry.Destination.GROUP(group.group_id)
        with pytest.raises(ferry.FerryError.Server) as e:
            await bob.set_retention(where, 600)
        assert e.value.code == ferry.ErrorCode.PERMISSION_DENIED
        await ann.set_retention(where, 600)
        ev = await next_matching(bob, lambda e: e.is_retention())
        assert (ev.group_id, ev.retention_secs, ev.by) == (group.group_id, 600, ann.username())
        assert ev.gseq > 0
        listed = [c for c in await bob.conversations() if c.conversation == where]
        assert [c.retention_secs for c in listed] == [600]
        for c in (ann, bob):
            await c.close()

    run(main())


def test_a_cleared_groups_older_messages_come_without_content(server):
    async def main():
        ann = await new_user(server, "ann")
        bob = await new_user(server, "bob")
        await make_friends(ann, bob)
        group = await ann.create_group("crew", [bob.username()], False)
        where = ferry.Destination.GROUP(group.group_id)
        g1 = await bob.send_group_text(group.group_id, "old one", [])
        g2 = await ann.send_group_text(group.group_id, "old two", [])
        s = await ann.clear_history(where)
        assert s.cleared_before_msg_id == g2.msg_id
        g3 = await bob.send_group_text(group.group_id, "new", [])

        fresh = await ferry.connect(server.config_for(ann.username()))
        events = []
        while not any(e.is_message() and e.message.msg_id == g3.msg_id for e in events):
            ev = await fresh.next_event(15000)
            assert ev is not None, f"no event in time; so far {events}"
            events.append(ev)
        events += await drain(fresh)
        msgs = [e.message.msg_id for e in events if e.is_message() and e.message.group_id]
        assert msgs == [g3.msg_id], msgs
        places = [e.gseq for e in events if e.is_no_content() and e.group_id == group.group_id]
        assert g1.seq in places and g2.seq in places, (places, g1.seq, g2.seq)
        assert any(e.is_conv() and e.state.conversation == where
                   and e.state.cleared_before_msg_id == g2.msg_id for e in events)

        # The other member still reads every message.
        other = await ferry.connect(server.config_for(bob.username()))
        want = {g1.msg_id, g2.msg_id, g3.msg_id}
        got = set()
        while got != want:
            ev = await next_matching(other, lambda e: e.is_message() and e.message.group_id)
            got.add(ev.message.msg_id)
        assert not [e for e in await drain(other) if e.is_no_content()]
        for c in (ann, bob, fresh, other):
            await c.close()

    run(main())


def test_a_forward_carries_the_originals_author_and_text(server):
    async def main():
        ann = await new_user(server, "ann")
        bob = await new_user(server, "bob")
        cy = await new_user(server, "cy")
        await make_friends(ann, bob)
        await make_friends(bob, cy)
        orig = await ann.send_text(bob.username(), "the plan")
        got = await next_matching(bob, lambda e: e.is_message() and e.message.msg_id == orig.msg_id)
        assert got.message.forwarded is None
        fwd = await bob.forward(ferry.Destination.USER(cy.username()), orig.msg_id)
        ev = await next_matching(cy, is_message_from(bob.username()))
        m = ev.message
        assert (m.msg_id, m.text) == (fwd.msg_id, "the plan")
        assert m.forwarded == ferry.Forwarded(sender=ann.username(), time_ms=orig.time_ms)

        # A forward of a forward, into a group, keeps the first original.
        group = await cy.create_group("fwd", [bob.username()], False)
        again = await cy.forward(ferry.Destination.GROUP(group.group_id), fwd.msg_id)
        ev = await next_matching(
            bob, lambda e: e.is_message() and e.message.msg_id == again.msg_id)
        assert (ev.message.sender, ev.message.group_id, ev.message.forwarded.sender) == (
            cy.username(), group.group_id, ann.username())

        # cy may not read ann's message to bob; 0 names no message.
        secret = await ann.send_text(bob.username(), "between us")
        with pytest.raises(ferry.FerryError.Server) as e:
            await cy.forward(ferry.Destination.USER(bob.username()), secret.msg_id)
        assert e.value.code == ferry.ErrorCode.NOT_FOUND
        with pytest.raises(ferry.FerryError.InvalidArgument):
            await cy.forward(ferry.Destination.USER(bob.username()), 0)
        for c in (ann, bob, cy):
            await c.close()

    run(main())
