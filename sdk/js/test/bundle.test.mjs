// The committed web/chat/ferry-sdk.js is exactly what `npm run bundle` makes from these
// sources, and it loads as an ES module exporting the API.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const committed = fileURLToPath(new URL("../../../web/chat/ferry-sdk.js", import.meta.url));

test("the committed bundle equals a fresh build", () => {
  const dir = mkdtempSync(join(tmpdir(), "ferry-bundle-"));
  try {
    const fresh = join(dir, "ferry-sdk.js");
    execFileSync(process.execPath, [fileURLToPath(new URL("../scripts/bundle.mjs", import.meta.url)), fresh]);
    const a = readFileSync(fresh);
    const b = readFileSync(committed);
    assert.ok(a.equals(b), "web/chat/ferry-sdk.js is stale: run `npm run bundle` in sdk/js and commit it");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the bundle exports the API", async () => {
  const m = await import(pathToFileURL(committed).href);
  for (const name of ["FerryClient", "FerryError", "MemoryStore", "IndexedDbStore", "MessageSchema", "ErrorCode"]) {
    assert.ok(m[name], `exports ${name}`);
  }
  const c = await m.FerryClient.create({ servers: ["127.0.0.1:1"], store: new m.MemoryStore() });
  assert.equal(c.state, "offline");
  assert.equal(c.signedIn, false);
  assert.equal(c.synckey, 0n);
  const e = new m.FerryError("server", "x", { code: m.ErrorCode.RATE_LIMITED });
  assert.equal(e.codeName, "RATE_LIMITED");
});
