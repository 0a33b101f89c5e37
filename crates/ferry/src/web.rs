//! What the two pages built into the binary share — the dashboard (`web/`, monitor) and
//! the chat (`web/chat/`, chat): how a built-in file is answered, and the address a
//! person opens. It must not know either page.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue};

/// A built-in file: its type, revalidated every time (the files change with the binary;
/// the answers are small and local), under the page's `csp`, never sniffed, no referrer.
pub(crate) fn asset(body: &'static str, content_type: &'static str, csp: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// The address a browser on this machine opens for a listen address: a wildcard
/// becomes the loopback address of its family.
pub fn browsable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}
