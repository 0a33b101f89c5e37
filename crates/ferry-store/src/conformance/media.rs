//! Conformance: [`MediaStore`](crate::MediaStore) — uploads in chunks, verification,
//! content kept once, grants, sweeping. The cases hold for every backend; what only one
//! keeps (the local store's checkpoints and byte ranges) is tested beside it.

use std::sync::Arc;

use sha2::Digest;

use crate::{MediaMeta, MediaStore, StoreError, UploadKey};

fn sha(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

fn meta(id: &str, data: &[u8]) -> MediaMeta {
    MediaMeta {
        id: id.into(),
        uploader: 1,
        size: data.len() as u64,
        sha256: sha(data),
        chunk_size: 4,
        ..Default::default()
    }
}

/// Writes all of `data` in chunks of 4 bytes (the chunk size of [`meta`]), verifies and
/// commits it.
async fn upload(media: &Arc<dyn MediaStore>, id: &str, data: &[u8]) {
    for off in (0..data.len()).step_by(4) {
        let end = (off + 4).min(data.len());
        media
            .write_chunk(id, off as u64, &data[off..end])
            .await
            .unwrap();
    }
    assert_eq!(media.verify(id, 0).await.unwrap().sha256, sha(data));
    media.commit(id, "text/plain", 0, 0).await.unwrap();
}

pub async fn chunks_in_any_order_then_verify_commit_and_read(media: Arc<dyn MediaStore>) {
    let data = b"0123456789abcdef!";
    let a = "a".repeat(32);
    media.create(meta(&a, data)).await.unwrap();
    assert!(media.create(meta(&a, data)).await.is_err());
    // The offset answered is the one up to which every byte has been received.
    assert_eq!(media.write_chunk(&a, 4, &data[4..8]).await.unwrap(), 0);
    assert_eq!(media.write_chunk(&a, 0, &data[..4]).await.unwrap(), 8);
    assert_eq!(media.write_chunk(&a, 12, &data[12..16]).await.unwrap(), 8);
    assert_eq!(media.write_chunk(&a, 16, &data[16..]).await.unwrap(), 8);
    assert_eq!(media.received(&a).await.unwrap(), 8);
    assert_eq!(media.write_chunk(&a, 8, &data[8..12]).await.unwrap(), 17);
    let v = media.verify(&a, 4).await.unwrap();
    assert_eq!(v.sha256, sha(data));
    assert_eq!(v.head, b"0123");
    media.commit(&a, "text/plain", 0, 0).await.unwrap();
    media.grant(&a, &[7, 7], &[9], &[11]).await.unwrap();
    media.grant(&a, &[7], &[9], &[]).await.unwrap();
    let m = media.meta(&a).await.unwrap().unwrap();
    assert!(m.complete);
    assert_eq!(m.content_type, "text/plain");
    assert_eq!(
        (m.grant_users, m.grant_groups, m.grant_moments),
        (vec![7], vec![9], vec![11])
    );
    assert_eq!(media.read(&a, 10, 100).await.unwrap(), &data[10..]);
    // The same content under another id reads the same.
    let b = "b".repeat(32);
    media.create(meta(&b, data)).await.unwrap();
    upload(&media, &b, data).await;
    assert_eq!(media.read(&b, 0, 100).await.unwrap(), data);
    // An unfinished upload discarded is gone; ids that are not media ids name nothing.
    let c = "c".repeat(32);
    media.create(meta(&c, data)).await.unwrap();
    media.write_chunk(&c, 0, &data[..4]).await.unwrap();
    media.discard(&c).await.unwrap();
    assert!(media.meta(&c).await.unwrap().is_none());
    assert!(media.meta("../../etc/passwd").await.unwrap().is_none());
}

pub async fn acknowledged_bytes_never_change(media: Arc<dyn MediaStore>) {
    let data = b"0123456789abcdef";
    let b = "b".repeat(32);
    media.create(meta(&b, data)).await.unwrap();
    assert_eq!(media.write_chunk(&b, 0, b"0123").await.unwrap(), 4);
    // The same bytes again are acknowledged without a write; other bytes are refused
    // and the stored ones stay.
    let written = media.bytes_received();
    assert_eq!(media.write_chunk(&b, 0, b"0123").await.unwrap(), 4);
    assert_eq!(media.bytes_received(), written);
    assert!(matches!(
        media.write_chunk(&b, 0, b"XXXX").await,
        Err(StoreError::ChunkMismatch)
    ));
    upload(&media, &b, data).await;
    assert_eq!(media.read(&b, 0, 100).await.unwrap(), data);
}

pub async fn the_upload_key_is_kept_until_the_upload_is_finished(media: Arc<dyn MediaStore>) {
    let data = b"0123456789abcdef";
    let a = "a".repeat(32);
    let key = Some(UploadKey([9; 32]));
    media
        .create(MediaMeta {
            upload_key: key,
            ..meta(&a, data)
        })
        .await
        .unwrap();
    let m = media.meta(&a).await.unwrap();
    assert!(!format!("{m:?}").contains("0909"));
    assert_eq!(m.unwrap().upload_key, key);
    upload(&media, &a, data).await;
    assert_eq!(media.meta(&a).await.unwrap().unwrap().upload_key, None);
}

pub async fn sweep_deletes_old_unfinished_uploads_only(media: Arc<dyn MediaStore>) {
    let data = b"some bytes to keep";
    let (old, new, done) = ("1".repeat(32), "2".repeat(32), "3".repeat(32));
    for (id, created_ms) in [(&old, 1_000), (&new, 5_000), (&done, 1_000)] {
        media
            .create(MediaMeta {
                created_ms,
                ..meta(id, data)
            })
            .await
            .unwrap();
    }
    media.write_chunk(&old, 0, &data[..4]).await.unwrap();
    upload(&media, &done, data).await;
    assert_eq!(media.sweep(3_000).await.unwrap(), vec![old.clone()]);
    assert!(media.meta(&old).await.unwrap().is_none());
    assert!(media.write_chunk(&old, 4, &data[4..8]).await.is_err());
    assert!(media.meta(&new).await.unwrap().is_some());
    assert_eq!(media.read(&done, 0, 100).await.unwrap(), data);
    assert!(media.sweep(3_000).await.unwrap().is_empty());
}

/// A user's media are listed by uploader (paged by id) and deleted one by one; content
/// another media shares stays readable through it.
pub async fn deleting_media_keeps_content_another_media_shares(media: Arc<dyn MediaStore>) {
    let data = b"shared content!";
    let (a, b, c, d) = (
        "a".repeat(32),
        "b".repeat(32),
        "c".repeat(32),
        "d".repeat(32),
    );
    let by = |id: &str, uploader: u64, data: &[u8]| MediaMeta {
        uploader,
        ..meta(id, data)
    };
    media.create(by(&a, 7, data)).await.unwrap();
    upload(&media, &a, data).await;
    media.create(by(&b, 8, data)).await.unwrap();
    upload(&media, &b, data).await;
    // Still uploading: listed and deleted too.
    media.create(by(&c, 7, b"partial....")).await.unwrap();
    media.write_chunk(&c, 0, b"part").await.unwrap();
    media.create(by(&d, 7, b"other")).await.unwrap();
    upload(&media, &d, b"other").await;

    let ids = |v: Vec<MediaMeta>| v.into_iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(
        ids(media.uploaded_by(7, "", 10).await.unwrap()),
        [a.clone(), c.clone(), d.clone()]
    );
    assert_eq!(
        ids(media.uploaded_by(7, "", 1).await.unwrap()),
        [a.as_str()]
    );
    assert_eq!(
        ids(media.uploaded_by(7, &a, 10).await.unwrap()),
        [c.clone(), d.clone()]
    );
    assert_eq!(
        ids(media.uploaded_by(8, "", 10).await.unwrap()),
        [b.as_str()]
    );

    for id in [&a, &c, &d] {
        assert!(media.delete(id).await.unwrap());
        assert!(media.meta(id).await.unwrap().is_none());
        assert!(matches!(
            media.read(id, 0, 10).await,
            Err(StoreError::NotFound)
        ));
    }
    assert!(!media.delete(&a).await.unwrap(), "deleted once");
    assert!(media.uploaded_by(7, "", 10).await.unwrap().is_empty());
    // Bob's copy of the same content is still whole.
    assert_eq!(media.read(&b, 0, 100).await.unwrap(), data);
    assert!(media.delete(&b).await.unwrap());
    assert!(!media.delete("../../etc/passwd").await.unwrap());
}
