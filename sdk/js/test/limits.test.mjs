// RATE_LIMITED: a send over the user's rate waits `retry_after_ms` and goes again with the
// same client_msg_id; the messages keep their order and are stored once each.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, user, until, befriend } from "./server.mjs";

let srv;
before(async () => {
  srv = await startServer("[logic.limits]\nsends_per_user = { burst = 3.0, per_sec = 10.0 }\n");
});
after(async () => {
  await srv?.cleanup();
});

test("sends over the rate limit wait and go again, in order, once each", async () => {
  const a = await user(srv, "chatty", { transports: ["lp"] });
  const b = await user(srv, "patient", { transports: ["lp"] });
  await befriend(a, b);
  await Promise.all([a.connect(), b.connect()]);
  const got = [];
  b.on("message", (m) => got.push(m.message.text));
  const started = Date.now();
  const acks = await Promise.all(Array.from({ length: 12 }, (_, i) => a.sendText(b.username, `r${i}`)));
  const took = Date.now() - started;
  // 3 at once, then 10 a second: the last of 12 cannot go before ~0.9 s.
  assert.ok(took >= 700, `the limit held the sends back (${took} ms)`);
  for (let i = 1; i < acks.length; i++) assert.ok(acks[i].seq > acks[i - 1].seq, "acked in order");
  await until(() => got.length >= 12, 10000, "12 messages");
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(got, Array.from({ length: 12 }, (_, i) => `r${i}`));
  await Promise.all([a.close(), b.close()]);
});
