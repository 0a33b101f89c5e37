//! The links this gateway holds, by user, and the outbox of each link.
//!
//! Pushes arrive from the bus on any thread; they are appended to the link's bounded
//! outbox and the link's task is woken to write them. A link whose outbox is full is a
//! slow consumer: it is closed (its device will sync on reconnect), never waited for.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use ferry_bus::{Push, PushSink};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::Stats;

/// One logged-in long link, as seen by pushes.
pub(crate) struct Link {
    pub conn_id: u64,
    pub user_id: u64,
    pub device_id: Arc<str>,
    /// Last synckey the device reported in a heartbeat.
    pub synckey: AtomicU64,
    outbox: Mutex<Outbox>,
    pub wake: Notify,
}

#[derive(Default)]
pub(crate) struct Outbox {
    pub frames: VecDeque<Bytes>,
    /// Close the link once the frames above are written.
    pub close: bool,
}

impl Link {
    pub fn new(conn_id: u64, user_id: u64, device_id: Arc<str>) -> Self {
        Link {
            conn_id,
            user_id,
            device_id,
            synckey: AtomicU64::new(0),
            outbox: Mutex::new(Outbox::default()),
            wake: Notify::new(),
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
        self.wake.notify_one();
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
    links: DashMap<u64, Vec<Arc<Link>>>,
    outbox_cap: usize,
    stats: Arc<Stats>,
}

impl Registry {
    pub fn new(outbox_cap: usize, stats: Arc<Stats>) -> Self {
        Registry {
            links: DashMap::new(),
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

impl PushSink for Registry {
    fn push(&self, push: Push) {
        let Ok(cmd) = u8::try_from(push.cmd) else {
            return;
        };
        if push.body.len() > ferry_proto::MAX_BODY_LEN {
            tracing::error!(len = push.body.len(), "push over the frame limit dropped");
            return;
        }
        // Encoded once, shared by every link it goes to.
        let mut buf = BytesMut::new();
        ferry_proto::frame::encode_raw(cmd, 0, &push.body, &mut buf);
        let frame = buf.freeze();
        for user in std::iter::once(push.user_id).chain(push.more_user_ids.iter().copied()) {
            self.deliver(user, &push, &frame);
        }
    }
}

impl Registry {
    fn deliver(&self, user: u64, push: &Push, frame: &Bytes) {
        let Some(links) = self.links.get(&user) else {
            return;
        };
        for link in links.iter() {
            if !push.device_id.is_empty() && *link.device_id != *push.device_id {
                continue;
            }
            if !link.enqueue(frame.clone(), push.close, self.outbox_cap) {
                self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                tracing::info!(conn_id = link.conn_id, "slow consumer; closing link");
            }
        }
    }
}
