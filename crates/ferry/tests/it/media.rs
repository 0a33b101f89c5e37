//! Media end to end against a real server: chunked uploads, thumbnails first, resume
//! after a cut, ranged downloads, who may read, and what is refused.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ferry_client::{Account, Dest, FriendAction, ShortLink};
use ferry_proto::upload;
use ferry_proto::v1::{self, ErrorCode, MediaKind};
use ferry_proto::ProtoMessage;
use ferry_testkit::*;
use sha2::Digest;
/// A PNG of `w`×`h` noise pixels.
/// Files under `<data>/media/<sub>`.
fn files(data: &Path, sub: &str) -> usize {
    std::fs::read_dir(data.join("media").join(sub))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn received(srv: &TestServer) -> u64 {
    srv.server.logic.media_store().unwrap().bytes_received()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_thumbnail_and_message_arrive_before_the_original_which_is_byte_identical() {
    let srv = TestServer::start().await;
    srv.register(&["alice", "bob"]).await;
    let addr = srv.addr();
    let (alice, _alice_ev) = connect(&addr, "alice").await;
    let (bob, mut bob_ev) = connect(&addr, "bob").await;
    let image = noise_png(1322, 1322);
    assert!(image.len() >= 5 * 1024 * 1024, "{} bytes", image.len());

    // Thumbnail uploaded and message sent; the original not uploaded yet.
    let pending = alice.start_image("bob", image.clone()).await.unwrap();
    let original_id = pending.sent.media.media_id.clone();
    let got = recv_messages(&mut bob_ev, "bob", 1, 10).await;
    let m = got[0].1.media.clone().expect("a media reference");
    assert_eq!(m.media_id, original_id);
    assert_eq!(m.kind(), MediaKind::MediaImage);
    assert_eq!(
        (m.size, m.width, m.height),
        (image.len() as u64, 1322, 1322)
    );
    assert!(!m.thumb_id.is_empty());

    // The thumbnail is there at once; the original answers "not yet, retry after".
    let bob_acc = bob.account();
    let thumb = bob_acc
        .download(&m.thumb_id, Duration::ZERO, &|_, _| {})
        .await
        .unwrap();
    let t = image::load_from_memory(&thumb).unwrap();
    assert!(t.width() <= 200 && t.height() <= 200 && t.width() > 0);
    assert_eq!(
        image::guess_format(&thumb).unwrap(),
        image::ImageFormat::Jpeg
    );
    match bob_acc
        .download(&original_id, Duration::ZERO, &|_, _| {})
        .await
    {
        Err(e) if e.code() == Some(ErrorCode::Unavailable) => {
            assert!(e.refusal().unwrap().retry_after_ms > 0)
        }
        other => panic!("the original should still be uploading: {other:?}"),
    }

    // Now the original, with progress; bob's download (which waits) gets it whole.
    let downloader = {
        let bob_acc = bob_acc.clone();
        let id = original_id.clone();
        tokio::spawn(async move {
            bob_acc
                .download(&id, Duration::from_secs(60), &|_, _| {})
                .await
        })
    };
    let last = AtomicU64::new(0);
    let calls = AtomicU64::new(0);
    let sent = pending
        .finish(&|done, total| {
            assert_eq!(total, image.len() as u64);
            assert!(
                done >= last.swap(done, Ordering::SeqCst),
                "progress went back"
            );
            calls.fetch_add(1, Ordering::SeqCst);
        })
        .await
        .unwrap();
    assert_eq!(sent.media.content_type, "image/png");
    assert_eq!(last.load(Ordering::SeqCst), image.len() as u64);
    assert!(
        calls.load(Ordering::SeqCst) > 600,
        "one call per 8 KiB chunk"
    );
    let ranges = AtomicU64::new(0);
    let downloaded = bob
        .download(&original_id, &|_, _| {
            ranges.fetch_add(1, Ordering::SeqCst);
        })
        .await
        .unwrap();
    assert!(downloaded == image, "the original differs");
    assert!(ranges.load(Ordering::SeqCst) >= 7, "downloaded in ranges");
    assert!(downloader.await.unwrap().unwrap() == image);
    // Two blobs: the original and the thumbnail.
    assert_eq!(files(srv.dir.path(), "blobs"), 2);
    alice.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_at_40_percent_resumes_without_resending_acknowledged_chunks() {
    let srv = TestServer::start().await;
    srv.register(&["alice"]).await;
    let addr = srv.addr();
    let alice = account(&addr, "alice").await;
    let data = Bytes::from(noise(3 * 1024 * 1024 + 1234, 7));
    let size = data.len() as u64;
    let c = alice
        .create_media(&data, MediaKind::MediaFile, 0)
        .await
        .unwrap();
    let chunk = u64::from(c.chunk_size);
    assert_eq!(chunk, 8192);

    upload_part(&alice, &c, data.clone(), 40).await;

    let status = alice.media_status(&c.media_id).await.unwrap();
    let window = ferry_client::UPLOAD_WINDOW as u64 * chunk;
    assert!(!status.complete);
    assert!(
        status.next_offset * 10 + window * 10 >= size * 4,
        "{status:?}"
    );
    assert!(status.next_offset < size);
    let before = received(&srv);
    assert!(before >= status.next_offset);

    // Resume from a restarted client (a new sign-in): only what the server lacks is
    // sent again (at most a window of chunks received out of order beyond the
    // acknowledged offset).
    let alice = account(&addr, "alice").await;
    let r = alice
        .upload_media(&c, data.clone(), &|_, _| {})
        .await
        .unwrap();
    assert_eq!(r.size, size);
    let resent = received(&srv) - before;
    assert!(
        resent <= size - status.next_offset + window,
        "resent {resent} bytes, the server lacked {}",
        size - status.next_offset
    );
    assert!(
        received(&srv) <= size + 2 * window,
        "{} bytes received for {size}",
        received(&srv)
    );
    let back = alice
        .download(&c.media_id, Duration::ZERO, &|_, _| {})
        .await
        .unwrap();
    assert!(back == data, "resumed upload differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_user_is_refused_thumbnail_and_original() {
    let srv = TestServer::start().await;
    srv.register(&["alice", "bob", "carol", "dave"]).await;
    let addr = srv.addr();
    let (alice, _ev) = connect(&addr, "alice").await;
    let image = noise_png(320, 240);
    let sent = alice
        .send_image("bob", image.clone(), &|_, _| {})
        .await
        .unwrap();
    let (id, thumb) = (sent.media.media_id.clone(), sent.media.thumb_id.clone());
    let bob = account(&addr, "bob").await;
    let carol = account(&addr, "carol").await;
    assert!(bob.download(&id, Duration::ZERO, &|_, _| {}).await.unwrap() == image);
    assert!(!bob
        .download(&thumb, Duration::ZERO, &|_, _| {})
        .await
        .unwrap()
        .is_empty());
    for m in [&id, &thumb] {
        let c = code(carol.download(m, Duration::ZERO, &|_, _| {}).await);
        assert!(
            matches!(c, ErrorCode::NotFound | ErrorCode::PermissionDenied),
            "{c:?}"
        );
    }
    // Carol cannot attach alice's media to a message of her own to gain access.
    let (carol_c, _cev) = connect(&addr, "carol").await;
    let r = carol_c
        .send_msg(&v1::SendMsg {
            client_msg_id: 42,
            to: "dave".into(),
            media: Some(Box::new(sent.media.clone())),
            ..Default::default()
        })
        .await;
    assert_eq!(code(r), ErrorCode::NotFound);
    let dave = account(&addr, "dave").await;
    assert_eq!(
        code(dave.download(&id, Duration::ZERO, &|_, _| {}).await),
        ErrorCode::NotFound
    );

    // A group image: members read it, others do not.
    let g = alice
        .account()
        .create_group("pics", &["dave"], false)
        .await
        .unwrap();
    let sent = alice
        .send_image(Dest::Group(g.group_id), noise_png(64, 64), &|_, _| {})
        .await
        .unwrap();
    let id = sent.media.media_id;
    assert!(dave.download(&id, Duration::ZERO, &|_, _| {}).await.is_ok());
    assert_eq!(
        code(carol.download(&id, Duration::ZERO, &|_, _| {}).await),
        ErrorCode::NotFound
    );
    // Ids that name nothing.
    for id in ["not-a-media-id".to_owned(), "f".repeat(32)] {
        assert_eq!(
            code(bob.download(&id, Duration::ZERO, &|_, _| {}).await),
            ErrorCode::NotFound
        );
    }
    alice.close().await;
    carol_c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_images_wrong_hashes_and_oversized_uploads_are_refused_and_nothing_is_stored() {
    let srv = TestServer::with(|c| c.logic.media.max_image_bytes = 256 * 1024).await;
    srv.register(&["alice"]).await;
    let addr = srv.addr();
    let alice = account(&addr, "alice").await;
    let dir = srv.dir.path();

    // Garbage behind a PNG signature, declared an image.
    let mut garbage = b"\x89PNG\r\n\x1a\n".to_vec();
    garbage.extend(noise(40_000, 3));
    let e = alice
        .upload(Bytes::from(garbage), MediaKind::MediaImage, &|_, _| {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    assert!(e.to_string().contains("not an image"), "{e}");

    // Text declared an image.
    let e = alice
        .upload(
            Bytes::from_static(b"hello, I am a picture"),
            MediaKind::MediaThumbnail,
            &|_, _| {},
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");

    // Bytes that do not match the declared SHA-256.
    let data = Bytes::from(noise(50_000, 5));
    let c: v1::MediaCreateResp = alice
        .call(
            "media/create",
            &v1::MediaCreateReq {
                size: data.len() as u64,
                content_type: "application/octet-stream".into(),
                sha256: "ab".repeat(32),
                kind: MediaKind::MediaFile as i32,
                chunk_size: 0,
            },
        )
        .await
        .unwrap();
    let e = alice.upload_media(&c, data, &|_, _| {}).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::ChecksumMismatch), "{e}");
    assert!(e.to_string().contains("SHA-256"), "{e}");
    assert_eq!(
        code(alice.media_status(&c.media_id).await),
        ErrorCode::NotFound
    );

    // Over the image limit: refused at create.
    let big = noise_png(400, 400);
    assert!(big.len() > 256 * 1024);
    let e = alice
        .create_media(&big, MediaKind::MediaImage, 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::TooLarge), "{e}");
    assert!(e.to_string().contains("limit"), "{e}");

    // Chunks outside the upload are refused too.
    let small = noise_png(16, 16);
    let c = alice
        .create_media(&small, MediaKind::MediaImage, 0)
        .await
        .unwrap();
    let r: Result<v1::MediaChunkAck, _> = alice
        .call(
            "media/chunk",
            &v1::MediaChunkReq {
                media_id: c.media_id.clone(),
                offset: 8192 * 100,
                data: Bytes::from_static(b"x"),
            },
        )
        .await;
    assert_eq!(code(r), ErrorCode::InvalidArgument);

    // Nothing of the refused uploads stayed; the last one is still in progress.
    assert_eq!(files(dir, "blobs"), 0);
    assert_eq!(files(dir, "meta"), 1);
    assert_eq!(files(dir, "uploads"), 1);
    let ok = alice
        .upload_media(&c, Bytes::from(small), &|_, _| {})
        .await
        .unwrap();
    assert_eq!((ok.content_type.as_str(), ok.width), ("image/png", 16));
    assert_eq!(files(dir, "blobs"), 1);
    assert_eq!(files(dir, "uploads"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moments_media_is_read_by_its_audience_and_nobody_else() {
    let srv = TestServer::start().await;
    srv.register(&["alice", "bob", "carol"]).await;
    let addr = srv.addr();
    let (alice, bob, carol) = (
        account(&addr, "alice").await,
        account(&addr, "bob").await,
        account(&addr, "carol").await,
    );
    alice.request_friend("bob", "").await.unwrap();
    bob.friend(FriendAction::Accept, "alice").await.unwrap();
    let photo = noise_png(64, 48);
    let m = alice
        .upload(
            Bytes::from(photo.clone()),
            MediaKind::MediaImage,
            &|_, _| {},
        )
        .await
        .unwrap();
    let get = |who: &Account| {
        let (who, id) = (who.clone(), m.media_id.clone());
        async move { who.download(&id, Duration::ZERO, &|_, _| {}).await }
    };
    // Uploaded but shown nowhere yet: only alice reads it.
    assert!(get(&alice).await.unwrap() == photo);
    assert_eq!(code(get(&bob).await), ErrorCode::NotFound);

    let posted = alice
        .post_moment("look", vec![m.media_id.clone()])
        .await
        .unwrap();
    // Bob, a friend, sees the moment and reads its media; carol, a stranger, does not.
    let tl = bob.timeline(0, 10).await.unwrap();
    assert_eq!(tl.moments[0].media_ids, std::slice::from_ref(&m.media_id));
    assert!(get(&bob).await.unwrap() == photo);
    assert_eq!(code(get(&carol).await), ErrorCode::NotFound);

    // Nobody can show someone else's media in a moment of their own, nor ids that are
    // not media.
    assert_eq!(
        code(bob.post_moment("mine now", vec![m.media_id.clone()]).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(alice.post_moment("?", vec!["media-1".into()]).await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(code(get(&carol).await), ErrorCode::NotFound);

    // The audience is checked when reading: a new friend gets in, a removed one is out.
    carol.request_friend("alice", "").await.unwrap();
    alice.friend(FriendAction::Accept, "carol").await.unwrap();
    assert!(get(&carol).await.unwrap() == photo);
    alice.friend(FriendAction::Remove, "bob").await.unwrap();
    assert_eq!(code(get(&bob).await), ErrorCode::NotFound);

    // A deleted moment shows nothing to anyone but the uploader.
    alice.delete_moment(posted.moment_id).await.unwrap();
    assert_eq!(code(get(&carol).await), ErrorCode::NotFound);
    assert!(get(&alice).await.unwrap() == photo);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_not_finished_in_time_are_swept_and_finished_ones_stay() {
    let srv = TestServer::with(|c| {
        c.logic.media.upload_ttl_ms = 2_000;
        c.logic.media.sweep_interval_ms = 100;
    })
    .await;
    srv.register(&["alice"]).await;
    let addr = srv.addr();
    let alice = account(&addr, "alice").await;
    let dir = srv.dir.path();

    // One upload left half done, one finished.
    let data = noise(100_000, 11);
    let c = alice
        .create_media(&data, MediaKind::MediaFile, 0)
        .await
        .unwrap();
    let _: v1::MediaChunkAck = alice
        .call(
            "media/chunk",
            &v1::MediaChunkReq {
                media_id: c.media_id.clone(),
                offset: 0,
                data: Bytes::copy_from_slice(&data[..c.chunk_size as usize]),
            },
        )
        .await
        .unwrap();
    let done = alice
        .upload(
            Bytes::from(noise(20_000, 12)),
            MediaKind::MediaFile,
            &|_, _| {},
        )
        .await
        .unwrap();
    assert_eq!(files(dir, "uploads"), 1);
    assert_eq!(files(dir, "meta"), 2);

    // Within the time the upload still resumes.
    assert_eq!(
        alice.media_status(&c.media_id).await.unwrap().next_offset,
        u64::from(c.chunk_size)
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while files(dir, "uploads") > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the abandoned upload was not swept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        code(alice.media_status(&c.media_id).await),
        ErrorCode::NotFound
    );
    let e = alice
        .upload_media(&c, Bytes::from(data), &|_, _| {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    assert_eq!(files(dir, "meta"), 1);
    assert_eq!(files(dir, "blobs"), 1);
    assert!(!alice
        .download(&done.media_id, Duration::ZERO, &|_, _| {})
        .await
        .unwrap()
        .is_empty());
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_chunks_carry_no_plaintext_and_no_token_on_the_wire() {
    let srv = TestServer::start().await;
    srv.register(&["alice"]).await;
    // A proxy that keeps every byte the client sends through it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let options = ProxyOptions {
        record: true,
        ..Default::default()
    };
    let proxy = Proxy::on(listener, srv.server.addr(), options);
    let alice = account(&proxy.addr.to_string(), "alice").await;
    // Noise with a marker in every 4 KiB: any chunk sent in plain would show one.
    let marker = b"FERRY-PLAINTEXT-MARKER-0123456789";
    let mut data = noise(200_000, 21);
    for at in (0..data.len() - marker.len()).step_by(4096) {
        data[at..at + marker.len()].copy_from_slice(marker);
    }
    let c = alice
        .create_media(&data, MediaKind::MediaFile, 0)
        .await
        .unwrap();
    assert_eq!(c.upload_key.len(), 32, "a sealed create gets an upload key");
    let m = alice
        .upload_media(&c, Bytes::from(data.clone()), &|_, _| {})
        .await
        .unwrap();
    assert_eq!(m.size, data.len() as u64);
    let wire = proxy.sent();
    let chunks = wire
        .windows(20)
        .filter(|w| w == b"POST /v1/media/chunk")
        .count();
    assert_eq!(
        chunks,
        data.len().div_ceil(8192),
        "every chunk went unsealed"
    );
    assert!(!contains(&wire, marker), "plaintext on the wire");
    assert!(!contains(&wire, &data[100..132]), "plaintext on the wire");
    let token = alice.token_now();
    assert!(!contains(&wire, token.as_bytes()), "the token on the wire");
    assert!(!contains(&wire.to_ascii_lowercase(), b"authorization:"));
    assert!(!contains(&wire, &c.upload_key), "the key on the wire");
    let back = alice
        .download(&c.media_id, Duration::ZERO, &|_, _| {})
        .await
        .unwrap();
    assert!(back == data, "the upload differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_or_misplaced_encrypted_chunk_is_refused_and_nothing_is_stored() {
    let srv = TestServer::start().await;
    srv.register(&["alice"]).await;
    let addr = srv.addr();
    let alice = account(&addr, "alice").await;
    let data = noise(5 * 8192 + 100, 31);
    let c = alice
        .create_media(&data, MediaKind::MediaFile, 0)
        .await
        .unwrap();
    let other = alice
        .create_media(&data, MediaKind::MediaFile, 0)
        .await
        .unwrap();
    let key = upload::key_from(&c.upload_key).unwrap();
    let chunk = c.chunk_size as usize;
    let raw = ShortLink::new(&addr);
    let send = |media_id: &str, offset: u64, data: Vec<u8>| {
        let (raw, req) = (
            raw.clone(),
            v1::MediaChunkReq {
                media_id: media_id.into(),
                offset,
                data: Bytes::from(data),
            },
        );
        async move {
            raw.call_unsealed::<_, v1::MediaChunkAck>("media/chunk", &req)
                .await
        }
    };
    let first = upload::seal_chunk(&key, &c.media_id, 0, &data[..chunk]).unwrap();
    let second = upload::seal_chunk(&key, &c.media_id, 8192, &data[chunk..2 * chunk]).unwrap();
    let before = received(&srv);

    let mut tampered = first.clone();
    tampered[100] ^= 1;
    let mut bad_tag = first.clone();
    *bad_tag.last_mut().unwrap() ^= 1;
    for (what, id, offset, bytes) in [
        ("altered", &c.media_id, 0, tampered),
        ("bad tag", &c.media_id, 0, bad_tag),
        ("another offset", &c.media_id, 8192, first.clone()),
        ("swapped", &c.media_id, 0, second.clone()),
        ("another upload", &other.media_id, 0, first.clone()),
        ("in plain", &c.media_id, 0, data[..chunk + 16].to_vec()),
    ] {
        let e = send(id, offset, bytes).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{what}: {e}");
        assert!(e.to_string().contains("decrypt"), "{what}: {e}");
    }
    // Without its tag, it is the wrong length.
    let e = send(&c.media_id, 0, data[..chunk].to_vec())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    // Unknown uploads.
    let e = send(&"e".repeat(32), 0, first.clone()).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    assert_eq!(received(&srv), before, "a refused chunk was stored");
    assert_eq!(
        alice.media_status(&c.media_id).await.unwrap().next_offset,
        0
    );
    assert_eq!(
        alice
            .media_status(&other.media_id)
            .await
            .unwrap()
            .next_offset,
        0
    );

    // The right chunk is taken; the same bytes again are acknowledged without a write;
    // other bytes (properly encrypted) at that acknowledged offset are refused.
    let ack = send(&c.media_id, 0, first.clone()).await.unwrap();
    assert_eq!(ack.next_offset, 8192);
    let written = received(&srv);
    assert_eq!(written, before + 8192);
    assert_eq!(send(&c.media_id, 0, first).await.unwrap().next_offset, 8192);
    assert_eq!(received(&srv), written);
    let forged = upload::seal_chunk(&key, &c.media_id, 0, &noise(chunk, 99)).unwrap();
    let e = send(&c.media_id, 0, forged).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    assert!(e.to_string().contains("acknowledged"), "{e}");
    assert_eq!(received(&srv), written);

    // The SDK finishes it; the bytes are the original ones.
    let m = alice
        .upload_media(&c, Bytes::from(data.clone()), &|_, _| {})
        .await
        .unwrap();
    assert_eq!(m.size, data.len() as u64);
    let back = alice
        .download(&c.media_id, Duration::ZERO, &|_, _| {})
        .await
        .unwrap();
    assert!(back == data, "the upload differs");
    // Finished: the key is forgotten, a chunk under it names no upload in progress.
    let late = upload::seal_chunk(&key, &c.media_id, 8192, &data[chunk..2 * chunk]).unwrap();
    assert_eq!(
        send(&c.media_id, 8192, late).await.unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    assert!(!std::fs::read_to_string(
        srv.dir
            .path()
            .join("media/meta")
            .join(format!("{}.json", c.media_id))
    )
    .unwrap()
    .contains(&hex::encode(key)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_uploads_get_no_key_and_their_chunks_need_the_token() {
    let srv = TestServer::start().await;
    srv.register(&["alice"]).await;
    let addr = srv.addr();
    let plain = ShortLink::new(&addr);
    let token = token(&addr, "alice", "plain-device").await;
    let data = noise(10_000, 41);
    let c: v1::MediaCreateResp = plain
        .call(
            "media/create",
            Some(&token),
            &v1::MediaCreateReq {
                size: data.len() as u64,
                content_type: "application/octet-stream".into(),
                sha256: hex::encode(sha2::Sha256::digest(&data)),
                kind: MediaKind::MediaFile as i32,
                chunk_size: 0,
            },
        )
        .await
        .unwrap();
    assert!(c.upload_key.is_empty(), "a key in a plaintext answer");
    let chunk = |offset: usize, end: usize| v1::MediaChunkReq {
        media_id: c.media_id.clone(),
        offset: offset as u64,
        data: Bytes::copy_from_slice(&data[offset..end]),
    };
    // Without the token, an upload without a key takes no chunk.
    let r: Result<v1::MediaChunkAck, _> = plain.call_unsealed("media/chunk", &chunk(0, 8192)).await;
    assert_eq!(code(r), ErrorCode::Unauthorized);
    for (a, b) in [(0, 8192), (8192, data.len())] {
        let _: v1::MediaChunkAck = plain
            .call("media/chunk", Some(&token), &chunk(a, b))
            .await
            .unwrap();
    }
    let r: v1::MediaFinishResp = plain
        .call(
            "media/finish",
            Some(&token),
            &v1::MediaFinishReq {
                media_id: c.media_id.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(r.media.unwrap().size, data.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_upload_cut_at_40_percent_resumes_after_both_ends_restart() {
    let srv = TestServer::start().await;
    srv.register(&["alice"]).await;
    let alice = account(&srv.addr(), "alice").await;
    let data = Bytes::from(noise(3 * 1024 * 1024 + 4321, 51));
    let size = data.len() as u64;
    let c = alice
        .create_media(&data, MediaKind::MediaFile, 0)
        .await
        .unwrap();
    assert_eq!(c.upload_key.len(), 32);
    // What an app keeps to resume: the create answer, as bytes.
    let stored = c.encode_to_vec();

    upload_part(&alice, &c, data.clone(), 40).await;
    let status = alice.media_status(&c.media_id).await.unwrap();
    assert!(!status.complete && status.next_offset < size, "{status:?}");
    drop(alice);

    // The server restarts on the same data folder (and key); a new client resumes from
    // the stored state alone.
    let TestServer { server, dir } = srv;
    server.shutdown().await;
    let server = ferry::Server::bind(test_config(dir.path())).await.unwrap();
    let srv = TestServer { server, dir };
    let alice = account(&srv.addr(), "alice").await;
    let c = v1::MediaCreateResp::decode(stored.as_slice()).unwrap();
    let r = alice
        .upload_media(&c, data.clone(), &|_, _| {})
        .await
        .unwrap();
    assert_eq!(r.size, size);
    assert!(
        received(&srv) > 0,
        "the chunks after the restart were taken"
    );
    let back = alice
        .download(&c.media_id, Duration::ZERO, &|_, _| {})
        .await
        .unwrap();
    assert!(back == data, "the resumed upload differs");
    assert_eq!(files(srv.dir.path(), "uploads"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_plaintext_is_refused_keyed_chunks_pass_and_plain_ones_do_not() {
    let srv = TestServer::with(|c| c.gateway.allow_plaintext = false).await;
    let addr = srv.addr();
    // Registered over a sealed link: plaintext is refused here.
    let key = ferry_client::Security::pinned_hex(&srv.server.gateway.public_key_hex())
        .unwrap()
        .key()
        .unwrap();
    ShortLink::sealed(&addr, Some(key))
        .register("alice", PASSWORD)
        .await
        .unwrap();
    let alice = account(&addr, "alice").await;
    let data = noise(100_000, 61);
    let m = alice
        .upload(Bytes::from(data.clone()), MediaKind::MediaFile, &|_, _| {})
        .await
        .unwrap();
    assert!(
        alice
            .download(&m.media_id, Duration::ZERO, &|_, _| {})
            .await
            .unwrap()
            == data
    );
    // A chunk with a plain token is a plaintext request: refused before logic.
    let c = alice
        .create_media(&data, MediaKind::MediaFile, 0)
        .await
        .unwrap();
    let r: Result<v1::MediaChunkAck, _> = ShortLink::new(&addr)
        .call(
            "media/chunk",
            Some(&alice.token_now()),
            &v1::MediaChunkReq {
                media_id: c.media_id.clone(),
                offset: 0,
                data: Bytes::copy_from_slice(&data[..8192]),
            },
        )
        .await;
    assert_eq!(code(r), ErrorCode::PermissionDenied);
    // Any other method unsealed without a token: refused too.
    let r: Result<v1::MediaChunkAck, _> = ShortLink::new(&addr)
        .call_unsealed(
            "media/status",
            &v1::MediaStatusReq {
                media_id: c.media_id.clone(),
            },
        )
        .await;
    assert_eq!(code(r), ErrorCode::PermissionDenied);
    assert_eq!(
        alice.media_status(&c.media_id).await.unwrap().next_offset,
        0
    );
}
