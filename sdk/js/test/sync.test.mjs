// The sync rules of docs/protocol.md §2 against a scripted server (a fake carrier that
// speaks the Noise IK responder side): reordered notifies are held and applied in order
// without a SYNC; a gap that does not fill within 25 ms is synced; nothing is applied
// twice; a notify without inline entries syncs at once.
import { test } from "node:test";
import assert from "node:assert/strict";
import { create, toBinary, fromBinary } from "@bufbuild/protobuf";
import { FerryClient, MemoryStore } from "../dist/index.js";
import {
  noise, encodeFrame, parseFrames, FrameReader, hex, cmd,
  LoginReqSchema, LoginRespSchema, NotifySchema, EntrySchema, MessageSchema, SyncReqSchema,
  SyncRespSchema, GroupListRespSchema, SendAckSchema,
} from "../dist/internal.js";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A scripted server: the inbox is `entries`; SYNC answers from it. */
class FakeServer {
  constructor() {
    this.key = noise.keyPair();
    this.inbox = [];
    this.syncs = [];
  }
  entry(seq) {
    return create(EntrySchema, { seq: BigInt(seq), kind: { case: "message", value: create(MessageSchema, { text: `m${seq}`, from: "peer" }) } });
  }
  carrier() {
    const srv = this;
    let onFrames;
    let tx;
    let rx;
    const reader = new FrameReader();
    const push = (c, id, body) => onFrames([{ cmd: cmd.SEALED, reqId: 0, body: tx.seal(encodeFrame(c, id, body)) }]);
    srv.push = push;
    return {
      transport: "lp",
      async open(first) {
        const [hello] = parseFrames(first);
        const r = new noise.IkResponder(srv.key);
        const [login] = parseFrames(r.readMessage1(hello.body));
        srv.login = fromBinary(LoginReqSchema, login.body);
        const answer = encodeFrame(0x81, login.reqId, toBinary(LoginRespSchema, create(LoginRespSchema, {
          userId: 1n, username: "me", latestSeq: BigInt(srv.inbox.length), heartbeatSecs: 30,
        })));
        const m2 = r.writeMessage2(answer);
        tx = new noise.RecordCipher(m2.s2c);
        rx = new noise.RecordCipher(m2.c2s);
        return { cmd: 0x89, reqId: 0, body: m2.msg };
      },
      start(f) {
        onFrames = f;
      },
      send(frames) {
        for (const rec of frames) {
          const [f] = parseFrames(rec);
          for (const req of reader.push(rx.open(f.body))) {
            setTimeout(() => {
              if (req.cmd === cmd.SYNC) {
                const s = fromBinary(SyncReqSchema, req.body);
                srv.syncs.push(s.synckey);
                const entries = srv.inbox.filter((e) => e.seq > s.synckey);
                push(0x84, req.reqId, toBinary(SyncRespSchema, create(SyncRespSchema, {
                  entries, synckey: entries.at(-1)?.seq ?? s.synckey, latestSeq: BigInt(srv.inbox.length),
                })));
              } else if (req.cmd === cmd.SEND) {
                // Stored as the next entry of the inbox; the entry rides in the ack when
                // the login asked for it (docs/protocol.md §2, *Your own entry in the ack*).
                const e = srv.entry(srv.inbox.length + 1);
                srv.inbox.push(e);
                push(0x83, req.reqId, toBinary(SendAckSchema, create(SendAckSchema, {
                  msgId: e.seq, seq: e.seq, timeMs: 1n, entry: srv.login.echoInAck ? e : undefined,
                })));
              } else if (req.cmd === cmd.GROUP_LIST) {
                push(0xa8, req.reqId, toBinary(GroupListRespSchema, create(GroupListRespSchema, {})));
              } else {
                push(req.cmd | 0x80, req.reqId, new Uint8Array(0));
              }
            }, 1);
          }
        }
      },
      close() {},
    };
  }
  /** Stores entry `seq` and pushes a NOTIFY carrying the entries `inline`. */
  notify(latest, inline) {
    const body = create(NotifySchema, { latestSeq: BigInt(latest), entries: inline.map((s) => this.entry(s)) });
    this.push(cmd.NOTIFY, 0, toBinary(NotifySchema, body));
  }
  grow(n) {
    while (this.inbox.length < n) this.inbox.push(this.entry(this.inbox.length + 1));
  }
}

/** A client with a stored token that talks to `srv` instead of the network. */
async function scriptedClient(srv) {
  const store = new MemoryStore();
  await store.set("token", "t".repeat(64));
  const c = await FerryClient.create({ servers: ["127.0.0.1:9"], serverKey: hex(srv.key.pub), store, transports: ["lp"] });
  c.carrier = () => srv.carrier();
  return { c, store };
}

test("notifies: held across a reordering, synced across a lost one, applied once each", async () => {
  const srv = new FakeServer();
  const { c, store } = await scriptedClient(srv);
  const got = [];
  c.on("entry", (e) => got.push(Number(e.seq)));
  await c.connect();
  assert.equal(srv.login.token, "t".repeat(64));
  assert.equal(srv.syncs.length, 0, "nothing to sync at login");

  // 2 arrives before 1: held, then both applied — no SYNC.
  srv.grow(2);
  srv.notify(2, [2]);
  await sleep(5);
  assert.deepEqual(got, []);
  srv.notify(1, [1]);
  await sleep(10);
  assert.deepEqual(got, [1, 2]);
  assert.equal(srv.syncs.length, 0, "a reordering needs no SYNC");

  // 3 and 4 are lost on the way; 5 waits 25 ms, then a SYNC from 2 fetches 3, 4, 5.
  srv.grow(5);
  srv.notify(5, [5]);
  await sleep(10);
  assert.deepEqual(got, [1, 2], "5 is held");
  await sleep(60);
  assert.deepEqual(srv.syncs, [2n]);
  assert.deepEqual(got, [1, 2, 3, 4, 5]);

  // Late copies change nothing.
  srv.notify(4, [4]);
  srv.notify(5, [5]);
  await sleep(40);
  assert.deepEqual(got, [1, 2, 3, 4, 5]);

  // A notify without inline entries (too large) syncs at once.
  srv.grow(7);
  srv.notify(7, []);
  await sleep(30);
  assert.deepEqual(srv.syncs, [2n, 5n]);
  assert.deepEqual(got, [1, 2, 3, 4, 5, 6, 7]);
  assert.equal(c.synckey, 7n);
  assert.equal(await store.get("synckey"), "7", "the synckey is stored");
  await c.close();
});

test("its own message's entry rides in the SendAck: applied in order, without a SYNC", async () => {
  const srv = new FakeServer();
  const { c, store } = await scriptedClient(srv);
  const got = [];
  c.on("entry", (e) => got.push(Number(e.seq)));
  await c.connect();
  assert.equal(srv.login.echoInAck, true, "the login asks for its entries in its acks");

  srv.grow(1);
  srv.notify(1, [1]);
  await sleep(5);
  const ack = await c.sendText("peer", "mine");
  assert.equal(ack.seq, 2n);
  assert.equal(ack.entry?.seq, 2n);
  await sleep(5);
  assert.deepEqual(got, [1, 2], "applied from the ack");

  // A message to us (3) whose notify is late, then our own send (4): 4 waits for 3.
  srv.grow(3);
  await c.sendText("peer", "mine too");
  await sleep(5);
  assert.deepEqual(got, [1, 2], "4 is held");
  srv.notify(3, [3]);
  await sleep(10);
  assert.deepEqual(got, [1, 2, 3, 4]);
  assert.equal(srv.syncs.length, 0, "no SYNC was needed");
  assert.equal(c.synckey, 4n);
  await c.close();
});

test("a listener's promise holds the stored synckey back until it settles", async () => {
  const srv = new FakeServer();
  const { c, store } = await scriptedClient(srv);
  const got = [];
  let release;
  const kept = new Promise((r) => (release = r));
  // An app that stores what it shows: the entry is "kept" only when `release` is called.
  c.on("entry", (e) => {
    got.push(Number(e.seq));
    return kept;
  });
  await c.connect();
  srv.grow(2);
  srv.notify(2, [1, 2]);
  await sleep(30);
  assert.deepEqual(got, [1, 2], "handed to the app at once");
  assert.equal(await store.get("synckey"), undefined, "not stored while the app has not kept them");
  // Another batch waits behind the first: in order, and still not stored.
  srv.grow(3);
  srv.notify(3, [3]);
  await sleep(30);
  assert.equal(await store.get("synckey"), undefined);
  release();
  await sleep(30);
  assert.deepEqual(got, [1, 2, 3]);
  assert.equal(await store.get("synckey"), "3", "stored once the app kept them");
  await c.close();
});
