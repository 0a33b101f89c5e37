//! The short link: `POST /v1/<method>` with a protobuf body, forwarded to logic as the
//! command the method names. The gateway does not read the bodies; it maps logic's error
//! codes to HTTP statuses. What it does per command (body limit, GET or POST, whether a
//! request may skip the seal, whether logic needs the addresses) it reads from the
//! command table (`ferry_proto::cmd`); it names no command.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use ferry_bus::BusRequest;
use ferry_proto::cmd::{self, Method};
use ferry_proto::v1::{self, ErrorCode};
use ferry_proto::{error_body, sealed, ProtoMessage};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;

use crate::Gateway;

/// The media type of every short-link body.
pub const PROTOBUF: &str = "application/x-protobuf";

/// The HTTP routes, for tests that call them without a socket.
pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/lp/open", post(crate::lp::open))
        .route("/v1/lp/send", post(crate::lp::send))
        .route("/v1/lp/poll", post(crate::lp::poll))
        .route("/v1/lp/close", post(crate::lp::close))
        .route("/v1/server-key", get(server_key))
        .route("/v1/{*path}", post(short_link).get(short_link_get))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(gw)
}

/// The client's address (IP:PORT).
#[derive(Clone)]
pub(crate) struct Peer(pub(crate) Arc<str>);

/// The gateway address the client connected to.
#[derive(Clone, Copy)]
pub(crate) struct Local(pub(crate) std::net::SocketAddr);

pub(crate) async fn serve(gw: Arc<Gateway>, stream: TcpStream, peer: String) {
    let local = stream.local_addr().ok();
    let shutdown = gw.shutdown.clone();
    let mut app = router(gw.clone());
    if let Some(extra) = gw.extra_routes.get() {
        app = app.merge(extra.clone());
    }
    let mut app = app.layer(Extension(Peer(peer.into())));
    if let Some(local) = local {
        app = app.layer(Extension(Local(local)));
    }
    let service = TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "http connection ended");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// The HTTP status for an error code.
pub fn status_for(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest | ErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized | ErrorCode::BadCredentials | ErrorCode::NotLoggedIn => {
            StatusCode::UNAUTHORIZED
        }
        ErrorCode::UserExists => StatusCode::CONFLICT,
        ErrorCode::UnknownUser | ErrorCode::UnknownCommand => StatusCode::NOT_FOUND,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Kicked => StatusCode::UNAUTHORIZED,
        ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::ChecksumMismatch => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::ResumeRefused => StatusCode::CONFLICT,
        ErrorCode::Internal | ErrorCode::Unspecified => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn protobuf(status: StatusCode, body: Bytes) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
    r
}

pub(crate) fn error(code: ErrorCode, message: &str) -> Response {
    protobuf(
        status_for(code),
        Bytes::from(error_body(code, message).encode_to_vec()),
    )
}

async fn short_link(
    State(gw): State<Arc<Gateway>>,
    Path(path): Path<String>,
    peer: Option<Extension<Peer>>,
    local: Option<Extension<Local>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    gw.stats.http_requests.fetch_add(1, Ordering::Relaxed);
    let Some(c) = cmd::by_path(&path).filter(|c| c.method == Method::Post) else {
        return error(ErrorCode::UnknownCommand, "no such method");
    };
    let limit = match gw.cfg.body_limits.get(path.as_str()) {
        Some(n) => *n,
        None => c.body_limit(gw.cfg.max_http_body_bytes, gw.cfg.max_upload_bytes),
    };
    let is_sealed = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == sealed::CONTENT_TYPE.as_bytes());
    // A request whose body carries its own key (a media chunk under its upload's key)
    // may come unsealed without a token: the key is its credential (logic opens it,
    // docs/protocol.md Media). With a plain token it would be a plaintext request like
    // any other.
    let keyed = c.may_skip_seal(headers.contains_key(header::AUTHORIZATION));
    if !is_sealed && !gw.cfg.allow_plaintext && !keyed {
        gw.stats.bad_input.fetch_add(1, Ordering::Relaxed);
        return error(
            ErrorCode::PermissionDenied,
            "plaintext short-link requests are refused here: seal them (docs/protocol.md 3.1)",
        );
    }
    // A sealed body may be larger by its envelope and the token inside it (≤ 255 B);
    // the limit applies to the body it seals.
    let wire_limit = if is_sealed {
        limit + sealed::request_overhead(limit) + 255
    } else {
        limit
    };
    let body = match axum::body::to_bytes(body, wire_limit).await {
        Ok(b) => b,
        Err(_) => return error(ErrorCode::TooLarge, &format!("body over {limit} bytes")),
    };
    let (body, reply_to) = if is_sealed {
        match crate::secure::open_short(&gw.key, &gw.replay, &body) {
            Ok(r) if r.body.len() > limit => {
                return error(ErrorCode::TooLarge, &format!("body over {limit} bytes"))
            }
            Ok(r) => (Bytes::from(r.body), Some((r.reply_to, r.token))),
            Err((code, message)) => {
                gw.stats.bad_input.fetch_add(1, Ordering::Relaxed);
                return error(code, &message);
            }
        }
    } else {
        (body, None)
    };
    let mut req = BusRequest {
        cmd: u32::from(c.id),
        body,
        sealed: is_sealed,
        ..request_base(&gw, peer, &headers)
    };
    if let Some((_, token)) = &reply_to {
        // A sealed request's token is the one inside the seal, never a plain header.
        req.token = token.clone();
    }
    if c.addresses {
        // Logic builds the default endpoint list from where the client came in.
        req.local_addr = local.map(|l| l.0 .0.to_string()).unwrap_or_default();
        req.listen = gw.listen_addrs().iter().map(|a| a.to_string()).collect();
    }
    let resp = forward(&gw, req).await;
    match reply_to {
        Some((to, _)) => seal_answer(resp, &to).await,
        None => resp,
    }
}

/// Seals an answer's body to the request's reply key; status and headers stay.
async fn seal_answer(resp: Response, reply_to: &[u8; 32]) -> Response {
    let (mut parts, body) = resp.into_parts();
    let Ok(plain) = axum::body::to_bytes(body, usize::MAX).await else {
        return error(ErrorCode::Internal, "answer lost");
    };
    match crate::secure::seal_short(reply_to, &plain) {
        Ok(sealed) => {
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(sealed::CONTENT_TYPE),
            );
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, axum::body::Body::from(sealed))
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not seal an answer");
            error(ErrorCode::Internal, "could not seal the answer")
        }
    }
}

/// `GET /v1/server-key`: the server's static public key (hex). Only for a client that
/// trusts on first use: a client given the key out of band must not ask the link it
/// protects (docs/security.md).
async fn server_key(State(gw): State<Arc<Gateway>>) -> Response {
    gw.stats.http_requests.fetch_add(1, Ordering::Relaxed);
    let mut r = (StatusCode::OK, gw.public_key_hex()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// `GET /v1/<path>/<argument>`, for the commands the table marks `GET` (avatars,
/// media).
async fn short_link_get(
    State(gw): State<Arc<Gateway>>,
    Path(path): Path<String>,
    uri: http::Uri,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    gw.stats.http_requests.fetch_add(1, Ordering::Relaxed);
    let found = path
        .rsplit_once('/')
        .and_then(|(p, arg)| Some((cmd::by_path(p)?, arg)))
        .filter(|(c, arg)| c.method == Method::Get && !arg.is_empty());
    let Some((c, arg)) = found else {
        return error(ErrorCode::UnknownCommand, "no such method for GET");
    };
    let req = BusRequest {
        cmd: u32::from(c.id),
        path_arg: arg.to_owned(),
        query: uri.query().unwrap_or_default().to_owned(),
        if_none_match: headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        range: headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        ..request_base(&gw, peer, &headers)
    };
    forward(&gw, req).await
}

fn request_base(gw: &Gateway, peer: Option<Extension<Peer>>, headers: &HeaderMap) -> BusRequest {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    BusRequest {
        token,
        gateway_id: gw.cfg.id.clone(),
        peer: peer.map(|p| p.0 .0.to_string()).unwrap_or_default(),
        ..Default::default()
    }
}

async fn forward(gw: &Gateway, req: BusRequest) -> Response {
    match gw.bus.request(req).await {
        Ok(resp) if resp.cmd == u32::from(cmd::ERROR) => {
            let e = v1::Error::decode(resp.body.clone()).unwrap_or_default();
            let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal);
            let mut r = protobuf(status_for(code), resp.body);
            if e.retry_after_ms > 0 {
                // Whole seconds, rounded up: never earlier than the server asked.
                r.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(e.retry_after_ms.div_ceil(1000)),
                );
            }
            r
        }
        Ok(resp) if resp.not_modified => {
            let mut r = StatusCode::NOT_MODIFIED.into_response();
            if let Ok(v) = HeaderValue::from_str(&resp.etag) {
                r.headers_mut().insert(header::ETAG, v);
            }
            r
        }
        Ok(resp) if !resp.content_type.is_empty() => {
            let status = u16::try_from(resp.status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .filter(|s| s.is_success() || s.is_client_error())
                .unwrap_or(StatusCode::OK);
            let mut r = (status, resp.body).into_response();
            let h = r.headers_mut();
            if !resp.content_range.is_empty() {
                if let Ok(v) = HeaderValue::from_str(&resp.content_range) {
                    h.insert(header::CONTENT_RANGE, v);
                }
                h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            }
            if let Ok(v) = HeaderValue::from_str(&resp.content_type) {
                h.insert(header::CONTENT_TYPE, v);
            }
            if let Ok(v) = HeaderValue::from_str(&resp.etag) {
                h.insert(header::ETAG, v);
            }
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        }
        Ok(resp) => protobuf(StatusCode::OK, resp.body),
        Err(e) => {
            tracing::warn!(error = %e, "short link could not reach logic");
            error(ErrorCode::Unavailable, "service unavailable; try again")
        }
    }
}
