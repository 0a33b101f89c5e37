//! Command numbers: the byte at offset 3 of every long-link frame, and the routing key
//! of every request on the internal bus.
//!
//! A response carries its request's command with the high bit set (`cmd | 0x80`) and
//! the request's id; a failed request is answered by [`ERROR`] with the request's id.
//! Pushes from the server use ids in `0x40..0x7F` and request id 0.

/// Log in with a device token. Must be the first frame on a link.
pub const LOGIN: u8 = 0x01;
/// Keep-alive; the server answers `HEARTBEAT | RESPONSE`.
pub const HEARTBEAT: u8 = 0x02;
/// Send a message (`SendMsg` → `SendAck`).
pub const SEND: u8 = 0x03;
/// Fetch inbox entries after a synckey (`SyncReq` → `SyncResp`). Also `POST /v1/newsync`.
pub const SYNC: u8 = 0x04;
/// Fetch a group's log after a cursor (`GroupSyncReq` → `GroupSyncResp`).
pub const GROUP_SYNC: u8 = 0x05;
/// Recall a message (`RecallReq` → `Empty`).
pub const RECALL: u8 = 0x06;
/// Read receipt (`ReadReq` → `Empty`).
pub const READ: u8 = 0x07;
/// Typing indicator (`Typing` → `Empty`); never stored.
pub const TYPING: u8 = 0x08;
/// Encrypted link: the Noise IK handshake carrying LOGIN (`HELLO | 0x80` answers it).
/// See [`crate::secure`].
pub const HELLO: u8 = 0x09;
/// Encrypted link: a sealed record of the plain frame stream (request id 0).
pub const SEALED: u8 = 0x0A;
/// Encrypted link, resumed: a resumption ticket and the LOGIN sealed under the ticket's
/// secret, instead of a Noise handshake (`RESUME | 0x80` answers it). See
/// [`crate::resume`].
pub const RESUME: u8 = 0x0B;

/// Short-link only: `POST /v1/register`.
pub const REGISTER: u8 = 0x10;
/// Short-link only: `POST /v1/auth`.
pub const AUTH: u8 = 0x11;
/// `POST /v1/logout`.
pub const LOGOUT: u8 = 0x12;
/// `POST /v1/user/find`.
pub const FIND_USER: u8 = 0x13;
/// `POST /v1/friends/request`.
pub const FRIEND_REQUEST: u8 = 0x14;
/// `POST /v1/friends/accept`.
pub const FRIEND_ACCEPT: u8 = 0x15;
/// `POST /v1/friends/decline`.
pub const FRIEND_DECLINE: u8 = 0x16;
/// `POST /v1/friends/remove`.
pub const FRIEND_REMOVE: u8 = 0x17;
/// `POST /v1/friends/block`.
pub const FRIEND_BLOCK: u8 = 0x18;
/// `POST /v1/friends/unblock`.
pub const FRIEND_UNBLOCK: u8 = 0x19;
/// `POST /v1/friends/list`.
pub const FRIEND_LIST: u8 = 0x1A;
/// `POST /v1/avatar/set`.
pub const AVATAR_SET: u8 = 0x1B;
/// `GET /v1/avatar/{username}`.
pub const AVATAR_GET: u8 = 0x1C;
/// `POST /v1/report`.
pub const REPORT: u8 = 0x1D;
/// `POST /v1/moments/post`.
pub const MOMENT_POST: u8 = 0x1E;
/// `POST /v1/moments/timeline`.
pub const MOMENT_TIMELINE: u8 = 0x1F;
/// `POST /v1/moments/like`.
pub const MOMENT_LIKE: u8 = 0x20;
/// `POST /v1/moments/comment`.
pub const MOMENT_COMMENT: u8 = 0x21;
/// `POST /v1/moments/delete`.
pub const MOMENT_DELETE: u8 = 0x22;
/// `POST /v1/group/create`.
pub const GROUP_CREATE: u8 = 0x23;
/// `POST /v1/group/add`.
pub const GROUP_ADD: u8 = 0x24;
/// `POST /v1/group/remove`.
pub const GROUP_REMOVE: u8 = 0x25;
/// `POST /v1/group/leave`.
pub const GROUP_LEAVE: u8 = 0x26;
/// `POST /v1/group/info`.
pub const GROUP_INFO: u8 = 0x27;
/// `POST /v1/group/list`.
pub const GROUP_LIST: u8 = 0x28;
/// `POST /v1/group/update`.
pub const GROUP_UPDATE: u8 = 0x29;
/// `POST /v1/group/role`.
pub const GROUP_ROLE: u8 = 0x2A;
/// `POST /v1/group/reads`.
pub const GROUP_READS: u8 = 0x2B;
/// `POST /v1/media/create`.
pub const MEDIA_CREATE: u8 = 0x2C;
/// `POST /v1/media/chunk`.
pub const MEDIA_CHUNK: u8 = 0x2D;
/// `POST /v1/media/status`.
pub const MEDIA_STATUS: u8 = 0x2E;
/// `POST /v1/media/finish`.
pub const MEDIA_FINISH: u8 = 0x2F;
/// `GET /v1/media/{media_id}` (with `Range`).
pub const MEDIA_GET: u8 = 0x30;
/// `POST /v1/endpoints`: the endpoint list for this client (`EndpointsReq` →
/// `EndpointsResp`).
pub const ENDPOINTS: u8 = 0x36;
/// `POST /v1/endpoints/report`: connect timings (`EndpointReportReq` →
/// `EndpointReportResp`).
pub const ENDPOINT_REPORT: u8 = 0x37;
/// `POST /v1/auth/refresh`: a new token for the caller's device (`AuthResp`).
pub const AUTH_REFRESH: u8 = 0x38;
/// `POST /v1/password`: change the password, revoking every session (`AuthResp`).
pub const PASSWORD_CHANGE: u8 = 0x39;

/// Server push: the inbox grew (`Notify`).
pub const NOTIFY: u8 = 0x40;
/// Server push: the link is about to be closed (`Kick`).
pub const KICK: u8 = 0x41;
/// Server push: a group's log grew (`GroupNotify`).
pub const GROUP_NOTIFY: u8 = 0x42;
/// Server push: a peer is typing (`Typing`).
pub const TYPING_PUSH: u8 = 0x43;

/// Failure response to any request (`Error`), with the request's id.
pub const ERROR: u8 = 0x7F;
/// Bit set on a response command.
pub const RESPONSE: u8 = 0x80;

/// The response command for a request command.
pub const fn response(cmd: u8) -> u8 {
    cmd | RESPONSE
}

/// The short-link paths (`/v1/<path>`) and the commands they carry. `GET` is allowed
/// only for [`AVATAR_GET`] and [`MEDIA_GET`]; every other path takes `POST`.
pub const SHORT_LINK: &[(&str, u8)] = &[
    ("register", REGISTER),
    ("auth", AUTH),
    ("auth/refresh", AUTH_REFRESH),
    ("password", PASSWORD_CHANGE),
    ("newsync", SYNC),
    ("logout", LOGOUT),
    ("user/find", FIND_USER),
    ("friends/request", FRIEND_REQUEST),
    ("friends/accept", FRIEND_ACCEPT),
    ("friends/decline", FRIEND_DECLINE),
    ("friends/remove", FRIEND_REMOVE),
    ("friends/block", FRIEND_BLOCK),
    ("friends/unblock", FRIEND_UNBLOCK),
    ("friends/list", FRIEND_LIST),
    ("avatar/set", AVATAR_SET),
    ("avatar", AVATAR_GET),
    ("report", REPORT),
    ("moments/post", MOMENT_POST),
    ("moments/timeline", MOMENT_TIMELINE),
    ("moments/like", MOMENT_LIKE),
    ("moments/comment", MOMENT_COMMENT),
    ("moments/delete", MOMENT_DELETE),
    ("group/create", GROUP_CREATE),
    ("group/add", GROUP_ADD),
    ("group/remove", GROUP_REMOVE),
    ("group/leave", GROUP_LEAVE),
    ("group/info", GROUP_INFO),
    ("group/list", GROUP_LIST),
    ("group/update", GROUP_UPDATE),
    ("group/role", GROUP_ROLE),
    ("group/reads", GROUP_READS),
    ("group/sync", GROUP_SYNC),
    ("recall", RECALL),
    ("read", READ),
    ("media/create", MEDIA_CREATE),
    ("media/chunk", MEDIA_CHUNK),
    ("media/status", MEDIA_STATUS),
    ("media/finish", MEDIA_FINISH),
    ("media", MEDIA_GET),
    ("endpoints", ENDPOINTS),
    ("endpoints/report", ENDPOINT_REPORT),
];

/// The command for a short-link path (without `/v1/`).
pub fn by_path(path: &str) -> Option<u8> {
    SHORT_LINK.iter().find(|(p, _)| *p == path).map(|(_, c)| *c)
}

/// Commands reached with `GET /v1/<path>/<argument>`.
pub const GET_WITH_ARGUMENT: &[u8] = &[AVATAR_GET, MEDIA_GET];

/// Commands whose request carries a file (an image, a log): they get the larger upload
/// body limit on the short link.
pub const UPLOADS: &[u8] = &[AVATAR_SET, REPORT, MEDIA_CHUNK];

/// A short, stable name for logs and metrics.
pub fn name(cmd: u8) -> &'static str {
    match cmd {
        LOGIN => "login",
        HEARTBEAT => "heartbeat",
        SEND => "send",
        SYNC => "sync",
        GROUP_SYNC => "group_sync",
        RECALL => "recall",
        READ => "read",
        TYPING => "typing",
        NOTIFY => "notify",
        KICK => "kick",
        GROUP_NOTIFY => "group_notify",
        TYPING_PUSH => "typing_push",
        ERROR => "error",
        c if c & RESPONSE != 0 => "response",
        c => SHORT_LINK
            .iter()
            .find(|(_, k)| *k == c)
            .map(|(p, _)| *p)
            .unwrap_or("unknown"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths_and_commands_are_unique() {
        let mut cmds: Vec<u8> = super::SHORT_LINK.iter().map(|(_, c)| *c).collect();
        cmds.sort();
        let n = cmds.len();
        cmds.dedup();
        assert_eq!(cmds.len(), n);
        assert_eq!(super::by_path("friends/list"), Some(super::FRIEND_LIST));
        assert_eq!(super::name(super::SYNC), "sync");
        assert_eq!(super::name(super::MOMENT_LIKE), "moments/like");
        assert_eq!(super::by_path("nope"), None);
    }
}
