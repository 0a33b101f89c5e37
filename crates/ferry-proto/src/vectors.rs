//! docs/protocol.md's test vectors, recomputed: every block between
//! `<!-- vectors:NAME:start -->` and `<!-- vectors:NAME:end -->` is read from the document
//! and each output in it is computed again from its inputs with this crate's code, so the
//! document cannot drift from what the code sends. (`tests/vectors/check.py` recomputes
//! the same blocks with other implementations: Python's `noiseprotocol` and
//! `cryptography`.)
//!
//! A block is a code block of `name value` lines; a line indented deeper than the
//! block's fence goes on the value above it. Values are hex (spaces inside are ignored), decimal numbers or,
//! for `token` and `media_id`, text.

use bytes::BytesMut;

use crate::frame::Frame;
use crate::resume::{self, ServerResume, TicketBody, TicketKey};
use crate::secure::{self, parse_handshake, Channel, StaticKey};
use crate::{sealed, upload};

/// docs/protocol.md, as it is in the tree.
pub(crate) fn protocol_md() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/protocol.md"
    ))
    .expect("docs/protocol.md is readable")
}

/// One block's `name value` lines, in order.
pub(crate) struct Block {
    name: String,
    fields: Vec<(String, String)>,
    /// Outputs that differ from the document: (name, computed hex).
    wrong: Vec<(String, String)>,
}

impl Block {
    pub(crate) fn read(doc: &str, name: &str) -> Block {
        let start = format!("<!-- vectors:{name}:start -->");
        let end = format!("<!-- vectors:{name}:end -->");
        let from = doc
            .find(&start)
            .unwrap_or_else(|| panic!("{start} in docs/protocol.md"))
            + start.len();
        let to = doc[from..]
            .find(&end)
            .unwrap_or_else(|| panic!("{end} in docs/protocol.md"))
            + from;
        let mut fields: Vec<(String, String)> = Vec::new();
        // The block may be indented (inside a list item): by its fence's indentation.
        let mut indent = 0;
        for line in doc[from..to].lines() {
            if line.trim_start().starts_with("```") {
                indent = line.len() - line.trim_start().len();
                continue;
            }
            if line.trim().is_empty() {
                continue;
            }
            let line = &line[indent.min(line.len() - line.trim_start().len())..];
            if line.starts_with(' ') {
                let (_, value) = fields
                    .last_mut()
                    .unwrap_or_else(|| panic!("{name}: a continuation line first"));
                value.push(' ');
                value.push_str(line.trim());
                continue;
            }
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            assert!(fields.iter().all(|(k, _)| k != key), "{name}: {key} twice");
            fields.push((key.to_owned(), value.trim().to_owned()));
        }
        Block {
            name: name.to_owned(),
            fields,
            wrong: Vec::new(),
        }
    }

    pub(crate) fn text(&self, key: &str) -> &str {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{}: no {key}", self.name))
    }

    pub(crate) fn hex(&self, key: &str) -> Vec<u8> {
        let v: String = self.text(key).split_whitespace().collect();
        hex::decode(&v).unwrap_or_else(|e| panic!("{}: {key} is not hex: {e}", self.name))
    }

    pub(crate) fn array<const N: usize>(&self, key: &str) -> [u8; N] {
        self.hex(key)
            .try_into()
            .unwrap_or_else(|_| panic!("{}: {key} is not {N} bytes", self.name))
    }

    pub(crate) fn num(&self, key: &str) -> u64 {
        self.text(key)
            .replace(' ', "")
            .parse()
            .unwrap_or_else(|e| panic!("{}: {key} is not a number: {e}", self.name))
    }

    /// Notes an output: wrong when the document says other bytes.
    pub(crate) fn check(&mut self, key: &str, computed: &[u8]) {
        if self.hex(key) != computed {
            self.wrong.push((key.to_owned(), hex::encode(computed)));
        }
    }

    /// Fails with every output that differs, as the document should read.
    pub(crate) fn done(self) {
        let list: Vec<String> = self.wrong.iter().map(|(k, v)| format!("{k} {v}")).collect();
        assert!(
            list.is_empty(),
            "docs/protocol.md vectors:{} differ from the code; computed:\n{}",
            self.name,
            list.join("\n")
        );
    }
}

fn frame(wire: &[u8]) -> Frame {
    let mut b = BytesMut::from(wire);
    let f = parse_handshake(&mut b).unwrap().expect("a whole frame");
    assert!(b.is_empty(), "one frame");
    f
}

/// Seals `plain` as the next record of `ch`: the record's bytes.
fn record(ch: &mut Channel, plain: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    ch.seal(plain, &mut out).unwrap();
    out.to_vec()
}

fn open(ch: &mut Channel, wire: &[u8]) -> Vec<u8> {
    let mut w = BytesMut::from(wire);
    let mut plain = BytesMut::new();
    ch.open(&mut w, &mut plain).unwrap();
    plain.to_vec()
}

/// The Noise IK login: the HELLO, its answer, the split and a first record each way.
#[test]
fn noise_ik_login_vectors() {
    let doc = protocol_md();
    let mut b = Block::read(&doc, "noise-ik");
    let client_static: [u8; 32] = b.array("client_static_private");
    let client_e: [u8; 32] = b.array("client_ephemeral_private");
    let server = StaticKey::from_private(&b.hex("server_static_private")).unwrap();
    let server_e: [u8; 32] = b.array("server_ephemeral_private");
    b.check("server_static_public", &server.public);
    let login = b.hex("login_frame");
    let answer_payload = b.hex("answer_payload");

    let mut hello = BytesMut::new();
    let hs = secure::hello_with(
        &client_static,
        Some(&client_e),
        &server.public,
        &login,
        &mut hello,
    )
    .unwrap();
    b.check("hello", &hello);
    let (shs, got) = secure::accept_with(&server, Some(&server_e), &frame(&hello)).unwrap();
    assert_eq!(got, login);
    let mut answer = BytesMut::new();
    let mut s = shs.respond(&answer_payload, &mut answer).unwrap();
    b.check("hello_answer", &answer);
    let (mut c, got) = hs.finish(&frame(&answer)).unwrap();
    assert_eq!(got, answer_payload);

    // The split, straight from snow: the first key is the initiator's (client → server).
    let (k1, k2) = {
        fn build<'a>(private: &'a [u8; 32], e: &'a [u8; 32]) -> snow::Builder<'a> {
            snow::Builder::new(secure::NOISE.parse().unwrap())
                .local_private_key(private)
                .unwrap()
                .fixed_ephemeral_key_for_testing_only(e)
        }
        let mut i = build(&client_static, &client_e)
            .remote_public_key(&server.public)
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut r = build(&server.private, &server_e).build_responder().unwrap();
        let (mut m, mut p) = (vec![0u8; 1024], vec![0u8; 1024]);
        let n = i.write_message(&login, &mut m).unwrap();
        r.read_message(&m[..n], &mut p).unwrap();
        let n = r.write_message(&answer_payload, &mut m).unwrap();
        i.read_message(&m[..n], &mut p).unwrap();
        i.dangerously_get_raw_split()
    };
    b.check("k_c2s", &k1);
    b.check("k_s2c", &k2);

    // The first record each way, and the split keys (checked against the document above)
    // seal the same bytes in the documented directions.
    let (c2s_plain, s2c_plain) = (b.hex("record_c2s_plain"), b.hex("record_s2c_plain"));
    let c2s = record(&mut c, &c2s_plain);
    b.check("record_c2s", &c2s);
    let s2c = record(&mut s, &s2c_plain);
    b.check("record_s2c", &s2c);
    let mut by_keys = Channel::from_keys(&k1, &k2);
    assert_eq!(record(&mut by_keys, &c2s_plain), c2s);
    assert_eq!(open(&mut by_keys, &s2c), s2c_plain);
    assert_eq!(open(&mut s, &c2s), c2s_plain);
    assert_eq!(open(&mut c, &s2c), s2c_plain);
    b.done();
}

/// Protocol 2's compact records and frames (§1.6): the frames of §1.1 in, compact
/// frames inside compact records out, under §1.4's split keys; and back.
#[test]
fn compact_vectors() {
    let doc = protocol_md();
    let mut b = Block::read(&doc, "compact");
    let (k_c2s, k_s2c): ([u8; 32], [u8; 32]) = (b.array("k_c2s"), b.array("k_s2c"));
    // The keys are §1.4's.
    let ik = Block::read(&doc, "noise-ik");
    assert_eq!(ik.hex("k_c2s"), k_c2s);
    assert_eq!(ik.hex("k_s2c"), k_s2c);
    let mut client = Channel::from_keys(&k_c2s, &k_s2c);
    let mut server = Channel::from_keys(&k_s2c, &k_c2s);
    client.set_compact();
    server.set_compact();
    for dir in ["c2s", "s2c"] {
        let (tx, rx) = if dir == "c2s" {
            (&mut client, &mut server)
        } else {
            (&mut server, &mut client)
        };
        let frames = b.hex(&format!("{dir}_frames"));
        let mut compact = Vec::new();
        crate::compact::Compact::default().outgoing(&frames, &mut compact);
        b.check(&format!("{dir}_compact"), &compact);
        let wire = record(tx, &frames);
        b.check(&format!("record_{dir}"), &wire);
        assert_eq!(open(rx, &wire), frames);
    }
    b.done();
}

/// A sealed short-link request and its answer.
#[test]
fn sealed_request_vectors() {
    let doc = protocol_md();
    let mut b = Block::read(&doc, "sealed");
    let server = StaticKey::from_private(&b.hex("server_static_private")).unwrap();
    let reply = StaticKey::from_private(&b.hex("reply_private")).unwrap();
    b.check("reply_public", &reply.public);
    let body = b.hex("body");
    let (request, reply_key) = sealed::request_with(
        &server.public,
        Some(&b.array("request_ephemeral_private")),
        &reply,
        b.text("token"),
        &body,
        b.num("sent_ms"),
    )
    .unwrap();
    b.check("request", &request);
    let opened = sealed::open_request(&server, &request).unwrap();
    assert_eq!(opened.body, body);
    assert_eq!(opened.token, b.text("token"));
    assert_eq!(opened.sent_ms, b.num("sent_ms"));
    assert_eq!(opened.reply_to, reply.public);
    assert_eq!(&opened.id[..], &request[8..40]);

    let answer_body = b.hex("answer_body");
    let answer = sealed::response_with(
        &opened.reply_to,
        Some(&b.array("answer_ephemeral_private")),
        &answer_body,
    )
    .unwrap();
    b.check("answer", &answer);
    assert_eq!(
        sealed::open_response(&reply_key, &answer).unwrap(),
        answer_body
    );
    b.done();
}

/// A media chunk under its upload key.
#[test]
fn upload_chunk_vectors() {
    let doc = protocol_md();
    let mut b = Block::read(&doc, "upload");
    let key: [u8; 32] = b.array("upload_key");
    let (id, offset, chunk) = (
        b.text("media_id").to_owned(),
        b.num("offset"),
        b.hex("chunk"),
    );
    b.check("nonce", &upload::nonce(offset));
    b.check("aad", &upload::aad(&id, offset));
    let data = upload::seal_chunk(&key, &id, offset, &chunk).unwrap();
    b.check("data", &data);
    assert_eq!(upload::open_chunk(&key, &id, offset, &data).unwrap(), chunk);
    b.done();
}

/// Session resumption: the key schedule, a RESUME frame and its answer, and the ticket
/// key and a ticket's secret.
#[test]
fn resumption_vectors() {
    let doc = protocol_md();
    let mut b = Block::read(&doc, "resume");
    let secret: [u8; 32] = b.array("secret");
    let (cn, sn): ([u8; 16], [u8; 16]) = (b.array("client_nonce"), b.array("server_nonce"));
    b.check("k_login", &resume::login_key(&secret, &cn));
    let keys = resume::session_keys(&secret, &cn, &sn);
    b.check("k_answer", &keys.answer);
    b.check("k_c2s", &keys.c2s);
    b.check("k_s2c", &keys.s2c);

    let (ticket, login) = (b.hex("ticket"), b.hex("login_frame"));
    let mut hello = BytesMut::new();
    let client =
        resume::resume_with(&ticket, &secret, &login, b.num("sent_ms"), cn, &mut hello).unwrap();
    b.check("resume", &hello);
    let server = ServerResume {
        ticket: TicketBody {
            user_id: 1,
            device_id: "d".into(),
            nonce: [0; 24],
            secret,
            expires_ms: u64::MAX,
            net: 0,
        },
        sent_ms: b.num("sent_ms"),
        client_nonce: cn,
    };
    let answer_payload = b.hex("answer_payload");
    let mut answer = BytesMut::new();
    let mut s = server
        .respond_with(sn, &answer_payload, &mut answer)
        .unwrap();
    b.check("resume_answer", &answer);
    let (mut c, got) = client.finish(&frame(&answer)).unwrap();
    assert_eq!(got, answer_payload);
    let mut by_keys = Channel::from_keys(&keys.c2s, &keys.s2c);
    let plain = b"records as in 1.4";
    let rec = record(&mut c, plain);
    assert_eq!(record(&mut by_keys, plain), rec);
    assert_eq!(open(&mut s, &rec), plain);

    // The ticket key, and a ticket's secret (the servers' side; clients never need it).
    let tk = resume::ticket_key(
        &b.array("ticket_static_private"),
        b.num("ticket_epoch") as u32,
    );
    b.check("ticket_key", &tk);
    let derived = TicketKey::derive(
        &b.array("ticket_static_private"),
        b.num("ticket_epoch") as u32,
    );
    b.check(
        "ticket_secret",
        &derived.secret_for(&b.array("ticket_nonce")),
    );
    b.done();
}
