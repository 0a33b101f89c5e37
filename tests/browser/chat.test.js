// The chat app (web/chat, served by `ferry serve` at /chat) in headless Chromium against a
// real server binary (FERRY_BIN). One server and one browser for the file; the tests run
// in order and build on each other (alice and bob befriend in the first, the later ones
// use that friendship).
//
//   FERRY_BIN=target/debug/ferry node --test tests/browser/
//
// Screenshots go to target/browser/ (FERRY_CHAT_SCREENSHOT_DIR to change); docs/chat.png
// and docs/chat-phone.png are copies of them.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import {
  startServer, launchBrowser, openChat, enter, showTab, say, openConvWith, texts, cliUser,
  wsBlockingProxy, screenshotDir, serverSpeaksWs,
} from "./lib.js";

let server, browser, tmp;
const pages = {};         // name → { context, page }
// Each run has a server of its own (a fresh data dir): plain names do.
const name = (n) => n;
const ALICE = name("alice"), BOB = name("bob");

before(async () => {
  tmp = mkdtempSync(path.join(tmpdir(), "ferry-chat-files-"));
  server = await startServer();
  assert.match(server.printed, /ferry chat: http:\/\/127\.0\.0\.1:\d+\/chat/, "serve prints the chat's address");
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

/** No page broke its content security policy or threw. */
function noPageErrors(page, allow = []) {
  const bad = page.errors.filter((e) => /Content Security Policy|Uncaught|TypeError|ReferenceError|SyntaxError/.test(e)
    && !allow.some((a) => a.test(e)));
  assert.deepEqual(bad, [], "errors in the page");
}

/** A JPEG made by the browser (noise, so it does not compress to nothing). */
async function makeJpeg(page, w, h) {
  const dataUrl = await page.evaluate(async ([w, h]) => {
    const c = document.createElement("canvas");
    c.width = w; c.height = h;
    const g = c.getContext("2d");
    const img = g.createImageData(w, h);
    let x = 12345;
    for (let i = 0; i < img.data.length; i += 4) {
      x = (x * 1103515245 + 12345) >>> 0;
      img.data[i] = (i / 4) % w * 255 / w; img.data[i + 1] = x & 255; img.data[i + 2] = (x >> 8) & 127; img.data[i + 3] = 255;
    }
    g.putImageData(img, 0, 0);
    const blob = await new Promise((ok) => c.toBlob(ok, "image/jpeg", 0.85));
    return new Promise((ok) => { const r = new FileReader(); r.onload = () => ok(r.result); r.readAsDataURL(blob); });
  }, [w, h]);
  return Buffer.from(dataUrl.slice(dataUrl.indexOf(",") + 1), "base64");
}

test("two browsers: sign up, befriend, chat both ways, typing, read, image, recall, group", async () => {
  pages.alice = await openChat(browser, server.url);
  pages.bob = await openChat(browser, server.url);
  const alice = pages.alice.page, bob = pages.bob.page;
  await Promise.all([enter(alice, ALICE), enter(bob, BOB)]);
  // The link is a WebSocket where the server takes one, else long-poll.
  const ws = await serverSpeaksWs(server.addr);
  for (const p of [alice, bob]) assert.equal(await p.getAttribute("body", "data-transport"), ws ? "ws" : "lp");

  // Friend request: alice asks, bob accepts.
  await showTab(alice, "contacts");
  await alice.fill("#add-user", BOB);
  await alice.fill("#add-greeting", "hi, it's alice");
  await alice.press("#add-user", "Enter");
  await alice.waitForSelector(`#requests [data-user="${BOB}"][data-state="out"]`);
  await showTab(bob, "contacts");
  await bob.waitForSelector(`#requests [data-user="${ALICE}"][data-state="in"]`);
  assert.match(await bob.textContent(`#requests [data-user="${ALICE}"]`), /hi, it's alice/);
  assert.equal(await bob.textContent("#requests-count"), "1", "the Contacts tab counts the request");
  await bob.click(`button[aria-label="Accept ${ALICE}"]`);
  await bob.waitForSelector(`#friends [data-user="${ALICE}"]`);
  await alice.waitForSelector(`#friends [data-user="${BOB}"]`);

  // alice → bob, with the keyboard (Enter sends).
  await alice.click(`button[aria-label="Message ${BOB}"]`);
  await alice.waitForSelector(`body[data-open="u:${BOB}"]`);
  await say(alice, "hello bob");
  await alice.waitForSelector('#messages li.msg.out[data-id]:has-text("hello bob")');
  // bob has it unread (his list is showing), then reads it.
  await showTab(bob, "chats");
  await bob.waitForSelector(`#conv-list [data-key="u:${ALICE}"] .badge[data-unread="1"]`);
  await openConvWith(bob, `u:${ALICE}`);
  await bob.waitForSelector('#messages li.msg.in:has-text("hello bob")');
  assert.equal(await bob.$(`#conv-list [data-key="u:${ALICE}"] .badge`), null, "opening clears the badge");
  // The read receipt reaches alice.
  await alice.waitForSelector('#messages li.msg.out:has-text("hello bob") [data-receipt="Read"]');

  // bob types: alice sees it; then he sends.
  await bob.focus("#composer-input");
  await bob.keyboard.type("hi alice");
  await alice.waitForFunction((b) => document.querySelector("#typing").textContent === `${b} is typing…`, BOB);
  await bob.keyboard.press("Enter");
  await alice.waitForSelector('#messages li.msg.in:has-text("hi alice")');
  assert.deepEqual(await texts(alice), ["hello bob", "hi alice"]);
  assert.deepEqual(await texts(bob), ["hello bob", "hi alice"]);

  // An image: the thumbnail shows first, then the original, byte for byte.
  const jpeg = await makeJpeg(alice, 640, 480);
  assert.ok(jpeg.length > 64 * 1024, `a test image of some size (${jpeg.length} B)`);
  const file = path.join(tmp, "photo.jpg");
  writeFileSync(file, jpeg);
  let release;
  const gate = new Promise((r) => { release = r; });
  const pieces = [];
  await bob.route(/\/v1\/media\/[0-9a-f]+/, async (route) => {
    const resp = await route.fetch();
    const body = await resp.body();
    let start = 0, total = body.length;
    const cr = resp.headers()["content-range"];
    if (cr) {
      const m = cr.match(/bytes (\d+)-(\d+)\/(\d+)/);
      if (m) { start = Number(m[1]); total = Number(m[3]); }
    }
    if ((resp.status() === 200 || resp.status() === 206) && total === jpeg.length) {
      await gate; // hold the original until the thumbnail has been seen
      pieces.push({ start, body });
    }
    await route.fulfill({ response: resp, body });
  });
  await alice.evaluate(() => {
    window.progressSeen = [];
    new MutationObserver((ms) => {
      for (const m of ms) if (m.target.tagName === "PROGRESS" && !m.target.hidden) window.progressSeen.push(Number(m.target.value));
    }).observe(document.body, { subtree: true, attributes: true, attributeFilter: ["value", "hidden"] });
  });
  await alice.setInputFiles("#image-input", file);
  // The sender sees its picture at once and the upload's progress, then "done".
  await alice.waitForSelector("#messages li.msg.out figure.image img[src]");
  await alice.waitForSelector('#messages li.msg.out figure.image[data-upload="done"]', { timeout: 30000 });
  const seen = await alice.evaluate(() => window.progressSeen);
  assert.ok(seen.some((v) => v > 0 && v < 100), `a progress bar moved: ${JSON.stringify(seen)}`);

  const bobImg = '#messages li.msg.in figure.image[data-media-id] img';
  await bob.waitForSelector(`${bobImg}[data-state="thumb"]`, { timeout: 20000 });
  const thumb = await bob.waitForFunction((sel) => {
    const i = document.querySelector(sel);
    return i && i.complete && i.naturalWidth > 0 && [i.naturalWidth, i.naturalHeight];
  }, `${bobImg}[data-state="thumb"]`);
  const [tw, th] = await thumb.jsonValue();
  assert.ok(tw <= 200 && th <= 200 && tw >= 100, `the thumbnail is ≤ 200 px: ${tw}×${th}`);
  assert.equal(pieces.length, 0, "the original was not shown before the thumbnail");
  release();
  await bob.waitForSelector(`${bobImg}[data-state="original"]`, { timeout: 30000 });
  const full = await bob.waitForFunction((sel) => {
    const i = document.querySelector(sel);
    return i && i.complete && i.naturalWidth > 0 && [i.naturalWidth, i.naturalHeight];
  }, `${bobImg}[data-state="original"]`);
  assert.deepEqual(await full.jsonValue(), [640, 480], "the original replaced the thumbnail");
  pieces.sort((a, b) => a.start - b.start);
  const got = Buffer.concat(pieces.map((p) => p.body));
  assert.equal(got.length, jpeg.length, "the page downloaded the whole original");
  assert.ok(got.equals(jpeg), "the original is byte-identical to the file sent");
  await bob.unroute(/\/v1\/media\/[0-9a-f]+/);

  // The screenshots (docs/chat.png, docs/chat-phone.png): alice's desktop once bob has
  // read the picture, bob's phone showing it.
  await alice.waitForSelector('#messages li.msg.out:last-child [data-receipt="Read"]');
  await alice.waitForFunction(() => [...document.querySelectorAll("#messages img")].every((i) => i.complete && i.naturalWidth));
  await alice.screenshot({ path: path.join(screenshotDir(), "chat.png") });
  await bob.setViewportSize({ width: 390, height: 844 });
  await bob.waitForFunction(() => getComputedStyle(document.querySelector("#side")).display === "none");
  await bob.evaluate(() => { const m = document.querySelector("#messages"); m.scrollTop = m.scrollHeight; });
  await bob.screenshot({ path: path.join(screenshotDir(), "chat-phone.png") });
  await bob.setViewportSize({ width: 1280, height: 800 });

  // Recall (own message, within 2 minutes).
  await alice.click('#messages li.msg.out:has-text("hello bob") button.recall');
  await alice.waitForSelector('#messages li.msg.recalled:has-text("You recalled a message")');
  await bob.waitForSelector(`#messages li.msg.recalled:has-text("${ALICE} recalled a message")`);
  assert.ok(!(await texts(bob)).includes("hello bob"), "the recalled text is gone");

  // A group with a friend.
  await alice.click("#new-group");
  await alice.fill("#group-name", "weekend");
  await alice.check(`#group-members input[value="${BOB}"]`);
  await alice.click("#group-create");
  await alice.waitForSelector('body[data-open^="g:"]');
  await say(alice, "group hello");
  await alice.waitForSelector('#messages li.msg.out[data-id]:has-text("group hello")');
  await bob.waitForSelector('#conv-list [data-key^="g:"]:has-text("weekend")');
  await bob.click('#conv-list [data-key^="g:"]');
  await bob.waitForSelector(`#messages li.msg.in:has-text("group hello") .from:text("${ALICE}")`);
  await say(bob, "group reply");
  await alice.waitForSelector('#messages li.msg.in:has-text("group reply")');
  // Back to the 1:1 conversation for the next tests.
  await openConvWith(alice, `u:${BOB}`);
  noPageErrors(alice);
  noPageErrors(bob);
});

test("bob away: alice sends 20; bob signs in again and sees all 20 once, in order", async () => {
  await pages.bob.context.close();
  const alice = pages.alice.page;
  const sent = Array.from({ length: 20 }, (_, i) => `while away ${String(i + 1).padStart(2, "0")}`);
  for (const t of sent) await say(alice, t);
  await alice.waitForFunction((n) => document.querySelectorAll('#messages li.msg.out[data-id]').length >= n, 20 + 2,
    { timeout: 30000 });

  pages.bob = await openChat(browser, server.url);
  const bob = pages.bob.page;
  await enter(bob, BOB, { signUp: false });
  await bob.waitForSelector(`#conv-list [data-key="u:${ALICE}"] .badge`);
  await openConvWith(bob, `u:${ALICE}`);
  await bob.waitForSelector(`#messages li.msg:has-text("${sent.at(-1)}")`, { timeout: 20000 });
  const shown = (await texts(bob)).filter((t) => t.startsWith("while away"));
  assert.deepEqual(shown, sent, "all 20, once each, in order");
  // And the history before it (the recall included) came back with the new device.
  const all = await texts(bob);
  assert.ok(all.includes("hi alice") && !all.includes("hello bob"), JSON.stringify(all));
  noPageErrors(bob);
});

test("reload and sign-in again: the conversations come from IndexedDB, not a re-sync", async () => {
  const alice = pages.alice.page;
  const before = await texts(alice);
  await alice.reload();
  // Signed in again from the stored token, without the form.
  await alice.waitForSelector('body[data-state="online"]');
  assert.ok(!(await alice.isVisible("#auth-form")), "no sign-in form after a reload");
  const dbs = await alice.evaluate(async () => (await indexedDB.databases()).map((d) => d.name));
  assert.ok(dbs.includes(`ferry-chat-${"alice"}`), `one IndexedDB per user: ${dbs}`);
  // The SDK resumes from its stored synckey, so what was said before can only come from
  // the app's own store; and nothing shows twice.
  await openConvWith(alice, `u:${BOB}`);
  assert.deepEqual(await texts(alice), before, "the same conversation after a reload");
  await alice.waitForSelector('#conv-list [data-key^="g:"]:has-text("weekend")');

  // Sign out, then in again: the same store, the same conversations.
  await alice.click("#signout");
  await alice.waitForSelector("#auth-form", { state: "visible" });
  await enter(alice, ALICE, { signUp: false });
  await openConvWith(alice, `u:${BOB}`);
  assert.deepEqual(await texts(alice), before, "the same conversation after signing in again");
  noPageErrors(alice);
});

test("a CLI user and a browser user talk to each other", async () => {
  const CAROL = name("carol"), DAVE = name("dave");
  pages.carol = await openChat(browser, server.url);
  const carol = pages.carol.page;
  const dave = cliUser(server, DAVE);
  try {
    await Promise.all([enter(carol, CAROL), dave.register()]);
    await dave.run("friends", "add", CAROL, "--greeting", "hello from a terminal");
    await showTab(carol, "contacts");
    await carol.click(`button[aria-label="Accept ${DAVE}"]`);
    await carol.waitForSelector(`#friends [data-user="${DAVE}"]`);
    // A request carol does not want: declined, it goes away and makes no friend.
    const MALLORY = name("mallory");
    const mallory = cliUser(server, MALLORY);
    try {
      await mallory.register();
      await mallory.run("friends", "add", CAROL);
      await carol.click(`button[aria-label="Decline ${MALLORY}"]`);
      await carol.waitForSelector(`#requests [data-user="${MALLORY}"]`, { state: "detached" });
      assert.equal(await carol.$(`#friends [data-user="${MALLORY}"]`), null);
      await assert.rejects(mallory.run("send", "--to", CAROL, "let me in"), /not allowed|PERMISSION|friends/i,
        "a declined stranger cannot message");
    } finally {
      mallory.cleanup();
    }
    const listen = dave.listen(40);
    try {
      await dave.run("send", "--to", CAROL, "typed in a terminal");
      await showTab(carol, "chats");
      await carol.waitForSelector(`#conv-list [data-key="u:${DAVE}"] .badge`);
      await openConvWith(carol, `u:${DAVE}`);
      await carol.waitForSelector('#messages li.msg.in:has-text("typed in a terminal")');
      await say(carol, "typed in a browser");
      const line = await listen.until((l) => l.text === "typed in a browser");
      assert.equal(line.from, CAROL);
    } finally {
      listen.stop();
    }
  } finally {
    dave.cleanup();
    await pages.carol.context.close();
  }
  noPageErrors(carol);
});

test("WebSocket refused: the app falls back to long-poll and still delivers; offline and back", async () => {
  const proxy = await wsBlockingProxy(server.addr);
  const ERIN = name("erin"), GUS = name("gus");
  const gus = cliUser(server, GUS);
  const { context, page: erin } = await openChat(browser, proxy.url);
  // The page's network reaches only the proxy: the server's own address — which its
  // endpoint list hands out, and the SDK races after the last good endpoint — does not
  // pass (a firewall that lets only the proxy through). Without this the cut below would
  // only move the link to the direct address, as it should on a real network.
  await context.route(`http://${server.addr}/**`, (r) => r.abort("connectionrefused"));
  await context.routeWebSocket(`ws://${server.addr}/**`, (ws) => ws.close());
  try {
    await Promise.all([enter(erin, ERIN), gus.register()]);
    assert.equal(await erin.getAttribute("body", "data-transport"), "lp", "the link runs over long-poll");
    assert.match(await erin.textContent("#status"), /long-poll/);
    assert.ok(proxy.stats.upgradesRefused >= 1, `the app tried a WebSocket first (refused ${proxy.stats.upgradesRefused})`);
    await gus.run("friends", "add", ERIN);
    await showTab(erin, "contacts");
    await erin.click(`button[aria-label="Accept ${GUS}"]`);
    await erin.waitForSelector(`#friends [data-user="${GUS}"]`);
    const listen = gus.listen(40);
    try {
      await gus.run("send", "--to", ERIN, "over a proxy");
      await showTab(erin, "chats");
      await openConvWith(erin, `u:${GUS}`);
      await erin.waitForSelector('#messages li.msg.in:has-text("over a proxy")');
      await say(erin, "long-poll works");
      await listen.until((l) => l.text === "long-poll works" && l.from === ERIN);
    } finally {
      listen.stop();
    }
    assert.equal(await erin.getAttribute("body", "data-transport"), "lp");

    // The network goes: the banner says so; a message sent meanwhile arrives on return.
    proxy.cut();
    await erin.waitForSelector("#offline", { state: "visible", timeout: 20000 });
    assert.equal(await erin.textContent("#offline"), "Offline — reconnecting…");
    await gus.run("send", "--to", ERIN, "sent while you were offline");
    await new Promise((r) => setTimeout(r, 500));
    proxy.restore();
    await erin.waitForSelector('#messages li.msg.in:has-text("sent while you were offline")', { timeout: 40000 });
    await erin.waitForSelector("#offline", { state: "hidden" });
    assert.equal(await erin.getAttribute("body", "data-state"), "online");
    noPageErrors(erin, [/WebSocket/, /Failed to fetch|ERR_CONNECTION_REFUSED/]);
  } finally {
    gus.cleanup();
    await context.close();
    await proxy.close();
  }
});

test("layouts: one column on a phone; the keyboard alone goes back and forth", async () => {
  const alice = pages.alice.page;
  await alice.setViewportSize({ width: 1280, height: 800 });
  await openConvWith(alice, `u:${BOB}`);
  assert.ok(await alice.isVisible("#side") && await alice.isVisible("#composer"), "list and conversation side by side");
  assert.ok(!(await alice.isVisible("#back")), "no back button on a desktop");

  await alice.setViewportSize({ width: 390, height: 844 });
  await alice.waitForFunction(() => getComputedStyle(document.querySelector("#side")).display === "none");
  const overflow = await alice.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the phone layout is wider than the screen by ${overflow}px`);
  assert.ok(await alice.isVisible("#back"), "a back button on the phone");
  const head = await alice.evaluate(() => document.querySelector("header.top").getBoundingClientRect().height);
  assert.ok(head < 60, `the header stays one line on a phone (${head}px)`);

  // Escape goes back to the list, with the focus on the conversation just left.
  await alice.focus("#composer-input");
  await alice.keyboard.press("Escape");
  await alice.waitForSelector('body[data-view="list"]');
  assert.ok(await alice.isVisible("#conv-list"), "the list shows");
  assert.ok(!(await alice.isVisible("#composer")), "the conversation is hidden");
  assert.equal(await alice.evaluate(() => document.activeElement.dataset.key), `u:${BOB}`);
  // The focus is visible.
  const outline = await alice.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  assert.notEqual(outline, "none", "a visible focus ring");
  // Enter on the focused conversation opens it again, ready to type; Tab walks on.
  await alice.keyboard.press("Enter");
  await alice.waitForSelector('body[data-view="conv"]');
  assert.equal(await alice.evaluate(() => document.activeElement.id), "composer-input");
  await say(alice, "sent from the keyboard");
  await alice.waitForSelector('#messages li.msg.out[data-id]:has-text("sent from the keyboard")');
  await alice.keyboard.press("Tab");
  assert.equal(await alice.evaluate(() => document.activeElement.id), "send");
  // Every control has a name.
  const unnamed = await alice.evaluate(() => [...document.querySelectorAll("button, input")]
    .filter((e) => e.offsetParent !== null || e.id === "image-input")
    .filter((e) => !(e.getAttribute("aria-label") || e.labels?.length || e.textContent.trim()))
    .map((e) => e.outerHTML.slice(0, 80)));
  assert.deepEqual(unnamed, [], "controls without an accessible name");
  await alice.setViewportSize({ width: 1280, height: 800 });

  for (const f of ["chat.png", "chat-phone.png"]) {
    const png = readFileSync(path.join(screenshotDir(), f));
    assert.ok(png.subarray(0, 4).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47])), `${f} is a PNG`);
  }
  noPageErrors(alice);
});
