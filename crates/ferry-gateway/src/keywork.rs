//! The key work of full handshakes (X25519: two key agreements to read a HELLO, a key
//! pair and two more to answer it) on threads of its own, at a lower CPU priority than
//! the threads that forward connected users' frames.
//!
//! A full handshake costs the gateway ~100× the CPU of forwarding a message. Done on
//! the runtime's threads, a storm of new logins queues in front of every connected
//! user's frame; here the storm waits for its own threads instead, and with a positive
//! `gateway.key_work_nice` the kernel gives those threads a smaller share than the
//! forwarding (still about a quarter of a core during the overload bench's storm at
//! 10), and with `gateway.key_work_idle` (SCHED_IDLE) a forwarding thread that wakes
//! takes the core from them at once — new sessions are slowed first, as admission
//! sheds them first (docs/security.md, *Overload*). How many wait is bounded by
//! `gateway.max_handshakes`: each job belongs to a handshake holding its slot.
//!
//! It must not do anything but pure computation: no I/O, no locks shared with the
//! runtime.

use std::sync::mpsc;
use std::sync::Arc;

type Job = Box<dyn FnOnce() + Send>;

/// The key-work threads' CPU priority, below the rest of the process's.
pub(crate) use ferry_sched::Priority;

/// The key-work threads; none (`threads` 0) runs the work in place.
pub(crate) struct KeyWork {
    jobs: Option<mpsc::Sender<Job>>,
}

impl KeyWork {
    /// Starts `threads` threads at `priority` (Linux; elsewhere at the process's own).
    /// They end when the `KeyWork` is dropped.
    pub fn start(threads: usize, priority: Priority) -> std::io::Result<Self> {
        if threads == 0 {
            return Ok(KeyWork { jobs: None });
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(parking_lot::Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("ferry-keywork-{i}"))
                .spawn(move || {
                    lower_priority(priority);
                    loop {
                        // One thread waits for the next job at a time; the lock is not
                        // held while a job runs.
                        let job = rx.lock().recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(KeyWork { jobs: Some(tx) })
    }

    /// Whether the work goes to threads of its own.
    pub fn threaded(&self) -> bool {
        self.jobs.is_some()
    }

    /// Runs `f` on a key-work thread (in place when there are none) and gives its
    /// result; an error only when the threads are gone (a panic in key work, which
    /// reports every failure as a `Result`: a bug), and the handshake is refused.
    pub async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> std::io::Result<R> {
        let Some(jobs) = &self.jobs else {
            return Ok(f());
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // The waiter may be gone (its connection closed): nothing to do then.
            let _ = tx.send(f());
        });
        jobs.send(job).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }
}

fn gone() -> std::io::Error {
    std::io::Error::other("the gateway's key-work threads have stopped")
}

fn lower_priority(p: Priority) {
    match ferry_sched::lower_this_thread(p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
            tracing::debug!(?p, "key-work priority is left as it is on this system")
        }
        Err(e) => tracing::warn!(?p, error = %e, "the key-work threads keep their priority"),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn policy_here() -> u32 {
        ferry_sched::this_thread().unwrap().1
    }

    fn nice_here() -> i32 {
        ferry_sched::this_thread().unwrap().0
    }

    #[tokio::test]
    async fn work_runs_on_the_key_work_threads_at_their_priority() {
        const SCHED_OTHER: u32 = 0;
        const SCHED_IDLE: u32 = 5;
        for idle in [false, true] {
            let kw = KeyWork::start(2, Priority { nice: 5, idle }).unwrap();
            let (name, nice, policy) = kw
                .run(move || {
                    let name = std::thread::current().name().map(str::to_owned);
                    (name, nice_here(), policy_here())
                })
                .await
                .unwrap();
            assert!(name.unwrap().starts_with("ferry-keywork-"));
            // The caller's own thread keeps its priority and policy; the key work's
            // nice is 5 higher, and it runs under SCHED_IDLE when asked to.
            assert_eq!(nice, (nice_here() + 5).min(19), "idle {idle}");
            assert_eq!(policy_here(), SCHED_OTHER);
            assert_eq!(policy, if idle { SCHED_IDLE } else { SCHED_OTHER });
        }
    }

    #[tokio::test]
    async fn without_threads_the_work_runs_in_place() {
        let kw = KeyWork::start(
            0,
            Priority {
                nice: 10,
                idle: true,
            },
        )
        .unwrap();
        let here = std::thread::current().id();
        assert_eq!(
            kw.run(move || std::thread::current().id()).await.unwrap(),
            here
        );
    }

    #[tokio::test]
    async fn many_jobs_at_once_all_come_back() {
        let kw = Arc::new(KeyWork::start(2, Priority::default()).unwrap());
        let mut set = tokio::task::JoinSet::new();
        for i in 0..200u64 {
            let kw = kw.clone();
            set.spawn(async move { kw.run(move || i * 2).await.unwrap() });
        }
        let mut sum = 0;
        while let Some(r) = set.join_next().await {
            sum += r.unwrap();
        }
        assert_eq!(sum, (0..200u64).map(|i| i * 2).sum::<u64>());
    }
}
