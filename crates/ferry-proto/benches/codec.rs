//! Criterion benchmark of the frame codec: encode and parse of a "hello" SEND frame, and
//! the encrypted link's record of it: sealed by one side, opened by the other.
use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferry_proto::secure::{self, Channel, StaticKey};
use ferry_proto::{frame::encode_msg, v1, Frame, MAX_BODY_LEN};

fn codec(c: &mut Criterion) {
    let msg = v1::SendMsg {
        client_msg_id: 0x1234_5678_9abc,
        to: "bob".into(),
        text: "hello".into(),
        r#type: 0,
        ..Default::default()
    };
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_hello", |b| {
        let mut buf = BytesMut::with_capacity(64);
        b.iter(|| {
            buf.clear();
            encode_msg(0x03, 1, &msg, &mut buf);
            std::hint::black_box(&buf);
        })
    });
    let mut one = BytesMut::new();
    encode_msg(0x03, 1, &msg, &mut one);
    g.bench_function("parse_decode_hello", |b| {
        b.iter(|| {
            let mut buf = one.clone();
            let f = Frame::parse(&mut buf, MAX_BODY_LEN).unwrap().unwrap();
            std::hint::black_box(f.decode::<v1::SendMsg>().unwrap());
        })
    });
    g.finish();
}

/// Both ends of an encrypted link, after a real handshake.
fn channels() -> (Channel, Channel) {
    let server = StaticKey::generate().unwrap();
    let mut hello = BytesMut::new();
    let client = secure::client_hello(&server.public, b"", &mut hello).unwrap();
    let hello = secure::parse_handshake(&mut hello).unwrap().unwrap();
    let (accepted, _) = secure::server_accept(&server, &hello).unwrap();
    let mut answer = BytesMut::new();
    let server_side = accepted.respond(b"", &mut answer).unwrap();
    let answer = secure::parse_handshake(&mut answer).unwrap().unwrap();
    let (client_side, _) = client.finish(&answer).unwrap();
    (client_side, server_side)
}

fn record(c: &mut Criterion) {
    let msg = v1::SendMsg {
        client_msg_id: 0x1234_5678_9abc,
        to: "bob".into(),
        text: "hello".into(),
        ..Default::default()
    };
    let mut frame = BytesMut::new();
    encode_msg(0x03, 1, &msg, &mut frame);
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(1));
    for compact in [false, true] {
        let (mut client, mut server) = channels();
        if compact {
            client.set_compact();
            server.set_compact();
        }
        let name = if compact {
            "seal_open_hello_v2"
        } else {
            "seal_open_hello_v1"
        };
        g.bench_function(name, |b| {
            let (mut wire, mut plain) = (BytesMut::new(), BytesMut::new());
            b.iter(|| {
                wire.clear();
                plain.clear();
                client.seal(&frame, &mut wire).unwrap();
                server.open(&mut wire, &mut plain).unwrap();
                std::hint::black_box(&plain);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, codec, record);
criterion_main!(benches);
