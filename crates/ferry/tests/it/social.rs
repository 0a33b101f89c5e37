//! The short link's state services end to end through the SDK: friends, avatars,
//! logout, client log reports, moments — and who may do what.

use std::io::Cursor;

use ferry_client::{Event, FriendAction, ShortLink};
use ferry_proto::v1::{self, friend_event, moment_event, ErrorCode, FriendState};
use ferry_testkit::*;
/// Waits for the next non-message entry.
async fn next_event(ev: &mut tokio::sync::mpsc::Receiver<Event>) -> v1::entry::Kind {
    event_where(ev, 10, |e| match e {
        Event::Entry(v1::Entry { kind: Some(k), .. })
            if !matches!(k, v1::entry::Kind::Message(_)) =>
        {
            Some(k)
        }
        _ => None,
    })
    .await
}

fn friend_kind(k: &v1::entry::Kind) -> (friend_event::Kind, String, String) {
    match k {
        v1::entry::Kind::Friend(f) => (f.kind(), f.peer.clone(), f.greeting.clone()),
        other => panic!("not a friend event: {other:?}"),
    }
}

async fn befriend(addr: &str, a: &str, b: &str) {
    account(addr, a).await.request_friend(b, "").await.unwrap();
    let r = account(addr, b)
        .await
        .friend(FriendAction::Accept, a)
        .await
        .unwrap();
    assert_eq!(r.state(), FriendState::Friend);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friend_requests_reach_offline_users_and_open_messaging() {
    let srv = TestServer::with(|c| c.logic.open_messaging = false).await;
    srv.register(&["alice", "bob", "carol"]).await;
    let addr = srv.addr();
    let (alice, mut alice_ev) = connect(&addr, "alice").await;
    let acc = alice.account();

    // Strangers may not message each other by default.
    assert_eq!(
        code(alice.send_text("bob", "hi?").await),
        ErrorCode::PermissionDenied
    );

    // Bob is offline when the request is made.
    let r = acc.request_friend("bob", "it's alice").await.unwrap();
    assert_eq!(r.state(), FriendState::RequestOut);
    let (k, peer, _) = friend_kind(&next_event(&mut alice_ev).await);
    assert_eq!((k, peer.as_str()), (friend_event::Kind::RequestSent, "bob"));
    assert_eq!(
        code(acc.request_friend("nobody", "").await),
        ErrorCode::UnknownUser
    );
    assert_eq!(
        code(acc.request_friend("alice", "").await),
        ErrorCode::InvalidArgument
    );

    // Bob logs in later: the request is waiting in his inbox.
    let (bob, mut bob_ev) = connect(&addr, "bob").await;
    let (k, peer, greeting) = friend_kind(&next_event(&mut bob_ev).await);
    assert_eq!(
        (k, peer.as_str(), greeting.as_str()),
        (friend_event::Kind::RequestReceived, "alice", "it's alice")
    );
    let list = bob.account().friends(0).await.unwrap();
    assert_eq!(list.friends.len(), 1);
    assert_eq!(list.friends[0].state(), FriendState::RequestIn);
    assert_eq!(list.friends[0].greeting, "it's alice");
    let version = list.version;

    bob.account()
        .friend(FriendAction::Accept, "alice")
        .await
        .unwrap();
    let (k, peer, _) = friend_kind(&next_event(&mut alice_ev).await);
    assert_eq!((k, peer.as_str()), (friend_event::Kind::Added, "bob"));
    // A delta list holds only what changed.
    let delta = bob.account().friends(version).await.unwrap();
    assert!(!delta.full);
    assert_eq!(delta.friends.len(), 1);
    assert_eq!(delta.friends[0].state(), FriendState::Friend);
    assert!(bob
        .account()
        .friends(delta.version)
        .await
        .unwrap()
        .friends
        .is_empty());

    // Friends can talk now.
    alice.send_text("bob", "hello friend").await.unwrap();
    assert_eq!(
        recv_messages(&mut bob_ev, "bob", 1, 10).await[0].1.text,
        "hello friend"
    );

    // Carol asks alice, alice declines; carol's request is gone.
    account(&addr, "carol")
        .await
        .request_friend("alice", "")
        .await
        .unwrap();
    // Accepting someone who already is a friend changes nothing.
    assert_eq!(
        acc.friend(FriendAction::Accept, "bob")
            .await
            .unwrap()
            .state(),
        FriendState::Friend
    );
    acc.friend(FriendAction::Decline, "carol").await.unwrap();
    assert_eq!(
        code(acc.friend(FriendAction::Accept, "carol").await),
        ErrorCode::NotFound
    );

    // Removing ends it on both sides.
    acc.friend(FriendAction::Remove, "bob").await.unwrap();
    assert!(acc.friends(0).await.unwrap().friends.is_empty());
    assert_eq!(
        code(bob.send_text("alice", "still there?").await),
        ErrorCode::PermissionDenied
    );

    // A block stops requests and messages, even with open messaging.
    bob.account()
        .friend(FriendAction::Block, "alice")
        .await
        .unwrap();
    assert_eq!(
        code(acc.request_friend("bob", "again").await),
        ErrorCode::PermissionDenied
    );
    bob.account()
        .friend(FriendAction::Unblock, "alice")
        .await
        .unwrap();
    acc.request_friend("bob", "again").await.unwrap();
    alice.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_users_cannot_message_even_when_messaging_is_open() {
    let srv = TestServer::start().await;
    srv.register(&["alice", "bob"]).await;
    let addr = srv.addr();
    let (alice, _a) = connect(&addr, "alice").await;
    alice.send_text("bob", "open messaging").await.unwrap();
    account(&addr, "bob")
        .await
        .friend(FriendAction::Block, "alice")
        .await
        .unwrap();
    assert_eq!(
        code(alice.send_text("bob", "blocked").await),
        ErrorCode::PermissionDenied
    );
    alice.close().await;
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 99]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avatars_are_resized_cached_and_checked() {
    let srv = TestServer::start().await;
    srv.register(&["alice", "bob"]).await;
    let addr = srv.addr();
    let alice = account(&addr, "alice").await;
    let bob = account(&addr, "bob").await;

    assert_eq!(
        code(bob.avatar("alice", false, None).await),
        ErrorCode::NotFound
    );
    // Not an image (whatever the client claims), a truncated one, and an oversized one.
    assert_eq!(
        code(alice.set_avatar(b"GIF89a fake".to_vec()).await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(alice.set_avatar(png(40, 40)[..60].to_vec()).await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(alice.set_avatar(vec![0x89; 3 * 1024 * 1024 + 1]).await),
        ErrorCode::TooLarge
    );
    assert_eq!(
        code(bob.avatar("alice", false, None).await),
        ErrorCode::NotFound,
        "nothing stored"
    );

    let etag = alice.set_avatar(png(500, 300)).await.unwrap();
    let (img, got_etag) = bob.avatar("alice", false, None).await.unwrap().unwrap();
    assert_eq!(got_etag, etag);
    let decoded = image::load_from_memory(&img).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (256, 256));
    let (thumb, thumb_etag) = bob.avatar("alice", true, None).await.unwrap().unwrap();
    let decoded = image::load_from_memory(&thumb).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (64, 64));
    assert_ne!(thumb_etag, etag);
    // If-None-Match → 304.
    assert!(bob
        .avatar("alice", false, Some(&etag))
        .await
        .unwrap()
        .is_none());
    assert!(bob
        .avatar("alice", true, Some(&thumb_etag))
        .await
        .unwrap()
        .is_none());
    // A new avatar changes the tag.
    let etag2 = alice.set_avatar(png(64, 64)).await.unwrap();
    assert_ne!(etag, etag2);
    assert!(bob
        .avatar("alice", false, Some(&etag))
        .await
        .unwrap()
        .is_some());
    assert_eq!(bob.find_user("alice").await.unwrap().avatar_etag, etag2);
    assert_eq!(
        code(bob.avatar("nobody", false, None).await),
        ErrorCode::UnknownUser
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_the_token_and_closes_the_long_link() {
    let srv = TestServer::start().await;
    srv.register(&["alice", "bob"]).await;
    let addr = srv.addr();
    let (phone, mut phone_ev) = connect(&addr, "alice").await;
    let (laptop, mut laptop_ev) = connect(&addr, "alice").await;
    let phone_token = phone.account().token_now();
    assert!(!phone_token.is_empty());

    assert_eq!(phone.account().logout(false).await.unwrap(), 1);
    // The token no longer works on the short link …
    let short = ShortLink::new(&addr);
    assert_eq!(
        code(short.newsync(&phone_token, 0, 10).await),
        ErrorCode::Unauthorized
    );
    // … and the long link was closed with KICKED: the client stops for good.
    let stopped = event_where(&mut phone_ev, 10, |ev| match ev {
        Event::Stopped { error } => Some(error),
        _ => None,
    })
    .await;
    assert_eq!(stopped.code(), Some(ErrorCode::Kicked));
    // A raw link with the old token is refused.
    let mut raw = RawLink::connect(&addr).await;
    assert_eq!(raw.login(&phone_token).await.cmd, ferry_proto::cmd::ERROR);
    // The other device is untouched until "log out everywhere".
    let laptop_token = laptop.account().token_now();
    assert!(short.newsync(&laptop_token, 0, 10).await.is_ok());
    let other = account(&addr, "alice").await;
    assert_eq!(
        other.logout(true).await.unwrap(),
        2,
        "laptop and the new device"
    );
    assert_eq!(
        code(short.newsync(&laptop_token, 0, 10).await),
        ErrorCode::Unauthorized
    );
    event_where(&mut laptop_ev, 10, |ev| {
        matches!(ev, Event::Stopped { .. }).then_some(())
    })
    .await;
    phone.close().await;
    laptop.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reports_are_checked_and_kept() {
    let srv = TestServer::start().await;
    srv.register(&["alice"]).await;
    let addr = srv.addr();
    let alice = account(&addr, "alice").await;
    let data = b"panic at main.rs:1\nbacktrace...".to_vec();
    let id = alice
        .report("crash", "crash.txt", data.clone())
        .await
        .unwrap();
    let store = srv.server.store.clone();
    let (info, got) = store.report(id).await.unwrap().unwrap();
    assert_eq!(got, data);
    assert_eq!(
        (info.kind.as_str(), info.file_name.as_str(), info.length),
        ("crash", "crash.txt", data.len() as u64)
    );

    // Wrong MD5, wrong length, oversized: refused, nothing stored.
    let bad = |length: u64, md5: &str, data: Vec<u8>| v1::ReportReq {
        client_version: "t".into(),
        kind: "log".into(),
        file_name: "x.log".into(),
        length,
        md5: md5.into(),
        data: data.into(),
    };
    let right_md5 = "0cc175b9c0f1b6a831c399e269772661"; // md5("a")
    let r: Result<v1::ReportResp, _> = alice
        .call(
            "report",
            &bad(1, "00000000000000000000000000000000", b"a".to_vec()),
        )
        .await;
    assert_eq!(code(r), ErrorCode::ChecksumMismatch);
    let r: Result<v1::ReportResp, _> = alice
        .call("report", &bad(2, right_md5, b"a".to_vec()))
        .await;
    assert_eq!(code(r), ErrorCode::ChecksumMismatch);
    let r: Result<v1::ReportResp, _> = alice
        .call("report", &bad(1, right_md5, b"a".to_vec()))
        .await;
    assert!(r.is_ok(), "the right length and MD5 pass");
    // The MD5's hex digits in any case, blanks around them ignored.
    let upper = format!(" {} ", right_md5.to_ascii_uppercase());
    let r: Result<v1::ReportResp, _> = alice.call("report", &bad(1, &upper, b"a".to_vec())).await;
    assert!(r.is_ok(), "upper-case MD5 passes");
    let big = vec![b'x'; 2 * 1024 * 1024 + 10];
    assert_eq!(
        code(alice.report("log", "big.log", big).await),
        ErrorCode::TooLarge
    );
    assert_eq!(store.reports(0, 100).await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moments_follow_friendship_and_wechat_comment_visibility() {
    let srv = TestServer::start().await;
    srv.register(&["alice", "bob", "carol", "dave"]).await;
    let addr = srv.addr();
    befriend(&addr, "alice", "bob").await;
    befriend(&addr, "alice", "carol").await;
    let (a, b, c, d) = (
        account(&addr, "alice").await,
        account(&addr, "bob").await,
        account(&addr, "carol").await,
        account(&addr, "dave").await,
    );
    let (bob_client, mut bob_ev) = connect(&addr, "bob").await;

    // A moment shows media its author uploaded (tests/media.rs: who may read it).
    let pic = a
        .upload(
            bytes::Bytes::from_static(b"a sunset, in words"),
            v1::MediaKind::MediaFile,
            &|_, _| {},
        )
        .await
        .unwrap();
    let posted = a
        .post_moment("sunset", vec![pic.media_id.clone()])
        .await
        .unwrap();
    // Bob (a friend) gets an inbox entry for the new moment.
    loop {
        if let v1::entry::Kind::Moment(m) = next_event(&mut bob_ev).await {
            assert_eq!(
                (m.kind(), m.moment_id, m.by.as_str()),
                (moment_event::Kind::Posted, posted.moment_id, "alice")
            );
            break;
        }
    }
    // Dave (a stranger) sees nothing and can touch nothing.
    assert!(d.timeline(0, 20).await.unwrap().moments.is_empty());
    assert_eq!(
        code(d.like_moment(posted.moment_id, false).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(d.comment_moment(posted.moment_id, "hi").await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(d.delete_moment(posted.moment_id).await),
        ErrorCode::NotFound
    );

    // Carol comments and likes; Bob is not Carol's friend, so he sees neither.
    c.comment_moment(posted.moment_id, "beautiful")
        .await
        .unwrap();
    c.like_moment(posted.moment_id, false).await.unwrap();
    b.like_moment(posted.moment_id, false).await.unwrap();
    let seen_by_bob = &b.timeline(0, 20).await.unwrap().moments[0];
    assert_eq!(
        (seen_by_bob.author.as_str(), seen_by_bob.text.as_str()),
        ("alice", "sunset")
    );
    assert_eq!(seen_by_bob.media_ids, [pic.media_id]);
    assert!(
        seen_by_bob.comments.is_empty(),
        "carol's comment is hidden from bob"
    );
    assert_eq!(
        seen_by_bob
            .likes
            .iter()
            .map(|l| l.username.as_str())
            .collect::<Vec<_>>(),
        ["bob"]
    );
    // Alice, the author, sees everything.
    let seen_by_alice = &a.timeline(0, 20).await.unwrap().moments[0];
    assert_eq!(seen_by_alice.comments.len(), 1);
    assert_eq!(seen_by_alice.likes.len(), 2);
    // Once Bob and Carol are friends, Bob sees Carol's comment.
    befriend(&addr, "bob", "carol").await;
    let seen_by_bob = &b.timeline(0, 20).await.unwrap().moments[0];
    assert_eq!(seen_by_bob.comments[0].username, "carol");
    assert_eq!(seen_by_bob.comments[0].text, "beautiful");

    // Only the author deletes.
    assert_eq!(
        code(b.delete_moment(posted.moment_id).await),
        ErrorCode::PermissionDenied
    );
    // Paging: newest first, with a cursor.
    for i in 0..5 {
        a.post_moment(&format!("m{i}"), vec![]).await.unwrap();
    }
    let p1 = b.timeline(0, 4).await.unwrap();
    assert_eq!(
        p1.moments
            .iter()
            .map(|m| m.text.as_str())
            .collect::<Vec<_>>(),
        ["m4", "m3", "m2", "m1"]
    );
    let p2 = b.timeline(p1.next_cursor, 4).await.unwrap();
    assert_eq!(
        p2.moments
            .iter()
            .map(|m| m.text.as_str())
            .collect::<Vec<_>>(),
        ["m0", "sunset"]
    );
    assert_eq!(p2.next_cursor, 0);
    a.delete_moment(posted.moment_id).await.unwrap();
    assert_eq!(b.timeline(0, 20).await.unwrap().moments.len(), 5);
    assert_eq!(
        code(a.post_moment("", vec![]).await),
        ErrorCode::InvalidArgument
    );
    bob_client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix_and_malformed_bodies() {
    let srv = TestServer::start().await;
    srv.register(&["alice", "bob"]).await;
    let addr = srv.addr();
    let short = ShortLink::new(&addr);
    let revoked = {
        let a = account(&addr, "alice").await;
        let t = a.token_now();
        a.logout(false).await.unwrap();
        t
    };
    let good = account(&addr, "bob").await.token_now();
    // Every method that needs a session, with no token, a revoked one, and garbage.
    let needs_token = [
        "newsync",
        "logout",
        "user/find",
        "friends/request",
        "friends/accept",
        "friends/decline",
        "friends/remove",
        "friends/block",
        "friends/unblock",
        "friends/list",
        "avatar/set",
        "report",
        "moments/post",
        "moments/timeline",
        "moments/like",
        "moments/comment",
        "moments/delete",
    ];
    for method in needs_token {
        for token in [None, Some(revoked.as_str()), Some("garbage")] {
            let r: Result<v1::Empty, _> = short.call(method, token, &v1::Empty {}).await;
            assert_eq!(code(r), ErrorCode::Unauthorized, "{method} with {token:?}");
        }
        // A malformed body with a good token: BAD_REQUEST, never a crash.
        let garbage = RawBody(vec![0x0a, 0xff, 0xff]);
        let r: Result<v1::Empty, _> = short.call(method, Some(&good), &garbage).await;
        assert_eq!(
            code(r),
            ErrorCode::BadRequest,
            "{method} with a malformed body"
        );
    }
    // The server is unharmed.
    let (bob, _ev) = connect(&addr, "bob").await;
    bob.send_text("bob", "note to self").await.unwrap();
    bob.close().await;
}

/// Pre-encoded bytes, sent as a protobuf body as they are.
#[derive(Clone, PartialEq, Default)]
struct RawBody(Vec<u8>);

impl std::fmt::Debug for RawBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawBody({} bytes)", self.0.len())
    }
}

impl prost::Message for RawBody {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        buf.put_slice(&self.0);
    }
    fn merge_field(
        &mut self,
        _tag: u32,
        _wire_type: prost::encoding::WireType,
        _buf: &mut impl bytes::Buf,
        _ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        Ok(())
    }
    fn encoded_len(&self) -> usize {
        self.0.len()
    }
    fn clear(&mut self) {
        self.0.clear();
    }
}
