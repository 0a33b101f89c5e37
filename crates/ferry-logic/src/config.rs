//! `[logic]`: the settings of the logic layer, one struct with a default for every
//! field (the binary loads it from TOML and `FERRY_*` variables).

use crate::auth::PasswordParams;

/// Logic settings. Every field has a default.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogicConfig {
    /// Longest text message, in bytes.
    pub max_text_bytes: usize,
    /// Entries per sync page when the client asks for 0, and the most it may ask for.
    pub sync_page: u32,
    pub sync_page_max: u32,
    /// A sync answer stops adding entries past this many bytes (frames are ≤ 1 MiB).
    pub sync_page_bytes: usize,
    /// Entries whose encoding is at most this many bytes ride inside the notify.
    pub inline_notify_bytes: usize,
    /// The heartbeat interval told to clients at login, in seconds.
    pub heartbeat_secs: u32,
    /// Inbox entries older than this many days are deleted (0: keep forever).
    pub retention_days: u32,
    /// Client log reports older than this many days are deleted (0: keep forever).
    pub report_retention_days: u32,
    /// Let anyone message anyone. Off by default: only friends can message each other.
    pub open_messaging: bool,
    /// Largest group, owner included.
    pub group_max_members: usize,
    /// A sender may recall a message this many seconds after sending it.
    pub recall_window_secs: u32,
    /// Groups up to this size list who read a message; larger ones give a count.
    pub receipts_list_max: usize,
    pub password: PasswordParams,
    /// A device token stops working this many seconds after it was issued (0: never).
    /// A long-link LOGIN past half this age answers with a renewed token.
    pub token_ttl_secs: u64,
    /// Rate limits on password attempts, registrations, logins and sends.
    pub limits: crate::limits::LimitsConfig,
    /// Overload control: how many requests at once, and who is shed first.
    pub admission: crate::admission::AdmissionConfig,
    /// Media uploads and downloads.
    pub media: crate::media::MediaConfig,
    /// Endpoint lists (regions, gateways) and connect reports.
    pub endpoints: crate::endpoints::EndpointsConfig,
    /// Platform push to devices without a live long link (`[logic.push]`).
    pub push: PushSettings,
    /// The before-send hook (`[logic.before_send]`): asked about every message before
    /// it is stored.
    pub before_send: crate::before::BeforeSendConfig,
}

/// `[logic.push]`: when and how the logic layer pushes through APNs, FCM, Web Push and
/// UnifiedPush (the providers' own settings are the binary's `[push]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushSettings {
    /// Plan, queue and send pushes on this node. Off: registrations are refused and no
    /// worker runs.
    pub enabled: bool,
    /// How long a device's first entry waits before its push is due, so that what
    /// follows at once rides in the same push (0: at once).
    pub gather_ms: u64,
    /// After a push, the device's next one waits at least this long; what arrives
    /// meanwhile is coalesced into it.
    pub quiet_ms: u64,
    /// A push not sent within this many seconds of its newest entry is dropped (the
    /// device has most likely synced since, or the news is stale); also the provider's
    /// time to live.
    pub ttl_secs: u64,
    /// Attempts before a push that keeps failing (provider busy or unreachable) is
    /// dropped.
    pub max_attempts: u32,
    /// Groups above this many members push only @mentions (unless a member asked for
    /// every message with PUSH_MODE_ALL).
    pub large_group_members: usize,
    /// How long a node holds claimed pushes; a node that dies mid-send leaves them to
    /// another after this.
    pub lease_ms: u64,
    /// Pushes claimed (and sent concurrently) per round.
    pub batch: u32,
    /// Rounds in flight at once on this node: while one waits for the store or the
    /// providers, the next claims and sends.
    pub workers: u32,
}

impl Default for PushSettings {
    fn default() -> Self {
        PushSettings {
            enabled: true,
            gather_ms: 0,
            quiet_ms: 10_000,
            ttl_secs: 86_400,
            max_attempts: 8,
            large_group_members: 100,
            lease_ms: 30_000,
            batch: 256,
            workers: 4,
        }
    }
}

impl Default for LogicConfig {
    fn default() -> Self {
        LogicConfig {
            max_text_bytes: 8 * 1024,
            sync_page: 200,
            sync_page_max: 1000,
            sync_page_bytes: 256 * 1024,
            inline_notify_bytes: 1024,
            heartbeat_secs: 30,
            retention_days: 30,
            report_retention_days: 14,
            open_messaging: false,
            group_max_members: 10_000,
            recall_window_secs: 120,
            receipts_list_max: 100,
            password: PasswordParams::default(),
            token_ttl_secs: 30 * 86_400,
            limits: crate::limits::LimitsConfig::default(),
            admission: crate::admission::AdmissionConfig::default(),
            media: crate::media::MediaConfig::default(),
            endpoints: crate::endpoints::EndpointsConfig::default(),
            push: PushSettings::default(),
            before_send: crate::before::BeforeSendConfig::default(),
        }
    }
}
