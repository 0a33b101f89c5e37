//! The short link's state services: logout, user lookup, friends, avatars, client log
//! reports and moments. Every change a user must learn about is an inbox entry (the sync
//! model), so offline devices see it at their next sync.

use std::collections::HashSet;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use ferry_bus::{BusRequest, BusResponse, Push};
use ferry_proto::bus::{Fetch, Resource};
use ferry_proto::v1::{self, friend_event, moment_event, FriendState as S};
use ferry_proto::{cmd, ProtoMessage};
use ferry_store::{Avatar, FriendChange, FriendRow, MomentRow, NewEvent, ReportInfo, StoreError};
use md5::Digest as _;

use crate::error::LogicError;
use crate::service::{now_ms, ok, DeviceSession, Logic};

/// Side length of the stored avatar and of its thumbnail.
const AVATAR_PX: u32 = 256;
const THUMB_PX: u32 = 64;
/// Limits on what clients send.
const MAX_AVATAR_BYTES: usize = 2 * 1024 * 1024;
const MAX_AVATAR_SIDE: u32 = 8192;
const MAX_REPORT_BYTES: usize = 2 * 1024 * 1024;
const MAX_GREETING: usize = 256;
const MAX_MOMENT_TEXT: usize = 4096;
const MAX_MOMENT_MEDIA: usize = 9;
const MAX_COMMENT: usize = 1024;
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

fn moment_entry(
    kind: moment_event::Kind,
    id: u64,
    by: &str,
    text: &str,
    time_ms: i64,
) -> v1::Entry {
    v1::Entry {
        kind: Some(v1::entry::Kind::Moment(v1::MomentEvent {
            kind: kind as i32,
            moment_id: id,
            by: by.to_owned(),
            text: text.to_owned(),
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
pub(crate) struct RelationCache {
    map: DashMap<(u64, u64), (S, Instant)>,
    /// Bumped by every friendship change on this node: a read that raced one is not
    /// cached (it may be from before the change).
    changes: AtomicU64,
}

fn state_of(r: &Option<FriendRow>) -> S {
    r.as_ref()
        .and_then(|r| S::try_from(r.state).ok())
        .unwrap_or(S::None)
}

impl Logic {
    // ---- sessions ------------------------------------------------------------------

    pub(crate) async fn logout(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let r = v1::LogoutReq::decode(req.body.clone())?;
        let me = self.caller(req).await?;
        let (ended, device) = if r.all_devices {
            let devices = self.store.delete_user_sessions(me.user_id).await?;
            (devices.len() as u32, String::new())
        } else if !req.token.is_empty() {
            let gone = self
                .store
                .delete_session(crate::auth::token_hash(&req.token))
                .await?;
            (u32::from(gone), me.device_id.to_string())
        } else {
            return Err(LogicError::InvalidArgument(
                "logging out one device needs its token: use POST /v1/logout".into(),
            ));
        };
        // Close the device's (or every device's) long links now.
        let kick = v1::Kick {
            code: v1::ErrorCode::Kicked as i32,
            reason: "logged out".into(),
        };
        self.push_all(Push {
            user_id: me.user_id,
            device_id: device,
            cmd: u32::from(cmd::KICK),
            body: Bytes::from(kick.encode_to_vec()),
            close: true,
            ..Default::default()
        })
        .await;
        tracing::info!(user_id = me.user_id, sessions = ended, "logged out");
        Ok(ok(req.cmd, &v1::LogoutResp { sessions: ended }))
    }

    pub(crate) async fn find_user(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        self.caller(req).await?;
        let r = v1::FindUserReq::decode(req.body.clone())?;
        let id = self.user_id(&r.username).await?;
        let etag = self
            .store
            .avatar(id)
            .await?
            .map(|a| a.etag)
            .unwrap_or_default();
        Ok(ok(
            req.cmd,
            &v1::FindUserResp {
                user_id: id,
                username: r.username,
                avatar_etag: etag,
            },
        ))
    }

    // ---- friends -------------------------------------------------------------------

    /// The peer named in a friend request, never oneself.
    async fn peer(&self, me: &DeviceSession, name: &str) -> Result<u64, LogicError> {
        let peer = self.user_id(name).await?;
        if peer == me.user_id {
            return Err(LogicError::InvalidArgument(
                "that is you; pick another user".into(),
            ));
        }
        Ok(peer)
    }

    /// Whether `a` and `b` are friends.
    pub(crate) async fn are_friends(&self, a: u64, b: u64) -> Result<bool, LogicError> {
        Ok(self.relation(a, b).await? == S::Friend)
    }

    /// How `user` stands towards `peer`, from a short-lived cache.
    pub(crate) async fn relation(&self, user: u64, peer: u64) -> Result<S, LogicError> {
        let cache = &self.relations;
        if let Some(r) = cache.map.get(&(user, peer)) {
            if r.1.elapsed() < RELATION_TTL {
                return Ok(r.0);
            }
        }
        let before = cache.changes.load(Ordering::Acquire);
        let state = state_of(&self.store.friendship(user, peer).await?);
        if cache.changes.load(Ordering::Acquire) == before {
            if cache.map.len() >= RELATIONS_MAX {
                cache.map.clear();
            }
            cache.map.insert((user, peer), (state, Instant::now()));
        }
        Ok(state)
    }

    pub(crate) async fn friend_action(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.caller(req).await?;
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
        let my_name = self.user_name(me.user_id).await?;
        for _ in 0..CAS_ATTEMPTS {
            let mine = self.store.friendship(me.user_id, peer).await?;
            let theirs = self.store.friendship(peer, me.user_id).await?;
            let plan = plan_friend_change(
                c, me.user_id, peer, &my_name, &name, &greeting, &mine, &theirs,
            )?;
            let Some((mut change, result)) = plan else {
                // Nothing to change (already in the asked-for state).
                let version = self.store.friends(me.user_id, u64::MAX).await?.version;
                return Ok(ok(
                    req.cmd,
                    &v1::FriendActionResp {
                        state: state_of(&mine) as i32,
                        version,
                    },
                ));
            };
            change.time_ms = now_ms();
            for ev in &mut change.events {
                ev.entry.time_ms = change.time_ms;
            }
            let events = change.events.clone();
            let changed = self.store.change_friends(change).await;
            // Whatever the outcome, what this node cached about the pair may be stale.
            self.relations.changes.fetch_add(1, Ordering::AcqRel);
            self.relations.map.remove(&(me.user_id, peer));
            self.relations.map.remove(&(peer, me.user_id));
            match changed {
                Ok(seqs) => {
                    for (ev, seq) in events.into_iter().zip(seqs) {
                        self.notify_entry(ev.user_id, seq, ev.entry).await;
                    }
                    let version = self.store.friends(me.user_id, u64::MAX).await?.version;
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

    pub(crate) async fn friend_list(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.caller(req).await?;
        let r = v1::FriendListReq::decode(req.body.clone())?;
        let list = self.store.friends(me.user_id, r.since_version).await?;
        let mut friends = Vec::with_capacity(list.rows.len());
        for row in list.rows {
            friends.push(v1::Friend {
                user_id: row.peer_id,
                username: self.user_name(row.peer_id).await?.to_string(),
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

    // ---- avatars -------------------------------------------------------------------

    pub(crate) async fn avatar_set(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.caller(req).await?;
        let r = v1::AvatarSetReq::decode(req.body.clone())?;
        if r.image.len() > MAX_AVATAR_BYTES {
            return Err(LogicError::TooLarge(format!(
                "avatar over {MAX_AVATAR_BYTES} bytes"
            )));
        }
        let avatar = tokio::task::spawn_blocking(move || process_avatar(&r.image))
            .await
            .map_err(|e| LogicError::Internal(e.to_string()))??;
        let etag = avatar.etag.clone();
        self.store.set_avatar(me.user_id, avatar).await?;
        Ok(ok(req.cmd, &v1::AvatarSetResp { etag }))
    }

    pub(crate) async fn avatar_get(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let no_fetch = Fetch::default();
        let fetch = req.fetch.as_ref().unwrap_or(&no_fetch);
        let user = self.user_id(&fetch.argument).await?;
        let avatar = self
            .store
            .avatar(user)
            .await?
            .ok_or_else(|| LogicError::NotFound(format!("{} has no avatar", fetch.argument)))?;
        let etag = if fetch.thumbnail {
            format!("{}-t\"", avatar.etag.trim_end_matches('"'))
        } else {
            avatar.etag.clone()
        };
        if fetch.if_none_match.contains(&etag) {
            return Ok(BusResponse {
                cmd: u32::from(cmd::response(cmd::AVATAR_GET)),
                resource: Some(Resource {
                    etag,
                    not_modified: true,
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        let image = if fetch.thumbnail {
            avatar.thumb
        } else {
            avatar.image
        };
        Ok(BusResponse {
            cmd: u32::from(cmd::response(cmd::AVATAR_GET)),
            resource: Some(Resource {
                content_type: avatar.content_type,
                etag,
                total_size: image.len() as u64,
                ..Default::default()
            }),
            body: Bytes::from(image),
            ..Default::default()
        })
    }

    // ---- client log reports --------------------------------------------------------

    pub(crate) async fn report(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.caller(req).await?;
        let r = v1::ReportReq::decode(req.body.clone())?;
        if r.data.len() > MAX_REPORT_BYTES {
            return Err(LogicError::TooLarge(format!(
                "report over {MAX_REPORT_BYTES} bytes"
            )));
        }
        if r.length != r.data.len() as u64 {
            return Err(LogicError::ChecksumMismatch(format!(
                "declared length {} but {} bytes arrived",
                r.length,
                r.data.len()
            )));
        }
        let md5 = hex::encode(md5::Md5::digest(&r.data));
        if !md5.eq_ignore_ascii_case(r.md5.trim()) {
            return Err(LogicError::ChecksumMismatch(
                "the MD5 does not match the data".into(),
            ));
        }
        let short = |s: &str, max: usize, what: &str| {
            if s.len() > max || s.chars().any(char::is_control) {
                Err(LogicError::InvalidArgument(format!(
                    "{what}: at most {max} printable bytes"
                )))
            } else {
                Ok(s.to_owned())
            }
        };
        let info = ReportInfo {
            id: 0,
            user_id: me.user_id,
            device_id: me.device_id.to_string(),
            client_version: short(&r.client_version, 64, "client_version")?,
            kind: short(if r.kind.is_empty() { "log" } else { &r.kind }, 16, "kind")?,
            file_name: short(&r.file_name, 128, "file_name")?,
            length: r.length,
            md5,
            created_ms: now_ms(),
        };
        let id = self.store.add_report(info, r.data.to_vec()).await?;
        tracing::info!(user_id = me.user_id, report_id = id, "client report stored");
        Ok(ok(req.cmd, &v1::ReportResp { report_id: id }))
    }

    // ---- moments -------------------------------------------------------------------

    /// The user's friends (ids).
    async fn friend_ids(&self, user: u64) -> Result<Vec<u64>, LogicError> {
        Ok(self
            .store
            .friends(user, 0)
            .await?
            .rows
            .into_iter()
            .filter(|r| r.state == S::Friend as i32)
            .map(|r| r.peer_id)
            .collect())
    }

    /// A moment the caller may see (their own or a friend's); NOT_FOUND otherwise, so
    /// strangers cannot even learn that it exists.
    pub(crate) async fn visible_moment(&self, me: u64, id: u64) -> Result<MomentRow, LogicError> {
        let gone = || LogicError::NotFound("no such moment".into());
        let m = self.store.moment(id).await?.ok_or_else(gone)?;
        if m.author_id == me || self.are_friends(me, m.author_id).await? {
            Ok(m)
        } else {
            Err(gone())
        }
    }

    pub(crate) async fn moment_post(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.caller(req).await?;
        let r = v1::MomentPostReq::decode(req.body.clone())?;
        if r.text.len() > MAX_MOMENT_TEXT {
            return Err(LogicError::TooLarge(format!(
                "text over {MAX_MOMENT_TEXT} bytes"
            )));
        }
        if r.media_ids.len() > MAX_MOMENT_MEDIA
            || r.media_ids
                .iter()
                .any(|m| m.is_empty() || m.len() > 64 || m.contains('\n'))
        {
            return Err(LogicError::InvalidArgument(format!(
                "at most {MAX_MOMENT_MEDIA} media ids of 1-64 bytes"
            )));
        }
        if r.text.trim().is_empty() && r.media_ids.is_empty() {
            return Err(LogicError::InvalidArgument(
                "a moment needs text or media".into(),
            ));
        }
        let time_ms = now_ms();
        // Time-ordered (so ids sort newest first) and hard to guess.
        // Never below an id this node gave before, so two moments in one millisecond
        // still sort in the order they were posted.
        let candidate = ((time_ms as u64) << 20) | (rand::random::<u64>() & 0xF_FFFF);
        let prev = self
            .moment_clock
            .fetch_max(candidate, std::sync::atomic::Ordering::SeqCst);
        let id = if prev < candidate {
            candidate
        } else {
            self.moment_clock
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1
        };
        self.attach_moment_media(me.user_id, id, &r.media_ids)
            .await?;
        let my_name = self.user_name(me.user_id).await?;
        let entry = moment_entry(moment_event::Kind::Posted, id, &my_name, "", time_ms);
        let events: Vec<NewEvent> = self
            .friend_ids(me.user_id)
            .await?
            .into_iter()
            .map(|f| NewEvent {
                user_id: f,
                entry: entry.clone(),
            })
            .collect();
        let moment = MomentRow {
            id,
            author_id: me.user_id,
            text: r.text,
            media_ids: r.media_ids,
            time_ms,
        };
        let seqs = self.store.add_moment(moment, events.clone()).await?;
        for (ev, seq) in events.into_iter().zip(seqs) {
            self.notify_entry(ev.user_id, seq, ev.entry).await;
        }
        Ok(ok(
            req.cmd,
            &v1::MomentPostResp {
                moment_id: id,
                time_ms,
            },
        ))
    }

    pub(crate) async fn moment_timeline(
        &self,
        req: &BusRequest,
    ) -> Result<BusResponse, LogicError> {
        let me = self.caller(req).await?;
        let r = v1::MomentTimelineReq::decode(req.body.clone())?;
        let limit = match r.limit {
            0 => 20,
            n => n.min(100),
        };
        let friends = self.friend_ids(me.user_id).await?;
        let mut authors = friends.clone();
        authors.push(me.user_id);
        let rows = self.store.timeline(&authors, r.cursor, limit).await?;
        let ids: Vec<u64> = rows.iter().map(|m| m.id).collect();
        // Likes and comments only by the viewer and the viewer's friends.
        let visible: HashSet<u64> = authors.into_iter().collect();
        let reactions = self.store.reactions(&ids).await?;
        let mut moments = Vec::with_capacity(rows.len());
        for m in &rows {
            let mut out = v1::Moment {
                moment_id: m.id,
                author: self.user_name(m.author_id).await?.to_string(),
                text: m.text.clone(),
                media_ids: m.media_ids.clone(),
                time_ms: m.time_ms,
                ..Default::default()
            };
            for x in reactions
                .iter()
                .filter(|x| x.moment_id == m.id && visible.contains(&x.user_id))
            {
                let username = self.user_name(x.user_id).await?.to_string();
                if x.comment_id == 0 {
                    out.likes.push(v1::MomentLike {
                        username,
                        time_ms: x.time_ms,
                    });
                } else {
                    out.comments.push(v1::MomentComment {
                        comment_id: x.comment_id,
                        username,
                        text: x.text.clone(),
                        time_ms: x.time_ms,
                    });
                }
            }
            moments.push(out);
        }
        let next_cursor = if rows.len() == limit as usize {
            rows.last().map(|m| m.id).unwrap_or(0)
        } else {
            0
        };
        Ok(ok(
            req.cmd,
            &v1::MomentTimelineResp {
                moments,
                next_cursor,
            },
        ))
    }

    pub(crate) async fn moment_like(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.caller(req).await?;
        let r = v1::MomentLikeReq::decode(req.body.clone())?;
        let m = self.visible_moment(me.user_id, r.moment_id).await?;
        let time_ms = now_ms();
        let event = (!r.unlike && m.author_id != me.user_id).then(|| NewEvent {
            user_id: m.author_id,
            entry: moment_entry(moment_event::Kind::Liked, m.id, "", "", time_ms),
        });
        let event = match event {
            Some(mut ev) => {
                let by = self.user_name(me.user_id).await?;
                if let Some(v1::entry::Kind::Moment(e)) = &mut ev.entry.kind {
                    e.by = by.to_string();
                }
                Some(ev)
            }
            None => None,
        };
        let changed = self
            .store
            .set_like(m.id, me.user_id, !r.unlike, time_ms, event.clone())
            .await
            .map_err(gone_moment)?;
        if changed {
            if let Some(ev) = event {
                self.notify_latest(ev.user_id).await;
            }
        }
        Ok(ok(req.cmd, &v1::Empty {}))
    }

    pub(crate) async fn moment_comment(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.caller(req).await?;
        let r = v1::MomentCommentReq::decode(req.body.clone())?;
        if r.text.trim().is_empty() || r.text.len() > MAX_COMMENT {
            return Err(LogicError::InvalidArgument(format!(
                "a comment is 1-{MAX_COMMENT} bytes"
            )));
        }
        let m = self.visible_moment(me.user_id, r.moment_id).await?;
        let time_ms = now_ms();
        let by = self.user_name(me.user_id).await?;
        let event = (m.author_id != me.user_id).then(|| NewEvent {
            user_id: m.author_id,
            entry: moment_entry(moment_event::Kind::Commented, m.id, &by, &r.text, time_ms),
        });
        let id = self
            .store
            .add_comment(m.id, me.user_id, &r.text, time_ms, event.clone())
            .await
            .map_err(gone_moment)?;
        if let Some(ev) = event {
            self.notify_latest(ev.user_id).await;
        }
        Ok(ok(req.cmd, &v1::MomentCommentResp { comment_id: id }))
    }

    pub(crate) async fn moment_delete(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.caller(req).await?;
        let r = v1::MomentDeleteReq::decode(req.body.clone())?;
        let m = self.visible_moment(me.user_id, r.moment_id).await?;
        if m.author_id != me.user_id {
            return Err(LogicError::PermissionDenied(
                "only the author may delete a moment".into(),
            ));
        }
        self.store.delete_moment(m.id).await?;
        Ok(ok(req.cmd, &v1::Empty {}))
    }
}

fn gone_moment(e: StoreError) -> LogicError {
    match e {
        StoreError::NotFound => LogicError::NotFound("no such moment".into()),
        e => e.into(),
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

/// Checks an uploaded avatar by its content and makes the stored sizes.
fn process_avatar(bytes: &[u8]) -> Result<Avatar, LogicError> {
    use image::{ImageFormat, ImageReader};
    let not_image = || LogicError::InvalidArgument("not a PNG, JPEG or WebP image".into());
    let format = image::guess_format(bytes).map_err(|_| not_image())?;
    if !matches!(
        format,
        ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP
    ) {
        return Err(not_image());
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_AVATAR_SIDE);
    limits.max_image_height = Some(MAX_AVATAR_SIDE);
    limits.max_alloc = Some(256 * 1024 * 1024);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| LogicError::InvalidArgument(format!("unreadable image: {e}")))?;
    let encode = |side: u32| -> Result<Vec<u8>, LogicError> {
        let small = img
            .resize_to_fill(side, side, image::imageops::FilterType::Triangle)
            .to_rgb8();
        let mut out = Cursor::new(Vec::new());
        small
            .write_to(&mut out, ImageFormat::Jpeg)
            .map_err(|e| LogicError::Internal(format!("encoding avatar: {e}")))?;
        Ok(out.into_inner())
    };
    let image = encode(AVATAR_PX)?;
    let thumb = encode(THUMB_PX)?;
    let digest = sha2::Sha256::digest(&image);
    Ok(Avatar {
        etag: format!("\"{}\"", hex::encode(&digest[..8])),
        content_type: "image/jpeg".into(),
        image,
        thumb,
        updated_ms: now_ms(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn avatars_are_checked_and_resized() {
        let a = process_avatar(&png(300, 200)).unwrap();
        let big = image::load_from_memory(&a.image).unwrap();
        assert_eq!((big.width(), big.height()), (AVATAR_PX, AVATAR_PX));
        let small = image::load_from_memory(&a.thumb).unwrap();
        assert_eq!((small.width(), small.height()), (THUMB_PX, THUMB_PX));
        assert!(a.etag.starts_with('"') && a.etag.ends_with('"'));
        assert!(matches!(
            process_avatar(b"GIF89a....."),
            Err(LogicError::InvalidArgument(_))
        ));
        assert!(matches!(
            process_avatar(b"hello"),
            Err(LogicError::InvalidArgument(_))
        ));
        // A PNG header with a body cut short.
        let cut = &png(50, 50)[..40];
        assert!(matches!(
            process_avatar(cut),
            Err(LogicError::InvalidArgument(_))
        ));
    }

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
}
