//! The PostgreSQL schema: one migration per version, applied at start-up in one
//! transaction under an advisory lock, so several logic nodes may start at once; the
//! applied version is kept in `ferry_schema`.

use super::{pool_err, PgStore};
use crate::{Result, StoreError};

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
    // Push (issue 20): devices' push targets, per-conversation settings, and the queue
    // (one row per device; see push.rs for what each column means).
    r#"
CREATE TABLE push_targets (
    user_id        BIGINT NOT NULL,
    device_id      TEXT NOT NULL,
    provider       TEXT NOT NULL,
    token          TEXT NOT NULL,
    endpoint       TEXT NOT NULL,
    p256dh         TEXT NOT NULL,
    auth           TEXT NOT NULL,
    app_id         TEXT NOT NULL,
    sandbox        BOOLEAN NOT NULL,
    locale         TEXT NOT NULL,
    preview        INTEGER NOT NULL,
    dnd_start_min  INTEGER NOT NULL,
    dnd_end_min    INTEGER NOT NULL,
    utc_offset_min INTEGER NOT NULL,
    registered_ms  BIGINT NOT NULL,
    pushed_seq     BIGINT NOT NULL,
    quiet_until_ms BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);
CREATE INDEX push_targets_registered ON push_targets (registered_ms, user_id, device_id);
CREATE TABLE push_prefs (
    user_id  BIGINT NOT NULL,
    peer     BIGINT NOT NULL,
    group_id BIGINT NOT NULL,
    mode     INTEGER NOT NULL,
    until_ms BIGINT NOT NULL,
    PRIMARY KEY (user_id, peer, group_id)
);
CREATE TABLE push_queue (
    user_id         BIGINT NOT NULL,
    device_id       TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    count           INTEGER NOT NULL,
    summary         BYTEA NOT NULL,
    due_ms          BIGINT NOT NULL,
    created_ms      BIGINT NOT NULL,
    attempts        INTEGER NOT NULL,
    version         BIGINT NOT NULL,
    lease_owner     TEXT,
    lease_until     BIGINT NOT NULL,
    late_created_ms BIGINT,
    PRIMARY KEY (user_id, device_id)
);
CREATE INDEX push_queue_due ON push_queue (due_ms, user_id, device_id);
"#,
    // Audit (issue 23): every change made through the admin API.
    r#"
CREATE TABLE audit_log (
    id     BIGSERIAL PRIMARY KEY,
    at_ms  BIGINT NOT NULL,
    actor  TEXT NOT NULL,
    peer   TEXT NOT NULL,
    op     TEXT NOT NULL,
    method TEXT NOT NULL,
    path   TEXT NOT NULL,
    status INTEGER NOT NULL,
    detail TEXT NOT NULL
);
"#,
    // Admin operations (issue 23, H-ops): dissolved groups (0: not dissolved) and per-user
    // limit overrides (JSON, the logic layer's format).
    r#"
ALTER TABLE groups ADD COLUMN dissolved_ms BIGINT NOT NULL DEFAULT 0;
CREATE TABLE limit_overrides (
    user_id    BIGINT PRIMARY KEY,
    limits     TEXT NOT NULL,
    updated_ms BIGINT NOT NULL
);
"#,
    // Admin users (issue 23, H-users): a disabled (banned) user keeps the reason (NULL:
    // enabled). Ids come from a sequence: a deleted one is never given again.
    r#"
ALTER TABLE users ADD COLUMN disabled_reason TEXT;
"#,
    // Webhooks (issue 23, H-webhooks): endpoints and their outbox (see hooks.rs).
    r#"
CREATE TABLE hook_endpoints (
    id                   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    url                  TEXT NOT NULL,
    events               TEXT NOT NULL,
    description          TEXT NOT NULL,
    secret               TEXT NOT NULL,
    prev_secret          TEXT NOT NULL,
    prev_secret_until_ms BIGINT NOT NULL,
    owner_user_id        BIGINT NOT NULL,
    enabled              BOOLEAN NOT NULL,
    created_ms           BIGINT NOT NULL,
    delivered            BIGINT NOT NULL,
    failed               BIGINT NOT NULL,
    lease_owner          TEXT,
    lease_until          BIGINT NOT NULL
);
CREATE TABLE hook_outbox (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id BIGINT NOT NULL,
    event_id    TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    payload     BYTEA NOT NULL,
    created_ms  BIGINT NOT NULL,
    state       SMALLINT NOT NULL,
    attempts    INTEGER NOT NULL,
    next_due_ms BIGINT NOT NULL,
    last_error  TEXT NOT NULL,
    done_ms     BIGINT NOT NULL
);
CREATE UNIQUE INDEX hook_outbox_event ON hook_outbox (endpoint_id, event_id);
CREATE INDEX hook_outbox_queue ON hook_outbox (endpoint_id, state, id);
CREATE INDEX hook_outbox_done ON hook_outbox (state, done_ms);
"#,
    // Bots (issue 23, H-bots): the users' bot flag and the bots' API tokens (hashed).
    r#"
ALTER TABLE users ADD COLUMN bot BOOLEAN NOT NULL DEFAULT FALSE;
CREATE TABLE bot_tokens (
    id           BIGSERIAL PRIMARY KEY,
    bot_id       BIGINT NOT NULL,
    token_hash   BYTEA NOT NULL UNIQUE,
    scopes       TEXT NOT NULL,
    created_ms   BIGINT NOT NULL,
    last_used_ms BIGINT NOT NULL
);
CREATE INDEX bot_tokens_bot ON bot_tokens (bot_id);
"#,
    // Search (issue 24): the feed of changed messages a full-text index follows, written
    // by statement-level triggers (one insert per statement, however many rows) so that
    // every path that stores, recalls, edits or deletes a message feeds it.
    r#"
CREATE TABLE search_feed (
    id     BIGSERIAL PRIMARY KEY,
    msg_id BIGINT NOT NULL,
    at_ms  BIGINT NOT NULL
);
CREATE INDEX search_feed_at ON search_feed (at_ms);
CREATE FUNCTION search_feed_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO search_feed (msg_id, at_ms) SELECT id, created_ms FROM new_rows ORDER BY id;
    RETURN NULL;
END $$;
CREATE FUNCTION search_feed_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO search_feed (msg_id, at_ms)
    SELECT n.id, (extract(epoch FROM clock_timestamp()) * 1000)::bigint
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE o.body IS DISTINCT FROM n.body ORDER BY n.id;
    RETURN NULL;
END $$;
CREATE FUNCTION search_feed_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO search_feed (msg_id, at_ms)
    SELECT id, (extract(epoch FROM clock_timestamp()) * 1000)::bigint FROM old_rows ORDER BY id;
    RETURN NULL;
END $$;
CREATE TRIGGER search_feed_insert AFTER INSERT ON messages
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION search_feed_inserted();
CREATE TRIGGER search_feed_update AFTER UPDATE ON messages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION search_feed_updated();
CREATE TRIGGER search_feed_delete AFTER DELETE ON messages
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION search_feed_deleted();
"#,
    // Message operations (issue 24, msgops): edits' history, reactions, messages hidden
    // by one user, pins per conversation, and which messages quote which (a recall
    // empties its quotes).
    r#"
CREATE TABLE message_edits (
    msg_id    BIGINT NOT NULL,
    sender_id BIGINT NOT NULL,
    text      TEXT NOT NULL,
    edited_ms BIGINT NOT NULL
);
CREATE INDEX message_edits_msg ON message_edits (msg_id);
CREATE TABLE reactions (
    msg_id  BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    emoji   TEXT NOT NULL,
    time_ms BIGINT NOT NULL,
    PRIMARY KEY (msg_id, user_id, emoji)
);
CREATE INDEX reactions_emoji ON reactions (msg_id, emoji, user_id);
CREATE TABLE hidden (
    user_id BIGINT NOT NULL,
    msg_id  BIGINT NOT NULL,
    time_ms BIGINT NOT NULL,
    PRIMARY KEY (user_id, msg_id)
);
CREATE TABLE pins (
    conv       TEXT NOT NULL,
    msg_id     BIGINT NOT NULL,
    by_user_id BIGINT NOT NULL,
    time_ms    BIGINT NOT NULL,
    PRIMARY KEY (conv, msg_id)
);
CREATE INDEX pins_msg ON pins (msg_id);
CREATE TABLE replies (
    sender_id     BIGINT NOT NULL,
    client_msg_id BIGINT NOT NULL,
    quoted_id     BIGINT NOT NULL,
    PRIMARY KEY (sender_id, client_msg_id)
);
CREATE INDEX replies_quoted ON replies (quoted_id);
"#,
    // Past memberships (issue 24, search): the span of a group's log a member could read,
    // kept when they leave or are removed (a statement trigger, so every path that ends a
    // membership records it), so that search finds what they saw while they were in.
    r#"
CREATE TABLE group_spans (
    user_id   BIGINT NOT NULL,
    group_id  BIGINT NOT NULL,
    from_gseq BIGINT NOT NULL,
    to_gseq   BIGINT NOT NULL,
    PRIMARY KEY (user_id, group_id, from_gseq)
);
CREATE FUNCTION group_spans_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO group_spans (user_id, group_id, from_gseq, to_gseq)
    SELECT o.user_id, o.group_id, o.joined_gseq, g.last_gseq
    FROM old_rows o JOIN groups g ON g.id = o.group_id
    ON CONFLICT (user_id, group_id, from_gseq) DO UPDATE SET to_gseq = EXCLUDED.to_gseq;
    RETURN NULL;
END $$;
CREATE TRIGGER group_spans_end AFTER DELETE ON group_members
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION group_spans_ended();
"#,
    // Conversation state (issue 24, conv): one user's state of a conversation (archived,
    // marked unread, draft, history cleared below a msg_id; the mute is push_prefs'),
    // and a conversation's own retention (a 1:1 pair, lower id first, or a group).
    r#"
CREATE TABLE conv_state (
    user_id        BIGINT NOT NULL,
    peer           BIGINT NOT NULL,
    group_id       BIGINT NOT NULL,
    archived       BOOLEAN NOT NULL,
    unread         BOOLEAN NOT NULL,
    draft          TEXT NOT NULL,
    draft_ms       BIGINT NOT NULL,
    cleared_before BIGINT NOT NULL,
    updated_ms     BIGINT NOT NULL,
    PRIMARY KEY (user_id, peer, group_id)
);
CREATE TABLE conv_retention (
    a_user_id      BIGINT NOT NULL,
    b_user_id      BIGINT NOT NULL,
    group_id       BIGINT NOT NULL,
    retention_secs BIGINT NOT NULL,
    set_by         BIGINT NOT NULL,
    time_ms        BIGINT NOT NULL,
    PRIMARY KEY (a_user_id, b_user_id, group_id)
);
"#,
];

/// Key of the advisory lock that serialises migrations across processes.
const MIGRATION_LOCK: i64 = 0x6665_7272_7900_0001;

impl PgStore {
    pub(super) async fn migrate(&self) -> Result<()> {
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
}
