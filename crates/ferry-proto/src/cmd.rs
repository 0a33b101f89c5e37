//! The command table: every command's number (the byte at offset 3 of every long-link
//! frame, and the routing key of every request on the internal bus), its short-link path
//! and HTTP method, its request and response types, its body limit and how it
//! authenticates — written once, in [`commands!`], from which the constants
//! (`cmd::SEND` …), [`COMMANDS`], [`by_path`], [`path`], [`name`] and the gateway's
//! per-command rules ([`Command::body_limit`], [`Command::may_skip_seal`] …) all derive.
//! Adding a command is one entry here (and its handler in logic).
//!
//! A response carries its request's command with the high bit set (`cmd | 0x80`) and
//! the request's id; a failed request is answered by [`ERROR`] with the request's id.
//! Pushes from the server use ids in `0x40..0x7F` and request id 0.

/// What a command is, which says who answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A client request: forwarded to logic, answered `cmd | 0x80` or [`ERROR`].
    Request,
    /// LOGIN: the first frame of every long link; forwarded to logic, its token in its
    /// body.
    Login,
    /// The link protocol itself, handled by the gateway and never forwarded: the
    /// heartbeat, and the secure layer's handshakes, records and tickets.
    Link,
    /// A server push (request id 0).
    Push,
    /// The failure answer to any request.
    Error,
}

/// How a request proves who sends it. The gateway forwards the credential; logic checks
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Nothing: anyone may ask (register, auth by password, endpoint lists, avatars).
    None,
    /// A session: the long link's login, or the short link's bearer token (inside the
    /// seal).
    Token,
    /// A session, or instead the key of the upload the body belongs to: such a request
    /// may come unsealed and without a token (docs/protocol.md, Media, *The upload key*).
    TokenOrUploadKey,
    /// The token is in the body (LOGIN's `LoginReq.token`).
    TokenInBody,
    /// An API token (the admin token, or a bot's token), as `Authorization: Bearer` on
    /// the JSON APIs for other systems: logic checks it per route.
    ApiToken,
}

/// The short link's HTTP method for a command with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `POST /v1/<path>` with a protobuf body (sealed unless plaintext is allowed).
    Post,
    /// `GET /v1/<path>/<argument>`: no body, never sealed; the answer is the resource's
    /// raw bytes (an image, a media range), not a protobuf.
    Get,
}

/// The largest short-link body a command takes, before any operator override
/// (`gateway.body_limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLimit {
    /// `gateway.max_http_body_bytes` (64 KiB).
    Default,
    /// `gateway.max_upload_bytes` (3 MiB): the request carries a file (an image, a log,
    /// a media chunk).
    Upload,
    /// This many bytes: requests that never need more (credentials), so a flood of
    /// large bodies is cut before anything reads them.
    Bytes(usize),
}

/// One row of the command table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    pub id: u8,
    /// The constant's name (`SEND`), as docs/protocol.md's command table names it.
    pub constant: &'static str,
    /// A short, stable name for logs and metrics.
    pub name: &'static str,
    pub kind: Kind,
    /// The short-link path (`/v1/<path>`), for commands the short link carries.
    pub path: Option<&'static str>,
    pub method: Method,
    /// The request body's type in `proto/ferry.proto` ("" for none or raw bytes), for
    /// documentation and tests.
    pub request: &'static str,
    /// The answer body's type ("" for none or raw bytes).
    pub response: &'static str,
    pub auth: Auth,
    pub body_limit: BodyLimit,
    /// Logic needs the addresses the client came in on (the gateway's address it
    /// connected to, and every address the gateway listens on): endpoint lists.
    pub addresses: bool,
    /// A logged-in long link may send it. False for what only the short link serves:
    /// the password and token requests that make or end a session (`register`, `auth`,
    /// `logout`, which needs the token a link does not carry) and the `GET`s, whose
    /// argument and headers a frame cannot carry. On a long link they are answered
    /// `ERROR UNKNOWN_COMMAND` and the link stays open.
    pub long_link: bool,
    /// Sending it twice does what sending it once does: a SEND (deduplicated by its
    /// `client_msg_id`), the pure reads, and the message operations that set a state
    /// (EDIT to a text, REACT, HIDE, PIN: a repeat changes nothing). In a cluster a gateway re-sends such a
    /// request to another logic node when the first does not answer in time; any other
    /// is answered `UNAVAILABLE` then (docs/protocol.md §2).
    pub idempotent: bool,
}

impl Command {
    /// The defaults every row starts from: a POST-able request needing a session.
    const REQUEST: Command = Command {
        id: 0,
        constant: "",
        name: "",
        kind: Kind::Request,
        path: None,
        method: Method::Post,
        request: "",
        response: "",
        auth: Auth::Token,
        body_limit: BodyLimit::Default,
        addresses: false,
        long_link: true,
        idempotent: false,
    };

    /// The short-link body limit, given the gateway's general and upload limits.
    pub fn body_limit(&self, general: usize, upload: usize) -> usize {
        match self.body_limit {
            BodyLimit::Default => general,
            BodyLimit::Upload => upload,
            BodyLimit::Bytes(n) => n,
        }
    }

    /// Whether a short-link request may come unsealed where plaintext is refused: only
    /// one whose body carries its own key, and only without a token (a token in a plain
    /// header would hand it to any listener).
    pub fn may_skip_seal(&self, has_token: bool) -> bool {
        self.auth == Auth::TokenOrUploadKey && !has_token
    }

    /// Whether the short link answers it with raw bytes (`GET`), not a protobuf.
    pub fn raw_answer(&self) -> bool {
        self.path.is_some() && self.method == Method::Get
    }
}

/// Declares the command table: for each row its constant (`pub const NAME: u8`) and its
/// entry in [`COMMANDS`]. A row names only what differs from [`Command::REQUEST`].
macro_rules! commands {
    ($(
        $(#[$doc:meta])*
        $konst:ident = $id:literal, $name:literal $({ $($field:ident: $value:expr),* $(,)? })?;
    )*) => {
        $(
            $(#[$doc])*
            pub const $konst: u8 = $id;
        )*

        const TABLE: &[Command] = &[$(
            Command {
                id: $id,
                constant: stringify!($konst),
                name: $name,
                $($($field: $value,)*)?
                ..Command::REQUEST
            },
        )*];
    };
}

commands! {
    /// Log in with a device token. Must be the first frame on a link.
    LOGIN = 0x01, "login" {
        kind: Kind::Login, auth: Auth::TokenInBody, request: "LoginReq", response: "LoginResp",
    };
    /// Keep-alive; the gateway answers `HEARTBEAT | RESPONSE` itself.
    HEARTBEAT = 0x02, "heartbeat" { kind: Kind::Link, request: "Heartbeat" };
    /// Send a message (`SendMsg` → `SendAck`).
    SEND = 0x03, "send" { idempotent: true, request: "SendMsg", response: "SendAck" };
    /// Fetch inbox entries after a synckey (`SyncReq` → `SyncResp`). Also `POST /v1/newsync`.
    SYNC = 0x04, "sync" { idempotent: true, path: Some("newsync"), request: "SyncReq", response: "SyncResp" };
    /// Fetch a group's log after a cursor (`GroupSyncReq` → `GroupSyncResp`).
    GROUP_SYNC = 0x05, "group_sync" { idempotent: true,
        path: Some("group/sync"), request: "GroupSyncReq", response: "GroupSyncResp",
    };
    /// Recall a message (`RecallReq` → `Empty`).
    RECALL = 0x06, "recall" { path: Some("recall"), request: "RecallReq", response: "Empty" };
    /// Read receipt (`ReadReq` → `Empty`).
    READ = 0x07, "read" { path: Some("read"), request: "ReadReq", response: "Empty" };
    /// Typing indicator (`Typing` → `Empty`); never stored.
    TYPING = 0x08, "typing" { request: "Typing", response: "Empty" };
    /// Encrypted link: the Noise IK handshake carrying LOGIN (`HELLO | 0x80` answers it).
    /// See [`crate::secure`].
    HELLO = 0x09, "hello" { kind: Kind::Link };
    /// Encrypted link: a sealed record of the plain frame stream (request id 0).
    SEALED = 0x0A, "sealed" { kind: Kind::Link };
    /// Encrypted link, resumed: a resumption ticket and the LOGIN sealed under the ticket's
    /// secret, instead of a Noise handshake (`RESUME | 0x80` answers it). See
    /// [`crate::resume`].
    RESUME = 0x0B, "resume" { kind: Kind::Link };
    /// Encrypted link: a resumption ticket (`Resumption`), in front of the login answer
    /// inside a `HELLO | 0x80` or `RESUME | 0x80` answer (request id 0). Never on the
    /// plain frame stream. See [`crate::resume`].
    TICKET = 0x0C, "ticket" { kind: Kind::Link, response: "Resumption" };
    /// Edit a message's text (`EditReq` → `Empty`). Idempotent: the same text again
    /// changes nothing.
    EDIT = 0x0D, "edit" { idempotent: true, path: Some("edit"), request: "EditReq", response: "Empty" };
    /// Add or take back a reaction (`ReactReq` → `Empty`). Idempotent: adding what is
    /// there, or taking back what is not, changes nothing.
    REACT = 0x0E, "react" { idempotent: true, path: Some("react"), request: "ReactReq", response: "Empty" };
    /// Delete messages for the caller only (`HideReq` → `Empty`). Idempotent.
    HIDE = 0x0F, "hide" { idempotent: true, path: Some("hide"), request: "HideReq", response: "Empty" };

    /// Short-link only: `POST /v1/register`.
    REGISTER = 0x10, "register" {
        path: Some("register"), auth: Auth::None, body_limit: BodyLimit::Bytes(4096),
        long_link: false,
        request: "RegisterReq", response: "RegisterResp",
    };
    /// Short-link only: `POST /v1/auth`.
    AUTH = 0x11, "auth" {
        path: Some("auth"), auth: Auth::None, body_limit: BodyLimit::Bytes(4096),
        long_link: false,
        request: "AuthReq", response: "AuthResp",
    };
    /// Short-link only (it ends the token's session): `POST /v1/logout`.
    LOGOUT = 0x12, "logout" {
        path: Some("logout"), body_limit: BodyLimit::Bytes(1024), long_link: false,
        request: "LogoutReq", response: "LogoutResp",
    };
    /// `POST /v1/user/find`.
    FIND_USER = 0x13, "user/find" { idempotent: true,
        path: Some("user/find"), request: "FindUserReq", response: "FindUserResp",
    };
    /// `POST /v1/friends/request`.
    FRIEND_REQUEST = 0x14, "friends/request" {
        path: Some("friends/request"), request: "FriendRequestReq", response: "FriendActionResp",
    };
    /// `POST /v1/friends/accept`.
    FRIEND_ACCEPT = 0x15, "friends/accept" {
        path: Some("friends/accept"), request: "FriendActionReq", response: "FriendActionResp",
    };
    /// `POST /v1/friends/decline`.
    FRIEND_DECLINE = 0x16, "friends/decline" {
        path: Some("friends/decline"), request: "FriendActionReq", response: "FriendActionResp",
    };
    /// `POST /v1/friends/remove`.
    FRIEND_REMOVE = 0x17, "friends/remove" {
        path: Some("friends/remove"), request: "FriendActionReq", response: "FriendActionResp",
    };
    /// `POST /v1/friends/block`.
    FRIEND_BLOCK = 0x18, "friends/block" {
        path: Some("friends/block"), request: "FriendActionReq", response: "FriendActionResp",
    };
    /// `POST /v1/friends/unblock`.
    FRIEND_UNBLOCK = 0x19, "friends/unblock" {
        path: Some("friends/unblock"), request: "FriendActionReq", response: "FriendActionResp",
    };
    /// `POST /v1/friends/list`.
    FRIEND_LIST = 0x1A, "friends/list" { idempotent: true,
        path: Some("friends/list"), request: "FriendListReq", response: "FriendListResp",
    };
    /// `POST /v1/avatar/set`.
    AVATAR_SET = 0x1B, "avatar/set" {
        path: Some("avatar/set"), body_limit: BodyLimit::Upload,
        request: "AvatarSetReq", response: "AvatarSetResp",
    };
    /// `GET /v1/avatar/{username}` (`?thumb=1`: the thumbnail); the JPEG itself.
    AVATAR_GET = 0x1C, "avatar" { idempotent: true,
        path: Some("avatar"), method: Method::Get, auth: Auth::None, long_link: false,
    };
    /// `POST /v1/report`.
    REPORT = 0x1D, "report" {
        path: Some("report"), body_limit: BodyLimit::Upload,
        request: "ReportReq", response: "ReportResp",
    };
    /// `POST /v1/moments/post`.
    MOMENT_POST = 0x1E, "moments/post" {
        path: Some("moments/post"), request: "MomentPostReq", response: "MomentPostResp",
    };
    /// `POST /v1/moments/timeline`.
    MOMENT_TIMELINE = 0x1F, "moments/timeline" { idempotent: true,
        path: Some("moments/timeline"), request: "MomentTimelineReq",
        response: "MomentTimelineResp",
    };
    /// `POST /v1/moments/like`.
    MOMENT_LIKE = 0x20, "moments/like" {
        path: Some("moments/like"), request: "MomentLikeReq", response: "Empty",
    };
    /// `POST /v1/moments/comment`.
    MOMENT_COMMENT = 0x21, "moments/comment" {
        path: Some("moments/comment"), request: "MomentCommentReq", response: "MomentCommentResp",
    };
    /// `POST /v1/moments/delete`.
    MOMENT_DELETE = 0x22, "moments/delete" {
        path: Some("moments/delete"), request: "MomentDeleteReq", response: "Empty",
    };
    /// `POST /v1/group/create`.
    GROUP_CREATE = 0x23, "group/create" {
        path: Some("group/create"), request: "GroupCreateReq", response: "GroupResp",
    };
    /// `POST /v1/group/add`.
    GROUP_ADD = 0x24, "group/add" {
        path: Some("group/add"), request: "GroupMembersReq", response: "GroupResp",
    };
    /// `POST /v1/group/remove`.
    GROUP_REMOVE = 0x25, "group/remove" {
        path: Some("group/remove"), request: "GroupMembersReq", response: "GroupResp",
    };
    /// `POST /v1/group/leave`.
    GROUP_LEAVE = 0x26, "group/leave" {
        path: Some("group/leave"), request: "GroupReq", response: "GroupResp",
    };
    /// `POST /v1/group/info`.
    GROUP_INFO = 0x27, "group/info" { idempotent: true,
        path: Some("group/info"), request: "GroupReq", response: "GroupResp",
    };
    /// `POST /v1/group/list`.
    GROUP_LIST = 0x28, "group/list" { idempotent: true,
        path: Some("group/list"), request: "Empty", response: "GroupListResp",
    };
    /// `POST /v1/group/update`.
    GROUP_UPDATE = 0x29, "group/update" {
        path: Some("group/update"), request: "GroupUpdateReq", response: "GroupResp",
    };
    /// `POST /v1/group/role`.
    GROUP_ROLE = 0x2A, "group/role" {
        path: Some("group/role"), request: "GroupRoleReq", response: "GroupResp",
    };
    /// `POST /v1/group/reads`.
    GROUP_READS = 0x2B, "group/reads" { idempotent: true,
        path: Some("group/reads"), request: "GroupReadsReq", response: "GroupReadsResp",
    };
    /// `POST /v1/media/create`.
    MEDIA_CREATE = 0x2C, "media/create" {
        path: Some("media/create"), request: "MediaCreateReq", response: "MediaCreateResp",
    };
    /// `POST /v1/media/chunk`: sealed with the token, or unsealed without one under its
    /// upload's key.
    MEDIA_CHUNK = 0x2D, "media/chunk" {
        path: Some("media/chunk"), auth: Auth::TokenOrUploadKey, body_limit: BodyLimit::Upload,
        request: "MediaChunkReq", response: "MediaChunkAck",
    };
    /// `POST /v1/media/status`.
    MEDIA_STATUS = 0x2E, "media/status" { idempotent: true,
        path: Some("media/status"), request: "MediaStatusReq", response: "MediaChunkAck",
    };
    /// `POST /v1/media/finish`.
    MEDIA_FINISH = 0x2F, "media/finish" {
        path: Some("media/finish"), request: "MediaFinishReq", response: "MediaFinishResp",
    };
    /// `GET /v1/media/{media_id}` (with `Range`); the bytes.
    MEDIA_GET = 0x30, "media" { idempotent: true, path: Some("media"), method: Method::Get, long_link: false };
    /// The JSON APIs for other systems: `ANY /v1/admin/…` (admin token) and
    /// `ANY /v1/bot/…` (bot tokens), forwarded by the gateway as a `bus::ApiCall` and
    /// answered with a `bus::ApiAnswer`; routed by logic, not by this table
    /// (docs/admin-api.md, docs/bots.md).
    API = 0x31, "api" {
        long_link: false, auth: Auth::ApiToken, body_limit: BodyLimit::Bytes(1 << 20),
        request: "bus.ApiCall", response: "bus.ApiAnswer",
    };
    /// `POST /v1/reactions`: a message's reactions (`ReactionsReq` → `ReactionsResp`).
    REACTIONS = 0x32, "reactions" { idempotent: true,
        path: Some("reactions"), request: "ReactionsReq", response: "ReactionsResp",
    };
    /// `POST /v1/pin`: pin or unpin a message (`PinReq` → `Empty`). Idempotent.
    PIN = 0x33, "pin" { idempotent: true, path: Some("pin"), request: "PinReq", response: "Empty" };
    /// `POST /v1/pins`: a conversation's pinned messages (`PinsReq` → `PinsResp`).
    PINS = 0x34, "pins" { idempotent: true, path: Some("pins"), request: "PinsReq", response: "PinsResp" };
    /// Search the messages the caller may read (`SearchReq` → `SearchResp`). Also
    /// `POST /v1/search`.
    SEARCH = 0x35, "search" { idempotent: true,
        path: Some("search"), request: "SearchReq", response: "SearchResp",
    };
    /// `POST /v1/endpoints`: the endpoint list for this client (`EndpointsReq` →
    /// `EndpointsResp`).
    ENDPOINTS = 0x36, "endpoints" { idempotent: true,
        path: Some("endpoints"), auth: Auth::None, addresses: true,
        request: "EndpointsReq", response: "EndpointsResp",
    };
    /// `POST /v1/endpoints/report`: connect timings (`EndpointReportReq` →
    /// `EndpointReportResp`).
    ENDPOINT_REPORT = 0x37, "endpoints/report" {
        path: Some("endpoints/report"), addresses: true,
        request: "EndpointReportReq", response: "EndpointReportResp",
    };
    /// `POST /v1/auth/refresh`: a new token for the caller's device (`AuthResp`).
    AUTH_REFRESH = 0x38, "auth/refresh" {
        path: Some("auth/refresh"), body_limit: BodyLimit::Bytes(1024), response: "AuthResp",
    };
    /// `POST /v1/password`: change the password, revoking every session (`AuthResp`).
    PASSWORD_CHANGE = 0x39, "password" {
        path: Some("password"), body_limit: BodyLimit::Bytes(4096),
        request: "PasswordChangeReq", response: "AuthResp",
    };

    /// `POST /v1/push/register`: the calling device's push target (`PushRegisterReq` →
    /// `PushListResp` with that target alone).
    PUSH_REGISTER = 0x3A, "push/register" {
        path: Some("push/register"), body_limit: BodyLimit::Bytes(8192),
        request: "PushRegisterReq", response: "PushListResp",
    };
    /// `POST /v1/push/unregister` (`PushUnregisterReq` → `Empty`).
    PUSH_UNREGISTER = 0x3B, "push/unregister" { idempotent: true,
        path: Some("push/unregister"), body_limit: BodyLimit::Bytes(1024),
        request: "PushUnregisterReq", response: "Empty",
    };
    /// `POST /v1/push/list` (`Empty` → `PushListResp`).
    PUSH_LIST = 0x3C, "push/list" { idempotent: true,
        path: Some("push/list"), request: "Empty", response: "PushListResp",
    };
    /// `POST /v1/push/prefs`: per-conversation push settings (`PushPrefsReq` →
    /// `PushPrefsResp`).
    PUSH_PREFS = 0x3D, "push/prefs" {
        path: Some("push/prefs"), request: "PushPrefsReq", response: "PushPrefsResp",
    };
    /// `POST /v1/conv`: per-conversation state synced across the caller's devices —
    /// archive, mark unread, mute, draft, clear history, retention (`ConvReq` →
    /// `ConvResp`). 0x3F stays free: the future extension command (docs/protocol.md 1.2).
    CONV = 0x3E, "conv" { path: Some("conv"), request: "ConvReq", response: "ConvResp" };

    /// Server push: the inbox grew (`Notify`).
    NOTIFY = 0x40, "notify" { kind: Kind::Push, request: "Notify" };
    /// Server push: the link is about to be closed (`Kick`).
    KICK = 0x41, "kick" { kind: Kind::Push, request: "Kick" };
    /// Server push: a group's log grew (`GroupNotify`).
    GROUP_NOTIFY = 0x42, "group_notify" { kind: Kind::Push, request: "GroupNotify" };
    /// Server push: a peer is typing (`Typing`).
    TYPING_PUSH = 0x43, "typing_push" { kind: Kind::Push, request: "Typing" };

    /// Failure response to any request (`Error`), with the request's id.
    ERROR = 0x7F, "error" { kind: Kind::Error, request: "Error" };
}

/// Every command, in number order.
pub static COMMANDS: &[Command] = TABLE;

/// The command table as docs/protocol.md shows it (§1.2, *Every command*): one Markdown
/// row per command. A test keeps the document equal to it.
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| cmd | name | kind | long link | short link | body | answer | authentication | body limit | idempotent |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let ty = |t: &str| {
        if t.is_empty() {
            "—".to_string()
        } else {
            format!("`{t}`")
        }
    };
    for c in COMMANDS {
        let kind = match c.kind {
            Kind::Request => "request",
            Kind::Login => "login (first frame)",
            Kind::Link => "link layer",
            Kind::Push => "push (id 0)",
            Kind::Error => "error answer",
        };
        let long = match c.kind {
            Kind::Login => "first frame",
            Kind::Request if c.long_link => "yes",
            Kind::Request => "no",
            Kind::Link if c.id == HEARTBEAT => "yes",
            Kind::Link => "—",
            Kind::Push => "push",
            Kind::Error => "answer",
        };
        let short = match (c.path, c.method) {
            (None, _) if c.auth == Auth::ApiToken => "`ANY /v1/admin/…`, `/v1/bot/…`".into(),
            (Some(p), Method::Post) => format!("`POST /v1/{p}`"),
            (Some(p), Method::Get) => format!("`GET /v1/{p}/{{arg}}`"),
            (None, _) => "—".into(),
        };
        let body = match (c.kind, c.path, c.method) {
            (_, Some(_), Method::Get) => "— (GET)".into(),
            // The link layer's TICKET carries its type as what it answers with.
            (Kind::Link, _, _) if c.request.is_empty() => ty(c.response),
            _ => ty(c.request),
        };
        let answer = match (c.kind, c.method, c.path) {
            (Kind::Request | Kind::Login, Method::Get, Some(_)) => "the raw bytes".into(),
            (Kind::Request | Kind::Login, _, _) => {
                format!("`0x{:02X}` {}", response(c.id), ty(c.response))
            }
            _ => "—".into(),
        };
        let auth = match (c.kind, c.auth) {
            (Kind::Link | Kind::Push | Kind::Error, _) => "—",
            (_, Auth::None) => "none",
            (_, Auth::Token) => "session",
            (_, Auth::TokenOrUploadKey) => "session, or the upload's key",
            (_, Auth::TokenInBody) => "token in the body",
            (_, Auth::ApiToken) => "admin or bot token",
        };
        let limit = match (c.path, c.body_limit) {
            (None, BodyLimit::Bytes(n)) if c.auth == Auth::ApiToken => format!("{} MiB", n >> 20),
            (None, _) => "—".to_string(),
            (Some(_), BodyLimit::Default) => "64 KiB".into(),
            (Some(_), BodyLimit::Upload) => "3 MiB".into(),
            (Some(_), BodyLimit::Bytes(n)) => format!("{n} B"),
        };
        let idempotent = match (c.kind, c.idempotent) {
            (Kind::Request, true) => "yes",
            (Kind::Request | Kind::Login, false) => "no",
            _ => "—",
        };
        out.push_str(&format!(
            "| `0x{:02X}` | {} | {kind} | {long} | {short} | {body} | {answer} | {auth} | {limit} | {idempotent} |\n",
            c.id, c.constant
        ));
    }
    out
}

/// Row (+ 1) of each command number in [`TABLE`]; 0: no such command. Built, and the
/// table checked (numbers below [`RESPONSE`], in order, unique; paths unique), at
/// compile time: a bad row does not build.
static INDEX: [u8; 256] = index(TABLE);

const fn index(table: &[Command]) -> [u8; 256] {
    assert!(table.len() < 255, "too many commands");
    let mut index = [0u8; 256];
    let mut i = 0;
    while i < table.len() {
        let id = table[i].id;
        assert!(
            id & RESPONSE == 0,
            "a command number has the response bit set"
        );
        assert!(
            i == 0 || table[i - 1].id < id,
            "command numbers out of order or repeated"
        );
        index[id as usize] = i as u8 + 1;
        if let Some(p) = table[i].path {
            let mut j = 0;
            while j < i {
                if let Some(q) = table[j].path {
                    assert!(!same(p, q), "two commands share a short-link path");
                }
                j += 1;
            }
        }
        i += 1;
    }
    index
}

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Bit set on a response command.
pub const RESPONSE: u8 = 0x80;

/// The response command for a request command.
pub const fn response(cmd: u8) -> u8 {
    cmd | RESPONSE
}

/// The table's row for a command number (a response number has none).
pub fn get(cmd: u8) -> Option<&'static Command> {
    match INDEX[usize::from(cmd)] {
        0 => None,
        row => TABLE.get(usize::from(row - 1)),
    }
}

/// The command a short-link path (without `/v1/`) carries.
pub fn by_path(path: &str) -> Option<&'static Command> {
    TABLE.iter().find(|c| c.path == Some(path))
}

/// The short-link path (without `/v1/`) of a command, if the short link carries it.
pub fn path(cmd: u8) -> Option<&'static str> {
    get(cmd).and_then(|c| c.path)
}

/// A short, stable name for logs and metrics.
pub fn name(cmd: u8) -> &'static str {
    match get(cmd) {
        Some(c) => c.name,
        None if cmd & RESPONSE != 0 => "response",
        None => "unknown",
    }
}

/// Whether a client may send `cmd` as a request on a logged-in link: anything but a
/// response, a push or an error (the whole push range, `0x40..=0x7F`, is the server's),
/// or one of the encryption layer's frames (HELLO, SEALED, RESUME, TICKET: never inside
/// the frame stream). Unknown numbers pass (logic answers `UNKNOWN_COMMAND` and the link
/// stays open).
pub fn from_client(cmd: u8) -> bool {
    let encryption = get(cmd).is_some_and(|c| c.kind == Kind::Link && cmd != HEARTBEAT);
    cmd & RESPONSE == 0 && !(NOTIFY..=ERROR).contains(&cmd) && !encryption
}

/// Whether `cmd` may be re-sent to another logic node when the first did not answer
/// (see [`Command::idempotent`]).
pub fn idempotent(cmd: u8) -> bool {
    get(cmd).is_some_and(|c| c.idempotent)
}

/// Whether `cmd` is a known request the short link alone serves (see
/// [`Command::long_link`]): a long link answers it `UNKNOWN_COMMAND`.
pub fn short_link_only(cmd: u8) -> bool {
    get(cmd).is_some_and(|c| c.kind == Kind::Request && !c.long_link)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_requests_are_send_and_reads() {
        assert!(idempotent(SEND) && idempotent(SYNC) && idempotent(GROUP_SYNC));
        for c in [EDIT, REACT, HIDE, REACTIONS, PIN, PINS] {
            assert!(idempotent(c), "{}", name(c));
        }
        for c in [
            LOGIN,
            RECALL,
            READ,
            GROUP_CREATE,
            MEDIA_CREATE,
            MEDIA_FINISH,
            TYPING,
        ] {
            assert!(!idempotent(c), "{}", name(c));
        }
        for c in COMMANDS.iter().filter(|c| c.idempotent) {
            assert_eq!(c.kind, Kind::Request, "{}", c.name);
        }
        assert!(!idempotent(0xEE));
    }

    /// docs/protocol.md's table of every command is this table: a command added, renumbered
    /// or re-pathed in code fails here until the document says the same.
    #[test]
    fn the_protocol_document_lists_every_command() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/protocol.md"
        ))
        .unwrap();
        let (start, end) = (
            "<!-- command-table:start -->\n",
            "<!-- command-table:end -->",
        );
        let from = doc.find(start).expect("start marker in protocol.md") + start.len();
        let to = doc[from..].find(end).expect("end marker in protocol.md") + from;
        let want = markdown_table();
        assert!(
            doc[from..to] == want,
            "docs/protocol.md's command table differs from the code's; it should read:\n{want}"
        );
    }

    #[test]
    fn numbers_are_unique_and_indexed() {
        let mut ids: Vec<u8> = COMMANDS.iter().map(|c| c.id).collect();
        let n = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), n);
        for c in COMMANDS {
            assert_eq!(get(c.id), Some(c));
            assert_eq!(get(response(c.id)), None);
        }
        assert_eq!(get(0x00), None);
        assert_eq!(get(0x3F), None);
    }

    #[test]
    fn paths_are_unique_and_round_trip() {
        let mut paths: Vec<&str> = COMMANDS.iter().filter_map(|c| c.path).collect();
        let n = paths.len();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), n);
        assert_eq!(n, 53, "the short link's paths");
        for c in COMMANDS {
            if let Some(p) = c.path {
                assert_eq!(by_path(p).map(|b| b.id), Some(c.id), "{p}");
                assert_eq!(path(c.id), Some(p));
            }
        }
        assert_eq!(by_path("nope"), None);
        assert_eq!(by_path(""), None);
    }

    #[test]
    fn names_match() {
        // Names are metric labels: stable, unique, and the path where there is one,
        // except the long link's own commands (named before the short link existed).
        let mut names: Vec<&str> = COMMANDS.iter().map(|c| c.name).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
        for c in COMMANDS {
            assert_eq!(name(c.id), c.name);
            if let Some(p) = c.path {
                if c.id > TICKET {
                    assert_eq!(c.name, p);
                }
            }
        }
        assert_eq!(name(SYNC), "sync");
        assert_eq!(name(GROUP_SYNC), "group_sync");
        assert_eq!(name(MOMENT_LIKE), "moments/like");
        assert_eq!(name(AVATAR_GET), "avatar");
        assert_eq!(name(response(SEND)), "response");
        assert_eq!(name(0x3F), "unknown");
    }

    #[test]
    fn the_numbers_are_the_wire_contract() {
        // Clients in other languages hard-code these (docs/protocol.md 1.2).
        let fixed = [
            (LOGIN, 0x01),
            (HEARTBEAT, 0x02),
            (SEND, 0x03),
            (SYNC, 0x04),
            (HELLO, 0x09),
            (SEALED, 0x0A),
            (RESUME, 0x0B),
            (TICKET, 0x0C),
            (SEARCH, 0x35),
            (REGISTER, 0x10),
            (AUTH, 0x11),
            (MEDIA_GET, 0x30),
            (ENDPOINTS, 0x36),
            (PASSWORD_CHANGE, 0x39),
            (NOTIFY, 0x40),
            (TYPING_PUSH, 0x43),
            (EDIT, 0x0D),
            (REACT, 0x0E),
            (HIDE, 0x0F),
            (REACTIONS, 0x32),
            (PIN, 0x33),
            (PINS, 0x34),
            (PUSH_PREFS, 0x3D),
            (CONV, 0x3E),
            (ERROR, 0x7F),
        ];
        for (c, n) in fixed {
            assert_eq!(c, n, "{}", name(c));
        }
    }

    #[test]
    fn body_types_are_in_the_client_proto() {
        let proto = include_str!("../../../proto/ferry.proto");
        // The API command's call and answer are the gateway's, in bus.proto.
        let bus = include_str!("../../../proto/bus.proto");
        for c in COMMANDS {
            for t in [c.request, c.response] {
                if let Some(t) = t.strip_prefix("bus.") {
                    assert!(
                        bus.contains(&format!("\nmessage {t} {{")),
                        "{}: no message {t} in bus.proto",
                        c.name
                    );
                } else if !t.is_empty() {
                    assert!(
                        proto.contains(&format!("\nmessage {t} {{")),
                        "{}: no message {t} in ferry.proto",
                        c.name
                    );
                }
            }
        }
    }

    #[test]
    fn gateway_rules() {
        let limit = |c: u8| get(c).unwrap().body_limit(65_536, 3 << 20);
        assert_eq!(limit(AUTH), 4096);
        assert_eq!(limit(LOGOUT), 1024);
        assert_eq!(limit(AVATAR_SET), 3 << 20);
        assert_eq!(limit(MEDIA_CHUNK), 3 << 20);
        assert_eq!(limit(REPORT), 3 << 20);
        assert_eq!(limit(FRIEND_LIST), 65_536);
        let raw: Vec<u8> = COMMANDS
            .iter()
            .filter(|c| c.raw_answer())
            .map(|c| c.id)
            .collect();
        assert_eq!(raw, [AVATAR_GET, MEDIA_GET]);
        let unsealed: Vec<u8> = COMMANDS
            .iter()
            .filter(|c| c.may_skip_seal(false))
            .map(|c| c.id)
            .collect();
        assert_eq!(unsealed, [MEDIA_CHUNK]);
        let short_only: Vec<u8> = (0..=255u8).filter(|c| short_link_only(*c)).collect();
        assert_eq!(
            short_only,
            [REGISTER, AUTH, LOGOUT, AVATAR_GET, MEDIA_GET, API]
        );
        for c in [SEND, SYNC, AUTH_REFRESH, PASSWORD_CHANGE, MEDIA_CHUNK, 0x3F] {
            assert!(!short_link_only(c), "{c:#x}");
        }
        assert!(!get(MEDIA_CHUNK).unwrap().may_skip_seal(true));
        for c in [SEND, SYNC, LOGIN, 0x3F, 0x05] {
            assert!(from_client(c), "{c:#x}");
        }
        for c in [
            response(SEND),
            NOTIFY,
            KICK,
            0x50,
            ERROR,
            HELLO,
            SEALED,
            RESUME,
            TICKET,
        ] {
            assert!(!from_client(c), "{c:#x}");
        }
    }
}
