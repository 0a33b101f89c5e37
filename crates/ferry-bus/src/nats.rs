//! The cluster bus: gateways and logic nodes in separate processes, joined by NATS.
//!
//! Subjects (under a prefix, `ferry` by default):
//!
//! | subject | from → to | what |
//! | --- | --- | --- |
//! | `P.req.NODE` | gateway → logic node `NODE` | a [`BusRequest`]; the reply is a [`BusResponse`]. The gateway picks a live node by rendezvous hash of the user id (`nodes.rs`) |
//! | `P.req` | gateway → one logic node | the same, when the gateway knows no live node: logic nodes also subscribe in the queue group `P.logic`, so NATS spreads these over them |
//! | `P.alive` | logic node → every gateway | its heartbeat every 250 ms: instance id, overloaded, leaving |
//! | `P.push.GW` | logic → gateway `GW` | a [`Push`] |
//! | `P.presence.GW` | gateway `GW` → every logic node | batches of [`LinkEvent`]s, heartbeats and snapshots |
//! | `P.resync`, `P.resync.GW` | logic → every gateway / gateway `GW` | "send me a snapshot of your links" |
//!
//! Bodies are the protobuf types of `proto/bus.proto` (prost); the presence envelope is
//! a small prost message private to this file.
//!
//! **The route table.** Every logic node keeps the whole user → gateways table in memory
//! (`ferry-logic`'s presence), fed by every gateway's presence subject. That keeps a push
//! a local lookup (no store round trip per message) and costs each logic node a few
//! dozen bytes per online user. What makes it safe:
//!
//! * each gateway numbers its presence messages (`instance`, `seq`); a logic node that
//!   sees a gap, a new instance (the gateway restarted), or that (re)connects to NATS,
//!   asks for a snapshot, which replaces everything it knew about that gateway;
//! * each gateway heartbeats on its presence subject; a gateway not heard from for
//!   `gateway_expiry` is dropped from the table ([`Handler::gateway_down`]), so routes of
//!   a SIGKILLed gateway disappear within seconds and never accumulate;
//! * a gateway that detaches cleanly says so, and is dropped at once.
//!
//! * a logic node that was paused (SIGSTOP, a stall) heard nothing while it was: on
//!   waking, its own clock shows the gap, and it gives every gateway a fresh expiry
//!   period (their heartbeats are on the way) instead of dropping their routes.
//!
//! **Liveness of logic nodes.** A request goes to one node's own subject. An idempotent
//! request (the command table's `idempotent`: SEND, the reads) whose node falls silent
//! (no heartbeat for 600 ms) while it waits is sent to the next node, up to 3 tries;
//! any other is answered `Timeout` then (UNAVAILABLE to the client, with retry_after).
//! A node that is merely slow keeps beating, so its requests wait (up to
//! `request_timeout`) instead of being sent twice.
//!
//! To answer snapshots the gateway side keeps, per live link, its connection id and
//! user id (16 bytes of payload per link) — the only state this bus holds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use prost::Message as _;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::nodes::{Nodes, ALIVE_INTERVAL, SILENT_AFTER};
use crate::{Bus, BusError, BusRequest, BusResponse, Handler, LinkEvent, Push, PushSink};

/// NATS bus settings.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// NATS server URL(s), comma-separated: `nats://127.0.0.1:4222`.
    pub url: String,
    /// Subject prefix: clusters sharing a NATS system need different ones.
    pub prefix: String,
    /// How long a gateway waits for logic to answer a request.
    pub request_timeout: Duration,
    /// How often a gateway says it is alive.
    pub heartbeat: Duration,
    /// A gateway silent this long is dead: its routes are dropped.
    pub gateway_expiry: Duration,
    /// Requests one logic node works on at once.
    pub max_inflight: usize,
    /// Name shown in the NATS server's connection list.
    pub name: String,
    /// How long a gateway waits for a logic node's first heartbeat (at start-up) before
    /// sending requests to the queue group instead.
    pub alive_expiry: Duration,
}

impl NatsConfig {
    pub fn new(url: impl Into<String>) -> Self {
        NatsConfig {
            url: url.into(),
            prefix: "ferry".into(),
            request_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_secs(2),
            gateway_expiry: Duration::from_secs(7),
            max_inflight: 4096,
            name: "ferry".into(),
            alive_expiry: crate::nodes::ALIVE_EXPIRY,
        }
    }
}

/// The presence envelope on `P.presence.GW`.
#[derive(Clone, PartialEq, prost::Message)]
struct PresenceMsg {
    #[prost(string, tag = "1")]
    gateway_id: String,
    /// Random per gateway process: a new value means the gateway restarted.
    #[prost(uint64, tag = "2")]
    instance: u64,
    /// 1, 2, 3 … per instance: a gap means something was lost.
    #[prost(uint64, tag = "3")]
    seq: u64,
    /// Link changes (or, in a snapshot, the links that are up), in order. `gateway_id`
    /// is left empty on the wire and filled in by the receiver.
    #[prost(message, repeated, tag = "4")]
    events: Vec<LinkEvent>,
    /// This message starts a snapshot: forget every route through this gateway first.
    #[prost(bool, tag = "5")]
    snapshot: bool,
    /// The gateway is detaching: drop its routes.
    #[prost(bool, tag = "6")]
    leaving: bool,
}

/// A logic node's heartbeat on `P.alive`.
#[derive(Clone, PartialEq, prost::Message)]
struct AliveMsg {
    /// Random per logic process; its requests subject is `P.req.<instance as hex>`.
    #[prost(uint64, tag = "1")]
    instance: u64,
    /// Working at its limit: gateways send elsewhere while another node is not.
    #[prost(bool, tag = "2")]
    overloaded: bool,
    /// Stopping (SIGTERM): out of rotation now.
    #[prost(bool, tag = "3")]
    leaving: bool,
}

/// Tries of an idempotent request, each on another node.
const TRIES: usize = 3;

/// Links per presence message (keeps messages far below NATS's 1 MiB payload limit).
const EVENTS_PER_MSG: usize = 8192;

fn transport(e: impl std::fmt::Display) -> BusError {
    BusError::Transport(e.to_string())
}

/// The NATS bus. One per process; a process may be a gateway, a logic node or both.
pub struct NatsBus {
    client: async_nats::Client,
    cfg: NatsConfig,
    /// Gateway ids attached in this process → their presence publisher.
    gateways: Mutex<HashMap<String, GatewaySide>>,
    /// Subscription tasks, aborted on drop.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// NATS connection events (reconnects), taken by the logic side.
    events: Mutex<Option<mpsc::UnboundedReceiver<async_nats::Event>>>,
    /// Subscriptions still being set up (see [`NatsBus::ready`]).
    pending: Mutex<Vec<tokio::sync::oneshot::Receiver<()>>>,
    /// Gateways detached whose `leaving` may not be published yet (see [`NatsBus::close`]).
    leaving: Mutex<Vec<tokio::sync::oneshot::Receiver<()>>>,
    /// The logic nodes heard on `P.alive` (the gateway side's choice of node).
    nodes: Arc<Mutex<Nodes>>,
    /// This process's logic node id (when it serves logic).
    instance: u64,
    /// The logic node's heartbeat task, stopped by [`NatsBus::leave`].
    alive: Mutex<Option<JoinHandle<()>>>,
}

struct GatewaySide {
    presence: mpsc::UnboundedSender<PresenceCmd>,
}

enum PresenceCmd {
    Event(LinkEvent),
    Snapshot,
    Leave(tokio::sync::oneshot::Sender<()>),
}

impl NatsBus {
    /// Connects to NATS. Fails when no server answers within a few seconds; after that,
    /// lost connections are re-established for ever.
    pub async fn connect(cfg: NatsConfig) -> Result<Arc<Self>, BusError> {
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .name(&cfg.name)
            .request_timeout(Some(cfg.request_timeout))
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((50 * 2u64.pow(attempts.min(6) as u32)).min(2_000))
            })
            .event_callback(move |ev| {
                let tx = ev_tx.clone();
                async move {
                    tracing::info!(event = %ev, "nats");
                    let _ = tx.send(ev);
                }
            })
            .connect(
                cfg.url
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .collect::<Vec<_>>(),
            )
            .await
            .map_err(transport)?;
        let bus = Arc::new(NatsBus {
            client,
            cfg,
            gateways: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            events: Mutex::new(Some(ev_rx)),
            pending: Mutex::new(Vec::new()),
            leaving: Mutex::new(Vec::new()),
            nodes: Arc::new(Mutex::new(Nodes::default())),
            instance: rand::random::<u64>().max(1),
            alive: Mutex::new(None),
        });
        let ready = bus.pending();
        bus.spawn(Self::follow_alive(
            bus.client.clone(),
            bus.subject(&["alive"]),
            bus.nodes.clone(),
            ready,
        ));
        Ok(bus)
    }

    /// This process's logic node id (its requests subject is `P.req.<id as hex>`).
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// The logic nodes heard of, for tests and the dashboard: (live, known).
    pub fn logic_nodes(&self) -> (usize, usize) {
        let mut nodes = self.nodes.lock();
        let live = nodes.ranked(0, Instant::now(), self.cfg.alive_expiry).len();
        (live, nodes.len())
    }

    /// Stops this logic node's heartbeat and tells every gateway it is leaving (SIGTERM):
    /// they stop sending it requests at once. Requests already sent are still answered.
    pub async fn leave(&self) {
        if let Some(beat) = self.alive.lock().take() {
            beat.abort();
        }
        let msg = AliveMsg {
            instance: self.instance,
            overloaded: false,
            leaving: true,
        };
        if let Err(e) = self
            .client
            .publish(self.subject(&["alive"]), Bytes::from(msg.encode_to_vec()))
            .await
        {
            tracing::debug!(error = %e, "leaving not published");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.flush()).await;
    }

    /// Follows the logic nodes' heartbeats.
    async fn follow_alive(
        client: async_nats::Client,
        subject: String,
        nodes: Arc<Mutex<Nodes>>,
        ready: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut sub = match client.subscribe(subject).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot subscribe to logic heartbeats");
                return;
            }
        };
        let _ = ready.send(());
        while let Some(msg) = sub.next().await {
            match AliveMsg::decode(msg.payload) {
                Ok(a) if a.leaving => {
                    tracing::info!(node = format!("{:016x}", a.instance), "logic node left");
                    nodes.lock().left(a.instance);
                }
                Ok(a) => nodes.lock().heard(a.instance, a.overloaded, Instant::now()),
                Err(e) => tracing::warn!(error = %e, "undecodable logic heartbeat"),
            }
        }
    }

    /// The logic node's heartbeat: every [`ALIVE_INTERVAL`], from this runtime.
    async fn beat_alive(
        client: async_nats::Client,
        subject: String,
        instance: u64,
        handler: Arc<dyn Handler>,
        limit: Arc<Semaphore>,
    ) {
        let mut tick = tokio::time::interval(ALIVE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let msg = AliveMsg {
                instance,
                overloaded: limit.available_permits() == 0 || handler.overloaded(),
                leaving: false,
            };
            if let Err(e) = client
                .publish(subject.clone(), Bytes::from(msg.encode_to_vec()))
                .await
            {
                tracing::debug!(error = %e, "heartbeat not published");
            }
        }
    }

    /// One try of a request on `subject`. Gives up early when `node` falls silent (it
    /// stopped; a slow node keeps beating and is waited for).
    async fn try_request(
        &self,
        subject: String,
        payload: Bytes,
        node: Option<u64>,
        deadline: Instant,
    ) -> Result<BusResponse, BusError> {
        let request = self.client.request(subject, payload);
        tokio::pin!(request);
        let decode = |r: Result<async_nats::Message, async_nats::RequestError>| {
            let msg = r.map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::NoResponders => BusError::NoLogic,
                async_nats::RequestErrorKind::TimedOut => BusError::Timeout,
                _ => transport(e),
            })?;
            BusResponse::decode(msg.payload).map_err(transport)
        };
        // The queue group (no node chosen): only the deadline to watch.
        let Some(n) = node else {
            return match tokio::time::timeout_at(deadline, request).await {
                Ok(r) => decode(r),
                Err(_) => Err(BusError::Timeout),
            };
        };
        let expiry = tokio::time::sleep_until(deadline);
        tokio::pin!(expiry);
        // The node's liveness is looked at every 100 ms, the first time 100 ms in.
        let every = Duration::from_millis(100);
        let mut check = tokio::time::interval_at(Instant::now() + every, every);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = &mut request => return decode(r),
                _ = &mut expiry => return Err(BusError::Timeout),
                _ = check.tick() => {
                    let mut nodes = self.nodes.lock();
                    if nodes.silent(n, Instant::now(), SILENT_AFTER) {
                        nodes.suspect(n);
                        return Err(BusError::Timeout);
                    }
                }
            }
        }
    }

    pub fn config(&self) -> &NatsConfig {
        &self.cfg
    }

    fn subject(&self, parts: &[&str]) -> String {
        let mut s = self.cfg.prefix.clone();
        for p in parts {
            s.push('.');
            s.push_str(p);
        }
        s
    }

    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.lock().push(tokio::spawn(f));
    }

    fn pending(&self) -> tokio::sync::oneshot::Sender<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pending.lock().push(rx);
        tx
    }

    /// Waits until every subscription made so far is registered with the server.
    ///
    /// A flush only puts the SUBs on the socket; another connection's publish can still
    /// reach the server first. So this ends with a message sent to itself: the server
    /// reads a connection's protocol in order, so once that message is back every SUB
    /// before it is in the server's interest graph.
    pub async fn ready(&self) -> Result<(), BusError> {
        let waits: Vec<_> = std::mem::take(&mut *self.pending.lock());
        for w in waits {
            w.await
                .map_err(|_| BusError::Transport("subscribing failed".into()))?;
        }
        let inbox = self.client.new_inbox();
        let mut echo = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(transport)?;
        self.client
            .publish(inbox, Bytes::new())
            .await
            .map_err(transport)?;
        self.client.flush().await.map_err(transport)?;
        match tokio::time::timeout(self.cfg.request_timeout, echo.next()).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(BusError::Transport(
                "connection closed while subscribing".into(),
            )),
            Err(_) => Err(BusError::Timeout),
        }
    }

    /// Sends what is buffered (a gateway's last presence, a logic node's last pushes).
    pub async fn flush(&self) -> Result<(), BusError> {
        self.client.flush().await.map_err(transport)
    }

    /// Detaches every gateway still attached, waits (bounded) until each has told the
    /// logic nodes it is leaving, and flushes. Call before the process exits.
    pub async fn close(&self) {
        let ids: Vec<String> = self.gateways.lock().keys().cloned().collect();
        for id in ids {
            self.detach_gateway(&id);
        }
        let leaving: Vec<_> = std::mem::take(&mut *self.leaving.lock());
        for rx in leaving {
            let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.flush()).await;
    }

    async fn serve_requests(
        client: async_nats::Client,
        subject: String,
        own: String,
        group: String,
        handler: Arc<dyn Handler>,
        limit: Arc<Semaphore>,
        ready: tokio::sync::oneshot::Sender<()>,
    ) {
        let subs = match client.queue_subscribe(subject, group).await {
            Ok(queue) => client.subscribe(own).await.map(|own| (queue, own)),
            Err(e) => Err(e),
        };
        let mut sub = match subs {
            Ok((queue, own)) => futures_util::stream::select(queue, own),
            Err(e) => {
                tracing::error!(error = %e, "cannot subscribe to requests");
                return;
            }
        };
        let _ = ready.send(());
        while let Some(msg) = sub.next().await {
            let Some(reply) = msg.reply else { continue };
            let Ok(permit) = limit.clone().acquire_owned().await else {
                break;
            };
            let (client, handler) = (client.clone(), handler.clone());
            tokio::spawn(async move {
                let resp = match BusRequest::decode(msg.payload) {
                    Ok(req) if crate::deadline_left_ms(&req) == Some(0) => {
                        // Its gateway stopped waiting (this node was paused, or the
                        // request queued too long): it answered UNAVAILABLE, or sent an
                        // idempotent request elsewhere. Applying it now would surprise.
                        metrics::counter!("ferry_bus_stale_requests_total").increment(1);
                        drop(permit);
                        return;
                    }
                    Ok(req) => handler.handle(req).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "undecodable bus request");
                        drop(permit);
                        return;
                    }
                };
                if let Err(e) = client
                    .publish(reply, Bytes::from(resp.encode_to_vec()))
                    .await
                {
                    tracing::debug!(error = %e, "reply not sent");
                }
                drop(permit);
            });
        }
    }

    async fn follow_presence(
        self: Arc<Self>,
        handler: Arc<dyn Handler>,
        ready: tokio::sync::oneshot::Sender<()>,
    ) {
        let client = self.client.clone();
        let mut sub = match client.subscribe(self.subject(&["presence", "*"])).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot subscribe to presence");
                return;
            }
        };
        let mut conn_events = self.events.lock().take();
        let _ = ready.send(());
        // Snapshots of every gateway: this node knows nothing yet.
        self.resync(None).await;
        let mut known: HashMap<String, Known> = HashMap::new();
        let mut sweep = tokio::time::interval(self.cfg.heartbeat);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sweep = Instant::now();
        loop {
            tokio::select! {
                msg = sub.next() => {
                    let Some(msg) = msg else { break };
                    match PresenceMsg::decode(msg.payload) {
                        Ok(p) => self.on_presence(&handler, &mut known, p).await,
                        Err(e) => tracing::warn!(error = %e, "undecodable presence"),
                    }
                }
                _ = sweep.tick() => {
                    let now = Instant::now();
                    if woke_from_pause(last_sweep, now, self.cfg.heartbeat) {
                        // This process was stopped (or starved): it heard nothing, which
                        // says nothing of the gateways. Their heartbeats are on the way;
                        // give every one a fresh expiry period before judging it.
                        tracing::warn!(
                            paused_ms = now.duration_since(last_sweep).as_millis() as u64,
                            gateways = known.len(),
                            "this logic node was paused; keeping every gateway's routes until heard again"
                        );
                        for k in known.values_mut() {
                            k.seen = now;
                        }
                        self.resync(None).await;
                    }
                    last_sweep = now;
                    let dead: Vec<String> = known
                        .iter()
                        .filter(|(_, k)| now.duration_since(k.seen) > self.cfg.gateway_expiry)
                        .map(|(g, _)| g.clone())
                        .collect();
                    for g in dead {
                        tracing::warn!(gateway = %g, "gateway silent; dropping its routes");
                        known.remove(&g);
                        handler.gateway_down(&g).await;
                    }
                }
                ev = recv_event(&mut conn_events) => {
                    if matches!(ev, Some(async_nats::Event::Connected)) {
                        // Whatever was published while we were away is lost: start over.
                        tracing::info!("reconnected to nats; asking gateways for snapshots");
                        self.resync(None).await;
                    }
                    if ev.is_none() {
                        conn_events = None;
                    }
                }
            }
        }
    }

    async fn on_presence(
        &self,
        handler: &Arc<dyn Handler>,
        known: &mut HashMap<String, Known>,
        p: PresenceMsg,
    ) {
        let gw = p.gateway_id;
        if p.leaving {
            tracing::info!(gateway = %gw, "gateway left");
            known.remove(&gw);
            handler.gateway_down(&gw).await;
            return;
        }
        let now = Instant::now();
        let k = known.entry(gw.clone()).or_insert(Known {
            instance: 0,
            next_seq: 0,
            seen: now,
        });
        k.seen = now;
        if k.instance != p.instance {
            if k.instance != 0 {
                tracing::info!(gateway = %gw, "gateway restarted; dropping its old routes");
                handler.gateway_down(&gw).await;
            }
            k.instance = p.instance;
            if !p.snapshot && p.seq != 1 {
                // Joined in the middle of its stream: get the beginning.
                k.next_seq = 0;
                self.resync(Some(&gw)).await;
            } else {
                k.next_seq = p.seq;
            }
        }
        if p.snapshot {
            handler.gateway_down(&gw).await;
        } else if k.next_seq != 0 && p.seq != k.next_seq {
            tracing::warn!(gateway = %gw, expected = k.next_seq, got = p.seq, "presence gap; resyncing");
            k.next_seq = 0;
            self.resync(Some(&gw)).await;
        }
        if p.snapshot || k.next_seq != 0 {
            k.next_seq = p.seq + 1;
        }
        for mut ev in p.events {
            ev.gateway_id.clone_from(&gw);
            handler.link_event(ev).await;
        }
    }

    /// Asks one gateway (or all) for a snapshot of its links.
    async fn resync(&self, gateway: Option<&str>) {
        let subject = match gateway {
            Some(g) => self.subject(&["resync", g]),
            None => self.subject(&["resync"]),
        };
        if let Err(e) = self.client.publish(subject, Bytes::new()).await {
            tracing::debug!(error = %e, "resync request not sent");
        }
    }

    /// The gateway's presence publisher: numbers messages, batches events, answers
    /// snapshot requests from the links it has announced, heartbeats.
    async fn publish_presence(
        client: async_nats::Client,
        subject: String,
        gateway_id: String,
        heartbeat: Duration,
        mut cmds: mpsc::UnboundedReceiver<PresenceCmd>,
    ) {
        let instance = rand::random::<u64>().max(1);
        let mut seq = 0u64;
        // conn id → user id of every link announced online and not yet offline.
        let mut links: HashMap<u64, u64> = HashMap::new();
        let mut beat = tokio::time::interval(heartbeat);
        let mut batch = Vec::new();
        let send = |seq: &mut u64, events: Vec<LinkEvent>, snapshot: bool, leaving: bool| {
            *seq += 1;
            let msg = PresenceMsg {
                gateway_id: gateway_id.clone(),
                instance,
                seq: *seq,
                events,
                snapshot,
                leaving,
            };
            let (client, subject) = (client.clone(), subject.clone());
            async move {
                if let Err(e) = client
                    .publish(subject, Bytes::from(msg.encode_to_vec()))
                    .await
                {
                    tracing::debug!(error = %e, "presence not published");
                }
            }
        };
        loop {
            tokio::select! {
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { break };
                    // Take everything queued: one message for a burst of logins.
                    let mut next = Some(cmd);
                    while let Some(cmd) = next.take() {
                        match cmd {
                            PresenceCmd::Event(mut ev) => {
                                ev.gateway_id.clear();
                                if ev.online {
                                    links.insert(ev.conn_id, ev.user_id);
                                } else {
                                    links.remove(&ev.conn_id);
                                }
                                batch.push(ev);
                                if batch.len() >= EVENTS_PER_MSG {
                                    send(&mut seq, std::mem::take(&mut batch), false, false).await;
                                }
                            }
                            PresenceCmd::Snapshot => {
                                if !batch.is_empty() {
                                    send(&mut seq, std::mem::take(&mut batch), false, false).await;
                                }
                                let all: Vec<LinkEvent> = links
                                    .iter()
                                    .map(|(&conn_id, &user_id)| LinkEvent {
                                        conn_id,
                                        user_id,
                                        online: true,
                                        ..Default::default()
                                    })
                                    .collect();
                                let mut chunks = all.chunks(EVENTS_PER_MSG);
                                let first = chunks.next().map(<[_]>::to_vec).unwrap_or_default();
                                send(&mut seq, first, true, false).await;
                                for c in chunks {
                                    send(&mut seq, c.to_vec(), false, false).await;
                                }
                                tracing::debug!(links = links.len(), "presence snapshot sent");
                            }
                            PresenceCmd::Leave(done) => {
                                if !batch.is_empty() {
                                    send(&mut seq, std::mem::take(&mut batch), false, false).await;
                                }
                                send(&mut seq, Vec::new(), false, true).await;
                                let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
                                let _ = done.send(());
                                return;
                            }
                        }
                        next = cmds.try_recv().ok();
                    }
                    if !batch.is_empty() {
                        send(&mut seq, std::mem::take(&mut batch), false, false).await;
                    }
                }
                _ = beat.tick() => {
                    send(&mut seq, Vec::new(), false, false).await;
                }
            }
        }
    }
}

/// What a logic node knows of one gateway.
struct Known {
    instance: u64,
    /// The presence seq expected next; 0 while waiting for a snapshot.
    next_seq: u64,
    seen: Instant,
}

/// Now, in unix milliseconds.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether the gap between two sweeps (each `period` apart) shows this process was
/// paused: a second or more late.
fn woke_from_pause(last: Instant, now: Instant, period: Duration) -> bool {
    now.saturating_duration_since(last) > period + Duration::from_secs(1)
}

async fn recv_event(
    rx: &mut Option<mpsc::UnboundedReceiver<async_nats::Event>>,
) -> Option<async_nats::Event> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Drop for NatsBus {
    fn drop(&mut self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        if let Some(t) = self.alive.lock().take() {
            t.abort();
        }
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn request(&self, req: BusRequest) -> Result<BusResponse, BusError> {
        let idempotent = ferry_proto::cmd::idempotent(req.cmd as u8);
        // The user's node; before login, the connection's.
        let key = if req.user_id != 0 {
            req.user_id
        } else {
            crate::nodes::score(req.conn_id, req.gateway_id.len() as u64)
        };
        let mut req = req;
        req.deadline_ms = unix_ms() + self.cfg.request_timeout.as_millis() as u64;
        let payload = Bytes::from(req.encode_to_vec());
        let deadline = Instant::now() + self.cfg.request_timeout;
        let ranked = self
            .nodes
            .lock()
            .ranked(key, Instant::now(), self.cfg.alive_expiry);
        let mut last = BusError::NoLogic;
        for attempt in 0..TRIES {
            let node = ranked.get(attempt).copied();
            let subject = match node {
                Some(n) => self.subject(&["req", &format!("{n:016x}")]),
                None => self.subject(&["req"]),
            };
            match self
                .try_request(subject, payload.clone(), node, deadline)
                .await
            {
                Ok(resp) => return Ok(resp),
                // Nobody took it (the node's subscription is gone): safe to send again.
                Err(BusError::NoLogic) if node.is_some() => {
                    if let Some(n) = node {
                        self.nodes.lock().suspect(n);
                    }
                    last = BusError::NoLogic;
                }
                Err(BusError::Timeout) if idempotent && node.is_some() => {
                    metrics::counter!("ferry_bus_retries_total").increment(1);
                    last = BusError::Timeout;
                }
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        Err(last)
    }

    async fn link_event(&self, ev: LinkEvent) -> Result<(), BusError> {
        let side = self
            .gateways
            .lock()
            .get(&ev.gateway_id)
            .map(|s| s.presence.clone())
            .ok_or_else(|| BusError::NoGateway(ev.gateway_id.clone()))?;
        side.send(PresenceCmd::Event(ev))
            .map_err(|_| BusError::Transport("presence publisher stopped".into()))
    }

    async fn push(&self, gateway_id: &str, push: Push) -> Result<(), BusError> {
        self.client
            .publish(
                self.subject(&["push", gateway_id]),
                Bytes::from(push.encode_to_vec()),
            )
            .await
            .map_err(transport)
    }

    fn serve_logic(&self, handler: Arc<dyn Handler>) {
        let ready = self.pending();
        let limit = Arc::new(Semaphore::new(self.cfg.max_inflight));
        self.spawn(Self::serve_requests(
            self.client.clone(),
            self.subject(&["req"]),
            self.subject(&["req", &format!("{:016x}", self.instance)]),
            self.subject(&["logic"]),
            handler.clone(),
            limit.clone(),
            ready,
        ));
        *self.alive.lock() = Some(tokio::spawn(Self::beat_alive(
            self.client.clone(),
            self.subject(&["alive"]),
            self.instance,
            handler.clone(),
            limit,
        )));
        // The presence follower needs `Arc<Self>`; the trait gives `&self`, so it runs
        // on a second bus handle sharing the same connection.
        let ready = self.pending();
        let me = Arc::new(NatsBus {
            client: self.client.clone(),
            cfg: self.cfg.clone(),
            gateways: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            events: Mutex::new(self.events.lock().take()),
            pending: Mutex::new(Vec::new()),
            leaving: Mutex::new(Vec::new()),
            nodes: self.nodes.clone(),
            instance: self.instance,
            alive: Mutex::new(None),
        });
        self.spawn(me.follow_presence(handler, ready));
    }

    fn attach_gateway(&self, gateway_id: &str, sink: Arc<dyn PushSink>) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.spawn(Self::publish_presence(
            self.client.clone(),
            self.subject(&["presence", gateway_id]),
            gateway_id.to_owned(),
            self.cfg.heartbeat,
            rx,
        ));
        // Pushes.
        let ready = self.pending();
        let client = self.client.clone();
        let subject = self.subject(&["push", gateway_id]);
        self.spawn(async move {
            let mut sub = match client.subscribe(subject).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot subscribe to pushes");
                    return;
                }
            };
            let _ = ready.send(());
            while let Some(msg) = sub.next().await {
                match Push::decode(msg.payload) {
                    Ok(p) => sink.push(p),
                    Err(e) => tracing::warn!(error = %e, "undecodable push"),
                }
            }
        });
        // Snapshot requests: to everyone, and to this gateway.
        for subject in [
            self.subject(&["resync"]),
            self.subject(&["resync", gateway_id]),
        ] {
            let ready = self.pending();
            let client = self.client.clone();
            let tx = tx.clone();
            self.spawn(async move {
                let mut sub = match client.subscribe(subject).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot subscribe to resync");
                        return;
                    }
                };
                let _ = ready.send(());
                while sub.next().await.is_some() {
                    if tx.send(PresenceCmd::Snapshot).is_err() {
                        break;
                    }
                }
            });
        }
        self.gateways
            .lock()
            .insert(gateway_id.to_owned(), GatewaySide { presence: tx });
    }

    fn detach_gateway(&self, gateway_id: &str) {
        let side = self.gateways.lock().remove(gateway_id);
        if let Some(side) = side {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if side.presence.send(PresenceCmd::Leave(tx)).is_ok() {
                self.leaving.lock().push(rx);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_is_a_sweep_a_second_or_more_late() {
        let t = Instant::now();
        let period = Duration::from_secs(2);
        assert!(!woke_from_pause(t, t + period, period));
        assert!(!woke_from_pause(
            t,
            t + period + Duration::from_millis(900),
            period
        ));
        assert!(woke_from_pause(t, t + Duration::from_secs(20), period));
    }
}
