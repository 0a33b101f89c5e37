//! docs/protocol.md's size table, against measured bytes: the test reads every formula
//! between `<!-- sizes:start -->` and `<!-- sizes:end -->` (§1.5, *Sizes*) and checks it
//! against what a client and a real server (refusing plaintext, as in production)
//! exchange — the HELLO and its answer, records both ways, the TICKET frame, a RESUME and
//! its answer, sealed short-link requests and answers (empty, one record, two records),
//! the "hello" SEND — so the document cannot drift from the wire. Also
//! `GET /v1/server-key`'s exact answer.

use std::collections::HashMap;
use std::time::Duration;

use bytes::BytesMut;
use ferry_client::ShortLink;
use ferry_proto::frame::encode_msg;
use ferry_proto::v1;
use ferry_proto::{cmd, resume, sealed, secure, Frame, ProtoMessage, HEADER_LEN};
use ferry_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The size table: name → formula.
struct Sizes(HashMap<String, String>);

impl Sizes {
    fn read() -> Sizes {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/protocol.md"
        ))
        .unwrap();
        let (start, end) = ("<!-- sizes:start -->", "<!-- sizes:end -->");
        let from = doc.find(start).expect("the size table's start marker") + start.len();
        let to = doc[from..].find(end).expect("the size table's end marker") + from;
        let mut rows = HashMap::new();
        for line in doc[from..to].lines().filter(|l| l.starts_with("| `")) {
            // | `name` | `formula` | what |  (the first two cells hold no `|`)
            let cells: Vec<&str> = line.trim_matches('|').split('|').collect();
            let cell = |i: usize| cells[i].trim().trim_matches('`').to_owned();
            assert!(rows.insert(cell(0), cell(1)).is_none(), "{line}");
        }
        Sizes(rows)
    }

    /// The bytes `name`'s formula gives with the lengths `vars` (and `records`, from its
    /// own row, when `body` is given).
    fn eval(&self, name: &str, vars: &[(&str, usize)]) -> usize {
        let formula = self
            .0
            .get(name)
            .unwrap_or_else(|| panic!("docs/protocol.md's size table has no `{name}`"));
        let mut vars: HashMap<&str, usize> = vars.iter().copied().collect();
        if name != "records" {
            if let Some(body) = vars.get("body").copied() {
                vars.insert("records", self.eval("records", &[("body", body)]));
            }
        }
        let var = |v: &str| -> usize {
            *vars
                .get(v.trim())
                .unwrap_or_else(|| panic!("`{name}` = `{formula}`: what is `{v}`?"))
        };
        let num = |n: &str| -> usize {
            n.trim()
                .parse()
                .unwrap_or_else(|_| panic!("`{name}` = `{formula}`: `{n}` is not a number"))
        };
        formula
            .split('+')
            .map(|term| {
                let term = term.trim();
                if let Some(inner) = term.strip_prefix("ceil(").and_then(|t| t.strip_suffix(')')) {
                    let (a, b) = inner.split_once('/').expect("ceil(a / b)");
                    var(a).div_ceil(num(b))
                } else if let Some((a, b)) = term.split_once('×') {
                    num(a) * var(b)
                } else if term.starts_with(|c: char| c.is_ascii_digit()) {
                    num(term)
                } else {
                    var(term)
                }
            })
            .sum()
    }
}

/// Reads one whole handshake frame off `link`: the frame and its length on the wire.
async fn handshake_answer(link: &mut SecureRaw) -> (Frame, usize) {
    loop {
        if let Some(f) = secure::parse_handshake(&mut link.wire).unwrap() {
            let len = HEADER_LEN + f.body.len();
            return (f, len);
        }
        assert!(link.read_more().await, "no handshake answer");
    }
}

/// The next record the server sent: its length on the wire and its plain bytes (which
/// go on to the link's frame stream).
async fn next_record(link: &mut SecureRaw) -> (usize, usize) {
    loop {
        if link.wire.len() >= HEADER_LEN {
            if let Some(len) = Frame::check(&link.wire, 1 << 20).unwrap() {
                let mut one = link.wire.split_to(len);
                let before = link.plain.len();
                link.channel
                    .as_mut()
                    .unwrap()
                    .open(&mut one, &mut link.plain)
                    .unwrap();
                return (len, link.plain.len() - before);
            }
        }
        assert!(link.read_more().await, "the link closed");
    }
}

/// One sealed short-link call by hand: checks the documented sizes of the request and
/// of its answer; the status and the opened answer.
async fn sealed_call(
    sizes: &Sizes,
    ts: &TestServer,
    path: &str,
    token: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let (wire, reply) = sealed::seal_request(&key_of(ts), token, body, now_ms()).unwrap();
    assert_eq!(
        wire.len(),
        sizes.eval(
            "sealed_request",
            &[("body", body.len()), ("token", token.len())]
        ),
        "{path}: a sealed request of {} bytes",
        body.len()
    );
    let a = http_post(
        &ts.addr(),
        &format!("/v1/{path}"),
        &format!("Content-Type: {}\r\n", sealed::CONTENT_TYPE),
        &wire,
    )
    .await;
    assert_eq!(
        a.header("content-type").as_deref(),
        Some(sealed::CONTENT_TYPE),
        "{path}: {} {}",
        a.status,
        String::from_utf8_lossy(&a.body)
    );
    let plain = sealed::open_response(&reply, &a.body).unwrap();
    assert_eq!(
        a.body.len(),
        sizes.eval("sealed_answer", &[("body", plain.len())]),
        "{path}: a sealed answer of {} bytes",
        plain.len()
    );
    (a.status, plain)
}

#[tokio::test]
async fn every_documented_size_is_what_goes_on_the_wire() {
    let sizes = Sizes::read();
    let ts = strict_server().await;
    register_sealed(&ts, &["alice", "bob"]).await;
    let key = key_of(&ts);
    let short = ShortLink::sealed(&ts.addr(), Some(key));
    let token = short.auth("alice", PASSWORD, "dev-a").await.unwrap().token;

    // A full handshake by hand: the HELLO, its answer, the TICKET frame inside.
    let mut a = SecureRaw::connect(&ts.addr()).await;
    let login = login_frame(&token);
    let mut hello = BytesMut::new();
    let hs = secure::client_hello(&key, &login, &mut hello).unwrap();
    a.write(&hello).await;
    assert_eq!(a.bytes_out, sizes.eval("hello", &[("login", login.len())]));
    let (f, answer_len) = handshake_answer(&mut a).await;
    assert_eq!(f.cmd, secure::HELLO | 0x80, "the server took the HELLO");
    let (channel, mut payload) = hs.finish(&f).unwrap();
    assert_eq!(
        answer_len,
        sizes.eval("hello_answer", &[("answer", payload.len())])
    );
    let before = payload.len();
    let ticket = resume::take_ticket(&mut payload)
        .unwrap()
        .expect("a full handshake's answer carries a ticket");
    assert_eq!(
        before - payload.len(),
        sizes.eval("ticket_frame", &[("resumption", ticket.encoded_len())])
    );
    a.channel = Some(channel);
    a.plain.extend_from_slice(&payload);
    let answer = Frame::parse(&mut a.plain, 1 << 20).unwrap().unwrap();
    assert_eq!(answer.cmd, cmd::response(cmd::LOGIN));

    let mut b = SecureRaw::connect(&ts.addr()).await;
    let bob = short.auth("bob", PASSWORD, "dev-b").await.unwrap().token;
    assert_eq!(
        b.login(&key, &bob).await.unwrap().cmd,
        cmd::response(cmd::LOGIN)
    );

    // The "hello" SEND of §1.1, plain and as a record; and the server's records back.
    let msg = v1::SendMsg {
        client_msg_id: u64::MAX,
        to: "bob".into(),
        text: "hello".into(),
        ..Default::default()
    };
    let mut plain = BytesMut::new();
    encode_msg(cmd::SEND, 2, &msg, &mut plain);
    assert_eq!(plain.len(), sizes.eval("hello_send", &[]));
    let out0 = a.bytes_out;
    a.send(cmd::SEND, 2, &msg).await;
    assert_eq!(a.bytes_out - out0, sizes.eval("hello_send_record", &[]));
    assert_eq!(
        a.bytes_out - out0,
        sizes.eval("record", &[("plain", plain.len())])
    );
    let mut acked = false;
    for _ in 0..20 {
        let (wire, plain) = next_record(&mut a).await;
        assert_eq!(wire, sizes.eval("record", &[("plain", plain)]));
        while let Some(f) = Frame::parse(&mut a.plain, 1 << 20).unwrap() {
            acked |= f.cmd == cmd::response(cmd::SEND) && f.req_id == 2;
        }
        if acked {
            break;
        }
    }
    assert!(acked, "the hello was acknowledged");
    let (wire, plain) = next_record(&mut b).await;
    assert_eq!(wire, sizes.eval("record", &[("plain", plain)]));

    // Protocol 2 (§1.6): alice on a second device, speaking 2, sends the same "hello"
    // with a 48-bit client_msg_id as the SDK does: 28 bytes plain, one 40-byte compact
    // record. bob, on protocol 1, gets it in a record of §1.4 as before.
    let alice2 = short.auth("alice", PASSWORD, "dev-a2").await.unwrap().token;
    let mut c = SecureRaw::connect(&ts.addr()).await;
    let answer = c.login_speaking(&key, &alice2, 2).await.unwrap();
    assert_eq!(answer.cmd, cmd::response(cmd::LOGIN));
    assert_eq!(v1::LoginResp::decode(answer.body).unwrap().protocol, 2);
    assert!(c.channel.as_ref().unwrap().is_compact());
    let msg = v1::SendMsg {
        client_msg_id: (1 << 48) - 1,
        to: "bob".into(),
        text: "hello".into(),
        ..Default::default()
    };
    let mut plain = BytesMut::new();
    encode_msg(cmd::SEND, 2, &msg, &mut plain);
    assert_eq!(plain.len(), sizes.eval("hello_send_v2", &[]));
    let out0 = c.bytes_out;
    c.send(cmd::SEND, 2, &msg).await;
    assert_eq!(
        c.bytes_out - out0,
        sizes.eval("hello_send_compact_record", &[])
    );
    let ack = c.recv_cmd(cmd::response(cmd::SEND)).await;
    assert_eq!(ack.req_id, 2);
    let (wire, plain) = next_record(&mut b).await;
    assert_eq!(wire, sizes.eval("record", &[("plain", plain)]));

    // Resumed from the ticket: the RESUME frame and its answer.
    let mut r = SecureRaw::connect(&ts.addr()).await;
    let secret: [u8; 32] = ticket.secret[..].try_into().unwrap();
    let mut hello = BytesMut::new();
    let hs = resume::client_resume(&ticket.ticket, &secret, &login, now_ms(), &mut hello).unwrap();
    r.write(&hello).await;
    assert_eq!(
        r.bytes_out,
        sizes.eval(
            "resume",
            &[("login", login.len()), ("ticket", ticket.ticket.len())]
        )
    );
    let (f, answer_len) = handshake_answer(&mut r).await;
    assert_eq!(f.cmd, resume::RESUME | 0x80, "the server took the RESUME");
    let (_, payload) = hs.finish(&f).unwrap();
    assert_eq!(
        answer_len,
        sizes.eval("resume_answer", &[("answer", payload.len())])
    );

    // Sealed short-link requests (every call checks both formulas): with and without a
    // token, an empty request body (no record), an empty answer, two records each way.
    let body = v1::RegisterReq {
        username: "carol".into(),
        password: PASSWORD.into(),
    }
    .encode_to_vec();
    assert_eq!(sealed_call(&sizes, &ts, "register", "", &body).await.0, 200);
    let body = v1::AuthReq {
        username: "carol".into(),
        password: PASSWORD.into(),
        device_id: "dev-c".into(),
    }
    .encode_to_vec();
    let (status, auth) = sealed_call(&sizes, &ts, "auth", "", &body).await;
    assert_eq!(status, 200);
    let carol = v1::AuthResp::decode(&auth[..]).unwrap().token;
    assert_eq!(sizes.eval("records", &[("body", 0)]), 0);
    let (status, refreshed) = sealed_call(&sizes, &ts, "auth/refresh", &carol, b"").await;
    assert_eq!(status, 200);
    let carol = v1::AuthResp::decode(&refreshed[..]).unwrap().token;

    let image = noise_png(200, 200);
    let body = v1::AvatarSetReq {
        image: image.into(),
    }
    .encode_to_vec();
    assert_eq!(sizes.eval("records", &[("body", body.len())]), 2);
    assert_eq!(
        sealed_call(&sizes, &ts, "avatar/set", &carol, &body)
            .await
            .0,
        200
    );

    let mut first = 0;
    for i in 0..17u8 {
        let body = v1::MomentPostReq {
            text: String::from(char::from(b'a' + i)).repeat(4096),
            ..Default::default()
        }
        .encode_to_vec();
        let (status, resp) = sealed_call(&sizes, &ts, "moments/post", &carol, &body).await;
        assert_eq!(status, 200);
        first = first.max(v1::MomentPostResp::decode(&resp[..]).unwrap().moment_id);
    }
    let (status, timeline) = sealed_call(&sizes, &ts, "moments/timeline", &carol, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(sizes.eval("records", &[("body", timeline.len())]), 2);
    let like = v1::MomentLikeReq {
        moment_id: first,
        unlike: false,
    }
    .encode_to_vec();
    let (status, empty) = sealed_call(&sizes, &ts, "moments/like", &carol, &like).await;
    assert_eq!((status, empty.len()), (200, 0));
}

/// `GET /v1/server-key`: 200, `text/plain; charset=utf-8`, exactly the 64 lower-case hex
/// digits of the public key, nothing after them (docs/protocol.md 1.4).
#[tokio::test]
async fn the_server_key_answer_is_64_lower_case_hex_digits_and_nothing_else() {
    let ts = strict_server().await;
    let mut s = tokio::net::TcpStream::connect(ts.addr()).await.unwrap();
    s.write_all(b"GET /v1/server-key HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(got).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    assert_eq!(
        header("content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(header("content-length").as_deref(), Some("64"));
    assert_eq!(body, hex::encode(key_of(&ts)));
    assert!(body.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
}
