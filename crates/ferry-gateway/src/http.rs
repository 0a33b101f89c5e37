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
use axum::routing::{any, get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use ferry_bus::{BusRequest, BusResponse};
use ferry_proto::bus::{ByteRange, Fetch, Origin, Resource};
use ferry_proto::cmd::{self, Method};
use ferry_proto::v1::{self, ErrorCode};
use ferry_proto::{error_body, sealed, ProtoMessage};
use http::{header, HeaderMap, HeaderValue, Method as HttpMethod, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;

use crate::{Gateway, Seat};

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
        .route("/v1/ws", any(crate::ws::upgrade))
        .route("/v1/admin/{*rest}", any(crate::api::call))
        .route("/v1/bot/{*rest}", any(crate::api::call))
        .route("/v1/{*path}", post(short_link).get(short_link_get))
        .route("/healthz", get(|| async { "ok" }))
        .layer(axum::middleware::from_fn(protocol_version))
        .layer(axum::middleware::from_fn(cors))
        .with_state(gw)
}

/// The headers of Ferry's answers a page on another origin may read.
/// `Date` too: a sealed request refused for its clock is corrected by it (§3.1), and a
/// browser reads no other header of a cross-origin answer unless it is named here.
const EXPOSED: &str =
    "Ferry-Session, Ferry-Poll-Hold-Ms, Ferry-Protocol, Content-Range, ETag, Date";

/// CORS for the `/v1/` paths (docs/protocol.md §7.1a): any origin may call them — no
/// cookie is read, the credentials ride inside sealed bodies or the `Authorization`
/// header — so every answer allows `*` and exposes Ferry's headers, and a preflight
/// (`OPTIONS`) is answered here, `204`, without reaching a route.
async fn cors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if !req.uri().path().starts_with("/v1/") {
        return next.run(req).await;
    }
    let mut resp = if req.method() == HttpMethod::OPTIONS {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Content-Type, Authorization, Range"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("86400"),
        );
        r
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED),
    );
    resp
}

/// Puts `Ferry-Protocol` on every answer: the protocol major version the server speaks
/// to this client, the highest both speak — the request's `Ferry-Protocol` (absent or
/// unreadable: 1) capped at the server's own (docs/protocol.md §8).
async fn protocol_version(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let asked = req
        .headers()
        .get(ferry_proto::PROTOCOL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(
        ferry_proto::PROTOCOL_HEADER,
        HeaderValue::from(ferry_proto::protocol_for(asked)),
    );
    resp
}

/// The client's address (IP:PORT).
#[derive(Clone)]
pub(crate) struct Peer(pub(crate) Arc<str>);

/// The gateway address the client connected to.
#[derive(Clone, Copy)]
pub(crate) struct Local(pub(crate) std::net::SocketAddr);

/// The seat of the connection a request came on, for the WebSocket upgrade to take.
#[derive(Clone)]
pub(crate) struct SeatCell(pub(crate) Arc<parking_lot::Mutex<Option<Seat>>>);

pub(crate) async fn serve(gw: Arc<Gateway>, stream: TcpStream, peer: String, seat: Seat) {
    let local = stream.local_addr().ok();
    let shutdown = gw.shutdown.clone();
    let mut app = router(gw.clone());
    if let Some(extra) = gw.extra_routes.get() {
        app = app.merge(extra.clone());
    }
    let mut app = app
        .layer(Extension(Peer(peer.into())))
        .layer(Extension(SeatCell(Arc::new(parking_lot::Mutex::new(
            Some(seat),
        )))));
    if let Some(local) = local {
        app = app.layer(Extension(Local(local)));
    }
    let service = TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
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
    // the limit applies to the body it seals. Every refusal up to the opening is plain
    // (there is no key to seal to yet); every answer after it is sealed.
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
                let refusal = error(ErrorCode::TooLarge, &format!("body over {limit} bytes"));
                return seal_answer(refusal, &r.reply_to).await;
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
    let origin = if is_sealed {
        Origin::ShortLinkSealed
    } else {
        Origin::ShortLink
    };
    let mut req = BusRequest {
        cmd: u32::from(c.id),
        body,
        origin: origin as i32,
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
    let fetch = Fetch {
        argument: arg.to_owned(),
        thumbnail: uri.query().is_some_and(|q| {
            q.split('&')
                .any(|kv| matches!(kv, "thumb" | "thumb=1" | "thumb=true"))
        }),
        if_none_match: headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        range: headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_range),
    };
    let req = BusRequest {
        cmd: u32::from(c.id),
        origin: Origin::ShortLink as i32,
        fetch: Some(fetch),
        ..request_base(&gw, peer, &headers)
    };
    forward(&gw, req).await
}

/// A `Range` header (`bytes=a-b`, `bytes=a-`, `bytes=-n`; of a list, the first range).
/// `None` for anything else: the request is then answered whole, as HTTP allows for a
/// Range it does not understand.
fn parse_range(header: &str) -> Option<ByteRange> {
    let spec = header.trim().strip_prefix("bytes=")?;
    let spec = spec.split(',').next()?.trim();
    let (a, b) = spec.split_once('-')?;
    Some(match (a.trim(), b.trim()) {
        ("", n) => ByteRange {
            suffix: Some(n.parse().ok()?),
            ..Default::default()
        },
        (first, "") => ByteRange {
            first: first.parse().ok()?,
            ..Default::default()
        },
        (first, last) => ByteRange {
            first: first.parse().ok()?,
            last: Some(last.parse().ok()?),
            ..Default::default()
        },
    })
}

/// A GET's answer in HTTP: 304 when the client's copy is current, 416 for a range past
/// the end, 206 with `Content-Range` for a range, else 200; with the resource's type and
/// ETag.
fn resource(r: Resource, body: Bytes) -> Response {
    if r.not_modified {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(v) = HeaderValue::from_str(&r.etag) {
            resp.headers_mut().insert(header::ETAG, v);
        }
        return resp;
    }
    let (status, content_range) = if r.unsatisfiable {
        (
            StatusCode::RANGE_NOT_SATISFIABLE,
            Some(format!("bytes */{}", r.total_size)),
        )
    } else if let Some(first) = r.offset {
        let last = (first + body.len() as u64).saturating_sub(1);
        (
            StatusCode::PARTIAL_CONTENT,
            Some(format!("bytes {first}-{last}/{}", r.total_size)),
        )
    } else {
        (StatusCode::OK, None)
    };
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    if let Some(range) = content_range.and_then(|v| HeaderValue::from_str(&v).ok()) {
        h.insert(header::CONTENT_RANGE, range);
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    if let Ok(v) = HeaderValue::from_str(&r.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&r.etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

pub(crate) fn request_base(
    gw: &Gateway,
    peer: Option<Extension<Peer>>,
    headers: &HeaderMap,
) -> BusRequest {
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
        Ok(BusResponse {
            resource: Some(r),
            body,
            ..
        }) => resource(r, body),
        Ok(resp) => protobuf(StatusCode::OK, resp.body),
        Err(e) => {
            tracing::warn!(error = %e, "short link could not reach logic");
            error(ErrorCode::Unavailable, "service unavailable; try again")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Range header as the gateway reads it, resolved against a 1000-byte resource
    /// as logic does (HTTP stays here; the arithmetic is `ByteRange::resolve`).
    #[test]
    fn ranges() {
        let r = |h: &str| parse_range(h).map(|r| r.resolve(1000).ok_or(()));
        assert_eq!(r("bytes=0-99"), Some(Ok((0, 100))));
        assert_eq!(r("bytes=900-"), Some(Ok((900, 1000))));
        assert_eq!(r("bytes=-100"), Some(Ok((900, 1000))));
        assert_eq!(r("bytes=990-2000"), Some(Ok((990, 1000))));
        assert_eq!(r("bytes=1000-"), Some(Err(())));
        assert_eq!(r("bytes=5-4"), Some(Err(())));
        assert_eq!(r("bytes=-0"), Some(Err(())));
        assert_eq!(r(" bytes=0-9, 20-29"), Some(Ok((0, 10))));
        assert_eq!(r(""), None);
        assert_eq!(r("items=0-1"), None);
        assert_eq!(r("bytes=a-b"), None);
        assert_eq!(r("bytes=-"), None);
    }

    #[tokio::test]
    async fn resources_become_http() {
        let body =
            |r: Response| async { axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap() };
        let base = Resource {
            content_type: "image/jpeg".into(),
            etag: "\"e1\"".into(),
            total_size: 1000,
            ..Default::default()
        };
        let whole = resource(base.clone(), Bytes::from(vec![1u8; 1000]));
        assert_eq!(whole.status(), StatusCode::OK);
        assert_eq!(whole.headers()[header::ETAG], "\"e1\"");
        assert_eq!(whole.headers()[header::CONTENT_TYPE], "image/jpeg");
        assert!(whole.headers().get(header::CONTENT_RANGE).is_none());
        assert_eq!(body(whole).await.len(), 1000);
        let part = resource(
            Resource {
                offset: Some(900),
                ..base.clone()
            },
            Bytes::from(vec![1u8; 100]),
        );
        assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(part.headers()[header::CONTENT_RANGE], "bytes 900-999/1000");
        assert_eq!(part.headers()[header::ACCEPT_RANGES], "bytes");
        let past = resource(
            Resource {
                unsatisfiable: true,
                ..base.clone()
            },
            Bytes::new(),
        );
        assert_eq!(past.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(past.headers()[header::CONTENT_RANGE], "bytes */1000");
        let same = resource(
            Resource {
                not_modified: true,
                ..base
            },
            Bytes::new(),
        );
        assert_eq!(same.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(same.headers()[header::ETAG], "\"e1\"");
        assert!(body(same).await.is_empty());
    }
}
