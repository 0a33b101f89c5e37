// Conversation state and forwarding (docs/protocol.md §4b) against a real `ferry serve`:
// archive, mute, mark-unread, draft and clear reach the user's other device as `conv`
// events and nobody else; a cleared group's older messages come back to a new device of
// that user without content (`noContent`) while a newer one comes whole; a group's
// retention reaches every member (`retention`), a 1:1 retention both parties; a forward
// carries the original's author and text to a third user; refusals are clear.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  startServer, user, until, befriend, sleep, record, secondDevice, serverError, invalidArgument,
} from "./server.mjs";

let srv;
before(async () => {
  srv = await startServer();
});
after(async () => {
  await srv?.cleanup();
});

test("archive, mute, unread, draft and clear reach the user's other device and nobody else", async () => {
  const a1 = await user(srv, "conva", { transports: ["lp"] });
  const b = await user(srv, "convb");
  await befriend(a1, b);
  const a2 = await secondDevice(srv, a1);
  const ev2 = record(a2, ["conv", "message"]);
  const evB = record(b, ["conv", "message"]);
  await Promise.all([a1.connect(), a2.connect(), b.connect()]);
  const m1 = await b.sendText(a1.username, "one");
  const m2 = await a1.sendText(b.username, "two");
  await until(() => ev2.message.length === 2 && evB.message.length === 2, 10000, "the messages");

  const peer = { user: b.username };
  let s = await a1.archive(peer);
  assert.deepEqual([s.peer, s.groupId, s.archived], [b.username, 0n, true]);
  s = await a2.mute(peer, -1n);
  assert.equal(s.mutedUntilMs, -1n);
  assert.equal(s.archived, true, "a change leaves the other fields alone");
  s = await a1.markUnread(peer);
  assert.equal(s.unread, true);
  s = await a1.setDraft(peer, "see you at 8");
  assert.equal(s.draft, "see you at 8");
  assert.ok(s.draftMs > 0n);
  s = await a1.clearHistory(peer);
  assert.equal(s.clearedBeforeMsgId, m2.msgId);
  assert.ok(m1.msgId < m2.msgId);

  // The other device gets each change as the conversation's whole state, in order.
  await until(() => ev2.conv.length === 5, 10000, "five conv events on the other device");
  const last = ev2.conv[4];
  assert.deepEqual(
    [last.peer, last.archived, last.mutedUntilMs, last.unread, last.draft, last.clearedBeforeMsgId],
    [b.username, true, -1n, true, "see you at 8", m2.msgId],
  );
  assert.deepEqual(ev2.conv.map((c) => c.archived), [true, true, true, true, true]);

  // The server lists it; the peer has no state and no conv event.
  const all = await a2.conversations();
  const mine = all.find((c) => c.peer === b.username);
  assert.ok(mine && mine.archived && mine.unread && mine.draft === "see you at 8");
  assert.deepEqual(await b.conversations(), []);
  await sleep(300);
  assert.equal(evB.conv.length, 0);

  // Several changes in one call; `false` present is a change.
  const many = await a1.convSet([{ peer: b.username, archived: false, unread: false, mutedUntilMs: 0n, draft: "" }]);
  const after = many.find((c) => c.peer === b.username);
  assert.deepEqual([after.archived, after.unread, after.mutedUntilMs, after.draft], [false, false, 0n, ""]);
  assert.equal(after.clearedBeforeMsgId, m2.msgId, "the clear stays");
  await until(() => ev2.conv.length === 6, 10000, "the sixth conv event");

  // Refusals.
  await assert.rejects(a1.setDraft(peer, "x".repeat(4001)), serverError("TOO_LARGE"));
  await assert.rejects(a1.archive({ user: "nobody-here" }), serverError("UNKNOWN_USER"));
  await assert.rejects(a1.archive({ groupId: 987654321n }), serverError("NOT_FOUND"));
  await assert.rejects(a1.setRetention(peer, 30), serverError("INVALID_ARGUMENT"));
  await assert.rejects(a1.convSet([{ peer: b.username, groupId: 5n, archived: true }]), serverError("INVALID_ARGUMENT"));
  await assert.rejects(a1.archive({ user: "" }), invalidArgument);
  await assert.rejects(a1.mute(peer, -2n), invalidArgument);
  await assert.rejects(a1.setRetention(peer, -1), invalidArgument);
  await Promise.all([a1.close(), a2.close(), b.close()]);
});

test("a 1:1 retention reaches both parties; a group's reaches every member", async () => {
  const a = await user(srv, "reta");
  const b = await user(srv, "retb");
  await befriend(a, b);
  const evA = record(a, ["conv", "retention"]);
  const evB = record(b, ["conv", "retention"]);
  await Promise.all([a.connect(), b.connect()]);

  const s = await a.setRetention({ user: b.username }, 3600);
  assert.equal(s.retentionSecs, 3600);
  await until(() => evA.conv.length === 1 && evB.conv.length === 1, 10000, "both parties' conv events");
  assert.deepEqual([evB.conv[0].peer, evB.conv[0].retentionSecs], [a.username, 3600]);
  assert.deepEqual([evA.conv[0].peer, evA.conv[0].retentionSecs], [b.username, 3600]);

  const g = await a.createGroup("kept an hour", [b.username]);
  await assert.rejects(b.setRetention({ groupId: g.groupId }, 600), serverError("PERMISSION_DENIED"));
  await a.setRetention({ groupId: g.groupId }, 600);
  await until(() => evB.retention.length === 1 && evA.retention.length === 1, 10000, "the group's retention");
  const r = evB.retention[0];
  assert.deepEqual([r.groupId, r.retentionSecs, r.by], [g.groupId, 600, a.username]);
  const listed = (await b.conversations()).find((c) => c.groupId === g.groupId);
  assert.equal(listed?.retentionSecs, 600);
  await Promise.all([a.close(), b.close()]);
});

test("a cleared group's older messages come to a new device without content", async () => {
  const a = await user(srv, "clra");
  const b = await user(srv, "clrb");
  await befriend(a, b);
  await Promise.all([a.connect(), b.connect()]);
  const g = await a.createGroup("crew", [b.username]);
  const g1 = await b.sendGroupText(g.groupId, "old one");
  const g2 = await a.sendGroupText(g.groupId, "old two");
  const s = await a.clearHistory({ groupId: g.groupId });
  assert.equal(s.clearedBeforeMsgId, g2.msgId);
  const g3 = await b.sendGroupText(g.groupId, "new");

  const fresh = await secondDevice(srv, a);
  const ev = record(fresh, ["groupMessage", "noContent", "conv"]);
  await fresh.connect();
  await until(() => ev.groupMessage.some((m) => m.message.msgId === g3.msgId), 10000, "the newer message");
  assert.deepEqual(ev.groupMessage.map((m) => m.message.msgId), [g3.msgId]);
  const places = ev.noContent.filter((p) => p.groupId === g.groupId).map((p) => p.gseq);
  assert.ok(places.includes(g1.seq) && places.includes(g2.seq), `no content at ${places} (sent at ${g1.seq}, ${g2.seq})`);
  assert.ok(ev.conv.some((c) => c.groupId === g.groupId && c.clearedBeforeMsgId === g2.msgId), "the clear itself");

  // The other member still reads everything.
  const other = await secondDevice(srv, b);
  const evO = record(other, ["groupMessage", "noContent"]);
  await other.connect();
  await until(() => evO.groupMessage.length === 3, 10000, "the other member's three messages");
  assert.equal(evO.noContent.length, 0);
  await Promise.all([a.close(), b.close(), fresh.close(), other.close()]);
});

test("a forward carries the original's author and text; foreign messages are refused", async () => {
  const a = await user(srv, "fwda");
  const b = await user(srv, "fwdb");
  const c = await user(srv, "fwdc");
  await befriend(a, b);
  await befriend(b, c);
  const msgsC = [];
  const msgsB = [];
  const groupB = [];
  c.on("message", (m) => msgsC.push(m.message));
  b.on("message", (m) => msgsB.push(m.message));
  b.on("groupMessage", (m) => groupB.push(m.message));
  await Promise.all([a.connect(), b.connect(), c.connect()]);
  const orig = await a.sendText(b.username, "the plan");
  await until(() => msgsB.some((m) => m.msgId === orig.msgId), 10000, "the original");
  const fwd = await b.forward({ user: c.username }, orig.msgId);
  await until(() => msgsC.some((m) => m.msgId === fwd.msgId), 10000, "the forward");
  const got = msgsC.find((m) => m.msgId === fwd.msgId);
  assert.equal(got.from, b.username);
  assert.equal(got.text, "the plan");
  assert.deepEqual([got.forwarded?.from, got.forwarded?.timeMs], [a.username, orig.timeMs]);
  assert.equal(msgsB.find((m) => m.msgId === orig.msgId).forwarded, undefined);

  // A forward of a forward keeps the first original; into a group too.
  const g = await c.createGroup("fwd", [b.username]);
  const again = await c.forward({ groupId: g.groupId }, fwd.msgId);
  await until(() => groupB.some((m) => m.msgId === again.msgId), 10000, "the group forward");
  const gm = groupB.find((m) => m.msgId === again.msgId);
  assert.deepEqual([gm.from, gm.text, gm.forwarded?.from], [c.username, "the plan", a.username]);

  // c may not read a's message to b; no message at all is the caller's mistake.
  const secret = await a.sendText(b.username, "between us");
  await assert.rejects(c.forward({ user: b.username }, secret.msgId), serverError("NOT_FOUND"));
  await assert.rejects(c.forward({ user: b.username }, 0n), invalidArgument);
  await assert.rejects(c.forward({ groupId: 0n }, secret.msgId), invalidArgument);
  await Promise.all([a.close(), b.close(), c.close()]);
});
