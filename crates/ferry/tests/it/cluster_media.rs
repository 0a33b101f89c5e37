//! Media in a cluster: real `ferry gateway` and `ferry logic` processes on a NATS server
//! of their own and a throw-away PostgreSQL database, the logic nodes sharing one media
//! folder. Whatever one logic node received, any other serves or resumes: uploads are
//! finished, downloaded and resumed on nodes that never saw them start.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use ferry_client::ShortLink;
use ferry_proto::upload;
use ferry_proto::v1::{self, ErrorCode, MediaKind};
use ferry_testkit::*;

/// NATS, PostgreSQL, the shared media folder and the config every node reads.
struct Cluster {
    config: PathBuf,
    media: PathBuf,
    _dir: tempfile::TempDir,
    _db: Db,
    _nats: Nats,
}

impl Cluster {
    fn start() -> Cluster {
        Self::start_with("")
    }

    /// `extra` is appended to the config file (more tables).
    fn start_with(extra: &str) -> Cluster {
        let nats = Nats::start();
        let db = Db::create();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("ferry.toml");
        let media = dir.path().join("shared-media");
        std::fs::write(
            &config,
            format!(
                r#"listen = ["127.0.0.1:0"]
[logic]
open_messaging = true
[logic.password]
memory_kib = 64
iterations = 1
[gateway]
# The SDK's plain short link (sealed requests have their own tests).
allow_plaintext = true
login_timeout_ms = 2000
heartbeat_timeout_ms = 5000
shutdown_grace_ms = 1000
[cluster]
nats = "nats://127.0.0.1:{}"
postgres = "{}"
postgres_pool = 4
request_timeout_ms = 3000
gateway_heartbeat_ms = 300
gateway_expiry_ms = 1500
media_dir = "{}"
{extra}
"#,
                nats.port,
                db.url(),
                media.display()
            ),
        )
        .unwrap();
        Cluster {
            config,
            media,
            _dir: dir,
            _db: db,
            _nats: nats,
        }
    }

    fn logic(&self) -> Node {
        crate::node(&["logic"], &self.config, "ferry logic ready")
    }

    fn gateway(&self, id: &str) -> Node {
        crate::node(&["gateway", "--id", id], &self.config, "ferry gateway")
    }

    /// Files in the shared folder's `uploads` or `blobs`.
    fn files(&self, sub: &str) -> usize {
        std::fs::read_dir(self.media.join(sub))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_uploaded_through_one_logic_node_is_served_and_resumed_by_others() {
    let c = Cluster::start();
    let mut l0 = c.logic();
    let (g0, g1) = (c.gateway("gw-0"), c.gateway("gw-1"));
    for (i, u) in ["alice", "bob", "carol"].iter().enumerate() {
        let addr = if i % 2 == 0 { &g0.addr } else { &g1.addr };
        ShortLink::new(addr).register(u, PASSWORD).await.unwrap();
    }

    // An image to bob through gateway 0 while only logic node 0 runs: thumbnail,
    // message, original.
    let (alice, _alice_ev) = connect(&g0.addr, "alice").await;
    let (bob, mut bob_ev) = connect(&g1.addr, "bob").await;
    let image = noise_png(400, 300);
    let sent = alice
        .send_image("bob", image.clone(), &|_, _| {})
        .await
        .unwrap();
    assert_eq!(sent.media.content_type, "image/png");
    let got = recv_messages(&mut bob_ev, "bob", 1, 20).await;
    let m = got[0].1.media.clone().expect("a media reference");
    assert_eq!(m.media_id, sent.media.media_id);
    assert_eq!((m.width, m.height), (400, 300));

    // Logic node 0 goes; node 1, which saw none of it, serves bob through gateway 1.
    let mut l1 = c.logic();
    l0.kill();
    let bob_acc = account(&g1.addr, "bob").await;
    let thumb = bob_acc
        .download(&m.thumb_id, Duration::ZERO, &|_, _| {})
        .await
        .unwrap();
    assert!(image::load_from_memory(&thumb).unwrap().width() <= 200);
    let original = bob_acc
        .download(&m.media_id, Duration::ZERO, &|_, _| {})
        .await
        .unwrap();
    assert!(original == image, "the original differs");
    let carol = account(&g0.addr, "carol").await;
    for id in [&m.media_id, &m.thumb_id] {
        assert_eq!(
            code(carol.download(id, Duration::ZERO, &|_, _| {}).await),
            ErrorCode::NotFound
        );
    }

    // An upload cut at 40 % on node 1 resumes on node 2 from what node 1 acknowledged,
    // then, with nodes 2 and 3 both taking chunks, finishes.
    let acc = account(&g0.addr, "alice").await;
    let data = Bytes::from(noise(2 * 1024 * 1024 + 777, 9));
    let cm = acc
        .create_media(&data, MediaKind::MediaFile, 0)
        .await
        .unwrap();
    upload_part(&acc, &cm, data.clone(), 40).await;
    let l2 = c.logic();
    l1.kill();
    // A request that was on its way to the killed node answers UNAVAILABLE ("try
    // again"); a client tries again, and node 2 answers.
    let mut tries = 0;
    let status = loop {
        match acc.media_status(&cm.media_id).await {
            Err(e) if e.code() == Some(ErrorCode::Unavailable) && tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => break r.unwrap(),
        }
    };
    assert!(!status.complete);
    let window = ferry_client::UPLOAD_WINDOW as u64 * u64::from(cm.chunk_size);
    assert!(
        status.next_offset * 10 + window * 10 >= data.len() as u64 * 4,
        "node 2 sees {status:?} of {} bytes",
        data.len()
    );
    let _l3 = c.logic();
    let r = acc
        .upload_media(&cm, data.clone(), &|_, _| {})
        .await
        .unwrap();
    assert_eq!(r.size, data.len() as u64);
    drop(l2);
    let back = account(&g1.addr, "alice")
        .await
        .download(&cm.media_id, Duration::ZERO, &|_, _| {})
        .await
        .unwrap();
    assert!(back == data, "the resumed upload differs");

    // A wrong SHA-256 is refused on whichever node finishes; nothing stays behind.
    let bad = acc
        .create_media(&noise(30_000, 3), MediaKind::MediaFile, 0)
        .await
        .unwrap();
    let e = acc
        .upload_media(&bad, Bytes::from(noise(30_000, 4)), &|_, _| {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::ChecksumMismatch), "{e}");
    assert_eq!(c.files("uploads"), 0);
    // The thumbnail, the image and the file: one blob each.
    assert_eq!(c.files("blobs"), 3);

    // Chunks under the upload key, through the other gateway: an altered one is refused,
    // the same bytes again are acknowledged, other bytes at an acknowledged offset are
    // refused (the PostgreSQL store's check); the SDK then finishes the upload.
    let small = noise(3 * 8192, 5);
    let u = acc
        .create_media(&small, MediaKind::MediaFile, 0)
        .await
        .unwrap();
    let key = upload::key_from(&u.upload_key).unwrap();
    let raw = ShortLink::new(&g1.addr);
    let chunk = |plain: &[u8]| v1::MediaChunkReq {
        media_id: u.media_id.clone(),
        offset: 0,
        data: Bytes::from(upload::seal_chunk(&key, &u.media_id, 0, plain).unwrap()),
    };
    let mut altered = chunk(&small[..8192]);
    altered.data = Bytes::from(
        [
            &altered.data[..8191],
            &[altered.data[8191] ^ 1][..],
            &altered.data[8192..],
        ]
        .concat(),
    );
    let r: Result<v1::MediaChunkAck, _> = raw.call_unsealed("media/chunk", &altered).await;
    assert_eq!(code(r), ErrorCode::InvalidArgument);
    for _ in 0..2 {
        let ack: v1::MediaChunkAck = raw
            .call_unsealed("media/chunk", &chunk(&small[..8192]))
            .await
            .unwrap();
        assert_eq!(ack.next_offset, 8192);
    }
    let r: Result<v1::MediaChunkAck, _> = raw
        .call_unsealed("media/chunk", &chunk(&noise(8192, 6)))
        .await;
    assert_eq!(code(r), ErrorCode::InvalidArgument);
    acc.upload_media(&u, Bytes::from(small.clone()), &|_, _| {})
        .await
        .unwrap();
    let back = acc
        .download(&u.media_id, Duration::ZERO, &|_, _| {})
        .await
        .unwrap();
    assert!(back == small, "the keyed upload differs");
    alice.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_uploads_are_swept_from_postgres_and_the_shared_folder() {
    let c = Cluster::start_with("[logic.media]\nupload_ttl_ms = 2000\nsweep_interval_ms = 100\n");
    let _l0 = c.logic();
    let _l1 = c.logic();
    let g0 = c.gateway("gw-0");
    ShortLink::new(&g0.addr)
        .register("alice", PASSWORD)
        .await
        .unwrap();
    let acc = account(&g0.addr, "alice").await;
    let data = Bytes::from(noise(200_000, 21));
    let cm = acc
        .create_media(&data, MediaKind::MediaFile, 0)
        .await
        .unwrap();
    upload_part(&acc, &cm, data.clone(), 30).await;
    let kept = acc
        .upload(
            Bytes::from(noise(10_000, 22)),
            MediaKind::MediaFile,
            &|_, _| {},
        )
        .await
        .unwrap();
    assert_eq!(c.files("uploads"), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while c.files("uploads") > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the abandoned upload was not swept"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        code(acc.media_status(&cm.media_id).await),
        ErrorCode::NotFound
    );
    assert!(
        acc.download(&kept.media_id, Duration::ZERO, &|_, _| {})
            .await
            .unwrap()
            == noise(10_000, 22)
    );
    assert_eq!(c.files("blobs"), 1);
}
