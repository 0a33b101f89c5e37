//! The webhooks domain's routes of the admin API (contract §3): the table the router
//! matches, and [`Webhooks::api`], which answers them with the handlers of `api.rs`.

use serde_json::Value;

use super::api::{CreateReq, PatchReq, RotateReq};
use super::Webhooks;
use crate::api::{ApiError, Call, Domain, Reply, Route, Scope};

const ENDPOINT: &str = r#"{"type":"object","properties":{"id":{"type":"integer"},"url":{"type":"string"},"events":{"type":"array","items":{"type":"string"}},"description":{"type":"string"},"enabled":{"type":"boolean"},"owner":{"type":["integer","null"]},"created_ms":{"type":"integer"},"delivered":{"type":"integer"},"failed":{"type":"integer"},"previous_secret_valid_until_ms":{"type":["integer","null"]}}}"#;
const CREATED: &str = r#"{"type":"object","description":"the endpoint, with its secret (shown this once)","properties":{"id":{"type":"integer"},"url":{"type":"string"},"events":{"type":"array","items":{"type":"string"}},"secret":{"type":"string"}}}"#;
const LIST: &str =
    r#"{"type":"object","properties":{"webhooks":{"type":"array","items":{"type":"object"}}}}"#;
const CREATE_REQ: &str = r#"{"type":"object","required":["url"],"properties":{"url":{"type":"string"},"events":{"type":"array","items":{"type":"string"},"description":"event types, or \"*\""},"description":{"type":"string"}}}"#;
const PATCH_REQ: &str = r#"{"type":"object","properties":{"url":{"type":"string"},"events":{"type":"array","items":{"type":"string"}},"description":{"type":"string"},"enabled":{"type":"boolean"}}}"#;
const ROTATE_REQ: &str = r#"{"type":"object","properties":{"grace_secs":{"type":"integer","description":"how long the old secret keeps signing (default [logic.webhooks] grace_secs)"}}}"#;
const ROTATED: &str = r#"{"type":"object","properties":{"id":{"type":"integer"},"secret":{"type":"string"},"previous_secret_valid_until_ms":{"type":"integer"}}}"#;
const DEAD: &str = r#"{"type":"object","properties":{"dead":{"type":"array","items":{"type":"object","properties":{"id":{"type":"integer"},"endpoint":{"type":"integer"},"event_id":{"type":"string"},"type":{"type":"string"},"created_ms":{"type":"integer"},"dead_ms":{"type":"integer"},"attempts":{"type":"integer"},"last_error":{"type":"string"},"event":{"type":"object"}}}},"next":{"type":["integer","null"]}}}"#;
const REDRIVEN: &str = r#"{"type":"object","properties":{"redriven":{"type":"integer"}}}"#;
const STATS: &str = r#"{"type":"object","properties":{"endpoints":{"type":"array","items":{"type":"object","properties":{"id":{"type":"integer"},"url":{"type":"string"},"enabled":{"type":"boolean"},"owner":{"type":["integer","null"]},"delivered":{"type":"integer"},"failed":{"type":"integer"},"pending":{"type":"integer"},"dead":{"type":"integer"},"oldest_pending_ms":{"type":["integer","null"]}}}},"node":{"type":"object"}}}"#;

const fn route(
    op: &'static str,
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    query: &'static [(&'static str, &'static str)],
    request: Option<&'static str>,
    response: &'static str,
) -> Route {
    Route {
        op,
        method,
        path,
        scope: Scope::Admin,
        domain: Domain::Webhooks,
        summary,
        query,
        request,
        response,
    }
}

/// The literal paths (`stats`, `dead`) come before `{id}`.
pub(crate) const ROUTES: &[Route] = &[
    route(
        "webhooks.list",
        "GET",
        "admin/webhooks",
        "List webhook endpoints",
        &[],
        None,
        LIST,
    ),
    route(
        "webhooks.create",
        "POST",
        "admin/webhooks",
        "Register a webhook endpoint (answers its secret, once)",
        &[],
        Some(CREATE_REQ),
        CREATED,
    ),
    route(
        "webhooks.stats",
        "GET",
        "admin/webhooks/stats",
        "Delivered, failed, pending and dead per endpoint",
        &[],
        None,
        STATS,
    ),
    route(
        "webhooks.dead",
        "GET",
        "admin/webhooks/dead",
        "Dead letters, newest first",
        &[
            ("endpoint", "only this endpoint's"),
            ("before", "ids below this (the previous page's next)"),
            ("limit", "at most this many (1-500, default 100)"),
        ],
        None,
        DEAD,
    ),
    route(
        "webhooks.redrive_dead",
        "POST",
        "admin/webhooks/dead/{id}/redrive",
        "Queue one dead letter again",
        &[],
        None,
        REDRIVEN,
    ),
    route(
        "webhooks.get",
        "GET",
        "admin/webhooks/{id}",
        "One webhook endpoint",
        &[],
        None,
        ENDPOINT,
    ),
    route(
        "webhooks.update",
        "PATCH",
        "admin/webhooks/{id}",
        "Change an endpoint's url, events, description or enabled",
        &[],
        Some(PATCH_REQ),
        ENDPOINT,
    ),
    route(
        "webhooks.delete",
        "DELETE",
        "admin/webhooks/{id}",
        "Remove an endpoint, its queue and dead letters",
        &[],
        None,
        "",
    ),
    route(
        "webhooks.rotate",
        "POST",
        "admin/webhooks/{id}/rotate",
        "A new secret; the old one signs beside it for the grace period",
        &[],
        Some(ROTATE_REQ),
        ROTATED,
    ),
    route(
        "webhooks.redrive",
        "POST",
        "admin/webhooks/{id}/redrive",
        "Queue every dead letter of an endpoint again",
        &[],
        None,
        REDRIVEN,
    ),
];

fn id(call: &Call<'_>) -> Result<u64, ApiError> {
    call.param("id")
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("not an id: {:?}", call.param("id"))))
}

impl Webhooks {
    /// Answers a call of one of [`ROUTES`].
    pub(crate) async fn api(&self, call: &Call<'_>) -> Result<Reply, ApiError> {
        let v: Value = match call.route.op {
            "webhooks.list" => self.list_json().await?,
            "webhooks.create" => {
                return Ok(Reply::created(
                    &self.create_json(call.json::<CreateReq>()?).await?,
                ))
            }
            "webhooks.stats" => self.stats_json().await?,
            "webhooks.dead" => {
                self.dead_json(
                    call.query_parse("endpoint")?,
                    call.query_parse("before")?,
                    call.query_parse("limit")?,
                )
                .await?
            }
            "webhooks.redrive_dead" => self.redrive_dead_json(id(call)?).await?,
            "webhooks.get" => self.get_json(id(call)?).await?,
            "webhooks.update" => self.patch_json(id(call)?, call.json::<PatchReq>()?).await?,
            "webhooks.delete" => {
                self.delete(id(call)?).await?;
                return Ok(Reply::no_content());
            }
            "webhooks.rotate" => {
                self.rotate_json(id(call)?, call.json::<RotateReq>()?)
                    .await?
            }
            "webhooks.redrive" => self.redrive_endpoint_json(id(call)?).await?,
            op => return Err(ApiError::NotFound(format!("no operation {op}"))),
        };
        Ok(Reply::json(&v))
    }
}
