//! `ferry push …`: this device's push target and the user's per-conversation push
//! settings, over the short link (docs/protocol.md, Push). A CLI device has no app to
//! wake, so registering one is for trying a server out and for scripts that register on
//! an app's behalf with a token the app handed over.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use ferry_client::push;
use ferry_proto::v1;

use crate::cli::ClientOpts;

/// `ferry push …`
#[derive(Debug, Subcommand)]
pub enum PushCmd {
    /// Register (or replace) this device's push target.
    Register {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// The user's push targets, one per device (JSON lines).
    List {
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Remove this device's push target, or another device's with --device.
    Remove {
        #[command(flatten)]
        opts: ClientOpts,
        /// The device whose target goes (as `ferry push list` shows it).
        #[arg(long)]
        device: Option<String>,
    },
    /// Silence a conversation's pushes (a 1:1 chat with PEER, or --group ID).
    Mute {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        conv: ConvArgs,
        /// Until when: a duration from now (90m, 8h, 7d) or unix ms. Default: for good.
        #[arg(long)]
        until: Option<String>,
        /// Still push @mentions of me (a group's "mentions only").
        #[arg(long)]
        mentions: bool,
    },
    /// Back to the server's rule for a conversation.
    Unmute {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        conv: ConvArgs,
    },
    /// Every message of a group pushes, however large the group.
    All {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        conv: ConvArgs,
        #[arg(long)]
        until: Option<String>,
    },
    /// The user's conversation push settings (JSON lines).
    Prefs {
        #[command(flatten)]
        opts: ClientOpts,
    },
}

/// The push services, as `--provider` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderArg {
    Apns,
    Fcm,
    Webpush,
    Unifiedpush,
}

/// How much a push shows on the lock screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PreviewArg {
    /// "New message" and nothing else.
    None,
    /// Who sent it, not what.
    Sender,
    /// Who and the text (the text then leaves the server through the provider).
    Full,
}

/// A push target on the command line.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// The push service the app registered with.
    #[arg(long, value_enum)]
    pub provider: ProviderArg,
    /// APNs device token (hex) or FCM registration token. The values below may start
    /// with a `-` (base64url and FCM tokens use it): taken as values, not options.
    #[arg(long, allow_hyphen_values = true, conflicts_with_all = ["endpoint", "p256dh", "auth"])]
    pub token: Option<String>,
    /// Web Push / UnifiedPush: the subscription's https endpoint.
    #[arg(long, requires_all = ["p256dh", "auth"])]
    pub endpoint: Option<String>,
    /// Web Push / UnifiedPush: the P-256 public key, base64url.
    #[arg(long, allow_hyphen_values = true, requires = "endpoint")]
    pub p256dh: Option<String>,
    /// Web Push / UnifiedPush: the auth secret, base64url.
    #[arg(long, allow_hyphen_values = true, requires = "endpoint")]
    pub auth: Option<String>,
    /// APNs: the topic (the app's bundle id; required). FCM: the Firebase project
    /// (default: the server's).
    #[arg(long, default_value = "")]
    pub app_id: String,
    /// APNs: the development environment.
    #[arg(long)]
    pub sandbox: bool,
    /// Language of the texts the server writes ("New message"), e.g. en, de.
    #[arg(long, default_value = "")]
    pub locale: String,
    #[arg(long, value_enum, default_value = "none")]
    pub preview: PreviewArg,
    /// Do not disturb, local time: HH:MM-HH:MM (may wrap past midnight); pushes then
    /// are silent.
    #[arg(long, value_parser = parse_dnd)]
    pub dnd: Option<(u32, u32)>,
    /// This device's offset from UTC, for --dnd: +HH:MM, -HH:MM or minutes.
    #[arg(long, default_value = "0", allow_hyphen_values = true, value_parser = parse_utc_offset)]
    pub utc_offset: i32,
}

/// A conversation: a peer or a group.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct ConvArgs {
    /// The peer of a 1:1 chat.
    pub peer: Option<String>,
    /// A group id instead of a peer.
    #[arg(long)]
    pub group: Option<u64>,
}

fn parse_dnd(s: &str) -> Result<(u32, u32), String> {
    push::parse_dnd(s).map_err(|e| e.to_string())
}

/// `+HH:MM`, `-HH:MM` or minutes, within ±14 hours.
pub fn parse_utc_offset(s: &str) -> Result<i32, String> {
    let s = s.trim();
    let bad = || format!("UTC offset {s:?}: expected +HH:MM, -HH:MM or minutes");
    let minutes = match s.split_once(':') {
        Some((h, m)) => {
            let neg = h.starts_with('-');
            let h: i32 = h
                .trim_start_matches(['+', '-'])
                .parse()
                .map_err(|_| bad())?;
            let m: i32 = m.parse().map_err(|_| bad())?;
            if !(0..60).contains(&m) {
                return Err(bad());
            }
            let abs = h * 60 + m;
            if neg {
                -abs
            } else {
                abs
            }
        }
        None => s.parse().map_err(|_| bad())?,
    };
    if minutes.abs() > 14 * 60 {
        return Err(bad());
    }
    Ok(minutes)
}

/// `--until`: a duration from `now_ms` (`90s`, `90m`, `8h`, `7d`) or unix ms.
pub fn parse_until(s: &str, now_ms: i64) -> anyhow::Result<i64> {
    let s = s.trim();
    let bad = || anyhow::anyhow!("--until {s:?}: expected a duration (90m, 8h, 7d) or unix ms");
    if let Ok(ms) = s.parse::<i64>() {
        anyhow::ensure!(ms > now_ms, "--until {s}: that is in the past");
        return Ok(ms);
    }
    let split = s.len().checked_sub(1).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(bad()),
    };
    anyhow::ensure!(secs > 0, "--until {s}: must be later than now");
    Ok(now_ms.saturating_add(Duration::from_secs(secs).as_millis() as i64))
}

impl TargetArgs {
    /// The target to register, its fields checked for the provider.
    pub fn target(&self) -> anyhow::Result<v1::PushTarget> {
        let mut t = match self.provider {
            ProviderArg::Apns | ProviderArg::Fcm => {
                let token = self
                    .token
                    .as_deref()
                    .context("--token is required for apns and fcm")?;
                if self.provider == ProviderArg::Apns {
                    anyhow::ensure!(
                        !self.app_id.is_empty(),
                        "--app-id (the app's bundle id, the APNs topic) is required for apns"
                    );
                    push::apns(token, &self.app_id, self.sandbox)
                } else {
                    push::fcm(token, &self.app_id)
                }
            }
            ProviderArg::Webpush | ProviderArg::Unifiedpush => {
                let (Some(endpoint), Some(p256dh), Some(auth)) =
                    (&self.endpoint, &self.p256dh, &self.auth)
                else {
                    anyhow::bail!(
                        "--endpoint, --p256dh and --auth are required for webpush and unifiedpush"
                    );
                };
                if self.provider == ProviderArg::Webpush {
                    push::web_push(endpoint, p256dh, auth)
                } else {
                    push::unified_push(endpoint, p256dh, auth)
                }
            }
        };
        anyhow::ensure!(
            !self.sandbox || self.provider == ProviderArg::Apns,
            "--sandbox is for apns only"
        );
        t.locale.clone_from(&self.locale);
        t.preview = match self.preview {
            PreviewArg::None => v1::PushPreview::PreviewNone,
            PreviewArg::Sender => v1::PushPreview::PreviewSender,
            PreviewArg::Full => v1::PushPreview::PreviewFull,
        } as i32;
        if let Some((start, end)) = self.dnd {
            t.dnd_start_min = start;
            t.dnd_end_min = end;
        }
        t.utc_offset_min = self.utc_offset;
        Ok(t)
    }
}

impl ConvArgs {
    fn setting(&self, mode: v1::PushMode, until_ms: i64) -> v1::ConversationPush {
        v1::ConversationPush {
            peer: self.peer.clone().unwrap_or_default(),
            group_id: self.group.unwrap_or_default(),
            mode: mode as i32,
            until_ms,
        }
    }
}

/// A token or key shown in part: enough to tell targets apart, not to use one.
fn clip(s: &str) -> String {
    match s.char_indices().nth(12) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn provider_name(p: i32) -> &'static str {
    match v1::PushProvider::try_from(p) {
        Ok(v1::PushProvider::Apns) => "apns",
        Ok(v1::PushProvider::Fcm) => "fcm",
        Ok(v1::PushProvider::Webpush) => "webpush",
        Ok(v1::PushProvider::Unifiedpush) => "unifiedpush",
        _ => "unknown",
    }
}

/// One target as a JSON line (`this_device`: the CLI's own device).
pub fn target_json(t: &v1::PushTarget, my_device: &str) -> serde_json::Value {
    let preview = match t.preview() {
        v1::PushPreview::PreviewNone => "none",
        v1::PushPreview::PreviewSender => "sender",
        v1::PushPreview::PreviewFull => "full",
    };
    let mut j = serde_json::json!({
        "device": t.device_id,
        "this_device": t.device_id == my_device,
        "provider": provider_name(t.provider),
        "preview": preview,
        "created_ms": t.created_ms,
    });
    let o = j.as_object_mut().expect("an object");
    if !t.token.is_empty() {
        o.insert("token".into(), clip(&t.token).into());
    }
    if !t.endpoint.is_empty() {
        o.insert("endpoint".into(), t.endpoint.clone().into());
    }
    if !t.app_id.is_empty() {
        o.insert("app_id".into(), t.app_id.clone().into());
    }
    if t.sandbox {
        o.insert("sandbox".into(), true.into());
    }
    if !t.locale.is_empty() {
        o.insert("locale".into(), t.locale.clone().into());
    }
    if t.dnd_start_min != t.dnd_end_min {
        o.insert(
            "dnd".into(),
            format!(
                "{}-{}",
                push::format_minutes(t.dnd_start_min),
                push::format_minutes(t.dnd_end_min)
            )
            .into(),
        );
        o.insert("utc_offset_min".into(), t.utc_offset_min.into());
    }
    j
}

/// One conversation setting as a JSON line.
pub fn setting_json(c: &v1::ConversationPush) -> serde_json::Value {
    let mode = match c.mode() {
        v1::PushMode::Default => "default",
        v1::PushMode::Muted => "muted",
        v1::PushMode::Mentions => "mentions",
        v1::PushMode::All => "all",
    };
    let mut j = if c.group_id != 0 {
        serde_json::json!({ "group_id": c.group_id, "mode": mode })
    } else {
        serde_json::json!({ "peer": c.peer, "mode": mode })
    };
    if c.until_ms != 0 {
        j["until_ms"] = c.until_ms.into();
    }
    j
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub async fn run(cmd: PushCmd) -> anyhow::Result<()> {
    let open = |opts: &ClientOpts| {
        let cfg = opts.config();
        async move {
            ferry_client::Account::open(cfg?)
                .await
                .context("signing in")
        }
    };
    match cmd {
        PushCmd::Register { opts, target } => {
            let t = target.target()?;
            let account = open(&opts).await?;
            let stored = account.register_push(t).await.context("registering")?;
            let me = device_of(&opts)?;
            println!("{}", target_json(&stored, &me));
        }
        PushCmd::List { opts } => {
            let account = open(&opts).await?;
            let me = device_of(&opts)?;
            for t in account.push_targets().await? {
                println!("{}", target_json(&t, &me));
            }
        }
        PushCmd::Remove { opts, device } => {
            open(&opts)
                .await?
                .unregister_push(device.as_deref())
                .await?;
            match device {
                Some(d) => println!("removed the push target of device {d}"),
                None => println!("removed this device's push target"),
            }
        }
        PushCmd::Mute {
            opts,
            conv,
            until,
            mentions,
        } => {
            let until_ms = match until {
                Some(u) => parse_until(&u, now_ms())?,
                None => 0,
            };
            let mode = if mentions {
                v1::PushMode::Mentions
            } else {
                v1::PushMode::Muted
            };
            set(&open(&opts).await?, conv.setting(mode, until_ms)).await?;
        }
        PushCmd::Unmute { opts, conv } => {
            set(&open(&opts).await?, conv.setting(v1::PushMode::Default, 0)).await?;
        }
        PushCmd::All { opts, conv, until } => {
            let until_ms = match until {
                Some(u) => parse_until(&u, now_ms())?,
                None => 0,
            };
            set(
                &open(&opts).await?,
                conv.setting(v1::PushMode::All, until_ms),
            )
            .await?;
        }
        PushCmd::Prefs { opts } => {
            for c in open(&opts).await?.push_prefs().await? {
                println!("{}", setting_json(&c));
            }
        }
    }
    Ok(())
}

/// Applies one setting and prints every setting the server now has.
async fn set(account: &ferry_client::Account, c: v1::ConversationPush) -> anyhow::Result<()> {
    for c in account.set_push_prefs(vec![c]).await? {
        println!("{}", setting_json(&c));
    }
    Ok(())
}

/// This CLI device's id (from its state folder).
fn device_of(opts: &ClientOpts) -> anyhow::Result<String> {
    let dir = opts.state_dir();
    Ok(ferry_client::DeviceState::load(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .device_id)
}

// ---- ferry admin push test ----------------------------------------------------------

/// What `ferry admin push test` did for one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    pub device: String,
    pub provider: String,
    pub outcome: ferry_push::Outcome,
    /// The target was removed (the provider said it is gone).
    pub removed: bool,
}

impl std::fmt::Display for TestResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use ferry_push::Outcome;
        write!(
            f,
            "device {}  {}  {}",
            self.device,
            self.provider,
            self.outcome.label()
        )?;
        match &self.outcome {
            Outcome::Accepted => Ok(()),
            Outcome::Gone { reason } => write!(
                f,
                ": {reason}{}",
                if self.removed {
                    " (target removed)"
                } else {
                    ""
                }
            ),
            Outcome::Retry { after, reason } => match after {
                Some(a) => write!(f, ": {reason} (retry after {} s)", a.as_secs()),
                None => write!(f, ": {reason}"),
            },
            Outcome::Rejected { reason } => write!(f, ": {reason}"),
        }
    }
}

/// The test push to one target: kind `test`, standing for nothing new (`seq` the
/// device's synckey, `count` 0), an alert, no badge (the app's badge stays as it is), and
/// its own collapse id, so it neither replaces nor is replaced by a real push.
fn test_notification(
    user: u64,
    device: &str,
    synckey: u64,
    now_ms: i64,
) -> ferry_push::Notification {
    ferry_push::Notification {
        // The top bit keeps it apart from every real push's id (those count inbox seqs).
        id: ferry_push::PushId::new(user, device, (1 << 63) | now_ms as u64),
        collapse_id: "ferry-test".into(),
        data: ferry_push::PushData {
            v: 1,
            seq: synckey,
            count: 0,
            kind: "test".into(),
            ..Default::default()
        },
        alert: Some(ferry_push::Alert {
            title: "Ferry".into(),
            body: "Test notification from your server".into(),
        }),
        badge: None,
        ttl: Duration::from_secs(600),
        created_ms: now_ms,
        urgent: true,
    }
}

/// `ferry admin push test USER`: a test push to each of the user's targets with the
/// real senders; a target the provider says is gone is removed (unless registered again
/// since). One result per target, in device order.
pub async fn admin_push_test(
    store: std::sync::Arc<dyn ferry_store::Store>,
    push: &ferry_push::PushConfig,
    user: &str,
) -> anyhow::Result<Vec<TestResult>> {
    use ferry_push::{Outcome, Provider, Senders};
    anyhow::ensure!(
        push.apns.is_some() || push.fcm.is_some() || push.webpush.is_some(),
        "no push provider is configured: give the server's --config FILE with its [push] section"
    );
    let senders = Senders::from_config(push)?;
    let u = store
        .user_by_name(user)
        .await?
        .with_context(|| format!("no user {user:?}"))?;
    let targets = store.push_targets(u.id).await?;
    anyhow::ensure!(!targets.is_empty(), "{user} has no push targets");
    let now = now_ms();
    let mut out = Vec::with_capacity(targets.len());
    for t in targets {
        let Some(provider) = Provider::from_name(&t.provider) else {
            out.push(TestResult {
                device: t.device_id,
                provider: t.provider.clone(),
                outcome: Outcome::Rejected {
                    reason: format!("unknown provider {:?}", t.provider),
                },
                removed: false,
            });
            continue;
        };
        let Some(sender) = senders.get(provider) else {
            out.push(TestResult {
                device: t.device_id,
                provider: t.provider,
                outcome: Outcome::Rejected {
                    reason: format!(
                        "not configured: no [push.{}] section",
                        config_section(provider)
                    ),
                },
                removed: false,
            });
            continue;
        };
        let synckey = store.synckey(u.id, &t.device_id).await?.unwrap_or(0);
        let target = ferry_push::Target {
            provider,
            token: t.token.clone(),
            endpoint: t.endpoint.clone(),
            p256dh: t.p256dh.clone(),
            auth: t.auth.clone(),
            app_id: t.app_id.clone(),
            sandbox: t.sandbox,
        };
        let outcome = sender
            .send(
                &target,
                &test_notification(u.id, &t.device_id, synckey, now),
            )
            .await;
        let removed = match outcome {
            Outcome::Gone { .. } => store
                .delete_push_target_if(u.id, &t.device_id, t.registered_ms)
                .await
                .context("removing the gone target")?,
            _ => false,
        };
        out.push(TestResult {
            device: t.device_id,
            provider: t.provider,
            outcome,
            removed,
        });
    }
    Ok(out)
}

/// The `[push]` sub-table that configures `p`.
fn config_section(p: ferry_push::Provider) -> &'static str {
    match p {
        ferry_push::Provider::Apns => "apns",
        ferry_push::Provider::Fcm => "fcm",
        ferry_push::Provider::WebPush | ferry_push::Provider::UnifiedPush => "webpush",
    }
}

/// Prints each result; an error when none was accepted.
pub fn report_push_test(results: &[TestResult]) -> anyhow::Result<()> {
    for r in results {
        println!("{r}");
    }
    let accepted = results
        .iter()
        .filter(|r| r.outcome == ferry_push::Outcome::Accepted)
        .count();
    anyhow::ensure!(accepted > 0, "no test push was accepted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: PushCmd,
    }

    fn parse(args: &[&str]) -> Result<PushCmd, clap::Error> {
        let mut all = vec!["push", "--user", "u", "--password", "p"];
        all.splice(1..1, args.iter().copied());
        Cli::try_parse_from(all).map(|c| c.cmd)
    }

    fn target(args: &[&str]) -> anyhow::Result<v1::PushTarget> {
        let mut all = vec!["register"];
        all.extend_from_slice(args);
        match parse(&all).map_err(|e| anyhow::anyhow!(e.to_string()))? {
            PushCmd::Register { target, .. } => target.target(),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn register_builds_each_provider_target() {
        let t = target(&[
            "--provider",
            "apns",
            "--token",
            "abcd",
            "--app-id",
            "chat.app",
            "--sandbox",
            "--preview",
            "sender",
            "--locale",
            "de",
            "--dnd",
            "22:00-07:00",
            "--utc-offset",
            "+01:00",
        ])
        .unwrap();
        assert_eq!(t.provider(), v1::PushProvider::Apns);
        assert_eq!(
            (t.token.as_str(), t.app_id.as_str(), t.sandbox),
            ("abcd", "chat.app", true)
        );
        assert_eq!(t.preview(), v1::PushPreview::PreviewSender);
        assert_eq!(
            (t.dnd_start_min, t.dnd_end_min, t.utc_offset_min),
            (1320, 420, 60)
        );
        assert_eq!(t.locale, "de");

        let t = target(&["--provider", "fcm", "--token", "tok"]).unwrap();
        assert_eq!(
            (t.provider(), t.token.as_str()),
            (v1::PushProvider::Fcm, "tok")
        );
        assert_eq!(t.preview(), v1::PushPreview::PreviewNone);

        let web = [
            "--endpoint",
            "https://push.example/s/1",
            "--p256dh",
            "BPk",
            "--auth",
            "au",
        ];
        for (name, p) in [
            ("webpush", v1::PushProvider::Webpush),
            ("unifiedpush", v1::PushProvider::Unifiedpush),
        ] {
            let mut args = vec!["--provider", name];
            args.extend_from_slice(&web);
            let t = target(&args).unwrap();
            assert_eq!(t.provider(), p);
            assert_eq!(
                (t.endpoint.as_str(), t.p256dh.as_str(), t.auth.as_str()),
                ("https://push.example/s/1", "BPk", "au")
            );
            assert!(t.token.is_empty());
        }
        let t = target(&["--provider", "fcm", "--token", "t", "--utc-offset", "-330"]).unwrap();
        assert_eq!(t.utc_offset_min, -330);
        // base64url (and FCM tokens) may start with a `-`: one random auth secret in 64
        // does, and was once refused as an unknown option.
        let t = target(&[
            "--provider",
            "webpush",
            "--endpoint",
            "https://push.example/s/1",
            "--p256dh",
            "-Pk",
            "--auth",
            "-7Qx_k",
        ])
        .unwrap();
        assert_eq!((t.p256dh.as_str(), t.auth.as_str()), ("-Pk", "-7Qx_k"));
        let t = target(&["--provider", "fcm", "--token", "-tok"]).unwrap();
        assert_eq!(t.token, "-tok");
    }

    #[test]
    fn register_refuses_what_a_provider_cannot_take() {
        // Missing what the provider needs.
        assert!(
            target(&["--provider", "apns", "--token", "t"]).is_err(),
            "apns without --app-id"
        );
        assert!(
            target(&["--provider", "fcm"]).is_err(),
            "fcm without --token"
        );
        assert!(target(&["--provider", "webpush", "--token", "t"]).is_err());
        assert!(target(&["--provider", "fcm", "--token", "t", "--sandbox"]).is_err());
        // Parse errors: a half subscription, a token with an endpoint, bad values.
        assert!(parse(&[
            "register",
            "--provider",
            "webpush",
            "--endpoint",
            "https://x"
        ])
        .is_err());
        assert!(parse(&[
            "register",
            "--provider",
            "fcm",
            "--token",
            "t",
            "--endpoint",
            "https://x",
            "--p256dh",
            "k",
            "--auth",
            "a"
        ])
        .is_err());
        assert!(parse(&["register", "--provider", "sms", "--token", "t"]).is_err());
        assert!(parse(&[
            "register",
            "--provider",
            "fcm",
            "--token",
            "t",
            "--preview",
            "all"
        ])
        .is_err());
        assert!(parse(&[
            "register",
            "--provider",
            "fcm",
            "--token",
            "t",
            "--dnd",
            "25:00-07:00"
        ])
        .is_err());
        assert!(parse(&[
            "register",
            "--provider",
            "fcm",
            "--token",
            "t",
            "--utc-offset",
            "+15:00"
        ])
        .is_err());
        assert!(
            parse(&["register", "--token", "t"]).is_err(),
            "no --provider"
        );
    }

    #[test]
    fn mute_takes_a_peer_or_a_group_and_an_until() {
        match parse(&["mute", "ann", "--until", "8h"]).unwrap() {
            PushCmd::Mute {
                conv,
                until,
                mentions,
                ..
            } => {
                assert_eq!((conv.peer.as_deref(), conv.group), (Some("ann"), None));
                assert_eq!(until.as_deref(), Some("8h"));
                assert!(!mentions);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["mute", "--group", "7", "--mentions"]).unwrap() {
            PushCmd::Mute { conv, mentions, .. } => {
                assert_eq!((conv.peer, conv.group), (None, Some(7)));
                assert!(mentions);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["mute"]).is_err(), "neither a peer nor a group");
        assert!(parse(&["mute", "ann", "--group", "7"]).is_err(), "both");
        assert!(parse(&["unmute", "--group", "x"]).is_err());
        assert!(
            matches!(parse(&["remove", "--device", "d1"]).unwrap(), PushCmd::Remove { device: Some(d), .. } if d == "d1")
        );
        assert!(matches!(parse(&["list"]).unwrap(), PushCmd::List { .. }));
    }

    #[test]
    fn until_is_a_duration_or_a_time() {
        let now = 1_000_000;
        assert_eq!(parse_until("90m", now).unwrap(), now + 90 * 60_000);
        assert_eq!(parse_until("8h", now).unwrap(), now + 8 * 3_600_000);
        assert_eq!(parse_until("2d", now).unwrap(), now + 2 * 86_400_000);
        assert_eq!(parse_until("30s", now).unwrap(), now + 30_000);
        assert_eq!(parse_until("2000000", now).unwrap(), 2_000_000);
        for bad in ["", "h", "0m", "5w", "-5m", "999", "soon"] {
            assert!(parse_until(bad, now).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn listing_shows_tokens_in_part() {
        let t = v1::PushTarget {
            provider: v1::PushProvider::Apns as i32,
            token: "0123456789abcdef0123".into(),
            app_id: "chat.app".into(),
            device_id: "d1".into(),
            dnd_start_min: 1320,
            dnd_end_min: 420,
            utc_offset_min: 60,
            ..Default::default()
        };
        let j = target_json(&t, "d1");
        assert_eq!(j["token"], "0123456789ab…");
        assert_eq!(j["provider"], "apns");
        assert_eq!(j["this_device"], true);
        assert_eq!(j["dnd"], "22:00-07:00");
        let c = v1::ConversationPush {
            group_id: 7,
            mode: v1::PushMode::Mentions as i32,
            ..Default::default()
        };
        assert_eq!(
            setting_json(&c),
            serde_json::json!({"group_id": 7, "mode": "mentions"})
        );
    }
}
