//! The webhooks part of the admin API (contract §3; docs/webhooks.md, "Admin API"):
//! endpoints (list, add, show, change, remove), secret rotation, dead letters and
//! their redrive, stats. Every answer is JSON; a secret is shown only when it is made
//! (add, rotate).
//!
//! The handlers are plain methods taking decoded arguments; the admin router hands
//! them its calls.

use ferry_store::{HookDelivery, HookEndpoint};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{events, sign, Webhooks};
use crate::core::unix_ms;
use crate::error::LogicError;

/// Longest endpoint URL.
const URL_MAX: usize = 2048;
/// Longest description.
const DESCRIPTION_MAX: usize = 256;
/// Most dead letters in one page.
const DEAD_PAGE_MAX: u32 = 500;

/// `POST admin/webhooks`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateReq {
    pub url: String,
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(default)]
    pub description: String,
}

/// `PATCH admin/webhooks/{id}`: what is given changes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchReq {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

/// `POST admin/webhooks/{id}/rotate`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateReq {
    /// How long the old secret keeps signing (default `[logic.webhooks] grace_secs`).
    pub grace_secs: Option<u64>,
}

/// An http(s) URL of at most [`URL_MAX`] bytes.
pub(crate) fn check_url(url: &str) -> Result<(), LogicError> {
    let bad = |why: &str| LogicError::InvalidArgument(format!("url: {why}"));
    if url.len() > URL_MAX {
        return Err(bad("too long"));
    }
    let u = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(bad("an http:// or https:// URL with a host"));
    }
    Ok(())
}

fn check_events(events: &[String]) -> Result<(), LogicError> {
    if events.is_empty() {
        return Err(LogicError::InvalidArgument(
            "events: at least one event type (or \"*\")".into(),
        ));
    }
    for e in events {
        if e != "*" && !events::EVENT_TYPES.contains(&e.as_str()) {
            return Err(LogicError::InvalidArgument(format!(
                "events: unknown event type {e:?} (known: {})",
                events::EVENT_TYPES.join(", ")
            )));
        }
    }
    Ok(())
}

fn check_description(d: &str) -> Result<(), LogicError> {
    if d.len() > DESCRIPTION_MAX {
        return Err(LogicError::InvalidArgument(format!(
            "description: at most {DESCRIPTION_MAX} bytes"
        )));
    }
    Ok(())
}

/// An endpoint as the API shows it (never its secrets).
pub(crate) fn endpoint_json(e: &HookEndpoint) -> Value {
    let now = unix_ms();
    let rotating = !e.prev_secret.is_empty() && e.prev_secret_until_ms > now;
    json!({
        "id": e.id,
        "url": e.url,
        "events": e.events,
        "description": e.description,
        "enabled": e.enabled,
        "owner": if e.owner_user_id == 0 { Value::Null } else { json!(e.owner_user_id) },
        "created_ms": e.created_ms,
        "delivered": e.delivered,
        "failed": e.failed,
        "previous_secret_valid_until_ms": if rotating { json!(e.prev_secret_until_ms) } else { Value::Null },
    })
}

/// A dead letter as the API shows it (the event itself included, as JSON).
pub(crate) fn dead_json(d: &HookDelivery) -> Value {
    json!({
        "id": d.id,
        "endpoint": d.endpoint_id,
        "event_id": d.event_id,
        "type": d.event_type,
        "created_ms": d.created_ms,
        "dead_ms": d.dead_ms,
        "attempts": d.attempts,
        "last_error": d.last_error,
        "event": serde_json::from_slice::<Value>(&d.payload).unwrap_or(Value::Null),
    })
}

fn missing(id: u64) -> LogicError {
    LogicError::NotFound(format!("no webhook endpoint {id}"))
}

impl Webhooks {
    async fn endpoint(&self, id: u64) -> Result<HookEndpoint, LogicError> {
        self.core
            .store
            .hook_endpoints()
            .await?
            .into_iter()
            .find(|e| e.id == id)
            .ok_or_else(|| missing(id))
    }

    /// `GET admin/webhooks` → `{"webhooks":[…]}`.
    pub(crate) async fn list_json(&self) -> Result<Value, LogicError> {
        let all = self.core.store.hook_endpoints().await?;
        Ok(json!({"webhooks": all.iter().map(endpoint_json).collect::<Vec<_>>()}))
    }

    /// `POST admin/webhooks` → the endpoint with its `secret` (shown this once).
    pub(crate) async fn create_json(&self, r: CreateReq) -> Result<Value, LogicError> {
        check_url(&r.url)?;
        check_events(&r.events)?;
        check_description(&r.description)?;
        let e = self
            .core
            .store
            .create_hook_endpoint(HookEndpoint {
                url: r.url,
                events: r.events,
                description: r.description,
                secret: sign::new_secret(),
                enabled: true,
                ..Default::default()
            })
            .await?;
        self.refresh().await?;
        let mut v = endpoint_json(&e);
        v["secret"] = json!(e.secret);
        Ok(v)
    }

    /// `GET admin/webhooks/{id}`.
    pub(crate) async fn get_json(&self, id: u64) -> Result<Value, LogicError> {
        Ok(endpoint_json(&self.endpoint(id).await?))
    }

    /// `PATCH admin/webhooks/{id}`.
    pub(crate) async fn patch_json(&self, id: u64, r: PatchReq) -> Result<Value, LogicError> {
        let mut e = self.endpoint(id).await?;
        if let Some(url) = r.url {
            check_url(&url)?;
            e.url = url;
        }
        if let Some(events) = r.events {
            if e.owner_user_id != 0 {
                return Err(LogicError::InvalidArgument(
                    "a bot's own endpoint hears its updates only".into(),
                ));
            }
            check_events(&events)?;
            e.events = events;
        }
        if let Some(d) = r.description {
            check_description(&d)?;
            e.description = d;
        }
        if let Some(on) = r.enabled {
            e.enabled = on;
        }
        if !self.core.store.update_hook_endpoint(e.clone()).await? {
            return Err(missing(id));
        }
        self.refresh().await?;
        Ok(endpoint_json(&e))
    }

    /// `DELETE admin/webhooks/{id}` (its outbox and dead letters go too).
    pub(crate) async fn delete(&self, id: u64) -> Result<(), LogicError> {
        if !self.core.store.delete_hook_endpoint(id).await? {
            return Err(missing(id));
        }
        self.refresh().await
    }

    /// `POST admin/webhooks/{id}/rotate` → `{"secret","previous_secret_valid_until_ms"}`:
    /// the new secret signs from now on, the old one beside it until then.
    pub(crate) async fn rotate_json(&self, id: u64, r: RotateReq) -> Result<Value, LogicError> {
        let e = self.endpoint(id).await?;
        let grace = r.grace_secs.unwrap_or(self.cfg.grace_secs);
        let until = unix_ms().saturating_add((grace as i64).saturating_mul(1000));
        let secret = sign::new_secret();
        let changed = HookEndpoint {
            prev_secret: e.secret.clone(),
            prev_secret_until_ms: until,
            secret: secret.clone(),
            ..e
        };
        if !self.core.store.update_hook_endpoint(changed).await? {
            return Err(missing(id));
        }
        self.refresh().await?;
        Ok(json!({"id": id, "secret": secret, "previous_secret_valid_until_ms": until}))
    }

    /// `GET admin/webhooks/dead?endpoint=&before=&limit=` → `{"dead":[…],"next"}`
    /// (`next`: the `before` of the next page, or null).
    pub(crate) async fn dead_json(
        &self,
        endpoint: Option<u64>,
        before: Option<u64>,
        limit: Option<u32>,
    ) -> Result<Value, LogicError> {
        let limit = limit.unwrap_or(100).clamp(1, DEAD_PAGE_MAX);
        let page = self
            .core
            .store
            .hook_dead_letters(endpoint, before, limit)
            .await?;
        let next = if page.len() as u32 == limit {
            page.last().map(|d| json!(d.id)).unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        Ok(json!({"dead": page.iter().map(dead_json).collect::<Vec<_>>(), "next": next}))
    }

    /// `POST admin/webhooks/dead/{id}/redrive` → `{"redriven":1}`.
    pub(crate) async fn redrive_dead_json(&self, id: u64) -> Result<Value, LogicError> {
        if !self.core.store.redrive_hook_dead(id, unix_ms()).await? {
            return Err(LogicError::NotFound(format!("no dead letter {id}")));
        }
        self.core.hooks.wake.notify_one();
        Ok(json!({"redriven": 1}))
    }

    /// `POST admin/webhooks/{id}/redrive` → `{"redriven":n}`: every dead letter of it.
    pub(crate) async fn redrive_endpoint_json(&self, id: u64) -> Result<Value, LogicError> {
        self.endpoint(id).await?;
        let n = self.core.store.redrive_hook_endpoint(id, unix_ms()).await?;
        self.core.hooks.wake.notify_one();
        Ok(json!({"redriven": n}))
    }

    /// `GET admin/webhooks/stats` → `{"endpoints":[{"id","url","delivered","failed",
    /// "pending","dead","oldest_pending_ms"}],"node":{…}}`.
    pub(crate) async fn stats_json(&self) -> Result<Value, LogicError> {
        let stats = self.core.store.hook_stats().await?;
        let reg = self.core.hooks.registry();
        let endpoints: Vec<Value> = stats
            .iter()
            .map(|s| {
                let ep = reg.by_id.get(&s.endpoint_id);
                json!({
                    "id": s.endpoint_id,
                    "url": ep.map(|e| e.url.clone()).unwrap_or_default(),
                    "enabled": ep.map(|e| e.enabled).unwrap_or(true),
                    "owner": ep.map(|e| e.owner_user_id).filter(|o| *o != 0),
                    "delivered": s.delivered,
                    "failed": s.failed,
                    "pending": s.pending,
                    "dead": s.dead,
                    "oldest_pending_ms": if s.oldest_pending_ms == 0 { Value::Null } else { json!(s.oldest_pending_ms) },
                })
            })
            .collect();
        let (delivered, failed, dead) = self.counts();
        Ok(json!({
            "endpoints": endpoints,
            "node": {
                "enqueued": self.core.hooks.enqueued.load(std::sync::atomic::Ordering::Relaxed),
                "delivered": delivered,
                "failed": failed,
                "dead": dead,
            },
        }))
    }
}
