//! The inbox: 1:1 sends, sync (a device reads its inbox from its synckey on), and the
//! 1:1 side of recall, read receipts and typing. Every change a user must learn about
//! is an entry in their inbox (the sync model), so offline devices see it at their next
//! sync; devices online get a notify. Group messages are handed to [`Groups`].

use std::sync::Arc;

use bytes::Bytes;
use ferry_bus::{BusRequest, BusResponse, Push};
use ferry_proto::{cmd, v1, ProtoMessage};
use ferry_store::{Appended, NewEvent, NewMessage, StoreError};

use crate::attach::Attachments;
use crate::conv;
use crate::core::{ok, unix_ms, Core, DeviceSession};
use crate::error::LogicError;
use crate::friends::Friends;
use crate::groups::Groups;
use crate::msgops;
use crate::notify::Notifier;
use crate::push::PushService;

/// A send checked and ready for the store.
enum Prepared {
    /// A group message (with the quote of the message it replies to, or what it
    /// forwards): [`Groups::send`] applies it.
    Group(v1::SendMsg, Option<v1::Quote>, Option<conv::Forward>),
    /// A 1:1 message, checked and ready for the store.
    Direct(NewMessage),
}

/// The same refusal for another request of a batch (errors are not `Clone`: they may
/// hold a driver's error). Keeps what the client is told: the code and retry_after.
fn again(e: &LogicError) -> LogicError {
    match e {
        LogicError::Unauthorized => LogicError::Unauthorized,
        LogicError::Store(StoreError::Unavailable(m)) => {
            LogicError::Store(StoreError::Unavailable(m.clone()))
        }
        LogicError::Store(StoreError::Closed) => LogicError::Store(StoreError::Closed),
        LogicError::Overloaded(ms) => LogicError::Overloaded(*ms),
        e if e.code() == v1::ErrorCode::Unavailable => LogicError::Unavailable(e.to_string()),
        e => LogicError::Internal(e.to_string()),
    }
}

/// The inbox service.
pub(crate) struct Inbox {
    core: Arc<Core>,
    /// Tells the devices of both sides.
    notifier: Arc<Notifier>,
    /// Who may message whom.
    friends: Arc<Friends>,
    /// Checks and grants the media a message refers to.
    attach: Arc<Attachments>,
    /// Sends, recalls and read receipts in groups.
    groups: Arc<Groups>,
    /// Wakes the recipient's devices that have no live link.
    push: Arc<PushService>,
    /// Moved by every message, registered once (see `notify::Meters`).
    messages_in: metrics::Counter,
    delivery: metrics::Histogram,
}

impl Inbox {
    pub fn new(
        core: Arc<Core>,
        notifier: Arc<Notifier>,
        friends: Arc<Friends>,
        attach: Arc<Attachments>,
        groups: Arc<Groups>,
        push: Arc<PushService>,
    ) -> Inbox {
        Inbox {
            core,
            notifier,
            friends,
            attach,
            groups,
            push,
            messages_in: metrics::counter!("ferry_messages_in_total"),
            delivery: metrics::histogram!("ferry_delivery_seconds"),
        }
    }

    pub async fn send(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let started = std::time::Instant::now();
        let me = self.core.caller(req).await?;
        match self.prepare(&me, req.body.clone()).await? {
            Prepared::Group(r, quote, fwd) => {
                Box::pin(self.groups.send(&me, r, quote, fwd, req.cmd)).await
            }
            Prepared::Direct(mut d) => {
                crate::before::screen(&self.core, me.user_id, &mut d.message).await?;
                msgops::note_reply(&self.core, me.user_id, &d.message).await?;
                // The message goes to the store and comes back with its answer, as a
                // batch's do (`store_direct`): no copy of it is kept here meanwhile.
                let (d, done) = self
                    .core
                    .store
                    .append_messages(vec![d])
                    .await?
                    .pop()
                    .ok_or_else(|| LogicError::Internal("send not answered".into()))?;
                let done = done?;
                if let (false, Some(q)) = (done.duplicate, &d.message.quote) {
                    msgops::recheck_quote(&self.core, q).await;
                }
                // Webhook events are durable before the ack (at least once).
                self.hook_events(&[(&d, &done)]).await?;
                Ok(self.finish(&me, d, done, started, req).await)
            }
        }
    }

    /// A batch of SENDs from one link (`BusRequest.batch`, the gateway's send lane),
    /// applied in the order given: the 1:1 sends between two group sends go to the
    /// store in one call (`append_messages`, which keeps their order), a group send is
    /// applied in its place. Each answer is at its request's index. A send refused by
    /// the rate limit holds the device's later sends (`SendOrder`), so the rest of the
    /// batch is refused too, as `ferry serve` refuses a pipelined window.
    pub async fn send_batch(&self, req: &BusRequest) -> Vec<Result<BusResponse, LogicError>> {
        let started = std::time::Instant::now();
        let n = req.batch.len();
        let me = match self.core.caller(req).await {
            Ok(me) => me,
            Err(e) => return (0..n).map(|_| Err(again(&e))).collect(),
        };
        let mut out: Vec<Option<Result<BusResponse, LogicError>>> = (0..n).map(|_| None).collect();
        // 1:1 sends prepared and not yet stored: (index, send).
        let mut direct: Vec<(usize, NewMessage)> = Vec::new();
        for (i, body) in req.batch.iter().enumerate() {
            match self.prepare(&me, body.clone()).await {
                Err(e) => out[i] = Some(Err(e)),
                Ok(Prepared::Direct(d)) => direct.push((i, d)),
                Ok(Prepared::Group(r, quote, fwd)) => {
                    self.store_direct(&me, &mut direct, &mut out, started, req)
                        .await;
                    out[i] = Some(Box::pin(self.groups.send(&me, r, quote, fwd, req.cmd)).await);
                }
            }
        }
        self.store_direct(&me, &mut direct, &mut out, started, req)
            .await;
        out.into_iter()
            .map(|a| a.unwrap_or_else(|| Err(LogicError::Internal("send not answered".into()))))
            .collect()
    }

    /// Stores the 1:1 sends prepared so far in one store call and answers them.
    async fn store_direct(
        &self,
        me: &DeviceSession,
        direct: &mut Vec<(usize, NewMessage)>,
        out: &mut [Option<Result<BusResponse, LogicError>>],
        started: std::time::Instant,
        req: &BusRequest,
    ) {
        if direct.is_empty() {
            return;
        }
        let mut taken = std::mem::take(direct);
        if self.core.before_send.is_some() {
            // The hook is asked about every message of the batch at once: its round
            // trips overlap instead of adding up.
            let user = me.user_id;
            let screened =
                Box::pin(futures_util::future::join_all(taken.iter_mut().map(
                    |(_, d)| crate::before::screen(&self.core, user, &mut d.message),
                )))
                .await;
            let mut kept = Vec::with_capacity(taken.len());
            for ((i, d), verdict) in taken.into_iter().zip(screened) {
                match verdict {
                    Ok(()) => kept.push((i, d)),
                    Err(e) => out[i] = Some(Err(e)),
                }
            }
            taken = kept;
            if taken.is_empty() {
                return;
            }
        }
        // Replies: what they quote is noted before they are stored (msgops.rs).
        if taken.iter().any(|(_, d)| d.message.quote.is_some()) {
            let mut kept = Vec::with_capacity(taken.len());
            for (i, d) in taken {
                match msgops::note_reply(&self.core, me.user_id, &d.message).await {
                    Ok(()) => kept.push((i, d)),
                    Err(e) => out[i] = Some(Err(e)),
                }
            }
            taken = kept;
            if taken.is_empty() {
                return;
            }
        }
        // The messages go to the store and come back with their answers: no copy of
        // each is kept here meanwhile.
        let (places, news): (Vec<usize>, Vec<NewMessage>) = taken.into_iter().unzip();
        match self.core.store.append_messages(news).await {
            Ok(answers) => {
                // A send the store left unanswered is answered as such by the caller.
                let (taken, results): (Vec<(usize, NewMessage)>, Vec<_>) = places
                    .into_iter()
                    .zip(answers)
                    .map(|(i, (d, r))| ((i, d), r))
                    .unzip();
                for ((_, d), r) in taken.iter().zip(results.iter()) {
                    if let (
                        Ok(Appended {
                            duplicate: false, ..
                        }),
                        Some(q),
                    ) = (r, &d.message.quote)
                    {
                        msgops::recheck_quote(&self.core, q).await;
                    }
                }
                // Webhook events of the whole batch in one store write, durable before
                // any of its acks; if that fails, every send of it is refused (a retry
                // is a duplicate, which queues the same events again).
                if self.core.hooks.wants("message.sent") {
                    let stored: Vec<(&NewMessage, &Appended)> = taken
                        .iter()
                        .zip(results.iter())
                        .filter_map(|((_, d), r)| r.as_ref().ok().map(|a| (d, a)))
                        .collect();
                    if let Err(e) = Box::pin(self.hook_events(&stored)).await {
                        for (i, _) in taken {
                            out[i] = Some(Err(again(&e)));
                        }
                        return;
                    }
                }
                for ((i, d), r) in taken.into_iter().zip(results) {
                    out[i] = Some(match r {
                        Ok(done) => Ok(self.finish(me, d, done, started, req).await),
                        Err(e) => Err(e.into()),
                    });
                }
            }
            Err(e) => {
                let e = LogicError::from(e);
                for i in places {
                    out[i] = Some(Err(again(&e)));
                }
            }
        }
    }

    /// Everything a send checks before the store: the rate limit (in the device's
    /// order), sizes, the recipient, friendship, attached media. The before-send hook
    /// comes after, just before the store (`send`, `store_direct`).
    async fn prepare(&self, me: &DeviceSession, body: Bytes) -> Result<Prepared, LogicError> {
        let mut r = v1::SendMsg::decode(body)?;
        // An earlier send of this device that was refused goes first (limits.rs,
        // SendOrder): the client's order survives the limit.
        self.core.refresh_limit_overrides().await;
        let limits = &self.core.limits;
        let refused = limits
            .send_order
            .check(me.user_id, &me.device_id, r.client_msg_id)
            .and_then(|()| {
                limits.check_send(me.user_id).inspect_err(|&ms| {
                    limits
                        .send_order
                        .refused(me.user_id, &me.device_id, r.client_msg_id, ms)
                })
            });
        if let Err(ms) = refused {
            metrics::counter!("ferry_rate_limited_total", "limit" => "sends").increment(1);
            return Err(LogicError::RateLimited(
                "too many messages; slow down".into(),
                ms,
            ));
        }
        if r.text.len() > self.core.cfg.max_text_bytes {
            return Err(LogicError::TooLarge(format!(
                "text of {} bytes exceeds the limit of {}",
                r.text.len(),
                self.core.cfg.max_text_bytes
            )));
        }
        if r.r#type == v1::MsgType::System as i32 {
            return Err(LogicError::InvalidArgument(
                "system messages come from the server only".into(),
            ));
        }
        if r.client_msg_id == 0 {
            return Err(LogicError::InvalidArgument(
                "client_msg_id must be non-zero".into(),
            ));
        }
        // A reply: the message it answers must be one the sender may read; without a
        // conversation named, the reply goes to that message's.
        // Awaits that few sends take (replies, forwards, media) are boxed: an async fn's
        // future is as large as its largest await, and every send's is copied as it
        // moves; boxed, only the sends that take them pay (docs/benchmarks.md, *ring
        // for the records*).
        let replied = match r.reply_to {
            0 => None,
            id => Some(Box::pin(msgops::readable(&self.core, me.user_id, id)).await?),
        };
        if let Some(t) = &replied {
            if r.to.is_empty() && r.group_id == 0 {
                match t.place.peer_of(me.user_id) {
                    Some(peer) => r.to = self.core.user_name(peer).await?.to_string(),
                    None => r.group_id = t.place.group_id(),
                }
            }
        }
        // A forward: the text and media of a message the sender may read (conv.rs).
        let fwd = match r.forward_of {
            0 => None,
            id => Some(Box::pin(conv::forward_of(&self.core, me.user_id, id, &r)).await?),
        };
        if let Some(f) = &fwd {
            r.text = f.text.clone();
            r.r#type = f.r#type;
        }
        let elsewhere =
            || LogicError::NotFound("the message replied to is not in this conversation".into());
        if r.group_id != 0 {
            let quote = match &replied {
                Some(t) if t.place.group_id() != r.group_id => return Err(elsewhere()),
                Some(t) => Some(msgops::quote_of(t)),
                None => None,
            };
            return Ok(Prepared::Group(r, quote, fwd));
        }
        let to = self.core.user_id(&r.to).await?;
        let quote = match &replied {
            Some(t)
                if t.place.conv()
                    != (msgops::Place::Direct {
                        sender: me.user_id,
                        recipient: to,
                    })
                    .conv() =>
            {
                return Err(elsewhere())
            }
            Some(t) => Some(msgops::quote_of(t)),
            None => None,
        };
        if to != me.user_id {
            self.friends.may_message(me.user_id, to, &r.to).await?;
        }
        let (media, forwarded) = match (r.media, fwd) {
            (None, None) => (None, None),
            (media, fwd) => {
                Box::pin(self.attach.of_send(me.user_id, media, fwd, &[to], &[])).await?
            }
        };
        let from = self.core.user_name(me.user_id).await?;
        let time_ms = unix_ms();
        let message = v1::Message {
            forwarded,
            msg_id: 0,
            from: from.to_string(),
            to: r.to,
            time_ms,
            r#type: r.r#type,
            text: r.text,
            client_msg_id: r.client_msg_id,
            media,
            quote: quote.map(Box::new),
            ..Default::default()
        };
        Ok(Prepared::Direct(NewMessage {
            sender_id: me.user_id,
            recipient_id: to,
            client_msg_id: r.client_msg_id,
            time_ms,
            message,
        }))
    }

    /// Queues `message.sent` for stored 1:1 messages (a duplicate's too: the first
    /// attempt may have died before queueing; the same event id is ignored).
    async fn hook_events(&self, stored: &[(&NewMessage, &Appended)]) -> Result<(), LogicError> {
        if stored.is_empty() || !self.core.hooks.wants("message.sent") {
            return Ok(());
        }
        let events = stored
            .iter()
            .map(|(d, done)| {
                crate::webhooks::message_sent(&v1::Message {
                    msg_id: done.msg_id,
                    time_ms: done.time_ms,
                    ..d.message.clone()
                })
            })
            .collect();
        self.core.hooks.emit(events).await?;
        Ok(())
    }

    /// After the store: notify both sides, answer the SendAck. A link that takes its own
    /// messages' entries in their SendAck (`BusRequest.echo_in_ack`) gets the entry
    /// there and is left out of the sender's notify.
    async fn finish(
        &self,
        me: &DeviceSession,
        d: NewMessage,
        done: Appended,
        started: std::time::Instant,
        req: &BusRequest,
    ) -> BusResponse {
        let to = d.recipient_id;
        let mut echo = None;
        if !done.duplicate {
            let message = v1::Message {
                msg_id: done.msg_id,
                ..d.message
            };
            self.messages_in.increment(1);
            if to != me.user_id {
                self.push.message(to, done.recipient_seq, &message);
            }
            if self
                .notifier
                .notify_message(to, done.recipient_seq, &message)
                .await
                > 0
            {
                // Send received → durable → notify handed to the recipient's gateway(s).
                self.delivery.record(started.elapsed().as_secs_f64());
            }
            if to != me.user_id {
                if req.echo_in_ack && req.conn_id != 0 {
                    let link = (req.gateway_id.as_str(), req.conn_id);
                    echo = self
                        .notifier
                        .echo_message(me.user_id, done.sender_seq, message, link)
                        .await;
                } else {
                    self.notifier
                        .notify_message(me.user_id, done.sender_seq, &message)
                        .await;
                }
            }
        } else {
            metrics::counter!("ferry_messages_duplicate_total").increment(1);
            // The first attempt may have died (its logic node killed, its gateway gone)
            // between storing and notifying: notify again, without the entry (this
            // attempt's copy of the message is not the stored one). Devices that have it
            // ignore the notify.
            Box::pin(self.notifier.notify_latest(to)).await;
            if to != me.user_id {
                Box::pin(self.notifier.notify_latest(me.user_id)).await;
            }
        }
        ok(
            req.cmd,
            &v1::SendAck {
                msg_id: done.msg_id,
                seq: done.sender_seq,
                time_ms: done.time_ms,
                entry: echo,
            },
        )
    }

    pub async fn sync(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::SyncReq::decode(req.body.clone())?;
        let limit = match r.limit {
            0 => self.core.cfg.sync_page,
            n => n.min(self.core.cfg.sync_page_max),
        };
        let mut page = self.core.store.inbox(me.user_id, r.synckey, limit).await?;
        metrics::counter!("ferry_syncs_total").increment(1);
        metrics::histogram!("ferry_sync_lag_entries")
            .record(page.latest_seq.saturating_sub(r.synckey) as f64);
        // Keep the answer well under the frame limit.
        let mut bytes = 0;
        if let Some(cut) = page.entries.iter().position(|e| {
            bytes += e.encoded_len() + 4;
            bytes > self.core.cfg.sync_page_bytes
        }) {
            page.entries.truncate(cut.max(1));
            page.more = true;
        }
        let synckey = match page.entries.last() {
            Some(e) => e.seq,
            // Nothing after the synckey: either the device is up to date, or everything
            // between was pruned. Either way it may jump to the newest seq.
            None => r.synckey.max(page.latest_seq),
        };
        self.core
            .record_synckey(me.user_id, &me.device_id, r.synckey);
        metrics::counter!("ferry_entries_out_total", "via" => "sync")
            .increment(page.entries.len() as u64);
        Ok(ok(
            req.cmd,
            &v1::SyncResp {
                entries: page.entries,
                synckey,
                more: page.more,
                latest_seq: page.latest_seq,
            },
        ))
    }

    pub async fn read(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::ReadReq::decode(req.body.clone())?;
        if r.group_id != 0 {
            self.groups
                .mark_read(r.group_id, me.user_id, r.gseq)
                .await?;
            return Ok(ok(req.cmd, &v1::Empty {}));
        }
        // A 1:1 receipt goes to the peer's inbox, for a message the peer sent the caller.
        let peer = self.core.user_id(&r.peer).await?;
        let info = self.core.store.message_info(r.msg_id).await?;
        let mine = info.as_ref().is_some_and(|i| {
            i.sender_id == peer && i.body.as_ref().is_some_and(|b| b.group_id == 0)
        });
        if !mine {
            return Err(LogicError::NotFound(
                "no such message from that user".into(),
            ));
        }
        let time_ms = unix_ms();
        let entry = v1::Entry {
            kind: Some(v1::entry::Kind::Read(v1::ReadReceipt {
                reader: self.core.user_name(me.user_id).await?.to_string(),
                msg_id: r.msg_id,
            })),
            time_ms,
            ..Default::default()
        };
        let seqs = self
            .core
            .store
            .append_events(vec![NewEvent {
                user_id: peer,
                entry: entry.clone(),
            }])
            .await?;
        self.notifier.notify_entry(peer, seqs[0], entry).await;
        Ok(ok(req.cmd, &v1::Empty {}))
    }

    pub async fn recall(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::RecallReq::decode(req.body.clone())?;
        let missing = || LogicError::NotFound("no such message".into());
        let info = self
            .core
            .store
            .message_info(r.msg_id)
            .await?
            .ok_or_else(missing)?;
        let body = info.body.clone().ok_or_else(missing)?;
        let window = i64::from(self.core.cfg.recall_window_secs) * 1000;
        let by = self.core.user_name(me.user_id).await?.to_string();
        let by_name = by.clone();
        let time_ms = unix_ms();
        let recall = v1::Recall {
            msg_id: r.msg_id,
            group_id: body.group_id,
            by,
        };
        if body.group_id != 0 {
            self.groups
                .recall(
                    me.user_id,
                    info.sender_id,
                    info.time_ms,
                    recall,
                    time_ms,
                    window,
                )
                .await?;
        } else {
            if info.sender_id != me.user_id {
                return Err(LogicError::PermissionDenied(
                    "only the sender may recall".into(),
                ));
            }
            if time_ms - info.time_ms > window {
                return Err(LogicError::PermissionDenied(
                    "too late to recall this message".into(),
                ));
            }
            let to = self.core.user_id(&body.to).await?;
            let entry = v1::Entry {
                kind: Some(v1::entry::Kind::Recall(recall)),
                time_ms,
                ..Default::default()
            };
            let mut users = vec![me.user_id];
            if to != me.user_id {
                users.push(to);
            }
            let events: Vec<NewEvent> = users
                .iter()
                .map(|u| NewEvent {
                    user_id: *u,
                    entry: entry.clone(),
                })
                .collect();
            let (_, seqs) = self
                .core
                .store
                .recall_message(r.msg_id, None, events)
                .await
                .map_err(|e| match e {
                    StoreError::NotFound => missing(),
                    e => e.into(),
                })?;
            for (u, seq) in users.into_iter().zip(seqs) {
                if u != me.user_id {
                    self.push.entry(u, seq, &entry);
                }
                self.notifier.notify_entry(u, seq, entry.clone()).await;
            }
        }
        metrics::counter!("ferry_recalls_total").increment(1);
        if self.core.hooks.wants("message.recalled") {
            let sender = self.core.user_name(info.sender_id).await?;
            self.core
                .hooks
                .emit_logged(crate::webhooks::message_recalled(
                    r.msg_id,
                    body.group_id,
                    &sender,
                    &by_name,
                ))
                .await;
        }
        Ok(ok(req.cmd, &v1::Empty {}))
    }

    pub async fn typing(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::Typing::decode(req.body.clone())?;
        let to = self.core.user_id(&r.to).await?;
        if to != me.user_id
            && self
                .friends
                .may_message(me.user_id, to, &r.to)
                .await
                .is_ok()
        {
            let body = v1::Typing {
                to: self.core.user_name(me.user_id).await?.to_string(),
            };
            self.notifier
                .push_all(Push {
                    user_id: to,
                    cmd: u32::from(cmd::TYPING_PUSH),
                    body: Bytes::from(body.encode_to_vec()),
                    ..Default::default()
                })
                .await;
        }
        Ok(ok(req.cmd, &v1::Empty {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogicConfig;
    use crate::testing::{notify_of, req, World};

    fn open() -> LogicConfig {
        LogicConfig {
            open_messaging: true,
            ..Default::default()
        }
    }

    fn text(to: &str, text: &str, client_msg_id: u64) -> v1::SendMsg {
        v1::SendMsg {
            to: to.into(),
            text: text.into(),
            client_msg_id,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_send_is_stored_and_both_sides_are_notified_inline() {
        let w = World::new(open());
        let (ann, bob) = (w.user("ann").await, w.user("bob").await);
        w.notifier.link_up(bob, "gw-b", 1, "d1").await;
        w.notifier.link_up(ann, "gw-a", 2, "d1").await;
        let resp = w
            .inbox
            .send(&req(cmd::SEND, ann, &text("bob", "hello", 7)))
            .await
            .unwrap();
        let ack = v1::SendAck::decode(resp.body).unwrap();
        assert!(ack.msg_id > 0);

        let pushes = w.pushes();
        assert_eq!(pushes.len(), 2, "{pushes:?}");
        // The recipient first, with the message inline.
        let (gw, p) = &pushes[0];
        assert_eq!((gw.as_str(), p.user_id), ("gw-b", bob));
        let n = notify_of(p);
        assert_eq!(n.entries.len(), 1);
        assert_eq!(n.entries[0].seq, n.latest_seq);
        let Some(v1::entry::Kind::Message(m)) = &n.entries[0].kind else {
            panic!("not a message: {:?}", n.entries[0]);
        };
        assert_eq!((m.from.as_str(), m.text.as_str()), ("ann", "hello"));
        assert_eq!(m.msg_id, ack.msg_id);
        // Then the sender's other devices, at the seq the ack gave.
        let (gw, p) = &pushes[1];
        assert_eq!((gw.as_str(), p.user_id), ("gw-a", ann));
        assert_eq!(notify_of(p).latest_seq, ack.seq);

        // The recipient's sync finds it in the store.
        let resp = w
            .inbox
            .sync(&req(cmd::SYNC, bob, &v1::SyncReq::default()))
            .await
            .unwrap();
        let page = v1::SyncResp::decode(resp.body).unwrap();
        assert_eq!(page.entries.len(), 1);
        assert_eq!(page.synckey, page.latest_seq);
    }

    /// A link that asked for its own entries in its acks (`echo_in_ack`) gets the entry
    /// in the SendAck and no notify of it; the sender's other links still get one, and
    /// a retry (a duplicate) is notified to every link as before.
    #[tokio::test]
    async fn a_link_that_asks_gets_its_own_entry_in_the_ack_and_no_notify() {
        let w = World::new(open());
        let (ann, bob) = (w.user("ann").await, w.user("bob").await);
        w.notifier.link_up(bob, "gw-b", 1, "d1").await;
        w.notifier.link_up(ann, "gw-a", 2, "d1").await;
        let echo = |r: BusRequest| BusRequest {
            gateway_id: "gw-a".into(),
            conn_id: 2,
            echo_in_ack: true,
            ..r
        };
        let send = echo(req(cmd::SEND, ann, &text("bob", "hello", 7)));
        let ack = v1::SendAck::decode(w.inbox.send(&send).await.unwrap().body).unwrap();
        let e = ack.entry.clone().expect("the entry rides in the ack");
        assert_eq!(e.seq, ack.seq);
        let Some(v1::entry::Kind::Message(m)) = &e.kind else {
            panic!("not a message: {e:?}");
        };
        assert_eq!((m.text.as_str(), m.msg_id), ("hello", ack.msg_id));
        let pushes = w.pushes();
        assert_eq!(pushes.len(), 1, "the recipient only: {pushes:?}");
        assert_eq!((pushes[0].0.as_str(), pushes[0].1.user_id), ("gw-b", bob));

        // Ann's tablet on the same gateway: notified, the sending link left out.
        w.notifier.link_up(ann, "gw-a", 3, "tablet").await;
        let batch = BusRequest {
            batch: vec![
                Bytes::from(text("bob", "two", 8).encode_to_vec()),
                Bytes::from(text("bob", "three", 9).encode_to_vec()),
            ],
            ..echo(req(cmd::SEND, ann, &v1::SendMsg::default()))
        };
        let answers = w.inbox.send_batch(&batch).await;
        for a in answers {
            let ack = v1::SendAck::decode(a.unwrap().body).unwrap();
            assert_eq!(ack.entry.map(|e| e.seq), Some(ack.seq));
        }
        let mine: Vec<Push> = w
            .pushes()
            .into_iter()
            .filter(|(_, p)| p.user_id == ann)
            .map(|(gw, p)| {
                assert_eq!(gw, "gw-a");
                p
            })
            .collect();
        assert_eq!(mine.len(), 2, "one notify per message for the tablet");
        assert!(mine.iter().all(|p| p.skip_conn_id == Some(2)));

        // A retry is answered from the store: no entry, every link notified.
        let again = v1::SendAck::decode(w.inbox.send(&send).await.unwrap().body).unwrap();
        assert_eq!((again.msg_id, again.entry), (ack.msg_id, None));
        let mine: Vec<Push> = w
            .pushes()
            .into_iter()
            .filter(|(_, p)| p.user_id == ann)
            .map(|(_, p)| p)
            .collect();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].skip_conn_id, None);
    }

    #[tokio::test]
    async fn a_retried_send_is_a_duplicate_notified_again_without_entries() {
        let w = World::new(open());
        let (ann, bob) = (w.user("ann").await, w.user("bob").await);
        w.notifier.link_up(bob, "gw-b", 1, "d1").await;
        let send = req(cmd::SEND, ann, &text("bob", "once", 9));
        let first = v1::SendAck::decode(w.inbox.send(&send).await.unwrap().body).unwrap();
        let seq = notify_of(&w.pushes()[0].1).latest_seq;
        let again = v1::SendAck::decode(w.inbox.send(&send).await.unwrap().body).unwrap();
        assert_eq!(again.msg_id, first.msg_id);
        // Only bob has a route: one notify, without the entry, at the same seq.
        let pushes = w.pushes();
        assert_eq!(pushes.len(), 1, "{pushes:?}");
        let n = notify_of(&pushes[0].1);
        assert!(n.entries.is_empty());
        assert_eq!(n.latest_seq, seq);
    }

    #[tokio::test]
    async fn an_entry_stored_before_the_route_arrived_is_notified_when_it_does() {
        let w = World::new(open());
        let (ann, bob) = (w.user("ann").await, w.user("bob").await);
        w.inbox
            .send(&req(cmd::SEND, ann, &text("bob", "early", 1)))
            .await
            .unwrap();
        assert!(w.pushes().is_empty(), "nobody has a route yet");
        w.notifier.link_up(bob, "gw-b", 1, "d1").await;
        let pushes = w.pushes();
        assert_eq!(pushes.len(), 1);
        assert_eq!((pushes[0].0.as_str(), pushes[0].1.user_id), ("gw-b", bob));
        let n = notify_of(&pushes[0].1);
        assert!(n.entries.is_empty());
        assert_eq!(n.latest_seq, w.core.store.latest_seq(bob).await.unwrap());
        // Told once: a second link of bob's learns nothing new.
        w.notifier.link_up(bob, "gw-b", 2, "d1").await;
        assert!(w.pushes().is_empty());
    }

    fn batch(user: u64, sends: &[v1::SendMsg]) -> BusRequest {
        BusRequest {
            batch: sends
                .iter()
                .map(|m| Bytes::from(m.encode_to_vec()))
                .collect(),
            ..req(cmd::SEND, user, &v1::Empty {})
        }
    }

    fn texts_of(page: &v1::SyncResp) -> Vec<String> {
        page.entries
            .iter()
            .filter_map(|e| match &e.kind {
                Some(v1::entry::Kind::Message(m)) => Some(m.text.clone()),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_batch_is_stored_in_order_with_one_answer_each() {
        let w = World::new(open());
        let (ann, bob) = (w.user("ann").await, w.user("bob").await);
        let sends: Vec<v1::SendMsg> = (1..=6).map(|i| text("bob", &format!("m{i}"), i)).collect();
        let answers = w.inbox.send_batch(&batch(ann, &sends)).await;
        assert_eq!(answers.len(), 6);
        let acks: Vec<v1::SendAck> = answers
            .into_iter()
            .map(|a| v1::SendAck::decode(a.unwrap().body).unwrap())
            .collect();
        assert!(
            acks.windows(2).all(|w| w[0].seq < w[1].seq),
            "acks out of order"
        );
        // A bad send in the middle is refused alone; the batch, sent again, is a set of
        // duplicates answered with the original acks.
        let mut again = sends.clone();
        again.insert(3, text("bob", "no id", 0));
        let answers = w.inbox.send_batch(&batch(ann, &again)).await;
        assert!(matches!(answers[3], Err(LogicError::InvalidArgument(_))));
        let again_acks: Vec<v1::SendAck> = answers
            .into_iter()
            .filter_map(Result::ok)
            .map(|a| v1::SendAck::decode(a.body).unwrap())
            .collect();
        assert_eq!(
            again_acks, acks,
            "duplicates answered with the original acks"
        );
        let page = w
            .inbox
            .sync(&req(cmd::SYNC, bob, &v1::SyncReq::default()))
            .await
            .unwrap();
        let page = v1::SyncResp::decode(page.body).unwrap();
        let want: Vec<String> = (1..=6).map(|i| format!("m{i}")).collect();
        assert_eq!(texts_of(&page), want);
    }

    #[tokio::test]
    async fn the_rate_limit_refuses_the_rest_of_a_batch() {
        let mut cfg = open();
        cfg.limits.sends_per_user = crate::limits::Rate::new(0.001, 3.0);
        let w = World::new(cfg);
        let (ann, _bob) = (w.user("ann").await, w.user("bob").await);
        let sends: Vec<v1::SendMsg> = (1..=5).map(|i| text("bob", &format!("m{i}"), i)).collect();
        let answers = w.inbox.send_batch(&batch(ann, &sends)).await;
        let ok: Vec<bool> = answers.iter().map(|a| a.is_ok()).collect();
        assert_eq!(ok, [true, true, true, false, false]);
        assert!(answers[3..]
            .iter()
            .all(|a| matches!(a, Err(LogicError::RateLimited(..)))));
    }

    #[tokio::test]
    async fn friends_only_messaging_refuses_strangers_and_stores_nothing() {
        let w = World::new(LogicConfig::default());
        let (ann, bob) = (w.user("ann").await, w.user("bob").await);
        w.notifier.link_up(bob, "gw-b", 1, "d1").await;
        let refused = w
            .inbox
            .send(&req(cmd::SEND, ann, &text("bob", "hi", 1)))
            .await;
        assert!(
            matches!(&refused, Err(LogicError::PermissionDenied(m)) if m.contains("not your friend")),
            "{refused:?}"
        );
        assert!(w.pushes().is_empty());
        assert_eq!(w.core.store.latest_seq(bob).await.unwrap(), 0);
    }
}
