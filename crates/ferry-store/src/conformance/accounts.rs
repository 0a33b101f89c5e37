//! Conformance: [`AccountStore`](crate::AccountStore) — users, sessions, passwords.

use std::sync::Arc;

use crate::prelude::*;
use crate::StoreError;

pub async fn users_and_sessions(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "hash-a").await.unwrap();
    let b = store.create_user("bob", "hash-b").await.unwrap();
    assert_ne!(a, b);
    assert!(matches!(
        store.create_user("alice", "x").await,
        Err(StoreError::UserExists)
    ));
    let u = store.user_by_name("alice").await.unwrap().unwrap();
    assert_eq!((u.id, u.password_hash.as_str()), (a, "hash-a"));
    assert_eq!(store.user_by_id(b).await.unwrap().unwrap().name, "bob");
    assert!(store.user_by_name("carol").await.unwrap().is_none());

    store.put_session([1; 32], a, "phone").await.unwrap();
    store.put_session([2; 32], a, "laptop").await.unwrap();
    let s = store.session([1; 32]).await.unwrap().unwrap();
    assert_eq!((s.user_id, s.device_id.as_str()), (a, "phone"));
    // A new token for the same device replaces the old one.
    store.put_session([3; 32], a, "phone").await.unwrap();
    assert!(store.session([1; 32]).await.unwrap().is_none());
    assert!(store.session([3; 32]).await.unwrap().is_some());
    assert!(store.delete_session([2; 32]).await.unwrap());
    assert!(!store.delete_session([2; 32]).await.unwrap());
    assert!(store.session([2; 32]).await.unwrap().is_none());
    // A password change replaces the hash and ends every session of the user only.
    store.put_session([4; 32], a, "laptop").await.unwrap();
    store.put_session([5; 32], b, "phone").await.unwrap();
    let mut ended = store.set_password(a, "hash-a2").await.unwrap();
    ended.sort();
    assert_eq!(ended, ["laptop", "phone"]);
    assert!(store.session([3; 32]).await.unwrap().is_none());
    assert!(store.session([4; 32]).await.unwrap().is_none());
    assert!(store.session([5; 32]).await.unwrap().is_some());
    let u = store.user_by_id(a).await.unwrap().unwrap();
    assert_eq!(u.password_hash, "hash-a2");
    assert!(matches!(
        store.set_password(999_999, "x").await,
        Err(StoreError::NotFound)
    ));
}

pub async fn a_login_view_is_the_session_with_its_users_row(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    store.put_session([1; 32], a, "phone").await.unwrap();
    let v = store.login_view([1; 32]).await.unwrap().unwrap();
    assert_eq!(
        Some(&v.session),
        store.session([1; 32]).await.unwrap().as_ref()
    );
    assert_eq!(
        (v.user_name.as_str(), v.disabled, v.latest_seq),
        ("alice", None, 0)
    );
    // The newest seq as `latest_seq` has it, sent and received alike.
    store
        .append_message(super::new_msg((b, "bob"), (a, "alice"), 1, "one"))
        .await
        .unwrap();
    store
        .append_message(super::new_msg((a, "alice"), (b, "bob"), 1, "two"))
        .await
        .unwrap();
    let v = store.login_view([1; 32]).await.unwrap().unwrap();
    assert_eq!(v.latest_seq, store.latest_seq(a).await.unwrap());
    assert_eq!(v.latest_seq, 2);
    assert!(store.login_view([9; 32]).await.unwrap().is_none());
    // A session made after the user was disabled says why.
    store.set_disabled(a, Some("spam")).await.unwrap();
    assert!(
        store.login_view([1; 32]).await.unwrap().is_none(),
        "revoked"
    );
    store.put_session([2; 32], a, "laptop").await.unwrap();
    let v = store.login_view([2; 32]).await.unwrap().unwrap();
    assert_eq!(
        (v.session.device_id.as_str(), v.disabled.as_deref()),
        ("laptop", Some("spam"))
    );
}
