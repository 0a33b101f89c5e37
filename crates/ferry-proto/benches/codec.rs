//! Criterion benchmark of the frame codec: encode and parse of a "hello" SEND frame.
use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
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

criterion_group!(benches, codec);
criterion_main!(benches);
