//! SQLite: users, sessions and passwords ([`AccountStore`]).

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, Transaction};

use super::{now_ms, SqliteStore};
use crate::{AccountStore, LoginView, Result, Session, StoreError, User};

fn row_user(r: &rusqlite::Row) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get::<_, i64>(0)? as u64,
        name: r.get(1)?,
        password_hash: r.get(2)?,
    })
}

/// Ends every session of a user (alone, or with a password change); returns the device
/// ids that had one.
fn delete_user_sessions(txn: &Transaction, user: u64) -> Result<Vec<String>> {
    let devices = txn
        .prepare_cached("SELECT device_id FROM sessions WHERE user_id = ?1")?
        .query_map([user as i64], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    txn.prepare_cached("DELETE FROM sessions WHERE user_id = ?1")?
        .execute([user as i64])?;
    Ok(devices)
}

#[async_trait]
impl AccountStore for SqliteStore {
    async fn create_user(&self, name: &str, password_hash: &str) -> Result<u64> {
        let (name, hash) = (name.to_owned(), password_hash.to_owned());
        self.write(move |txn, _| {
            let exists = txn
                .prepare_cached("SELECT 1 FROM users WHERE name = ?1")?
                .exists([&name])?;
            if exists {
                return Err(StoreError::UserExists);
            }
            // Above every id ever deleted too (`ferry_meta.user_id_floor`): SQLite would
            // give the highest id again once its user is gone.
            txn.prepare_cached(
                "INSERT INTO users (id, name, password_hash, created_ms) VALUES (
                   max(coalesce((SELECT max(id) FROM users), 0),
                       coalesce((SELECT value FROM ferry_meta WHERE key = 'user_id_floor'), 0)) + 1,
                   ?1, ?2, ?3)",
            )?
            .execute(params![name, hash, now_ms()])?;
            Ok(txn.last_insert_rowid() as u64)
        })
        .await
    }

    async fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        let name = name.to_owned();
        self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT id, name, password_hash FROM users WHERE name = ?1")?
                    .query_row([name], row_user)
                    .optional()?,
            )
        })
        .await
    }

    async fn user_by_id(&self, id: u64) -> Result<Option<User>> {
        self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT id, name, password_hash FROM users WHERE id = ?1")?
                    .query_row([id as i64], row_user)
                    .optional()?,
            )
        })
        .await
    }

    async fn put_session(&self, token_hash: [u8; 32], user_id: u64, device_id: &str) -> Result<()> {
        let device_id = device_id.to_owned();
        self.write(move |txn, _| {
            txn.prepare_cached("DELETE FROM sessions WHERE user_id = ?1 AND device_id = ?2")?
                .execute(params![user_id as i64, device_id])?;
            txn.prepare_cached(
                "INSERT INTO sessions (token_hash, user_id, device_id, created_ms) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![&token_hash[..], user_id as i64, device_id, now_ms()])?;
            Ok(())
        })
        .await
    }

    async fn session(&self, token_hash: [u8; 32]) -> Result<Option<Session>> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT user_id, device_id, created_ms FROM sessions WHERE token_hash = ?1",
            )?
            .query_row([&token_hash[..]], |r| {
                Ok(Session {
                    user_id: r.get::<_, i64>(0)? as u64,
                    device_id: r.get(1)?,
                    created_ms: r.get(2)?,
                })
            })
            .optional()?)
        })
        .await
    }

    async fn login_view(&self, token_hash: [u8; 32]) -> Result<Option<LoginView>> {
        self.read(move |c| {
            Ok(c.prepare_cached(concat!(
                "SELECT s.user_id, s.device_id, s.created_ms, u.name, u.disabled_reason, ",
                newest_seq_of_u!(),
                " FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?1"
            ))?
            .query_row([&token_hash[..]], |r| {
                Ok(LoginView {
                    session: Session {
                        user_id: r.get::<_, i64>(0)? as u64,
                        device_id: r.get(1)?,
                        created_ms: r.get(2)?,
                    },
                    user_name: r.get(3)?,
                    disabled: r.get(4)?,
                    latest_seq: r.get::<_, i64>(5)? as u64,
                })
            })
            .optional()?)
        })
        .await
    }

    async fn delete_session(&self, token_hash: [u8; 32]) -> Result<bool> {
        self.write(move |txn, _| {
            Ok(txn
                .prepare_cached("DELETE FROM sessions WHERE token_hash = ?1")?
                .execute([&token_hash[..]])?
                > 0)
        })
        .await
    }

    async fn delete_user_sessions(&self, user_id: u64) -> Result<Vec<String>> {
        self.write(move |txn, _| delete_user_sessions(txn, user_id))
            .await
    }

    async fn set_password(&self, user_id: u64, password_hash: &str) -> Result<Vec<String>> {
        let hash = password_hash.to_owned();
        self.write(move |txn, _| {
            let n = txn
                .prepare_cached("UPDATE users SET password_hash = ?1 WHERE id = ?2")?
                .execute(params![hash, user_id as i64])?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            delete_user_sessions(txn, user_id)
        })
        .await
    }
}
