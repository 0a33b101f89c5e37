// The SDK's command numbers, short-link paths and long-link and retry sets (src/cmd.ts)
// are the protocol's: read from docs/protocol.md's command table, which the Rust suite
// keeps equal to the server's table (crates/ferry-proto/src/cmd.rs).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { cmd } from "../dist/internal.js";

const doc = readFileSync(fileURLToPath(new URL("../../../docs/protocol.md", import.meta.url)), "utf8");

/** The table's rows by constant name: id, kind, long link, short-link path, idempotent. */
function table() {
  const m = doc.match(/<!-- command-table:start -->\n([\s\S]*?)<!-- command-table:end -->/);
  assert.ok(m, "the command table in docs/protocol.md");
  const rows = new Map();
  for (const line of m[1].split("\n")) {
    const cells = line.split("|").map((c) => c.trim());
    const id = cells[1]?.match(/^`0x([0-9A-F]{2})`$/);
    if (!id) continue;
    const path = cells[5].match(/^`POST \/v1\/([^`]+)`$/);
    rows.set(cells[2], {
      id: parseInt(id[1], 16),
      kind: cells[3],
      longLink: cells[4],
      path: path ? path[1] : undefined,
      idempotent: cells[10],
    });
  }
  assert.ok(rows.size > 40, `read ${rows.size} rows`);
  return rows;
}

test("every command the SDK names has the protocol's number and path", () => {
  const rows = table();
  const names = Object.keys(cmd).filter((k) => /^[A-Z_]+$/.test(k) && typeof cmd[k] === "number");
  for (const name of ["EDIT", "REACT", "HIDE", "REACTIONS", "PIN", "PINS", "SEARCH", "CONV"]) {
    assert.ok(names.includes(name), `cmd.ts names ${name}`);
  }
  for (const name of names) {
    const row = rows.get(name);
    assert.ok(row, `${name} is in the protocol's table`);
    assert.equal(cmd[name], row.id, `${name}'s number`);
    if (cmd.PATHS[cmd[name]] !== undefined) assert.equal(cmd.PATHS[cmd[name]], row.path, `${name}'s path`);
  }
  for (const [id, path] of Object.entries(cmd.PATHS)) {
    const row = [...rows.values()].find((r) => r.id === Number(id));
    assert.equal(row?.path, path, `the path of 0x${Number(id).toString(16)}`);
  }
});

test("the long link carries what the table says; only idempotent requests are retried", () => {
  const rows = [...table().values()];
  const byId = (id) => rows.find((r) => r.id === id);
  for (const id of cmd.ON_LINK) {
    assert.equal(byId(id)?.longLink, "yes", `0x${id.toString(16)} on a logged-in long link`);
  }
  for (const id of cmd.IDEMPOTENT) {
    assert.equal(byId(id)?.idempotent, "yes", `0x${id.toString(16)} may be sent twice`);
  }
  for (const id of [cmd.EDIT, cmd.REACT, cmd.HIDE, cmd.REACTIONS, cmd.PIN, cmd.PINS, cmd.SEARCH]) {
    assert.ok(cmd.ON_LINK.has(id) && cmd.IDEMPOTENT.has(id), `0x${id.toString(16)}`);
    assert.ok(cmd.PATHS[id], `0x${id.toString(16)} has a short-link path`);
  }
  // CONV rides the long link but is not sent twice after a lost link: a clear moves the
  // cut to the newest message at the time it is applied.
  assert.ok(cmd.ON_LINK.has(cmd.CONV) && !cmd.IDEMPOTENT.has(cmd.CONV) && cmd.PATHS[cmd.CONV] === "conv");
});
