//! The encrypted link's server side: a HELLO made of any bytes and sealed records made
//! of any bytes fail cleanly, never panic.
#![no_main]
use bytes::BytesMut;
use ferry_proto::secure::{self, StaticKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = StaticKey::from_private(&[7u8; 32]).unwrap();
    let mut buf = BytesMut::from(data);
    if let Ok(Some(hello)) = secure::parse_handshake(&mut buf) {
        let _ = secure::server_accept(&key, &hello);
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
