//! The encrypted link's server side: a HELLO or a RESUME hello made of any bytes, a
//! ticket made of any bytes, and sealed records made of any bytes fail cleanly, never
//! panic.
#![no_main]
use bytes::BytesMut;
use ferry_proto::resume::{self, TicketKey};
use ferry_proto::secure::{self, StaticKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = StaticKey::from_private(&[7u8; 32]).unwrap();
    let tickets = TicketKey::derive(&key.private, 1);
    let _ = tickets.open(data, 1);
    let mut buf = BytesMut::from(data);
    if let Ok(Some(hello)) = secure::parse_handshake(&mut buf) {
        let _ = secure::server_accept(&key, &hello);
        let _ = resume::server_resume(&tickets, &hello, 1);
    }
    // The same bytes as the body of a RESUME frame.
    let mut framed = BytesMut::new();
    ferry_proto::frame::encode_raw(resume::RESUME, 0, &data[..data.len().min(65_535)], &mut framed);
    if let Ok(Some(hello)) = secure::parse_handshake(&mut framed) {
        let _ = resume::server_resume(&tickets, &hello, 1);
    }
    // A real channel fed garbage records.
    let mut wire = BytesMut::new();
    let hs = secure::client_hello(&key.public, b"login", &mut wire).unwrap();
    let hello = secure::parse_handshake(&mut wire).unwrap().unwrap();
    let (shs, _) = secure::server_accept(&key, &hello).unwrap();
    let mut answer = BytesMut::new();
    let mut server = shs.respond(b"ok", &mut answer).unwrap();
    let f = secure::parse_handshake(&mut answer).unwrap().unwrap();
    let _ = hs.finish(&f).unwrap();
    let mut rest = BytesMut::from(data);
    let _ = server.open(&mut rest, &mut BytesMut::new());
});
