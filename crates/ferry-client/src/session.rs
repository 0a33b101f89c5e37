//! The session loop: one task that owns the long link. It gets a logged-in link (see
//! [`crate::connect`]), then runs the link until it ends — writing what the sync state
//! machine ([`SyncMachine`]) and the app's requests queue, reading frames into the
//! machine, routing answers to waiting requests, heartbeating as the [`Heartbeat`]
//! controller says, reporting connect timings when idle, refreshing the endpoint list,
//! and on long-poll trying TCP again — and reconnects with back-off and jitter.
//!
//! Events reach the app through a bounded channel. The machine is told how much room
//! the app has; when it has none, the machine stops applying (the synckey stays at what
//! the app got) and this loop waits for the app to drain half the channel — still
//! heartbeating and answering requests — then the machine syncs what it left out. See
//! the crate docs ("Events and a slow app").
//!
//! The app's lifecycle: [`Cmd::Background`] arms a deadline (the grace); when it passes,
//! the session sends a last heartbeat with the synckey, waits briefly for its answer
//! and closes the link ([`End::Background`]), and the driver then waits for
//! [`Cmd::Foreground`] without reconnecting. A foreground before the deadline disarms
//! it; one during a back-off or in the background connects at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::frame::{encode_msg, encode_raw};
use ferry_proto::v1::{self, ErrorCode};
use ferry_proto::{cmd, Frame, ProtoMessage};
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::connect::{
    bootstrap, candidates, establish, race_login, send_report, spawn_refresh, Connected, End,
    RaceEnd,
};
use crate::heartbeat::{Due, Heartbeat};
use crate::smart::Transport;
use crate::sync::{SyncError, SyncMachine};
use crate::{ClientError, Cmd, Event, Shared, Status};

/// Channel slots kept for link events (Connected, Disconnected, Stopped): entries stop
/// short of them, so a full channel of entries still tells the app the link changed.
pub(crate) const LINK_EVENTS: usize = 4;

/// How many more entries (and typing events) the app can take now. A receiver the app
/// dropped takes everything (and keeps nothing), as an unbounded channel would.
fn room(events: &mpsc::Sender<Event>) -> usize {
    if events.is_closed() {
        usize::MAX
    } else {
        events.capacity().saturating_sub(LINK_EVENTS)
    }
}

/// Hands the machine's events to the app (they fit: the machine was told the room, and
/// this task is the channel's only sender), after writing the synckey and cursors they
/// cover into the device state. True when those moved.
fn deliver(shared: &Shared, sync: &mut SyncMachine, events: &mpsc::Sender<Event>) -> bool {
    let changed = sync.take_changed();
    if changed {
        let mut s = shared.state.lock();
        s.synckey = sync.synckey();
        s.group_cursors.clone_from(sync.group_cursors());
    }
    for ev in sync.take_events() {
        let _ = events.try_send(ev);
    }
    changed
}

/// Full jitter: a random wait in [d/2, d].
fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms.max(1)))
}

/// The wait before coming back to a server that shed this client and asked for `asked`:
/// spread over [asked, 2 × asked] so that the clients it shed together do not all come
/// back at the same moment (they would be shed together again), at most `max`.
fn pushed_back(asked: Duration, max: Duration) -> Duration {
    let ms = asked.min(max).as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(ms..=ms.saturating_mul(2).max(1))).min(max)
}

/// The grace deadline of a pending background close: armed once (a second background
/// keeps the first deadline), disarmed by a foreground.
fn background(shared: &Shared, close_at: &mut Option<Instant>) {
    if close_at.is_none() {
        *close_at = Some(Instant::now() + shared.cfg.background_grace);
    }
}

/// Sleeps until the background deadline, or forever when none is armed.
async fn until(close_at: Option<Instant>) {
    match close_at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// In the background: no link, until the app comes back (true) or closes the client
/// (false). Requests are refused at once (their reply dropped); a network change is
/// remembered for the next link.
async fn asleep(
    shared: &Shared,
    cmds: &mut mpsc::UnboundedReceiver<Cmd>,
    events: &mpsc::Sender<Event>,
) -> bool {
    shared.status.send_replace(Status::Background);
    tracing::debug!("in the background: link closed until the foreground");
    let _ = events.try_send(Event::Disconnected {
        reason: "the app is in the background".into(),
    });
    loop {
        match cmds.recv().await {
            None | Some(Cmd::Close) => return false,
            Some(Cmd::Foreground) => {
                shared.status.send_replace(Status::Connecting);
                return true;
            }
            Some(Cmd::Network(n)) => network_changed(shared, n),
            Some(Cmd::Background | Cmd::Request { .. }) => {}
        }
    }
}

/// Switches to another network: its own heartbeat, and no bans from the old one.
fn network_changed(shared: &Shared, network: String) {
    let mut smart = shared.smart.lock();
    smart.bans.clear();
    smart.network = network;
    smart.tcp_worked_at = None;
}

/// The client's link task, until the app closes the client or logging in becomes
/// impossible: connect, run the session, and after it ends wait out the back-off
/// (staying closable; a network change ends the wait) and connect again. `first` hears
/// how the first login went; later fatal errors reach the app as [`Event::Stopped`].
pub(crate) async fn drive(
    shared: Arc<Shared>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    events: mpsc::Sender<Event>,
    first: oneshot::Sender<Result<(), ClientError>>,
) {
    let mut first = Some(first);
    let mut backoff = shared.cfg.backoff_min;
    let mut ready: Option<Connected> = None;
    // When a pending background close is due (the app went to the background).
    let mut close_at: Option<Instant> = None;
    'outer: loop {
        let conn = match ready.take() {
            Some(c) => Ok(c),
            None => {
                // Stay closable while endpoints are tried.
                let est = establish(&shared);
                tokio::pin!(est);
                loop {
                    tokio::select! {
                        r = &mut est => break r,
                        // Still no link when the grace ran out: stop trying.
                        _ = until(close_at) => break Err(End::Background),
                        c = cmds.recv() => match c {
                            None | Some(Cmd::Close) => break 'outer,
                            Some(Cmd::Network(n)) => {
                                network_changed(&shared, n);
                                est.set(establish(&shared));
                            }
                            Some(Cmd::Background) => background(&shared, &mut close_at),
                            Some(Cmd::Foreground) => close_at = None,
                            // No link: dropping the reply tells the caller to retry once
                            // connected (senders wait for `Status::Connected`).
                            Some(Cmd::Request { .. }) => {}
                        },
                    }
                }
            }
        };
        let end = match conn {
            Ok(c) => session(&shared, c, &mut cmds, &events, &mut first, &mut close_at).await,
            Err(end) => end,
        };
        shared.status.send_replace(Status::Connecting);
        {
            let mut smart = shared.smart.lock();
            // A TCP link worked until just now: see `SmartConfig::long_poll_after`.
            if smart.current.is_some_and(|e| e.transport == Transport::Tcp) {
                smart.tcp_worked_at = Some(tokio::time::Instant::now());
            }
            smart.current = None;
        }
        shared.save_state();
        // What a busy server asked the next attempt to wait (see `End::Busy`).
        let mut pushed: Option<Duration> = None;
        match end {
            End::Closed => break,
            End::Background => {
                close_at = None;
                if !asleep(&shared, &mut cmds, &events).await {
                    break;
                }
                backoff = shared.cfg.backoff_min;
                continue;
            }
            End::Fatal(error) => {
                if let Some(f) = first.take() {
                    let _ = f.send(Err(error));
                } else {
                    let _ = events.try_send(Event::Stopped { error });
                }
                break;
            }
            End::Switch(c) => {
                let _ = events.try_send(Event::Disconnected {
                    reason: format!("moving to {}", c.conn.endpoint),
                });
                ready = Some(*c);
                continue;
            }
            End::NetworkChanged => {
                backoff = shared.cfg.backoff_min;
                let _ = events.try_send(Event::Disconnected {
                    reason: "network changed".into(),
                });
                continue;
            }
            End::Lost { reason, logged_in } => {
                tracing::debug!(%reason, "link lost; reconnecting");
                if logged_in {
                    backoff = shared.cfg.backoff_min;
                    let _ = events.try_send(Event::Disconnected { reason });
                }
            }
            End::Busy { retry_after } => {
                tracing::debug!(?retry_after, "server busy; coming back when it asked");
                pushed = Some(retry_after);
            }
        }
        // Wait out the back-off (or what a busy server asked for), but stay closable; a
        // network change or the app coming to the foreground ends the wait, the
        // background grace running out ends the reconnecting.
        let wait = tokio::time::sleep(match pushed {
            Some(d) => pushed_back(d, shared.cfg.backoff_max),
            None => jitter(backoff),
        });
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                _ = until(close_at) => {
                    close_at = None;
                    if !asleep(&shared, &mut cmds, &events).await {
                        break 'outer;
                    }
                    backoff = shared.cfg.backoff_min;
                    continue 'outer;
                }
                c = cmds.recv() => match c {
                    None | Some(Cmd::Close) => break 'outer,
                    Some(Cmd::Network(n)) => {
                        network_changed(&shared, n);
                        backoff = shared.cfg.backoff_min;
                        continue 'outer;
                    }
                    Some(Cmd::Background) => background(&shared, &mut close_at),
                    Some(Cmd::Foreground) => {
                        close_at = None;
                        backoff = shared.cfg.backoff_min;
                        continue 'outer;
                    }
                    Some(Cmd::Request { .. }) => {}
                },
            }
        }
        // A server that said when to come back is not a failing one: the back-off
        // grows only when nothing answered.
        if pushed.is_none() {
            backoff = (backoff * 2).min(shared.cfg.backoff_max);
        }
    }
    shared.status.send_replace(Status::Stopped);
}

/// One logged-in link, until it ends.
async fn session(
    shared: &Arc<Shared>,
    connected: Connected,
    cmds: &mut mpsc::UnboundedReceiver<Cmd>,
    events: &mpsc::Sender<Event>,
    first: &mut Option<oneshot::Sender<Result<(), ClientError>>>,
    close_at: &mut Option<Instant>,
) -> End {
    let Connected {
        mut conn,
        login,
        resumed,
    } = connected;
    let endpoint = conn.endpoint;
    {
        let mut s = shared.state.lock();
        s.user_id = login.user_id;
        s.token_expires_ms = login.token_expires_ms;
        if !login.token.is_empty() {
            // The server renewed a token past half its life; the old one is gone.
            s.token = login.token.clone();
        }
        // A full handshake's answer carries the ticket to resume with from now on (none:
        // the next link does the full handshake too). A resumed link keeps using the
        // ticket it came with, unless the answer replaces it.
        let fresh = conn
            .take_ticket()
            .as_ref()
            .and_then(crate::state::StoredTicket::from_login);
        if fresh.is_some() || !resumed {
            s.resumption = fresh;
        }
        s.last_endpoint = endpoint.to_string();
    }
    shared.save_state();
    shared.smart.lock().current = Some(endpoint);
    *shared.username.lock() = login.username.clone();
    // The heartbeat: learnt per network on TCP; on long-poll the polls keep the path
    // open, so the safe interval is used as it is.
    let cfg = &shared.cfg;
    let network = shared.smart.lock().network.clone();
    let learnt = shared.state.lock().heartbeats.get(&network).cloned();
    let mut hb = Heartbeat::new(
        learnt,
        cfg.heartbeat,
        &cfg.smart,
        login.idle_timeout_ms,
        login.heartbeat_secs,
        endpoint.transport == Transport::Tcp,
        Instant::now(),
    );
    let save_hb = |hb: &Heartbeat| {
        shared
            .state
            .lock()
            .heartbeats
            .insert(network.clone(), hb.state().clone());
        shared.smart.lock().heartbeat = hb.interval();
        shared.save_state();
    };
    shared.smart.lock().heartbeat = hb.interval();

    shared.status.send_replace(Status::Connected);
    tracing::debug!(%endpoint, "logged in");
    let _ = events.try_send(Event::Connected {
        latest_seq: login.latest_seq,
        endpoint,
    });
    if let Some(f) = first.take() {
        let _ = f.send(Ok(()));
    }

    let mut sync = {
        let s = shared.state.lock();
        SyncMachine::new(s.synckey, s.group_cursors.clone())
    };
    sync.set_room(room(events));
    // Which groups moved while this device was away; the inbox beyond the synckey.
    sync.logged_in(login.latest_seq);
    // The app's requests waiting for their answers, by request id.
    let mut pending: HashMap<u32, oneshot::Sender<Frame>> = HashMap::new();
    // Once stalled, the app must free half the channel before entries flow again, so a
    // slow app gets a few large deliveries rather than one sync per freed slot.
    let resume_at = (events.max_capacity() / 2).max(LINK_EVENTS + 1);
    let now = Instant::now();
    // The endpoint list is refreshed when it is due, not on every login: after a
    // server restart every device logs in again at once, and a sealed request each (a
    // new connection and a key agreement on both sides) would double the storm.
    let mut refresh_at = {
        let smart = shared.smart.lock();
        smart
            .refreshed_at
            .map_or(now, |at| at + smart.refresh_every)
    };
    if now >= refresh_at {
        refresh_at = now + shared.smart.lock().refresh_every;
        spawn_refresh(shared, endpoint.addr);
    }
    let mut dirty_since_save = false;
    let mut last_report = now;
    // On long-poll: when to try TCP again, and the attempt in flight.
    let mut probe_at = (endpoint.transport == Transport::Http).then(|| now + cfg.smart.tcp_retry);
    let mut probe: Option<oneshot::Receiver<Result<Connected, RaceEnd>>> = None;
    let lost = |reason: String| End::Lost {
        reason,
        logged_in: true,
    };
    // Going to the background (the grace is over): the last heartbeat's id, the
    // synckey it told, and how long its answer is waited for.
    let mut closing: Option<(u32, u64, Instant)> = None;
    loop {
        if !sync.out.is_empty() {
            if let Err(e) = conn.send(&sync.out).await {
                if hb.link_failed() {
                    save_hb(&hb);
                }
                return lost(format!("write: {e}"));
            }
            sync.out.clear();
            hb.sent(Instant::now());
        }
        let now = Instant::now();
        let mut wake = hb.wake().min(refresh_at);
        if let Some(t) = probe_at.filter(|_| probe.is_none()) {
            wake = wake.min(t);
        }
        if let Some(t) = sync.deadline() {
            wake = wake.min(t);
        }
        match (closing, *close_at) {
            (Some((_, _, t)), _) | (None, Some(t)) => wake = wake.min(t),
            (None, None) => {}
        }
        let report_due = hb.last_activity().max(last_report) + cfg.smart.report_idle;
        let want_report = !shared.smart.lock().samples.is_empty();
        if want_report {
            wake = wake.min(report_due);
        }
        let stalled = sync.stalled();
        tokio::select! {
            c = cmds.recv() => match c {
                None | Some(Cmd::Close) => return End::Closed,
                Some(Cmd::Network(n)) => {
                    network_changed(shared, n);
                    return End::NetworkChanged;
                }
                Some(Cmd::Background) => background(shared, close_at),
                // Back within the grace (or while the last heartbeat is out): the link
                // stays as it is.
                Some(Cmd::Foreground) => {
                    *close_at = None;
                    closing = None;
                }
                Some(Cmd::Request { cmd, body, reply }) => {
                    let id = sync.next_req_id();
                    encode_raw(cmd, id, &body, &mut sync.out);
                    pending.insert(id, reply);
                }
            },
            r = conn.frames() => match r {
                Ok(frames) => {
                    let now = Instant::now();
                    if hb.received(now) {
                        tracing::debug!(interval_ms = hb.state().interval_ms, %network, "heartbeat interval up");
                        save_hb(&hb);
                    }
                    sync.set_room(room(events));
                    let mut end = None;
                    let mut last_beat_answered = false;
                    for f in frames {
                        match sync.on_frame(f, now) {
                            Ok(None) => {}
                            Ok(Some(f)) => {
                                last_beat_answered |= closing.is_some_and(|(id, _, _)| {
                                    f.cmd == cmd::response(cmd::HEARTBEAT) && f.req_id == id
                                });
                                end = route(f, &mut pending);
                            }
                            Err(SyncError(reason)) => end = Some(lost(reason)),
                        }
                        if end.is_some() {
                            break;
                        }
                    }
                    // What was applied before a frame that ends the link still counts.
                    dirty_since_save |= deliver(shared, &mut sync, events);
                    if let Some(end) = end {
                        if !replaced(&end) {
                            return end;
                        }
                        // This device logged in on another link. When this client did
                        // it itself (the TCP probe of a long-poll session, or a LOGIN
                        // that got no answer — refused by a gateway that stopped waiting,
                        // timed out, a racing attempt cut short — and still landed),
                        // carry on: move to the probe's link, or log in again.
                        // Otherwise another copy of this device took over: stop.
                        if let Some(p) = probe.take() {
                            return match tokio::time::timeout(cfg.smart.attempt_timeout, p).await {
                                Ok(Ok(Ok(better))) => End::Switch(Box::new(better)),
                                _ => lost("replaced by this client's own login".into()),
                            };
                        }
                        if crate::connect::own_login_may_land(shared) {
                            return lost("replaced by this client's own late login".into());
                        }
                        return end;
                    }
                    if last_beat_answered {
                        // The server knows the synckey: close, unless entries applied
                        // since the beat moved it (then tell that too).
                        match closing {
                            Some((_, told, until)) if sync.synckey() > told => {
                                closing = Some((last_beat(&mut sync), sync.synckey(), until));
                            }
                            _ => return End::Background,
                        }
                    }
                }
                Err(e) => {
                    if hb.link_failed() {
                        save_hb(&hb);
                    }
                    return lost(e.to_string());
                }
            },
            r = async { probe.as_mut().expect("probe in flight").await }, if probe.is_some() => {
                probe = None;
                match r {
                    Ok(Ok(better)) => return End::Switch(Box::new(better)),
                    Ok(Err(RaceEnd::Stop(end))) => return end,
                    _ => probe_at = Some(Instant::now() + cfg.smart.tcp_retry),
                }
            },
            // The app drained (or dropped its receiver: then everything has room).
            _ = events.reserve_many(resume_at), if stalled => {
                sync.set_room(room(events));
                sync.resume();
            },
            _ = tokio::time::sleep_until(wake.max(now)) => {
                let now = Instant::now();
                sync.tick(now);
                if closing.is_none() && close_at.is_some_and(|t| now >= t) {
                    // The grace is over: tell the server what this device has applied
                    // (the badge and the pushes count from it), then close. The
                    // deadline stays armed (and past), so that a link lost meanwhile
                    // goes to the background too rather than reconnecting.
                    let wait = cfg.smart.answer_timeout.min(Duration::from_secs(2));
                    closing = Some((last_beat(&mut sync), sync.synckey(), now + wait));
                    hb.sent(now);
                }
                if closing.is_some_and(|(_, _, t)| now >= t) {
                    return End::Background;
                }
                match hb.due(now) {
                    Due::Dead { save } => {
                        if save {
                            tracing::debug!(interval_ms = hb.state().interval_ms, %network, "heartbeat lost");
                            save_hb(&hb);
                        }
                        return lost("no answer from the server".into());
                    }
                    Due::Beat => {
                        let beat = v1::Heartbeat { synckey: sync.synckey() };
                        let id = sync.next_req_id();
                        encode_msg(cmd::HEARTBEAT, id, &beat, &mut sync.out);
                        if dirty_since_save {
                            shared.save_state();
                            dirty_since_save = false;
                        }
                    }
                    Due::Nothing => {}
                }
                if probe.is_none() && probe_at.is_some_and(|t| now >= t) {
                    probe_at = None;
                    let (tx, rx) = oneshot::channel();
                    let shared2 = shared.clone();
                    tokio::spawn(async move {
                        let boot = bootstrap(&shared2).await;
                        let cands = candidates(&shared2, Transport::Tcp, &boot);
                        let _ = tx.send(race_login(&shared2, &cands).await);
                    });
                    probe = Some(rx);
                }
                if want_report && now >= report_due && pending.is_empty() {
                    last_report = now;
                    tokio::spawn(send_report(shared.clone(), endpoint.addr));
                }
                if now >= refresh_at {
                    refresh_at = now + shared.smart.lock().refresh_every;
                    spawn_refresh(shared, endpoint.addr);
                }
            }
        }
    }
}

/// Queues the heartbeat sent before going to the background (it carries the synckey);
/// its request id.
fn last_beat(sync: &mut SyncMachine) -> u32 {
    let beat = v1::Heartbeat {
        synckey: sync.synckey(),
    };
    let id = sync.next_req_id();
    encode_msg(cmd::HEARTBEAT, id, &beat, &mut sync.out);
    id
}

/// Whether `end` is the server's `KICK{KICKED}`: this session ended (logout, password
/// change) or this device logged in on another link.
fn replaced(end: &End) -> bool {
    matches!(end, End::Fatal(e) if e.code() == Some(ErrorCode::Kicked))
}

/// A frame the sync machine handed back: the server ending the link, a heartbeat's
/// answer, or the answer to one of the app's requests. `Some` when the link ends.
fn route(f: Frame, pending: &mut HashMap<u32, oneshot::Sender<Frame>>) -> Option<End> {
    match f.cmd {
        cmd::KICK => {
            let k = v1::Kick::decode(f.body).unwrap_or_default();
            let code = ErrorCode::try_from(k.code).unwrap_or(ErrorCode::Unavailable);
            if code == ErrorCode::Kicked || code == ErrorCode::Unauthorized {
                return Some(End::Fatal(ClientError::server(code, k.reason, 0)));
            }
            Some(End::Lost {
                reason: format!("server: {}", k.reason),
                logged_in: true,
            })
        }
        c if c == cmd::response(cmd::HEARTBEAT) => None,
        _ => {
            if let Some(reply) = pending.remove(&f.req_id) {
                let _ = reply.send(f);
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pushed_back_client_waits_between_once_and_twice_what_it_was_told() {
        let (asked, max) = (Duration::from_millis(1000), Duration::from_secs(30));
        let waits: Vec<Duration> = (0..200).map(|_| pushed_back(asked, max)).collect();
        assert!(waits.iter().all(|w| *w >= asked && *w <= 2 * asked));
        // Spread, not all at one moment.
        let (lo, hi) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
        assert!(*hi - *lo > Duration::from_millis(500), "{lo:?}..{hi:?}");
        // Never past the back-off's own ceiling.
        assert!(pushed_back(Duration::from_secs(60), max) <= max);
    }
}
