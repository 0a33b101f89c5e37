//! The JSON APIs for other systems — `ANY /v1/admin/…` (the admin API) and
//! `ANY /v1/bot/…` (the bot API) — forwarded to logic as the `API` command. The gateway
//! reads neither the path's meaning nor the JSON: it hands logic the method, path, query,
//! body, bearer token and `X-Ferry-Actor`, and turns the answer back into HTTP. An answer
//! whose `next` is set continues: the gateway asks for the next part and streams them as
//! one body (exports), never holding more than one part.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use ferry_bus::{BusRequest, BusResponse};
use ferry_proto::bus::{ApiAnswer, ApiCall, Origin};
use ferry_proto::cmd;
use ferry_proto::v1::{self, ErrorCode};
use ferry_proto::ProtoMessage;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};

use crate::http::Peer;
use crate::Gateway;

/// The most parts one streamed answer may have (at ≤ 512 KiB each: 64 GiB), so a logic
/// bug that always answers `next` cannot keep a connection streaming for ever.
const MAX_PARTS: usize = 1 << 17;

/// `ANY /v1/admin/{*rest}` and `ANY /v1/bot/{*rest}`.
pub(crate) async fn call(
    State(gw): State<Arc<Gateway>>,
    peer: Option<Extension<Peer>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    gw.stats.http_requests.fetch_add(1, Ordering::Relaxed);
    let limit = cmd::get(cmd::API)
        .map(|c| c.body_limit(gw.cfg.max_http_body_bytes, gw.cfg.max_upload_bytes))
        .unwrap_or(1 << 20);
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            gw.stats.bad_input.fetch_add(1, Ordering::Relaxed);
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "TOO_LARGE",
                &format!("body over {limit} bytes"),
            );
        }
    };
    let path = uri
        .path()
        .strip_prefix("/v1/")
        .unwrap_or_default()
        .to_owned();
    let actor = headers
        .get("x-ferry-actor")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .chars()
        .take(64)
        .collect();
    let base = BusRequest {
        cmd: u32::from(cmd::API),
        origin: Origin::ShortLink as i32,
        api: Some(ApiCall {
            method: method.as_str().to_owned(),
            path,
            query: uri.query().unwrap_or_default().to_owned(),
            body,
            cursor: Bytes::new(),
            actor,
        }),
        ..crate::http::request_base(&gw, peer, &headers)
    };
    let first = match ask(&gw, base.clone()).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let (answer, body) = first;
    let status = StatusCode::from_u16(answer.status as u16).unwrap_or(StatusCode::OK);
    let content_type = HeaderValue::from_str(&answer.content_type)
        .unwrap_or(HeaderValue::from_static("application/json"));
    let mut resp = if answer.next.is_empty() {
        Response::new(Body::from(body))
    } else {
        // Streamed: this part, then each next one as logic hands it out.
        let state = Some((gw.clone(), base, answer.next, 1usize));
        let rest = futures_util::stream::unfold(state, |state| async move {
            let (gw, mut base, cursor, n) = state?;
            if n >= MAX_PARTS {
                tracing::warn!("a streamed API answer ran past {MAX_PARTS} parts; cut");
                return None;
            }
            if let Some(call) = base.api.as_mut() {
                call.cursor = cursor;
            }
            match ask(&gw, base.clone()).await {
                Ok((a, body)) if a.status < 300 => {
                    let next = (!a.next.is_empty()).then(|| (gw, base, a.next, n + 1));
                    Some((Ok::<Bytes, std::io::Error>(body), next))
                }
                // A part that fails ends the body early: the client sees a truncated
                // stream (a tar without its end blocks), never a silent success.
                _ => Some((
                    Err(std::io::Error::other("the answer could not be continued")),
                    None,
                )),
            }
        });
        let first = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
        use futures_util::StreamExt;
        Response::new(Body::from_stream(first.chain(rest)))
    };
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"ferry\""),
        );
    }
    resp
}

/// One round trip to logic: its answer and body, or the HTTP error to send instead.
async fn ask(gw: &Gateway, req: BusRequest) -> Result<(ApiAnswer, Bytes), Response> {
    match gw.bus.request(req).await {
        Ok(BusResponse {
            api: Some(a), body, ..
        }) => Ok((a, body)),
        Ok(resp) if resp.cmd == u32::from(cmd::ERROR) => {
            // Refused before it reached the API's router (admission shed it, say).
            let e = v1::Error::decode(resp.body).unwrap_or_default();
            let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal);
            let mut r = json_error(
                crate::http::status_for(code),
                code.as_str_name(),
                &e.message,
            );
            if e.retry_after_ms > 0 {
                r.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(e.retry_after_ms.div_ceil(1000)),
                );
            }
            Err(r)
        }
        Ok(_) => Err(json_error(
            StatusCode::BAD_GATEWAY,
            "INTERNAL",
            "logic answered the API call with something else",
        )),
        Err(e) => {
            tracing::warn!(error = %e, "an API call could not reach logic");
            Err(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "service unavailable; try again",
            ))
        }
    }
}

/// An error in the APIs' JSON shape: `{"error":{"code":…,"message":…}}`.
fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    #[derive(serde::Serialize)]
    struct Inner<'a> {
        code: &'a str,
        message: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Outer<'a> {
        error: Inner<'a>,
    }
    let body = serde_json::to_vec(&Outer {
        error: Inner { code, message },
    })
    .unwrap_or_default();
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}
