//! Lowers the calling thread's CPU priority, for work that must take only what the rest
//! of the process leaves: the gateway's key work (full handshakes' X25519), the search
//! indexer, the overload bench's storm of new logins.
//!
//! Two levers, both per thread on Linux (sched(7)), both inherited by the threads the
//! caller starts afterwards:
//! - the nice value, raised by [`Priority::nice`] over what the thread has (the
//!   process's, usually; at most 19). Raising it needs no privilege.
//! - the SCHED_IDLE policy ([`Priority::idle`]). Nice alone is not enough under Linux's
//!   EEVDF scheduler: a niced thread that has the core keeps it to the end of its slice
//!   (run to parity), so a normal thread woken on that core waits behind it; a SCHED_IDLE
//!   thread is preempted as soon as a normal thread wants the core
//!   (docs/benchmarks.md, *Search* and *The storm's key work at the lowest priority*).
//!
//! It must not do anything else: no threads of its own, no state. Elsewhere than Linux
//! asking for a lower priority is an error the caller may log and ignore.

/// How much lower than the rest of the process a thread runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Priority {
    /// Added to the thread's nice value (0: unchanged).
    pub nice: i32,
    /// The SCHED_IDLE scheduling policy.
    pub idle: bool,
}

/// Lowers the calling thread's priority to `p`. Both levers are tried; the first that
/// failed is the error.
#[cfg(target_os = "linux")]
pub fn lower_this_thread(p: Priority) -> std::io::Result<()> {
    let mut first = Ok(());
    if p.idle {
        use thread_priority::unix::{
            set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
            ThreadSchedulePolicy,
        };
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        let min = thread_priority::ThreadPriority::Min;
        if let Err(e) = set_thread_priority_and_policy(thread_native_id(), min, idle) {
            first = Err(std::io::Error::other(format!("SCHED_IDLE: {e:?}")));
        }
    }
    if p.nice != 0 {
        // PRIO_PROCESS with a thread id is that thread's own nice value on Linux; the
        // policy set above leaves it as it was.
        let tid = Some(rustix::thread::gettid());
        let r = rustix::process::getpriority_process(tid).and_then(|now| {
            rustix::process::setpriority_process(tid, (now + p.nice).clamp(-20, 19))
        });
        if let Err(e) = r {
            first = first.and(Err(e.into()));
        }
    }
    first
}

/// Lowers the calling thread's priority to `p`: not done on this system.
#[cfg(not(target_os = "linux"))]
pub fn lower_this_thread(p: Priority) -> std::io::Result<()> {
    if p == Priority::default() {
        return Ok(());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "thread priorities are left as they are on this system",
    ))
}

/// The calling thread's nice value and scheduling policy as the kernel has them (the
/// policy's number, sched(7): 0 SCHED_OTHER, 5 SCHED_IDLE; `/proc/thread-self/stat`'s
/// 41st field).
#[cfg(target_os = "linux")]
pub fn this_thread() -> std::io::Result<(i32, u32)> {
    let bad = || std::io::Error::other("/proc/thread-self/stat: no policy field");
    let nice = rustix::process::getpriority_process(Some(rustix::thread::gettid()))?;
    let stat = std::fs::read_to_string("/proc/thread-self/stat")?;
    // After the name (which may hold spaces and parentheses) come the fields from the
    // third (state) on.
    let after_name = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..))
        .ok_or_else(bad)?;
    let policy = after_name
        .split(' ')
        .nth(41 - 3)
        .and_then(|f| f.parse().ok())
        .ok_or_else(bad)?;
    Ok((nice, policy))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Each lever on a thread of its own; the caller's thread keeps both, and a thread
    /// started by a lowered one inherits them.
    #[test]
    fn a_lowered_thread_runs_niced_and_idle_and_its_children_too() {
        const SCHED_OTHER: u32 = 0;
        const SCHED_IDLE: u32 = 5;
        let own = this_thread().unwrap();
        for p in [
            Priority {
                nice: 3,
                idle: false,
            },
            Priority {
                nice: 0,
                idle: true,
            },
            Priority {
                nice: 40,
                idle: true,
            },
        ] {
            let (lowered, child) = std::thread::spawn(move || {
                lower_this_thread(p).unwrap();
                let child = std::thread::spawn(|| this_thread().unwrap())
                    .join()
                    .unwrap();
                (this_thread().unwrap(), child)
            })
            .join()
            .unwrap();
            assert_eq!(lowered.0, (own.0 + p.nice).min(19), "{p:?}");
            assert_eq!(
                lowered.1,
                if p.idle { SCHED_IDLE } else { SCHED_OTHER },
                "{p:?}"
            );
            assert_eq!(child, lowered, "inherited: {p:?}");
        }
        assert_eq!(this_thread().unwrap(), own);
        assert_eq!(own.1, SCHED_OTHER);
    }
}
