//! Conformance: [`SocialStore`](crate::SocialStore) — friendships, avatars, moments,
//! likes and comments.

use std::sync::Arc;

use ferry_proto::v1;

use super::friend_event;
use crate::prelude::*;
use crate::{Avatar, FriendChange, FriendRow, MomentRow, NewEvent, StoreError};

pub async fn friendships_are_conditional_and_versioned(store: Arc<dyn Store>) {
    use v1::FriendState as S;
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    let row = |user, peer, state: S| FriendRow {
        user_id: user,
        peer_id: peer,
        state: state as i32,
        greeting: "hello".into(),
        version: 0,
        updated_ms: 0,
    };
    assert!(store.friendship(a, b).await.unwrap().is_none());
    // a asks b: both rows and b's inbox event in one step.
    let seqs = store
        .change_friends(FriendChange {
            expect: vec![(a, b, S::None as i32), (b, a, S::None as i32)],
            rows: vec![row(a, b, S::RequestOut), row(b, a, S::RequestIn)],
            events: vec![NewEvent {
                user_id: b,
                entry: friend_event("alice", 7),
            }],
            time_ms: 7,
        })
        .await
        .unwrap();
    assert_eq!(seqs, [1]);
    let r = store.friendship(b, a).await.unwrap().unwrap();
    assert_eq!(
        (r.state, r.greeting.as_str(), r.updated_ms),
        (S::RequestIn as i32, "hello", 7)
    );
    // The same request again fails its expectation and writes nothing.
    let again = store
        .change_friends(FriendChange {
            expect: vec![(a, b, S::None as i32)],
            rows: vec![row(a, b, S::RequestOut)],
            events: vec![NewEvent {
                user_id: b,
                entry: friend_event("alice", 8),
            }],
            time_ms: 8,
        })
        .await;
    assert!(matches!(again, Err(StoreError::Conflict)));
    assert_eq!(store.latest_seq(b).await.unwrap(), 1);

    let full = store.friends(a, 0).await.unwrap();
    assert_eq!(full.rows.len(), 1);
    let v1_ = full.version;
    assert!(v1_ > 0);
    // b accepts: both become friends.
    store
        .change_friends(FriendChange {
            expect: vec![(b, a, S::RequestIn as i32)],
            rows: vec![row(a, b, S::Friend), row(b, a, S::Friend)],
            events: vec![],
            time_ms: 9,
        })
        .await
        .unwrap();
    let delta = store.friends(a, v1_).await.unwrap();
    assert_eq!(delta.rows.len(), 1);
    assert_eq!(delta.rows[0].state, S::Friend as i32);
    assert!(delta.version > v1_);
    assert!(store
        .friends(a, delta.version)
        .await
        .unwrap()
        .rows
        .is_empty());
    // Removal: delta lists show the tombstone, full lists do not.
    store
        .change_friends(FriendChange {
            expect: vec![],
            rows: vec![row(a, b, S::Removed), row(b, a, S::Removed)],
            events: vec![],
            time_ms: 10,
        })
        .await
        .unwrap();
    assert!(store.friends(a, 0).await.unwrap().rows.is_empty());
    let delta2 = store.friends(a, delta.version).await.unwrap();
    assert_eq!(delta2.rows[0].state, S::Removed as i32);
}

pub async fn avatars_are_replaced(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    assert!(store.avatar(a).await.unwrap().is_none());
    let av = Avatar {
        etag: "\"e1\"".into(),
        content_type: "image/jpeg".into(),
        image: vec![1, 2, 3],
        thumb: vec![4],
        updated_ms: 5,
    };
    store.set_avatar(a, av.clone()).await.unwrap();
    assert_eq!(store.avatar(a).await.unwrap(), Some(av.clone()));
    let av2 = Avatar {
        etag: "\"e2\"".into(),
        ..av
    };
    store.set_avatar(a, av2.clone()).await.unwrap();
    assert_eq!(store.avatar(a).await.unwrap(), Some(av2));
}

pub async fn moments_likes_and_comments(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    let c = store.create_user("carol", "h").await.unwrap();
    let m = |id: u64, author: u64| MomentRow {
        id,
        author_id: author,
        text: format!("moment {id}"),
        media_ids: vec!["m1".into(), "m2".into()],
        time_ms: id as i64,
    };
    let ev = |user| NewEvent {
        user_id: user,
        entry: friend_event("x", 1),
    };
    let seqs = store
        .add_moment(m(10, a), vec![ev(b), ev(c)])
        .await
        .unwrap();
    assert_eq!(seqs, [1, 1]);
    store.add_moment(m(20, b), vec![]).await.unwrap();
    store.add_moment(m(30, a), vec![]).await.unwrap();
    store.add_moment(m(40, c), vec![]).await.unwrap();
    assert_eq!(store.moment(10).await.unwrap(), Some(m(10, a)));

    let page = store.timeline(&[a, b], 0, 2).await.unwrap();
    assert_eq!(page.iter().map(|x| x.id).collect::<Vec<_>>(), [30, 20]);
    let page = store.timeline(&[a, b], 20, 2).await.unwrap();
    assert_eq!(page.iter().map(|x| x.id).collect::<Vec<_>>(), [10]);
    assert!(store.timeline(&[], 0, 10).await.unwrap().is_empty());

    assert!(store.set_like(10, b, true, 50, Some(ev(a))).await.unwrap());
    assert!(
        !store.set_like(10, b, true, 51, Some(ev(a))).await.unwrap(),
        "a like is once"
    );
    assert_eq!(
        store.latest_seq(a).await.unwrap(),
        1,
        "no event for a repeated like"
    );
    assert!(store.set_like(10, c, true, 52, None).await.unwrap());
    let cid = store
        .add_comment(10, c, "nice", 60, Some(ev(a)))
        .await
        .unwrap();
    assert!(cid > 0);
    assert!(matches!(
        store.add_comment(99, c, "x", 1, None).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.set_like(99, c, true, 1, None).await,
        Err(StoreError::NotFound)
    ));
    let r = store.reactions(&[10, 20]).await.unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!((r[0].user_id, r[0].comment_id), (b, 0));
    assert_eq!(
        (r[2].user_id, r[2].comment_id, r[2].text.as_str()),
        (c, cid, "nice")
    );
    assert!(store.set_like(10, b, false, 70, None).await.unwrap());
    assert_eq!(store.reactions(&[10]).await.unwrap().len(), 2);

    assert!(store.delete_moment(10).await.unwrap());
    assert!(!store.delete_moment(10).await.unwrap());
    assert!(store.moment(10).await.unwrap().is_none());
    assert!(store.reactions(&[10]).await.unwrap().is_empty());
}
