// Reconnects: a server restarted mid-session, sends queued meanwhile, and resumption
// tickets (used, and refused → full handshake).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { FerryClient, MemoryStore } from "../dist/index.js";
import { startServer, user, until, befriend, sleep } from "./server.mjs";
import WebSocket from "ws";

let srv;
before(async () => {
  srv = await startServer();
});
after(async () => {
  await srv?.cleanup();
});

test("server restarted mid-session: both reconnect, the queued send goes once, b syncs", async () => {
  const a = await user(srv, "survivor", { transports: ["lp"] });
  const b = await user(srv, "phoenix", { transports: ["ws", "lp"] });
  await befriend(a, b);
  await Promise.all([a.connect(), b.connect()]);
  const got = [];
  b.on("message", (m) => got.push(m.message.text));
  const bStates = [];
  b.on("state", (s) => bStates.push(s.state));
  await a.sendText(b.username, "before");
  await until(() => got.length === 1, 10000, "before");

  await srv.stop();
  await until(() => b.state !== "online" && a.state !== "online", 15000, "both to notice the server is gone");
  const during = a.sendText(b.username, "during"); // queued: no link
  await sleep(500);
  await srv.start();
  const ack = await during;
  assert.ok(ack.msgId > 0n);
  await a.sendText(b.username, "after");
  await until(() => got.length >= 3, 20000, "the messages after the restart");
  await sleep(200);
  assert.deepEqual(got, ["before", "during", "after"]);
  assert.equal(b.state, "online");
  assert.equal(b.transport, "ws");
  assert.ok(bStates.includes("connecting") && bStates.at(-1) === "online");
  await Promise.all([a.close(), b.close()]);
});

test("a resumption ticket is kept and used; a refused one falls back to the full handshake", async () => {
  const store = new MemoryStore();
  const a = await user(srv, "resumer", { transports: ["lp"], store });
  await a.connect();
  const t1 = await store.get("ticket");
  assert.ok(t1 && t1.ticket.length > 100 && t1.secret.length === 64, "a full handshake hands out a ticket");
  await a.close();
  // Resumed from the same address: the ticket stays as it was.
  await a.connect();
  assert.deepEqual(await store.get("ticket"), t1);
  await a.close();
  // An altered ticket is refused (RESUME_REFUSED): a full handshake, and a new ticket.
  const bad = { ...t1, ticket: t1.ticket.slice(0, -2) + (t1.ticket.endsWith("00") ? "01" : "00") };
  await store.set("ticket", bad);
  const again = await FerryClient.create({ servers: [srv.endpoint], serverKey: srv.key, store, transports: ["ws", "lp"], WebSocket });
  await again.connect();
  assert.equal(again.state, "online");
  assert.equal(again.transport, "ws");
  const t2 = await store.get("ticket");
  assert.notDeepEqual(t2, bad);
  assert.ok(t2.ticket.length > 100);
  // The link works.
  assert.ok(Array.isArray(await again.friends()));
  await again.close();
});

test("a newer login of the same device kicks this link: offline, no reconnect", async () => {
  const store = new MemoryStore();
  const a = await user(srv, "twin", { transports: ["ws"], store });
  const states = [];
  a.on("state", (s) => states.push(s));
  await a.connect();
  // Another copy of the device (same store: device id and token) logs in.
  const copy = await FerryClient.create({ servers: [srv.endpoint], serverKey: srv.key, store, transports: ["lp"] });
  await copy.connect();
  await until(() => a.state === "offline", 10000, "the kick");
  assert.match(states.at(-1).reason, /kicked/);
  await sleep(500);
  assert.equal(a.state, "offline", "no reconnect that would kick the copy back");
  assert.equal(copy.state, "online");
  await copy.close();
  await a.close();
});
