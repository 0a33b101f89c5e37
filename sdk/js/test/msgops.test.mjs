// Message operations and search (docs/protocol.md §4a and Search) against a real
// `ferry serve`: a reply quotes what it answers, an edit reaches the peer, reactions are
// counted, a hide reaches the user's other device and nobody else, pins come and go, and
// search finds Chinese and English text for those who may read it, not for a stranger.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { MediaKind, SearchKind } from "../dist/index.js";
import {
  startServer, user, until, befriend, record, secondDevice, serverError, invalidArgument,
} from "./server.mjs";

let srv;
before(async () => {
  srv = await startServer();
});
after(async () => {
  await srv?.cleanup();
});

/** Two friends, online (one over long-poll, one over WebSocket). */
async function pair(prefix) {
  const a = await user(srv, `${prefix}a`, { transports: ["lp"] });
  const b = await user(srv, `${prefix}b`, { transports: ["ws"] });
  await befriend(a, b);
  await Promise.all([a.connect(), b.connect()]);
  return [a, b];
}

/** Searches until `want` hits come (the index follows the store within about two seconds). */
async function searchUntil(c, want, query) {
  const deadline = Date.now() + 15000;
  for (;;) {
    const r = await c.search(query);
    if (r.hits.length >= want || Date.now() > deadline) return r;
    await new Promise((res) => setTimeout(res, 100));
  }
}

test("a reply quotes the message it answers", async () => {
  const [a, b] = await pair("quote");
  const msgsA = [];
  const msgsB = [];
  a.on("message", (m) => msgsA.push(m.message));
  b.on("message", (m) => msgsB.push(m.message));
  const ack = await a.sendText(b.username, "tea at five?");
  await until(() => msgsB.some((m) => m.msgId === ack.msgId), 10000, "the question");
  const reply = await b.reply(ack.msgId, "yes, at the usual place");
  await until(() => msgsA.some((m) => m.msgId === reply.msgId), 10000, "the reply");
  const got = msgsA.find((m) => m.msgId === reply.msgId);
  assert.equal(got.text, "yes, at the usual place");
  assert.equal(got.to, a.username);
  assert.equal(got.quote.msgId, ack.msgId);
  assert.equal(got.quote.from, a.username);
  assert.equal(got.quote.text, "tea at five?");
  assert.equal(got.quote.kind, MediaKind.MEDIA_KIND_UNSPECIFIED);
  assert.equal(got.quote.recalled, false);
  assert.equal(msgsB.find((m) => m.msgId === ack.msgId).quote, undefined);

  // A message the replier may not read; no message at all.
  const stranger = await user(srv, "quotestranger");
  await stranger.connect();
  await assert.rejects(stranger.reply(ack.msgId, "not mine to answer"), serverError("NOT_FOUND"));
  await assert.rejects(stranger.reply(0n, "nothing"), invalidArgument);
  await Promise.all([a.close(), b.close(), stranger.close()]);
});

test("an edit reaches the peer and the sender's devices", async () => {
  const [a, b] = await pair("edit");
  const evA = record(a, ["edit"]);
  const evB = record(b, ["edit", "message"]);
  const ack = await a.sendText(b.username, "see you at 6");
  await until(() => evB.message.length === 1, 10000, "the message");
  await a.edit(ack.msgId, "see you at 7");
  await a.edit(ack.msgId, "see you at 7"); // a retry: nothing more is logged
  await until(() => evB.edit.length === 1 && evA.edit.length === 1, 10000, "the edit");
  const e = evB.edit[0];
  assert.equal(e.msgId, ack.msgId);
  assert.equal(e.text, "see you at 7");
  assert.equal(e.by, a.username);
  assert.equal(e.groupId, 0n);
  assert.ok(e.editedMs >= ack.timeMs);
  await assert.rejects(b.edit(ack.msgId, "see you never"), serverError("PERMISSION_DENIED"));
  await assert.rejects(b.edit(0n, "x"), invalidArgument);

  // A device syncing afterwards gets the message with its edited text.
  const late = await secondDevice(srv, b);
  const lateMsgs = [];
  late.on("message", (m) => lateMsgs.push(m.message));
  await late.connect();
  await until(() => lateMsgs.some((m) => m.msgId === ack.msgId), 10000, "the message on a new device");
  const m = lateMsgs.find((x) => x.msgId === ack.msgId);
  assert.equal(m.text, "see you at 7");
  assert.equal(m.editedMs, e.editedMs);
  assert.equal(evB.edit.length, 1);
  await Promise.all([a.close(), b.close(), late.close()]);
});

test("reactions are counted, listed and taken back", async () => {
  const [a, b] = await pair("react");
  const evA = record(a, ["reaction"]);
  const msgsB = [];
  b.on("message", (m) => msgsB.push(m.message));
  const ack = await a.sendText(b.username, "we won!");
  await until(() => msgsB.length === 1, 10000, "the message");
  await b.react(ack.msgId, "👍");
  await until(() => evA.reaction.length === 1, 10000, "the reaction");
  const r0 = evA.reaction[0];
  assert.deepEqual([r0.msgId, r0.emoji, r0.by, r0.add, r0.count], [ack.msgId, "👍", b.username, true, 1]);
  await a.react(ack.msgId, "👍");
  await a.react(ack.msgId, "🎉");
  await a.react(ack.msgId, "🎉"); // already there

  let r = await a.reactions(ack.msgId);
  assert.deepEqual(r.counts.map((c) => [c.emoji, c.count, c.mine]), [["👍", 2, true], ["🎉", 1, true]]);
  assert.deepEqual(r.users, []);
  r = await b.reactions(ack.msgId, { emoji: "👍" });
  assert.deepEqual([...r.users].sort(), [a.username, b.username].sort());
  const first = await b.reactions(ack.msgId, { emoji: "👍", limit: 1 });
  assert.equal(first.users.length, 1);
  assert.notEqual(first.nextAfter, 0n);
  const second = await b.reactions(ack.msgId, { emoji: "👍", limit: 1, after: first.nextAfter });
  assert.deepEqual([...first.users, ...second.users].sort(), [a.username, b.username].sort());

  await b.unreact(ack.msgId, "👍");
  await until(() => evA.reaction.some((x) => !x.add && x.by === b.username), 10000, "the reaction taken back");
  const back = evA.reaction.find((x) => !x.add);
  assert.deepEqual([back.emoji, back.count], ["👍", 1]);
  r = await b.reactions(ack.msgId);
  assert.deepEqual(r.counts.map((c) => [c.emoji, c.count, c.mine]).sort(), [["👍", 1, false], ["🎉", 1, false]].sort());

  await assert.rejects(b.react(ack.msgId, "two words"), serverError("INVALID_ARGUMENT"));
  await assert.rejects(b.reactions(ack.msgId, { emoji: "" }), invalidArgument);
  const stranger = await user(srv, "reactstranger");
  await assert.rejects(stranger.react(ack.msgId, "👍"), serverError("NOT_FOUND"));
  await Promise.all([a.close(), b.close()]);
});

test("a hide reaches the user's other device and nobody else", async () => {
  const [a, b] = await pair("hide");
  const a2 = await secondDevice(srv, a, { transports: ["ws"] });
  const evA2 = record(a2, ["hide", "message"]);
  const evA = record(a, ["hide"]);
  const evB = record(b, ["hide"]);
  await a2.connect();
  const keep = await b.sendText(a.username, "keep this");
  const gone = await b.sendText(a.username, "forget this");
  await until(() => evA2.message.some((m) => m.message.msgId === gone.msgId), 10000, "the messages on the second device");

  await a.hide([gone.msgId]);
  await until(() => evA.hide.length === 1 && evA2.hide.length === 1, 10000, "the hide on both devices");
  assert.deepEqual(evA2.hide[0].msgIds, [gone.msgId]);
  assert.deepEqual(evA.hide[0].msgIds, [gone.msgId]);
  await a.hide([gone.msgId]); // hidden already: no entry again
  await new Promise((res) => setTimeout(res, 500));
  assert.equal(evA2.hide.length, 1);
  assert.equal(evB.hide.length, 0, "the peer's chat does not change");

  // Search leaves the hidden message out for its hider only.
  const forB = await searchUntil(b, 1, { text: "forget" });
  assert.deepEqual(forB.hits.map((h) => h.message.msgId), [gone.msgId]);
  const forA = await searchUntil(a, 1, { text: "keep" });
  assert.deepEqual(forA.hits.map((h) => h.message.msgId), [keep.msgId]);
  assert.deepEqual((await a.search({ text: "forget" })).hits, []);

  await assert.rejects(a.hide([]), serverError("INVALID_ARGUMENT"));
  await assert.rejects(a.hide([0n]), invalidArgument);
  await Promise.all([a.close(), a2.close(), b.close()]);
});

test("pins in a chat and in a group", async () => {
  const [a, b] = await pair("pin");
  const evA = record(a, ["pin"]);
  const evB = record(b, ["pin", "message", "groupMessage"]);
  const ack = await a.sendText(b.username, "the address is 12 Elm St");
  await until(() => evB.message.length === 1, 10000, "the message");
  await a.pin({ user: b.username }, ack.msgId);
  await until(() => evB.pin.length === 1, 10000, "the pin");
  // Each side sees the conversation by the other party's name.
  assert.deepEqual([evB.pin[0].peer, evB.pin[0].msgId, evB.pin[0].by, evB.pin[0].pinned], [a.username, ack.msgId, a.username, true]);
  const pins = await b.pins({ user: a.username });
  assert.deepEqual(pins.map((p) => [p.msgId, p.by]), [[ack.msgId, a.username]]);
  assert.ok(pins[0].timeMs > 0n);
  await b.unpin({ user: a.username }, ack.msgId);
  await until(() => evA.pin.some((p) => !p.pinned), 10000, "the unpin");
  const unpinned = evA.pin.find((p) => !p.pinned);
  assert.deepEqual([unpinned.peer, unpinned.by], [b.username, b.username]);
  assert.deepEqual(await a.pins({ user: b.username }), []);

  // In a group only the owner and admins pin; every member sees it in the group's log.
  const g = await a.createGroup("pins", [b.username]);
  const said = await b.sendGroupText(g.groupId, "agenda: search");
  await assert.rejects(b.pin({ groupId: g.groupId }, said.msgId), serverError("PERMISSION_DENIED"));
  await a.pin({ groupId: g.groupId }, said.msgId);
  await until(() => evB.pin.some((p) => p.groupId === g.groupId), 10000, "the group's pin");
  const gp = evB.pin.find((p) => p.groupId === g.groupId);
  assert.deepEqual([gp.msgId, gp.by, gp.pinned], [said.msgId, a.username, true]);
  assert.deepEqual((await b.pins({ groupId: g.groupId })).map((p) => p.msgId), [said.msgId]);

  await assert.rejects(a.pins({ groupId: 0n }), invalidArgument);
  await assert.rejects(a.pin({ user: "" }, ack.msgId), invalidArgument);
  const stranger = await user(srv, "pinstranger");
  await assert.rejects(stranger.pin({ user: a.username }, ack.msgId), serverError("NOT_FOUND"));
  await Promise.all([a.close(), b.close()]);
});

test("group edits and reactions carry their group", async () => {
  const [a, b] = await pair("gops");
  const evB = record(b, ["edit", "reaction", "groupMessage"]);
  const g = await a.createGroup("ops", [b.username]);
  const said = await a.sendGroupText(g.groupId, "meeting at 3");
  await until(() => evB.groupMessage.some((m) => m.message.msgId === said.msgId), 10000, "the group message");
  await a.edit(said.msgId, "meeting at 4");
  await a.react(said.msgId, "👀");
  await until(() => evB.edit.length === 1 && evB.reaction.length === 1, 10000, "the group's edit and reaction");
  assert.deepEqual([evB.edit[0].groupId, evB.edit[0].msgId, evB.edit[0].text], [g.groupId, said.msgId, "meeting at 4"]);
  assert.deepEqual([evB.reaction[0].groupId, evB.reaction[0].emoji, evB.reaction[0].count], [g.groupId, "👀", 1]);
  await Promise.all([a.close(), b.close()]);
});

test("search finds Chinese and English for those who may read it, not a stranger", async () => {
  const [a, b] = await pair("search");
  const stranger = await user(srv, "searchstranger");
  const cafe = await a.sendText(b.username, "Dinner at Café Lumière tonight?");
  const duck = await b.sendText(a.username, "明天我们去北京烤鸭店吃饭吧");

  let r = await searchUntil(a, 1, { text: "北京烤鸭", highlight: true });
  assert.deepEqual(r.hits.map((h) => h.message.msgId), [duck.msgId]);
  assert.equal(r.total, 1n);
  const enc = new TextEncoder();
  const dec = new TextDecoder();
  const mark = (h) => h.ranges.map((x) => dec.decode(enc.encode(h.snippet).subarray(x.start, x.end))).join("");
  assert.equal(r.hits[0].message.from, b.username);
  assert.ok(r.hits[0].ranges.length > 0 && mark(r.hits[0]).includes("北京"), mark(r.hits[0]));

  r = await searchUntil(b, 1, { text: "cafe", highlight: true });
  assert.deepEqual(r.hits.map((h) => h.message.msgId), [cafe.msgId]);
  assert.ok(mark(r.hits[0]).toLowerCase().includes("café"), mark(r.hits[0]));

  // Filters and paging: the chat's two messages, one per page, newest first.
  r = await searchUntil(a, 1, { peer: b.username, limit: 1 });
  assert.equal(r.total, 2n);
  assert.deepEqual(r.hits.map((h) => h.message.msgId), [duck.msgId]);
  assert.notEqual(r.next, "");
  const last = await a.search({ peer: b.username, limit: 1, page: r.next });
  assert.deepEqual(last.hits.map((h) => h.message.msgId), [cafe.msgId]);
  assert.equal(last.next, "");
  const mine = await a.search({ sender: a.username });
  assert.deepEqual(mine.hits.map((h) => h.message.msgId), [cafe.msgId]);
  assert.equal(mine.hits[0].snippet, "");
  assert.deepEqual((await a.search({ kinds: [SearchKind.IMAGE] })).hits, []);

  for (const text of ["北京烤鸭", "cafe", "Lumière", ""]) {
    const s = await stranger.search({ text });
    assert.deepEqual([s.hits.length, s.total], [0, 0n], text);
  }
  await assert.rejects(stranger.search({ peer: `${stranger.username}nobody` }), serverError("UNKNOWN_USER"));
  await assert.rejects(stranger.search({ text: "x".repeat(1025) }), serverError("INVALID_ARGUMENT"));
  await Promise.all([a.close(), b.close()]);
});
