//! Overload control: priority admission by request class, after WeChat's DAGOR.
//!
//! Logic admits at most `max_in_flight` requests at once. Each class may fill only its
//! share of that: new sessions (LOGIN, auth, register) half, short-link state requests
//! 80 %, and connected users' real-time requests (send, sync, recall, read, typing on a
//! logged-in link) all of it. So as load rises, new logins are shed first, then state
//! requests, and the users already connected keep being served. A real-time request that
//! finds no slot waits (a bounded number of waiters, for at most `queue_ms`); the others
//! are refused at once with `UNAVAILABLE` and a retry-after. Nothing queues without
//! bound, so overload costs neither memory nor the latency of what is admitted.
//!
//! Counting slots is not enough where the work waits on something the count does not
//! see (CPU taken by handshakes, a database pool): a thousand logins in flight may each
//! take seconds. So logic also watches how long its requests take, after CoDel: when
//! even the quickest request finished in a 100 ms window took longer than
//! `standing_delay_ms`, the delay is standing (a queue that does not drain, not a
//! burst), and new sessions are shed until a window's quickest is under it again.
//! Not at once: a new session that meets a standing delay first waits, its connection
//! open, up to `new_session_wait_ms` for it to end, and is let in one per request
//! that finishes once it has. Shed, a reconnecting device would come back on a new
//! connection — a TCP connect, a handshake and a LOGIN more on both sides, on a node
//! that is short of exactly that — and in a reconnect storm most of the work went into
//! such refusals. A new session that finds its share of slots taken waits for one the
//! same way. Only those that wait longer, or find `new_session_share` of
//! `max_in_flight` already waiting, are shed — and none waits past its gateway's bus
//! deadline less the time its LOGIN needs: answered after its gateway stopped waiting,
//! a LOGIN would only be thrown away (see `Logic::handle`).
//!
//! A shed new session is told to come back after twice the last window's quickest
//! request — about the time the standing queue takes to drain — between
//! `new_session_retry_min_ms` and `retry_after_ms`. The short overload of a reconnect
//! storm (a few hundred milliseconds at a time) then sends its clients back within a
//! fraction of a second, where a fixed second kept them (and, through the gateway's pause
//! of new handshakes, everyone behind them) away longer than the queue lasted; a queue
//! that stays long pushes them back the full `retry_after_ms`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use ferry_bus::BusRequest;
use ferry_proto::cmd;
use tokio::sync::Notify;

/// `[logic.admission]`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Requests logic works on at once (0: no limit).
    pub max_in_flight: usize,
    /// Share of `max_in_flight` new sessions may use.
    pub new_session_share: f64,
    /// Share of `max_in_flight` short-link state requests may use.
    pub state_share: f64,
    /// How long a connected user's real-time request may wait for a slot.
    pub queue_ms: u64,
    /// What a shed client is told to wait before it retries (for a new session: at
    /// most this).
    pub retry_after_ms: u32,
    /// The least a shed new session is told to wait: it is told twice the last 100 ms
    /// window's quickest request, within this and `retry_after_ms`.
    pub new_session_retry_min_ms: u32,
    /// New sessions are shed while the quickest request of each 100 ms window takes
    /// longer than this (0: off).
    pub standing_delay_ms: u64,
    /// How long a new session that meets a standing delay, or finds its share of
    /// slots taken, may wait for its turn before it is shed (0: shed at once). Never
    /// past its gateway's bus deadline less a second for the LOGIN itself.
    pub new_session_wait_ms: u64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            max_in_flight: 2048,
            new_session_share: 0.5,
            state_share: 0.8,
            queue_ms: 500,
            retry_after_ms: 1000,
            new_session_retry_min_ms: 250,
            standing_delay_ms: 50,
            new_session_wait_ms: 2_000,
        }
    }
}

/// Request classes, most important first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A logged-in link's send, sync, recall, read or typing.
    Realtime = 0,
    /// Everything else from a known session (friends, moments, media, short-link sync).
    State = 1,
    /// Creating a session: LOGIN, auth, register, refresh, password change.
    NewSession = 2,
}

impl Class {
    pub fn of(req: &BusRequest) -> Class {
        let c = u8::try_from(req.cmd).unwrap_or(0);
        match c {
            cmd::LOGIN | cmd::AUTH | cmd::REGISTER | cmd::AUTH_REFRESH | cmd::PASSWORD_CHANGE => {
                Class::NewSession
            }
            cmd::SEND | cmd::SYNC | cmd::GROUP_SYNC | cmd::RECALL | cmd::READ | cmd::TYPING
                if req.user_id != 0 =>
            {
                Class::Realtime
            }
            _ => Class::State,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Class::Realtime => "realtime",
            Class::State => "state",
            Class::NewSession => "new_session",
        }
    }
}

/// How often the standing delay is judged: the window of CoDel's minimum.
const WINDOW_US: u64 = 100_000;
/// Below this many requests in flight there is no queue to speak of: one slow request
/// (a large upload chunk, a search) does not make a quiet server shed.
const QUEUE_FLOOR: usize = 16;

/// What a new session's wait for its turn leaves of its sender's deadline: time for the
/// LOGIN itself, so that it is answered before its gateway stops waiting.
const ANSWER_MARGIN: Duration = Duration::from_millis(1_000);

/// The admission controller.
pub struct Admission {
    cfg: AdmissionConfig,
    in_flight: AtomicUsize,
    waiting: AtomicUsize,
    freed: Notify,
    /// New sessions waiting for their turn (a standing delay to end, or a slot).
    waiting_new: AtomicUsize,
    /// One waiting new session's turn to look again: given as each request finishes.
    turn: Notify,
    /// Requests shed, per class.
    pub shed: [AtomicU64; 3],
    /// New sessions that waited for their turn (let in or shed after).
    waited_new: AtomicU64,
    /// `shed[NewSession]` and `waited_new` when the current standing delay began: the
    /// log line at its end says how many it cost.
    shed_at_start: AtomicU64,
    waited_at_start: AtomicU64,
    /// Time zero of the microsecond clocks below.
    epoch: std::time::Instant,
    /// When the current window began.
    window_start_us: AtomicU64,
    /// The quickest request finished in the current window (`u64::MAX`: none yet).
    window_min_us: AtomicU64,
    /// How long the last whole window's quickest request took (µs; 0: none finished).
    /// Longer than `standing_delay_ms`: the delay is standing.
    last_quickest_us: AtomicU64,
}

/// A slot; dropping it frees the slot for the next request.
pub struct Permit<'a> {
    adm: Option<&'a Admission>,
    /// When its request asked for the slot (`Admission::epoch` µs).
    asked_us: u64,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(a) = self.adm {
            a.in_flight.fetch_sub(1, Ordering::AcqRel);
            a.freed.notify_one();
            a.finished(self.asked_us);
            // Only while someone waits: a waiter also looks again every window.
            if a.waiting_new.load(Ordering::Relaxed) > 0 {
                a.turn.notify_one();
            }
        }
    }
}

impl Admission {
    pub fn new(cfg: AdmissionConfig) -> Self {
        Admission {
            cfg,
            in_flight: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
            waiting_new: AtomicUsize::new(0),
            turn: Notify::new(),
            shed: Default::default(),
            waited_new: AtomicU64::new(0),
            shed_at_start: AtomicU64::new(0),
            waited_at_start: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
            window_start_us: AtomicU64::new(0),
            window_min_us: AtomicU64::new(u64::MAX),
            last_quickest_us: AtomicU64::new(0),
        }
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// A request that asked for its slot at `asked_us` is done: keeps the window's
    /// minimum, and judges the window once it is over.
    fn finished(&self, asked_us: u64) {
        let now = self.now_us();
        self.window_min_us
            .fetch_min(now.saturating_sub(asked_us), Ordering::AcqRel);
        let start = self.window_start_us.load(Ordering::Acquire);
        if now.saturating_sub(start) < WINDOW_US
            || self
                .window_start_us
                .compare_exchange(start, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        let min = self.window_min_us.swap(u64::MAX, Ordering::AcqRel);
        let quickest = if min == u64::MAX { 0 } else { min };
        let was = self.last_quickest_us.swap(quickest, Ordering::AcqRel);
        let standing = self.standing(quickest);
        if standing != self.standing(was) {
            let shed = self.shed[Class::NewSession as usize].load(Ordering::Relaxed);
            let waited = self.waited_new.load(Ordering::Relaxed);
            let shed_before = self.shed_at_start.swap(shed, Ordering::Relaxed);
            let waited_before = self.waited_at_start.swap(waited, Ordering::Relaxed);
            if standing {
                tracing::info!(
                    quickest_ms = min / 1000,
                    in_flight = self.in_flight(),
                    "admission: standing delay begins; new sessions wait, then are shed"
                );
            } else {
                tracing::info!(
                    quickest_ms = quickest / 1000,
                    in_flight = self.in_flight(),
                    new_sessions_waited = waited.saturating_sub(waited_before),
                    new_sessions_shed = shed.saturating_sub(shed_before),
                    "admission: standing delay is over"
                );
            }
        }
    }

    /// What a shed new session is told to wait (ms): twice the last window's quickest
    /// request, within `new_session_retry_min_ms` and `retry_after_ms`.
    pub fn new_session_retry_ms(&self) -> u32 {
        let max = self.cfg.retry_after_ms;
        let min = self.cfg.new_session_retry_min_ms.min(max);
        let twice = self
            .last_quickest_us
            .load(Ordering::Relaxed)
            .saturating_mul(2)
            / 1000;
        u32::try_from(twice).unwrap_or(u32::MAX).clamp(min, max)
    }

    /// Whether a window whose quickest request took `quickest_us` (0: none finished)
    /// had a standing delay.
    fn standing(&self, quickest_us: u64) -> bool {
        self.cfg.standing_delay_ms > 0
            && quickest_us > self.cfg.standing_delay_ms.saturating_mul(1000)
    }

    /// Whether new sessions are shed for a standing delay now.
    pub fn delay_standing(&self) -> bool {
        self.standing(self.last_quickest_us.load(Ordering::Acquire))
            && self.in_flight() >= QUEUE_FLOOR
    }

    /// Counts a shed request of `class`; returns the retry-after (ms) it is told.
    fn shed(&self, class: Class) -> u32 {
        self.shed[class as usize].fetch_add(1, Ordering::Relaxed);
        metrics::counter!("ferry_shed_total", "class" => class.name()).increment(1);
        match class {
            Class::NewSession => self.new_session_retry_ms(),
            _ => self.cfg.retry_after_ms,
        }
    }

    fn limit(&self, class: Class) -> usize {
        let max = self.cfg.max_in_flight;
        let share = match class {
            Class::Realtime => 1.0,
            Class::State => self.cfg.state_share,
            Class::NewSession => self.cfg.new_session_share,
        };
        ((max as f64 * share.clamp(0.0, 1.0)).floor() as usize).max(1)
    }

    fn try_take(&self, limit: usize) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// A slot for a request of `class`, or the retry-after (ms) it is shed with.
    /// `until`: when whoever sent the request stops waiting for its answer (its
    /// gateway's bus deadline); a new session waits for its turn no later than
    /// [`ANSWER_MARGIN`] before it.
    pub async fn admit(
        &self,
        class: Class,
        until: Option<tokio::time::Instant>,
    ) -> Result<Permit<'_>, u32> {
        if self.cfg.max_in_flight == 0 {
            return Ok(Permit {
                adm: None,
                asked_us: 0,
            });
        }
        let limit = self.limit(class);
        // One budget for both of a new session's waits.
        let wait_until = match class {
            Class::NewSession => self.wait_until(until),
            _ => None,
        };
        if class == Class::NewSession
            && self.delay_standing()
            && !self
                .waited_for_turn(wait_until, || !self.delay_standing())
                .await
        {
            metrics::counter!("ferry_shed_standing_delay_total").increment(1);
            return Err(self.shed(class));
        }
        // Timed from here: a new session's wait for a standing delay to end is not
        // logic's queue, and counted would keep the delay standing on its own.
        let asked_us = self.now_us();
        if self.try_take(limit) {
            return Ok(Permit {
                adm: Some(self),
                asked_us,
            });
        }
        if class == Class::NewSession {
            // Its share is full: it waits for a slot as for a standing delay (a slot
            // frees as each request finishes), timed from when it got one.
            if self
                .waited_for_turn(wait_until, || {
                    !self.delay_standing() && self.try_take(limit)
                })
                .await
            {
                return Ok(Permit {
                    adm: Some(self),
                    asked_us: self.now_us(),
                });
            }
            return Err(self.shed(class));
        }
        if class == Class::Realtime
            && self.waiting.fetch_add(1, Ordering::AcqRel) < self.cfg.max_in_flight
        {
            let deadline = tokio::time::Instant::now() + Duration::from_millis(self.cfg.queue_ms);
            let got = loop {
                let notified = self.freed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.try_take(limit) {
                    break true;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    break self.try_take(limit);
                }
            };
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            if got {
                return Ok(Permit {
                    adm: Some(self),
                    asked_us,
                });
            }
        } else if class == Class::Realtime {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
        Err(self.shed(class))
    }

    /// Until when a new session arriving now may wait for its turn: `new_session_wait_ms`,
    /// and [`ANSWER_MARGIN`] before `until` (None: no waiting).
    fn wait_until(&self, until: Option<tokio::time::Instant>) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        let mut end = now + Duration::from_millis(self.cfg.new_session_wait_ms);
        if let Some(u) = until {
            end = end.min(u.checked_sub(ANSWER_MARGIN).unwrap_or(now));
        }
        (end > now).then_some(end)
    }

    /// A new session's wait for its turn, until `ready` holds (it may take the slot it
    /// finds): true when it did by `until`, false when the wait ran out or too many
    /// wait already. `ready` is looked at as each request finishes, by one waiter each
    /// time, so those let in go at the pace requests finish, not all at once into the
    /// next standing delay — and at least once a window, as a node whose queue emptied
    /// has no request left to finish and hand out turns.
    async fn waited_for_turn(
        &self,
        until: Option<tokio::time::Instant>,
        ready: impl Fn() -> bool,
    ) -> bool {
        let Some(deadline) = until else {
            return false;
        };
        if self.waiting_new.fetch_add(1, Ordering::AcqRel) >= self.limit(Class::NewSession) {
            self.waiting_new.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        self.waited_new.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("ferry_new_session_waited_total").increment(1);
        let over = loop {
            let turn = self.turn.notified();
            tokio::pin!(turn);
            turn.as_mut().enable();
            if ready() {
                break true;
            }
            let next = deadline.min(tokio::time::Instant::now() + Duration::from_micros(WINDOW_US));
            if tokio::time::timeout_at(next, turn).await.is_err() && next == deadline {
                break ready();
            }
        };
        self.waiting_new.fetch_sub(1, Ordering::AcqRel);
        over
    }

    /// Every slot is taken (and admission is on): new requests wait or are shed.
    pub fn saturated(&self) -> bool {
        self.cfg.max_in_flight > 0 && self.in_flight() >= self.cfg.max_in_flight
    }

    /// Requests being worked on now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A standing delay of 50 ms, `max_in_flight` slots, and new sessions waiting up
    /// to `new_session_wait_ms` for their turn.
    fn delay_config(max_in_flight: usize, new_session_wait_ms: u64) -> AdmissionConfig {
        AdmissionConfig {
            max_in_flight,
            standing_delay_ms: 50,
            new_session_wait_ms,
            ..Default::default()
        }
    }

    fn adm(max: usize) -> Admission {
        Admission::new(AdmissionConfig {
            max_in_flight: max,
            queue_ms: 200,
            new_session_wait_ms: 0,
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn new_sessions_are_shed_first_and_realtime_last() {
        let a = adm(10);
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(a.admit(Class::NewSession, None).await.unwrap());
        }
        // Half the slots are the most new sessions get; with no queue measured yet, the
        // shed one is told the least wait.
        assert_eq!(a.admit(Class::NewSession, None).await.err(), Some(250));
        for _ in 0..3 {
            held.push(a.admit(Class::State, None).await.unwrap());
        }
        assert!(
            a.admit(Class::State, None).await.is_err(),
            "state stops at 80 %"
        );
        held.push(a.admit(Class::Realtime, None).await.unwrap());
        held.push(a.admit(Class::Realtime, None).await.unwrap());
        assert_eq!(a.in_flight(), 10);
        assert_eq!(
            a.shed[Class::NewSession as usize].load(Ordering::Relaxed),
            1
        );
        assert_eq!(a.shed[Class::State as usize].load(Ordering::Relaxed), 1);

        // Full: a real-time request waits for a slot instead of failing …
        let waiter = a.admit(Class::Realtime, None);
        let release = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            held.pop();
        };
        let (got, ()) = tokio::join!(waiter, release);
        let got = got.expect("a slot once one was freed");
        // … but only for queue_ms.
        let t = tokio::time::Instant::now();
        assert!(a.admit(Class::Realtime, None).await.is_err());
        assert!(t.elapsed() >= Duration::from_millis(200));
        drop(got);
        drop(held);
        assert_eq!(a.in_flight(), 0);
    }

    /// Requests that each take longer than `standing_delay_ms` for a whole window, with
    /// a queue in flight, shed new sessions (not real-time requests); once a window's
    /// quickest is quick again, new sessions are admitted again. One slow request on a
    /// quiet server sheds nothing.
    #[tokio::test]
    async fn a_standing_delay_sheds_new_sessions_until_it_drains() {
        let a = Admission::new(delay_config(1000, 0));
        let slow = Duration::from_millis(80);
        // A quiet server: one slow request per window, nothing else in flight.
        for _ in 0..3 {
            let p = a.admit(Class::State, None).await.unwrap();
            std::thread::sleep(slow);
            drop(p);
        }
        assert!(
            a.admit(Class::NewSession, None).await.is_ok(),
            "no queue, no shedding"
        );

        // A queue: 20 in flight, each taking 80 ms, over more than a window.
        let mut held: Vec<_> = Vec::new();
        for _ in 0..20 {
            held.push(a.admit(Class::Realtime, None).await.unwrap());
        }
        std::thread::sleep(slow);
        for _ in 0..3 {
            for p in held.drain(..) {
                drop(p);
            }
            for _ in 0..20 {
                held.push(a.admit(Class::Realtime, None).await.unwrap());
            }
            std::thread::sleep(slow);
        }
        // Twice the 80 ms queue is under the least wait.
        assert_eq!(a.admit(Class::NewSession, None).await.err(), Some(250));
        assert!(
            a.admit(Class::Realtime, None).await.is_ok(),
            "real-time is still admitted"
        );
        assert_eq!(
            a.shed[Class::NewSession as usize].load(Ordering::Relaxed),
            1
        );

        // Drained: a window whose quickest request is quick ends it.
        for p in held.drain(..) {
            drop(p);
        }
        for _ in 0..20 {
            held.push(a.admit(Class::Realtime, None).await.unwrap());
        }
        std::thread::sleep(Duration::from_millis(110));
        let quick = a.admit(Class::Realtime, None).await.unwrap();
        drop(quick);
        assert!(
            a.admit(Class::NewSession, None).await.is_ok(),
            "the delay is over"
        );
    }

    /// A shed new session is told twice the last window's quickest request, within
    /// `new_session_retry_min_ms` and `retry_after_ms`; other classes `retry_after_ms`.
    #[tokio::test]
    async fn a_shed_new_session_comes_back_when_the_queue_has_drained() {
        let a = Admission::new(delay_config(1000, 0));
        // A queue in flight …
        let queue = queued(&a).await;
        // … and a window whose one finished request asked `took_ms` ago (after at least
        // that long, so it is not cut at the clock's zero).
        let window = |took_ms: u64| {
            std::thread::sleep(Duration::from_micros(WINDOW_US.max(took_ms * 1000) + 1_000));
            a.in_flight.fetch_add(1, Ordering::AcqRel);
            drop(Permit {
                adm: Some(&a),
                asked_us: a.now_us().saturating_sub(took_ms * 1000),
            });
        };
        window(300);
        assert!(a.delay_standing());
        assert_eq!(a.admit(Class::NewSession, None).await.err(), Some(600));
        window(700);
        assert_eq!(
            a.admit(Class::NewSession, None).await.err(),
            Some(1000),
            "never more than retry_after_ms"
        );
        // State requests past their share are told `retry_after_ms`.
        let b = Admission::new(AdmissionConfig {
            max_in_flight: 10,
            new_session_wait_ms: 0,
            ..Default::default()
        });
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(b.admit(Class::Realtime, None).await.unwrap());
        }
        assert_eq!(b.admit(Class::State, None).await.err(), Some(1000));
        assert_eq!(b.admit(Class::NewSession, None).await.err(), Some(250));
        drop(queue);
    }

    /// A queue in flight: the least that counts as one, admitted and held.
    async fn queued(a: &Admission) -> Vec<Permit<'_>> {
        let mut queue = Vec::new();
        for _ in 0..QUEUE_FLOOR {
            queue.push(a.admit(Class::Realtime, None).await.unwrap());
        }
        queue
    }

    /// A window of `a` whose one finished request asked `took_ms` ago (slept until a new
    /// window begins, so it is judged, and at least that long, so it is not cut at the
    /// clock's zero).
    fn window(a: &Admission, took_ms: u64) {
        std::thread::sleep(Duration::from_micros(WINDOW_US.max(took_ms * 1000) + 1_000));
        a.in_flight.fetch_add(1, Ordering::AcqRel);
        drop(Permit {
            adm: Some(a),
            asked_us: a.now_us().saturating_sub(took_ms * 1000),
        });
    }

    /// A new session admitted now waits (is not shed) until `turn` is done, then is let
    /// in, nothing shed; its wait is not logic's delay: timed from after it, the login
    /// took no time.
    async fn waits_until_let_in(a: &Arc<Admission>, turn: impl FnOnce()) {
        let login = {
            let a = a.clone();
            tokio::spawn(async move { a.admit(Class::NewSession, None).await.map(drop) })
        };
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!login.is_finished(), "waiting, not shed");
        assert_eq!(a.waiting_new.load(Ordering::Relaxed), 1);
        turn();
        let got = tokio::time::timeout(Duration::from_secs(1), login)
            .await
            .expect("let in once its turn came")
            .unwrap();
        assert_eq!(got, Ok(()));
        assert_eq!(
            a.shed[Class::NewSession as usize].load(Ordering::Relaxed),
            0
        );
        let took_us = a.window_min_us.load(Ordering::Relaxed);
        assert!(took_us < 50_000, "{took_us} us");
    }

    /// A new session that meets a standing delay waits for it to end instead of being
    /// shed, and goes on once a window's quickest request is quick again; one whose wait
    /// runs out is shed after it, and one that finds as many waiting as new sessions
    /// may use is shed at once.
    #[tokio::test]
    async fn a_new_session_waits_out_a_standing_delay() {
        let a = Arc::new(Admission::new(delay_config(40, 2_000)));
        let queue = queued(&a).await;
        window(&a, 300);
        assert!(a.delay_standing());
        // The delay ends (a quick window): let in.
        waits_until_let_in(&a, || {
            window(&a, 1);
            assert!(!a.delay_standing());
        })
        .await;

        // A delay that outlasts the wait: shed after it.
        let b = Admission::new(delay_config(40, 200));
        let queue_b = queued(&b).await;
        window(&b, 300);
        let t = std::time::Instant::now();
        assert_eq!(b.admit(Class::NewSession, None).await.err(), Some(600));
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );

        // As many waiting as new sessions may use (half of 40): the next is shed at once.
        // (Two windows: the first holds the quick finish of the login let in above.)
        window(&a, 300);
        window(&a, 300);
        assert!(a.delay_standing());
        let waiters: Vec<_> = (0..20)
            .map(|_| {
                let a = a.clone();
                tokio::spawn(async move { a.admit(Class::NewSession, None).await.map(drop) })
            })
            .collect();
        while a.waiting_new.load(Ordering::Relaxed) < 20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let t = std::time::Instant::now();
        assert_eq!(a.admit(Class::NewSession, None).await.err(), Some(600));
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        window(&a, 1);
        for w in waiters {
            assert_eq!(w.await.unwrap(), Ok(()));
        }
        drop(queue);
        drop(queue_b);
    }

    /// A new session that finds its share of slots taken waits for a slot (as each
    /// request finishes) instead of being shed, timed from when it got one; one whose
    /// wait runs out is shed after it; and none waits past its sender's deadline less
    /// the time its LOGIN needs.
    #[tokio::test]
    async fn a_new_session_over_its_share_waits_for_a_slot() {
        let a = Arc::new(Admission::new(AdmissionConfig {
            max_in_flight: 10,
            new_session_wait_ms: 2_000,
            ..Default::default()
        }));
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(a.admit(Class::NewSession, None).await.unwrap());
        }
        // A slot frees: let in.
        waits_until_let_in(&a, || drop(held.pop())).await;

        // Nothing frees: shed once the wait is over.
        held.push(a.admit(Class::NewSession, None).await.unwrap());
        let t = tokio::time::Instant::now();
        assert!(a.admit(Class::NewSession, None).await.is_err());
        assert!(
            t.elapsed() >= Duration::from_millis(2_000),
            "{:?}",
            t.elapsed()
        );

        // Its gateway stops waiting in 1.3 s: it waits 0.3 s, leaving the LOGIN its
        // second; with less than that left it is shed at once.
        let t = tokio::time::Instant::now();
        let until = Some(t + Duration::from_millis(1_300));
        assert!(a.admit(Class::NewSession, until).await.is_err());
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_millis(900),
            "{waited:?}"
        );
        let t = tokio::time::Instant::now();
        let until = Some(t + Duration::from_millis(900));
        assert!(a.admit(Class::NewSession, until).await.is_err());
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(a.waiting_new.load(Ordering::Relaxed), 0);
        drop(held);
    }

    #[test]
    fn classes() {
        let mut r = BusRequest {
            cmd: u32::from(cmd::SEND),
            user_id: 7,
            ..Default::default()
        };
        assert_eq!(Class::of(&r), Class::Realtime);
        r.user_id = 0;
        assert_eq!(Class::of(&r), Class::State, "a short-link request");
        r.cmd = u32::from(cmd::LOGIN);
        assert_eq!(Class::of(&r), Class::NewSession);
        r.cmd = u32::from(cmd::FRIEND_LIST);
        r.user_id = 7;
        assert_eq!(Class::of(&r), Class::State);
    }

    #[tokio::test]
    async fn off_means_unbounded() {
        let a = adm(0);
        let mut held = Vec::new();
        for _ in 0..100 {
            held.push(a.admit(Class::NewSession, None).await.unwrap());
        }
        assert_eq!(a.in_flight(), 0, "nothing is counted");
    }
}
