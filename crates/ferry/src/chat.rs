//! The chat web app (`web/chat/`) served at `/chat`: static files built into the binary,
//! mounted on the gateway's ports beside the dashboard. The page talks to the same server
//! through the TypeScript SDK (`/chat/ferry-sdk.js`): long link over WebSocket or
//! long-poll, short link for the rest. No setup, no state here.
//!
//! This module only answers files: it must not hold chat logic, sessions or data (the
//! browser keeps its own state in IndexedDB).
//!
//! | path | file |
//! | --- | --- |
//! | `GET /chat`, `/chat/`, `/chat/index.html` | `web/chat/index.html` |
//! | `GET /chat/app.js`, `/chat/ferry-sdk.js` | the app and the SDK bundle (ES modules) |
//! | `GET /chat/app.css`, `/chat/icon.svg` | style and icon |

use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// Every file of the app: path under `/chat/`, body, content type.
const FILES: &[(&str, &str, &str)] = &[
    (
        "index.html",
        include_str!("../../../web/chat/index.html"),
        "text/html; charset=utf-8",
    ),
    (
        "app.js",
        include_str!("../../../web/chat/app.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "ferry-sdk.js",
        include_str!("../../../web/chat/ferry-sdk.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "app.css",
        include_str!("../../../web/chat/app.css"),
        "text/css; charset=utf-8",
    ),
    (
        "icon.svg",
        include_str!("../../../web/chat/icon.svg"),
        "image/svg+xml",
    ),
];

/// Code and styles from this origin only, nothing inline; pictures are the app's own
/// blob: URLs (downloaded media). The SDK connects to any gateway of the endpoint list
/// (IP literals on other ports and hosts than the page's, docs/protocol.md §7.2), by
/// WebSocket or HTTP, so `connect-src` allows those schemes: the protection is that no
/// script but the app's own runs (`script-src 'self'`), not where it may connect.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       img-src 'self' blob: data:; connect-src 'self' ws: wss: http: https:; \
                       form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// `/chat…`: the page and its files (no token: they hold no data).
pub fn routes() -> Router {
    let mut r = Router::new()
        .route("/chat", get(|| async { file("index.html") }))
        .route("/chat/", get(|| async { file("index.html") }));
    for (name, _, _) in FILES {
        let name: &'static str = name;
        r = r.route(
            &format!("/chat/{name}"),
            get(move || async move { file(name) }),
        );
    }
    r
}

fn file(name: &str) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, body, content_type)) => crate::web::asset(body, content_type, CSP),
        None => http::StatusCode::NOT_FOUND.into_response(),
    }
}

/// The address to print for the chat (a wildcard listen address becomes loopback).
pub fn chat_url(addr: std::net::SocketAddr) -> String {
    format!("http://{}/chat", crate::web::browsable(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_url_names_loopback_for_a_wildcard() {
        assert_eq!(
            chat_url("0.0.0.0:8080".parse().unwrap()),
            "http://127.0.0.1:8080/chat"
        );
        assert_eq!(
            chat_url("[::]:9000".parse().unwrap()),
            "http://[::1]:9000/chat"
        );
        assert_eq!(
            chat_url("10.1.2.3:80".parse().unwrap()),
            "http://10.1.2.3:80/chat"
        );
    }
}
