//! PostgreSQL: bot accounts and their tokens ([`BotStore`]).

use async_trait::async_trait;

use super::{now_ms, PgStore};
use crate::bots::{join_scopes, split_scopes};
use crate::{BotRow, BotStore, BotToken, Result, StoreError};

const TOKEN_COLS: &str = "id, bot_id, scopes, created_ms, last_used_ms";

fn row_token(r: &tokio_postgres::Row) -> BotToken {
    BotToken {
        id: r.get::<_, i64>(0) as u64,
        bot_id: r.get::<_, i64>(1) as u64,
        scopes: split_scopes(r.get::<_, &str>(2)),
        created_ms: r.get(3),
        last_used_ms: r.get(4),
    }
}

#[async_trait]
impl BotStore for PgStore {
    async fn create_bot(&self, name: &str, password_hash: &str) -> Result<u64> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO users (name, password_hash, created_ms, bot) VALUES ($1, $2, $3, TRUE)
                 ON CONFLICT (name) DO NOTHING RETURNING id",
            )
            .await?;
        match client
            .query_opt(&stmt, &[&name, &password_hash, &now_ms()])
            .await?
        {
            Some(r) => Ok(r.get::<_, i64>(0) as u64),
            None => Err(StoreError::UserExists),
        }
    }

    async fn is_bot(&self, user_id: u64) -> Result<bool> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT bot FROM users WHERE id = $1")
            .await?;
        Ok(client
            .query_opt(&stmt, &[&(user_id as i64)])
            .await?
            .is_some_and(|r| r.get::<_, bool>(0)))
    }

    async fn bots(&self) -> Result<Vec<BotRow>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT id, name, created_ms FROM users WHERE bot ORDER BY name")
            .await?;
        Ok(client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(|r| BotRow {
                id: r.get::<_, i64>(0) as u64,
                name: r.get(1),
                created_ms: r.get(2),
            })
            .collect())
    }

    async fn add_bot_token(
        &self,
        bot_id: u64,
        token_hash: [u8; 32],
        scopes: Vec<String>,
    ) -> Result<u64> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO bot_tokens (bot_id, token_hash, scopes, created_ms, last_used_ms)
                 VALUES ($1, $2, $3, $4, 0) RETURNING id",
            )
            .await?;
        Ok(client
            .query_one(
                &stmt,
                &[
                    &(bot_id as i64),
                    &&token_hash[..],
                    &join_scopes(&scopes),
                    &now_ms(),
                ],
            )
            .await?
            .get::<_, i64>(0) as u64)
    }

    async fn bot_token(&self, token_hash: [u8; 32]) -> Result<Option<BotToken>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {TOKEN_COLS} FROM bot_tokens WHERE token_hash = $1"
            ))
            .await?;
        Ok(client
            .query_opt(&stmt, &[&&token_hash[..]])
            .await?
            .map(|r| row_token(&r)))
    }

    async fn bot_tokens(&self, bot_id: u64) -> Result<Vec<BotToken>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {TOKEN_COLS} FROM bot_tokens WHERE bot_id = $1 ORDER BY id"
            ))
            .await?;
        Ok(client
            .query(&stmt, &[&(bot_id as i64)])
            .await?
            .iter()
            .map(row_token)
            .collect())
    }

    async fn revoke_bot_token(&self, bot_id: u64, token_id: u64) -> Result<bool> {
        let client = self.client().await?;
        Ok(client
            .execute(
                "DELETE FROM bot_tokens WHERE bot_id = $1 AND id = $2",
                &[&(bot_id as i64), &(token_id as i64)],
            )
            .await?
            > 0)
    }

    async fn touch_bot_token(&self, token_id: u64, now_ms: i64) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE bot_tokens SET last_used_ms = $2 WHERE id = $1",
                &[&(token_id as i64), &now_ms],
            )
            .await?;
        Ok(())
    }

    async fn sent_message_id(&self, sender_id: u64, client_msg_id: u64) -> Result<Option<u64>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT id FROM messages WHERE sender_id = $1 AND client_msg_id = $2")
            .await?;
        Ok(client
            .query_opt(&stmt, &[&(sender_id as i64), &(client_msg_id as i64)])
            .await?
            .map(|r| r.get::<_, i64>(0) as u64))
    }
}
