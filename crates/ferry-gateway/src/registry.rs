//! The links this gateway holds, by user, and the outbox of each link.
//!
//! Pushes arrive from the bus on any thread; they are appended to the link's bounded
//! outbox and the link's task is woken to write them. A link whose outbox is full is a
//! slow consumer: it is closed (its device will sync on reconnect), never waited for.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use ferry_bus::{Push, PushSink};
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

use crate::Stats;

/// One logged-in long link, as seen by pushes and by the sweeper.
pub(crate) struct Link {
    pub conn_id: u64,
    pub user_id: u64,
    pub device_id: Arc<str>,
    /// The device's acknowledgement: the last synckey it named (`LoginReq.synckey`, then
    /// each `Heartbeat.synckey`). A NOTIFY whose `latest_seq` is not above it is not
    /// written to the link (the device has those entries); reported to logic when the
    /// link goes away.
    pub synckey: AtomicU64,
    /// When a frame last arrived (ms since the gateway started): the sweeper closes links
    /// silent for longer than the heartbeat timeout. One shared sweep instead of a timer
    /// per link keeps an idle link small.
    pub last_rx_ms: AtomicU64,
    /// `TIMED_OUT` / `SHUTDOWN`, set by the sweeper; the link acts on them when woken.
    pub flags: AtomicU8,
    /// The login asked for its own 1:1 messages' entries in their SendAck
    /// (`LoginReq.echo_in_ack`): its requests say so to logic (`BusRequest.echo_in_ack`),
    /// which then leaves it out of those entries' notifies (`Push.skip_conn_id`).
    pub echo_in_ack: bool,
    outbox: Mutex<Outbox>,
    /// The link's task, woken by pushes and the sweeper.
    pub waker: AtomicWaker,
}

/// The link has been silent for longer than the heartbeat timeout.
pub(crate) const TIMED_OUT: u8 = 1;
/// The gateway is shutting down.
pub(crate) const SHUTDOWN: u8 = 2;

#[derive(Default)]
pub(crate) struct Outbox {
    pub frames: VecDeque<Bytes>,
    /// Close the link once the frames above are written.
    pub close: bool,
}

impl Link {
    pub fn new(conn_id: u64, user_id: u64, device_id: Arc<str>, now_ms: u64) -> Self {
        Link {
            conn_id,
            user_id,
            device_id,
            synckey: AtomicU64::new(0),
            last_rx_ms: AtomicU64::new(now_ms),
            flags: AtomicU8::new(0),
            echo_in_ack: false,
            outbox: Mutex::new(Outbox::default()),
            waker: AtomicWaker::new(),
        }
    }

    /// Raises `flag` and wakes the link's task.
    pub fn signal(&self, flag: u8) {
        self.flags.fetch_or(flag, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Whether the task has something to do besides reading: pushes or a flag.
    pub fn wants_attention(&self) -> bool {
        self.flags.load(Ordering::Acquire) != 0 || {
            let out = self.outbox.lock();
            out.close || !out.frames.is_empty()
        }
    }

    /// Queues an encoded frame; false when the outbox is full (the link must go).
    fn enqueue(&self, frame: Bytes, close: bool, cap: usize) -> bool {
        let mut out = self.outbox.lock();
        if out.close {
            return true;
        }
        let fits = out.frames.len() < cap;
        if fits {
            out.frames.push_back(frame);
        }
        out.close = close || !fits;
        drop(out);
        self.waker.wake();
        fits
    }

    /// Moves every queued frame into `buf`; true when the link should close after.
    pub fn drain_into(&self, buf: &mut BytesMut) -> bool {
        let mut out = self.outbox.lock();
        for f in out.frames.drain(..) {
            buf.extend_from_slice(&f);
        }
        if out.frames.capacity() > 16 {
            out.frames = VecDeque::new();
        }
        out.close
    }
}

pub(crate) struct Registry {
    /// By user id (server-assigned, so a fast hash; nobody chooses them).
    links: DashMap<u64, Vec<Arc<Link>>, foldhash::fast::RandomState>,
    outbox_cap: usize,
    stats: Arc<Stats>,
}

impl Registry {
    pub fn new(outbox_cap: usize, stats: Arc<Stats>) -> Self {
        Registry {
            links: DashMap::default(),
            outbox_cap,
            stats,
        }
    }

    pub fn add(&self, link: Arc<Link>) {
        self.links.entry(link.user_id).or_default().push(link);
    }

    pub fn remove(&self, link: &Link) {
        let empty = match self.links.get_mut(&link.user_id) {
            Some(mut v) => {
                v.retain(|l| l.conn_id != link.conn_id);
                v.is_empty()
            }
            None => false,
        };
        if empty {
            self.links.remove_if(&link.user_id, |_, v| v.is_empty());
        }
    }
}

impl Registry {
    /// Flags every link silent since before `silent_before_ms` as timed out, and wakes it.
    /// Returns how many were flagged.
    pub fn sweep(&self, silent_before_ms: u64) -> usize {
        let mut n = 0;
        for links in self.links.iter() {
            for link in links.iter() {
                if link.last_rx_ms.load(Ordering::Relaxed) < silent_before_ms {
                    link.signal(TIMED_OUT);
                    n += 1;
                }
            }
        }
        n
    }

    /// Tells every link the gateway is shutting down.
    pub fn shutdown_all(&self) {
        for links in self.links.iter() {
            for link in links.iter() {
                link.signal(SHUTDOWN);
            }
        }
    }
}

impl PushSink for Registry {
    fn push(&self, push: Push) {
        let Ok(cmd) = u8::try_from(push.cmd) else {
            return;
        };
        if push.body.len() > ferry_proto::MAX_BODY_LEN {
            tracing::error!(len = push.body.len(), "push over the frame limit dropped");
            return;
        }
        // A notify is not written to a link whose device acknowledged its latest seq.
        let latest =
            (cmd == ferry_proto::cmd::NOTIFY && push.notify_seq > 0).then_some(push.notify_seq);
        // Encoded once, shared by every link it goes to.
        let mut buf = BytesMut::new();
        ferry_proto::frame::encode_raw(cmd, 0, &push.body, &mut buf);
        let frame = buf.freeze();
        for user in std::iter::once(push.user_id).chain(push.more_user_ids.iter().copied()) {
            self.deliver(user, &push, &frame, latest);
        }
    }
}

impl Registry {
    fn deliver(&self, user: u64, push: &Push, frame: &Bytes, latest: Option<u64>) {
        let Some(links) = self.links.get(&user) else {
            return;
        };
        for link in links.iter() {
            if !push.device_id.is_empty() && *link.device_id != *push.device_id {
                continue;
            }
            // A device's replaced links are the ones older than its new link: this
            // gateway numbers links in the order they were opened, so a login that logic
            // finished late (its link already closed, the client in again on a newer
            // link) kicks nothing newer than itself.
            if push.keep_conn_id.is_some_and(|keep| link.conn_id >= keep)
                || push.skip_conn_id == Some(link.conn_id)
            {
                continue;
            }
            if latest.is_some_and(|seq| seq <= link.synckey.load(Ordering::Relaxed)) {
                self.stats.notifies_skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if !link.enqueue(frame.clone(), push.close, self.outbox_cap) {
                self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                tracing::info!(conn_id = link.conn_id, "slow consumer; closing link");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::{cmd, v1, ProtoMessage};

    fn notify(latest_seq: u64) -> Push {
        Push {
            user_id: 1,
            cmd: u32::from(cmd::NOTIFY),
            body: v1::Notify {
                latest_seq,
                entries: Vec::new(),
            }
            .encode_to_vec()
            .into(),
            notify_seq: latest_seq,
            ..Default::default()
        }
    }

    fn queued(link: &Link) -> usize {
        let mut buf = BytesMut::new();
        link.drain_into(&mut buf);
        let mut n = 0;
        while let Some(_f) = ferry_proto::Frame::parse(&mut buf, 1 << 20).unwrap() {
            n += 1;
        }
        n
    }

    #[test]
    fn a_notify_the_device_acknowledged_is_not_written() {
        let stats = Arc::new(Stats::default());
        let reg = Registry::new(16, stats.clone());
        let behind = Arc::new(Link::new(1, 1, "phone".into(), 0));
        let ahead = Arc::new(Link::new(2, 1, "tablet".into(), 0));
        reg.add(behind.clone());
        reg.add(ahead.clone());
        behind.synckey.store(4, Ordering::Relaxed);
        ahead.synckey.store(9, Ordering::Relaxed);
        reg.push(notify(5));
        assert_eq!((queued(&behind), queued(&ahead)), (1, 0));
        reg.push(notify(9));
        assert_eq!((queued(&behind), queued(&ahead)), (1, 0));
        reg.push(notify(10));
        assert_eq!((queued(&behind), queued(&ahead)), (1, 1));
        assert_eq!(stats.notifies_skipped.load(Ordering::Relaxed), 2);
        // Other pushes go to every link whatever its synckey.
        reg.push(Push {
            user_id: 1,
            cmd: u32::from(cmd::TYPING_PUSH),
            ..Default::default()
        });
        assert_eq!((queued(&behind), queued(&ahead)), (1, 1));
    }

    /// The link that took a message's entry in its SendAck is left out of the notify;
    /// the user's other links get it.
    #[test]
    fn a_notify_skips_the_link_that_took_the_entry_in_its_ack() {
        let reg = Registry::new(16, Arc::new(Stats::default()));
        let sender = Arc::new(Link::new(1, 1, "phone".into(), 0));
        let other = Arc::new(Link::new(2, 1, "tablet".into(), 0));
        reg.add(sender.clone());
        reg.add(other.clone());
        reg.push(Push {
            skip_conn_id: Some(1),
            ..notify(5)
        });
        assert_eq!((queued(&sender), queued(&other)), (0, 1));
        reg.push(notify(6));
        assert_eq!((queued(&sender), queued(&other)), (1, 1));
    }

    #[test]
    fn a_kick_for_a_replaced_device_spares_its_new_link() {
        let reg = Registry::new(16, Arc::new(Stats::default()));
        let old = Arc::new(Link::new(1, 1, "phone".into(), 0));
        let new = Arc::new(Link::new(2, 1, "phone".into(), 0));
        let other = Arc::new(Link::new(3, 1, "tablet".into(), 0));
        for l in [&old, &new, &other] {
            reg.add(l.clone());
        }
        reg.push(Push {
            user_id: 1,
            device_id: "phone".into(),
            cmd: u32::from(cmd::KICK),
            close: true,
            keep_conn_id: Some(2),
            ..Default::default()
        });
        let mut buf = BytesMut::new();
        assert!(old.drain_into(&mut buf), "the old link closes");
        assert_eq!(buf.len(), ferry_proto::HEADER_LEN);
        for l in [&new, &other] {
            let mut buf = BytesMut::new();
            assert!(!l.drain_into(&mut buf));
            assert!(buf.is_empty());
        }
    }

    /// A login that logic finished after the client had given up on it (its link closed,
    /// the device logged in again on a newer link of the same gateway) must not kick the
    /// newer link: only links older than the one kept are replaced.
    #[test]
    fn a_late_login_does_not_kick_a_newer_link_of_its_device() {
        let reg = Registry::new(16, Arc::new(Stats::default()));
        let newer = Arc::new(Link::new(7, 1, "phone".into(), 0));
        reg.add(newer.clone());
        // The late login was link 5, gone by now.
        reg.push(Push {
            user_id: 1,
            device_id: "phone".into(),
            cmd: u32::from(cmd::KICK),
            close: true,
            keep_conn_id: Some(5),
            ..Default::default()
        });
        let mut buf = BytesMut::new();
        assert!(!newer.drain_into(&mut buf), "the newer link stays open");
        assert!(buf.is_empty());
    }
}
