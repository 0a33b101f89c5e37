//! Conformance: [`ReportStore`](crate::ReportStore) — client log reports.

use std::sync::Arc;

use crate::prelude::*;
use crate::ReportInfo;

pub async fn reports_page_newest_first_and_prune(store: Arc<dyn Store>) {
    let a = store.create_user("alice", "h").await.unwrap();
    let info = |t: i64| ReportInfo {
        id: 0,
        user_id: a,
        device_id: "d".into(),
        client_version: "1.0".into(),
        kind: "crash".into(),
        file_name: "crash.txt".into(),
        length: 3,
        md5: "abc".into(),
        created_ms: t,
    };
    let r1 = store.add_report(info(100), b"one".to_vec()).await.unwrap();
    let r2 = store.add_report(info(200), b"two".to_vec()).await.unwrap();
    let list = store.reports(0, 10).await.unwrap();
    assert_eq!(list.iter().map(|r| r.id).collect::<Vec<_>>(), [r2, r1]);
    assert_eq!(store.reports(r2, 10).await.unwrap().len(), 1);
    let (got, data) = store.report(r1).await.unwrap().unwrap();
    assert_eq!((got.kind.as_str(), data.as_slice()), ("crash", &b"one"[..]));
    assert_eq!(store.prune_reports(150).await.unwrap(), 1);
    assert!(store.report(r1).await.unwrap().is_none());
    assert!(store.report(r2).await.unwrap().is_some());
}
