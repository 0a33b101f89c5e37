//! Media in a cluster on S3-compatible storage: real `ferry gateway` and `ferry logic`
//! processes on a NATS server of their own, a throw-away PostgreSQL database and a
//! bucket of a real S3-compatible server (moto, started by ferry-testkit; the test fails
//! when it cannot be). Media uploaded through one gateway is downloaded through another;
//! an upload whose logic node is killed mid-way is finished by another node.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use ferry_client::ShortLink;
use ferry_proto::v1::{ErrorCode, MediaKind};
use ferry_testkit::s3::{s3, ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY};
use ferry_testkit::*;

struct Cluster {
    config: PathBuf,
    bucket: String,
    _dir: tempfile::TempDir,
    _db: Db,
    _nats: Nats,
}

impl Cluster {
    fn start() -> Cluster {
        let nats = Nats::start();
        let db = Db::create();
        let bucket = s3().bucket();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("ferry.toml");
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
allow_plaintext = true
login_timeout_ms = 2000
heartbeat_timeout_ms = 5000
shutdown_grace_ms = 1000
[cluster]
nats = "nats://127.0.0.1:{}"
postgres = "{}"
postgres_pool = 4
request_timeout_ms = 5000
gateway_heartbeat_ms = 300
gateway_expiry_ms = 1500
media_s3_bucket = "{bucket}"
media_s3_endpoint = "{}"
media_s3_region = "{REGION}"
media_s3_prefix = "ferry/"
media_s3_access_key_id = "{ACCESS_KEY_ID}"
media_s3_secret_access_key = "{SECRET_ACCESS_KEY}"
media_s3_allow_http = true
media_s3_part_size = 5_242_880
"#,
                nats.port,
                db.url(),
                s3().endpoint(),
            ),
        )
        .unwrap();
        Cluster {
            config,
            bucket,
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

    fn objects(&self, under: &str) -> usize {
        s3().keys(&self.bucket, &format!("ferry/{under}/")).len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_uploaded_through_one_gateway_is_downloaded_through_another_from_s3() {
    let c = Cluster::start();
    let mut l0 = c.logic();
    let _l1 = c.logic();
    let (g0, g1) = (c.gateway("gw-0"), c.gateway("gw-1"));
    for (u, g) in [("alice", &g0), ("bob", &g1)] {
        ShortLink::new(&g.addr).register(u, PASSWORD).await.unwrap();
    }

    // An image to bob through gateway 0 (one PUT each, thumbnail and original), read
    // by bob through gateway 1.
    let (alice, _alice_ev) = connect(&g0.addr, "alice").await;
    let (bob, mut bob_ev) = connect(&g1.addr, "bob").await;
    let image = noise_png(300, 200);
    let sent = alice
        .send_image("bob", image.clone(), &|_, _| {})
        .await
        .unwrap();
    let got = recv_messages(&mut bob_ev, "bob", 1, 20).await;
    let m = got[0].1.media.clone().expect("a media reference");
    assert_eq!(m.media_id, sent.media.media_id);
    let bob_acc = account(&g1.addr, "bob").await;
    let original = bob_acc
        .download(&m.media_id, Duration::ZERO, &|_, _| {})
        .await
        .unwrap();
    assert!(original == image, "the original differs");

    // A file of three 5 MiB parts through gateway 0, its logic node killed at 40 %: the
    // other node resumes it (through gateway 1) from what was acknowledged, and it is
    // read back through gateway 1 by ranges.
    let acc = account(&g0.addr, "alice").await;
    let data = Bytes::from(noise(11 * 1024 * 1024 + 333, 17));
    let cm = acc
        .create_media(&data, MediaKind::MediaFile, 512 * 1024)
        .await
        .unwrap();
    upload_part(&acc, &cm, data.clone(), 40).await;
    l0.kill();
    let acc1 = account(&g1.addr, "alice").await;
    let mut tries = 0;
    let status = loop {
        match acc1.media_status(&cm.media_id).await {
            Err(e) if e.code() == Some(ErrorCode::Unavailable) && tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => break r.unwrap(),
        }
    };
    assert!(!status.complete);
    assert!(status.next_offset > 0, "{status:?}");
    let r = acc1
        .upload_media(&cm, data.clone(), &|_, _| {})
        .await
        .unwrap();
    assert_eq!(r.size, data.len() as u64);
    let back = acc1
        .download(&cm.media_id, Duration::ZERO, &|_, _| {})
        .await
        .unwrap();
    assert!(back == data, "the file read back differs");
    // Thumbnail, image and file: one blob each, no upload left in the bucket.
    assert_eq!(c.objects("blobs"), 3);
    assert_eq!(c.objects("uploads"), 0);
    alice.close().await;
    bob.close().await;
}
