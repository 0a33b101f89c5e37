//! The bench's users, set up before a scenario's load starts: registered (an existing
//! one is fine, so a rerun with the same `--prefix` reuses them), signed in for a device
//! token, and made friends in pairs (2k ↔ 2k+1) where 1:1 messaging needs it.
//!
//! Every scenario sets its users up here, many at a time ([`IN_FLIGHT`]) so that
//! thousands are made in seconds, and each request the server sheds or refuses as
//! retryable is tried again after a growing pause, so that a busy server slows the
//! set-up down instead of failing it. None of this is measured.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferry_client::{ClientError, ShortLink};
use ferry_proto::v1::{self, ErrorCode};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Set-up requests a process has in flight at once.
pub const IN_FLIGHT: usize = 32;

/// How many times a request is tried while the server refuses it as retryable.
const ATTEMPTS: u32 = 8;

/// `task(i)` for every `i` in `0..n`, at most `in_flight` of them at once; the results
/// in the order of `i`. `done` sees each result as it comes in (progress, counters).
pub async fn each<T, Fut>(
    n: usize,
    in_flight: usize,
    task: impl Fn(usize) -> Fut,
    mut done: impl FnMut(&T),
) -> anyhow::Result<Vec<T>>
where
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let limit = Arc::new(Semaphore::new(in_flight.max(1)));
    let mut set = JoinSet::new();
    for i in 0..n {
        let (limit, work) = (limit.clone(), task(i));
        set.spawn(async move {
            let _permit = limit.acquire_owned().await;
            (i, work.await)
        });
    }
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (i, v) = joined.context("a bench task failed")?;
        done(&v);
        out[i] = Some(v);
    }
    Ok(out.into_iter().flatten().collect())
}

/// `op` until it succeeds or fails for good: a retryable refusal (shed, rate limited,
/// a lost connection) is tried again after a pause that doubles from 50 ms, up to
/// [`ATTEMPTS`] tries in all.
async fn retried<T, Fut>(mut op: impl FnMut() -> Fut) -> Result<T, ClientError>
where
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut pause = Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if e.is_retryable() && attempt < ATTEMPTS => {
                if e.code() == Some(ErrorCode::RateLimited) {
                    rate_limited_hint();
                }
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
            done => return done,
        }
    }
}

/// Says once, on stderr, that the server is slowing the bench's sign-ups down, and how
/// to lift its limits: against a server with default limits (registrations: 20, then one
/// every 2 s per address) a bench of thousands of users would otherwise seem to stall.
fn rate_limited_hint() {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        eprintln!(
            "bench: the server rate-limits registrations and sign-ins per address \
             (logic.limits.register_per_ip: 20, then 1 every 2 s; auth_per_ip), so setting up \
             users is slow and may fail. Against a server of your own, lift the limits for the \
             bench with a config file holding\n\
             [logic.limits]\n\
             register_per_ip = {{ per_sec = 0.0, burst = 0.0 }}\n\
             auth_per_ip = {{ per_sec = 0.0, burst = 0.0 }}\n\
             auth_per_user = {{ per_sec = 0.0, burst = 0.0 }}\n\
             login_per_ip = {{ per_sec = 0.0, burst = 0.0 }}\n\
             (0 means unlimited; `ferry serve --config FILE`), or register the users beforehand."
        );
    });
}

/// One registration; a user that exists already is fine.
async fn new_user(short: &ShortLink, user: &str, password: &str) -> Result<(), ClientError> {
    match short.register(user, password).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(ErrorCode::UserExists) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Registers `user` (an existing one is fine).
pub async fn register(short: &ShortLink, user: &str, password: &str) -> anyhow::Result<()> {
    retried(|| new_user(short, user, password))
        .await
        .with_context(|| format!("registering {user}"))
}

/// Registers `user` (an existing one is fine) and gets a device token.
pub async fn register_and_auth(
    short: &ShortLink,
    user: &str,
    password: &str,
) -> anyhow::Result<v1::AuthResp> {
    retried(|| async move {
        new_user(short, user, password).await?;
        short.auth(user, password, "bench").await
    })
    .await
    .with_context(|| format!("registering {user}"))
}

/// Registers and signs in every one of `names` (user `i` at `short(i)`), [`IN_FLIGHT`]
/// at a time: each one's device token, or why there is none. `done` is told of each
/// user as it is done (true: signed in).
pub async fn sign_in(
    short: impl Fn(usize) -> ShortLink,
    names: &[String],
    password: &str,
    mut done: impl FnMut(bool),
) -> anyhow::Result<Vec<anyhow::Result<String>>> {
    let task = |i: usize| {
        let (short, user, password) = (short(i), names[i].clone(), password.to_owned());
        async move {
            register_and_auth(&short, &user, &password)
                .await
                .map(|a| a.token)
        }
    };
    each(names.len(), IN_FLIGHT, task, |r| done(r.is_ok())).await
}

/// As [`sign_in`], every user at `short`, all or nothing: the tokens in the order of
/// `names`, or the first failure.
pub async fn sign_in_all(
    short: &ShortLink,
    names: &[String],
    password: &str,
    done: impl FnMut(bool),
) -> anyhow::Result<Vec<String>> {
    sign_in(|_| short.clone(), names, password, done)
        .await?
        .into_iter()
        .collect()
}

/// Makes `a` and `b` friends (messaging needs it): each asks the other, and asking
/// back accepts. Already being friends is fine.
pub async fn befriend(
    short: &ShortLink,
    (a, token_a): (&str, &str),
    (b, token_b): (&str, &str),
) -> anyhow::Result<()> {
    for (token, peer) in [(token_a, b), (token_b, a)] {
        let req = v1::FriendRequestReq {
            username: peer.to_owned(),
            greeting: String::new(),
        };
        retried(|| short.call::<_, v1::FriendActionResp>("friends/request", Some(token), &req))
            .await
            .with_context(|| format!("befriending {a} and {b}"))?;
    }
    Ok(())
}

/// Befriends every pair 2k ↔ 2k+1 of `names` that both have a token, [`IN_FLIGHT`]
/// pairs at a time. Every pair is tried; the first failure is the answer.
pub async fn befriend_pairs(
    short: &ShortLink,
    names: &[String],
    tokens: &[Option<String>],
) -> anyhow::Result<()> {
    let task = |k: usize| {
        let (a, b) = (2 * k, 2 * k + 1);
        let pair = tokens[a].clone().zip(tokens[b].clone());
        let (short, name_a, name_b) = (short.clone(), names[a].clone(), names[b].clone());
        async move {
            let Some((ta, tb)) = pair else {
                return Ok(());
            };
            befriend(&short, (&name_a, &ta), (&name_b, &tb)).await
        }
    };
    each(names.len() / 2, IN_FLIGHT, task, |_| {})
        .await?
        .into_iter()
        .collect()
}
