//! The SQLite schema: one migration per version, applied in order at open (the file's
//! `user_version` says how many ran). Never edit a released entry: append a new one.

use rusqlite::Connection;

use crate::{Result, StoreError};

/// The triggers that feed `search_feed` from every change of `messages` (issue 24), made
/// by the search migration and again by the one that rebuilt the feed's table.
macro_rules! search_feed_triggers {
    () => {
        concat!(
            r#"
CREATE TRIGGER search_feed_insert AFTER INSERT ON messages BEGIN
    INSERT INTO search_feed (msg_id, at_ms) VALUES (NEW.id, NEW.created_ms);
END;"#,
            search_feed_change_triggers!()
        )
    };
}

/// The two of [`search_feed_triggers`] left once new messages left the feed (recalls,
/// edits and deletions), made again by the migration that rebuilt `messages`.
macro_rules! search_feed_change_triggers {
    () => {
        r#"
CREATE TRIGGER search_feed_update AFTER UPDATE OF body ON messages
WHEN OLD.body IS NOT NEW.body BEGIN
    INSERT INTO search_feed (msg_id, at_ms)
    VALUES (NEW.id, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;
CREATE TRIGGER search_feed_delete AFTER DELETE ON messages BEGIN
    INSERT INTO search_feed (msg_id, at_ms)
    VALUES (OLD.id, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;
"#
    };
}

pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_ms    INTEGER NOT NULL,
    last_seq      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE sessions (
    token_hash BLOB PRIMARY KEY,
    user_id    INTEGER NOT NULL,
    device_id  TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE UNIQUE INDEX sessions_device ON sessions(user_id, device_id);
CREATE TABLE messages (
    id            INTEGER PRIMARY KEY,
    sender_id     INTEGER NOT NULL,
    client_msg_id INTEGER NOT NULL,
    sender_seq    INTEGER NOT NULL,
    recipient_seq INTEGER NOT NULL,
    created_ms    INTEGER NOT NULL,
    body          BLOB,
    UNIQUE (sender_id, client_msg_id)
);
CREATE TABLE inbox (
    user_id    INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    msg_id     INTEGER,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (user_id, seq)
) WITHOUT ROWID;
CREATE INDEX inbox_created ON inbox(created_ms);
CREATE TABLE devices (
    user_id    INTEGER NOT NULL,
    device_id  TEXT NOT NULL,
    synckey    INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID;
"#,
    r#"
ALTER TABLE inbox ADD COLUMN payload BLOB;
ALTER TABLE users ADD COLUMN friend_version INTEGER NOT NULL DEFAULT 0;
CREATE TABLE friendships (
    user_id    INTEGER NOT NULL,
    peer_id    INTEGER NOT NULL,
    state      INTEGER NOT NULL,
    greeting   TEXT NOT NULL,
    version    INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (user_id, peer_id)
) WITHOUT ROWID;
CREATE INDEX friendships_version ON friendships(user_id, version);
CREATE TABLE avatars (
    user_id      INTEGER PRIMARY KEY,
    etag         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    image        BLOB NOT NULL,
    thumb        BLOB NOT NULL,
    updated_ms   INTEGER NOT NULL
);
CREATE TABLE reports (
    id             INTEGER PRIMARY KEY,
    user_id        INTEGER NOT NULL,
    device_id      TEXT NOT NULL,
    client_version TEXT NOT NULL,
    kind           TEXT NOT NULL,
    file_name      TEXT NOT NULL,
    length         INTEGER NOT NULL,
    md5            TEXT NOT NULL,
    created_ms     INTEGER NOT NULL,
    data           BLOB NOT NULL
);
CREATE INDEX reports_created ON reports(created_ms);
CREATE TABLE moments (
    id         INTEGER PRIMARY KEY,
    author_id  INTEGER NOT NULL,
    text       TEXT NOT NULL,
    media_ids  TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX moments_author ON moments(author_id, id);
CREATE TABLE moment_likes (
    moment_id  INTEGER NOT NULL,
    user_id    INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (moment_id, user_id)
) WITHOUT ROWID;
CREATE TABLE moment_comments (
    id         INTEGER PRIMARY KEY,
    moment_id  INTEGER NOT NULL,
    user_id    INTEGER NOT NULL,
    text       TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX moment_comments_moment ON moment_comments(moment_id);
"#,
    r#"
CREATE TABLE groups (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL,
    announcement  TEXT NOT NULL,
    owner_id      INTEGER NOT NULL,
    share_history INTEGER NOT NULL,
    last_gseq     INTEGER NOT NULL DEFAULT 0,
    created_ms    INTEGER NOT NULL
);
CREATE TABLE group_members (
    group_id    INTEGER NOT NULL,
    user_id     INTEGER NOT NULL,
    role        INTEGER NOT NULL,
    joined_gseq INTEGER NOT NULL,
    read_gseq   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (group_id, user_id)
) WITHOUT ROWID;
CREATE INDEX group_members_user ON group_members(user_id);
CREATE TABLE group_log (
    group_id   INTEGER NOT NULL,
    gseq       INTEGER NOT NULL,
    msg_id     INTEGER,
    payload    BLOB,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (group_id, gseq)
) WITHOUT ROWID;
"#,
    // Push (issue 20): devices' push targets, per-conversation settings, and the queue
    // (one row per device; see push.rs for what each column means).
    r#"
CREATE TABLE push_targets (
    user_id        INTEGER NOT NULL,
    device_id      TEXT NOT NULL,
    provider       TEXT NOT NULL,
    token          TEXT NOT NULL,
    endpoint       TEXT NOT NULL,
    p256dh         TEXT NOT NULL,
    auth           TEXT NOT NULL,
    app_id         TEXT NOT NULL,
    sandbox        INTEGER NOT NULL,
    locale         TEXT NOT NULL,
    preview        INTEGER NOT NULL,
    dnd_start_min  INTEGER NOT NULL,
    dnd_end_min    INTEGER NOT NULL,
    utc_offset_min INTEGER NOT NULL,
    registered_ms  INTEGER NOT NULL,
    pushed_seq     INTEGER NOT NULL,
    quiet_until_ms INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID;
CREATE INDEX push_targets_registered ON push_targets(registered_ms, user_id, device_id);
CREATE TABLE push_prefs (
    user_id  INTEGER NOT NULL,
    peer     INTEGER NOT NULL,
    group_id INTEGER NOT NULL,
    mode     INTEGER NOT NULL,
    until_ms INTEGER NOT NULL,
    PRIMARY KEY (user_id, peer, group_id)
) WITHOUT ROWID;
CREATE TABLE push_queue (
    user_id         INTEGER NOT NULL,
    device_id       TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    count           INTEGER NOT NULL,
    summary         BLOB NOT NULL,
    due_ms          INTEGER NOT NULL,
    created_ms      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL,
    version         INTEGER NOT NULL,
    lease_owner     TEXT,
    lease_until     INTEGER NOT NULL,
    late_created_ms INTEGER,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID;
CREATE INDEX push_queue_due ON push_queue(due_ms, user_id, device_id);
"#,
    // Audit (issue 23): every change made through the admin API.
    r#"
CREATE TABLE audit_log (
    id     INTEGER PRIMARY KEY,
    at_ms  INTEGER NOT NULL,
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
ALTER TABLE groups ADD COLUMN dissolved_ms INTEGER NOT NULL DEFAULT 0;
CREATE TABLE limit_overrides (
    user_id    INTEGER PRIMARY KEY,
    limits     TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
"#,
    // Admin users (issue 23, H-users): a disabled (banned) user keeps the reason (NULL:
    // enabled); `ferry_meta.user_id_floor` is the highest id ever deleted, so a new user
    // never gets a deleted one's id.
    r#"
ALTER TABLE users ADD COLUMN disabled_reason TEXT;
CREATE TABLE ferry_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"#,
    // Webhooks (issue 23, H-webhooks): endpoints and their outbox (see hooks.rs).
    r#"
CREATE TABLE hook_endpoints (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    url                  TEXT NOT NULL,
    events               TEXT NOT NULL,
    description          TEXT NOT NULL,
    secret               TEXT NOT NULL,
    prev_secret          TEXT NOT NULL,
    prev_secret_until_ms INTEGER NOT NULL,
    owner_user_id        INTEGER NOT NULL,
    enabled              INTEGER NOT NULL,
    created_ms           INTEGER NOT NULL,
    delivered            INTEGER NOT NULL,
    failed               INTEGER NOT NULL,
    lease_owner          TEXT,
    lease_until          INTEGER NOT NULL
);
CREATE TABLE hook_outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id INTEGER NOT NULL,
    event_id    TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    payload     BLOB NOT NULL,
    created_ms  INTEGER NOT NULL,
    state       INTEGER NOT NULL,
    attempts    INTEGER NOT NULL,
    next_due_ms INTEGER NOT NULL,
    last_error  TEXT NOT NULL,
    done_ms     INTEGER NOT NULL
);
CREATE UNIQUE INDEX hook_outbox_event ON hook_outbox(endpoint_id, event_id);
CREATE INDEX hook_outbox_queue ON hook_outbox(endpoint_id, state, id);
CREATE INDEX hook_outbox_done ON hook_outbox(state, done_ms);
"#,
    // Bots (issue 23, H-bots): the users' bot flag and the bots' API tokens (hashed).
    r#"
ALTER TABLE users ADD COLUMN bot INTEGER NOT NULL DEFAULT 0;
CREATE TABLE bot_tokens (
    id           INTEGER PRIMARY KEY,
    bot_id       INTEGER NOT NULL,
    token_hash   BLOB NOT NULL UNIQUE,
    scopes       TEXT NOT NULL,
    created_ms   INTEGER NOT NULL,
    last_used_ms INTEGER NOT NULL
);
CREATE INDEX bot_tokens_bot ON bot_tokens(bot_id);
"#,
    // Search (issue 24): the feed of changed messages a full-text index follows, written
    // by triggers so that every path that stores, recalls, edits or deletes a message
    // feeds it.
    concat!(
        r#"
CREATE TABLE search_feed (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id INTEGER NOT NULL,
    at_ms  INTEGER NOT NULL
);
CREATE INDEX search_feed_at ON search_feed(at_ms);
"#,
        search_feed_triggers!()
    ),
    // Message operations (issue 24, msgops): edits' history, reactions, messages hidden
    // by one user, pins per conversation, and which messages quote which (a recall
    // empties its quotes).
    r#"
CREATE TABLE message_edits (
    msg_id    INTEGER NOT NULL,
    sender_id INTEGER NOT NULL,
    text      TEXT NOT NULL,
    edited_ms INTEGER NOT NULL
);
CREATE INDEX message_edits_msg ON message_edits(msg_id);
CREATE TABLE reactions (
    msg_id  INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    emoji   TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    PRIMARY KEY (msg_id, user_id, emoji)
) WITHOUT ROWID;
CREATE INDEX reactions_emoji ON reactions(msg_id, emoji, user_id);
CREATE TABLE hidden (
    user_id INTEGER NOT NULL,
    msg_id  INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    PRIMARY KEY (user_id, msg_id)
) WITHOUT ROWID;
CREATE TABLE pins (
    conv       TEXT NOT NULL,
    msg_id     INTEGER NOT NULL,
    by_user_id INTEGER NOT NULL,
    time_ms    INTEGER NOT NULL,
    PRIMARY KEY (conv, msg_id)
) WITHOUT ROWID;
CREATE INDEX pins_msg ON pins(msg_id);
CREATE TABLE replies (
    sender_id     INTEGER NOT NULL,
    client_msg_id INTEGER NOT NULL,
    quoted_id     INTEGER NOT NULL,
    PRIMARY KEY (sender_id, client_msg_id)
) WITHOUT ROWID;
CREATE INDEX replies_quoted ON replies(quoted_id);
"#,
    // Past memberships (issue 24, search): the span of a group's log a member could read,
    // kept when they leave or are removed (a trigger, so every path that ends a membership
    // records it), so that search finds what they saw while they were in.
    r#"
CREATE TABLE group_spans (
    user_id   INTEGER NOT NULL,
    group_id  INTEGER NOT NULL,
    from_gseq INTEGER NOT NULL,
    to_gseq   INTEGER NOT NULL,
    PRIMARY KEY (user_id, group_id, from_gseq)
) WITHOUT ROWID;
CREATE TRIGGER group_spans_end AFTER DELETE ON group_members BEGIN
    INSERT OR REPLACE INTO group_spans (user_id, group_id, from_gseq, to_gseq)
    SELECT OLD.user_id, OLD.group_id, OLD.joined_gseq, g.last_gseq
    FROM groups g WHERE g.id = OLD.group_id;
END;
"#,
    // Conversation state (issue 24, conv): one user's state of a conversation (archived,
    // marked unread, draft, history cleared below a msg_id; the mute is push_prefs'),
    // and a conversation's own retention (a 1:1 pair, lower id first, or a group).
    r#"
CREATE TABLE conv_state (
    user_id        INTEGER NOT NULL,
    peer           INTEGER NOT NULL,
    group_id       INTEGER NOT NULL,
    archived       INTEGER NOT NULL,
    unread         INTEGER NOT NULL,
    draft          TEXT NOT NULL,
    draft_ms       INTEGER NOT NULL,
    cleared_before INTEGER NOT NULL,
    updated_ms     INTEGER NOT NULL,
    PRIMARY KEY (user_id, peer, group_id)
) WITHOUT ROWID;
CREATE TABLE conv_retention (
    a_user_id      INTEGER NOT NULL,
    b_user_id      INTEGER NOT NULL,
    group_id       INTEGER NOT NULL,
    retention_secs INTEGER NOT NULL,
    set_by         INTEGER NOT NULL,
    time_ms        INTEGER NOT NULL,
    PRIMARY KEY (a_user_id, b_user_id, group_id)
) WITHOUT ROWID;
"#,
    // The search feed, cheaper per message (2026-12-05): without AUTOINCREMENT (whose
    // `sqlite_sequence` row every stored message updated) and without the index on
    // `at_ms` (prune walks the feed in id order instead). Its ids stay monotonic because
    // prune never deletes the newest row; when the newest rows were already pruned, a
    // row for no message (msg_id 0) keeps the position `sqlite_sequence` held. The
    // triggers are dropped and made again around the rebuild, unchanged.
    concat!(
        r#"
DROP TRIGGER search_feed_insert;
DROP TRIGGER search_feed_update;
DROP TRIGGER search_feed_delete;
CREATE TABLE search_feed_new (
    id     INTEGER PRIMARY KEY,
    msg_id INTEGER NOT NULL,
    at_ms  INTEGER NOT NULL
);
INSERT INTO search_feed_new (id, msg_id, at_ms) SELECT id, msg_id, at_ms FROM search_feed;
INSERT INTO search_feed_new (id, msg_id, at_ms)
    SELECT seq, 0, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    FROM sqlite_sequence
    WHERE name = 'search_feed' AND seq > (SELECT coalesce(max(id), 0) FROM search_feed);
DROP TABLE search_feed;
ALTER TABLE search_feed_new RENAME TO search_feed;
"#,
        search_feed_triggers!()
    ),
    // The inbox without its index on `created_ms` (2026-12-05): two index entries per
    // 1:1 message (one in each inbox) for an hourly prune. Prune now walks each user's
    // inbox from its oldest seq instead (`InboxStore::prune` in inbox.rs); without the
    // index the writer took ≈ 6 % less CPU per message (docs/benchmarks.md).
    "DROP INDEX inbox_created;",
    // New messages out of the search feed (2026-12-05): the writer hands out message ids
    // in commit order, so the index follows new messages by id (`messages_after`) and the
    // feed names only recalls, edits and deletions. One B-tree (and at low rates one page
    // of each commit's WAL write) fewer per stored message. An index that followed the
    // old feed is rebuilt once (crates/ferry-logic/src/search.rs, `Cursor`).
    "DROP TRIGGER search_feed_insert;",
    // Exact idempotency without an index entry per message (2026-12-07): `messages` is
    // rebuilt without its UNIQUE (sender_id, client_msg_id), whose B-tree took a page of
    // nearly every commit per sender in it. The keys live in `message_keys`, merged from
    // `messages` a few thousand at a time by the writer, which holds the keys of the
    // messages above `message_keys_merged.upto` in memory meanwhile (writer.rs,
    // `KeyTail`). A deleted message takes its key with it.
    concat!(
        r#"
DROP TRIGGER search_feed_update;
DROP TRIGGER search_feed_delete;
CREATE TABLE messages_new (
    id            INTEGER PRIMARY KEY,
    sender_id     INTEGER NOT NULL,
    client_msg_id INTEGER NOT NULL,
    sender_seq    INTEGER NOT NULL,
    recipient_seq INTEGER NOT NULL,
    created_ms    INTEGER NOT NULL,
    body          BLOB
);
INSERT INTO messages_new (id, sender_id, client_msg_id, sender_seq, recipient_seq, created_ms, body)
    SELECT id, sender_id, client_msg_id, sender_seq, recipient_seq, created_ms, body FROM messages;
CREATE TABLE message_keys (
    sender_id     INTEGER NOT NULL,
    client_msg_id INTEGER NOT NULL,
    id            INTEGER NOT NULL,
    PRIMARY KEY (sender_id, client_msg_id)
) WITHOUT ROWID;
INSERT INTO message_keys (sender_id, client_msg_id, id)
    SELECT sender_id, client_msg_id, id FROM messages ORDER BY sender_id, client_msg_id;
CREATE TABLE message_keys_merged (upto INTEGER NOT NULL);
INSERT INTO message_keys_merged (upto) SELECT coalesce(max(id), 0) FROM messages;
DROP TABLE messages;
ALTER TABLE messages_new RENAME TO messages;
CREATE TRIGGER message_keys_delete AFTER DELETE ON messages BEGIN
    DELETE FROM message_keys
    WHERE sender_id = OLD.sender_id AND client_msg_id = OLD.client_msg_id AND id = OLD.id;
END;
"#,
        search_feed_change_triggers!()
    ),
    // Idempotency keys in runs (2026-12-07): a sender's keys above every key of theirs
    // merged before go in runs of dozens to a row (keyruns.rs) instead of a B-tree insert
    // each into `message_keys`, which keeps the others (a device whose ids lie below
    // another's, a key stored anew after its message was deleted). The rows already in
    // `message_keys` stay where they are.
    r#"
CREATE TABLE key_runs (
    sender_id  INTEGER NOT NULL,
    first_cmid INTEGER NOT NULL,
    last_cmid  INTEGER NOT NULL,
    first_id   INTEGER NOT NULL,
    max_id     INTEGER NOT NULL,
    n          INTEGER NOT NULL,
    rest       BLOB NOT NULL,
    PRIMARY KEY (sender_id, first_cmid)
) WITHOUT ROWID;
"#,
];

pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
    let version: usize =
        conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "database schema version {version} is newer than this build ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let txn = conn.transaction()?;
        txn.execute_batch(sql)?;
        txn.pragma_update(None, "user_version", (i + 1) as i64)?;
        txn.commit()?;
        tracing::info!(version = i + 1, "store migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rusqlite::params;

    use super::*;

    /// The integers of a query's first column.
    fn column(conn: &Connection, sql: &str) -> Vec<i64> {
        conn.prepare(sql)
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// A database in a fresh folder with the migrations before the first that contains
    /// `marker` applied, and that migration's index.
    fn migrated_up_to(marker: &str) -> (tempfile::TempDir, Connection, usize) {
        let dir = tempfile::tempdir().unwrap();
        super::super::pcache::install();
        let conn = Connection::open(dir.path().join("ferry.db")).unwrap();
        let before = MIGRATIONS.iter().position(|m| m.contains(marker)).unwrap();
        for (i, sql) in MIGRATIONS[..before].iter().enumerate() {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", (i + 1) as i64)
                .unwrap();
        }
        (dir, conn, before)
    }

    /// The search feed rebuilt without AUTOINCREMENT keeps its rows and its position:
    /// an id handed out before (its row since pruned) is never handed out again.
    #[test]
    fn the_rebuilt_search_feed_goes_on_after_every_id_it_handed_out() {
        // The schema as it was before the rebuild.
        let (_dir, conn, before) = migrated_up_to("CREATE TABLE search_feed_new");
        let store = |conn: &Connection, id: i64| {
            conn.execute(
                "INSERT INTO messages (id, sender_id, client_msg_id, sender_seq, recipient_seq, created_ms, body)
                 VALUES (?1, 1, ?1, ?1, ?1, 1000, x'00')",
                params![id],
            )
            .unwrap();
        };
        for id in 1..=5 {
            store(&conn, id);
        }
        // The old prune took the two newest rows (AUTOINCREMENT remembered id 5).
        conn.execute("DELETE FROM search_feed WHERE id > 3", [])
            .unwrap();
        // The rebuild alone (a later migration takes new messages out of the feed).
        conn.execute_batch(MIGRATIONS[before]).unwrap();

        let rows: Vec<(i64, i64)> = conn
            .prepare("SELECT id, msg_id FROM search_feed ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            rows,
            [(1, 1), (2, 2), (3, 3), (5, 0)],
            "kept, and the position"
        );
        store(&conn, 6);
        let newest: (i64, i64) = conn
            .query_row(
                "SELECT id, msg_id FROM search_feed ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(newest, (6, 6));
        let sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'search_feed'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(!sql.contains("AUTOINCREMENT"), "{sql}");
        let indexes: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'search_feed'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 0);
        // Every change still feeds it.
        conn.execute("UPDATE messages SET body = x'01' WHERE id = 2", [])
            .unwrap();
        conn.execute("DELETE FROM messages WHERE id = 3", [])
            .unwrap();
        assert_eq!(
            column(
                &conn,
                "SELECT msg_id FROM search_feed WHERE id > 6 ORDER BY id"
            ),
            [2, 3]
        );
    }

    /// The rebuild of `messages` without its unique index keeps every message and
    /// moves every key into `message_keys`; a deletion takes the key with it, and
    /// recalls and deletions still feed the search feed.
    #[test]
    fn messages_rebuilt_without_their_unique_index_keep_everything_and_their_keys() {
        let (_dir, mut conn, _) = migrated_up_to("CREATE TABLE messages_new");
        // Two senders with the same client ids, and a body each.
        for id in 1..=6i64 {
            conn.execute(
                "INSERT INTO messages (id, sender_id, client_msg_id, sender_seq, recipient_seq, created_ms, body)
                 VALUES (?1, ?2, ?3, ?1, ?1, 1000, ?4)",
                params![id, 1 + id % 2, 100 + id / 2, vec![id as u8]],
            )
            .unwrap();
        }
        migrate(&mut conn).unwrap();

        let rows = |conn: &Connection, sql: &str| -> Vec<(i64, i64, i64)> {
            conn.prepare(sql)
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        let mut from_messages = rows(
            &conn,
            "SELECT sender_id, client_msg_id, id FROM messages ORDER BY id",
        );
        assert_eq!(from_messages.len(), 6);
        from_messages.sort();
        assert_eq!(
            rows(
                &conn,
                "SELECT sender_id, client_msg_id, id FROM message_keys"
            ),
            from_messages
        );
        let upto: i64 = conn
            .query_row("SELECT upto FROM message_keys_merged", [], |r| r.get(0))
            .unwrap();
        assert_eq!(upto, 6);
        let body: Vec<u8> = conn
            .query_row("SELECT body FROM messages WHERE id = 5", [], |r| r.get(0))
            .unwrap();
        assert_eq!(body, [5]);
        let indexes: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'messages'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 0, "no index on messages but their ids");

        conn.execute("DELETE FROM messages WHERE id = 3", [])
            .unwrap();
        conn.execute("UPDATE messages SET body = NULL WHERE id = 4", [])
            .unwrap();
        let keys: i64 = conn
            .query_row("SELECT count(*) FROM message_keys WHERE id = 3", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(keys, 0, "the deleted message's key went with it");
        assert_eq!(
            column(&conn, "SELECT msg_id FROM search_feed ORDER BY id"),
            [3, 4]
        );
    }

    /// The schema of today: storing a message writes no feed row (its id is its place
    /// in commit order); a recall or edit and a deletion still do.
    #[test]
    fn only_changes_and_deletions_feed_the_search_feed() {
        let dir = tempfile::tempdir().unwrap();
        super::super::pcache::install();
        let mut conn = Connection::open(dir.path().join("ferry.db")).unwrap();
        migrate(&mut conn).unwrap();
        for id in 1..=3 {
            conn.execute(
                "INSERT INTO messages (id, sender_id, client_msg_id, sender_seq, recipient_seq, created_ms, body)
                 VALUES (?1, 1, ?1, ?1, ?1, 1000, x'00')",
                params![id],
            )
            .unwrap();
        }
        let feed = |conn: &Connection| -> Vec<i64> {
            conn.prepare("SELECT msg_id FROM search_feed ORDER BY id")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        assert_eq!(feed(&conn), Vec::<i64>::new());
        conn.execute("UPDATE messages SET body = NULL WHERE id = 2", [])
            .unwrap();
        conn.execute("UPDATE messages SET sender_seq = 9 WHERE id = 1", [])
            .unwrap();
        conn.execute("DELETE FROM messages WHERE id = 3", [])
            .unwrap();
        assert_eq!(feed(&conn), [2, 3], "the recall and the deletion, in order");
    }
}
