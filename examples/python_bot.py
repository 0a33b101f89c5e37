#!/usr/bin/env python3
"""A Ferry bot on the Python SDK: it accepts every friend request and answers every
message it gets, 1:1 or in a group, with "you said: <text>".

    sdk/python/build.sh                      # the library beside the bindings
    PYTHONPATH=sdk/python FERRY_SERVER=127.0.0.1:8080 FERRY_USER=echo \
        FERRY_PASSWORD=... python3 examples/python_bot.py

FERRY_STATE names a folder for the device's state (default: in memory);
FERRY_SERVER_KEY pins the server's key (default: trusted on first use).
"""

import asyncio
import os

import ferry


async def answer(client, event):
    if event.is_friend_changed() and event.kind == ferry.FriendEventKind.REQUEST_RECEIVED:
        await client.friend_action(ferry.FriendAction.ACCEPT, event.peer)
    elif event.is_message() and not event.message.outgoing:
        m = event.message
        reply = f"you said: {m.text}"
        if m.group_id:
            await client.send_group_text(m.group_id, reply, [m.sender])
        else:
            await client.send_text(m.sender, reply)
    elif event.is_stopped():
        raise event.error


async def main():
    client = await ferry.connect(ferry.Config(
        servers=os.environ.get("FERRY_SERVER", "127.0.0.1:8080").split(","),
        username=os.environ["FERRY_USER"],
        password=os.environ["FERRY_PASSWORD"],
        server_key=os.environ.get("FERRY_SERVER_KEY"),
        state_dir=os.environ.get("FERRY_STATE"),
    ))
    print(f"bot {client.username()} is listening", flush=True)
    try:
        while True:
            event = await client.next_event(60_000)
            if event is None:
                continue
            try:
                await answer(client, event)
            except ferry.FerryError.Server as e:  # refused (a blocked peer …): go on
                print(f"not answered: {e}", flush=True)
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
