//! What a device keeps between runs: its id, its token and its synckey.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How many `client_msg_id`s a device reserves in its saved state at a time.
pub const MSG_ID_BLOCK: u64 = 1024;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeviceState {
    /// Picked once, at random, and kept.
    pub device_id: String,
    /// Empty until the first auth.
    pub token: String,
    /// When the token expires, unix ms (0: never or unknown). A long-link login renews a
    /// token past half its life; an expired one is replaced by signing in again.
    #[serde(default)]
    pub token_expires_ms: i64,
    pub user_id: u64,
    /// The highest inbox seq applied on this device.
    pub synckey: u64,
    /// Per group: the highest gseq of the group's log applied on this device.
    #[serde(default)]
    pub group_cursors: std::collections::BTreeMap<u64, u64>,
    /// The endpoint of the last link that logged in (`tcp://IP:PORT` or
    /// `http://IP:PORT`): tried first next time.
    #[serde(default)]
    pub last_endpoint: String,
    /// The server's endpoint list, best first, and its version.
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub endpoints_version: u64,
    /// The smart heartbeat learnt per network.
    #[serde(default)]
    pub heartbeats: std::collections::BTreeMap<String, crate::smart::HeartbeatState>,
    /// The session resumption ticket of the last encrypted login, if any
    /// (docs/protocol.md 1.5): the next link resumes with it instead of a full Noise
    /// handshake. Worth as much as the token; kept beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumption: Option<StoredTicket>,
    /// The `client_msg_id`s below this may have been used: after a restart the device
    /// counts on from here (0: none picked yet).
    #[serde(default)]
    pub msg_ids_upto: u64,
    /// The next `client_msg_id` to give out, in memory only (0: start at
    /// `msg_ids_upto`).
    #[serde(skip)]
    pub next_msg_id: u64,
}

/// A resumption ticket as kept on the device (hex, like the token).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTicket {
    /// The ticket, opaque (hex).
    pub ticket: String,
    /// The resumption secret (hex, 32 bytes).
    pub secret: String,
    /// When the server stops taking it, unix ms.
    pub expires_ms: i64,
}

impl StoredTicket {
    /// What a handshake answer handed out (its `TICKET` frame); `None` when it carries no
    /// usable ticket.
    pub fn from_login(r: &ferry_proto::v1::Resumption) -> Option<StoredTicket> {
        (r.secret.len() == ferry_proto::resume::SECRET_LEN && !r.ticket.is_empty()).then(|| {
            StoredTicket {
                ticket: hex::encode(&r.ticket),
                secret: hex::encode(&r.secret),
                expires_ms: r.expires_ms,
            }
        })
    }

    /// The ticket to resume with at `now_ms`; `None` when expired (or unreadable).
    pub(crate) fn usable(&self, now_ms: i64) -> Option<crate::transport::Ticket> {
        if now_ms >= self.expires_ms {
            return None;
        }
        let ticket = hex::decode(&self.ticket).ok()?;
        let secret = hex::decode(&self.secret).ok()?.try_into().ok()?;
        Some(crate::transport::Ticket { ticket, secret })
    }
}

impl DeviceState {
    pub fn fresh() -> Self {
        let mut id = [0u8; 16];
        rand::Rng::fill(&mut rand::rng(), &mut id);
        DeviceState {
            device_id: hex::encode(id),
            ..Default::default()
        }
    }

    /// The next `client_msg_id` of this device (docs/protocol.md §2, *Sending*), and
    /// whether the state must be saved before it is used: a counter from a random
    /// start below 2^47, so every id fits a 7-byte varint and no two of the device's
    /// messages share one. Ids are reserved [`MSG_ID_BLOCK`] at a time in the saved
    /// state before the first of them is used, so after a crash the device goes on
    /// above them and never reuses an id a message may already carry (the server would
    /// take the new message for a retry of that one).
    pub fn take_msg_id(&mut self) -> (u64, bool) {
        if self.next_msg_id == 0 {
            self.next_msg_id = self.msg_ids_upto;
        }
        if self.next_msg_id == 0 || self.next_msg_id >= crate::MAX_CLIENT_MSG_ID {
            self.next_msg_id = rand::random_range(1..1u64 << 47);
            self.msg_ids_upto = self.next_msg_id;
        }
        let id = self.next_msg_id;
        self.next_msg_id += 1;
        let save = id >= self.msg_ids_upto;
        if save {
            self.msg_ids_upto = id + MSG_ID_BLOCK;
        }
        (id, save)
    }

    fn file(dir: &Path) -> PathBuf {
        dir.join("device.json")
    }

    /// Loads the state kept in `dir`, or a fresh one.
    pub fn load(dir: &Path) -> std::io::Result<Self> {
        match std::fs::read(Self::file(dir)) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::fresh()),
            Err(e) => Err(e),
        }
    }

    /// Writes the state atomically (temp file + rename).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join("device.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).unwrap_or_default())?;
        std::fs::rename(tmp, Self::file(dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_count_up_below_2_48_and_a_restart_skips_the_reserved_ones() {
        let mut s = DeviceState::fresh();
        let (first, save) = s.take_msg_id();
        assert!(save, "the first id reserves a block");
        assert!((1..1u64 << 47).contains(&first));
        for i in 1..MSG_ID_BLOCK {
            assert_eq!(s.take_msg_id(), (first + i, false));
        }
        assert_eq!(
            s.take_msg_id(),
            (first + MSG_ID_BLOCK, true),
            "the next block"
        );
        // A crash: what was saved is the last reservation; the ids go on above it.
        let saved: DeviceState = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        let mut after = saved;
        let (id, save) = after.take_msg_id();
        assert_eq!(id, first + 2 * MSG_ID_BLOCK);
        assert!(save);
        // At the top of the range a new random start.
        after.next_msg_id = crate::MAX_CLIENT_MSG_ID;
        let (id, _) = after.take_msg_id();
        assert!(id < 1u64 << 47 && id > 0);
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = DeviceState::load(dir.path()).unwrap();
        assert_eq!(fresh.device_id.len(), 32);
        let mut s = fresh.clone();
        s.synckey = 42;
        s.token = "t".into();
        s.save(dir.path()).unwrap();
        let back = DeviceState::load(dir.path()).unwrap();
        assert_eq!(
            (back.device_id, back.synckey, back.token),
            (fresh.device_id, 42, "t".into())
        );
        assert_eq!(back.resumption, None);
    }

    #[test]
    fn a_resumption_ticket_is_kept_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DeviceState::fresh();
        let given = ferry_proto::v1::Resumption {
            ticket: vec![1, 2, 3].into(),
            secret: vec![9; 32].into(),
            expires_ms: 5_000,
        };
        s.resumption = StoredTicket::from_login(&given);
        s.save(dir.path()).unwrap();
        let back = DeviceState::load(dir.path()).unwrap();
        let t = back.resumption.clone().unwrap();
        let usable = t.usable(4_999).unwrap();
        assert_eq!((usable.ticket, usable.secret), (vec![1, 2, 3], [9u8; 32]));
        assert!(t.usable(5_000).is_none());
        // A secret of the wrong size is no ticket.
        let bad = ferry_proto::v1::Resumption {
            secret: vec![9; 31].into(),
            ..given
        };
        assert_eq!(StoredTicket::from_login(&bad), None);
    }
}
