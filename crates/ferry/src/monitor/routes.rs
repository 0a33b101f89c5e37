//! The monitoring routes. The page and its static files load without the token (they
//! hold no data); everything with numbers in it needs `Authorization: Bearer <token>`.
//!
//! | path | what | token |
//! | --- | --- | --- |
//! | `GET /dashboard` (+ `app.js`, `app.css`, `icon.svg`) | the dashboard page | no |
//! | `GET /api/admin/summary` | the newest [`Summary`](super::Summary) with history, JSON | yes |
//! | `GET /api/admin/events` | a summary per second, server-sent events (`event: summary`) | yes |
//! | `GET /metrics` | Prometheus text | yes, unless `public_metrics` |

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{header, HeaderMap, HeaderValue, StatusCode};

use super::{token, Monitor};

const INDEX: &str = include_str!("../../../../web/index.html");
const APP_JS: &str = include_str!("../../../../web/app.js");
const APP_CSS: &str = include_str!("../../../../web/app.css");
const ICON: &str = include_str!("../../../../web/icon.svg");

/// Scripts, styles and data from this origin only; nothing inline, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

pub(super) fn router(m: Arc<Monitor>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route(
            "/dashboard",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/dashboard/",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/dashboard/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/dashboard/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/dashboard/icon.svg",
            get(|| async { asset(ICON, "image/svg+xml") }),
        )
        .route("/api/admin/summary", get(summary))
        .route("/api/admin/events", get(events))
        .with_state(m)
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    crate::web::asset(body, content_type, CSP)
}

fn authorized(m: &Monitor, headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| token::matches(m.token(), given.trim()))
}

fn refused() -> Response {
    let mut r = (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"error":"admin token required: Authorization: Bearer <token>"}"#,
    )
        .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"ferry-admin\""),
    );
    r
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn metrics(State(m): State<Arc<Monitor>>, headers: HeaderMap) -> Response {
    if !m.opts.public_metrics && !authorized(&m, &headers) {
        return refused();
    }
    let text = m.render_metrics();
    no_store(
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
    )
}

async fn summary(State(m): State<Arc<Monitor>>, headers: HeaderMap) -> Response {
    if !authorized(&m, &headers) {
        return refused();
    }
    let json = serde_json::to_string(&m.summary_with_history()).unwrap_or_else(|_| "{}".into());
    no_store(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

fn event<T: serde::Serialize>(summary: &T) -> Event {
    Event::default()
        .event("summary")
        .data(serde_json::to_string(summary).unwrap_or_else(|_| "{}".into()))
}

async fn events(State(m): State<Arc<Monitor>>, headers: HeaderMap) -> Response {
    if !authorized(&m, &headers) {
        return refused();
    }
    let first = Some(m.summary_with_history());
    let rx = m.latest.subscribe();
    let shutdown = m.shutdown.clone();
    let stream = futures_util::stream::unfold(
        (first, rx, shutdown),
        |(first, mut rx, shutdown)| async move {
            if let Some(f) = first {
                rx.mark_unchanged();
                return Some((Ok::<_, Infallible>(event(&f)), (None, rx, shutdown)));
            }
            tokio::select! {
                _ = shutdown.cancelled() => None,
                changed = rx.changed() => {
                    changed.ok()?;
                    let s = rx.borrow_and_update().clone();
                    Some((Ok(event(&*s)), (None, rx, shutdown)))
                }
            }
        },
    );
    let mut r = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    r.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    no_store(r)
}
