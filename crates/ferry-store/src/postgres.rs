//! The cluster store: PostgreSQL through a connection pool (tokio-postgres + deadpool).
//!
//! Semantics match the SQLite store exactly (the conformance suite runs against both):
//!
//! * **Per-user seq without gaps.** A message bumps `users.last_seq` of the sender and of
//!   the recipient (`UPDATE … RETURNING`) in the same transaction as its inserts. The
//!   row locks are taken in ascending user id order, so two users writing to each other
//!   cannot deadlock, and a seq is only ever visible together with its inbox entry.
//! * **Idempotency** on `(sender_id, client_msg_id)`: a unique index. Two concurrent
//!   retries of one message serialise on the sender's row; the loser hits the unique
//!   index, rolls back (giving its seq back) and answers with the original.
//! * **Durable before returning**: `COMMIT` with PostgreSQL's default
//!   `synchronous_commit = on` returns once the WAL is flushed. PostgreSQL's own group
//!   commit batches concurrent commits into one flush.
//!
//! Schema migrations run at start-up under an advisory lock, so several logic nodes may
//! start at once.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use ferry_proto::{v1, ProtoMessage};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::{
    Appended, Avatar, FriendChange, FriendList, FriendRow, GroupChange, GroupRow, InboxPage,
    MemberRow, MessageInfo, MomentRow, NewEvent, NewMessage, Reaction, ReportInfo, Result, Session,
    Store, StoreError, User,
};

mod groups;
mod social;

/// The schema, one entry per version. Never edit a released entry: append a new one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_ms    BIGINT NOT NULL,
    last_seq      BIGINT NOT NULL DEFAULT 0,
    friend_version BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE sessions (
    token_hash BYTEA PRIMARY KEY,
    user_id    BIGINT NOT NULL,
    device_id  TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    UNIQUE (user_id, device_id)
);
CREATE TABLE messages (
    id            BIGSERIAL PRIMARY KEY,
    sender_id     BIGINT NOT NULL,
    client_msg_id BIGINT NOT NULL,
    sender_seq    BIGINT NOT NULL,
    recipient_seq BIGINT NOT NULL,
    created_ms    BIGINT NOT NULL,
    body          BYTEA,
    UNIQUE (sender_id, client_msg_id)
);
CREATE INDEX messages_created ON messages (created_ms);
CREATE TABLE inbox (
    user_id    BIGINT NOT NULL,
    seq        BIGINT NOT NULL,
    msg_id     BIGINT,
    created_ms BIGINT NOT NULL,
    -- A non-message entry (friend or moment event), encoded without seq and time.
    payload    BYTEA,
    PRIMARY KEY (user_id, seq)
);
CREATE INDEX inbox_created ON inbox (created_ms);
CREATE TABLE devices (
    user_id    BIGINT NOT NULL,
    device_id  TEXT NOT NULL,
    synckey    BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);
CREATE TABLE friendships (
    user_id    BIGINT NOT NULL,
    peer_id    BIGINT NOT NULL,
    state      INTEGER NOT NULL,
    greeting   TEXT NOT NULL,
    version    BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (user_id, peer_id)
);
CREATE INDEX friendships_version ON friendships (user_id, version);
CREATE TABLE avatars (
    user_id      BIGINT PRIMARY KEY,
    etag         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    image        BYTEA NOT NULL,
    thumb        BYTEA NOT NULL,
    updated_ms   BIGINT NOT NULL
);
CREATE TABLE reports (
    id             BIGSERIAL PRIMARY KEY,
    user_id        BIGINT NOT NULL,
    device_id      TEXT NOT NULL,
    client_version TEXT NOT NULL,
    kind           TEXT NOT NULL,
    file_name      TEXT NOT NULL,
    length         BIGINT NOT NULL,
    md5            TEXT NOT NULL,
    created_ms     BIGINT NOT NULL,
    data           BYTEA NOT NULL
);
CREATE INDEX reports_created ON reports (created_ms);
CREATE TABLE moments (
    id         BIGINT PRIMARY KEY,
    author_id  BIGINT NOT NULL,
    text       TEXT NOT NULL,
    media_ids  TEXT[] NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX moments_author ON moments (author_id, id);
CREATE TABLE moment_likes (
    moment_id  BIGINT NOT NULL,
    user_id    BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (moment_id, user_id)
);
CREATE TABLE moment_comments (
    id         BIGSERIAL PRIMARY KEY,
    moment_id  BIGINT NOT NULL,
    user_id    BIGINT NOT NULL,
    text       TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX moment_comments_moment ON moment_comments (moment_id);
"#,
    r#"
CREATE TABLE groups (
    id            BIGINT PRIMARY KEY,
    name          TEXT NOT NULL,
    announcement  TEXT NOT NULL,
    owner_id      BIGINT NOT NULL,
    share_history BOOLEAN NOT NULL,
    last_gseq     BIGINT NOT NULL DEFAULT 0,
    created_ms    BIGINT NOT NULL
);
CREATE TABLE group_members (
    group_id    BIGINT NOT NULL,
    user_id     BIGINT NOT NULL,
    role        INTEGER NOT NULL,
    joined_gseq BIGINT NOT NULL,
    read_gseq   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX group_members_user ON group_members (user_id);
CREATE TABLE group_log (
    group_id   BIGINT NOT NULL,
    gseq       BIGINT NOT NULL,
    msg_id     BIGINT,
    payload    BYTEA,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (group_id, gseq)
);
"#,
];

/// Key of the advisory lock that serialises migrations across processes.
const MIGRATION_LOCK: i64 = 0x6665_7272_7900_0001;

/// How often a write that lost a race (unique index, deadlock, serialisation) is retried.
const WRITE_ATTEMPTS: usize = 5;

/// PostgreSQL store settings.
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// A libpq-style URL or key=value string, e.g. `postgres://ferry@127.0.0.1/ferry`.
    pub url: String,
    /// Connections in the pool.
    pub pool_size: usize,
    /// How long a request waits for a pooled connection, and a new connection to open.
    pub timeout: Duration,
}

impl PgConfig {
    pub fn new(url: impl Into<String>) -> Self {
        PgConfig {
            url: url.into(),
            pool_size: 16,
            timeout: Duration::from_secs(5),
        }
    }
}

/// The PostgreSQL store. Cheap to share behind an `Arc`.
pub struct PgStore {
    pool: Pool,
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A race another writer won: try again.
fn is_retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(&SqlState::UNIQUE_VIOLATION)
            | Some(&SqlState::T_R_DEADLOCK_DETECTED)
            | Some(&SqlState::T_R_SERIALIZATION_FAILURE)
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn row_user(r: &tokio_postgres::Row) -> User {
    User {
        id: r.get::<_, i64>(0) as u64,
        name: r.get(1),
        password_hash: r.get(2),
    }
}

/// A connection pool for `cfg` (connections open lazily, every wait bounded by
/// `cfg.timeout`); `app` names the connections in `pg_stat_activity` unless the URL does.
pub(crate) fn pool(cfg: &PgConfig, app: &str) -> Result<Pool> {
    let mut pg = tokio_postgres::Config::from_str(&cfg.url)?;
    pg.connect_timeout(cfg.timeout);
    if pg.get_application_name().is_none() {
        pg.application_name(app);
    }
    let mgr = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(cfg.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(cfg.timeout))
        .create_timeout(Some(cfg.timeout))
        .recycle_timeout(Some(cfg.timeout))
        .build()
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

impl PgStore {
    /// Connects (lazily: the pool opens connections as needed) and runs migrations.
    pub async fn connect(cfg: &PgConfig) -> Result<Self> {
        let store = PgStore {
            pool: pool(cfg, "ferry")?,
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let txn = client.transaction().await?;
        txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        txn.batch_execute("CREATE TABLE IF NOT EXISTS ferry_schema (version INTEGER NOT NULL)")
            .await?;
        let version: i32 = txn
            .query_opt("SELECT version FROM ferry_schema", &[])
            .await?
            .map(|r| r.get(0))
            .unwrap_or(0);
        let version = version as usize;
        if version > MIGRATIONS.len() {
            return Err(StoreError::Corrupt(format!(
                "database schema version {version} is newer than this build ({})",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            txn.batch_execute(sql).await?;
            tracing::info!(version = i + 1, "postgres store migrated");
        }
        if version < MIGRATIONS.len() {
            txn.execute("DELETE FROM ferry_schema", &[]).await?;
            txn.execute(
                "INSERT INTO ferry_schema (version) VALUES ($1)",
                &[&(MIGRATIONS.len() as i32)],
            )
            .await?;
        }
        txn.commit().await?;
        Ok(())
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_err)
    }

    /// The stored original of `(sender, client_msg_id)`, if any.
    async fn existing(
        client: &deadpool_postgres::Object,
        sender: i64,
        cmid: i64,
    ) -> Result<Option<Appended>> {
        let stmt = client
            .prepare_cached(
                "SELECT id, sender_seq, recipient_seq, created_ms FROM messages
                 WHERE sender_id = $1 AND client_msg_id = $2",
            )
            .await?;
        Ok(client
            .query_opt(&stmt, &[&sender, &cmid])
            .await?
            .map(|r| Appended {
                msg_id: r.get::<_, i64>(0) as u64,
                sender_seq: r.get::<_, i64>(1) as u64,
                recipient_seq: r.get::<_, i64>(2) as u64,
                time_ms: r.get(3),
                duplicate: true,
            }))
    }

    /// One attempt at storing a new message. `Ok(None)`: an unknown user (rolled back).
    async fn try_append(
        client: &mut deadpool_postgres::Object,
        msg: &NewMessage,
        body: &[u8],
    ) -> std::result::Result<std::result::Result<Appended, StoreError>, tokio_postgres::Error> {
        let sender = msg.sender_id as i64;
        let recipient = msg.recipient_id as i64;
        let cmid = msg.client_msg_id as i64;
        let bump = client
            .prepare_cached(
                "UPDATE users SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq",
            )
            .await?;
        let insert_msg = client
            .prepare_cached(
                "INSERT INTO messages (sender_id, client_msg_id, sender_seq, recipient_seq, created_ms, body)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .await?;
        let insert_inbox = client
            .prepare_cached(
                "INSERT INTO inbox (user_id, seq, msg_id, created_ms) VALUES ($1, $2, $3, $4)",
            )
            .await?;
        let txn = client.transaction().await?;
        // Lock the users' rows in ascending id order: no deadlock between two users
        // writing to each other at once.
        let mut order = [sender, recipient];
        order.sort_unstable();
        let mut sender_seq = 0i64;
        let mut recipient_seq = 0i64;
        for (i, id) in order.iter().enumerate() {
            if i == 1 && order[0] == order[1] {
                break;
            }
            let Some(row) = txn.query_opt(&bump, &[id]).await? else {
                // Dropping the transaction rolls it back: nothing written.
                return Ok(Err(StoreError::UnknownUser(*id as u64)));
            };
            let seq: i64 = row.get(0);
            if *id == sender {
                sender_seq = seq;
            }
            if *id == recipient {
                recipient_seq = seq;
            }
        }
        let msg_id: i64 = txn
            .query_one(
                &insert_msg,
                &[
                    &sender,
                    &cmid,
                    &sender_seq,
                    &recipient_seq,
                    &msg.time_ms,
                    &body,
                ],
            )
            .await?
            .get(0);
        txn.execute(
            &insert_inbox,
            &[&sender, &sender_seq, &msg_id, &msg.time_ms],
        )
        .await?;
        if recipient != sender {
            txn.execute(
                &insert_inbox,
                &[&recipient, &recipient_seq, &msg_id, &msg.time_ms],
            )
            .await?;
        }
        txn.commit().await?;
        Ok(Ok(Appended {
            msg_id: msg_id as u64,
            sender_seq: sender_seq as u64,
            recipient_seq: recipient_seq as u64,
            time_ms: msg.time_ms,
            duplicate: false,
        }))
    }
}

#[async_trait]
impl Store for PgStore {
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

    async fn delete_session(&self, token_hash: [u8; 32]) -> Result<bool> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("DELETE FROM sessions WHERE token_hash = $1")
            .await?;
        Ok(client.execute(&stmt, &[&&token_hash[..]]).await? > 0)
    }

    async fn append_message(&self, msg: NewMessage) -> Result<Appended> {
        let sender = msg.sender_id as i64;
        let cmid = msg.client_msg_id as i64;
        // The body is stored without its msg_id (not known before the insert); reads
        // fill it in from the row.
        let mut body = msg.message.clone();
        body.msg_id = 0;
        body.time_ms = msg.time_ms;
        let body = body.encode_to_vec();
        let mut client = self.client().await?;
        let mut last_err = None;
        for _ in 0..WRITE_ATTEMPTS {
            if let Some(dup) = Self::existing(&client, sender, cmid).await? {
                return Ok(dup);
            }
            match Self::try_append(&mut client, &msg, &body).await {
                Ok(done) => return done,
                Err(e) if is_retryable(&e) => last_err = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last_err.map_or(
            StoreError::WriteFailed("too many conflicts".into()),
            Into::into,
        ))
    }

    async fn inbox(&self, user_id: u64, after: u64, limit: u32) -> Result<InboxPage> {
        let client = self.client().await?;
        // One statement, so one snapshot: the newest seq and the entries agree. (With two,
        // an empty page read before a commit and a newest seq read after it would let a
        // device's synckey jump over the new entry.)
        let stmt = client
            .prepare_cached(
                "SELECT u.last_seq, e.seq, e.msg_id, e.body, e.payload, e.created_ms
                 FROM users u
                 LEFT JOIN LATERAL (
                     SELECT i.seq, i.msg_id, m.body, i.payload, i.created_ms FROM inbox i
                     LEFT JOIN messages m ON m.id = i.msg_id
                     WHERE i.user_id = u.id AND i.seq > $2 ORDER BY i.seq LIMIT $3
                 ) e ON true
                 WHERE u.id = $1
                 ORDER BY e.seq",
            )
            .await?;
        let rows = client
            .query(
                &stmt,
                &[&(user_id as i64), &(after as i64), &(i64::from(limit) + 1)],
            )
            .await?;
        let latest_seq = rows
            .first()
            .ok_or(StoreError::UnknownUser(user_id))?
            .get::<_, i64>(0) as u64;
        let mut entries = Vec::with_capacity(rows.len().min(limit as usize));
        let mut more = false;
        for row in rows {
            let Some(seq) = row.get::<_, Option<i64>>(1) else {
                break; // no entries: the one row carries only the newest seq
            };
            if entries.len() == limit as usize {
                more = true;
                break;
            }
            let seq = seq as u64;
            let msg_id: Option<i64> = row.get(2);
            let body: Option<Vec<u8>> = row.get(3);
            let payload: Option<Vec<u8>> = row.get(4);
            let time_ms: i64 = row.get(5);
            let corrupt =
                |e: prost::DecodeError| StoreError::Corrupt(format!("inbox entry {seq}: {e}"));
            // A message (joined from `messages`), an event (its payload), or an entry
            // whose message was pruned: its seq with no kind — as in SQLite.
            let mut entry = match (body, payload) {
                (Some(b), _) => {
                    let mut m = v1::Message::decode(&b[..]).map_err(corrupt)?;
                    m.msg_id = msg_id.unwrap_or(0) as u64;
                    v1::Entry {
                        kind: Some(v1::entry::Kind::Message(m)),
                        ..Default::default()
                    }
                }
                (None, Some(p)) => v1::Entry::decode(&p[..]).map_err(corrupt)?,
                (None, None) => v1::Entry::default(),
            };
            entry.seq = seq;
            entry.time_ms = time_ms;
            entries.push(entry);
        }
        Ok(InboxPage {
            entries,
            latest_seq,
            more,
        })
    }

    async fn latest_seq(&self, user_id: u64) -> Result<u64> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT last_seq FROM users WHERE id = $1")
            .await?;
        Ok(client
            .query_opt(&stmt, &[&(user_id as i64)])
            .await?
            .ok_or(StoreError::UnknownUser(user_id))?
            .get::<_, i64>(0) as u64)
    }

    async fn set_synckey(&self, user_id: u64, device_id: &str, synckey: u64) -> Result<()> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO devices (user_id, device_id, synckey, updated_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (user_id, device_id) DO UPDATE
                 SET synckey = excluded.synckey, updated_ms = excluded.updated_ms",
            )
            .await?;
        client
            .execute(
                &stmt,
                &[&(user_id as i64), &device_id, &(synckey as i64), &now_ms()],
            )
            .await?;
        Ok(())
    }

    async fn synckey(&self, user_id: u64, device_id: &str) -> Result<Option<u64>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT synckey FROM devices WHERE user_id = $1 AND device_id = $2")
            .await?;
        Ok(client
            .query_opt(&stmt, &[&(user_id as i64), &device_id])
            .await?
            .map(|r| r.get::<_, i64>(0) as u64))
    }

    async fn prune(&self, before_ms: i64) -> Result<u64> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        let n = txn
            .execute("DELETE FROM inbox WHERE created_ms < $1", &[&before_ms])
            .await?;
        txn.execute("DELETE FROM messages WHERE created_ms < $1", &[&before_ms])
            .await?;
        txn.commit().await?;
        Ok(n)
    }

    async fn delete_user_sessions(&self, user_id: u64) -> Result<Vec<String>> {
        self.pg_delete_user_sessions(user_id).await
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

    async fn append_events(&self, events: Vec<NewEvent>) -> Result<Vec<u64>> {
        self.pg_append_events(events).await
    }

    async fn friendship(&self, user_id: u64, peer_id: u64) -> Result<Option<FriendRow>> {
        self.pg_friendship(user_id, peer_id).await
    }

    async fn change_friends(&self, change: FriendChange) -> Result<Vec<u64>> {
        self.pg_change_friends(change).await
    }

    async fn friends(&self, user_id: u64, since_version: u64) -> Result<FriendList> {
        self.pg_friends(user_id, since_version).await
    }

    async fn set_avatar(&self, user_id: u64, avatar: Avatar) -> Result<()> {
        self.pg_set_avatar(user_id, avatar).await
    }

    async fn avatar(&self, user_id: u64) -> Result<Option<Avatar>> {
        self.pg_avatar(user_id).await
    }

    async fn add_report(&self, info: ReportInfo, data: Vec<u8>) -> Result<u64> {
        self.pg_add_report(info, data).await
    }

    async fn reports(&self, before_id: u64, limit: u32) -> Result<Vec<ReportInfo>> {
        self.pg_reports(before_id, limit).await
    }

    async fn report(&self, id: u64) -> Result<Option<(ReportInfo, Vec<u8>)>> {
        self.pg_report(id).await
    }

    async fn prune_reports(&self, before_ms: i64) -> Result<u64> {
        self.pg_prune_reports(before_ms).await
    }

    async fn add_moment(&self, moment: MomentRow, events: Vec<NewEvent>) -> Result<Vec<u64>> {
        self.pg_add_moment(moment, events).await
    }

    async fn moment(&self, id: u64) -> Result<Option<MomentRow>> {
        self.pg_moment(id).await
    }

    async fn delete_moment(&self, id: u64) -> Result<bool> {
        self.pg_delete_moment(id).await
    }

    async fn timeline(
        &self,
        authors: &[u64],
        before_id: u64,
        limit: u32,
    ) -> Result<Vec<MomentRow>> {
        self.pg_timeline(authors, before_id, limit).await
    }

    async fn set_like(
        &self,
        moment_id: u64,
        user_id: u64,
        on: bool,
        time_ms: i64,
        event: Option<NewEvent>,
    ) -> Result<bool> {
        self.pg_set_like(moment_id, user_id, on, time_ms, event)
            .await
    }

    async fn add_comment(
        &self,
        moment_id: u64,
        user_id: u64,
        text: &str,
        time_ms: i64,
        event: Option<NewEvent>,
    ) -> Result<u64> {
        self.pg_add_comment(moment_id, user_id, text, time_ms, event)
            .await
    }

    async fn reactions(&self, moment_ids: &[u64]) -> Result<Vec<Reaction>> {
        self.pg_reactions(moment_ids).await
    }

    async fn create_group(
        &self,
        group: GroupRow,
        members: Vec<(u64, i32)>,
        event: v1::GroupEntry,
        inbox: Vec<NewEvent>,
    ) -> Result<()> {
        self.pg_create_group(group, members, event, inbox).await
    }

    async fn group(&self, group_id: u64) -> Result<Option<GroupRow>> {
        self.pg_group(group_id).await
    }

    async fn group_members(&self, group_id: u64) -> Result<Vec<MemberRow>> {
        self.pg_group_members(group_id).await
    }

    async fn group_member(&self, group_id: u64, user_id: u64) -> Result<Option<MemberRow>> {
        self.pg_group_member(group_id, user_id).await
    }

    async fn user_groups(&self, user_id: u64) -> Result<Vec<(GroupRow, MemberRow)>> {
        self.pg_user_groups(user_id).await
    }

    async fn change_group(&self, change: GroupChange) -> Result<u64> {
        self.pg_change_group(change).await
    }

    async fn append_group_message(&self, group_id: u64, msg: NewMessage) -> Result<Appended> {
        self.pg_append_group_message(group_id, msg).await
    }

    async fn group_log(
        &self,
        group_id: u64,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<v1::GroupEntry>, u64, bool)> {
        self.pg_group_log(group_id, after, limit).await
    }

    async fn message_info(&self, msg_id: u64) -> Result<Option<MessageInfo>> {
        self.pg_message_info(msg_id).await
    }

    async fn recall_message(
        &self,
        msg_id: u64,
        group: Option<(u64, v1::GroupEntry)>,
        inbox: Vec<NewEvent>,
    ) -> Result<(Option<u64>, Vec<u64>)> {
        self.pg_recall_message(msg_id, group, inbox).await
    }

    async fn set_group_read(&self, group_id: u64, user_id: u64, gseq: u64) -> Result<()> {
        self.pg_set_group_read(group_id, user_id, gseq).await
    }
}
