//! Conformance: [`BotStore`](crate::BotStore) — bot accounts and their tokens.

use std::sync::Arc;

use crate::prelude::*;
use crate::StoreError;

use super::new_msg;

pub async fn bots_and_their_tokens(store: Arc<dyn Store>) {
    let alice = store.create_user("alice", "h").await.unwrap();
    let bot = store.create_bot("helper", "!").await.unwrap();
    assert!(matches!(
        store.create_bot("alice", "!").await,
        Err(StoreError::UserExists)
    ));
    assert!(matches!(
        store.create_user("helper", "h").await,
        Err(StoreError::UserExists)
    ));
    // A bot is a user: found by name and id like any other.
    assert_eq!(store.user_by_name("helper").await.unwrap().unwrap().id, bot);
    assert!(store.is_bot(bot).await.unwrap());
    assert!(!store.is_bot(alice).await.unwrap());
    assert!(!store.is_bot(999_999).await.unwrap());
    let other = store.create_bot("another", "!").await.unwrap();
    let bots = store.bots().await.unwrap();
    assert_eq!(
        bots.iter()
            .map(|b| (b.id, b.name.as_str()))
            .collect::<Vec<_>>(),
        [(other, "another"), (bot, "helper")]
    );
    assert!(bots[0].created_ms > 0);

    let t1 = store
        .add_bot_token(bot, [1; 32], vec!["send".into(), "read".into()])
        .await
        .unwrap();
    let t2 = store
        .add_bot_token(bot, [2; 32], vec!["read".into()])
        .await
        .unwrap();
    let got = store.bot_token([1; 32]).await.unwrap().unwrap();
    assert_eq!((got.id, got.bot_id), (t1, bot));
    assert_eq!(got.scopes, ["send", "read"]);
    assert_eq!(got.last_used_ms, 0);
    assert!(store.bot_token([3; 32]).await.unwrap().is_none());
    store.touch_bot_token(t1, 12_345).await.unwrap();
    assert_eq!(
        store
            .bot_token([1; 32])
            .await
            .unwrap()
            .unwrap()
            .last_used_ms,
        12_345
    );
    let list = store.bot_tokens(bot).await.unwrap();
    assert_eq!(list.iter().map(|t| t.id).collect::<Vec<_>>(), [t1, t2]);
    assert!(store.bot_tokens(other).await.unwrap().is_empty());
    // Revoking: only the bot's own token, once.
    assert!(!store.revoke_bot_token(other, t1).await.unwrap());
    assert!(store.revoke_bot_token(bot, t1).await.unwrap());
    assert!(!store.revoke_bot_token(bot, t1).await.unwrap());
    assert!(store.bot_token([1; 32]).await.unwrap().is_none());
    assert!(store.bot_token([2; 32]).await.unwrap().is_some());
    // Empty scopes stay empty.
    store.add_bot_token(other, [4; 32], vec![]).await.unwrap();
    assert!(store
        .bot_token([4; 32])
        .await
        .unwrap()
        .unwrap()
        .scopes
        .is_empty());
}

pub async fn sent_message_ids_are_found_by_client_msg_id(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let b = store.create_user("bob", "h").await.unwrap();
    assert!(store.sent_message_id(a, 7).await.unwrap().is_none());
    let done = store
        .append_message(new_msg((a, "alice"), (b, "bob"), 7, "hi"))
        .await
        .unwrap();
    assert_eq!(
        store.sent_message_id(a, 7).await.unwrap(),
        Some(done.msg_id)
    );
    // Per sender.
    assert!(store.sent_message_id(b, 7).await.unwrap().is_none());
    assert!(store.sent_message_id(a, 8).await.unwrap().is_none());
}
