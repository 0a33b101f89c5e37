//! SQLite: bot accounts and their tokens ([`BotStore`]).

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::{now_ms, SqliteStore};
use crate::bots::{join_scopes, split_scopes};
use crate::{BotRow, BotStore, BotToken, Result, StoreError};

const TOKEN_COLS: &str = "id, bot_id, scopes, created_ms, last_used_ms";

fn row_token(r: &rusqlite::Row) -> rusqlite::Result<BotToken> {
    Ok(BotToken {
        id: r.get::<_, i64>(0)? as u64,
        bot_id: r.get::<_, i64>(1)? as u64,
        scopes: split_scopes(&r.get::<_, String>(2)?),
        created_ms: r.get(3)?,
        last_used_ms: r.get(4)?,
    })
}

#[async_trait]
impl BotStore for SqliteStore {
    async fn create_bot(&self, name: &str, password_hash: &str) -> Result<u64> {
        let (name, hash) = (name.to_owned(), password_hash.to_owned());
        self.write(move |txn, _| {
            let exists = txn
                .prepare_cached("SELECT 1 FROM users WHERE name = ?1")?
                .exists([&name])?;
            if exists {
                return Err(StoreError::UserExists);
            }
            txn.prepare_cached(
                "INSERT INTO users (name, password_hash, created_ms, bot) VALUES (?1, ?2, ?3, 1)",
            )?
            .execute(params![name, hash, now_ms()])?;
            Ok(txn.last_insert_rowid() as u64)
        })
        .await
    }

    async fn is_bot(&self, user_id: u64) -> Result<bool> {
        self.read(move |c| {
            Ok(c.prepare_cached("SELECT bot FROM users WHERE id = ?1")?
                .query_row([user_id as i64], |r| r.get::<_, i64>(0))
                .optional()?
                .is_some_and(|b| b != 0))
        })
        .await
    }

    async fn bots(&self) -> Result<Vec<BotRow>> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT id, name, created_ms FROM users WHERE bot = 1 ORDER BY name",
            )?
            .query_map([], |r| {
                Ok(BotRow {
                    id: r.get::<_, i64>(0)? as u64,
                    name: r.get(1)?,
                    created_ms: r.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn add_bot_token(
        &self,
        bot_id: u64,
        token_hash: [u8; 32],
        scopes: Vec<String>,
    ) -> Result<u64> {
        self.write(move |txn, _| {
            txn.prepare_cached(
                "INSERT INTO bot_tokens (bot_id, token_hash, scopes, created_ms, last_used_ms)
                 VALUES (?1, ?2, ?3, ?4, 0)",
            )?
            .execute(params![
                bot_id as i64,
                &token_hash[..],
                join_scopes(&scopes),
                now_ms()
            ])?;
            Ok(txn.last_insert_rowid() as u64)
        })
        .await
    }

    async fn bot_token(&self, token_hash: [u8; 32]) -> Result<Option<BotToken>> {
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {TOKEN_COLS} FROM bot_tokens WHERE token_hash = ?1"
            ))?
            .query_row([&token_hash[..]], row_token)
            .optional()?)
        })
        .await
    }

    async fn bot_tokens(&self, bot_id: u64) -> Result<Vec<BotToken>> {
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {TOKEN_COLS} FROM bot_tokens WHERE bot_id = ?1 ORDER BY id"
            ))?
            .query_map([bot_id as i64], row_token)?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn revoke_bot_token(&self, bot_id: u64, token_id: u64) -> Result<bool> {
        self.write(move |txn, _| {
            Ok(txn
                .prepare_cached("DELETE FROM bot_tokens WHERE bot_id = ?1 AND id = ?2")?
                .execute(params![bot_id as i64, token_id as i64])?
                > 0)
        })
        .await
    }

    async fn touch_bot_token(&self, token_id: u64, now_ms: i64) -> Result<()> {
        self.write(move |txn, _| {
            txn.prepare_cached("UPDATE bot_tokens SET last_used_ms = ?2 WHERE id = ?1")?
                .execute(params![token_id as i64, now_ms])?;
            Ok(())
        })
        .await
    }

    async fn sent_message_id(&self, sender_id: u64, client_msg_id: u64) -> Result<Option<u64>> {
        // Asked of the writer, which holds the keys not yet merged into `message_keys`
        // (writer.rs, `KeyTail`); answered once its batch committed, so a message of a
        // batch that failed is never reported stored.
        self.write(move |txn, state| {
            Ok(state
                .stored_message(txn, sender_id, client_msg_id)?
                .map(|m| m.msg_id))
        })
        .await
    }
}
