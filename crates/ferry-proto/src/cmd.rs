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

/// Short-link only: `POST /v1/register`.
pub const REGISTER: u8 = 0x10;
/// Short-link only: `POST /v1/auth`.
pub const AUTH: u8 = 0x11;

/// Server push: the inbox grew (`Notify`).
pub const NOTIFY: u8 = 0x40;
/// Server push: the link is about to be closed (`Kick`).
pub const KICK: u8 = 0x41;

/// Failure response to any request (`Error`), with the request's id.
pub const ERROR: u8 = 0x7F;
/// Bit set on a response command.
pub const RESPONSE: u8 = 0x80;

/// The response command for a request command.
pub const fn response(cmd: u8) -> u8 {
    cmd | RESPONSE
}

/// A short, stable name for logs and metrics.
pub fn name(cmd: u8) -> &'static str {
    match cmd {
        LOGIN => "login",
        HEARTBEAT => "heartbeat",
        SEND => "send",
        SYNC => "sync",
        REGISTER => "register",
        AUTH => "auth",
        NOTIFY => "notify",
        KICK => "kick",
        ERROR => "error",
        c if c & RESPONSE != 0 => "response",
        _ => "unknown",
    }
}
