//! The heartbeat controller of one link: when to send a heartbeat, when the link is
//! dead (something sent, nothing heard back within `answer_timeout`), and what each
//! answered or lost heartbeat teaches the network's smart heartbeat
//! ([`HeartbeatState`]). Pure time arithmetic: the session loop passes `now` in and
//! sleeps until [`Heartbeat::wake`].

use std::time::Duration;

use tokio::time::Instant;

use crate::smart::{HeartbeatState, SmartConfig};

/// What the timer found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Due {
    Nothing,
    /// Send a heartbeat now.
    Beat,
    /// Nothing came back in time: the link is dead. `save`: the learnt state changed
    /// (a heartbeat was lost) and should be kept.
    Dead {
        save: bool,
    },
}

/// One link's heartbeat (see the module docs).
#[derive(Debug)]
pub(crate) struct Heartbeat {
    /// What this network has learnt so far.
    state: HeartbeatState,
    cfg: SmartConfig,
    /// The safe interval, and the longest one allowed (by the config and by the
    /// server's idle timeout).
    min: Duration,
    limit: Duration,
    /// On TCP the interval is learnt; on long-poll the polls keep the path open, so
    /// the safe interval is used as it is and nothing is learnt.
    learn: bool,
    /// Any traffic either way keeps middleboxes' flow state alive.
    last_activity: Instant,
    /// When the oldest frame sent since the last one received went out.
    unanswered_since: Option<Instant>,
    /// A heartbeat waits for its answer.
    outstanding: bool,
}

impl Heartbeat {
    /// The heartbeat of a link that logged in at `now`. `learnt`: the network's state
    /// so far (None: never seen); `safe`: the interval a network starts with; the
    /// server's `idle_timeout_ms` (or, from older servers, `heartbeat_secs`) caps it.
    pub fn new(
        learnt: Option<HeartbeatState>,
        safe: Duration,
        cfg: &SmartConfig,
        idle_timeout_ms: u64,
        heartbeat_secs: u32,
        learn: bool,
        now: Instant,
    ) -> Self {
        let server_limit = if idle_timeout_ms > 0 {
            Duration::from_millis(idle_timeout_ms * 4 / 5)
        } else if heartbeat_secs > 0 {
            Duration::from_secs(u64::from(heartbeat_secs))
        } else {
            cfg.heartbeat_max
        };
        let limit = cfg.heartbeat_max.min(server_limit);
        let min = safe.min(limit);
        Heartbeat {
            state: learnt.unwrap_or_else(|| HeartbeatState::new(min)),
            cfg: cfg.clone(),
            min,
            limit,
            learn,
            last_activity: now,
            unanswered_since: None,
            outstanding: false,
        }
    }

    /// The interval in use.
    pub fn interval(&self) -> Duration {
        if self.learn {
            self.state.interval(self.min, self.limit)
        } else {
            self.min
        }
    }

    /// The network's smart heartbeat, to keep in the device state.
    pub fn state(&self) -> &HeartbeatState {
        &self.state
    }

    /// When something last went either way.
    pub fn last_activity(&self) -> Instant {
        self.last_activity
    }

    /// When [`Heartbeat::due`] has something to say.
    pub fn wake(&self) -> Instant {
        let beat = self.last_activity + self.interval();
        match self.unanswered_since {
            Some(t) => beat.min(t + self.cfg.answer_timeout),
            None => beat,
        }
    }

    /// Frames went out at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.last_activity = now;
        self.unanswered_since.get_or_insert(now);
    }

    /// Frames came in at `now`. True when that answered a heartbeat and the interval
    /// changed (keep the state).
    pub fn received(&mut self, now: Instant) -> bool {
        self.last_activity = now;
        self.unanswered_since = None;
        if !std::mem::take(&mut self.outstanding) {
            return false;
        }
        self.learn && self.state.success(&self.cfg, self.min, self.limit)
    }

    /// The link failed (a read or write error). True when a heartbeat was waiting and
    /// its loss changed the interval (keep the state).
    pub fn link_failed(&mut self) -> bool {
        self.outstanding && self.learn && self.state.failure(&self.cfg, self.min, self.limit)
    }

    /// The timer fired at `now`. A [`Due::Beat`] counts as sent: the caller sends it.
    pub fn due(&mut self, now: Instant) -> Due {
        if self
            .unanswered_since
            .is_some_and(|t| now >= t + self.cfg.answer_timeout)
        {
            if self.outstanding && self.learn {
                self.state.failure(&self.cfg, self.min, self.limit);
                return Due::Dead { save: true };
            }
            return Due::Dead { save: false };
        }
        if now >= self.last_activity + self.interval() && !self.outstanding {
            self.outstanding = true;
            return Due::Beat;
        }
        Due::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SmartConfig {
        SmartConfig {
            heartbeat_max: Duration::from_secs(600),
            heartbeat_step: Duration::from_secs(60),
            heartbeat_successes: 2,
            heartbeat_back: Duration::from_secs(80),
            heartbeat_failures: 1,
            answer_timeout: Duration::from_secs(10),
            ..SmartConfig::default()
        }
    }

    const SAFE: Duration = Duration::from_secs(210);

    #[test]
    fn the_server_idle_timeout_caps_the_interval() {
        let now = Instant::now();
        let hb = Heartbeat::new(None, SAFE, &cfg(), 300_000, 0, true, now);
        assert_eq!((hb.min, hb.limit), (SAFE, Duration::from_secs(240)));
        // An idle timeout below the safe interval brings that down too.
        let hb = Heartbeat::new(None, SAFE, &cfg(), 100_000, 0, true, now);
        assert_eq!(hb.interval(), Duration::from_secs(80));
        // An older server says heartbeat_secs instead.
        let hb = Heartbeat::new(None, SAFE, &cfg(), 0, 120, true, now);
        assert_eq!(hb.interval(), Duration::from_secs(120));
        let hb = Heartbeat::new(None, SAFE, &cfg(), 0, 0, true, now);
        assert_eq!(hb.limit, Duration::from_secs(600));
    }

    #[test]
    fn a_beat_goes_out_after_an_interval_of_silence_and_answers_stretch_it() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(None, SAFE, &cfg(), 0, 0, true, t0);
        assert_eq!(hb.wake(), t0 + SAFE);
        assert_eq!(hb.due(t0 + SAFE - Duration::from_secs(1)), Due::Nothing);
        // Traffic postpones it.
        hb.received(t0 + Duration::from_secs(100));
        assert_eq!(hb.due(t0 + SAFE), Due::Nothing);
        let t1 = t0 + Duration::from_secs(100) + SAFE;
        assert_eq!(hb.wake(), t1);
        assert_eq!(hb.due(t1), Due::Beat);
        hb.sent(t1);
        assert_eq!(
            hb.due(t1 + Duration::from_secs(1)),
            Due::Nothing,
            "one at a time"
        );
        assert_eq!(
            hb.wake(),
            t1 + Duration::from_secs(10),
            "the answer deadline"
        );
        assert!(
            !hb.received(t1 + Duration::from_secs(1)),
            "one success is not enough"
        );
        let t2 = t1 + Duration::from_secs(1) + SAFE;
        assert_eq!(hb.due(t2), Due::Beat);
        hb.sent(t2);
        assert!(hb.received(t2), "the second answered beat adds a step");
        assert_eq!(hb.interval(), SAFE + Duration::from_secs(60));
        assert_eq!(hb.state().interval_ms, 270_000);
    }

    #[test]
    fn an_unanswered_beat_kills_the_link_and_lowers_the_interval() {
        let t0 = Instant::now();
        let learnt = HeartbeatState {
            interval_ms: 330_000,
            ..HeartbeatState::new(SAFE)
        };
        let mut hb = Heartbeat::new(Some(learnt), SAFE, &cfg(), 0, 0, true, t0);
        let t1 = t0 + Duration::from_secs(330);
        assert_eq!(hb.due(t1), Due::Beat);
        hb.sent(t1);
        assert_eq!(hb.due(t1 + Duration::from_secs(9)), Due::Nothing);
        assert_eq!(
            hb.due(t1 + Duration::from_secs(10)),
            Due::Dead { save: true }
        );
        assert_eq!(hb.interval(), Duration::from_secs(250), "back 80 s");
        assert!(hb.state().stable);
    }

    #[test]
    fn a_request_without_an_answer_kills_the_link_without_teaching_anything() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(None, SAFE, &cfg(), 0, 0, true, t0);
        hb.sent(t0);
        assert_eq!(
            hb.due(t0 + Duration::from_secs(10)),
            Due::Dead { save: false }
        );
        assert_eq!(hb.state(), &HeartbeatState::new(SAFE));
        assert!(!hb.link_failed(), "no heartbeat was waiting");
    }

    #[test]
    fn a_link_error_during_a_beat_counts_as_a_lost_beat() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(None, SAFE, &cfg(), 0, 0, true, t0);
        assert_eq!(hb.due(t0 + SAFE), Due::Beat);
        // The safe interval cannot go lower, so nothing changes, but it settles there.
        assert!(!hb.link_failed());
        assert!(hb.state().stable);
    }

    #[test]
    fn on_long_poll_nothing_is_learnt() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(None, SAFE, &cfg(), 0, 0, false, t0);
        for i in 0..5u32 {
            let t = t0 + (SAFE + Duration::from_secs(1)) * i + SAFE;
            assert_eq!(hb.due(t), Due::Beat);
            hb.sent(t);
            assert!(!hb.received(t + Duration::from_secs(1)));
        }
        assert_eq!(hb.interval(), SAFE);
        assert_eq!(hb.due(t0 + SAFE * 20), Due::Beat);
        hb.sent(t0 + SAFE * 20);
        assert_eq!(
            hb.due(t0 + SAFE * 20 + Duration::from_secs(10)),
            Due::Dead { save: false }
        );
        assert_eq!(hb.state(), &HeartbeatState::new(SAFE));
    }
}
