// Smart connection (docs/protocol.md §7.4 step 3) behind a proxy that can refuse
// WebSocket upgrades: a WebSocket link lost right after it worked is tried again, not
// swapped for long-poll; a network that keeps refusing WebSocket falls back to
// long-poll; on long-poll the client moves back onto WebSocket when it passes again.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, user, until, befriend, sleep } from "./server.mjs";
import { startProxy } from "./proxy.mjs";

let srv;
let proxy;
before(async () => {
  proxy = await startProxy();
  // The server hands out the proxy as its endpoint (as a gateway behind a front would).
  srv = await startServer(
    `[gateway]\nlp_poll_hold_ms = 2000\n[[logic.endpoints.gateways]]\nid = "gw-1"\naddrs = ["${proxy.endpoint}"]\n`,
  );
  proxy.target = srv.endpoint;
});
after(async () => {
  await proxy?.close();
  await srv?.cleanup();
});

test("a lost WebSocket link tries WebSocket again, falls back to long-poll only when it keeps failing, and moves back", async () => {
  proxy.blockUpgrades = false;
  const alice = await user(srv, "alice", { transports: ["ws"] });
  const bob = await user(srv, "bob", { servers: [proxy.endpoint], longPollAfterMs: 3000, wsRetryMs: 1500 });
  try {
    await befriend(alice, bob);
    const got = [];
    bob.on("message", (m) => got.push(m.message.text));
    await Promise.all([alice.connect(), bob.connect()]);
    assert.equal(bob.transport, "ws");
    await alice.sendText(bob.username, "0");
    await until(() => got.length === 1, 10000, "the first message");

    // WebSocket stops passing, and the link is dropped: within `longPollAfterMs` the
    // client keeps trying WebSocket (with back-off), never long-poll.
    proxy.blockUpgrades = true;
    const refusedBefore = proxy.refused;
    proxy.cutUpgraded();
    const lost = Date.now();
    while (Date.now() - lost < 2500) {
      assert.notEqual(bob.transport, "lp", `moved to long-poll ${Date.now() - lost} ms after a WebSocket link was lost`);
      await sleep(20);
    }
    assert.ok(proxy.refused - refusedBefore >= 2, `WebSocket tried again: ${proxy.refused - refusedBefore} upgrades refused`);
    // It keeps failing past `longPollAfterMs`: long-poll.
    await until(() => bob.transport === "lp", 20000, "the fall-back to long-poll");
    assert.ok(Date.now() - lost >= 3000, `fell back after ${Date.now() - lost} ms`);

    // Messages go on over long-poll, and across the move back to WebSocket.
    let sent = 1;
    const send = async (n) => {
      for (let i = 0; i < n; i++) await alice.sendText(bob.username, String(sent++));
    };
    await send(5);
    await until(() => got.length === sent, 10000, "the messages over long-poll");
    assert.equal(bob.transport, "lp");
    const states = [];
    bob.on("state", (s) => states.push(`${s.state}${s.transport ? ":" + s.transport : ""}`));
    proxy.blockUpgrades = false;
    const upgradesBefore = proxy.upgrades;
    const sending = (async () => {
      while (bob.transport !== "ws" && sent < 200) {
        await send(1);
        await sleep(30);
      }
      await send(5);
    })();
    await until(() => bob.transport === "ws", 10000, "the move back to WebSocket");
    await sending;
    await until(() => got.length === sent, 10000, "every message after the move");
    await sleep(300);
    assert.deepEqual(got, Array.from({ length: sent }, (_, i) => String(i)), "every message once, in order");
    assert.ok(proxy.upgrades > upgradesBefore);
    // Moved, not reconnected: no "connecting" between the two links.
    assert.deepEqual(states, ["online:ws"], `states while moving: ${states.join(", ")}`);
    // And the WebSocket link works both ways.
    await bob.sendText(alice.username, "back");
  } finally {
    await Promise.all([alice.close(), bob.close()]);
  }
});

test("where WebSocket never worked, a refused upgrade falls back to long-poll at once", async () => {
  proxy.blockUpgrades = true;
  const carol = await user(srv, "carol", { servers: [proxy.endpoint], longPollAfterMs: 60000, wsRetryMs: 60000 });
  try {
    const t0 = Date.now();
    await carol.connect();
    assert.equal(carol.transport, "lp");
    assert.ok(Date.now() - t0 < 5000, `${Date.now() - t0} ms to log in over long-poll`);
  } finally {
    await carol.close();
    proxy.blockUpgrades = false;
  }
});
