//! What the provider tests share: a simulator with a configuration pointed at it, and
//! notifications.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use ferry_push::sim::Sim;
use ferry_push::{
    Alert, Notification, Provider, PushConfig, PushData, PushId, Sender, Senders, Target,
};

pub struct Setup {
    pub sim: Sim,
    pub config: PushConfig,
    pub senders: Senders,
    /// Holds the key files.
    pub dir: tempfile::TempDir,
}

/// A sim and senders for every provider, each with `concurrency` in flight at most.
pub async fn setup(concurrency: usize) -> Setup {
    let sim = Sim::start().await.expect("the push simulator starts");
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut config = sim
        .config(dir.path())
        .expect("the sim writes keys and a config");
    config.apns.as_mut().unwrap().concurrency = concurrency;
    config.fcm.as_mut().unwrap().concurrency = concurrency;
    config.webpush.as_mut().unwrap().concurrency = concurrency;
    let senders = Senders::from_config(&config).expect("senders from the sim's config");
    Setup {
        sim,
        config,
        senders,
        dir,
    }
}

impl Setup {
    pub fn sender(&self, p: Provider) -> Arc<dyn Sender> {
        self.senders.get(p).expect("configured")
    }

    /// A target for `provider`: an APNs hex token, an FCM token, or a Web Push endpoint
    /// `/wp/<key>` with a throw-away subscription key.
    pub fn target(&self, provider: Provider, key: &str) -> Target {
        match provider {
            Provider::Apns => Target {
                provider,
                token: key.into(),
                endpoint: String::new(),
                p256dh: String::new(),
                auth: String::new(),
                app_id: "org.ferry.app".into(),
                sandbox: false,
            },
            Provider::Fcm => Target {
                provider,
                token: key.into(),
                endpoint: String::new(),
                p256dh: String::new(),
                auth: String::new(),
                app_id: String::new(),
                sandbox: false,
            },
            Provider::WebPush | Provider::UnifiedPush => {
                let (p256dh, auth) = ferry_push::sim::throwaway_subscription();
                Target {
                    provider,
                    token: String::new(),
                    endpoint: self.sim.web_push_endpoint(key),
                    p256dh,
                    auth,
                    app_id: String::new(),
                    sandbox: false,
                }
            }
        }
    }
}

/// An APNs-style device token (64 hex digits) made from `n`.
pub fn apns_token(n: u64) -> String {
    format!("{:064x}", u128::from(n) * 0x9e37_79b9_7f4a_7c15)
}

/// An FCM-style registration token made from `n`.
pub fn fcm_token(n: u64) -> String {
    format!("fcm-{n}:APA91b{}", "x".repeat(100))
}

pub fn note(seq: u64, alert: bool) -> Notification {
    Notification {
        id: PushId::new(7, "phone", seq),
        collapse_id: "u7-phone".into(),
        data: PushData {
            v: 1,
            seq,
            count: 2,
            kind: "message".into(),
            from: "Ana".into(),
            group_id: 0,
            text: "hello there".into(),
        },
        alert: alert.then(|| Alert {
            title: "Ana".into(),
            body: "hello there".into(),
        }),
        badge: Some(3),
        ttl: Duration::from_secs(3600),
        created_ms: 1_760_000_000_123,
        urgent: alert,
    }
}
