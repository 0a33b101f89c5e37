//! The first-byte protocol sniffer: total, and a frame byte always starts a frame whose
//! length is within the hard maximum.
#![no_main]
use ferry_proto::{sniff, Frame, Protocol, MAX_BODY_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(&first) = data.first() else { return };
    match sniff(first) {
        Protocol::Frame => {
            if data.len() >= 3 {
                let len = (usize::from(data[0]) << 16) | (usize::from(data[1]) << 8) | usize::from(data[2]);
                assert!(len <= 0x10ffff);
                let _ = Frame::check(data, MAX_BODY_LEN);
            }
        }
        Protocol::Http => assert!(first.is_ascii_uppercase()),
        Protocol::Unknown => assert!(first > 0x10 && !first.is_ascii_uppercase()),
    }
});
