//! The notifier: which gateways hold a user's links (presence, kept from the gateways'
//! link events) and the pushes to them — notifies that an inbox grew, kicks, typing.
//!
//! A push that fails is counted, never fatal: the device syncs at its next login or
//! notify. Users whose inbox grew while no route to them was known here, or while a
//! LOGIN of theirs answered here waited for its link's route, are remembered for a
//! minute and told as soon as their route arrives (see [`Notifier::link_up`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use ferry_bus::{Bus, Push};
use ferry_proto::{cmd, v1, ProtoMessage};
use ferry_store::Store;

use crate::presence::Presence;

/// Where pushes go: the bus, or (in unit tests) a list that records them.
enum Outlet {
    Bus(Arc<dyn Bus>),
    #[cfg(test)]
    Record(parking_lot::Mutex<Vec<(String, Push)>>),
}

/// The entry a notify carries: an entry, or a message's (then the notify is encoded
/// from the message itself, and an entry is built only for a bot's webhook).
enum NotifyEntry<'m> {
    Entry(v1::Entry),
    Message(&'m v1::Message),
}

impl NotifyEntry<'_> {
    /// The entry, at `seq`.
    fn build(self, seq: u64) -> v1::Entry {
        match self {
            NotifyEntry::Entry(e) => v1::Entry { seq, ..e },
            NotifyEntry::Message(m) => v1::Entry {
                seq,
                kind: Some(v1::entry::Kind::Message(m.clone())),
                ..Default::default()
            },
        }
    }
}

/// `Notify{latest_seq: seq, entries: [Entry{seq, message}]}` encoded from a borrowed
/// message — the bytes prost gives for it (tests compare them), without copying the
/// message into an entry first — or with no entry when the entry would take more than
/// `inline_bytes`. Returns the body and how many entries ride in it.
fn message_notify(seq: u64, message: &v1::Message, inline_bytes: usize) -> (Bytes, u64) {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
    // Field 1 (`Notify.latest_seq`, `Entry.seq`): left out when zero, as proto3 does.
    let seq_len = if seq == 0 {
        0
    } else {
        1 + encoded_len_varint(seq)
    };
    let message_len = message.encoded_len();
    // Field 2 (`Entry.message`, `Notify.entries`): a one-byte key and the length.
    let entry_len = seq_len + 1 + encoded_len_varint(message_len as u64) + message_len;
    if entry_len > inline_bytes {
        let bare = v1::Notify {
            latest_seq: seq,
            entries: Vec::new(),
        };
        return (Bytes::from(bare.encode_to_vec()), 0);
    }
    let mut buf =
        Vec::with_capacity(seq_len + 1 + encoded_len_varint(entry_len as u64) + entry_len);
    let seq_field = |buf: &mut Vec<u8>| {
        if seq != 0 {
            encode_key(1, WireType::Varint, buf);
            encode_varint(seq, buf);
        }
    };
    seq_field(&mut buf);
    encode_key(2, WireType::LengthDelimited, &mut buf);
    encode_varint(entry_len as u64, &mut buf);
    seq_field(&mut buf);
    encode_key(2, WireType::LengthDelimited, &mut buf);
    encode_varint(message_len as u64, &mut buf);
    message.encode_raw(&mut buf);
    (Bytes::from(buf), 1)
}

/// `Notify{latest_seq: entry.seq, entries: [entry]}` encoded, or with no entry when it
/// would take more than `inline_bytes`. Returns the body and how many entries ride in it.
fn entry_notify(entry: v1::Entry, inline_bytes: usize) -> (Bytes, u64) {
    let latest_seq = entry.seq;
    let entries = if entry.encoded_len() <= inline_bytes {
        vec![entry]
    } else {
        Vec::new()
    };
    let inline = entries.len() as u64;
    let notify = v1::Notify {
        latest_seq,
        entries,
    };
    (Bytes::from(notify.encode_to_vec()), inline)
}

/// How long a LOGIN answered here waits for its link's route at most (a route comes in
/// milliseconds, seconds under load; a link that never came up is forgotten after it).
const LOGIN_ROUTE_WAIT: Duration = Duration::from_secs(30);

pub(crate) struct Notifier {
    presence: Presence,
    out: Outlet,
    /// For a notify without entries: the newest seq of the user's inbox.
    store: Arc<dyn Store>,
    /// Entries whose encoding is at most this many bytes ride inside the notify.
    inline_bytes: usize,
    /// Users whose inbox grew while this node knew no route to them: the seq, and when.
    /// A link that logs in races the news of its route to the logic nodes (in a cluster
    /// by a few milliseconds, more under load); an entry stored in between would get no
    /// notify. When the route arrives, such a user is notified (see `link_up`).
    unrouted: DashMap<u64, (u64, Instant)>,
    /// Insertions into `unrouted`, to prune it every few thousand.
    unrouted_inserts: AtomicU64,
    /// Users whose LOGIN this node answered and whose new link's route has not arrived
    /// yet: the device that logged in ([`crate::presence::device_hash`]), and since
    /// when. An entry stored meanwhile goes to the routes known — another
    /// link of the user, perhaps one closing (a racing attempt cut short, a link this
    /// login replaces) — and the new link, whose LOGIN answer's `latest_seq` was read
    /// before it, would not hear of it until the next one: so it is noted as unrouted
    /// too, and told when the route arrives (`link_up`).
    logging_in: DashMap<u64, (u64, Instant)>,
    /// Entries of `logging_in`, so that a notify looks the map up only while some login
    /// waits for its route.
    logging_in_n: AtomicUsize,
    /// Webhooks: a bot with an endpoint of its own hears each of its inbox entries as a
    /// `bot.update` (set once at wiring).
    hooks: std::sync::OnceLock<Arc<crate::webhooks::Emitter>>,
    /// Held `bot/updates` calls, woken when their bot's inbox grows.
    pub watchers: crate::bots::InboxWatchers,
    meters: Meters,
}

/// The counters every notify and every echoed ack moves, registered once: `counter!`
/// with a name looks the metric up in the recorder's registry at each call (hashing its
/// name and labels), ≈ 2 % of the server's CPU in a closed-loop `ferry bench p2p` with
/// the inbox's and the router's (docs/benchmarks.md, *The page cache's scan*).
struct Meters {
    notifies: metrics::Counter,
    entries_notify: metrics::Counter,
    entries_ack: metrics::Counter,
}

impl Meters {
    fn new() -> Meters {
        Meters {
            notifies: metrics::counter!("ferry_notifies_total"),
            entries_notify: metrics::counter!("ferry_entries_out_total", "via" => "notify"),
            entries_ack: metrics::counter!("ferry_entries_out_total", "via" => "ack"),
        }
    }
}

impl Notifier {
    pub fn new(bus: Arc<dyn Bus>, store: Arc<dyn Store>, inline_bytes: usize) -> Notifier {
        Notifier::with(Outlet::Bus(bus), store, inline_bytes)
    }

    fn with(out: Outlet, store: Arc<dyn Store>, inline_bytes: usize) -> Notifier {
        Notifier {
            presence: Presence::default(),
            out,
            store,
            inline_bytes,
            unrouted: DashMap::new(),
            unrouted_inserts: AtomicU64::new(0),
            logging_in: DashMap::new(),
            logging_in_n: AtomicUsize::new(0),
            hooks: std::sync::OnceLock::new(),
            watchers: Default::default(),
            meters: Meters::new(),
        }
    }

    /// Gives the notifier the webhook emitter (once; later calls are ignored).
    pub fn set_hooks(&self, hooks: Arc<crate::webhooks::Emitter>) {
        let _ = self.hooks.set(hooks);
    }

    /// The webhooks, when some bot has an endpoint of its own.
    pub fn bot_hooks(&self) -> Option<&Arc<crate::webhooks::Emitter>> {
        self.hooks.get().filter(|h| h.any_owner())
    }

    /// A notifier that records its pushes instead of sending them (see [`Self::taken`]).
    #[cfg(test)]
    pub fn recording(store: Arc<dyn Store>, inline_bytes: usize) -> Notifier {
        Notifier::with(Outlet::Record(Default::default()), store, inline_bytes)
    }

    /// The pushes recorded so far, as (gateway, push), oldest first; the record starts
    /// over.
    #[cfg(test)]
    pub fn taken(&self) -> Vec<(String, Push)> {
        match &self.out {
            Outlet::Record(r) => std::mem::take(&mut *r.lock()),
            Outlet::Bus(_) => Vec::new(),
        }
    }

    /// Users with at least one live link.
    pub fn users_online(&self) -> usize {
        self.presence.users_online()
    }

    /// Whether `user` has a live link anywhere.
    pub fn user_online(&self, user: u64) -> bool {
        let mut any = false;
        self.presence.each_gateway(user, |_| any = true);
        any
    }

    /// Live links per gateway (for ranking endpoint lists by load).
    pub fn links_per_gateway(&self) -> std::collections::HashMap<Arc<str>, usize> {
        self.presence.links_per_gateway()
    }

    /// A link of `user` logged in on `gateway`. Entries stored here while the route was
    /// on its way: the user is told now.
    pub async fn link_up(&self, user: u64, gateway: &str, conn: u64, device: &str) {
        self.presence.online(user, gateway, conn, device);
        // The route of the device that logged in ends its wait; another device's does not.
        if self.logging_in_n.load(Ordering::Relaxed) > 0 {
            let d = crate::presence::device_hash(device);
            self.end_login_wait(user, |(logged_in, _)| *logged_in == d);
        }
        if let Some((_, (seq, at))) = self.unrouted.remove(&user) {
            self.bare_notify(user, seq).await;
            // Another device's route: the one whose login waits has not heard it yet.
            if self.route_pending(user) {
                self.unrouted.entry(user).or_insert((seq, at));
            }
        }
    }

    /// This node answered a LOGIN of `user` (its `latest_seq` read): until the new link's
    /// route arrives, entries stored for `user` are also noted as unrouted, and told to
    /// the new link with its route (see `logging_in`). Only this node's entries: in a
    /// cluster, an entry another node stores in that moment for a user with a route
    /// elsewhere reaches the new link with the user's next entry or reconnect.
    pub fn login_answered(&self, user: u64, device: &str) {
        let now = Instant::now();
        let d = crate::presence::device_hash(device);
        if self.logging_in.insert(user, (d, now)).is_none() {
            let n = self.logging_in_n.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(1024) {
                // Logins whose link never came up (the client went away).
                self.logging_in
                    .retain(|_, (_, t)| now.duration_since(*t) < LOGIN_ROUTE_WAIT);
                self.logging_in_n
                    .store(self.logging_in.len(), Ordering::Relaxed);
            }
        }
    }

    /// Forgets `user`'s wait for a login's route when `which` says it is over.
    fn end_login_wait(&self, user: u64, which: impl FnOnce(&(u64, Instant)) -> bool) {
        if self.logging_in.remove_if(&user, |_, v| which(v)).is_some() {
            self.logging_in_n.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether a LOGIN of `user` answered here waits for its link's route. One that
    /// waited too long is forgotten here, so a link that never came up does not keep
    /// every notify looking the map up.
    fn route_pending(&self, user: u64) -> bool {
        if self.logging_in_n.load(Ordering::Relaxed) == 0 {
            return false;
        }
        match self
            .logging_in
            .get(&user)
            .map(|v| v.1.elapsed() < LOGIN_ROUTE_WAIT)
        {
            Some(true) => true,
            Some(false) => {
                self.end_login_wait(user, |(_, t)| t.elapsed() >= LOGIN_ROUTE_WAIT);
                false
            }
            None => false,
        }
    }

    /// Whether device `device` ([`crate::presence::device_hash`]) of `user` has a live
    /// long link (anywhere: every logic node hears every gateway's link events).
    pub fn device_online(&self, user: u64, device: u64) -> bool {
        self.presence.device_online(user, device)
    }

    /// A link of `user` on `gateway` went away.
    pub fn link_down(&self, user: u64, gateway: &str, conn: u64) {
        self.presence.offline(user, gateway, conn);
    }

    /// A gateway went away: every route through it is forgotten.
    pub fn gateway_down(&self, gateway: &str) {
        self.presence.drop_gateway(gateway);
    }

    /// Tells every gateway holding `user`'s links that the inbox reached `seq` with a
    /// message, inline when small. Returns how many gateways took the push. The notify
    /// is encoded from the message itself: no copy of it is made (but for a bot's
    /// webhook).
    pub async fn notify_message(&self, user: u64, seq: u64, message: &v1::Message) -> usize {
        self.notify_with(user, seq, NotifyEntry::Message(message), None)
            .await
    }

    /// A 1:1 message `user` sent on link `conn` of `gateway`, a link that takes its own
    /// messages' entries in their SendAck (`BusRequest.echo_in_ack`): returns the entry
    /// for the SendAck and tells the user's other links as [`Self::notify_message`]
    /// does, leaving that one out. `None` when the entry is too large to ride inline:
    /// then every link is notified, that one too (it syncs). The message is taken, not
    /// copied: it becomes the entry.
    pub async fn echo_message(
        &self,
        user: u64,
        seq: u64,
        message: v1::Message,
        (gateway, conn): (&str, u64),
    ) -> Option<v1::Entry> {
        let entry = v1::Entry {
            seq,
            kind: Some(v1::entry::Kind::Message(message)),
            ..Default::default()
        };
        let Some(v1::entry::Kind::Message(message)) = &entry.kind else {
            unreachable!("the entry was built with a message");
        };
        if entry.encoded_len() > self.inline_bytes {
            Box::pin(self.notify_message(user, seq, message)).await;
            return None;
        }
        self.notify_with(
            user,
            seq,
            NotifyEntry::Message(message),
            Some((gateway, conn)),
        )
        .await;
        self.meters.entries_ack.increment(1);
        Some(entry)
    }

    /// Tells every gateway holding `user`'s links that the inbox reached `seq`, with
    /// `entry` inline when it is small. Returns how many gateways took the push.
    pub async fn notify_entry(&self, user: u64, seq: u64, entry: v1::Entry) -> usize {
        self.notify_with(user, seq, NotifyEntry::Entry(entry), None)
            .await
    }

    /// [`Self::notify_entry`] for an entry or a message, leaving out link `skip`
    /// (gateway, connection id) when given.
    async fn notify_with(
        &self,
        user: u64,
        seq: u64,
        entry: NotifyEntry<'_>,
        skip: Option<(&str, u64)>,
    ) -> usize {
        self.watchers.wake(user);
        // A bot's webhook takes the entry built; the notify then carries that one.
        let entry = match self.hooks.get().filter(|h| h.has_owner(user)) {
            Some(h) => {
                let e = entry.build(seq);
                Box::pin(h.bot_updates(user, vec![crate::api::json::entry_json(&e)])).await;
                NotifyEntry::Entry(e)
            }
            None => entry,
        };
        if self.route_pending(user) {
            self.note_unrouted(user, seq);
        }
        let gateways = match skip {
            None => self.presence.gateways(user),
            Some((g, c)) => match self.presence.gateways_except(user, g, c) {
                // The link left out is the user's only one: nothing to tell.
                Some(others) if others.is_empty() => return 0,
                others => others.unwrap_or_default(),
            },
        };
        if gateways.is_empty() {
            self.note_unrouted(user, seq);
            return 0;
        }
        let (body, inline) = match entry {
            // A message's entry encoded straight from it: no copy of the message.
            NotifyEntry::Message(m) => message_notify(seq, m, self.inline_bytes),
            entry => entry_notify(entry.build(seq), self.inline_bytes),
        };
        let push = Push {
            user_id: user,
            cmd: u32::from(cmd::NOTIFY),
            body,
            notify_seq: seq,
            ..Default::default()
        };
        let pushed = match skip {
            None => self.push_via(&gateways, push).await,
            Some((g, c)) => {
                let mut pushed = 0;
                for gw in &gateways {
                    let mut p = push.clone();
                    // Connection ids are the gateway's own: name it to that one only.
                    if **gw == *g {
                        p.skip_conn_id = Some(c);
                    }
                    pushed += usize::from(self.push_to(gw, p).await);
                }
                pushed
            }
        };
        self.meters.notifies.increment(pushed as u64);
        self.meters.entries_notify.increment(inline * pushed as u64);
        pushed
    }

    /// A notify without inline entries: the devices sync.
    pub async fn notify_latest(&self, user: u64) {
        match self.store.latest_seq(user).await {
            Ok(seq) => self.bare_notify(user, seq).await,
            Err(e) => tracing::debug!(error = %e, "no notify: latest seq unknown"),
        }
    }

    /// `NOTIFY{latest_seq: seq}` with no entries to every device of `user`: they sync.
    async fn bare_notify(&self, user: u64, seq: u64) {
        self.watchers.wake(user);
        let body = Bytes::from(
            v1::Notify {
                latest_seq: seq,
                entries: Vec::new(),
            }
            .encode_to_vec(),
        );
        self.push_all(Push {
            user_id: user,
            cmd: u32::from(cmd::NOTIFY),
            body,
            notify_seq: seq,
            ..Default::default()
        })
        .await;
    }

    /// Calls `f` once for each gateway holding links of `user`.
    pub fn each_gateway_of(&self, user: u64, f: impl FnMut(&Arc<str>)) {
        self.presence.each_gateway(user, f)
    }

    /// One push to one gateway; a failure is counted, not fatal.
    pub async fn push_to(&self, gateway: &str, push: Push) -> bool {
        let sent = match &self.out {
            Outlet::Bus(bus) => bus.push(gateway, push).await,
            #[cfg(test)]
            Outlet::Record(r) => {
                r.lock().push((gateway.to_owned(), push));
                Ok(())
            }
        };
        match sent {
            Ok(()) => true,
            Err(e) => {
                metrics::counter!("ferry_notify_failures_total").increment(1);
                tracing::debug!(gateway = %gateway, error = %e, "push failed");
                false
            }
        }
    }

    /// Remembers that `user`'s inbox reached `seq` with no route known here. Entries
    /// older than a minute are dropped now and then: a route is never that late.
    fn note_unrouted(&self, user: u64, seq: u64) {
        let now = Instant::now();
        self.unrouted.insert(user, (seq, now));
        let n = self.unrouted_inserts.fetch_add(1, Ordering::Relaxed);
        if n % 4096 == 4095 {
            self.unrouted
                .retain(|_, (_, t)| now.duration_since(*t) < Duration::from_secs(60));
        }
    }

    /// A device logged in again on link `conn` of `gateway`: its older links (on any
    /// gateway) get `KICK{KICKED}` and are closed; its new link and the user's other
    /// devices are left alone. Returns how many gateways took the push (0 when the user
    /// had no other live link anywhere, the usual case).
    pub async fn replace_device(&self, user: u64, device: &str, gateway: &str, conn: u64) -> usize {
        let gateways = self.presence.gateways(user);
        if gateways.is_empty() {
            return 0;
        }
        let body = Bytes::from(
            v1::Kick {
                code: v1::ErrorCode::Kicked as i32,
                reason: "replaced by a newer login of this device".into(),
            }
            .encode_to_vec(),
        );
        let mut pushed = 0;
        for gw in &gateways {
            let push = Push {
                user_id: user,
                device_id: device.to_owned(),
                cmd: u32::from(cmd::KICK),
                body: body.clone(),
                close: true,
                keep_conn_id: (**gw == *gateway).then_some(conn),
                ..Default::default()
            };
            if self.push_to(gw, push).await {
                pushed += 1;
            }
        }
        pushed
    }

    /// Sends a push to every gateway holding links of `push.user_id`. Returns how many
    /// took it. A failed push is not fatal: the device syncs on its next login or notify.
    pub async fn push_all(&self, push: Push) -> usize {
        let gateways = self.presence.gateways(push.user_id);
        self.push_via(&gateways, push).await
    }

    /// Sends a push to each of `gateways`; returns how many took it.
    async fn push_via(&self, gateways: &[Arc<str>], push: Push) -> usize {
        let mut pushed = 0;
        for gw in gateways {
            if self.push_to(gw, push.clone()).await {
                pushed += 1;
            }
        }
        pushed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the notify of a message entry was before [`message_notify`]: prost's own
    /// encoding of the structs, as every other entry's notify is.
    fn by_prost(seq: u64, message: &v1::Message, inline_bytes: usize) -> (Bytes, u64) {
        let entry = v1::Entry {
            seq,
            kind: Some(v1::entry::Kind::Message(message.clone())),
            ..Default::default()
        };
        entry_notify(entry, inline_bytes)
    }

    fn messages() -> Vec<v1::Message> {
        let full = v1::Message {
            msg_id: u64::MAX,
            from: "alice".into(),
            to: "bob".into(),
            time_ms: 1_765_000_000_000,
            r#type: v1::MsgType::Text as i32,
            text: "héllo ".repeat(40),
            client_msg_id: 1 << 40,
            group_id: 7,
            mentions: vec!["carol".into(), String::new()],
            media: Some(Box::new(v1::MediaRef {
                media_id: "m1".into(),
                size: 300,
                ..Default::default()
            })),
            quote: Some(Box::new(v1::Quote {
                msg_id: 3,
                from: "bob".into(),
                text: "earlier".into(),
                ..Default::default()
            })),
            edited_ms: -1,
            ..Default::default()
        };
        vec![
            v1::Message::default(),
            v1::Message {
                text: "x".into(),
                ..Default::default()
            },
            full,
        ]
    }

    #[test]
    fn a_message_notify_is_the_bytes_prost_gives() {
        let mut checked = 0;
        for m in messages() {
            for seq in [0, 1, 127, 128, 300, 1 << 35, u64::MAX] {
                let entry_len = v1::Entry {
                    seq,
                    kind: Some(v1::entry::Kind::Message(m.clone())),
                    ..Default::default()
                }
                .encoded_len();
                // Either side of the inline limit, and the limits in use.
                for limit in [0, entry_len - 1, entry_len, entry_len + 1, 512, 4096] {
                    let (body, inline) = message_notify(seq, &m, limit);
                    let (want, want_inline) = by_prost(seq, &m, limit);
                    assert_eq!(&body[..], &want[..], "seq {seq}, limit {limit}, {m:?}");
                    assert_eq!(inline, want_inline, "seq {seq}, limit {limit}");
                    let back = v1::Notify::decode(&body[..]).expect("decodes");
                    assert_eq!(back.latest_seq, seq);
                    if inline == 1 {
                        assert_eq!(back.entries[0].seq, seq);
                        assert_eq!(
                            back.entries[0].kind,
                            Some(v1::entry::Kind::Message(m.clone()))
                        );
                    } else {
                        assert!(back.entries.is_empty());
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 3 * 7 * 6);
    }
}
