// The protocol's test vectors (docs/protocol.md §1.4, §1.5, §3.1, Media), read from the
// document itself and reproduced byte-for-byte by the SDK's code.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { create, toBinary } from "@bufbuild/protobuf";
import { hex, unhex, encodeFrame, parseFrames, FrameReader, noise, sealed, secure, upload, LoginReqSchema }
  from "../dist/internal.js";

const doc = readFileSync(fileURLToPath(new URL("../../../docs/protocol.md", import.meta.url)), "utf8");

function vectors(name) {
  const m = doc.match(new RegExp(`<!-- vectors:${name}:start -->\\s*\`\`\`\\n([\\s\\S]*?)\`\`\``));
  assert.ok(m, `vectors ${name} in docs/protocol.md`);
  const v = {};
  let last;
  const lines = m[1].split("\n").filter((l) => l.trim());
  const indent = lines[0].match(/^\s*/)[0].length;
  for (const raw of lines) {
    const line = raw.slice(indent);
    if (/^\s/.test(line)) v[last] += line.trim().replace(/\s+/g, "");
    else {
      const [k, ...rest] = line.trim().split(/\s+/);
      v[k] = rest.join("");
      last = k;
    }
  }
  return v;
}
const b = (s) => unhex(s);

test("the LOGIN frame of the vectors is LoginReq{token: tok}", () => {
  const v = vectors("noise-ik");
  const login = encodeFrame(0x01, 1, toBinary(LoginReqSchema, create(LoginReqSchema, { token: "tok" })));
  assert.equal(hex(login), v.login_frame);
});

test("Noise IK: HELLO, its answer, the split keys and the first records", () => {
  const v = vectors("noise-ik");
  const s = noise.keyPair(b(v.client_static_private));
  const e = noise.keyPair(b(v.client_ephemeral_private));
  const server = noise.keyPair(b(v.server_static_private));
  assert.equal(hex(server.pub), v.server_static_public);
  const hs = new secure.HelloHandshake(server.pub, b(v.login_frame), { s, e });
  assert.equal(hex(hs.frame), v.hello);

  // The responder side reproduces the answer byte-for-byte too.
  const resp = new noise.IkResponder(server, noise.keyPair(b(v.server_ephemeral_private)));
  const [hello] = parseFrames(hs.frame);
  assert.equal(hex(resp.readMessage1(hello.body)), v.login_frame);
  const m2 = resp.writeMessage2(b(v.answer_payload));
  assert.equal(hex(encodeFrame(0x89, 0, m2.msg)), v.hello_answer);

  const [answer] = parseFrames(b(v.hello_answer));
  const r = hs.finish(answer.body);
  assert.equal(r.ticket, undefined);
  assert.equal(r.frames.length, 1);
  assert.equal(hex(encodeFrame(r.frames[0].cmd, r.frames[0].reqId, r.frames[0].body)), v.answer_payload);
  assert.equal(hex(m2.c2s), v.k_c2s);
  assert.equal(hex(m2.s2c), v.k_s2c);
  const [rec] = r.channel.seal(b(v.record_c2s_plain));
  assert.equal(hex(rec), v.record_c2s);
  const [s2c] = parseFrames(b(v.record_s2c));
  assert.equal(hex(r.channel.open(s2c.body)), v.record_s2c_plain);
  // A second open of the same record fails: the counter moved.
  assert.throws(() => r.channel.open(s2c.body));
});

test("a HELLO answer from another server key does not open", () => {
  const v = vectors("noise-ik");
  const other = noise.keyPair(b("99".repeat(32)));
  const hs = new secure.HelloHandshake(other.pub, b(v.login_frame));
  const [answer] = parseFrames(b(v.hello_answer));
  assert.throws(() => hs.finish(answer.body));
});

test("RESUME: key schedule, the frame and its answer", () => {
  const v = vectors("resume");
  const keys = secure.resumeKeys(b(v.secret), b(v.client_nonce), b(v.server_nonce));
  assert.equal(hex(keys.kLogin), v.k_login);
  assert.equal(hex(keys.kAnswer), v.k_answer);
  assert.equal(hex(keys.kC2s), v.k_c2s);
  assert.equal(hex(keys.kS2c), v.k_s2c);
  const t = { ticket: b(v.ticket), secret: b(v.secret), expiresMs: 0 };
  const hs = new secure.ResumeHandshake(t, b(v.login_frame), {
    sentMs: BigInt(v.sent_ms),
    clientNonce: b(v.client_nonce),
  });
  assert.equal(hex(hs.frame), v.resume);
  const [answer] = parseFrames(b(v.resume_answer));
  const r = hs.finish(answer.body);
  assert.equal(r.frames.length, 1);
  assert.equal(hex(encodeFrame(r.frames[0].cmd, r.frames[0].reqId, r.frames[0].body)), v.answer_payload);
  assert.equal(r.ticket, t, "no new ticket: the one used stays");
});

test("sealed short-link request and answer", () => {
  const v = vectors("sealed");
  const server = noise.keyPair(b(v.server_static_private));
  const e = noise.keyPair(b(v.request_ephemeral_private));
  const reply = noise.keyPair(b(v.reply_private));
  assert.equal(hex(reply.pub), v.reply_public);
  const { wire } = sealed.sealRequest(server.pub, v.token, b(v.body), BigInt(v.sent_ms), { e, reply });
  assert.equal(hex(wire), v.request);
  // The server's side opens it: the payload carries the reply key, sent_ms, lengths, token.
  const [hello, rec] = parseFrames(wire);
  const opened = noise.nRead(server, hello.body);
  assert.equal(hex(opened.payload.slice(0, 32)), v.reply_public);
  assert.equal(hex(new noise.RecordCipher(opened.key).open(rec.body)), v.body);

  const ans = sealed.sealAnswer(reply.pub, b(v.answer_body), noise.keyPair(b(v.answer_ephemeral_private)));
  assert.equal(hex(ans), v.answer);
  assert.equal(hex(sealed.openAnswer(reply, b(v.answer))), v.answer_body);
  // Another reply key does not open it; a cut answer does not either.
  assert.throws(() => sealed.openAnswer(noise.keyPair(), b(v.answer)));
  assert.throws(() => sealed.openAnswer(reply, b(v.answer).slice(0, -1)));
});

test("sealed bodies: empty is no record, 65 519 bytes one, 65 520 two", () => {
  const server = noise.keyPair();
  for (const [n, records] of [[0, 0], [65519, 1], [65520, 2]]) {
    const { wire } = sealed.sealRequest(server.pub, "", new Uint8Array(n), 1n);
    assert.equal(parseFrames(wire).length, 1 + records);
    assert.equal(wire.length, n + 0 + 101 + 24 * records, "sealed_request size formula");
    const reply = noise.keyPair();
    const ans = sealed.sealAnswer(reply.pub, new Uint8Array(n));
    assert.equal(ans.length, n + 60 + 24 * records, "sealed_answer size formula");
    assert.equal(sealed.openAnswer(reply, ans).length, n);
  }
});

test("upload chunk under the upload key", () => {
  const v = vectors("upload");
  const off = BigInt(v.offset);
  assert.equal(hex(upload.chunkNonce(off)), v.nonce);
  assert.equal(hex(upload.chunkAad(v.media_id, off)), v.aad);
  assert.equal(hex(upload.sealChunk(b(v.upload_key), v.media_id, off, b(v.chunk))), v.data);
});

test("frames split anywhere are read whole", () => {
  const frames = [encodeFrame(0x83, 7, new Uint8Array([1, 2, 3])), encodeFrame(0x40, 0), encodeFrame(0x82, 9)];
  const all = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
  let o = 0;
  for (const f of frames) { all.set(f, o); o += f.length; }
  for (let cut = 0; cut <= all.length; cut++) {
    const r = new FrameReader();
    const got = [...r.push(all.slice(0, cut)), ...r.push(all.slice(cut))];
    assert.deepEqual(got.map((f) => [f.cmd, f.reqId, hex(f.body)]), [[0x83, 7, "010203"], [0x40, 0, ""], [0x82, 9, ""]]);
  }
  assert.throws(() => parseFrames(all.slice(0, -1)));
});
