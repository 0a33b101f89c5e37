#!/usr/bin/env python3
"""Ferry echo bot: answers every text message with the same text.

Python 3 standard library only. It long-polls GET /v1/bot/updates and, for each message a
user sent it, POSTs /v1/bot/send back to that user (or to the group it came from).

    FERRY_BOT_TOKEN=fbot_… python3 examples/echo_bot.py [--server http://127.0.0.1:8080]

Create the bot and its token with `ferry bot create echo` (see docs/bots.md).
"""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def quote(cursor):
    return urllib.parse.quote(cursor, safe="")


def call(server, token, method, path, body=None, timeout=60):
    """One API call; returns the decoded JSON answer (None for 204)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(server.rstrip("/") + "/v1/" + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + token)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
        return json.loads(raw) if raw else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default=os.environ.get("FERRY_SERVER", "http://127.0.0.1:8080"))
    ap.add_argument("--token", default=os.environ.get("FERRY_BOT_TOKEN", ""))
    ap.add_argument("--poll", type=int, default=30, help="long-poll timeout, seconds (<= 50)")
    args = ap.parse_args()
    if not args.token:
        sys.exit("give the bot's token: --token or FERRY_BOT_TOKEN")

    me = call(args.server, args.token, "GET", "bot/me")
    print(f"echo bot {me['name']} running", flush=True)
    # The cursor (next_after) is a string naming the inbox and each group's position;
    # pass it back as it came. Start after what is already there: only new messages are
    # echoed.
    first = call(args.server, args.token, "GET", "bot/updates?timeout=0&limit=1000")
    after = first["next_after"]
    while first["updates"]:
        first = call(args.server, args.token, "GET", f"bot/updates?after={quote(after)}&timeout=0&limit=1000")
        after = first["next_after"]
    while True:
        try:
            got = call(
                args.server, args.token, "GET",
                f"bot/updates?after={quote(after)}&timeout={args.poll}&limit=100",
                timeout=args.poll + 10,
            )
        except (urllib.error.URLError, OSError) as e:
            print(f"poll failed ({e}); retrying", file=sys.stderr, flush=True)
            time.sleep(1)
            continue
        for u in got["updates"]:
            if u["type"] != "message" or not u["message"]["text"]:
                continue
            m = u["message"]
            answer = {"text": m["text"], "client_msg_id": m["id"]}
            if m["group_id"] != "0":
                answer["group_id"] = m["group_id"]
            else:
                answer["to"] = m["from"]
            try:
                # client_msg_id = the message's id: a retry after a lost answer is
                # stored once.
                call(args.server, args.token, "POST", "bot/send", answer)
                print(f"echoed {m['id']} to {m['from']}", flush=True)
            except urllib.error.HTTPError as e:
                print(f"send failed: {e.code} {e.read().decode(errors='replace')}", file=sys.stderr, flush=True)
        after = got["next_after"]


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
