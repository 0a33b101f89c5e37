//! `GET /v1/admin/openapi.json`: the admin and bot APIs as an OpenAPI 3.1 document,
//! generated from the route tables, so it lists exactly what the server answers.

use serde_json::{json, Map, Value};

use super::{routes, Scope};

/// The error every route may answer.
const ERROR: &str = r#"{"type":"object","required":["error"],"properties":{"error":{"type":"object",
    "required":["code","message"],"properties":{"code":{"type":"string","description":"An error code name (NOT_FOUND, PERMISSION_DENIED, …)"},
    "message":{"type":"string"},"retry_after_ms":{"type":"integer"}}}}}"#;

/// The whole document.
pub(crate) fn document() -> Value {
    let mut paths = Map::new();
    for r in routes() {
        let mut parameters: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| {
                json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
            })
            .collect();
        parameters.extend(r.query.iter().map(|(name, description)| {
            json!({"name": name, "in": "query", "required": false,
                   "description": description, "schema": {"type": "string"}})
        }));
        let security = match r.scope {
            Scope::Admin => json!([{"admin": []}]),
            Scope::Bot => json!([{"bot": []}]),
            Scope::Public => json!([]),
        };
        let ok = if r.response.is_empty() {
            json!({"description": "Done."})
        } else {
            json!({"description": "Done.", "content": {"application/json": {"schema": schema(r.response)}}})
        };
        let mut op = json!({
            "operationId": r.op,
            "summary": r.summary,
            "tags": [r.domain.tag()],
            "security": security,
            "parameters": parameters,
            "responses": {
                "2XX": ok,
                "default": {"description": "Refused or failed.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        });
        if let Some(body) = r.request {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": schema(body)}}});
        }
        let item = paths
            .entry(format!("/{}", r.path))
            .or_insert_with(|| Value::Object(Map::new()));
        item[r.method.to_ascii_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Ferry admin and bot API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "HTTP+JSON APIs for other systems: the admin API (the admin token) and the bot API (bot tokens). See docs/admin-api.md and docs/bots.md.",
        },
        "servers": [{"url": "/v1"}],
        "components": {
            "securitySchemes": {
                "admin": {"type": "http", "scheme": "bearer", "description": "The server's admin token."},
                "bot": {"type": "http", "scheme": "bearer", "description": "A bot's API token (ferry bot create)."},
            },
            "schemas": {"Error": schema(ERROR)},
        },
        "paths": paths,
    })
}

/// A route's schema text as JSON (checked by the route tests to parse).
fn schema(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_in_the_document() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        for r in routes() {
            let op = &doc["paths"][format!("/{}", r.path)][r.method.to_ascii_lowercase()];
            assert_eq!(op["operationId"], r.op, "{} {}", r.method, r.path);
            let path_params = r.path.matches('{').count();
            let listed = op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["in"] == "path")
                .count();
            assert_eq!(listed, path_params, "{}", r.op);
        }
        assert_eq!(
            doc["paths"]["/admin/audit"]["get"]["security"][0]["admin"],
            json!([])
        );
    }
}
