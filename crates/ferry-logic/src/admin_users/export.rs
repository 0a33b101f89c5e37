//! A user's data as a tar archive (ustar), streamed in parts of at most [`PART`] bytes:
//! each call answers the next part and a cursor to resume from (the admin API's
//! `GET admin/users/{user}/export`, `Reply::part`). The archive holds, in this order:
//!
//! ```text
//! user.json        the user (as GET admin/users/{user} shows it, devices included)
//! friends.json     {"friends":[{"name","state","since_ms"}]}
//! groups.json      {"groups":[{"id","name","announcement","role","owner","created_ms"}]}
//! moments.json     {"moments":[{"id","text","media_ids","time_ms","likes","comments"}]}
//! reports.json     {"reports":[{"id","device_id","client_version","kind","file_name",
//!                               "length","md5","created_ms"}]}
//! messages.jsonl   one message a line (message_json): every message they sent (1:1 and
//!                  group) or received 1:1, oldest first, recalled ones left out
//! media/<id>       the bytes of every complete media they uploaded
//! reports/<id>     the bytes of every client report they sent
//! ```
//!
//! A tar header names its file's size before the bytes, so `messages.jsonl` is counted
//! first (a few thousand messages per call, answered as empty parts), up to the newest
//! message at that time; a message recalled between the count and its turn leaves blank
//! lines in its place, so the size always holds. For an export that matches one moment,
//! disable the user first.

use std::collections::BTreeMap;

use bytes::Bytes;
use ferry_proto::v1;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::AdminUsers;
use crate::api::json::message_json;
use crate::error::LogicError;

/// The most bytes one part carries.
pub(crate) const PART: usize = 512 * 1024;
/// Messages read per page.
const PAGE: u32 = 500;
/// Pages counted per call while sizing `messages.jsonl`.
const COUNT_PAGES: usize = 20;

const SMALL: &[&str] = &[
    "user.json",
    "friends.json",
    "groups.json",
    "moments.json",
    "reports.json",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
enum Phase {
    #[default]
    Small,
    Count,
    Messages,
    Media,
    Reports,
    End,
    Done,
}

/// Where an export stands (opaque to the client: JSON in the cursor).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Cursor {
    user: u64,
    name: String,
    phase: Phase,
    /// The small file being written (index into [`SMALL`]).
    index: usize,
    /// The media id or report id being written ("" between two).
    key: String,
    /// Position in the current entry: header, content, padding.
    pos: u64,
    /// The content size its header declared.
    size: u64,
    /// Messages: the last one counted or written. Reports: the last written.
    after: u64,
    /// Messages: the newest one exported.
    max: u64,
    /// Messages: the size of `messages.jsonl`.
    total: u64,
    /// Media: the last written.
    after_key: String,
}

/// A ustar header for a regular file.
fn header(name: &str, size: u64, mtime_s: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.as_bytes();
    h[..n.len().min(100)].copy_from_slice(&n[..n.len().min(100)]);
    let mut octal = |at: usize, len: usize, v: u64| {
        let s = format!("{v:0w$o}", w = len - 1);
        h[at..at + len - 1].copy_from_slice(s.as_bytes());
    };
    octal(100, 8, 0o644);
    octal(108, 8, 0);
    octal(116, 8, 0);
    octal(124, 12, size);
    octal(136, 12, mtime_s);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// The padding after `size` content bytes, to a whole 512-byte block.
fn pad(size: u64) -> u64 {
    (512 - size % 512) % 512
}

/// Room left in a part.
fn room(out: &[u8]) -> u64 {
    PART.saturating_sub(out.len()) as u64
}

/// Writes what fits of one entry whose whole content is `content` (declared `cur.size`
/// when its header went out; a shorter content is filled with `fill`). True when the
/// entry is complete.
fn emit(out: &mut Vec<u8>, cur: &mut Cursor, name: &str, content: &[u8], fill: u8) -> bool {
    if cur.pos == 0 {
        if room(out) < 512 {
            return false;
        }
        cur.size = content.len() as u64;
        out.extend_from_slice(&header(name, cur.size, now_s()));
        cur.pos = 512;
    }
    let end_content = 512 + cur.size;
    if cur.pos < end_content {
        let off = cur.pos - 512;
        let want = (cur.size - off).min(room(out));
        let from = (off as usize).min(content.len());
        let to = ((off + want) as usize).min(content.len());
        out.extend_from_slice(&content[from..to]);
        out.resize(out.len() + (want as usize - (to - from)), fill);
        cur.pos += want;
    }
    pad_out(out, cur)
}

/// Writes what fits of the current entry's padding; true when the entry is complete.
fn pad_out(out: &mut Vec<u8>, cur: &mut Cursor) -> bool {
    let end = 512 + cur.size + pad(cur.size);
    if cur.pos >= 512 + cur.size && cur.pos < end {
        let n = (end - cur.pos).min(room(out));
        out.resize(out.len() + n as usize, 0);
        cur.pos += n;
    }
    cur.pos == end
}

fn now_s() -> u64 {
    (crate::core::unix_ms() / 1000).max(0) as u64
}

fn json_bytes(v: &Value) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).unwrap_or_default();
    b.push(b'\n');
    b
}

fn line(m: &v1::Message) -> Vec<u8> {
    let mut b = serde_json::to_vec(&message_json(m)).unwrap_or_default();
    b.push(b'\n');
    b
}

impl AdminUsers {
    /// The next part of `name`'s export after `cursor` (empty: the first), and the
    /// cursor of the part after it (empty: this was the last).
    pub async fn export_part(
        &self,
        name: &str,
        cursor: &[u8],
    ) -> Result<(Bytes, Vec<u8>), LogicError> {
        let mut cur: Cursor = if cursor.is_empty() {
            let user = self.resolve(name).await?;
            Cursor {
                user: user.id,
                name: user.name,
                ..Default::default()
            }
        } else {
            serde_json::from_slice(cursor)
                .map_err(|_| LogicError::BadRequest("not an export cursor".into()))?
        };
        // The user must still be the one the export began with.
        let still = self.core.store.user_info(cur.user).await?;
        if cur.name != name || still.is_none_or(|u| u.name != name) {
            return Err(LogicError::NotFound(format!(
                "{name} is not the user this export began with"
            )));
        }
        let mut out: Vec<u8> = Vec::with_capacity(PART);
        while room(&out) > 0 && cur.phase != Phase::Done {
            let before = (out.len(), cur.phase, cur.pos, cur.after);
            match cur.phase {
                Phase::Small => {
                    if cur.index >= SMALL.len() {
                        cur.phase = Phase::Count;
                        continue;
                    }
                    let content = self.small_file(&cur, cur.index).await?;
                    let file = SMALL[cur.index];
                    if emit(&mut out, &mut cur, file, &content, b' ') {
                        cur.index += 1;
                        cur.pos = 0;
                    }
                }
                Phase::Count => {
                    if self.count_messages(&mut cur).await? {
                        cur.phase = Phase::Messages;
                        cur.after = 0;
                        cur.pos = 0;
                    } else {
                        // Counting takes calls of its own (answered as parts with what
                        // was written before, maybe none): it goes on at the next call.
                        break;
                    }
                }
                Phase::Messages => {
                    if self.emit_messages(&mut out, &mut cur).await? {
                        cur.phase = Phase::Media;
                        cur.pos = 0;
                        cur.key.clear();
                    }
                }
                Phase::Media => {
                    if self.emit_media(&mut out, &mut cur).await? {
                        cur.phase = Phase::Reports;
                        cur.pos = 0;
                        cur.key.clear();
                        cur.after = 0;
                    }
                }
                Phase::Reports => {
                    if self.emit_report(&mut out, &mut cur).await? {
                        cur.phase = Phase::End;
                        cur.pos = 0;
                    }
                }
                Phase::End => {
                    // Two zero blocks end the archive.
                    let n = (1024 - cur.pos).min(room(&out));
                    out.resize(out.len() + n as usize, 0);
                    cur.pos += n;
                    if cur.pos == 1024 {
                        cur.phase = Phase::Done;
                    }
                }
                Phase::Done => {}
            }
            if (out.len(), cur.phase, cur.pos, cur.after) == before {
                // No room for the next header: the part is full.
                break;
            }
        }
        let next = if cur.phase == Phase::Done {
            Vec::new()
        } else {
            serde_json::to_vec(&cur).map_err(|e| LogicError::Internal(e.to_string()))?
        };
        Ok((Bytes::from(out), next))
    }

    /// One of the JSON files, whole.
    async fn small_file(&self, cur: &Cursor, index: usize) -> Result<Vec<u8>, LogicError> {
        let store = &self.core.store;
        let user = cur.user;
        let v = match SMALL[index] {
            "user.json" => serde_json::to_value(self.get(&cur.name).await?)
                .map_err(|e| LogicError::Internal(e.to_string()))?,
            "friends.json" => {
                let mut friends = Vec::new();
                for row in store.friends(user, 0).await?.rows {
                    let Ok(peer) = self.core.user_name(row.peer_id).await else {
                        continue;
                    };
                    let state = v1::FriendState::try_from(row.state)
                        .map(|s| s.as_str_name().to_ascii_lowercase())
                        .unwrap_or_default();
                    friends.push(json!({
                        "name": &*peer,
                        "state": state,
                        "since_ms": row.updated_ms,
                    }));
                }
                json!({ "friends": friends })
            }
            "groups.json" => {
                let mut groups = Vec::new();
                for (g, m) in store.user_groups(user).await? {
                    let owner = self
                        .core
                        .user_name(g.owner_id)
                        .await
                        .map(|n| n.to_string())
                        .unwrap_or_default();
                    let role = v1::GroupRole::try_from(m.role)
                        .map(|r| r.as_str_name().to_ascii_lowercase())
                        .unwrap_or_default();
                    groups.push(json!({
                        "id": g.id.to_string(),
                        "name": g.name,
                        "announcement": g.announcement,
                        "role": role,
                        "owner": owner,
                        "created_ms": g.created_ms,
                    }));
                }
                json!({ "groups": groups })
            }
            "moments.json" => {
                let mut moments = Vec::new();
                let mut before = 0;
                // Bounded: each round moves `before` down.
                for _ in 0..100_000 {
                    let page = store.timeline(&[user], before, 200).await?;
                    let Some(last) = page.last() else { break };
                    before = last.id;
                    let ids: Vec<u64> = page.iter().map(|m| m.id).collect();
                    let mut likes: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
                    let mut comments: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
                    for r in store.reactions(&ids).await? {
                        let by = self
                            .core
                            .user_name(r.user_id)
                            .await
                            .map(|n| n.to_string())
                            .unwrap_or_default();
                        if r.comment_id == 0 {
                            likes.entry(r.moment_id).or_default().push(json!(by));
                        } else {
                            comments.entry(r.moment_id).or_default().push(json!({
                                "by": by, "text": r.text, "time_ms": r.time_ms,
                            }));
                        }
                    }
                    for m in page {
                        moments.push(json!({
                            "id": m.id.to_string(),
                            "text": m.text,
                            "media_ids": m.media_ids,
                            "time_ms": m.time_ms,
                            "likes": likes.remove(&m.id).unwrap_or_default(),
                            "comments": comments.remove(&m.id).unwrap_or_default(),
                        }));
                    }
                }
                json!({ "moments": moments })
            }
            _ => {
                let mut reports = Vec::new();
                let mut after = 0;
                for _ in 0..100_000 {
                    let page = store.user_reports(user, after, 500).await?;
                    let Some(last) = page.last() else { break };
                    after = last.id;
                    reports.extend(page.into_iter().map(|r| {
                        json!({
                            "id": r.id,
                            "device_id": r.device_id,
                            "client_version": r.client_version,
                            "kind": r.kind,
                            "file_name": r.file_name,
                            "length": r.length,
                            "md5": r.md5,
                            "created_ms": r.created_ms,
                        })
                    }));
                }
                json!({ "reports": reports })
            }
        };
        Ok(json_bytes(&v))
    }

    /// Sizes `messages.jsonl` a few pages at a time; true when it is counted.
    async fn count_messages(&self, cur: &mut Cursor) -> Result<bool, LogicError> {
        for _ in 0..COUNT_PAGES {
            let page = self
                .core
                .store
                .user_messages(cur.user, cur.after, PAGE)
                .await?;
            for m in &page {
                if let Some(body) = &m.body {
                    cur.total += line(body).len() as u64;
                }
                cur.after = m.msg_id;
                cur.max = m.msg_id;
            }
            if page.len() < PAGE as usize {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Writes what fits of `messages.jsonl`; true when it is complete.
    async fn emit_messages(&self, out: &mut Vec<u8>, cur: &mut Cursor) -> Result<bool, LogicError> {
        if cur.pos == 0 {
            if room(out) < 512 {
                return Ok(false);
            }
            cur.size = cur.total;
            out.extend_from_slice(&header("messages.jsonl", cur.size, now_s()));
            cur.pos = 512;
        }
        while cur.pos < 512 + cur.size && room(out) > 0 {
            let page = if cur.after < cur.max {
                self.core
                    .store
                    .user_messages(cur.user, cur.after, PAGE)
                    .await?
            } else {
                Vec::new()
            };
            let page: Vec<_> = page.into_iter().filter(|m| m.msg_id <= cur.max).collect();
            if page.is_empty() {
                // Recalled since counted: blank lines keep the declared size.
                let n = (512 + cur.size - cur.pos).min(room(out));
                out.resize(out.len() + n as usize, b'\n');
                cur.pos += n;
                cur.after = cur.max;
                break;
            }
            for m in page {
                let Some(body) = &m.body else {
                    cur.after = m.msg_id;
                    continue;
                };
                let l = line(body);
                let left = 512 + cur.size - cur.pos;
                if l.len() as u64 > room(out) && !out.is_empty() {
                    return Ok(false);
                }
                let n = (l.len() as u64).min(left) as usize;
                out.extend_from_slice(&l[..n]);
                cur.pos += n as u64;
                cur.after = m.msg_id;
                if cur.pos == 512 + cur.size {
                    break;
                }
            }
        }
        Ok(pad_out(out, cur))
    }

    /// Writes what fits of the media files; true when every one is written.
    async fn emit_media(&self, out: &mut Vec<u8>, cur: &mut Cursor) -> Result<bool, LogicError> {
        let Some(media) = self.core.media_store().cloned() else {
            return Ok(true);
        };
        if cur.key.is_empty() {
            // The next complete media after the last written.
            let mut after = cur.after_key.clone();
            loop {
                let page = media.uploaded_by(cur.user, &after, 50).await?;
                let Some(last) = page.last() else {
                    return Ok(true);
                };
                after = last.id.clone();
                if let Some(m) = page.into_iter().find(|m| m.complete) {
                    cur.key = m.id;
                    cur.pos = 0;
                    break;
                }
            }
        }
        let name = format!("media/{}", cur.key);
        if cur.pos == 0 {
            if room(out) < 512 {
                return Ok(false);
            }
            let size = media.meta(&cur.key).await?.map(|m| m.size).unwrap_or(0);
            cur.size = size;
            out.extend_from_slice(&header(&name, size, now_s()));
            cur.pos = 512;
        }
        if cur.pos < 512 + cur.size {
            let off = cur.pos - 512;
            let want = (cur.size - off).min(room(out)) as usize;
            // A media deleted meanwhile: zeros keep the declared size.
            let bytes = media.read(&cur.key, off, want).await.unwrap_or_default();
            let n = bytes.len().min(want);
            out.extend_from_slice(&bytes[..n]);
            out.resize(out.len() + (want - n), 0);
            cur.pos += want as u64;
        }
        if pad_out(out, cur) {
            cur.after_key = std::mem::take(&mut cur.key);
            cur.pos = 0;
        }
        Ok(false)
    }

    /// Writes what fits of the report files; true when every one is written.
    async fn emit_report(&self, out: &mut Vec<u8>, cur: &mut Cursor) -> Result<bool, LogicError> {
        if cur.key.is_empty() {
            let page = self.core.store.user_reports(cur.user, cur.after, 1).await?;
            let Some(r) = page.first() else {
                return Ok(true);
            };
            cur.key = r.id.to_string();
            cur.pos = 0;
        }
        let id: u64 = cur.key.parse().unwrap_or(0);
        let data = self
            .core
            .store
            .report(id)
            .await?
            .map(|(_, d)| d)
            .unwrap_or_default();
        if emit(out, cur, &format!("reports/{id}"), &data, 0) {
            cur.after = id;
            cur.key.clear();
            cur.pos = 0;
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_ustar_with_a_valid_checksum() {
        let h = header("media/abc", 1234, 1_700_000_000);
        assert_eq!(&h[257..263], b"ustar\0");
        assert_eq!(&h[124..135], b"00000002322");
        let stored =
            u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap().trim(), 8).unwrap();
        let mut copy = h;
        copy[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, copy.iter().map(|&b| u32::from(b)).sum::<u32>());
        assert_eq!(pad(0), 0);
        assert_eq!(pad(1), 511);
        assert_eq!(pad(512), 0);
    }
}
