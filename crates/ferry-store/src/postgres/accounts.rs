//! PostgreSQL: users, sessions and passwords ([`AccountStore`]).

use async_trait::async_trait;

use super::{now_ms, PgStore};
use crate::{AccountStore, LoginView, Result, Session, StoreError, User};

fn row_user(r: &tokio_postgres::Row) -> User {
    User {
        id: r.get::<_, i64>(0) as u64,
        name: r.get(1),
        password_hash: r.get(2),
    }
}

#[async_trait]
impl AccountStore for PgStore {
    async fn create_user(&self, name: &str, password_hash: &str) -> Result<u64> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO users (name, password_hash, created_ms) VALUES ($1, $2, $3)
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

    async fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT id, name, password_hash FROM users WHERE name = $1")
            .await?;
        Ok(client
            .query_opt(&stmt, &[&name])
            .await?
            .map(|r| row_user(&r)))
    }

    async fn user_by_id(&self, id: u64) -> Result<Option<User>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT id, name, password_hash FROM users WHERE id = $1")
            .await?;
        Ok(client
            .query_opt(&stmt, &[&(id as i64)])
            .await?
            .map(|r| row_user(&r)))
    }

    async fn put_session(&self, token_hash: [u8; 32], user_id: u64, device_id: &str) -> Result<()> {
        let client = self.client().await?;
        // One statement: a new token for a device replaces the old one atomically.
        let stmt = client
            .prepare_cached(
                "INSERT INTO sessions (token_hash, user_id, device_id, created_ms)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (user_id, device_id) DO UPDATE
                 SET token_hash = excluded.token_hash, created_ms = excluded.created_ms",
            )
            .await?;
        client
            .execute(
                &stmt,
                &[&&token_hash[..], &(user_id as i64), &device_id, &now_ms()],
            )
            .await?;
        Ok(())
    }

    async fn session(&self, token_hash: [u8; 32]) -> Result<Option<Session>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT user_id, device_id, created_ms FROM sessions WHERE token_hash = $1",
            )
            .await?;
        Ok(client
            .query_opt(&stmt, &[&&token_hash[..]])
            .await?
            .map(|r| Session {
                user_id: r.get::<_, i64>(0) as u64,
                device_id: r.get(1),
                created_ms: r.get(2),
            }))
    }

    async fn login_view(&self, token_hash: [u8; 32]) -> Result<Option<LoginView>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT s.user_id, s.device_id, s.created_ms, u.name, u.disabled_reason,
                        u.last_seq
                 FROM sessions s JOIN users u ON u.id = s.user_id
                 WHERE s.token_hash = $1",
            )
            .await?;
        Ok(client
            .query_opt(&stmt, &[&&token_hash[..]])
            .await?
            .map(|r| LoginView {
                session: Session {
                    user_id: r.get::<_, i64>(0) as u64,
                    device_id: r.get(1),
                    created_ms: r.get(2),
                },
                user_name: r.get(3),
                disabled: r.get(4),
                latest_seq: r.get::<_, i64>(5) as u64,
            }))
    }

    async fn delete_session(&self, token_hash: [u8; 32]) -> Result<bool> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("DELETE FROM sessions WHERE token_hash = $1")
            .await?;
        Ok(client.execute(&stmt, &[&&token_hash[..]]).await? > 0)
    }

    async fn delete_user_sessions(&self, user: u64) -> Result<Vec<String>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("DELETE FROM sessions WHERE user_id = $1 RETURNING device_id")
            .await?;
        Ok(client
            .query(&stmt, &[&(user as i64)])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn set_password(&self, user_id: u64, password_hash: &str) -> Result<Vec<String>> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        let n = txn
            .execute(
                "UPDATE users SET password_hash = $1 WHERE id = $2",
                &[&password_hash, &(user_id as i64)],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        let devices = txn
            .query(
                "DELETE FROM sessions WHERE user_id = $1 RETURNING device_id",
                &[&(user_id as i64)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        txn.commit().await?;
        Ok(devices)
    }
}
