//! Conformance: [`AuditStore`](crate::AuditStore) — the admin audit log.

use std::sync::Arc;

use crate::prelude::*;
use crate::AuditEntry;

pub async fn audit_entries_page_newest_first(store: Arc<dyn Store>) {
    assert!(store.audit_log(0, 10).await.unwrap().is_empty());
    let entry = |op: &str, status: u16| AuditEntry {
        at_ms: 1_000,
        actor: "ops@example".into(),
        peer: "127.0.0.1:9".into(),
        op: op.into(),
        method: "POST".into(),
        path: format!("admin/{op}"),
        status,
        detail: r#"{"user":"alice"}"#.into(),
        ..Default::default()
    };
    let a = store
        .append_audit(entry("users.disable", 200))
        .await
        .unwrap();
    let b = store
        .append_audit(entry("users.delete", 404))
        .await
        .unwrap();
    assert!(b > a);
    let all = store.audit_log(0, 10).await.unwrap();
    assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), [b, a]);
    assert_eq!(all[0].op, "users.delete");
    assert_eq!(all[0].status, 404);
    assert_eq!(all[1].detail, r#"{"user":"alice"}"#);
    assert_eq!(all[1].actor, "ops@example");
    let older = store.audit_log(b, 10).await.unwrap();
    assert_eq!(older.len(), 1);
    assert_eq!(older[0].id, a);
    assert_eq!(store.audit_log(0, 1).await.unwrap().len(), 1);
}
