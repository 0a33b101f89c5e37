//! The media store on S3-compatible storage against a real S3 server — moto's server
//! mode, which ferry-testkit installs from hash-pinned PyPI wheels and starts on a free
//! loopback port (the test fails, never skips, when it cannot) — and the test process's
//! throw-away PostgreSQL. Each test gets a bucket and a database of its own.
//!
//! The media conformance cases (the same as the local and the shared-folder stores),
//! then what only this store does: multipart uploads of media of several parts, ranged
//! reads, a node taking over the part another node hung on, content stored once, and
//! the sweep aborting the multipart uploads of abandoned uploads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_store::{MediaMeta, MediaStore, PgConfig, S3Config, S3MediaStore};
use ferry_testkit::s3::{s3, ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY};
use ferry_testkit::{Db, Proxy};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::ObjectStore;
use sha2::Digest;

const MIB: usize = 1024 * 1024;

fn config(endpoint: String, bucket: &str) -> S3Config {
    S3Config {
        bucket: bucket.into(),
        endpoint,
        region: REGION.into(),
        prefix: "media/".into(),
        access_key_id: ACCESS_KEY_ID.into(),
        secret_access_key: SECRET_ACCESS_KEY.into(),
        allow_http: true,
        part_size: 5 * MIB as u64,
        lease: Duration::from_secs(2),
        ..Default::default()
    }
}

/// A client of the test's own on the same bucket, to look at what the store left there.
fn bucket_client(bucket: &str) -> AmazonS3 {
    AmazonS3Builder::new()
        .with_endpoint(s3().endpoint())
        .with_bucket_name(bucket)
        .with_region(REGION)
        .with_access_key_id(ACCESS_KEY_ID)
        .with_secret_access_key(SECRET_ACCESS_KEY)
        .with_allow_http(true)
        .build()
        .unwrap()
}

/// A fresh database and bucket.
struct Env {
    db: Db,
    bucket: String,
}

impl Env {
    fn new() -> Env {
        Env {
            db: Db::create(),
            bucket: s3().bucket(),
        }
    }

    fn pg(&self) -> PgConfig {
        let mut pg = PgConfig::new(self.db.url());
        pg.pool_size = 4;
        pg
    }

    /// A node's store (every call: another node on the same database and bucket).
    async fn node(&self) -> Arc<S3MediaStore> {
        self.node_via(s3().endpoint()).await
    }

    async fn node_via(&self, endpoint: String) -> Arc<S3MediaStore> {
        S3MediaStore::connect(&self.pg(), &config(endpoint, &self.bucket))
            .await
            .unwrap()
    }

    async fn sql_count(&self, sql: &str) -> i64 {
        let (client, conn) = tokio_postgres::connect(&self.db.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.query_one(sql, &[]).await.unwrap().get(0)
    }
}

/// Runs one media conformance case on an S3 media store in a fresh database and bucket.
async fn with_media<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn MediaStore>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let env = Env::new();
    case(Arc::new(env.node().await)).await;
}

ferry_store::media_conformance_tests!(with_media);

fn sha(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

/// Bytes that differ everywhere (a repeated pattern would hide a part in the wrong place).
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn meta(id: &str, data: &[u8], chunk_size: u32) -> MediaMeta {
    MediaMeta {
        id: id.into(),
        uploader: 1,
        size: data.len() as u64,
        sha256: sha(data),
        chunk_size,
        created_ms: 1_000,
        ..Default::default()
    }
}

/// Writes the chunks of `data` from `from` to `to` (chunk offsets) in order.
async fn write(
    media: &Arc<S3MediaStore>,
    id: &str,
    data: &[u8],
    chunk: usize,
    from: usize,
    to: usize,
) {
    for off in (from..to.min(data.len())).step_by(chunk) {
        let end = (off + chunk).min(data.len());
        media
            .write_chunk(id, off as u64, &data[off..end])
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_of_three_parts_is_a_multipart_upload_read_by_ranges() {
    let env = Env::new();
    let media = env.node().await;
    let chunk = 512 * 1024;
    // 5 MiB parts: 5 + 5 + 2 MiB and a bit.
    let data = content(12 * MIB + 1000, 7);
    let id = "a".repeat(32);
    media.create(meta(&id, &data, chunk as u32)).await.unwrap();
    write(&media, &id, &data, chunk, 0, data.len()).await;
    assert_eq!(media.received(&id).await.unwrap(), data.len() as u64);
    let v = media.verify(&id, 16).await.unwrap();
    assert_eq!(v.sha256, sha(&data));
    assert_eq!(v.head, &data[..16]);
    // Assembled from 3 parts (S3's ETag of a multipart object ends in -<parts>), and
    // PostgreSQL no longer holds the bytes staged for them.
    let bucket = bucket_client(&env.bucket);
    let up = bucket
        .head(&Path::from(format!("media/uploads/{id}")))
        .await
        .unwrap();
    assert_eq!(up.size, data.len() as u64);
    let etag = up.e_tag.unwrap_or_default();
    assert!(etag.trim_matches('"').ends_with("-3"), "{etag}");
    assert_eq!(
        env.sql_count("SELECT count(*) FROM media_chunks WHERE data IS NOT NULL")
            .await,
        0
    );
    media
        .commit(&id, "application/octet-stream", 0, 0)
        .await
        .unwrap();
    assert!(media.meta(&id).await.unwrap().unwrap().complete);
    assert_eq!(media.object_count("blobs").await.unwrap(), 1);
    assert_eq!(media.object_count("uploads").await.unwrap(), 0);
    // Ranged reads: across a part boundary, the end, past it, nothing.
    let at = 5 * MIB - 10;
    assert_eq!(
        media.read(&id, at as u64, 20).await.unwrap(),
        &data[at..at + 20]
    );
    let tail = data.len() - 100;
    assert_eq!(
        media.read(&id, tail as u64, 1000).await.unwrap(),
        &data[tail..]
    );
    assert!(media
        .read(&id, data.len() as u64, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(media.read(&id, 3, 0).await.unwrap().is_empty());
    // The whole of it, through another node.
    let other = env.node().await;
    assert_eq!(other.read(&id, 0, data.len()).await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_resumes_on_another_node_which_takes_over_a_part_the_first_hung_on() {
    let env = Env::new();
    // Node A reaches the bucket through a proxy that is about to stop forwarding: its
    // part uploads hang (a node stuck or dead mid-upload, holding the lease).
    let proxy = Proxy::start(([127, 0, 0, 1], s3().port).into()).await;
    let a = env.node_via(format!("http://{}", proxy.addr)).await;
    let b = env.node().await;
    let chunk = 512 * 1024;
    let data = content(11 * MIB, 11);
    let id = "b".repeat(32);
    a.create(meta(&id, &data, chunk as u32)).await.unwrap();
    proxy.blackhole(true);
    // A receives the first part and a half (its upload of part 1 hangs), then goes.
    write(&a, &id, &data, chunk, 0, 7 * MIB).await;
    drop(a);
    let hung = "SELECT count(*) FROM media_s3_parts \
                WHERE part_no = 1 AND e_tag IS NULL AND lease_until > clock_timestamp()";
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.sql_count(hung).await == 0 {
        assert!(Instant::now() < deadline, "node A never took part 1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // B answers where the upload stands and takes the rest.
    assert_eq!(b.received(&id).await.unwrap(), 7 * MIB as u64);
    // A chunk B receives again is acknowledged as it was; other bytes are refused.
    assert_eq!(
        b.write_chunk(&id, 0, &data[..chunk]).await.unwrap(),
        7 * MIB as u64
    );
    assert!(b.write_chunk(&id, 0, &vec![0; chunk]).await.is_err());
    write(&b, &id, &data, chunk, 7 * MIB, data.len()).await;
    // Finishing waits out A's lease on part 1 (2 s here), then uploads it itself.
    let started = Instant::now();
    let v = b.verify(&id, 0).await.unwrap();
    assert_eq!(v.sha256, sha(&data));
    assert!(started.elapsed() < Duration::from_secs(30));
    b.commit(&id, "application/octet-stream", 0, 0)
        .await
        .unwrap();
    assert_eq!(b.read(&id, 0, data.len()).await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_is_stored_once_whoever_uploads_it() {
    let env = Env::new();
    let (a, b) = (env.node().await, env.node().await);
    let same = content(100_000, 3);
    let other = content(100_000, 4);
    for (i, (node, data)) in [(&a, &same), (&b, &same), (&a, &other)]
        .into_iter()
        .enumerate()
    {
        let id = format!("{i:032x}");
        node.create(meta(&id, data, 8192)).await.unwrap();
        write(node, &id, data, 8192, 0, data.len()).await;
        assert_eq!(node.verify(&id, 0).await.unwrap().sha256, sha(data));
        node.commit(&id, "application/octet-stream", 0, 0)
            .await
            .unwrap();
    }
    assert_eq!(a.object_count("blobs").await.unwrap(), 2);
    assert_eq!(a.object_count("uploads").await.unwrap(), 0);
    assert_eq!(
        b.read(&format!("{:032x}", 0), 0, 10).await.unwrap(),
        &same[..10]
    );
    assert_eq!(
        a.read(&format!("{:032x}", 1), 99_990, 10).await.unwrap(),
        &same[99_990..]
    );
    assert_eq!(env.sql_count("SELECT count(*) FROM media_chunks").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_aborts_the_multipart_upload_of_an_abandoned_upload() {
    let env = Env::new();
    let media = env.node().await;
    let chunk = 512 * 1024;
    let data = content(11 * MIB, 5);
    let id = "c".repeat(32);
    media.create(meta(&id, &data, chunk as u32)).await.unwrap();
    write(&media, &id, &data, chunk, 0, 6 * MIB).await;
    // Part 1 goes up in the background: wait for it (bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    while env
        .sql_count("SELECT count(*) FROM media_s3_parts WHERE part_no = 1 AND e_tag IS NOT NULL")
        .await
        == 0
    {
        assert!(Instant::now() < deadline, "part 1 was never uploaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (client, conn) = tokio_postgres::connect(&env.db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let upload_id: String = client
        .query_one("SELECT upload_id FROM media_s3_uploads", &[])
        .await
        .unwrap()
        .get(0);
    let path = Path::from(format!("media/uploads/{id}"));
    let bucket = bucket_client(&env.bucket);
    // The multipart upload is there: a part can be added to it.
    bucket
        .put_part(&path, &upload_id, 5, vec![1u8; 10].into())
        .await
        .unwrap();
    assert_eq!(media.sweep(2_000).await.unwrap(), vec![id.clone()]);
    // Aborted: it takes no part any more; no row, staged chunk or object is left.
    assert!(bucket
        .put_part(&path, &upload_id, 6, vec![1u8; 10].into())
        .await
        .is_err());
    assert!(media.meta(&id).await.unwrap().is_none());
    for table in ["media_chunks", "media_s3_parts", "media_s3_uploads"] {
        assert_eq!(
            env.sql_count(&format!("SELECT count(*) FROM {table}"))
                .await,
            0,
            "{table}"
        );
    }
    assert_eq!(media.object_count("uploads").await.unwrap(), 0);
    assert!(media.sweep(2_000).await.unwrap().is_empty());
}

/// The same offset sent to two nodes at once with other bytes (a client bug or an
/// attack racing a retry): exactly one is acknowledged, the other refused, and the
/// upload holds the acknowledged bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_offset_raced_on_two_nodes_keeps_the_bytes_acknowledged() {
    let env = Env::new();
    let (a, b) = (env.node().await, env.node().await);
    let (chunk, n) = (64usize, 40usize);
    let (xs, ys) = (content(chunk * n, 1), content(chunk * n, 2));
    let id = "d".repeat(32);
    // The winners are not known in advance: the declared hash is a placeholder, and
    // what `verify` hashes is compared with the bytes acknowledged.
    let mut kept = vec![0u8; chunk * n];
    let mut m = meta(&id, &kept, chunk as u32);
    m.sha256 = "0".repeat(64);
    a.create(m).await.unwrap();
    for i in 0..n {
        let r = i * chunk..(i + 1) * chunk;
        // Each node's write on a task of its own, released together.
        let go = Arc::new(tokio::sync::Barrier::new(2));
        let write = |node: &Arc<S3MediaStore>, bytes: Vec<u8>| {
            let (node, go, id, at) = (node.clone(), go.clone(), id.clone(), r.start as u64);
            tokio::spawn(async move {
                go.wait().await;
                node.write_chunk(&id, at, &bytes).await
            })
        };
        let (ta, tb) = (
            write(&a, xs[r.clone()].to_vec()),
            write(&b, ys[r.clone()].to_vec()),
        );
        match (ta.await.unwrap(), tb.await.unwrap()) {
            (Ok(_), Err(ferry_store::StoreError::ChunkMismatch)) => {
                kept[r.clone()].copy_from_slice(&xs[r])
            }
            (Err(ferry_store::StoreError::ChunkMismatch), Ok(_)) => {
                kept[r.clone()].copy_from_slice(&ys[r])
            }
            other => panic!("chunk {i}: {other:?}"),
        }
    }
    assert_eq!(a.verify(&id, 0).await.unwrap().sha256, sha(&kept));
}
