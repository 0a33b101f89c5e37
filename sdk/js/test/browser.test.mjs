// The bundle (web/chat/ferry-sdk.js) in a real browser: headless Chromium loads a page
// from another origin than the server (so CORS is exercised), and two clients — native
// WebSocket, fetch, IndexedDB — register, sign in, befriend, connect and chat. Skipped,
// saying so, where no Chromium is installed.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { createServer } from "node:http";
import { readFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { startServer } from "./server.mjs";

function findChromium() {
  for (const bin of [process.env.CHROMIUM, "chromium", "chromium-browser", "google-chrome"]) {
    if (!bin) continue;
    try {
      execFileSync(bin, ["--version"], { stdio: "ignore", detached: true });
      return bin;
    } catch {
      // not this one
    }
  }
  return undefined;
}

const bundle = readFileSync(fileURLToPath(new URL("../../../web/chat/ferry-sdk.js", import.meta.url)));

const page = (endpoint, key, transport) => `<!doctype html><meta charset="utf-8"><script type="module">
import { FerryClient, IndexedDbStore } from "./ferry-sdk.js";
const report = (r) => fetch("/result", { method: "POST", body: JSON.stringify(r) });
try {
  const mk = async (db) => FerryClient.create({ servers: ["${endpoint}"], serverKey: "${key}",
    store: new IndexedDbStore(db), transports: ["${transport}"], requestTimeoutMs: 5000 });
  const suffix = Math.random().toString(36).slice(2, 8);
  const a = await mk("a" + suffix), b = await mk("b" + suffix);
  a["clockOffsetMs"] = 7 * 60 * 1000; // a clock 7 minutes fast: corrected without a Date header (CORS hides it)
  await a.register("ba" + suffix, "correct horse battery");
  await b.register("bb" + suffix, "correct horse battery");
  await a.signIn("ba" + suffix, "correct horse battery");
  await b.signIn("bb" + suffix, "correct horse battery");
  await a.requestFriend(b.username);
  await b.acceptFriend(a.username);
  await Promise.all([a.connect(), b.connect()]);
  const got = new Promise((r) => b.on("message", (m) => r(m.message.text)));
  await a.sendText(b.username, "hello from a browser");
  const text = await got;
  // A second client on b's IndexedDB store starts from the stored synckey and token.
  const stored = await new IndexedDbStore("b" + suffix).get("synckey");
  report({ ok: true, text, transport: b.transport, synckey: String(b.synckey), stored, offset: a["clockOffsetMs"] });
  await a.close(); await b.close();
} catch (e) {
  report({ ok: false, error: String(e && e.stack || e) });
}
</script>`;

let srv;
before(async () => {
  srv = await startServer();
});
after(async () => {
  await srv?.cleanup();
});

for (const transport of ["ws", "lp"]) {
  test(`the bundle chats in headless Chromium over ${transport}`, async (t) => {
    const chromium = findChromium();
    if (!chromium) {
      // The suite's rule (crates/ferry/tests/dashboard.rs): .ci/run sets
      // FERRY_REQUIRE_CHROMIUM=1 once it installed chromium, and then a missing one fails.
      if (process.env.FERRY_REQUIRE_CHROMIUM === "1") assert.fail("no Chromium found, but FERRY_REQUIRE_CHROMIUM=1");
      return t.skip("no Chromium installed (set CHROMIUM to one)");
    }
    let resolveResult;
    const result = new Promise((r) => (resolveResult = r));
    const http = createServer((req, res) => {
      if (req.url === "/ferry-sdk.js") {
        res.writeHead(200, { "Content-Type": "text/javascript" }).end(bundle);
      } else if (req.url === "/result") {
        let body = "";
        req.on("data", (d) => (body += d)).on("end", () => {
          res.writeHead(204).end();
          resolveResult(JSON.parse(body));
        });
      } else {
        res.writeHead(200, { "Content-Type": "text/html" }).end(page(srv.endpoint, srv.key, transport));
      }
    });
    await new Promise((r) => http.listen(0, "127.0.0.1", r));
    const profile = mkdtempSync(join(tmpdir(), "ferry-chromium-"));
    const url = `http://127.0.0.1:${http.address().port}/`;
    const proc = spawn(chromium, [
      "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
      `--user-data-dir=${profile}`, url,
    ], { stdio: "ignore", detached: true });
    try {
      const r = await Promise.race([
        result,
        new Promise((_, rej) => setTimeout(() => rej(new Error("no result from the page within 40 s")), 40000).unref()),
      ]);
      assert.equal(r.ok, true, r.error);
      assert.equal(r.text, "hello from a browser");
      assert.equal(r.transport, transport);
      assert.equal(r.stored, r.synckey, "the synckey is in IndexedDB");
      assert.ok(Math.abs(r.offset) < 5000, `the fast clock was corrected (${r.offset} ms)`);
    } finally {
      try {
        process.kill(-proc.pid, "SIGKILL"); // Chromium and the processes it started
      } catch {
        proc.kill("SIGKILL");
      }
      http.closeAllConnections();
      http.close();
      rmSync(profile, { recursive: true, force: true });
    }
  });
}
