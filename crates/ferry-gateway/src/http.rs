//! The short link: `POST /v1/<method>` with a protobuf body, forwarded to logic as the
//! command the method names. The gateway does not read the bodies; it maps logic's error
//! codes to HTTP statuses.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use ferry_bus::BusRequest;
use ferry_proto::v1::{self, ErrorCode};
use ferry_proto::{cmd, error_body, ProtoMessage};
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
        .route("/v1/{method}", post(short_link))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(gw)
}

#[derive(Clone)]
struct Peer(Arc<str>);

pub(crate) async fn serve(gw: Arc<Gateway>, stream: TcpStream, peer: String) {
    let shutdown = gw.shutdown.clone();
    let app = router(gw).layer(Extension(Peer(peer.into())));
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

fn method_cmd(method: &str) -> Option<u8> {
    Some(match method {
        "register" => cmd::REGISTER,
        "auth" => cmd::AUTH,
        "newsync" => cmd::SYNC,
        _ => return None,
    })
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
        ErrorCode::Internal | ErrorCode::Unspecified => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn protobuf(status: StatusCode, body: Bytes) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
    r
}

fn error(code: ErrorCode, message: &str) -> Response {
    protobuf(
        status_for(code),
        Bytes::from(error_body(code, message).encode_to_vec()),
    )
}

async fn short_link(
    State(gw): State<Arc<Gateway>>,
    Path(method): Path<String>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    gw.stats.http_requests.fetch_add(1, Ordering::Relaxed);
    let Some(c) = method_cmd(&method) else {
        return error(ErrorCode::UnknownCommand, "no such method");
    };
    let body = match axum::body::to_bytes(body, gw.cfg.max_http_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                ErrorCode::TooLarge,
                &format!("body over {} bytes", gw.cfg.max_http_body_bytes),
            )
        }
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let req = BusRequest {
        cmd: u32::from(c),
        body,
        token,
        gateway_id: gw.cfg.id.clone(),
        peer: peer.map(|p| p.0 .0.to_string()).unwrap_or_default(),
        ..Default::default()
    };
    match gw.bus.request(req).await {
        Ok(resp) if resp.cmd == u32::from(cmd::ERROR) => {
            let code = v1::Error::decode(resp.body.clone())
                .ok()
                .and_then(|e| ErrorCode::try_from(e.code).ok())
                .unwrap_or(ErrorCode::Internal);
            protobuf(status_for(code), resp.body)
        }
        Ok(resp) => protobuf(StatusCode::OK, resp.body),
        Err(e) => {
            tracing::warn!(error = %e, "short link could not reach logic");
            error(ErrorCode::Unavailable, "service unavailable; try again")
        }
    }
}
