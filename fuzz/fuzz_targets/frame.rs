//! The frame decoder: any bytes, cut anywhere, give frames or an error, never a panic;
//! what parses re-encodes to the same bytes.
#![no_main]
use bytes::BytesMut;
use ferry_proto::{Frame, MAX_BODY_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let max = if data.first().is_some_and(|b| b & 1 == 1) { 64 * 1024 } else { MAX_BODY_LEN };
    let mut buf = BytesMut::from(data);
    let mut again = BytesMut::new();
    let mut taken = 0;
    while let Ok(Some(f)) = Frame::parse(&mut buf, max) {
        f.encode(&mut again);
        taken = data.len() - buf.len();
    }
    assert_eq!(&again[..], &data[..taken]);
    let _ = Frame::check(data, max);
});
