// Images: the thumbnail first, the message, then the original (docs/protocol.md, Media);
// chunks unsealed under the upload key; ranged downloads.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { MediaKind } from "../dist/index.js";
import { startServer, user, until, befriend } from "./server.mjs";
import { png } from "./png.mjs";

let srv;
before(async () => {
  srv = await startServer();
});
after(async () => {
  await srv?.cleanup();
});

test("an image: thumbnail first, the original byte-identical, progress events", async () => {
  const a = await user(srv, "painter", { transports: ["lp"] });
  const b = await user(srv, "viewer", { transports: ["lp"] });
  await befriend(a, b);
  await Promise.all([a.connect(), b.connect()]);
  const got = [];
  b.on("message", (m) => got.push(m.message));

  const image = png(480, 480); // ~690 KB: many chunks, two download ranges
  const thumb = png(20, 20);
  const progress = [];
  let sentAck;
  let sawMessageBeforeOriginal = false;
  const ack = await a.sendImage({ user: b.username }, image, {
    contentType: "image/png", width: 480, height: 480, thumbnail: thumb,
    onProgress: (p) => progress.push(p),
    onSent: (ack) => {
      sentAck = ack;
      sawMessageBeforeOriginal = !progress.some((p) => p.phase === "original" && p.sent > 0);
    },
  });
  assert.equal(sentAck, ack);
  assert.ok(sawMessageBeforeOriginal, "the message went before the original's bytes");
  const thumbs = progress.filter((p) => p.phase === "thumbnail");
  const origs = progress.filter((p) => p.phase === "original");
  assert.equal(thumbs.at(-1).sent, thumb.length);
  assert.equal(origs.at(-1).sent, image.length);
  assert.ok(origs.length > 10, "progress per chunk");
  assert.ok(progress.indexOf(thumbs.at(-1)) < progress.indexOf(origs[0]), "thumbnail before original");
  for (let i = 1; i < origs.length; i++) assert.ok(origs[i].sent >= origs[i - 1].sent);

  await until(() => got.length === 1, 10000, "the image message");
  const m = got[0].media;
  assert.equal(m.kind, MediaKind.MEDIA_IMAGE);
  assert.equal(m.size, BigInt(image.length));
  assert.ok(m.thumbId);
  const t = await b.downloadMedia(m.thumbId);
  assert.deepEqual(t, thumb);
  const ranges = [];
  const o = await b.downloadMedia(m.mediaId, { onProgress: (g, total) => ranges.push([g, total]) });
  assert.equal(o.length, image.length);
  assert.ok(Buffer.from(o).equals(Buffer.from(image)), "the original, byte-identical");
  assert.deepEqual(ranges, [[512 * 1024, image.length], [image.length, image.length]]);
  // A stranger cannot read it.
  const c = await user(srv, "snoop");
  await assert.rejects(c.downloadMedia(m.mediaId, { waitMs: 0 }), (e) => e.codeName === "NOT_FOUND");
  await Promise.all([a.close(), b.close()]);
});

test("a download started at the message waits until the original is finished", async () => {
  const a = await user(srv, "slowpoke", { transports: ["lp"] });
  const b = await user(srv, "waiter", { transports: ["lp"] });
  await befriend(a, b);
  await Promise.all([a.connect(), b.connect()]);
  const image = png(700, 700); // ~1.5 MB
  let uploaded = false;
  let startedEarly;
  let download;
  b.on("message", (m) => {
    startedEarly = !uploaded;
    download = b.downloadMedia(m.message.media.mediaId, { waitMs: 30000 });
  });
  await a.sendImage({ user: b.username }, image, { contentType: "image/png", thumbnail: png(10, 10) });
  uploaded = true;
  await until(() => download, 10000, "the message");
  assert.equal(startedEarly, true, "the download began before the original was finished");
  const o = await download;
  assert.ok(Buffer.from(o).equals(Buffer.from(image)));
  await Promise.all([a.close(), b.close()]);
});
