//! The JSON APIs for other systems: the admin API (`/v1/admin/…`, the admin token) and
//! the bot API (`/v1/bot/…`, bot tokens). Gateways forward each HTTP call as the `API`
//! command ([`ferry_proto::bus::ApiCall`]); [`Api::handle`] finds its [`Route`] in the
//! route tables of the domains that answer them, checks the admin token for admin routes,
//! hands the [`Call`] to its domain, writes every admin change to the audit log, and
//! turns the [`Reply`] (or [`ApiError`]) back into an [`ApiAnswer`].
//!
//! The route tables are also the API's documentation: `GET /v1/admin/openapi.json` is
//! generated from them ([`openapi`]). This module owns no business rule; it must not
//! grow one — a route's meaning lives in its domain.

pub(crate) mod json;
mod openapi;

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_bus::{BusRequest, BusResponse};
use ferry_proto::bus::ApiAnswer;
use ferry_proto::cmd;
use ferry_store::{AuditEntry, StoreError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::admission::Permit;
use crate::core::{unix_ms, Core};
use crate::error::LogicError;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The admin token (`Authorization: Bearer <admin token>`), checked here.
    Admin,
    /// A bot's token, checked by the bots domain (it knows the tokens and their scopes).
    Bot,
    /// Anyone: documentation only (`openapi.json`), never data.
    Public,
}

/// The domain that answers a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Domain {
    /// This module: the OpenAPI document and the audit log.
    Api,
    /// Operations: groups, recall, broadcast, limit overrides (`admin_ops.rs`).
    Ops,
    /// Admin users (`admin_users.rs`).
    Users,
    /// Webhook endpoints, dead letters, stats (`webhooks/routes.rs`).
    Webhooks,
    /// Bot accounts, their tokens, and the bot API (`crate::bots`).
    Bots,
    /// The search index (`crate::search`).
    Search,
}

impl Domain {
    /// The OpenAPI tag of the domain's routes.
    fn tag(self) -> &'static str {
        match self {
            Domain::Api => "api",
            Domain::Ops => "operations",
            Domain::Users => "users",
            Domain::Webhooks => "webhooks",
            Domain::Bots => "bots",
            Domain::Search => "search",
        }
    }
}

/// One route of the APIs: a method and path and what answers it.
#[derive(Debug)]
pub(crate) struct Route {
    /// A unique operation id (`users.list`).
    pub op: &'static str,
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: &'static str,
    /// After `/v1/`, with `{name}` for a path parameter: `admin/users/{user}`.
    pub path: &'static str,
    pub scope: Scope,
    pub domain: Domain,
    /// One line for the OpenAPI document.
    pub summary: &'static str,
    /// The query parameters: (name, description).
    pub query: &'static [(&'static str, &'static str)],
    /// The body's JSON Schema, as JSON text; `None` for no body.
    pub request: Option<&'static str>,
    /// The 2xx answer's JSON Schema, as JSON text; "" for no JSON body.
    pub response: &'static str,
}

/// This module's own routes.
pub(crate) const ROUTES: &[Route] = &[
    Route {
        op: "api.openapi",
        method: "GET",
        path: "admin/openapi.json",
        scope: Scope::Public,
        domain: Domain::Api,
        summary: "This document: the admin and bot APIs in OpenAPI 3.1.",
        query: &[],
        request: None,
        response: r#"{"type":"object"}"#,
    },
    Route {
        op: "audit.list",
        method: "GET",
        path: "admin/audit",
        scope: Scope::Admin,
        domain: Domain::Api,
        summary: "The audit log of admin changes, newest first.",
        query: &[
            (
                "before",
                "Entries with an id below this (paging; default: the newest).",
            ),
            ("limit", "At most this many entries (1–500, default 100)."),
        ],
        request: None,
        response: r#"{"type":"object","required":["entries"],"properties":{
            "entries":{"type":"array","items":{"type":"object","properties":{
                "id":{"type":"integer"},"at_ms":{"type":"integer"},"actor":{"type":"string"},
                "peer":{"type":"string"},"op":{"type":"string"},"method":{"type":"string"},
                "path":{"type":"string"},"status":{"type":"integer"},"detail":{}}}},
            "next":{"type":["integer","null"],"description":"`before` for the next page"}}}"#,
    },
];

/// Every route of every domain.
pub(crate) fn routes() -> impl Iterator<Item = &'static Route> {
    ROUTES
        .iter()
        .chain(crate::admin_ops::ROUTES)
        .chain(crate::admin_users::ROUTES)
        .chain(crate::webhooks::routes::ROUTES)
        .chain(crate::bots::ROUTES)
        .chain(crate::search::ROUTES)
}

/// An API call, matched to its route.
pub(crate) struct Call<'a> {
    pub route: &'static Route,
    /// The path's parameters, percent-decoded, by name.
    pub params: Vec<(&'static str, String)>,
    /// The query's pairs, decoded.
    pub query: Vec<(String, String)>,
    pub body: &'a [u8],
    /// Where a streamed answer continues (empty on the first call).
    pub cursor: &'a [u8],
    /// The bearer token as sent (bot routes check it themselves).
    pub token: &'a str,
    /// Who, as the caller names themselves (`X-Ferry-Actor`), else "".
    pub actor: &'a str,
    /// The caller's address.
    pub peer: &'a str,
    /// Hold the call (a long-poll) at most until then: the gateway stops waiting soon
    /// after.
    pub deadline: Option<Instant>,
    /// The call's admission permit, until [`Call::release_admission`].
    permit: parking_lot::Mutex<Option<Permit<'a>>>,
}

impl Call<'_> {
    /// Stops counting this call against admission (`[logic.admission]`): a call that is
    /// about to wait (a long-poll) must not hold a seat others could use meanwhile.
    pub fn release_admission(&self) {
        self.permit.lock().take();
    }

    /// A path parameter ("" when the route has none by that name).
    pub fn param(&self, name: &str) -> &str {
        self.params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    /// A query parameter, the first when repeated.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter parsed, or a 400 that names it.
    pub fn query_parse<T: FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        match self.query(name) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::BadRequest(format!("query parameter {name}: bad value {v:?}"))
            }),
        }
    }

    /// The body as JSON (an empty body reads as `{}`), or a 400 that says why.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let body = if self.body.iter().all(u8::is_ascii_whitespace) {
            &b"{}"[..]
        } else {
            self.body
        };
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))
    }
}

/// A successful answer.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Bytes,
    /// Not empty: the body continues; the next call carries this as its cursor.
    pub next: Vec<u8>,
}

impl Reply {
    fn with_status<T: Serialize>(status: u16, v: &T) -> Reply {
        match serde_json::to_vec(v) {
            Ok(body) => Reply {
                status,
                content_type: "application/json".into(),
                body: body.into(),
                next: Vec::new(),
            },
            Err(e) => ApiError::Internal(format!("encoding the answer: {e}")).reply(),
        }
    }

    /// `200` with a JSON body.
    pub fn json<T: Serialize>(v: &T) -> Reply {
        Reply::with_status(200, v)
    }

    /// `201` with a JSON body: something was created.
    pub fn created<T: Serialize>(v: &T) -> Reply {
        Reply::with_status(201, v)
    }

    /// `204`, no body.
    pub fn no_content() -> Reply {
        Reply {
            status: 204,
            content_type: String::new(),
            body: Bytes::new(),
            next: Vec::new(),
        }
    }

    /// One part of a streamed answer (`200`): `next` empty on the last.
    pub fn part(content_type: &str, body: Bytes, next: Vec<u8>) -> Reply {
        Reply {
            status: 200,
            content_type: content_type.into(),
            body,
            next,
        }
    }
}

/// A refused or failed call: `{"error":{"code","message"}}` with its status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Logic(#[from] LogicError),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Logic(LogicError::Store(e))
    }
}

impl ApiError {
    /// The HTTP status and the error's code name.
    fn status(&self) -> (u16, &'static str) {
        use ferry_proto::v1::ErrorCode as C;
        match self {
            ApiError::BadRequest(_) => (400, "BAD_REQUEST"),
            ApiError::Unauthorized(_) => (401, "UNAUTHORIZED"),
            ApiError::Forbidden(_) => (403, "PERMISSION_DENIED"),
            ApiError::NotFound(_) => (404, "NOT_FOUND"),
            ApiError::MethodNotAllowed(_) => (405, "METHOD_NOT_ALLOWED"),
            ApiError::Conflict(_) => (409, "CONFLICT"),
            ApiError::Unavailable(_) => (503, "UNAVAILABLE"),
            ApiError::Internal(_) => (500, "INTERNAL"),
            ApiError::Logic(e) => {
                let code = e.code();
                let status = match code {
                    C::BadRequest | C::InvalidArgument | C::ChecksumMismatch => 400,
                    C::Unauthorized | C::BadCredentials => 401,
                    C::PermissionDenied => 403,
                    C::NotFound | C::UnknownUser | C::UnknownCommand => 404,
                    C::UserExists => 409,
                    C::TooLarge => 413,
                    C::RateLimited => 429,
                    C::Unavailable => 503,
                    _ => 500,
                };
                (status, code.as_str_name())
            }
        }
    }

    /// The answer that carries it. Internals (SQL, paths) are logged, never sent.
    pub fn reply(&self) -> Reply {
        let (status, code) = self.status();
        let message = match self {
            ApiError::Logic(e) => e.to_body().message,
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "API call failed");
                "internal error; try again".into()
            }
            other => other.to_string(),
        };
        let mut r = Reply::with_status(
            status,
            &json!({"error": {"code": code, "message": message}}),
        );
        if let ApiError::Logic(e) = self {
            let after = e.to_body().retry_after_ms;
            if after > 0 {
                r = Reply::with_status(
                    status,
                    &json!({"error": {"code": code, "message": message, "retry_after_ms": after}}),
                );
            }
        }
        r
    }
}

/// The API router (see the module doc). Each domain that answers routes is a field.
pub(crate) struct Api {
    core: Arc<Core>,
    ops: crate::admin_ops::Ops,
    users: crate::admin_users::AdminUsers,
    webhooks: Arc<crate::webhooks::Webhooks>,
    bots: crate::bots::Bots,
    /// Set once the node's search index is open.
    search: crate::search::SearchSlot,
}

impl Api {
    pub fn new(
        core: Arc<Core>,
        ops: crate::admin_ops::Ops,
        users: crate::admin_users::AdminUsers,
        webhooks: Arc<crate::webhooks::Webhooks>,
        bots: crate::bots::Bots,
        search: crate::search::SearchSlot,
    ) -> Api {
        Api {
            core,
            ops,
            users,
            webhooks,
            bots,
            search,
        }
    }

    /// Answers an `API` command.
    pub async fn handle<'a>(
        &'a self,
        req: &'a BusRequest,
        permit: Permit<'a>,
    ) -> Result<BusResponse, LogicError> {
        let Some(call) = req.api.as_ref() else {
            return Err(LogicError::BadRequest(
                "an API command without its call".into(),
            ));
        };
        let reply = match self.call(req, call, permit).await {
            Ok(r) => r,
            Err(e) => e.reply(),
        };
        Ok(BusResponse {
            cmd: u32::from(cmd::response(cmd::API)),
            body: reply.body,
            api: Some(ApiAnswer {
                status: u32::from(reply.status),
                content_type: reply.content_type,
                next: reply.next.into(),
            }),
            ..Default::default()
        })
    }

    async fn call<'a>(
        &'a self,
        req: &'a BusRequest,
        raw: &'a ferry_proto::bus::ApiCall,
        permit: Permit<'a>,
    ) -> Result<Reply, ApiError> {
        let (route, params) = find(&raw.method, &raw.path)?;
        if route.scope == Scope::Admin {
            self.admit_admin(&req.token)?;
        }
        let deadline = (req.deadline_ms > 0).then(|| {
            let left = req.deadline_ms as i64 - unix_ms();
            // A margin so the answer reaches the gateway before it gives up.
            Instant::now() + Duration::from_millis(left.saturating_sub(250).max(0) as u64)
        });
        let call = Call {
            route,
            params,
            query: form_urlencoded::parse(raw.query.as_bytes())
                .into_owned()
                .collect(),
            body: &raw.body,
            cursor: &raw.cursor,
            token: &req.token,
            actor: &raw.actor,
            peer: &req.peer,
            deadline,
            permit: parking_lot::Mutex::new(Some(permit)),
        };
        let result = self.dispatch(&call).await;
        if route.scope == Scope::Admin && route.method != "GET" {
            let status = match &result {
                Ok(r) => r.status,
                Err(e) => e.status().0,
            };
            self.audit(&call, status).await;
        }
        result
    }

    async fn dispatch(&self, call: &Call<'_>) -> Result<Reply, ApiError> {
        match call.route.domain {
            Domain::Api => self.own(call).await,
            Domain::Ops => self.ops.api(call).await,
            Domain::Users => self.users.api(call).await,
            Domain::Webhooks => self.webhooks.api(call).await,
            Domain::Bots => self.bots.api(call).await,
            Domain::Search => crate::search::api(&self.search, call).await,
        }
    }

    /// The admin token, compared in constant time. No token: 401; another token (a
    /// user's session, a bot's): 403; no admin token configured: 503.
    fn admit_admin(&self, token: &str) -> Result<(), ApiError> {
        let want = &self.core.cfg.admin_token;
        if token.is_empty() {
            return Err(ApiError::Unauthorized(
                "admin token required: Authorization: Bearer <admin token>".into(),
            ));
        }
        if want.is_empty() {
            return Err(ApiError::Unavailable(
                "the admin API is off on this node: set admin_token in its configuration".into(),
            ));
        }
        if !constant_time_eq(want.as_bytes(), token.as_bytes()) {
            return Err(ApiError::Forbidden(
                "this token may not use the admin API".into(),
            ));
        }
        Ok(())
    }

    /// Writes an admin change to the audit log. A failure is logged, not returned: the
    /// change is made and its answer must reach the caller.
    async fn audit(&self, call: &Call<'_>, status: u16) {
        let params: serde_json::Map<String, Value> = call
            .params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::String(v.clone())))
            .collect();
        let detail = json!({
            "params": params,
            "body": redacted_body(call.body),
        });
        let entry = AuditEntry {
            at_ms: unix_ms(),
            actor: if call.actor.is_empty() {
                "admin".into()
            } else {
                call.actor.to_owned()
            },
            peer: call.peer.to_owned(),
            op: call.route.op.to_owned(),
            method: call.route.method.to_owned(),
            path: call.route.path.to_owned(),
            status,
            detail: detail.to_string(),
            ..Default::default()
        };
        metrics::counter!("ferry_admin_actions_total", "op" => call.route.op).increment(1);
        if let Err(e) = self.core.store.append_audit(entry).await {
            tracing::error!(error = %e, op = call.route.op, "could not write the audit log");
        }
    }

    /// This module's routes: the OpenAPI document and the audit log.
    async fn own(&self, call: &Call<'_>) -> Result<Reply, ApiError> {
        match call.route.op {
            "api.openapi" => Ok(Reply::json(&openapi::document())),
            "audit.list" => {
                let before: u64 = call.query_parse("before")?.unwrap_or(0);
                let limit: u32 = call.query_parse("limit")?.unwrap_or(100).clamp(1, 500);
                let entries = self.core.store.audit_log(before, limit).await?;
                let next = (entries.len() == limit as usize)
                    .then(|| entries.last().map(|e| e.id))
                    .flatten();
                let entries: Vec<Value> = entries
                    .into_iter()
                    .map(|e| {
                        json!({
                            "id": e.id, "at_ms": e.at_ms, "actor": e.actor, "peer": e.peer,
                            "op": e.op, "method": e.method, "path": e.path, "status": e.status,
                            "detail": serde_json::from_str::<Value>(&e.detail).unwrap_or(Value::String(e.detail)),
                        })
                    })
                    .collect();
                Ok(Reply::json(&json!({"entries": entries, "next": next})))
            }
            op => Err(ApiError::Internal(format!("no handler for {op}"))),
        }
    }
}

/// A path's parameters: (name, percent-decoded value).
type Params = Vec<(&'static str, String)>;

/// The route a method and path name, with the path's parameters. An unknown path: 404;
/// a known path with another method: 405.
fn find(method: &str, path: &str) -> Result<(&'static Route, Params), ApiError> {
    let path = path.trim_end_matches('/');
    let given: Vec<&str> = path.split('/').collect();
    let mut path_known = false;
    for route in routes() {
        let Some(params) = matches(route.path, &given) else {
            continue;
        };
        path_known = true;
        if route.method.eq_ignore_ascii_case(method) {
            return Ok((route, params));
        }
    }
    if path_known {
        Err(ApiError::MethodNotAllowed(format!(
            "{method} is not allowed on /v1/{path}"
        )))
    } else {
        Err(ApiError::NotFound(format!("no such API route: /v1/{path}")))
    }
}

/// The parameters of `given` (a path split at `/`) under a route's pattern, or `None`.
fn matches(pattern: &'static str, given: &[&str]) -> Option<Params> {
    let want: Vec<&'static str> = pattern.split('/').collect();
    if want.len() != given.len() {
        return None;
    }
    let mut params = Vec::new();
    for (w, g) in want.iter().zip(given) {
        if let Some(name) = w.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
            if g.is_empty() {
                return None;
            }
            let value = percent_encoding::percent_decode_str(g)
                .decode_utf8()
                .ok()?
                .into_owned();
            params.push((name, value));
        } else if w != g {
            return None;
        }
    }
    Some(params)
}

/// The body for the audit log: JSON with every secret-looking field replaced, at most
/// 2 KiB of it; anything else by its size only.
fn redacted_body(body: &[u8]) -> Value {
    fn redact(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    let k = k.to_ascii_lowercase();
                    if ["password", "secret", "token", "key"]
                        .iter()
                        .any(|s| k.contains(s))
                    {
                        *v = Value::String("(redacted)".into());
                    } else {
                        redact(v);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(redact),
            _ => {}
        }
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(mut v) => {
            redact(&mut v);
            if v.to_string().len() > 2048 {
                json!({"bytes": body.len()})
            } else {
                v
            }
        }
        Err(_) => json!({"bytes": body.len()}),
    }
}

/// Compares two byte strings in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_unique_and_well_formed() {
        let mut seen = std::collections::HashSet::new();
        let mut ops = std::collections::HashSet::new();
        for r in routes() {
            assert!(
                ["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&r.method),
                "{}: method {}",
                r.op,
                r.method
            );
            assert!(
                r.path.starts_with("admin/") || r.path.starts_with("bot/"),
                "{}: path {} is neither admin/ nor bot/",
                r.op,
                r.path
            );
            assert!(
                seen.insert((r.method, r.path)),
                "{} {} twice",
                r.method,
                r.path
            );
            assert!(ops.insert(r.op), "op {} twice", r.op);
            if let Some(s) = r.request {
                serde_json::from_str::<Value>(s)
                    .unwrap_or_else(|e| panic!("{}: request schema: {e}", r.op));
            }
            if !r.response.is_empty() {
                serde_json::from_str::<Value>(r.response)
                    .unwrap_or_else(|e| panic!("{}: response schema: {e}", r.op));
            }
            assert!(!r.summary.is_empty(), "{}: no summary", r.op);
        }
    }

    #[test]
    fn paths_match_with_parameters_decoded() {
        let (r, p) = find("GET", "admin/audit").unwrap();
        assert_eq!(r.op, "audit.list");
        assert!(p.is_empty());
        assert!(matches!(
            find("GET", "admin/nothing"),
            Err(ApiError::NotFound(_))
        ));
        assert!(matches!(
            find("DELETE", "admin/audit"),
            Err(ApiError::MethodNotAllowed(_))
        ));
        let given: Vec<&str> = "admin/users/al%20ice/limits".split('/').collect();
        let p = matches("admin/users/{user}/limits", &given).unwrap();
        assert_eq!(p, [("user", "al ice".to_string())]);
        assert!(matches("admin/users/{user}", &["admin", "users", ""]).is_none());
        assert!(matches("admin/users/{user}", &["admin", "users"]).is_none());
    }

    #[test]
    fn secrets_never_reach_the_audit_log() {
        let v = redacted_body(br#"{"name":"bob","password":"hunter2","nested":{"secret":"s","ok":1},"api_token":"t"}"#);
        let s = v.to_string();
        assert!(
            !s.contains("hunter2") && !s.contains("\"s\"") && !s.contains("\"t\""),
            "{s}"
        );
        assert_eq!(v["name"], "bob");
        assert_eq!(v["nested"]["ok"], 1);
        assert_eq!(redacted_body(b"not json"), json!({"bytes": 8}));
        assert_eq!(redacted_body(b""), Value::Null);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn errors_carry_status_and_code() {
        let r = ApiError::NotFound("no user named \"x\"".into()).reply();
        assert_eq!(r.status, 404);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"]["code"], "NOT_FOUND");
        let r = ApiError::Logic(LogicError::UnknownUser("x".into())).reply();
        assert_eq!(r.status, 404);
        let r = ApiError::Logic(LogicError::RateLimited("slow down".into(), 1500)).reply();
        assert_eq!(r.status, 429);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"]["retry_after_ms"], 1500);
        // Internals stay in the log.
        let r = ApiError::Internal("SELECT * FROM secrets failed".into()).reply();
        assert!(!String::from_utf8_lossy(&r.body).contains("SELECT"));
    }
}
