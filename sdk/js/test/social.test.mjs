// Friends, groups, recall, read receipts and typing over the long link.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { FriendEvent_Kind, FriendState, GroupEvent_Kind } from "../dist/index.js";
import { startServer, user, until, sleep } from "./server.mjs";

let srv;
before(async () => {
  srv = await startServer();
});
after(async () => {
  await srv?.cleanup();
});

test("friend requests arrive as events; the list shows the friend", async () => {
  const a = await user(srv, "asker", { transports: ["lp"] });
  const b = await user(srv, "asked", { transports: ["lp"] });
  await Promise.all([a.connect(), b.connect()]);
  const fa = [];
  const fb = [];
  a.on("friend", (e) => fa.push(e));
  b.on("friend", (e) => fb.push(e));
  const found = await a.findUser(b.username);
  assert.equal(found.username, b.username);
  await assert.rejects(a.findUser("nobody_" + Date.now()), (e) => e.codeName === "UNKNOWN_USER");
  await a.requestFriend(b.username, "hello there");
  await until(() => fb.length === 1, 10000, "the request");
  assert.equal(fb[0].kind, FriendEvent_Kind.REQUEST_RECEIVED);
  assert.equal(fb[0].peer, a.username);
  assert.equal(fb[0].greeting, "hello there");
  const pending = await b.friends();
  assert.equal(pending.find((f) => f.username === a.username)?.state, FriendState.REQUEST_IN);
  await b.acceptFriend(a.username);
  await until(() => fa.some((e) => e.kind === FriendEvent_Kind.ADDED), 10000, "ADDED");
  const list = await a.friends();
  assert.equal(list.find((f) => f.username === b.username)?.state, FriendState.FRIEND);
  await Promise.all([a.close(), b.close()]);
});

test("recall, read receipts and typing", async () => {
  const a = await user(srv, "recaller", { transports: ["ws"] });
  const b = await user(srv, "reader", { transports: ["ws"] });
  await a.requestFriend(b.username);
  await b.acceptFriend(a.username);
  await Promise.all([a.connect(), b.connect()]);
  const recalls = [];
  const reads = [];
  const typing = [];
  const msgs = [];
  b.on("recall", (r) => recalls.push(r));
  b.on("message", (m) => msgs.push(m.message));
  a.on("read", (r) => reads.push(r));
  b.on("typing", (t) => typing.push(t.from));

  await a.typing(b.username);
  await until(() => typing.length === 1, 10000, "typing");
  assert.deepEqual(typing, [a.username]);

  const ack = await a.sendText(b.username, "oops");
  await until(() => msgs.length === 1, 10000, "the message");
  await b.markRead(a.username, msgs[0].msgId);
  await until(() => reads.length === 1, 10000, "the read receipt");
  assert.equal(reads[0].reader, b.username);
  assert.equal(reads[0].msgId, ack.msgId);

  await a.recall(ack.msgId);
  await until(() => recalls.length === 1, 10000, "the recall");
  assert.equal(recalls[0].msgId, ack.msgId);
  assert.equal(recalls[0].by, a.username);
  // Only the sender recalls.
  await assert.rejects(b.recall(ack.msgId), (e) => e.kind === "server");
  await Promise.all([a.close(), b.close()]);
});

test("groups: create, send, receive in gseq order, recall, reads, leave", async () => {
  const a = await user(srv, "owner", { transports: ["lp"] });
  const b = await user(srv, "member", { transports: ["ws"] });
  const c = await user(srv, "late", { transports: ["lp"] });
  for (const x of [b, c]) {
    await a.requestFriend(x.username);
    await x.acceptFriend(a.username);
  }
  await Promise.all([a.connect(), b.connect()]);
  const bGroup = [];
  const bEntries = [];
  const bMsgs = [];
  const bRecalls = [];
  b.on("group", (e) => bGroup.push(e));
  b.on("groupEntry", (e) => bEntries.push(e));
  b.on("groupMessage", (e) => bMsgs.push(e));
  b.on("recall", (r) => bRecalls.push(r));

  const g = await a.createGroup("the crew", [b.username]);
  assert.equal(g.name, "the crew");
  assert.equal(g.owner, a.username);
  await until(() => bGroup.some((e) => e.kind === GroupEvent_Kind.CREATED && e.groupId === g.groupId), 10000, "CREATED");

  const acks = [];
  for (let i = 0; i < 5; i++) acks.push(await a.sendGroupText(g.groupId, `g${i}`, i === 0 ? [b.username] : []));
  await b.sendGroupText(g.groupId, "from b");
  await until(() => bMsgs.length === 6, 10000, "six group messages");
  assert.deepEqual(bMsgs.map((m) => m.message.text), ["g0", "g1", "g2", "g3", "g4", "from b"]);
  assert.deepEqual(bMsgs[0].message.mentions, [b.username]);
  assert.equal(bMsgs[0].gseq, acks[0].seq);
  const gseqs = bEntries.map((e) => e.entry.gseq);
  for (let i = 1; i < gseqs.length; i++) assert.equal(gseqs[i], gseqs[i - 1] + 1n, "every entry once, in gseq order");

  await b.markGroupRead(g.groupId, bMsgs[4].gseq);
  const reads = await a.groupReads(g.groupId, acks[4].seq);
  assert.ok(reads.readers.includes(b.username));

  await a.recall(acks[1].msgId);
  await until(() => bRecalls.length === 1, 10000, "the group recall");
  assert.equal(bRecalls[0].msgId, acks[1].msgId);
  assert.equal(bRecalls[0].groupId, g.groupId);

  // A member added later syncs the group when it connects.
  await a.addMembers(g.groupId, [c.username]);
  await a.sendGroupText(g.groupId, "welcome");
  const cMsgs = [];
  c.on("groupMessage", (e) => cMsgs.push(e.message.text));
  await c.connect();
  await until(() => cMsgs.includes("welcome"), 10000, "the late member's sync");
  const info = await c.groupInfo(g.groupId);
  assert.equal(info.members.length, 3);
  assert.ok((await c.groups()).some((x) => x.groupId === g.groupId));

  await c.leaveGroup(g.groupId);
  await assert.rejects(c.groupInfo(g.groupId), (e) => e.codeName === "NOT_FOUND");
  await sleep(100);
  await Promise.all([a.close(), b.close(), c.close()]);
});
