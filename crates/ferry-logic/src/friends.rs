//! Friends: requests, accepts, declines, removals and blocks (each change lands in both
//! users' inboxes), friend lists, and the question every send asks — may `a` message
//! `b`? — answered from a short-lived cache of relations.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use ferry_bus::{BusRequest, BusResponse};
use ferry_proto::v1::{self, friend_event, FriendState as S};
use ferry_proto::{cmd, ProtoMessage};
use ferry_store::{FriendChange, FriendRow, NewEvent, StoreError};

use crate::core::{ok, unix_ms, Core, DeviceSession};
use crate::error::LogicError;
use crate::notify::Notifier;
use crate::push::PushService;

const MAX_GREETING: usize = 256;
/// Attempts of a friendship change that races with another change of the same pair.
const CAS_ATTEMPTS: usize = 5;

fn friend_entry(kind: friend_event::Kind, peer: &str, greeting: &str, time_ms: i64) -> v1::Entry {
    v1::Entry {
        kind: Some(v1::entry::Kind::Friend(v1::FriendEvent {
            kind: kind as i32,
            peer: peer.to_owned(),
            greeting: greeting.to_owned(),
        })),
        time_ms,
        ..Default::default()
    }
}

fn row(user: u64, peer: u64, state: S, greeting: &str) -> FriendRow {
    FriendRow {
        user_id: user,
        peer_id: peer,
        state: state as i32,
        greeting: greeting.to_owned(),
        version: 0,
        updated_ms: 0,
    }
}

/// How long a node trusts a cached relation that another node may have changed (this
/// node forgets its own changes at once).
const RELATION_TTL: Duration = Duration::from_secs(5);
/// Cached relations at most; past it the cache starts over.
const RELATIONS_MAX: usize = 100_000;

/// (user, peer) → how the user stands towards the peer, and when that was read. Every
/// send asks it (is the sender blocked? are they friends?), which was a store read per
/// message.
#[derive(Default)]
struct RelationCache {
    map: DashMap<(u64, u64), (S, Instant), crate::IdHasher>,
    /// Bumped by every friendship change on this node: a read that raced one is not
    /// cached (it may be from before the change).
    changes: AtomicU64,
}

fn state_of(r: &Option<FriendRow>) -> S {
    r.as_ref()
        .and_then(|r| S::try_from(r.state).ok())
        .unwrap_or(S::None)
}

/// Friendships and the relation cache.
pub(crate) struct Friends {
    core: Arc<Core>,
    /// Tells both users of a changed friendship.
    notifier: Arc<Notifier>,
    /// How each user stands towards each peer they were checked against on a send
    /// (short-lived: another node may change it).
    relations: RelationCache,
    /// A friend request received wakes the peer's devices without a live link.
    push: Arc<PushService>,
}

impl Friends {
    pub fn new(core: Arc<Core>, notifier: Arc<Notifier>, push: Arc<PushService>) -> Friends {
        Friends {
            core,
            notifier,
            relations: RelationCache::default(),
            push,
        }
    }

    /// Whether `from` may message `to`: never when `to` blocked `from`; otherwise only
    /// friends, unless the server opens messaging to everyone. Bots are open: a bot may
    /// message anyone and anyone may message a bot (docs/bots.md).
    pub async fn may_message(&self, from: u64, to: u64, to_name: &str) -> Result<(), LogicError> {
        use v1::FriendState;
        // Friends first: the bot flags are read only for a pair that is not.
        let open = self.core.cfg.open_messaging
            || (!self.are_friends(from, to).await?
                && (self.core.store.is_bot(from).await? || self.core.store.is_bot(to).await?));
        if open {
            if self.relation(to, from).await? == FriendState::Blocked {
                return Err(LogicError::PermissionDenied(format!(
                    "{to_name} does not accept messages from you"
                )));
            }
            return Ok(());
        }
        // Friendship is symmetric and a block ends it, so one row answers both questions.
        if self.are_friends(from, to).await? {
            Ok(())
        } else {
            Err(LogicError::PermissionDenied(format!(
                "{to_name} is not your friend; send a friend request first"
            )))
        }
    }

    /// Whether `a` and `b` are friends.
    pub async fn are_friends(&self, a: u64, b: u64) -> Result<bool, LogicError> {
        Ok(self.relation(a, b).await? == S::Friend)
    }

    /// How `user` stands towards `peer`, from a short-lived cache.
    async fn relation(&self, user: u64, peer: u64) -> Result<S, LogicError> {
        let cache = &self.relations;
        if let Some(r) = cache.map.get(&(user, peer)) {
            if r.1.elapsed() < RELATION_TTL {
                return Ok(r.0);
            }
        }
        let before = cache.changes.load(Ordering::Acquire);
        let state = state_of(&self.core.store.friendship(user, peer).await?);
        if cache.changes.load(Ordering::Acquire) == before {
            if cache.map.len() >= RELATIONS_MAX {
                cache.map.clear();
            }
            cache.map.insert((user, peer), (state, Instant::now()));
        }
        Ok(state)
    }

    /// The user's friends (ids).
    pub async fn friend_ids(&self, user: u64) -> Result<Vec<u64>, LogicError> {
        Ok(self
            .core
            .store
            .friends(user, 0)
            .await?
            .rows
            .into_iter()
            .filter(|r| r.state == S::Friend as i32)
            .map(|r| r.peer_id)
            .collect())
    }

    pub async fn action(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let c = req.cmd as u8;
        let (name, greeting) = if c == cmd::FRIEND_REQUEST {
            let r = v1::FriendRequestReq::decode(req.body.clone())?;
            if r.greeting.len() > MAX_GREETING {
                return Err(LogicError::TooLarge(format!(
                    "greeting over {MAX_GREETING} bytes"
                )));
            }
            (r.username, r.greeting)
        } else {
            (
                v1::FriendActionReq::decode(req.body.clone())?.username,
                String::new(),
            )
        };
        let peer = self.peer(&me, &name).await?;
        let my_name = self.core.user_name(me.user_id).await?;
        for _ in 0..CAS_ATTEMPTS {
            let mine = self.core.store.friendship(me.user_id, peer).await?;
            let theirs = self.core.store.friendship(peer, me.user_id).await?;
            let plan = plan_friend_change(
                c, me.user_id, peer, &my_name, &name, &greeting, &mine, &theirs,
            )?;
            let Some((mut change, result)) = plan else {
                // Nothing to change (already in the asked-for state).
                let version = self.core.store.friends(me.user_id, u64::MAX).await?.version;
                return Ok(ok(
                    req.cmd,
                    &v1::FriendActionResp {
                        state: state_of(&mine) as i32,
                        version,
                    },
                ));
            };
            change.time_ms = unix_ms();
            for ev in &mut change.events {
                ev.entry.time_ms = change.time_ms;
            }
            let events = change.events.clone();
            let changed = self.core.store.change_friends(change).await;
            // Whatever the outcome, what this node cached about the pair may be stale.
            self.relations.changes.fetch_add(1, Ordering::AcqRel);
            self.relations.map.remove(&(me.user_id, peer));
            self.relations.map.remove(&(peer, me.user_id));
            match changed {
                Ok(seqs) => {
                    if result == S::Friend && self.core.hooks.wants("friend.added") {
                        let t = events.first().map_or(0, |e| e.entry.time_ms);
                        self.core
                            .hooks
                            .emit_logged(crate::webhooks::Event::new(
                                "friend.added",
                                format!(
                                    "friend-{}-{}-{t}",
                                    me.user_id.min(peer),
                                    me.user_id.max(peer)
                                ),
                                serde_json::json!({"users": [&*my_name, &name]}),
                            ))
                            .await;
                    }
                    for (ev, seq) in events.into_iter().zip(seqs) {
                        // Only a request received pushes (the planner reads the entry).
                        self.push.entry(ev.user_id, seq, &ev.entry);
                        self.notifier.notify_entry(ev.user_id, seq, ev.entry).await;
                    }
                    let version = self.core.store.friends(me.user_id, u64::MAX).await?.version;
                    return Ok(ok(
                        req.cmd,
                        &v1::FriendActionResp {
                            state: result as i32,
                            version,
                        },
                    ));
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(LogicError::Unavailable("busy; try again".into()))
    }

    pub async fn list(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::FriendListReq::decode(req.body.clone())?;
        let list = self.core.store.friends(me.user_id, r.since_version).await?;
        let mut friends = Vec::with_capacity(list.rows.len());
        for row in list.rows {
            friends.push(v1::Friend {
                user_id: row.peer_id,
                username: self.core.user_name(row.peer_id).await?.to_string(),
                state: row.state,
                greeting: row.greeting,
                since_ms: row.updated_ms,
            });
        }
        Ok(ok(
            req.cmd,
            &v1::FriendListResp {
                version: list.version,
                friends,
                full: r.since_version == 0,
            },
        ))
    }

    /// The peer named in a friend request, never oneself.
    async fn peer(&self, me: &DeviceSession, name: &str) -> Result<u64, LogicError> {
        let peer = self.core.user_id(name).await?;
        if peer == me.user_id {
            return Err(LogicError::InvalidArgument(
                "that is you; pick another user".into(),
            ));
        }
        Ok(peer)
    }
}

/// Decides what a friend action changes, from both sides' current rows. `None` when
/// the relation already is what was asked for.
#[allow(clippy::too_many_arguments)]
fn plan_friend_change(
    c: u8,
    me: u64,
    peer: u64,
    my_name: &str,
    peer_name: &str,
    greeting: &str,
    mine: &Option<FriendRow>,
    theirs: &Option<FriendRow>,
) -> Result<Option<(FriendChange, S)>, LogicError> {
    use friend_event::Kind as K;
    let (m, t) = (state_of(mine), state_of(theirs));
    let expect = vec![(me, peer, m as i32), (peer, me, t as i32)];
    let ev = |user: u64, kind: K, other: &str, greeting: &str| NewEvent {
        user_id: user,
        entry: friend_entry(kind, other, greeting, 0),
    };
    let both_friends = |expect| FriendChange {
        expect,
        rows: vec![row(me, peer, S::Friend, ""), row(peer, me, S::Friend, "")],
        events: vec![
            ev(me, K::Added, peer_name, ""),
            ev(peer, K::Added, my_name, ""),
        ],
        time_ms: 0,
    };
    let plan = match c {
        cmd::FRIEND_REQUEST => {
            if t == S::Blocked {
                return Err(LogicError::PermissionDenied(format!(
                    "{peer_name} does not accept requests from you"
                )));
            }
            match m {
                S::Blocked => {
                    return Err(LogicError::PermissionDenied(format!(
                        "you blocked {peer_name}; unblock them first"
                    )))
                }
                S::Friend => return Ok(None),
                // They asked first: asking back accepts.
                S::RequestIn => (both_friends(expect), S::Friend),
                _ => (
                    FriendChange {
                        expect,
                        rows: vec![
                            row(me, peer, S::RequestOut, greeting),
                            row(peer, me, S::RequestIn, greeting),
                        ],
                        events: vec![
                            ev(peer, K::RequestReceived, my_name, greeting),
                            ev(me, K::RequestSent, peer_name, greeting),
                        ],
                        time_ms: 0,
                    },
                    S::RequestOut,
                ),
            }
        }
        cmd::FRIEND_ACCEPT => match m {
            S::Friend => return Ok(None),
            S::RequestIn => (both_friends(expect), S::Friend),
            _ => {
                return Err(LogicError::NotFound(format!(
                    "no friend request from {peer_name}"
                )))
            }
        },
        cmd::FRIEND_DECLINE => match m {
            S::RequestIn => (
                FriendChange {
                    expect,
                    rows: vec![row(me, peer, S::Removed, ""), row(peer, me, S::Removed, "")],
                    events: vec![ev(me, K::Declined, peer_name, "")],
                    time_ms: 0,
                },
                S::Removed,
            ),
            _ => {
                return Err(LogicError::NotFound(format!(
                    "no friend request from {peer_name}"
                )))
            }
        },
        cmd::FRIEND_REMOVE => match m {
            // Removing a friend, or withdrawing one's own request.
            S::Friend | S::RequestOut => (
                FriendChange {
                    expect,
                    rows: vec![row(me, peer, S::Removed, ""), row(peer, me, S::Removed, "")],
                    events: vec![ev(me, K::Removed, peer_name, "")],
                    time_ms: 0,
                },
                S::Removed,
            ),
            _ => {
                return Err(LogicError::NotFound(format!(
                    "{peer_name} is not your friend"
                )))
            }
        },
        cmd::FRIEND_BLOCK => match m {
            S::Blocked => return Ok(None),
            _ => {
                let mut rows = vec![row(me, peer, S::Blocked, "")];
                if !matches!(t, S::None | S::Removed | S::Blocked) {
                    rows.push(row(peer, me, S::Removed, ""));
                }
                (
                    FriendChange {
                        expect,
                        rows,
                        events: vec![ev(me, K::Blocked, peer_name, "")],
                        time_ms: 0,
                    },
                    S::Blocked,
                )
            }
        },
        cmd::FRIEND_UNBLOCK => match m {
            S::Blocked => (
                FriendChange {
                    expect,
                    rows: vec![row(me, peer, S::Removed, "")],
                    events: vec![ev(me, K::Unblocked, peer_name, "")],
                    time_ms: 0,
                },
                S::Removed,
            ),
            _ => return Ok(None),
        },
        other => return Err(LogicError::UnknownCommand(u32::from(other))),
    };
    Ok(Some(plan))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogicConfig;
    use crate::testing::{notify_of, req, World};

    #[test]
    fn friend_plans() {
        let none = None;
        let p = plan_friend_change(cmd::FRIEND_REQUEST, 1, 2, "a", "b", "hi", &none, &none)
            .unwrap()
            .unwrap();
        assert_eq!(p.1, S::RequestOut);
        assert_eq!(p.0.rows.len(), 2);
        assert_eq!(p.0.events[0].user_id, 2);
        let blocked = Some(row(2, 1, S::Blocked, ""));
        assert!(matches!(
            plan_friend_change(cmd::FRIEND_REQUEST, 1, 2, "a", "b", "", &none, &blocked),
            Err(LogicError::PermissionDenied(_))
        ));
        let asked = Some(row(1, 2, S::RequestIn, "yo"));
        let p = plan_friend_change(
            cmd::FRIEND_REQUEST,
            1,
            2,
            "a",
            "b",
            "",
            &asked,
            &Some(row(2, 1, S::RequestOut, "yo")),
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.1, S::Friend, "asking back accepts");
        assert!(matches!(
            plan_friend_change(cmd::FRIEND_ACCEPT, 1, 2, "a", "b", "", &none, &none),
            Err(LogicError::NotFound(_))
        ));
    }

    fn ask(name: &str) -> v1::FriendRequestReq {
        v1::FriendRequestReq {
            username: name.into(),
            greeting: "hi".into(),
        }
    }

    fn who(name: &str) -> v1::FriendActionReq {
        v1::FriendActionReq {
            username: name.into(),
        }
    }

    fn denied(r: Result<(), LogicError>) -> bool {
        matches!(r, Err(LogicError::PermissionDenied(_)))
    }

    #[tokio::test]
    async fn only_friends_may_message_and_a_block_ends_it_at_once() {
        let w = World::new(LogicConfig::default());
        let (ann, bob) = (w.user("ann").await, w.user("bob").await);
        w.notifier.link_up(bob, "gw-b", 1, "d1").await;
        assert!(denied(w.friends.may_message(ann, bob, "bob").await));

        w.friends
            .action(&req(cmd::FRIEND_REQUEST, ann, &ask("bob")))
            .await
            .unwrap();
        // Bob's devices hear of the request, inline.
        let pushes = w.pushes();
        assert_eq!(pushes.len(), 1);
        let n = notify_of(&pushes[0].1);
        let Some(v1::entry::Kind::Friend(ev)) = &n.entries[0].kind else {
            panic!("not a friend event: {n:?}");
        };
        assert_eq!(ev.kind, friend_event::Kind::RequestReceived as i32);
        assert_eq!((ev.peer.as_str(), ev.greeting.as_str()), ("ann", "hi"));
        // Asked is not yet friends (the stranger answer above was cached, and the
        // change made this node forget it).
        assert!(denied(w.friends.may_message(ann, bob, "bob").await));

        w.friends
            .action(&req(cmd::FRIEND_ACCEPT, bob, &who("ann")))
            .await
            .unwrap();
        w.friends.may_message(ann, bob, "bob").await.unwrap();
        w.friends.may_message(bob, ann, "ann").await.unwrap();

        w.friends
            .action(&req(cmd::FRIEND_BLOCK, bob, &who("ann")))
            .await
            .unwrap();
        assert!(denied(w.friends.may_message(ann, bob, "bob").await));
        assert!(denied(w.friends.may_message(bob, ann, "ann").await));
    }

    #[tokio::test]
    async fn open_messaging_lets_strangers_write_unless_blocked() {
        let w = World::new(LogicConfig {
            open_messaging: true,
            ..Default::default()
        });
        let (ann, bob) = (w.user("ann").await, w.user("bob").await);
        w.friends.may_message(ann, bob, "bob").await.unwrap();
        w.friends
            .action(&req(cmd::FRIEND_BLOCK, bob, &who("ann")))
            .await
            .unwrap();
        let r = w.friends.may_message(ann, bob, "bob").await;
        assert!(
            matches!(&r, Err(LogicError::PermissionDenied(m)) if m == "bob does not accept messages from you"),
            "{r:?}"
        );
        // Bob blocked ann, not the other way round.
        w.friends.may_message(bob, ann, "ann").await.unwrap();
    }
}
