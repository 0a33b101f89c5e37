//! The store conformance suite: every [`Store`](crate::Store) implementation must pass
//! it. One file per sub-trait; each case is an `async fn` taking a fresh, empty store.
//!
//! Built only with the `conformance` feature (this crate's tests turn it on through
//! their dev-dependency on the crate itself). A backend's test file runs every case with
//! [`conformance_tests!`](crate::conformance_tests), which lists them all once: each
//! case then appears as its own test (`inbox::messages_and_inbox`) in the SQLite and in
//! the PostgreSQL test binary.

use ferry_proto::v1;

use crate::NewMessage;

pub mod accounts;
pub mod audit;
pub mod bots;
pub mod conv;
pub mod groups;
pub mod hooks;
pub mod inbox;
pub mod media;
pub mod msgops;
pub mod ops;
pub mod push;
pub mod reports;
pub mod search;
pub mod social;
pub mod user_admin;

/// Instantiates every case of the suite as a test in the calling module, one
/// sub-module per sub-trait. `$store` names an `async fn` that builds a fresh store,
/// hands it to the case it is given (`FnOnce(Arc<dyn Store>) -> impl Future<Output =
/// ()>`) and cleans up after it; `$media` the same for an `Arc<dyn MediaStore>`.
#[macro_export]
#[doc(hidden)]
macro_rules! conformance_tests {
    ($store:ident, $media:ident) => {
        $crate::conformance_tests!(@cases $store, $media;
            accounts: users_and_sessions, a_login_view_is_the_session_with_its_users_row;
            audit: audit_entries_page_newest_first;
            bots: bots_and_their_tokens, sent_message_ids_are_found_by_client_msg_id;
            inbox: messages_and_inbox, paging_and_concurrency, synckeys_and_prune,
                prune_takes_only_old_entries_of_every_user,
                events_share_the_inbox_with_messages,
                append_messages_keeps_order_and_answers_each,
                concurrent_batches_keep_each_senders_order;
            social: friendships_are_conditional_and_versioned, avatars_are_replaced,
                moments_likes_and_comments;
            reports: reports_page_newest_first_and_prune;
            search: search_feed_follows_every_change_of_a_message;
            groups: groups_logs_members_and_recall;
            msgops: edits_replace_the_text_keep_the_history_and_log_once,
                reactions_are_idempotent_counted_limited_and_paged,
                hidden_messages_are_logged_once_per_message,
                pins_are_limited_listed_newest_first_and_logged_in_the_group,
                a_recall_empties_the_quotes_of_its_replies;
            conv: conv_state_changes_only_what_is_named_and_shares_the_mute,
                clearing_history_marks_the_conversations_newest_message,
                retention_is_logged_listed_and_prunes_only_its_conversation,
                pruning_forgets_the_operations_on_pruned_messages;
            ops: groups_are_listed_searched_and_dissolved, users_page_by_id,
                system_messages_land_in_their_recipients_inbox_only,
                limit_overrides_are_set_replaced_and_cleared;
            user_admin: users_are_listed_searched_and_disabled,
                export_reads_page_through_messages_and_reports,
                deleting_a_user_leaves_no_row_of_theirs;
            push: targets_are_registered_replaced_and_deleted,
                targets_since_page_in_registration_order, prefs_are_set_removed_and_expire,
                entries_coalesce_into_one_row_per_device, new_rows_wait_for_the_quiet_window,
                claims_respect_due_time_and_leases, concurrent_claimers_never_share_a_row,
                finishing_keeps_what_was_queued_after_the_claim,
                retries_count_attempts_and_release_the_lease,
                backlog_finds_entries_that_missed_their_push,
                unread_counts_live_messages_from_others_up_to_a_cap,
                no_entry_is_lost_between_enqueue_and_finish;
            hooks: endpoints_are_created_updated_and_deleted,
                events_queue_once_in_order_per_endpoint,
                claims_lease_endpoints_whose_head_is_due,
                concurrent_claimers_never_share_an_endpoint,
                outcomes_move_the_head_count_and_keep_the_lease,
                dead_letters_are_listed_and_redriven;
            media: chunks_in_any_order_then_verify_commit_and_read,
                acknowledged_bytes_never_change,
                the_upload_key_is_kept_until_the_upload_is_finished,
                sweep_deletes_old_unfinished_uploads_only,
                deleting_media_keeps_content_another_media_shares;
        );
    };
    // Media cases run on a media store, every other on a store.
    (@media_only $media:ident) => {
        $crate::conformance_tests!(@media_cases $media;
            chunks_in_any_order_then_verify_commit_and_read,
            acknowledged_bytes_never_change,
            the_upload_key_is_kept_until_the_upload_is_finished,
            sweep_deletes_old_unfinished_uploads_only,
            deleting_media_keeps_content_another_media_shares
        );
    };
    (@media_cases $media:ident; $($case:ident),+) => {
        mod media {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$media($crate::conformance::media::$case).await;
                }
            )+
        }

        /// Every media case written in the suite is listed in the macro above.
        #[test]
        fn every_media_conformance_case_runs() {
            $crate::conformance::assert_listed(&["media"], &[$(
                concat!("media::", stringify!($case))
            ),+]);
        }
    };
    (@run media, $store:ident, $media:ident) => {
        super::$media
    };
    (@run $domain:ident, $store:ident, $media:ident) => {
        super::$store
    };
    (@cases $store:ident, $media:ident; $($domain:ident: $($case:ident),+;)+) => {
        $(
            mod $domain {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $case() {
                        $crate::conformance_tests!(@run $domain, $store, $media)(
                            $crate::conformance::$domain::$case,
                        )
                        .await;
                    }
                )+
            }
        )+

        /// Every case written in the suite is listed in the macro above.
        #[test]
        fn every_conformance_case_runs() {
            $crate::conformance::assert_all_listed(&[$($(
                concat!(stringify!($domain), "::", stringify!($case))
            ),+),+]);
        }
    };
}

/// Instantiates the media cases of the suite only, for a media store that has no
/// [`Store`](crate::Store) beside it: `$media` as in
/// [`conformance_tests!`](crate::conformance_tests).
#[macro_export]
#[doc(hidden)]
macro_rules! media_conformance_tests {
    ($media:ident) => {
        $crate::conformance_tests!(@media_only $media);
    };
}

/// Panics unless `listed` names every case of every file of the suite (a case missing
/// from [`conformance_tests!`](crate::conformance_tests) would silently never run).
pub fn assert_all_listed(listed: &[&str]) {
    assert_listed(
        &[
            "accounts",
            "audit",
            "inbox",
            "social",
            "reports",
            "groups",
            "msgops",
            "conv",
            "ops",
            "push",
            "media",
            "user_admin",
            "hooks",
            "bots",
            "search",
        ],
        listed,
    );
}

/// Panics unless `listed` names every case of the files of `domains`.
pub fn assert_listed(domains: &[&str], listed: &[&str]) {
    let files = [
        ("accounts", include_str!("accounts.rs")),
        ("audit", include_str!("audit.rs")),
        ("bots", include_str!("bots.rs")),
        ("inbox", include_str!("inbox.rs")),
        ("social", include_str!("social.rs")),
        ("reports", include_str!("reports.rs")),
        ("search", include_str!("search.rs")),
        ("groups", include_str!("groups.rs")),
        ("msgops", include_str!("msgops.rs")),
        ("conv", include_str!("conv.rs")),
        ("ops", include_str!("ops.rs")),
        ("push", include_str!("push.rs")),
        ("hooks", include_str!("hooks.rs")),
        ("media", include_str!("media.rs")),
        ("user_admin", include_str!("user_admin.rs")),
    ];
    let missing: Vec<String> = files
        .iter()
        .filter(|(domain, _)| domains.contains(domain))
        .flat_map(|(domain, src)| {
            src.lines()
                .filter_map(|l| l.strip_prefix("pub async fn "))
                .filter_map(|l| l.split('(').next())
                .map(move |case| format!("{domain}::{case}"))
        })
        .filter(|case| !listed.contains(&case.as_str()))
        .collect();
    assert!(missing.is_empty(), "conformance cases not run: {missing:?}");
}

pub(super) fn text(from: &str, to: &str, t: &str, cmid: u64) -> v1::Message {
    v1::Message {
        from: from.into(),
        to: to.into(),
        text: t.into(),
        client_msg_id: cmid,
        ..Default::default()
    }
}

pub(super) fn new_msg(from: (u64, &str), to: (u64, &str), cmid: u64, t: &str) -> NewMessage {
    NewMessage {
        sender_id: from.0,
        recipient_id: to.0,
        client_msg_id: cmid,
        time_ms: 1_000 + cmid as i64,
        message: text(from.1, to.1, t, cmid),
    }
}

pub(super) fn texts(page: &crate::InboxPage) -> Vec<String> {
    page.entries
        .iter()
        .map(|e| match &e.kind {
            Some(v1::entry::Kind::Message(m)) => m.text.clone(),
            _ => String::new(),
        })
        .collect()
}

pub(super) fn friend_event(peer: &str, time_ms: i64) -> v1::Entry {
    v1::Entry {
        kind: Some(v1::entry::Kind::Friend(v1::FriendEvent {
            kind: v1::friend_event::Kind::RequestReceived as i32,
            peer: peer.into(),
            greeting: "hi".into(),
        })),
        time_ms,
        ..Default::default()
    }
}

pub(super) fn group_event(kind: v1::group_event::Kind, group: u64, time_ms: i64) -> v1::GroupEntry {
    v1::GroupEntry {
        kind: Some(v1::group_entry::Kind::Event(v1::GroupEvent {
            kind: kind as i32,
            group_id: group,
            users: vec!["x".into()],
            by: "alice".into(),
            text: String::new(),
        })),
        time_ms,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    /// The guard behind `every_conformance_case_runs` can fail: a case left off the list
    /// is reported.
    #[test]
    #[should_panic(expected = "inbox::paging_and_concurrency")]
    fn a_case_left_unlisted_fails_the_guard() {
        super::assert_all_listed(&["inbox::messages_and_inbox"]);
    }

    /// The media-only guard reads media.rs alone, and also fails on a case left off.
    #[test]
    #[should_panic(expected = "media::sweep_deletes_old_unfinished_uploads_only")]
    fn a_media_case_left_unlisted_fails_the_media_guard() {
        super::assert_listed(
            &["media"],
            &["media::chunks_in_any_order_then_verify_commit_and_read"],
        );
    }
}
