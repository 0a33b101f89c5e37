"""examples/python_bot.py, run as a process of its own, answers what it is sent."""

import os
import subprocess
import sys
from pathlib import Path

import ferry
from conftest import is_message_from, new_name, new_user, next_matching, run

BOT = Path(__file__).resolve().parents[3] / "examples" / "python_bot.py"


def test_the_example_bot_answers_every_message(server):
    name = new_name("bot")
    run(ferry.register(server.config_for(name)))
    bot = subprocess.Popen(
        [sys.executable, str(BOT)],
        env={**os.environ, "FERRY_SERVER": server.addr, "FERRY_USER": name,
             "FERRY_PASSWORD": "correct horse battery"},
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )
    try:
        line = bot.stdout.readline()
        assert line.startswith(f"bot {name} is listening"), line

        async def main():
            ann = await new_user(server, "ann")
            await ann.request_friend(name, "hello bot")
            await next_matching(
                ann, lambda e: e.is_friend_changed() and e.kind == ferry.FriendEventKind.ADDED)
            for text in ["ping", "are you there?"]:
                await ann.send_text(name, text)
                ev = await next_matching(ann, is_message_from(name))
                assert ev.message.text == f"you said: {text}"
            await ann.close()

        run(main())
        assert bot.poll() is None, "the bot exited"
    finally:
        bot.kill()
        bot.wait()
