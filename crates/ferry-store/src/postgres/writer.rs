//! The PostgreSQL write queue: group commit for messages and inbox events.
//!
//! Requests hand their writes to a queue; a writer task takes every write waiting (up to
//! [`MAX_BATCH_ROWS`] rows) and stores the whole batch in **one transaction of two round
//! trips**, its statements pipelined on one connection (sent together, answered
//! together):
//!
//! 1. `BEGIN`; lock the batch's users' rows in ascending id order and read their
//!    `last_seq` (`SELECT … ORDER BY id FOR UPDATE`); read which `(sender,
//!    client_msg_id)` of the batch are already stored. The duplicate check runs after
//!    the lock in the same pipeline: any other writer of the same sender (another
//!    writer task, another logic node) holds the same row lock while it inserts, so a
//!    key absent here cannot appear before this transaction ends.
//! 2. With that, the seqs are allocated here in queue order (each user's `last_seq`
//!    moves once per batch, not once per message), then: one `UPDATE users` for every
//!    user's new `last_seq` (`unnest`), one statement inserting every new message and
//!    both of its inbox entries (`unnest`, a data-modifying CTE), one inserting every
//!    event, and `COMMIT`.
//!
//! A statement that fails aborts the transaction, and the pipelined `COMMIT` then rolls
//! it back: nothing of the batch is written. A race lost (unique index, deadlock,
//! serialisation) retries the whole batch; a connection lost answers every write of the
//! batch [`StoreError::Unavailable`] (the write may or may not have committed: the
//! client's retry with the same `client_msg_id` is idempotent).
//!
//! With several writer tasks (`PgConfig::writers`), a write goes to the writer chosen by
//! its first user (the sender), so one user's sends keep their order.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::{Object, Pool};
use ferry_proto::ProtoMessage;
use futures_util::future::{join, join3, join_all};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;

use super::{is_retryable, WRITE_ATTEMPTS};
use crate::{Appended, AppendedBatch, NewEvent, NewMessage, Result, StoreError};

/// Most rows (messages and events) one batch takes; a single write larger than that is
/// still taken whole.
const MAX_BATCH_ROWS: usize = 1024;
/// Writes that may wait per writer; past that they are refused as unavailable (the
/// database is not keeping up) rather than queued without bound.
const QUEUE: usize = 16 * 1024;

const LOCK_USERS: &str =
    "SELECT id, last_seq FROM users WHERE id = ANY($1::int8[]) ORDER BY id FOR UPDATE";

const EXISTING: &str =
    "SELECT m.sender_id, m.client_msg_id, m.id, m.sender_seq, m.recipient_seq, m.created_ms
     FROM messages m JOIN unnest($1::int8[], $2::int8[]) AS k(s, c)
       ON m.sender_id = k.s AND m.client_msg_id = k.c";

const SET_LAST_SEQ: &str = "UPDATE users SET last_seq = v.seq
     FROM unnest($1::int8[], $2::int8[]) AS v(id, seq) WHERE users.id = v.id";

/// Every new message of the batch and both of its inbox entries, in one statement.
/// `nextval` runs in `ord` order, so message ids follow the queue.
const INSERT_MESSAGES: &str = "WITH input AS (
       SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::int8[],
                            $6::int8[], $7::bytea[])
         WITH ORDINALITY AS t(sender, recipient, cmid, sseq, rseq, tm, body, ord)
     ), m AS (
       INSERT INTO messages (sender_id, client_msg_id, sender_seq, recipient_seq, created_ms, body)
       SELECT sender, cmid, sseq, rseq, tm, body FROM input ORDER BY ord
       RETURNING id, sender_id, client_msg_id
     ), entries AS (
       INSERT INTO inbox (user_id, seq, msg_id, created_ms)
       SELECT i.sender, i.sseq, m.id, i.tm FROM m
         JOIN input i ON i.sender = m.sender_id AND i.cmid = m.client_msg_id
       UNION ALL
       SELECT i.recipient, i.rseq, m.id, i.tm FROM m
         JOIN input i ON i.sender = m.sender_id AND i.cmid = m.client_msg_id
         WHERE i.recipient <> i.sender
     )
     SELECT id, sender_id, client_msg_id FROM m";

const INSERT_EVENTS: &str = "INSERT INTO inbox (user_id, seq, msg_id, created_ms, payload)
     SELECT u, s, NULL, t, p FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::bytea[]) AS e(u, s, t, p)";

type Reply<T> = oneshot::Sender<Result<T>>;

/// A write waiting for the writer.
enum Work {
    /// One result per message, in order, each with its message given back; `Err` only
    /// when the batch failed.
    Messages(Vec<NewMessage>, Reply<AppendedBatch>),
    Events(Vec<NewEvent>, Reply<Vec<u64>>),
}

impl Work {
    fn rows(&self) -> usize {
        match self {
            Work::Messages(m, _) => m.len(),
            Work::Events(e, _) => e.len(),
        }
    }
}

/// The writer tasks' queues. Dropping it lets them finish what is queued and stop.
pub(super) struct Writers {
    queues: Vec<mpsc::Sender<Work>>,
}

impl Writers {
    pub(super) fn start(pool: Pool, writers: usize) -> Self {
        let queues = (0..writers.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(writer(pool.clone(), rx));
                tx
            })
            .collect();
        Writers { queues }
    }

    async fn submit<T>(&self, key: u64, work: impl FnOnce(Reply<T>) -> Work) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let queue = &self.queues[(key % self.queues.len() as u64) as usize];
        queue.try_send(work(tx)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                metrics::counter!("ferry_store_write_queue_full_total").increment(1);
                StoreError::Unavailable("the database is not keeping up with writes".into())
            }
            mpsc::error::TrySendError::Closed(_) => closed(),
        })?;
        rx.await.map_err(|_| closed())?
    }

    /// Stores messages in one batch (with whatever else is queued): one result per
    /// message, in order, with the message.
    pub(super) async fn messages(&self, msgs: Vec<NewMessage>) -> Result<AppendedBatch> {
        let Some(first) = msgs.first() else {
            return Ok(Vec::new());
        };
        let key = first.sender_id;
        self.submit(key, |tx| Work::Messages(msgs, tx)).await
    }

    /// Appends events to inboxes in one batch; their seqs, in order. An unknown user
    /// refuses them all.
    pub(super) async fn events(&self, events: Vec<NewEvent>) -> Result<Vec<u64>> {
        let Some(first) = events.first() else {
            return Ok(Vec::new());
        };
        let key = first.user_id;
        self.submit(key, |tx| Work::Events(events, tx)).await
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("the store is closed".into())
}

async fn writer(pool: Pool, mut rx: mpsc::Receiver<Work>) {
    let mut batch: Vec<Work> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut rows = first.rows();
        batch.push(first);
        while rows < MAX_BATCH_ROWS {
            match rx.try_recv() {
                Ok(w) => {
                    rows += w.rows();
                    batch.push(w);
                }
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let outcome = write_batch(&pool, &batch).await;
        metrics::histogram!("ferry_store_batch_size").record(rows as f64);
        metrics::histogram!("ferry_store_batch_seconds").record(started.elapsed().as_secs_f64());
        metrics::gauge!("ferry_store_write_queue").set(rx.len() as f64);
        match outcome {
            Ok(answers) => {
                for (work, answer) in batch.drain(..).zip(answers) {
                    match (work, answer) {
                        (Work::Messages(msgs, tx), Answer::Messages(r)) => {
                            let _ = tx.send(Ok(msgs.into_iter().zip(r).collect()));
                        }
                        (Work::Events(_, tx), Answer::Events(r)) => {
                            let _ = tx.send(r);
                        }
                        // Answers are built from the batch in order, one per write.
                        (Work::Messages(_, tx), _) => {
                            let _ =
                                tx.send(Err(StoreError::WriteFailed("mismatched answer".into())));
                        }
                        (Work::Events(_, tx), _) => {
                            let _ =
                                tx.send(Err(StoreError::WriteFailed("mismatched answer".into())));
                        }
                    }
                }
            }
            Err(e) => {
                let reason = if matches!(e, StoreError::Unavailable(_)) {
                    "unavailable"
                } else {
                    "error"
                };
                metrics::counter!("ferry_store_batch_failures_total", "reason" => reason)
                    .increment(1);
                tracing::warn!(error = %e, writes = batch.len(), "store: batch not written");
                for work in batch.drain(..) {
                    match work {
                        Work::Messages(_, tx) => {
                            let _ = tx.send(Err(same_error(&e)));
                        }
                        Work::Events(_, tx) => {
                            let _ = tx.send(Err(same_error(&e)));
                        }
                    }
                }
            }
        }
    }
    tracing::debug!("postgres store writer stopped");
}

/// The error of a failed batch, for each of its writes.
fn same_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        other => StoreError::WriteFailed(other.to_string()),
    }
}

/// What one write of the batch is told once the batch committed.
enum Answer {
    Messages(Vec<Result<Appended>>),
    Events(Result<Vec<u64>>),
}

/// Where a message's answer comes from.
enum Slot {
    /// Decided before writing: a stored duplicate, or an unknown user.
    Done(Result<Appended>),
    /// The `i`th new message of the batch: its id comes back from the insert.
    New(usize),
    /// A second copy, in this batch, of the `i`th new message.
    CopyOf(usize),
}

/// A new message's row.
struct Row {
    sender: i64,
    recipient: i64,
    cmid: i64,
    sender_seq: i64,
    recipient_seq: i64,
    time_ms: i64,
    body: Vec<u8>,
}

async fn write_batch(pool: &Pool, batch: &[Work]) -> Result<Vec<Answer>> {
    let mut client = pool.get().await.map_err(super::pool_err)?;
    let mut last = None;
    for _ in 0..WRITE_ATTEMPTS {
        match attempt(&mut client, batch).await {
            Ok(answers) => return Ok(answers),
            Err(e) => {
                // Whatever failed, leave no transaction open on a pooled connection.
                if !client.is_closed() {
                    let _ = client.batch_execute("ROLLBACK").await;
                }
                match e {
                    StoreError::Postgres(pe) if is_retryable(&pe) => last = Some(pe),
                    other => return Err(other),
                }
            }
        }
    }
    Err(last.map_or(
        StoreError::WriteFailed("too many conflicts".into()),
        StoreError::Postgres,
    ))
}

/// One try at the batch: two round trips.
async fn attempt(client: &mut Object, batch: &[Work]) -> Result<Vec<Answer>> {
    // Prepared once per connection (the pool keeps the cache with it).
    let lock = client.prepare_cached(LOCK_USERS).await?;
    let existing = client.prepare_cached(EXISTING).await?;
    let set_last = client.prepare_cached(SET_LAST_SEQ).await?;
    let insert_messages = client.prepare_cached(INSERT_MESSAGES).await?;
    let insert_events = client.prepare_cached(INSERT_EVENTS).await?;

    // What the batch touches.
    let mut users: Vec<i64> = Vec::new();
    let (mut senders, mut cmids) = (Vec::new(), Vec::new());
    for work in batch {
        match work {
            Work::Messages(msgs, _) => {
                for m in msgs {
                    users.push(m.sender_id as i64);
                    users.push(m.recipient_id as i64);
                    senders.push(m.sender_id as i64);
                    cmids.push(m.client_msg_id as i64);
                }
            }
            Work::Events(events, _) => users.extend(events.iter().map(|e| e.user_id as i64)),
        }
    }
    users.sort_unstable();
    users.dedup();

    // Round trip 1: BEGIN, the locks (with the users' last seqs), the stored duplicates.
    // (`join3` polls its futures in order the first time, which is when each sends its
    // statement: they go out in this order, back to back.)
    let (begun, locked, found) = join3(
        client.batch_execute("BEGIN"),
        client.query(&lock, &[&users]),
        async {
            if senders.is_empty() {
                Ok(Vec::new())
            } else {
                client.query(&existing, &[&senders, &cmids]).await
            }
        },
    )
    .await;
    begun?;
    let mut last_seq: HashMap<i64, i64> = locked?
        .iter()
        .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
        .collect();
    let stored: HashMap<(i64, i64), Appended> = found?
        .iter()
        .map(|r| {
            (
                (r.get::<_, i64>(0), r.get::<_, i64>(1)),
                Appended {
                    msg_id: r.get::<_, i64>(2) as u64,
                    sender_seq: r.get::<_, i64>(3) as u64,
                    recipient_seq: r.get::<_, i64>(4) as u64,
                    time_ms: r.get(5),
                    duplicate: true,
                },
            )
        })
        .collect();

    // Seqs in queue order.
    let mut rows: Vec<Row> = Vec::new();
    let mut in_batch: HashMap<(i64, i64), usize> = HashMap::new();
    let mut slots: Vec<Vec<Slot>> = Vec::with_capacity(batch.len());
    let mut events_out: Vec<Result<Vec<u64>>> = Vec::new();
    let (mut ev_users, mut ev_seqs, mut ev_times, mut ev_payloads) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut bumped: HashSet<i64> = HashSet::new();
    let mut next = |user: i64, last_seq: &mut HashMap<i64, i64>| -> i64 {
        let s = last_seq.get_mut(&user).map(|s| {
            *s += 1;
            *s
        });
        bumped.insert(user);
        s.unwrap_or(0)
    };
    for work in batch {
        match work {
            Work::Messages(msgs, _) => {
                let mut out = Vec::with_capacity(msgs.len());
                for m in msgs {
                    let (sender, recipient) = (m.sender_id as i64, m.recipient_id as i64);
                    let key = (sender, m.client_msg_id as i64);
                    if let Some(dup) = stored.get(&key) {
                        out.push(Slot::Done(Ok(dup.clone())));
                        continue;
                    }
                    if let Some(&i) = in_batch.get(&key) {
                        out.push(Slot::CopyOf(i));
                        continue;
                    }
                    if let Some(unknown) = [recipient, sender]
                        .into_iter()
                        .find(|u| !last_seq.contains_key(u))
                    {
                        out.push(Slot::Done(Err(StoreError::UnknownUser(unknown as u64))));
                        continue;
                    }
                    let sender_seq = next(sender, &mut last_seq);
                    let recipient_seq = if recipient == sender {
                        sender_seq
                    } else {
                        next(recipient, &mut last_seq)
                    };
                    // Stored without its msg_id (not known before the insert); reads fill
                    // it in from the row.
                    let mut body = m.message.clone();
                    body.msg_id = 0;
                    body.time_ms = m.time_ms;
                    in_batch.insert(key, rows.len());
                    out.push(Slot::New(rows.len()));
                    rows.push(Row {
                        sender,
                        recipient,
                        cmid: key.1,
                        sender_seq,
                        recipient_seq,
                        time_ms: m.time_ms,
                        body: body.encode_to_vec(),
                    });
                }
                slots.push(out);
            }
            Work::Events(events, _) => {
                if let Some(e) = events
                    .iter()
                    .find(|e| !last_seq.contains_key(&(e.user_id as i64)))
                {
                    events_out.push(Err(StoreError::UnknownUser(e.user_id)));
                    slots.push(Vec::new());
                    continue;
                }
                let mut seqs = Vec::with_capacity(events.len());
                for ev in events {
                    let user = ev.user_id as i64;
                    let seq = next(user, &mut last_seq);
                    let mut entry = ev.entry.clone();
                    entry.seq = 0;
                    let time = entry.time_ms;
                    entry.time_ms = 0;
                    ev_users.push(user);
                    ev_seqs.push(seq);
                    ev_times.push(time);
                    ev_payloads.push(entry.encode_to_vec());
                    seqs.push(seq as u64);
                }
                events_out.push(Ok(seqs));
                slots.push(Vec::new());
            }
        }
    }
    let (set_ids, set_seqs): (Vec<i64>, Vec<i64>) = bumped
        .iter()
        .map(|u| (*u, last_seq.get(u).copied().unwrap_or(0)))
        .unzip();

    // Round trip 2: the users' new last seqs, the messages and their inbox entries, the
    // events, COMMIT — all pipelined. A statement that fails aborts the transaction and
    // the COMMIT rolls it back.
    let m_senders: Vec<i64> = rows.iter().map(|r| r.sender).collect();
    let m_recipients: Vec<i64> = rows.iter().map(|r| r.recipient).collect();
    let m_cmids: Vec<i64> = rows.iter().map(|r| r.cmid).collect();
    let m_sseqs: Vec<i64> = rows.iter().map(|r| r.sender_seq).collect();
    let m_rseqs: Vec<i64> = rows.iter().map(|r| r.recipient_seq).collect();
    let m_times: Vec<i64> = rows.iter().map(|r| r.time_ms).collect();
    let m_bodies: Vec<&[u8]> = rows.iter().map(|r| r.body.as_slice()).collect();
    let set_params: [&(dyn ToSql + Sync); 2] = [&set_ids, &set_seqs];
    let message_params: [&(dyn ToSql + Sync); 7] = [
        &m_senders,
        &m_recipients,
        &m_cmids,
        &m_sseqs,
        &m_rseqs,
        &m_times,
        &m_bodies,
    ];
    let event_params: [&(dyn ToSql + Sync); 4] = [&ev_users, &ev_seqs, &ev_times, &ev_payloads];
    let mut statements = Vec::new();
    if !set_ids.is_empty() {
        statements.push(client.query(&set_last, &set_params));
    }
    let messages_at = statements.len();
    if !rows.is_empty() {
        statements.push(client.query(&insert_messages, &message_params));
    }
    if !ev_users.is_empty() {
        statements.push(client.query(&insert_events, &event_params));
    }
    let (results, committed) = join(join_all(statements), client.batch_execute("COMMIT")).await;
    let mut ids: HashMap<(i64, i64), u64> = HashMap::new();
    for (i, r) in results.into_iter().enumerate() {
        let r = r?;
        if i == messages_at && !rows.is_empty() {
            ids = r
                .iter()
                .map(|row| {
                    (
                        (row.get::<_, i64>(1), row.get::<_, i64>(2)),
                        row.get::<_, i64>(0) as u64,
                    )
                })
                .collect();
        }
    }
    committed?;
    if ids.len() != rows.len() {
        return Err(StoreError::WriteFailed(format!(
            "{} messages inserted of {}",
            ids.len(),
            rows.len()
        )));
    }

    // The answers, in the batch's order.
    let appended = |i: usize, duplicate: bool| -> Appended {
        let r = &rows[i];
        Appended {
            msg_id: ids.get(&(r.sender, r.cmid)).copied().unwrap_or(0),
            sender_seq: r.sender_seq as u64,
            recipient_seq: r.recipient_seq as u64,
            time_ms: r.time_ms,
            duplicate,
        }
    };
    let mut events_out = events_out.into_iter();
    let mut answers = Vec::with_capacity(batch.len());
    for (work, slots) in batch.iter().zip(slots) {
        answers.push(match work {
            Work::Messages(..) => Answer::Messages(
                slots
                    .into_iter()
                    .map(|s| match s {
                        Slot::Done(r) => r,
                        Slot::New(i) => Ok(appended(i, false)),
                        Slot::CopyOf(i) => Ok(appended(i, true)),
                    })
                    .collect(),
            ),
            Work::Events(..) => Answer::Events(
                events_out
                    .next()
                    .unwrap_or_else(|| Err(StoreError::WriteFailed("missing answer".into()))),
            ),
        });
    }
    Ok(answers)
}
