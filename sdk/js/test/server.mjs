// A real `ferry serve` for the SDK's tests: FERRY_BIN (the Rust test sets it), else
// target/debug/ferry of this repository. Each call starts its own server on a free port
// with its own data folder.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";
import { FerryClient, FerryError, MemoryStore } from "../dist/index.js";

export const FERRY_BIN =
  process.env.FERRY_BIN ?? fileURLToPath(new URL("../../../target/debug/ferry", import.meta.url));

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function startServer(extraConfig = "") {
  if (!existsSync(FERRY_BIN)) throw new Error(`no ferry binary at ${FERRY_BIN}: cargo build -p ferry, or set FERRY_BIN`);
  const dir = mkdtempSync(join(tmpdir(), "ferry-js-"));
  const config = join(dir, "ferry.toml");
  // Cheap password hashing: the tests sign in many users.
  writeFileSync(config, "[logic.password]\nmemory_kib = 64\niterations = 1\nparallelism = 1\n" + extraConfig);
  const port = await freePort();
  const endpoint = `127.0.0.1:${port}`;
  const srv = { endpoint, port, dir, proc: undefined, log: "" };
  srv.start = async () => {
    const proc = spawn(FERRY_BIN, ["serve", "--config", config, "--listen", endpoint, "--data", join(dir, "data")], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
    });
    proc.stdout.on("data", (d) => (srv.log += d));
    proc.stderr.on("data", (d) => (srv.log += d));
    srv.proc = proc;
    const deadline = Date.now() + 30000;
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`ferry serve exited ${proc.exitCode}:\n${srv.log}`);
      try {
        const r = await fetch(`http://${endpoint}/v1/server-key`);
        if (r.ok) {
          srv.key = (await r.text()).trim();
          return;
        }
      } catch {
        // not up yet
      }
      if (Date.now() > deadline) throw new Error(`ferry serve did not come up:\n${srv.log}`);
      await sleep(50);
    }
  };
  srv.stop = async () => {
    const p = srv.proc;
    if (!p || p.exitCode !== null) return;
    const exited = new Promise((r) => p.once("exit", r));
    p.kill("SIGKILL");
    await exited;
  };
  srv.cleanup = async () => {
    await srv.stop();
    rmSync(dir, { recursive: true, force: true });
  };
  await srv.start();
  return srv;
}

let n = 0;
export function uniqueName(prefix) {
  return `${prefix}${process.pid}_${Date.now() % 100000}_${n++}`;
}

export const PASSWORD = "correct horse battery";

/** A client of `srv` (its key pinned), registered and signed in as a fresh user. */
export async function user(srv, prefix, opts = {}) {
  const c = await FerryClient.create({
    servers: [srv.endpoint],
    serverKey: srv.key,
    store: new MemoryStore(),
    WebSocket,
    requestTimeoutMs: 5000,
    ...opts,
  });
  const name = uniqueName(prefix);
  await c.register(name, PASSWORD);
  await c.signIn(name, PASSWORD);
  return c;
}

/** Waits until `pred()` holds (polling), or fails after `ms`. */
export async function until(pred, ms = 10000, what = "the condition") {
  const deadline = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** Makes `a` and `b` friends. */
export async function befriend(a, b) {
  await a.requestFriend(b.username, "hi");
  await b.acceptFriend(a.username);
}

export { sleep };

/** Every event of the kinds asked for, as they come. */
export function record(client, kinds) {
  const got = Object.fromEntries(kinds.map((k) => [k, []]));
  for (const k of kinds) client.on(k, (e) => got[k].push(e));
  return got;
}

/** Another device of `c`'s user on `srv` (its own store: a new device id), signed in. */
export async function secondDevice(srv, c, opts = {}) {
  const d = await FerryClient.create({
    servers: [srv.endpoint], serverKey: srv.key, store: new MemoryStore(), WebSocket, requestTimeoutMs: 5000, ...opts,
  });
  await d.signIn(c.username, PASSWORD);
  return d;
}

/** Predicates for `assert.rejects`: a server refusal with `code`, an SDK-side check. */
export const serverError = (code) => (e) => e instanceof FerryError && e.kind === "server" && e.codeName === code;
export const invalidArgument = (e) => e instanceof FerryError && e.kind === "invalid-argument";

/** Whether `srv` upgrades GET /v1/ws (protocol §7.1a); fails fast instead of letting the
 *  SDK retry forever against a server without WebSocket. */
export function assertWebSocket(srv) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${srv.endpoint}/v1/ws`);
    ws.on("open", () => {
      ws.close();
      resolve();
    });
    ws.on("error", (e) => reject(new Error(`the server does not upgrade /v1/ws: ${e.message}`)));
  });
}
