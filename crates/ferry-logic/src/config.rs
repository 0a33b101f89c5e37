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
        }
    }
}
