// Accounts, the long link over long-poll and WebSocket, and chat both ways against a real
// `ferry serve`.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { createServer } from "node:net";
import { FerryClient, FerryError, MemoryStore } from "../dist/index.js";
import { startServer, user, until, befriend, uniqueName, PASSWORD, assertWebSocket } from "./server.mjs";

let srv;
before(async () => {
  srv = await startServer();
});
after(async () => {
  await srv?.cleanup();
});

test("register and signIn go sealed; a bad password is BAD_CREDENTIALS", async () => {
  const c = await FerryClient.create({ servers: [srv.endpoint], store: new MemoryStore() });
  const name = uniqueName("acct");
  await c.register(name, PASSWORD);
  await assert.rejects(c.register(name, PASSWORD), (e) => e instanceof FerryError && e.codeName === "USER_EXISTS");
  await assert.rejects(c.signIn(name, "wrong password"), (e) => {
    assert.ok(e instanceof FerryError);
    assert.equal(e.kind, "server");
    assert.equal(e.codeName, "BAD_CREDENTIALS");
    return true;
  });
  assert.equal(c.signedIn, false);
  await c.signIn(name, PASSWORD);
  assert.equal(c.signedIn, true);
  assert.equal(c.username, name);
});

test("trust on first use pins the key; a wrong pinned key is a server-key error", async () => {
  const store = new MemoryStore();
  const c = await FerryClient.create({ servers: [srv.endpoint], store });
  await c.register(uniqueName("tofu"), PASSWORD);
  assert.equal(await store.get("serverKey"), srv.key);
  const bad = await FerryClient.create({ servers: [srv.endpoint], serverKey: "11".repeat(32), store: new MemoryStore() });
  await assert.rejects(bad.register(uniqueName("bad"), PASSWORD), (e) => e.kind === "server-key");
});

for (const transport of ["lp", "ws"]) {
  test(`two friends chat both ways over ${transport}`, async () => {
    if (transport === "ws") await assertWebSocket(srv);
    const a = await user(srv, "alice", { transports: [transport] });
    const b = await user(srv, "bob", { transports: [transport] });
    const states = [];
    a.on("state", (s) => states.push(s.state));
    await befriend(a, b);
    await Promise.all([a.connect(), b.connect()]);
    assert.equal(a.state, "online");
    assert.equal(a.transport, transport);
    assert.deepEqual(states, ["connecting", "online"]);
    const gotA = [];
    const gotB = [];
    a.on("message", (m) => gotA.push(m));
    b.on("message", (m) => gotB.push(m));
    const ack = await a.sendText(b.username, "hello bob");
    assert.ok(ack.msgId > 0n && ack.seq > 0n);
    await b.sendText(a.username, "hello alice");
    await until(() => gotB.length === 2 && gotA.length === 2, 10000, "both sides to see both messages");
    assert.deepEqual(gotB.map((m) => [m.message.from, m.message.text]), [[a.username, "hello bob"], [b.username, "hello alice"]]);
    assert.deepEqual(gotA.map((m) => m.message.text), ["hello bob", "hello alice"]);
    assert.equal(gotA[0].message.msgId, ack.msgId);
    assert.ok(gotB[1].seq > gotB[0].seq);
    assert.equal(b.synckey, gotB[1].seq);
    await Promise.all([a.close(), b.close()]);
    assert.equal(a.state, "offline");
  });
}

test("a send's clientMsgId comes back on the stored message, for sender and recipient", async () => {
  const a = await user(srv, "cmid", { transports: ["lp"] });
  const b = await user(srv, "cmidpeer", { transports: ["lp"] });
  await befriend(a, b);
  await Promise.all([a.connect(), b.connect()]);
  const gotA = [];
  const gotB = [];
  a.on("message", (m) => gotA.push(m.message));
  b.on("message", (m) => gotB.push(m.message));
  // Two sends with the same text: only their ids tell them apart.
  const ids = [0x1234_5678_9abc_def0n, 0xfedc_ba98_7654_3210n];
  const acks = [];
  for (const id of ids) acks.push(await a.sendText(b.username, "same text", { clientMsgId: id }));
  await until(() => gotA.length === 2 && gotB.length === 2, 10000, "both copies on both sides");
  assert.deepEqual(gotA.map((m) => m.clientMsgId), ids);
  assert.deepEqual(gotB.map((m) => m.clientMsgId), ids);
  assert.deepEqual(gotA.map((m) => m.msgId), acks.map((k) => k.msgId));
  // The same id again is the same message (stored once, §2): the first ack again.
  const again = await a.sendText(b.username, "same text", { clientMsgId: ids[0] });
  assert.equal(again.msgId, acks[0].msgId);
  assert.throws(() => a.sendText(b.username, "x", { clientMsgId: 0n }), RangeError);
  await Promise.all([a.close(), b.close()]);
});

test("sending to a stranger is PERMISSION_DENIED", async () => {
  const a = await user(srv, "lonely", { transports: ["lp"] });
  const b = await user(srv, "stranger");
  await a.connect();
  await assert.rejects(a.sendText(b.username, "hi"), (e) => e.codeName === "PERMISSION_DENIED");
  await a.close();
});

test("an offline user catches up on 20 messages exactly once and in order", async () => {
  const a = await user(srv, "sender", { transports: ["lp"] });
  const b = await user(srv, "catcher", { transports: ["lp"] });
  await befriend(a, b);
  await a.connect();
  for (let i = 0; i < 20; i++) await a.sendText(b.username, `m${i}`);
  const texts = [];
  const seqs = [];
  b.on("message", (m) => {
    texts.push(m.message.text);
    seqs.push(m.seq);
  });
  await b.connect();
  await until(() => texts.length >= 20, 10000, "20 messages");
  // More from a while b is online, then b goes away and comes back.
  await a.sendText(b.username, "m20");
  await until(() => texts.length >= 21, 10000, "m20");
  await b.close();
  await a.sendText(b.username, "m21");
  await b.connect();
  await until(() => texts.length >= 22, 10000, "m21");
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(texts, Array.from({ length: 22 }, (_, i) => `m${i}`));
  for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i] > seqs[i - 1], "in seq order");
  await Promise.all([a.close(), b.close()]);
});

test("logout makes the token invalid", async () => {
  const store = new MemoryStore();
  const a = await user(srv, "leaver", { transports: ["lp"], store });
  await a.connect();
  const token = await store.get("token");
  await a.logout();
  assert.equal(a.signedIn, false);
  assert.equal(a.state, "offline");
  // The old token no longer logs in.
  const stale = new MemoryStore();
  await stale.set("token", token);
  const c2 = await FerryClient.create({ servers: [srv.endpoint], serverKey: srv.key, store: stale, transports: ["lp"] });
  assert.equal(c2.signedIn, true);
  await assert.rejects(c2.connect(), (e) => e.codeName === "UNAUTHORIZED");
  await assert.rejects(c2.friends(), (e) => e.codeName === "UNAUTHORIZED");
});

test("where WebSocket does not pass, the link falls back to long-poll", async () => {
  // A WebSocket whose upgrade is refused (as behind a proxy that strips Upgrade).
  class Refused extends WebSocket {
    constructor(url, protocols) {
      super(url.replace("/v1/ws", "/v1/no-ws"), protocols);
    }
  }
  const a = await user(srv, "proxied", { WebSocket: Refused });
  const seen = [];
  a.on("state", (s) => seen.push(s));
  await a.connect();
  assert.equal(a.transport, "lp");
  assert.equal(seen.at(-1).transport, "lp");
  assert.equal(seen.at(-1).endpoint, srv.endpoint);
  assert.ok(Array.isArray(await a.friends()));
  await a.close();
});

test("a dead endpoint is passed over; the server's endpoint list is kept", async () => {
  const store = new MemoryStore();
  const a = await user(srv, "roamer", { servers: ["127.0.0.1:1", srv.endpoint], store });
  await a.connect();
  assert.equal(a.state, "online");
  assert.equal(await store.get("lastEndpoint"), srv.endpoint);
  await until(async () => (await store.get("endpoints"))?.endpoints?.includes(srv.endpoint), 5000, "the endpoint list");
  await a.close();
  // Bootstrapped from a dead address only, the kept list still finds the server.
  await store.delete("lastEndpoint");
  const b = await FerryClient.create({ servers: ["127.0.0.1:1"], serverKey: srv.key, store, WebSocket, requestTimeoutMs: 3000 });
  await b.connect();
  assert.equal(b.state, "online");
  await b.close();
});

test("a device clock minutes off is corrected from the server's refusal", async () => {
  const c = await FerryClient.create({ servers: [srv.endpoint], serverKey: srv.key, store: new MemoryStore(), transports: ["lp"] });
  c["clockOffsetMs"] = -10 * 60 * 1000; // as if the device's clock were 10 minutes behind
  const name = uniqueName("late");
  await c.register(name, PASSWORD);
  await c.signIn(name, PASSWORD);
  assert.ok(Math.abs(c["clockOffsetMs"]) < 5000, `corrected (${c["clockOffsetMs"]} ms)`);
  await c.connect();
  await c.close();
});

for (const transport of ["lp", "ws"]) {
  test(`connect with a wrong pinned key over ${transport} stops with a server-key error`, async () => {
    const store = new MemoryStore();
    await user(srv, "pinned", { store });
    const c = await FerryClient.create({ servers: [srv.endpoint], serverKey: "22".repeat(32), store, transports: [transport], WebSocket });
    const states = [];
    c.on("state", (s) => states.push(s.state));
    await assert.rejects(c.connect(), (e) => e.kind === "server-key");
    assert.equal(c.state, "offline");
    assert.deepEqual(states, ["connecting", "offline"]);
  });
}

test("endpoints are raced: a silent one is overtaken after 2.5 s, not waited out", async () => {
  // Accepts TCP and never answers (a black hole on the path).
  const held = [];
  const hole = createServer((sock) => held.push(sock));
  await new Promise((r) => hole.listen(0, "127.0.0.1", r));
  const silent = `127.0.0.1:${hole.address().port}`;
  try {
    const a = await user(srv, "racer", { requestTimeoutMs: 15000 });
    // The silent one is listed first and pretends to have worked last time.
    a["servers"] = [silent, srv.endpoint];
    a["lastEndpoint"] = silent;
    a["shortGood"] = undefined;
    const t0 = Date.now();
    await a.connect();
    const took = Date.now() - t0;
    assert.ok(took >= 2000 && took < 8000, `won by the second endpoint after the stagger (${took} ms)`);
    assert.equal(await a["store"].get("lastEndpoint"), srv.endpoint);
    // Short-link requests go to the endpoint that answered, not the silent one.
    const t1 = Date.now();
    await a.close();
    assert.ok(Array.isArray(await a.friends()));
    assert.ok(Date.now() - t1 < 3000, "no timeout on the silent endpoint");
  } finally {
    for (const s of held) s.destroy();
    hole.close();
  }
});
