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
    /// What a shed client is told to wait before it retries.
    pub retry_after_ms: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            max_in_flight: 2048,
            new_session_share: 0.5,
            state_share: 0.8,
            queue_ms: 500,
            retry_after_ms: 1000,
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

/// The admission controller.
pub struct Admission {
    cfg: AdmissionConfig,
    in_flight: AtomicUsize,
    waiting: AtomicUsize,
    freed: Notify,
    /// Requests shed, per class.
    pub shed: [AtomicU64; 3],
}

/// A slot; dropping it frees the slot for the next request.
pub struct Permit<'a> {
    adm: Option<&'a Admission>,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(a) = self.adm {
            a.in_flight.fetch_sub(1, Ordering::AcqRel);
            a.freed.notify_one();
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
            shed: Default::default(),
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
    pub async fn admit(&self, class: Class) -> Result<Permit<'_>, u32> {
        if self.cfg.max_in_flight == 0 {
            return Ok(Permit { adm: None });
        }
        let limit = self.limit(class);
        if self.try_take(limit) {
            return Ok(Permit { adm: Some(self) });
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
                return Ok(Permit { adm: Some(self) });
            }
        } else if class == Class::Realtime {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
        self.shed[class as usize].fetch_add(1, Ordering::Relaxed);
        metrics::counter!("ferry_shed_total", "class" => class.name()).increment(1);
        Err(self.cfg.retry_after_ms)
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

    fn adm(max: usize) -> Admission {
        Admission::new(AdmissionConfig {
            max_in_flight: max,
            queue_ms: 200,
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn new_sessions_are_shed_first_and_realtime_last() {
        let a = adm(10);
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(a.admit(Class::NewSession).await.unwrap());
        }
        // Half the slots are the most new sessions get.
        assert_eq!(a.admit(Class::NewSession).await.err(), Some(1000));
        for _ in 0..3 {
            held.push(a.admit(Class::State).await.unwrap());
        }
        assert!(a.admit(Class::State).await.is_err(), "state stops at 80 %");
        held.push(a.admit(Class::Realtime).await.unwrap());
        held.push(a.admit(Class::Realtime).await.unwrap());
        assert_eq!(a.in_flight(), 10);
        assert_eq!(
            a.shed[Class::NewSession as usize].load(Ordering::Relaxed),
            1
        );
        assert_eq!(a.shed[Class::State as usize].load(Ordering::Relaxed), 1);

        // Full: a real-time request waits for a slot instead of failing …
        let waiter = a.admit(Class::Realtime);
        let release = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            held.pop();
        };
        let (got, ()) = tokio::join!(waiter, release);
        let got = got.expect("a slot once one was freed");
        // … but only for queue_ms.
        let t = tokio::time::Instant::now();
        assert!(a.admit(Class::Realtime).await.is_err());
        assert!(t.elapsed() >= Duration::from_millis(200));
        drop(got);
        drop(held);
        assert_eq!(a.in_flight(), 0);
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
            held.push(a.admit(Class::NewSession).await.unwrap());
        }
        assert_eq!(a.in_flight(), 0, "nothing is counted");
    }
}
