//! Media as messages and moments use it: an upload must be the sender's own, and
//! referring to it grants its readers — the recipient, the group's members, or the
//! moment's audience. Below the media handlers (`media.rs`) and the domains that attach
//! media (inbox, groups, moments), so those never reach into each other.

use std::sync::Arc;

use ferry_proto::v1;
use ferry_store::{valid_media_id, MediaMeta, StoreError};

use crate::core::Core;
use crate::error::LogicError;

/// A media store failure as the client sees it.
pub(crate) fn store_err(e: StoreError) -> LogicError {
    match e {
        StoreError::NotFound => LogicError::NotFound("no such media".into()),
        StoreError::Conflict => {
            LogicError::InvalidArgument("the upload is being finished: no more chunks".into())
        }
        StoreError::ChunkMismatch => LogicError::InvalidArgument(
            "other bytes than the ones already acknowledged at this offset: refused, \
             the stored bytes stay"
                .into(),
        ),
        e => e.into(),
    }
}

/// Checks and grants of uploads referred to by messages and moments.
pub(crate) struct Attachments {
    core: Arc<Core>,
}

impl Attachments {
    pub fn new(core: Arc<Core>) -> Attachments {
        Attachments { core }
    }

    /// An upload of the caller's, still in progress.
    pub async fn own_upload(&self, user: u64, id: &str) -> Result<MediaMeta, LogicError> {
        let meta = self
            .core
            .media()?
            .meta(id)
            .await
            .map_err(store_err)?
            .filter(|m| m.uploader == user)
            .ok_or_else(|| LogicError::NotFound("no such upload".into()))?;
        Ok(meta)
    }

    /// Checks that `user` uploaded the media a message refers to (and its thumbnail),
    /// lets `users` and the members of `groups` read them, and returns the reference as
    /// the message will carry it (size and type from the server's records).
    pub async fn to_message(
        &self,
        user: u64,
        media: Option<Box<v1::MediaRef>>,
        users: &[u64],
        groups: &[u64],
    ) -> Result<Option<Box<v1::MediaRef>>, LogicError> {
        let Some(mut m) = media else {
            return Ok(None);
        };
        if m.file_name.len() > 255 || m.file_name.chars().any(char::is_control) {
            return Err(LogicError::InvalidArgument(
                "file name: at most 255 printable bytes".into(),
            ));
        }
        let store = self.core.media()?;
        let meta = self.own_upload(user, &m.media_id).await?;
        if !m.thumb_id.is_empty() {
            self.own_upload(user, &m.thumb_id).await?;
            store
                .grant(&m.thumb_id, users, groups, &[])
                .await
                .map_err(store_err)?;
        }
        store
            .grant(&m.media_id, users, groups, &[])
            .await
            .map_err(store_err)?;
        m.kind = meta.kind;
        m.size = meta.size;
        m.content_type = if meta.complete {
            meta.content_type
        } else {
            meta.declared_type
        };
        if meta.complete && meta.width > 0 {
            (m.width, m.height) = (meta.width, meta.height);
        }
        Ok(Some(m))
    }

    /// The media a new message carries, and what it forwards: the original's media for
    /// a forward ([`Attachments::forward`]), else the sender's own upload
    /// ([`Attachments::to_message`]); `users` and the members of `groups` may read it.
    pub async fn of_send(
        &self,
        user: u64,
        media: Option<Box<v1::MediaRef>>,
        fwd: Option<crate::conv::Forward>,
        users: &[u64],
        groups: &[u64],
    ) -> Result<(Option<Box<v1::MediaRef>>, Option<Box<v1::Forwarded>>), LogicError> {
        Ok(match fwd {
            Some(f) => (
                self.forward(f.media, users, groups).await?,
                Some(Box::new(f.forwarded)),
            ),
            None => (self.to_message(user, media, users, groups).await?, None),
        })
    }

    /// A forwarded message's media (the original's reference, checked by the caller:
    /// the forwarder may read the original): lets `users` and the members of `groups`
    /// read it and its thumbnail too. No re-upload, no ownership check — reading the
    /// original is what entitles a user to pass it on.
    pub async fn forward(
        &self,
        media: Option<Box<v1::MediaRef>>,
        users: &[u64],
        groups: &[u64],
    ) -> Result<Option<Box<v1::MediaRef>>, LogicError> {
        let Some(m) = media else {
            return Ok(None);
        };
        let store = self.core.media()?;
        let gone = |e: StoreError| match e {
            StoreError::NotFound => {
                LogicError::NotFound("the forwarded message's media is no longer stored".into())
            }
            e => store_err(e),
        };
        for id in [&m.media_id, &m.thumb_id] {
            if !id.is_empty() {
                store.grant(id, users, groups, &[]).await.map_err(gone)?;
            }
        }
        Ok(Some(m))
    }

    /// Checks that every media of a moment is the author's own upload, and lets the
    /// moment's audience read them (and their thumbnails). Called before the moment is
    /// stored; a grant to a moment that was then not stored lets nobody in.
    pub async fn to_moment(
        &self,
        author: u64,
        moment_id: u64,
        media_ids: &[String],
    ) -> Result<(), LogicError> {
        if media_ids.is_empty() {
            return Ok(());
        }
        let store = self.core.media()?;
        let mut metas = Vec::with_capacity(media_ids.len());
        for id in media_ids {
            if !valid_media_id(id) {
                return Err(LogicError::InvalidArgument(format!(
                    "{id:?} is not a media id"
                )));
            }
            metas.push(self.own_upload(author, id).await?);
        }
        for m in metas {
            store
                .grant(&m.id, &[], &[], &[moment_id])
                .await
                .map_err(store_err)?;
        }
        Ok(())
    }
}
