//! Who sent what to whom and what arrived: one [`Ledger`] per direction of a pair of
//! users, shared by the sender (sent, acknowledged) and the receiver (delivered,
//! duplicated). The p2p, reconnect and faults scenarios count losses and duplicates
//! with it, exactly, by each message's sequence number; reconnect and faults also
//! share the steady SDK sender that fills it ([`send_steadily`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_client::Client;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A growable bit set of message seqs.
#[derive(Debug, Default)]
pub struct Bits(Vec<u64>);

impl Bits {
    /// Sets bit `i`; false when it was already set.
    pub fn set(&mut self, i: u64) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        let was = self.0[w] & (1 << b) != 0;
        self.0[w] |= 1 << b;
        !was
    }

    pub fn get(&self, i: u64) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

/// One direction of a pair: what the sender sent and had acknowledged, and what the
/// receiver got.
#[derive(Debug, Default)]
pub struct Ledger {
    pub inner: Mutex<Book>,
    /// Woken on every delivery (closed-loop credit).
    pub delivered: Notify,
}

impl Ledger {
    /// Records the delivery of a message whose text starts with its seq (`SEQ …`, as
    /// the bench's senders write them); false for a duplicate or another text.
    pub fn receive_text(&self, text: &str) -> bool {
        let Some(seq) = text.split(' ').next().and_then(|s| s.parse().ok()) else {
            return false;
        };
        self.inner.lock().expect("ledger").receive(seq)
    }
}

#[derive(Debug, Default)]
pub struct Book {
    pub sent: u64,
    pub acked: Bits,
    pub acked_n: u64,
    pub received: Bits,
    pub received_n: u64,
    pub duplicated: u64,
    pub errors: u64,
    /// Refusals by the server's error code name (`UNAVAILABLE`, …), adding up to
    /// `errors` where the code is known.
    pub refused: std::collections::BTreeMap<String, u64>,
}

impl Book {
    /// A send refused with `code` (an `ErrorCode` value).
    pub fn refuse(&mut self, code: i32) {
        self.errors += 1;
        let name = ferry_proto::v1::ErrorCode::try_from(code)
            .map(|c| c.as_str_name().to_owned())
            .unwrap_or_else(|_| format!("CODE_{code}"));
        *self.refused.entry(name).or_default() += 1;
    }

    /// Every sent message is answered and every acknowledged one delivered.
    pub fn settled(&self) -> bool {
        self.acked_n + self.errors >= self.sent && self.received_n >= self.acked_n
    }

    /// Acknowledged (durable) but never delivered.
    pub fn lost(&self) -> u64 {
        (1..=self.sent)
            .filter(|&s| self.acked.get(s) && !self.received.get(s))
            .count() as u64
    }

    /// Records the acknowledgement of `seq`; false when it was already recorded.
    pub fn ack(&mut self, seq: u64) -> bool {
        let fresh = self.acked.set(seq);
        if fresh {
            self.acked_n += 1;
        }
        fresh
    }

    /// Records a delivery of `seq`; false for a duplicate.
    pub fn receive(&mut self, seq: u64) -> bool {
        if self.received.set(seq) {
            self.received_n += 1;
            true
        } else {
            self.duplicated += 1;
            false
        }
    }
}

/// The books of many ledgers added up.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub sent: u64,
    pub acked: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub errors: u64,
    pub refused: std::collections::BTreeMap<String, u64>,
}

impl Totals {
    pub fn of(ledgers: &[Arc<Ledger>]) -> Totals {
        let mut t = Totals::default();
        for l in ledgers {
            let b = l.inner.lock().expect("ledger");
            t.sent += b.sent;
            t.acked += b.acked_n;
            t.received += b.received_n;
            t.lost += b.lost();
            t.duplicated += b.duplicated;
            t.errors += b.errors;
            for (k, v) in &b.refused {
                *t.refused.entry(k.clone()).or_default() += v;
            }
        }
        t
    }

    /// The figures under the names a worker reports them with.
    pub fn json(&self) -> Value {
        json!({
            "sent": self.sent,
            "acked": self.acked,
            "received": self.received,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "errors": self.errors,
            "refused_by_code": self.refused,
        })
    }
}

/// Sends `text(seq)` to `peer` with the SDK every `period` (the first after `offset`)
/// until `stop`, one message at a time: a send runs to its end (the SDK retries it
/// through any outage), so a slow one delays the next and the stop only keeps the next
/// from starting. Counts in `out`; `took` hears how long each send took.
pub async fn send_steadily(
    client: &Client,
    peer: &str,
    out: &Ledger,
    (offset, period): (Duration, Duration),
    stop: CancellationToken,
    text: impl Fn(u64) -> String,
    mut took: impl FnMut(Duration),
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        seq += 1;
        out.inner.lock().expect("ledger").sent = seq;
        let t = Instant::now();
        match client.send_text(peer, &text(seq)).await {
            Ok(_) => {
                out.inner.lock().expect("ledger").ack(seq);
            }
            Err(e) => {
                out.inner.lock().expect("ledger").errors += 1;
                eprintln!("send {seq} failed for good: {e}");
            }
        }
        took(t.elapsed());
    }
}

/// Waits, `drain` at most, until every ledger is settled (every send answered, every
/// acknowledged message delivered).
pub async fn settle(ledgers: &[Arc<Ledger>], drain: Duration) {
    let start = Instant::now();
    while start.elapsed() < drain {
        if ledgers
            .iter()
            .all(|l| l.inner.lock().expect("ledger").settled())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
