//! Smart connection: which endpoint to try, in what order, and how often to heartbeat.
//!
//! - [`Endpoint`]: an `IP:PORT` and how the long link is carried there (TCP, or HTTP
//!   long-poll).
//! - [`Bans`]: endpoints that keep failing are left out for a growing while (mars:
//!   3 failures → 6 min, +6 min per further failure, at most 30 min).
//! - `race`: connect attempts started in order, staggered (mars: 2.5 s apart, at most
//!   3 at once, each 10 s at most); a failed attempt starts the next one at once; the
//!   first success wins and the others are dropped (their sockets closed).
//! - [`HeartbeatState`]: the smart heartbeat of one network (mars: start at 3.5 min,
//!   +60 s after 5 answered heartbeats, back 80 s after 2 lost ones, at most 10 min).
//!
//! Every constant is in [`SmartConfig`], so tests can scale time down.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How the long link is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// Frames over a TCP connection.
    Tcp,
    /// The same frames over HTTP long-poll (`/v1/lp/...`).
    Http,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Http => "http",
        }
    }

    /// The transport of a protobuf `Transport` value.
    pub fn from_i32(t: i32) -> Option<Transport> {
        Self::from_proto(t)
    }

    pub(crate) fn from_proto(t: i32) -> Option<Transport> {
        match ferry_proto::v1::Transport::try_from(t) {
            Ok(ferry_proto::v1::Transport::Tcp) => Some(Transport::Tcp),
            Ok(ferry_proto::v1::Transport::Http) => Some(Transport::Http),
            _ => None,
        }
    }

    pub(crate) fn to_proto(self) -> ferry_proto::v1::Transport {
        match self {
            Transport::Tcp => ferry_proto::v1::Transport::Tcp,
            Transport::Http => ferry_proto::v1::Transport::Http,
        }
    }
}

/// A place to connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub transport: Transport,
}

impl Endpoint {
    pub fn new(addr: SocketAddr, transport: Transport) -> Self {
        Endpoint { addr, transport }
    }
}

impl fmt::Display for Endpoint {
    /// `tcp://IP:PORT` or `http://IP:PORT`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.transport.name(), self.addr)
    }
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (t, addr) = s
            .split_once("://")
            .ok_or_else(|| format!("{s:?}: expected tcp://IP:PORT or http://IP:PORT"))?;
        let transport = match t {
            "tcp" => Transport::Tcp,
            "http" => Transport::Http,
            _ => return Err(format!("{s:?}: unknown transport {t:?}")),
        };
        let addr = addr
            .parse()
            .map_err(|_| format!("{s:?}: not an IP literal and port"))?;
        Ok(Endpoint { addr, transport })
    }
}

/// The smart-connection settings. The defaults are mars's.
#[derive(Debug, Clone)]
pub struct SmartConfig {
    /// A new connect attempt starts this long after the previous one (or at once when
    /// the previous one failed).
    pub race_stagger: Duration,
    /// Attempts in flight at once.
    pub race_parallel: usize,
    /// One attempt (connect and LOGIN answer) gets at most this long.
    pub attempt_timeout: Duration,
    /// Failures in a row after which an endpoint is banned…
    pub ban_after: u32,
    /// …for this long, plus `ban_step` per further failure, at most `ban_max`.
    pub ban_first: Duration,
    pub ban_step: Duration,
    pub ban_max: Duration,
    /// Fall back to the long link over HTTP long-poll when no TCP endpoint works.
    pub long_poll: bool,
    /// Where a TCP link worked on this network less than this long ago, a round of
    /// failed TCP attempts is the server's trouble (a restart, an overload), not a
    /// network that blocks TCP: reconnect over TCP with back-off instead of falling
    /// back to long-poll, until TCP has failed this long.
    pub long_poll_after: Duration,
    /// On long-poll, try TCP again this often; move back as soon as it works.
    pub tcp_retry: Duration,
    /// Send connect reports once the link has been idle this long.
    pub report_idle: Duration,
    /// The heartbeat interval stretches up to this (and never past what the server's
    /// idle timeout allows).
    pub heartbeat_max: Duration,
    /// After `heartbeat_successes` answered heartbeats the interval grows by this.
    pub heartbeat_step: Duration,
    pub heartbeat_successes: u32,
    /// After `heartbeat_failures` lost heartbeats the interval shrinks by this, and does
    /// not grow again on this network.
    pub heartbeat_back: Duration,
    pub heartbeat_failures: u32,
    /// A link that answers nothing this long after the client sent something (a
    /// heartbeat, a request) is dead.
    pub answer_timeout: Duration,
}

impl Default for SmartConfig {
    fn default() -> Self {
        SmartConfig {
            race_stagger: Duration::from_millis(2_500),
            race_parallel: 3,
            attempt_timeout: Duration::from_secs(10),
            ban_after: 3,
            ban_first: Duration::from_secs(6 * 60),
            ban_step: Duration::from_secs(6 * 60),
            ban_max: Duration::from_secs(30 * 60),
            long_poll: true,
            long_poll_after: Duration::from_secs(10),
            tcp_retry: Duration::from_secs(2 * 60),
            report_idle: Duration::from_secs(30),
            heartbeat_max: Duration::from_secs(10 * 60),
            heartbeat_step: Duration::from_secs(60),
            heartbeat_successes: 5,
            heartbeat_back: Duration::from_secs(80),
            heartbeat_failures: 2,
            answer_timeout: Duration::from_secs(10),
        }
    }
}

/// Failing endpoints and when they may be tried again.
#[derive(Debug, Default)]
pub struct Bans {
    map: HashMap<Endpoint, (u32, Option<Instant>)>,
}

impl Bans {
    /// Counts a failure; returns how long the endpoint is now banned for, if it is.
    pub fn failed(&mut self, ep: Endpoint, now: Instant, cfg: &SmartConfig) -> Option<Duration> {
        let e = self.map.entry(ep).or_insert((0, None));
        e.0 = e.0.saturating_add(1);
        if e.0 < cfg.ban_after.max(1) {
            return None;
        }
        let extra = e.0 - cfg.ban_after.max(1);
        let ban = (cfg.ban_first + cfg.ban_step.saturating_mul(extra)).min(cfg.ban_max);
        e.1 = Some(now + ban);
        Some(ban)
    }

    /// A success forgets the endpoint's failures.
    pub fn succeeded(&mut self, ep: Endpoint) {
        self.map.remove(&ep);
    }

    pub fn banned(&self, ep: &Endpoint, now: Instant) -> bool {
        self.map
            .get(ep)
            .and_then(|e| e.1)
            .is_some_and(|until| now < until)
    }

    /// A new network: old failures say nothing about it.
    pub fn clear(&mut self) {
        self.map.clear();
    }
}

/// The smart heartbeat of one network, kept in the device state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatState {
    /// The current interval.
    pub interval_ms: u64,
    /// Answered heartbeats at this interval since it last changed.
    pub successes: u32,
    /// Lost heartbeats at this interval since it last changed.
    pub failures: u32,
    /// Settled: no more probing for longer intervals on this network.
    pub stable: bool,
    /// An interval known to lose the link on this network (0: none).
    pub ceiling_ms: u64,
}

impl HeartbeatState {
    /// A network never seen: start at the safe interval.
    pub fn new(min: Duration) -> Self {
        HeartbeatState {
            interval_ms: min.as_millis() as u64,
            successes: 0,
            failures: 0,
            stable: false,
            ceiling_ms: 0,
        }
    }

    /// The interval to use, within `[min, limit]`.
    pub fn interval(&self, min: Duration, limit: Duration) -> Duration {
        Duration::from_millis(self.interval_ms).clamp(min, limit.max(min))
    }

    /// A heartbeat sent after `interval` of silence was answered. True when the
    /// interval changed.
    pub fn success(&mut self, cfg: &SmartConfig, min: Duration, limit: Duration) -> bool {
        self.failures = 0;
        if self.stable {
            return false;
        }
        self.successes += 1;
        if self.successes < cfg.heartbeat_successes.max(1) {
            return false;
        }
        self.successes = 0;
        let current = self.interval(min, limit);
        let next = current + cfg.heartbeat_step;
        let limit = limit.max(min);
        if self.ceiling_ms > 0 && next.as_millis() as u64 >= self.ceiling_ms {
            // Known to fail there: stay.
            self.stable = true;
            return false;
        }
        if next >= limit {
            self.stable = true;
            let changed = current != limit;
            self.interval_ms = limit.as_millis() as u64;
            return changed;
        }
        self.interval_ms = next.as_millis() as u64;
        true
    }

    /// A heartbeat went unanswered (the link died while it waited). True when the
    /// interval changed.
    pub fn failure(&mut self, cfg: &SmartConfig, min: Duration, limit: Duration) -> bool {
        self.successes = 0;
        self.failures += 1;
        if self.failures < cfg.heartbeat_failures.max(1) {
            return false;
        }
        self.failures = 0;
        let current = self.interval(min, limit);
        self.ceiling_ms = current.as_millis() as u64;
        self.stable = true;
        let back = current.saturating_sub(cfg.heartbeat_back).max(min);
        self.interval_ms = back.as_millis() as u64;
        back != current
    }
}

/// How a race ended.
pub(crate) struct RaceOutcome<T, E> {
    /// The first success: the candidate's index, the value and how long it took.
    pub winner: Option<(usize, T, Duration)>,
    /// Attempts that failed (index, error, time to failure). Attempts cut short by the
    /// winner are not in it.
    pub failures: Vec<(usize, E, Duration)>,
}

/// What a failed attempt says about the race.
pub(crate) trait RaceError {
    /// A timeout error, for attempts that ran out of time.
    fn timed_out() -> Self;
    /// True when racing on is pointless (credentials refused): the race stops.
    fn stops_race(&self) -> bool;
}

/// Runs `attempt(i)` for candidates `0..n` in order: each starts `stagger` after the
/// previous one or as soon as one fails, at most `parallel` at once, each cut off after
/// `timeout`. Returns at the first success (dropping the others), at an error that
/// stops the race, or when every attempt has failed.
pub(crate) async fn race<T, E, F, Fut>(
    n: usize,
    stagger: Duration,
    parallel: usize,
    timeout: Duration,
    mut attempt: F,
) -> RaceOutcome<T, E>
where
    T: Send + 'static,
    E: RaceError + Send + 'static,
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    let mut set: JoinSet<(usize, Result<T, E>, Duration)> = JoinSet::new();
    let mut failures = Vec::new();
    let mut next = 0;
    let mut next_at = Instant::now();
    loop {
        let now = Instant::now();
        if next < n && set.len() < parallel.max(1) && (now >= next_at || set.is_empty()) {
            let fut = attempt(next);
            let i = next;
            set.spawn(async move {
                let started = Instant::now();
                let r = match tokio::time::timeout(timeout, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(E::timed_out()),
                };
                (i, r, started.elapsed())
            });
            next += 1;
            next_at = now + stagger;
            continue;
        }
        if set.is_empty() {
            return RaceOutcome {
                winner: None,
                failures,
            };
        }
        let wait_for_next = next < n && set.len() < parallel.max(1);
        tokio::select! {
            done = set.join_next() => match done {
                Some(Ok((i, Ok(v), took))) => {
                    // The other attempts are cut short: a LOGIN one of them sent may
                    // still reach a server (`connect::LoginInFlight` notes it).
                    set.abort_all();
                    return RaceOutcome { winner: Some((i, v, took)), failures };
                }
                Some(Ok((i, Err(e), took))) => {
                    let stop = e.stops_race();
                    failures.push((i, e, took));
                    if stop {
                        set.abort_all();
                        return RaceOutcome { winner: None, failures };
                    }
                    // A failure frees its place at once.
                    next_at = Instant::now();
                }
                Some(Err(_)) | None => {}
            },
            _ = tokio::time::sleep_until(next_at), if wait_for_next => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum E {
        Timeout,
        Refused,
        Stop,
    }

    impl RaceError for E {
        fn timed_out() -> Self {
            E::Timeout
        }
        fn stops_race(&self) -> bool {
            *self == E::Stop
        }
    }

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(SocketAddr::from(([127, 0, 0, 1], port)), Transport::Tcp)
    }

    #[test]
    fn endpoints_print_and_parse() {
        let e = Endpoint::new("10.0.0.1:443".parse().unwrap(), Transport::Http);
        assert_eq!(e.to_string(), "http://10.0.0.1:443");
        assert_eq!("http://10.0.0.1:443".parse::<Endpoint>().unwrap(), e);
        let v6: Endpoint = "tcp://[::1]:80".parse().unwrap();
        assert_eq!(v6.addr.port(), 80);
        for bad in [
            "10.0.0.1:443",
            "udp://1.2.3.4:5",
            "tcp://example.com:80",
            "",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ban_schedule() {
        let cfg = SmartConfig::default();
        let mut bans = Bans::default();
        let e = ep(1);
        let t0 = Instant::now();
        assert_eq!(bans.failed(e, t0, &cfg), None);
        assert_eq!(bans.failed(e, t0, &cfg), None);
        assert!(!bans.banned(&e, t0));
        // The third failure bans for 6 minutes.
        assert_eq!(bans.failed(e, t0, &cfg), Some(Duration::from_secs(360)));
        assert!(bans.banned(&e, t0));
        tokio::time::advance(Duration::from_secs(359)).await;
        assert!(bans.banned(&e, Instant::now()));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!bans.banned(&e, Instant::now()), "the ban ends");
        // Each further failure adds 6 minutes, up to 30.
        let mins: Vec<u64> = (0..6)
            .map(|_| bans.failed(e, Instant::now(), &cfg).unwrap().as_secs() / 60)
            .collect();
        assert_eq!(mins, [12, 18, 24, 30, 30, 30]);
        // A success forgets it all; other endpoints were never affected.
        assert!(!bans.banned(&ep(2), Instant::now()));
        bans.succeeded(e);
        assert!(!bans.banned(&e, Instant::now()));
        assert_eq!(bans.failed(e, Instant::now(), &cfg), None);
        bans.failed(e, Instant::now(), &cfg);
        bans.failed(e, Instant::now(), &cfg);
        assert!(bans.banned(&e, Instant::now()));
        bans.clear();
        assert!(!bans.banned(&e, Instant::now()));
    }

    #[test]
    fn heartbeat_probes_up_and_settles_below_a_failing_interval() {
        let cfg = SmartConfig::default();
        let (min, max) = (Duration::from_secs(210), cfg.heartbeat_max);
        let mut hb = HeartbeatState::new(min);
        let secs = |hb: &HeartbeatState| hb.interval(min, max).as_secs();
        assert_eq!(secs(&hb), 210);
        // Four successes change nothing; the fifth adds a minute.
        for _ in 0..4 {
            assert!(!hb.success(&cfg, min, max));
        }
        assert!(hb.success(&cfg, min, max));
        assert_eq!(secs(&hb), 270);
        // A NAT that drops flows idle for more than 5 minutes: 330 s fails.
        for _ in 0..5 {
            hb.success(&cfg, min, max);
        }
        assert_eq!(secs(&hb), 330);
        assert!(!hb.failure(&cfg, min, max), "one loss is not enough");
        assert_eq!(secs(&hb), 330);
        assert!(hb.failure(&cfg, min, max));
        assert_eq!(secs(&hb), 250, "back 80 s");
        assert!(hb.stable);
        // Settled: successes do not probe the failing interval again.
        for _ in 0..20 {
            assert!(!hb.success(&cfg, min, max));
        }
        assert_eq!(secs(&hb), 250);
        // Worse conditions later still push it down, never below the minimum.
        for _ in 0..10 {
            hb.failure(&cfg, min, max);
        }
        assert_eq!(secs(&hb), 210);
    }

    #[test]
    fn heartbeat_stops_at_the_maximum_and_the_server_limit() {
        let cfg = SmartConfig::default();
        let min = Duration::from_secs(210);
        let mut hb = HeartbeatState::new(min);
        for _ in 0..100 {
            hb.success(&cfg, min, cfg.heartbeat_max);
        }
        assert_eq!(
            hb.interval(min, cfg.heartbeat_max),
            Duration::from_secs(600)
        );
        assert!(hb.stable);
        // A server that drops links idle for 5 minutes caps it, whatever was learnt.
        let server_cap = Duration::from_secs(240);
        assert_eq!(hb.interval(min, server_cap), server_cap);
    }

    #[tokio::test(start_paused = true)]
    async fn race_staggers_and_the_first_success_wins() {
        // Candidate 0 hangs, 1 is refused after 100 ms, 2 answers after 4 s, 3 after 1 s.
        let started = Instant::now();
        let starts = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let s2 = starts.clone();
        let out = race(
            4,
            Duration::from_millis(2_500),
            3,
            Duration::from_secs(10),
            move |i| {
                s2.lock().push((i, started.elapsed().as_millis() as u64));
                async move {
                    match i {
                        0 => std::future::pending().await,
                        1 => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            Err(E::Refused)
                        }
                        2 => {
                            tokio::time::sleep(Duration::from_secs(4)).await;
                            Ok(2)
                        }
                        _ => {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            Ok(3)
                        }
                    }
                }
            },
        )
        .await;
        let (i, v, _) = out.winner.unwrap();
        assert_eq!((i, v), (3, 3));
        // 0 at once, 1 after the stagger, 2 as soon as 1 failed, 3 a stagger after 2.
        assert_eq!(*starts.lock(), [(0, 0), (1, 2_500), (2, 2_600), (3, 5_100)]);
        assert_eq!(out.failures.len(), 1);
        assert_eq!(out.failures[0].1, E::Refused);
        assert_eq!(started.elapsed(), Duration::from_millis(6_100));
    }

    #[tokio::test(start_paused = true)]
    async fn race_times_out_every_attempt_and_stops_on_refused_credentials() {
        let out: RaceOutcome<(), E> = race(
            5,
            Duration::from_millis(2_500),
            3,
            Duration::from_secs(10),
            |_| std::future::pending(),
        )
        .await;
        assert!(out.winner.is_none());
        assert_eq!(out.failures.len(), 5);
        assert!(out.failures.iter().all(|f| f.1 == E::Timeout));
        let out: RaceOutcome<(), E> = race(
            5,
            Duration::from_secs(1),
            3,
            Duration::from_secs(10),
            |i| async move {
                if i == 0 {
                    Err(E::Stop)
                } else {
                    std::future::pending().await
                }
            },
        )
        .await;
        assert_eq!(out.failures.len(), 1);
        assert!(out.winner.is_none());
    }
}
