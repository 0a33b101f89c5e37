//! The link driver: one task that owns the long link, logs in, heartbeats, syncs,
//! routes answers to waiting requests, and reconnects with back-off and jitter.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ferry_proto::frame::encode_msg;
use ferry_proto::v1::{self, ErrorCode};
use ferry_proto::{cmd, Frame, ProtoMessage, MAX_BODY_LEN};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::{ClientError, Cmd, Event, Shared, ShortLink, Status};

/// Why a link session ended.
enum End {
    /// The app closed the client.
    Closed,
    /// Give up for good.
    Fatal(ClientError),
    /// Reconnect. `logged_in` resets the back-off.
    Lost { reason: String, logged_in: bool },
}

/// Full jitter: a random wait in [d/2, d].
fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms.max(1)))
}

pub(crate) async fn drive(
    shared: Arc<Shared>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    events: mpsc::UnboundedSender<Event>,
    first: oneshot::Sender<Result<(), ClientError>>,
) {
    let mut first = Some(first);
    let servers = shared.cfg.all_servers();
    let mut current = 0;
    let mut short = ShortLink::new(&servers[current]);
    let mut backoff = shared.cfg.backoff_min;
    loop {
        let end = session(
            &shared,
            &servers[current],
            &short,
            &mut cmds,
            &events,
            &mut first,
        )
        .await;
        shared.status.send_replace(Status::Connecting);
        shared.save_state();
        match end {
            End::Closed => break,
            End::Fatal(error) => {
                if let Some(f) = first.take() {
                    let _ = f.send(Err(error));
                } else {
                    let _ = events.send(Event::Stopped { error });
                }
                break;
            }
            End::Lost { reason, logged_in } => {
                tracing::debug!(%reason, server = %servers[current], "link lost; reconnecting");
                if servers.len() > 1 {
                    // This gateway failed us: the next one gets the next try.
                    current = (current + 1) % servers.len();
                    short = ShortLink::new(&servers[current]);
                }
                if logged_in {
                    backoff = shared.cfg.backoff_min;
                    let _ = events.send(Event::Disconnected { reason });
                }
            }
        }
        // Wait out the back-off, but stay closable.
        let wait = tokio::time::sleep(jitter(backoff));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                c = cmds.recv() => match c {
                    None | Some(Cmd::Close) => {
                        shared.status.send_replace(Status::Stopped);
                        return;
                    }
                    // No link: dropping the reply tells the caller to retry once
                    // connected (senders wait for `Status::Connected`).
                    Some(Cmd::Request { .. }) => {}
                },
            }
        }
        backoff = (backoff * 2).min(shared.cfg.backoff_max);
    }
    shared.status.send_replace(Status::Stopped);
}

/// The incoming half: a buffer that holds only what is not yet a whole frame.
struct Reader {
    half: OwnedReadHalf,
    buf: BytesMut,
}

impl Reader {
    /// Reads until at least one frame is whole; returns all whole frames.
    async fn frames(&mut self) -> Result<Vec<Frame>, ClientError> {
        loop {
            let mut out = Vec::new();
            while let Some(f) = Frame::parse(&mut self.buf, MAX_BODY_LEN)
                .map_err(|e| ClientError::Protocol(e.to_string()))?
            {
                out.push(f);
            }
            if !out.is_empty() {
                return Ok(out);
            }
            self.buf.reserve(8192);
            if self.half.read_buf(&mut self.buf).await? == 0 {
                return Err(ClientError::Io("server closed the link".into()));
            }
        }
    }
}

async fn connect(
    shared: &Shared,
    server: &str,
    short: &ShortLink,
) -> Result<(Reader, OwnedWriteHalf, v1::LoginResp), End> {
    let cfg = &shared.cfg;
    let lost = |reason: String| End::Lost {
        reason,
        logged_in: false,
    };
    // A token first (only when there is none: a stored token skips the password).
    let token = shared.state.lock().token.clone();
    let token = if token.is_empty() {
        let device = shared.state.lock().device_id.clone();
        match short.auth(&cfg.username, &cfg.password, &device).await {
            Ok(a) => {
                let mut s = shared.state.lock();
                s.token = a.token.clone();
                s.user_id = a.user_id;
                drop(s);
                shared.save_state();
                a.token
            }
            Err(e) if e.is_retryable() => return Err(lost(format!("auth: {e}"))),
            Err(e) => return Err(End::Fatal(e)),
        }
    } else {
        token
    };

    let stream = tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(server))
        .await
        .map_err(|_| lost("connect timed out".into()))?
        .map_err(|e| lost(format!("connect: {e}")))?;
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = Reader {
        half: read,
        buf: BytesMut::new(),
    };
    let login = v1::LoginReq {
        token,
        synckey: shared.state.lock().synckey,
        client_version: cfg.client_version.clone(),
    };
    let mut out = BytesMut::new();
    encode_msg(cmd::LOGIN, 1, &login, &mut out);
    write
        .write_all(&out)
        .await
        .map_err(|e| lost(format!("write: {e}")))?;
    let frames = tokio::time::timeout(cfg.request_timeout, reader.frames())
        .await
        .map_err(|_| lost("login timed out".into()))?
        .map_err(|e| lost(format!("login: {e}")))?;
    let first = &frames[0];
    if first.cmd == cmd::ERROR {
        let e = v1::Error::decode(first.body.clone()).unwrap_or_default();
        let err = ClientError::from_error(e);
        return Err(match err.code() {
            Some(ErrorCode::Unauthorized) => {
                // The token is gone (revoked, replaced): get a new one right away.
                shared.state.lock().token.clear();
                lost("token refused".into())
            }
            _ if err.is_retryable() => lost(format!("login: {err}")),
            _ => End::Fatal(err),
        });
    }
    if first.cmd != cmd::response(cmd::LOGIN) {
        return Err(lost(format!(
            "unexpected answer 0x{:02x} to login",
            first.cmd
        )));
    }
    let resp = v1::LoginResp::decode(first.body.clone())
        .map_err(|e| lost(format!("login answer: {e}")))?;
    // Frames behind the login answer (a notify, say) are kept for the session.
    let mut rest = BytesMut::new();
    for f in &frames[1..] {
        f.encode(&mut rest);
    }
    rest.extend_from_slice(&reader.buf);
    reader.buf = rest;
    Ok((reader, write, resp))
}

/// One logged-in link, until it ends.
async fn session(
    shared: &Arc<Shared>,
    server: &str,
    short: &ShortLink,
    cmds: &mut mpsc::UnboundedReceiver<Cmd>,
    events: &mpsc::UnboundedSender<Event>,
    first: &mut Option<oneshot::Sender<Result<(), ClientError>>>,
) -> End {
    let (mut reader, mut write, login) = match connect(shared, server, short).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    {
        let mut s = shared.state.lock();
        s.user_id = login.user_id;
        s.token_expires_ms = login.token_expires_ms;
        if !login.token.is_empty() {
            // The server renewed a token past half its life; the old one is gone.
            s.token = login.token.clone();
            drop(s);
            shared.save_state();
        }
    }
    *shared.username.lock() = login.username.clone();
    shared.status.send_replace(Status::Connected);
    let _ = events.send(Event::Connected {
        latest_seq: login.latest_seq,
    });
    if let Some(f) = first.take() {
        let _ = f.send(Ok(()));
    }

    let beat = if login.heartbeat_secs > 0 {
        shared
            .cfg
            .heartbeat
            .min(Duration::from_secs(u64::from(login.heartbeat_secs)))
    } else {
        shared.cfg.heartbeat
    };
    let mut link = Session {
        shared,
        events,
        pending: HashMap::new(),
        next_id: 2,
        sync_req: None,
        resync: false,
        group_syncs: HashMap::new(),
        group_busy: HashSet::new(),
        group_again: HashSet::new(),
        group_list_req: None,
        out: BytesMut::new(),
    };
    // Which groups moved while this device was away.
    let id = link.next_req_id();
    ferry_proto::frame::encode_raw(cmd::GROUP_LIST, id, &[], &mut link.out);
    link.group_list_req = Some(id);
    if login.latest_seq > link.synckey() {
        link.start_sync();
    }
    let mut ticker = tokio::time::interval_at(Instant::now() + beat, beat);
    let mut last_rx = Instant::now();
    let mut dirty_since_save = false;
    let lost = |reason: String| End::Lost {
        reason,
        logged_in: true,
    };
    loop {
        if !link.out.is_empty() {
            if let Err(e) = write.write_all(&link.out).await {
                return lost(format!("write: {e}"));
            }
            link.out.clear();
        }
        tokio::select! {
            c = cmds.recv() => match c {
                None | Some(Cmd::Close) => return End::Closed,
                Some(Cmd::Request { cmd, body, reply }) => {
                    let id = link.next_req_id();
                    ferry_proto::frame::encode_raw(cmd, id, &body, &mut link.out);
                    link.pending.insert(id, reply);
                }
            },
            r = reader.frames() => match r {
                Ok(frames) => {
                    last_rx = Instant::now();
                    for f in frames {
                        match link.on_frame(f) {
                            Ok(applied) => dirty_since_save |= applied,
                            Err(end) => return end,
                        }
                    }
                }
                Err(e) => return lost(e.to_string()),
            },
            _ = ticker.tick() => {
                if last_rx.elapsed() > beat * 2 {
                    return lost("heartbeat timeout".into());
                }
                let hb = v1::Heartbeat { synckey: link.synckey() };
                let id = link.next_req_id();
                encode_msg(cmd::HEARTBEAT, id, &hb, &mut link.out);
                if dirty_since_save {
                    shared.save_state();
                    dirty_since_save = false;
                }
            }
        }
    }
}

struct Session<'a> {
    shared: &'a Shared,
    events: &'a mpsc::UnboundedSender<Event>,
    pending: HashMap<u32, oneshot::Sender<Frame>>,
    next_id: u32,
    /// The id of the SYNC in flight, if any.
    sync_req: Option<u32>,
    /// A notify came while a sync was in flight: sync again after it.
    resync: bool,
    /// GROUP_SYNCs in flight: request id → group.
    group_syncs: HashMap<u32, u64>,
    /// Groups with a sync in flight, and those to sync again after it.
    group_busy: HashSet<u64>,
    group_again: HashSet<u64>,
    /// The GROUP_LIST sent after login.
    group_list_req: Option<u32>,
    out: BytesMut,
}

impl Session<'_> {
    fn synckey(&self) -> u64 {
        self.shared.state.lock().synckey
    }

    fn next_req_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(2);
        id
    }

    fn start_sync(&mut self) {
        if self.sync_req.is_some() {
            self.resync = true;
            return;
        }
        let id = self.next_req_id();
        let req = v1::SyncReq {
            synckey: self.synckey(),
            limit: 0,
        };
        encode_msg(cmd::SYNC, id, &req, &mut self.out);
        self.sync_req = Some(id);
        self.resync = false;
    }

    /// Hands the entries that continue the synckey to the app; true if any were new.
    fn apply(&mut self, entries: Vec<v1::Entry>) -> bool {
        let mut applied = false;
        for e in entries {
            let mut s = self.shared.state.lock();
            if e.seq <= s.synckey {
                continue;
            }
            s.synckey = e.seq;
            drop(s);
            applied = true;
            // Joining a group: fetch its log from where this user may read.
            if let Some(v1::entry::Kind::Group(g)) = &e.kind {
                use v1::group_event::Kind as K;
                if matches!(g.kind(), K::Created | K::Joined) {
                    self.start_group_sync(g.group_id);
                }
            }
            let _ = self.events.send(Event::Entry(e));
        }
        applied
    }

    fn group_cursor(&self, group: u64) -> u64 {
        self.shared
            .state
            .lock()
            .group_cursors
            .get(&group)
            .copied()
            .unwrap_or(0)
    }

    fn start_group_sync(&mut self, group: u64) {
        if !self.group_busy.insert(group) {
            self.group_again.insert(group);
            return;
        }
        let id = self.next_req_id();
        let req = v1::GroupSyncReq {
            group_id: group,
            after: self.group_cursor(group),
            limit: 0,
        };
        encode_msg(cmd::GROUP_SYNC, id, &req, &mut self.out);
        self.group_syncs.insert(id, group);
    }

    /// Hands a group's entries that continue its cursor to the app.
    fn apply_group(&mut self, group: u64, entries: Vec<v1::GroupEntry>) -> bool {
        let mut applied = false;
        for e in entries {
            let mut s = self.shared.state.lock();
            let cursor = s.group_cursors.entry(group).or_insert(0);
            if e.gseq <= *cursor {
                continue;
            }
            *cursor = e.gseq;
            drop(s);
            applied = true;
            let _ = self.events.send(Event::Group {
                group_id: group,
                entry: e,
            });
        }
        applied
    }

    fn on_group_sync(&mut self, group: u64, f: Frame) -> Result<bool, End> {
        self.group_busy.remove(&group);
        let again = self.group_again.remove(&group);
        if f.cmd == cmd::ERROR {
            // No longer a member (or the group is gone): forget it.
            self.shared.state.lock().group_cursors.remove(&group);
            return Ok(false);
        }
        let r = v1::GroupSyncResp::decode(f.body).map_err(|e| End::Lost {
            reason: format!("undecodable group sync: {e}"),
            logged_in: true,
        })?;
        let applied = self.apply_group(group, r.entries);
        {
            let mut s = self.shared.state.lock();
            let cursor = s.group_cursors.entry(group).or_insert(0);
            *cursor = (*cursor).max(r.cursor);
        }
        if r.more || again || r.latest_gseq > self.group_cursor(group) {
            self.start_group_sync(group);
        }
        Ok(applied)
    }

    /// Handles one incoming frame. `Ok(true)` when entries were applied.
    fn on_frame(&mut self, f: Frame) -> Result<bool, End> {
        let bad = |what: &str, e: prost::DecodeError| End::Lost {
            reason: format!("undecodable {what}: {e}"),
            logged_in: true,
        };
        match f.cmd {
            cmd::NOTIFY => {
                let n = v1::Notify::decode(f.body).map_err(|e| bad("notify", e))?;
                let synckey = self.synckey();
                if n.latest_seq <= synckey {
                    return Ok(false);
                }
                let continues = n.entries.first().map(|e| e.seq) == Some(synckey + 1)
                    && n.entries.last().map(|e| e.seq) == Some(n.latest_seq)
                    && n.entries.windows(2).all(|w| w[1].seq == w[0].seq + 1);
                if continues && self.sync_req.is_none() {
                    return Ok(self.apply(n.entries));
                }
                self.start_sync();
                Ok(false)
            }
            cmd::KICK => {
                let k = v1::Kick::decode(f.body).unwrap_or_default();
                let code = ErrorCode::try_from(k.code).unwrap_or(ErrorCode::Unavailable);
                if code == ErrorCode::Kicked || code == ErrorCode::Unauthorized {
                    return Err(End::Fatal(ClientError::Server {
                        code,
                        message: k.reason,
                        retry_after_ms: 0,
                    }));
                }
                Err(End::Lost {
                    reason: format!("server: {}", k.reason),
                    logged_in: true,
                })
            }
            _ if Some(f.req_id) == self.sync_req => {
                self.sync_req = None;
                if f.cmd == cmd::ERROR {
                    let e = v1::Error::decode(f.body).unwrap_or_default();
                    return Err(End::Lost {
                        reason: format!("sync refused: {}", e.message),
                        logged_in: true,
                    });
                }
                let r = v1::SyncResp::decode(f.body).map_err(|e| bad("sync answer", e))?;
                let applied = self.apply(r.entries);
                {
                    let mut s = self.shared.state.lock();
                    if r.synckey > s.synckey {
                        s.synckey = r.synckey;
                    }
                }
                if r.more || self.resync || r.latest_seq > self.synckey() {
                    self.start_sync();
                }
                Ok(applied)
            }
            cmd::GROUP_NOTIFY => {
                let n = v1::GroupNotify::decode(f.body).map_err(|e| bad("group notify", e))?;
                let cursor = self.group_cursor(n.group_id);
                if n.latest_gseq <= cursor {
                    return Ok(false);
                }
                let continues = cursor > 0
                    && n.entries.first().map(|e| e.gseq) == Some(cursor + 1)
                    && n.entries.last().map(|e| e.gseq) == Some(n.latest_gseq)
                    && n.entries.windows(2).all(|w| w[1].gseq == w[0].gseq + 1);
                if continues && !self.group_busy.contains(&n.group_id) {
                    return Ok(self.apply_group(n.group_id, n.entries));
                }
                self.start_group_sync(n.group_id);
                Ok(false)
            }
            cmd::TYPING_PUSH => {
                if let Ok(t) = v1::Typing::decode(f.body) {
                    let _ = self.events.send(Event::Typing { from: t.to });
                }
                Ok(false)
            }
            _ if self.group_syncs.contains_key(&f.req_id) => {
                let group = self.group_syncs.remove(&f.req_id).unwrap_or_default();
                self.on_group_sync(group, f)
            }
            _ if Some(f.req_id) == self.group_list_req => {
                self.group_list_req = None;
                if f.cmd == cmd::response(cmd::GROUP_LIST) {
                    let list =
                        v1::GroupListResp::decode(f.body).map_err(|e| bad("group list", e))?;
                    for g in list.groups {
                        if g.latest_gseq > self.group_cursor(g.group_id) {
                            self.start_group_sync(g.group_id);
                        }
                    }
                }
                Ok(false)
            }
            c if c == cmd::response(cmd::HEARTBEAT) => Ok(false),
            _ => {
                if let Some(reply) = self.pending.remove(&f.req_id) {
                    let _ = reply.send(f);
                }
                Ok(false)
            }
        }
    }
}
