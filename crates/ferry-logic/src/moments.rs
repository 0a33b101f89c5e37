//! Moments: posts to one's friends (with media), likes, comments and deletes, and the
//! timeline of one's own and one's friends' moments. A moment is seen only by its author
//! and their friends; likes and comments only by the viewer's friends.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ferry_bus::{BusRequest, BusResponse};
use ferry_proto::v1::{self, moment_event};
use ferry_proto::ProtoMessage;
use ferry_store::{MomentRow, NewEvent, StoreError};

use crate::attach::Attachments;
use crate::core::{ok, unix_ms, Core};
use crate::error::LogicError;
use crate::friends::Friends;
use crate::notify::Notifier;

const MAX_MOMENT_TEXT: usize = 4096;
const MAX_MOMENT_MEDIA: usize = 9;
const MAX_COMMENT: usize = 1024;

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

/// Moments and their reactions.
pub(crate) struct Moments {
    core: Arc<Core>,
    /// Tells friends of a new moment, and authors of likes and comments.
    notifier: Arc<Notifier>,
    /// Who sees a moment.
    friends: Arc<Friends>,
    /// Checks and grants the media a moment shows.
    attach: Arc<Attachments>,
    /// The newest moment id this node gave out (ids are time-ordered).
    clock: AtomicU64,
}

impl Moments {
    pub fn new(
        core: Arc<Core>,
        notifier: Arc<Notifier>,
        friends: Arc<Friends>,
        attach: Arc<Attachments>,
    ) -> Moments {
        Moments {
            core,
            notifier,
            friends,
            attach,
            clock: AtomicU64::new(0),
        }
    }

    /// A moment the caller may see (their own or a friend's); NOT_FOUND otherwise, so
    /// strangers cannot even learn that it exists.
    pub async fn visible_moment(&self, me: u64, id: u64) -> Result<MomentRow, LogicError> {
        let gone = || LogicError::NotFound("no such moment".into());
        let m = self.core.store.moment(id).await?.ok_or_else(gone)?;
        if m.author_id == me || self.friends.are_friends(me, m.author_id).await? {
            Ok(m)
        } else {
            Err(gone())
        }
    }

    pub async fn post(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
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
        let time_ms = unix_ms();
        // Time-ordered (so ids sort newest first) and hard to guess.
        // Never below an id this node gave before, so two moments in one millisecond
        // still sort in the order they were posted.
        let candidate = ((time_ms as u64) << 20) | (rand::random::<u64>() & 0xF_FFFF);
        let prev = self.clock.fetch_max(candidate, Ordering::SeqCst);
        let id = if prev < candidate {
            candidate
        } else {
            self.clock.fetch_add(1, Ordering::SeqCst) + 1
        };
        self.attach.to_moment(me.user_id, id, &r.media_ids).await?;
        let my_name = self.core.user_name(me.user_id).await?;
        let entry = moment_entry(moment_event::Kind::Posted, id, &my_name, "", time_ms);
        let events: Vec<NewEvent> = self
            .friends
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
        let text = self
            .core
            .hooks
            .wants("moment.posted")
            .then(|| (moment.text.clone(), moment.media_ids.clone()));
        let seqs = self.core.store.add_moment(moment, events.clone()).await?;
        if let Some((text, media)) = text {
            self.core
                .hooks
                .emit_logged(crate::webhooks::Event::new(
                    "moment.posted",
                    format!("moment-{id}"),
                    serde_json::json!({
                        "moment_id": id.to_string(),
                        "author": &*my_name,
                        "text": text,
                        "media_ids": media,
                    }),
                ))
                .await;
        }
        for (ev, seq) in events.into_iter().zip(seqs) {
            self.notifier.notify_entry(ev.user_id, seq, ev.entry).await;
        }
        Ok(ok(
            req.cmd,
            &v1::MomentPostResp {
                moment_id: id,
                time_ms,
            },
        ))
    }

    pub async fn timeline(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::MomentTimelineReq::decode(req.body.clone())?;
        let limit = match r.limit {
            0 => 20,
            n => n.min(100),
        };
        let friends = self.friends.friend_ids(me.user_id).await?;
        let mut authors = friends.clone();
        authors.push(me.user_id);
        let rows = self.core.store.timeline(&authors, r.cursor, limit).await?;
        let ids: Vec<u64> = rows.iter().map(|m| m.id).collect();
        // Likes and comments only by the viewer and the viewer's friends.
        let visible: HashSet<u64> = authors.into_iter().collect();
        let reactions = self.core.store.reactions(&ids).await?;
        let mut moments = Vec::with_capacity(rows.len());
        for m in &rows {
            let mut out = v1::Moment {
                moment_id: m.id,
                author: self.core.user_name(m.author_id).await?.to_string(),
                text: m.text.clone(),
                media_ids: m.media_ids.clone(),
                time_ms: m.time_ms,
                ..Default::default()
            };
            for x in reactions
                .iter()
                .filter(|x| x.moment_id == m.id && visible.contains(&x.user_id))
            {
                let username = self.core.user_name(x.user_id).await?.to_string();
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

    pub async fn like(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::MomentLikeReq::decode(req.body.clone())?;
        let m = self.visible_moment(me.user_id, r.moment_id).await?;
        let time_ms = unix_ms();
        let event = (!r.unlike && m.author_id != me.user_id).then(|| NewEvent {
            user_id: m.author_id,
            entry: moment_entry(moment_event::Kind::Liked, m.id, "", "", time_ms),
        });
        let event = match event {
            Some(mut ev) => {
                let by = self.core.user_name(me.user_id).await?;
                if let Some(v1::entry::Kind::Moment(e)) = &mut ev.entry.kind {
                    e.by = by.to_string();
                }
                Some(ev)
            }
            None => None,
        };
        let changed = self
            .core
            .store
            .set_like(m.id, me.user_id, !r.unlike, time_ms, event.clone())
            .await
            .map_err(gone_moment)?;
        if changed {
            if let Some(ev) = event {
                self.notifier.notify_latest(ev.user_id).await;
            }
        }
        Ok(ok(req.cmd, &v1::Empty {}))
    }

    pub async fn comment(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::MomentCommentReq::decode(req.body.clone())?;
        if r.text.trim().is_empty() || r.text.len() > MAX_COMMENT {
            return Err(LogicError::InvalidArgument(format!(
                "a comment is 1-{MAX_COMMENT} bytes"
            )));
        }
        let m = self.visible_moment(me.user_id, r.moment_id).await?;
        let time_ms = unix_ms();
        let by = self.core.user_name(me.user_id).await?;
        let event = (m.author_id != me.user_id).then(|| NewEvent {
            user_id: m.author_id,
            entry: moment_entry(moment_event::Kind::Commented, m.id, &by, &r.text, time_ms),
        });
        let id = self
            .core
            .store
            .add_comment(m.id, me.user_id, &r.text, time_ms, event.clone())
            .await
            .map_err(gone_moment)?;
        if let Some(ev) = event {
            self.notifier.notify_latest(ev.user_id).await;
        }
        Ok(ok(req.cmd, &v1::MomentCommentResp { comment_id: id }))
    }

    pub async fn delete(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::MomentDeleteReq::decode(req.body.clone())?;
        let m = self.visible_moment(me.user_id, r.moment_id).await?;
        if m.author_id != me.user_id {
            return Err(LogicError::PermissionDenied(
                "only the author may delete a moment".into(),
            ));
        }
        self.core.store.delete_moment(m.id).await?;
        Ok(ok(req.cmd, &v1::Empty {}))
    }
}

fn gone_moment(e: StoreError) -> LogicError {
    match e {
        StoreError::NotFound => LogicError::NotFound("no such moment".into()),
        e => e.into(),
    }
}
