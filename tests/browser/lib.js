// Helpers for the chat's browser tests: a real `ferry serve` (FERRY_BIN) on a free
// loopback port with a temp data dir, Debian's chromium through playwright-core, the
// `ferry` CLI as a second kind of client, and a proxy that refuses WebSocket upgrades.

import { spawn, execFile } from "node:child_process";
import { mkdtempSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const PASSWORD = "browser-test-pw";

export function ferryBin() {
  const bin = process.env.FERRY_BIN;
  if (!bin) throw new Error("FERRY_BIN must name a built `ferry` binary (cargo build -p ferry)");
  return bin;
}

/** Starts `ferry serve` on 127.0.0.1:0; resolves once it prints the port it listens on. */
export async function startServer() {
  const data = mkdtempSync(path.join(tmpdir(), "ferry-chat-test-"));
  const child = spawn(ferryBin(), ["serve", "--listen", "127.0.0.1:0", "--data", data], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, FERRY_LOG: process.env.FERRY_LOG || "warn" },
  });
  let out = "";
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`ferry serve did not start in 20 s:\n${out}`)), 20000);
    const onData = (chunk) => {
      out += chunk;
      const m = out.match(/ferry listening on (\S+)/);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", (c) => { out += c; });
    child.on("exit", (code) => { clearTimeout(timer); reject(new Error(`ferry serve exited (${code}):\n${out}`)); });
  });
  child.stderr.on("data", (c) => { if (process.env.FERRY_TEST_VERBOSE) process.stderr.write(c); });
  return {
    addr,
    url: `http://${addr}/chat`,
    printed: out,
    async stop() {
      if (child.exitCode === null) {
        child.kill("SIGTERM");
        await new Promise((r) => { child.once("exit", r); setTimeout(r, 5000); });
        if (child.exitCode === null) child.kill("SIGKILL");
      }
      rmSync(data, { recursive: true, force: true });
    },
  };
}

export function chromiumPath() {
  return process.env.FERRY_CHROMIUM || "/usr/bin/chromium";
}

export async function launchBrowser() {
  return chromium.launch({
    executablePath: chromiumPath(),
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-background-networking"],
  });
}

/** A page with the chat open; console errors are collected in `page.errors`. */
export async function openChat(browser, url, { width = 1280, height = 800 } = {}) {
  const context = await browser.newContext({ viewport: { width, height } });
  const page = await context.newPage();
  page.errors = [];
  page.on("pageerror", (e) => page.errors.push(String(e)));
  page.on("console", (m) => {
    if (m.type() === "error") page.errors.push(m.text());
    if (process.env.FERRY_TEST_VERBOSE) console.log(`[page ${m.type()}] ${m.text()}`);
  });
  await page.goto(url);
  return { context, page };
}

/** Signs up (or in) through the form and waits for the link to be up. */
export async function enter(page, user, { signUp = true } = {}) {
  await page.waitForSelector("#auth-form", { state: "visible" });
  await page.fill("#auth-user", user);
  await page.fill("#auth-pass", PASSWORD);
  await page.click(signUp ? "#auth-signup" : "#auth-signin");
  await page.waitForSelector('body[data-state="online"]', { timeout: 20000 }).catch(async (e) => {
    const err = await page.textContent("#auth-error").catch(() => "");
    throw new Error(`${user} never got online (auth error: ${err || "none"}; page errors: ${page.errors.join(" | ")}): ${e.message}`);
  });
}

export async function showTab(page, which) {
  await page.click(`#tab-${which}`);
}

/** Sends text in the open conversation with the keyboard: type, then Enter. */
export async function say(page, text) {
  await page.focus("#composer-input");
  await page.keyboard.type(text);
  await page.keyboard.press("Enter");
}

export async function openConvWith(page, key) {
  await showTab(page, "chats");
  await page.click(`#conv-list [data-key="${key}"]`);
  await page.waitForSelector(`body[data-open="${key}"]`);
}

/** The texts of the open conversation's messages, in order. */
export async function texts(page) {
  return page.$$eval("#messages li.msg .body", (xs) => xs.map((x) => x.textContent));
}

/** Runs the `ferry` CLI; resolves to its stdout. */
export function cli(args, { timeoutMs = 20000 } = {}) {
  return new Promise((resolve, reject) => {
    execFile(ferryBin(), args, { timeout: timeoutMs }, (err, stdout, stderr) => {
      if (err) reject(new Error(`ferry ${args.join(" ")} failed: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

/** A CLI user: its own state dir (device id, token, synckey, the trusted server key). */
export function cliUser(server, user) {
  // Two devices: one for the commands, one for `listen` (a device has one link at a time:
  // a second login of the same device replaces the first).
  const state = mkdtempSync(path.join(tmpdir(), `ferry-cli-${user}-`));
  const listenState = mkdtempSync(path.join(tmpdir(), `ferry-cli-${user}-listen-`));
  const base = ["--server", server.addr, "--user", user, "--password", PASSWORD];
  const common = [...base, "--state", state];
  return {
    user,
    register: () => cli(["register", "--server", server.addr, "--user", user, "--password", PASSWORD]),
    run: (...args) => cli([...args, ...common]),
    /** `ferry listen` in the background: JSON lines as they come, until stop(). */
    listen(seconds = 60) {
      const child = spawn(ferryBin(), ["listen", ...base, "--state", listenState, "--timeout", String(seconds)], {
        stdio: ["ignore", "pipe", "pipe"],
      });
      const lines = [];
      let buf = "", err = "";
      const waiters = [];
      child.stdout.on("data", (c) => {
        buf += c;
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          if (!line.trim()) continue;
          try { lines.push(JSON.parse(line)); } catch { lines.push({ raw: line }); }
          for (const w of [...waiters]) w();
        }
      });
      child.stderr.on("data", (c) => { err += c; });
      return {
        lines,
        stderr: () => err,
        until(pred, ms = 20000) {
          return new Promise((resolve, reject) => {
            const check = () => {
              const hit = lines.find(pred);
              if (hit) { clearTimeout(t); waiters.splice(waiters.indexOf(check), 1); resolve(hit); }
            };
            const t = setTimeout(() => {
              waiters.splice(waiters.indexOf(check), 1);
              reject(new Error(`ferry listen (${user}) never printed the line; got ${JSON.stringify(lines)}; stderr: ${err}`));
            }, ms);
            waiters.push(check);
            check();
          });
        },
        stop() { child.kill("SIGTERM"); },
      };
    },
    cleanup: () => {
      rmSync(state, { recursive: true, force: true });
      rmSync(listenState, { recursive: true, force: true });
    },
  };
}

/**
 * A proxy in front of the server that passes HTTP (long-poll streams included) but
 * refuses every WebSocket upgrade with 403, like a middlebox that does not know them.
 * `cut()` drops every connection and refuses new ones (the network is gone) until
 * `restore()`.
 */
export async function wsBlockingProxy(target) {
  const [host, port] = [target.slice(0, target.lastIndexOf(":")), Number(target.slice(target.lastIndexOf(":") + 1))];
  const stats = { upgradesRefused: 0, requests: 0 };
  const sockets = new Set();
  let down = false;
  const server = http.createServer((req, res) => {
    if (down) { req.socket.destroy(); return; }
    stats.requests += 1;
    const up = http.request({ host, port, method: req.method, path: req.url, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode, r.rawHeaders);
      r.pipe(res);
    });
    up.on("error", () => { if (!res.headersSent) res.writeHead(502); res.end(); });
    req.pipe(up);
    res.on("close", () => { if (!res.writableFinished) up.destroy(); });
  });
  server.on("connection", (s) => {
    if (down) { s.destroy(); return; }
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  server.on("upgrade", (req, socket) => {
    stats.upgradesRefused += 1;
    socket.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const { port: p } = server.address();
  return {
    addr: `127.0.0.1:${p}`,
    url: `http://127.0.0.1:${p}/chat`,
    stats,
    cut() { down = true; for (const s of sockets) s.destroy(); },
    restore() { down = false; },
    close: () => new Promise((r) => { for (const s of sockets) s.destroy(); server.close(r); }),
  };
}

/** Whether the server takes a WebSocket long link (GET /v1/ws answers 101). */
export function serverSpeaksWs(addr) {
  const [host, port] = [addr.slice(0, addr.lastIndexOf(":")), Number(addr.slice(addr.lastIndexOf(":") + 1))];
  return new Promise((resolve) => {
    const req = http.request({ host, port, path: "/v1/ws", headers: {
      Connection: "Upgrade", Upgrade: "websocket", "Sec-WebSocket-Version": "13",
      "Sec-WebSocket-Key": "ZmVycnktY2hhdC10ZXN0IQ==",
    } });
    req.on("upgrade", (_res, socket) => { socket.destroy(); resolve(true); });
    req.on("response", (res) => { res.resume(); resolve(false); });
    req.on("error", () => resolve(false));
    req.end();
  });
}

/** Where screenshots go: FERRY_CHAT_SCREENSHOT_DIR, else target/browser/ of the repo. */
export function screenshotDir() {
  const dir = process.env.FERRY_CHAT_SCREENSHOT_DIR || path.join(REPO, "target", "browser");
  mkdirSync(dir, { recursive: true });
  return dir;
}
