//! A group's fan-out: who is in it (a short-lived member cache) and the coalesced
//! `GROUP_NOTIFY` pushes to every member online, batched per group so a burst into a
//! big group costs each member's link one frame per round, not one per message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_bus::Push;
use ferry_proto::{cmd, v1, ProtoMessage};

use crate::core::Core;
use crate::error::LogicError;
use crate::notify::Notifier;

/// How long a node trusts its cached member list of a group that another node may
/// have changed.
const MEMBERS_TTL: Duration = Duration::from_secs(5);

/// At most this many notifies are coalesced into one `GROUP_NOTIFY`; more wait for the
/// next round.
const MAX_BATCH: usize = 64;
/// How long a notifier waits for its group notify to be pushed.
const PUSH_WAIT: Duration = Duration::from_secs(5);

/// Cached members of a group, for fan-out: (user id, the first gseq they may read).
struct Members {
    ids: Arc<Vec<(u64, u64)>>,
    at: Instant,
}

type MemberCache = dashmap::DashMap<u64, Members>;

/// A notify waiting in a group's feed.
struct Waiting {
    gseq: u64,
    /// The entry to inline, when small.
    entry: Option<v1::GroupEntry>,
    /// Held back once already, behind a hole.
    held: bool,
    /// Told when the notify is out.
    done: tokio::sync::oneshot::Sender<()>,
}

/// Group notifies waiting to go out, per group (see [`Fanout::notify`]).
#[derive(Default)]
struct Feed {
    items: Vec<Waiting>,
}

type Feeds = parking_lot::Mutex<HashMap<u64, Feed>>;

/// What one round of a group's feed pushes.
#[derive(Debug, PartialEq)]
struct Round {
    /// The entries to inline: consecutive, ending at `latest` (else none).
    entries: Vec<v1::GroupEntry>,
    /// The newest gseq the round announces.
    latest: u64,
    /// How many of the batch the round covers; the rest waits behind a hole.
    cut: usize,
}

/// Plans a round over `batch` (sorted by gseq) after a push that reached `last` (0: none
/// known). It stops before a hole — a gseq more than one past what came before — unless
/// the notify there has waited a round already (`held`), so members are not sent past
/// an entry that is only late; a hole at the very start holds back the whole batch.
fn plan_round(last: u64, batch: &[Waiting]) -> Round {
    let mut entries: Vec<v1::GroupEntry> = Vec::with_capacity(batch.len());
    let mut prev = last;
    let mut cut = batch.len();
    for (i, w) in batch.iter().enumerate() {
        let follows = prev == 0 || w.gseq <= prev + 1;
        if !follows && !w.held {
            cut = i;
            break;
        }
        if w.gseq <= prev {
            continue; // announced already (a duplicate send notifies again)
        }
        match &w.entry {
            Some(e) if follows => entries.push(e.clone()),
            _ => entries.clear(),
        }
        prev = w.gseq;
    }
    if entries.last().map(|e| e.gseq) != Some(prev) {
        entries.clear();
    }
    Round {
        entries,
        latest: prev,
        cut,
    }
}

/// Whether a member who may read from gseq `joined` may get a batch whose first entry
/// is `first` inline: never one that starts before they joined.
fn sees_batch(joined: u64, first: Option<u64>) -> bool {
    first.is_none_or(|f| joined <= f)
}

/// The fan-out of every group this node sends to.
pub(crate) struct Fanout {
    core: Arc<Core>,
    notifier: Arc<Notifier>,
    /// Member ids per group, for fan-out (short-lived: another node may change them).
    members: MemberCache,
    /// Group notifies waiting to be pushed, coalesced per group.
    feeds: Feeds,
}

impl Fanout {
    pub fn new(core: Arc<Core>, notifier: Arc<Notifier>) -> Fanout {
        Fanout {
            core,
            notifier,
            members: MemberCache::default(),
            feeds: Feeds::default(),
        }
    }

    /// Members of a group with the first gseq each may read, from a short-lived cache.
    pub async fn member_ids(&self, group: u64) -> Result<Arc<Vec<(u64, u64)>>, LogicError> {
        if let Some(m) = self.members.get(&group) {
            if m.at.elapsed() < MEMBERS_TTL {
                return Ok(m.ids.clone());
            }
        }
        let ids: Arc<Vec<(u64, u64)>> = Arc::new(
            self.core
                .store
                .group_members(group)
                .await?
                .into_iter()
                .map(|m| (m.user_id, m.joined_gseq))
                .collect(),
        );
        self.members.insert(
            group,
            Members {
                ids: ids.clone(),
                at: Instant::now(),
            },
        );
        Ok(ids)
    }

    pub fn forget_members(&self, group: u64) {
        self.members.remove(&group);
    }

    /// Tells every member online that the group's log reached `gseq`, with `entry`
    /// inline when it is small. `extra`: users told besides the members (the ones just
    /// removed, who see their removal); such a notify goes out at once, on its own.
    ///
    /// Everything else is coalesced per group: the first notify goes out at once, and
    /// the ones that arrive while it is being pushed wait and go out together, as one
    /// `GROUP_NOTIFY` carrying all their entries — so a burst into a big group costs
    /// each member's link one frame, not one per message. Nothing is held back longer
    /// than the push before it takes.
    pub async fn notify(
        self: &Arc<Self>,
        group: u64,
        mut entry: Option<v1::GroupEntry>,
        gseq: u64,
        extra: &[u64],
    ) {
        if let Some(e) = &mut entry {
            e.gseq = gseq;
        }
        self.tell_bots(group, entry.as_ref(), gseq).await;
        let entry = entry.filter(|e| e.encoded_len() <= self.core.cfg.inline_notify_bytes);
        if !extra.is_empty() {
            self.push(group, entry.into_iter().collect(), gseq, extra)
                .await;
            return;
        }
        let (done, pushed) = tokio::sync::oneshot::channel();
        let start = {
            let mut feeds = self.feeds.lock();
            let (start, feed) = match feeds.entry(group) {
                std::collections::hash_map::Entry::Occupied(o) => (false, o.into_mut()),
                std::collections::hash_map::Entry::Vacant(v) => (true, v.insert(Feed::default())),
            };
            feed.items.push(Waiting {
                gseq,
                entry,
                held: false,
                done,
            });
            start
        };
        if start {
            let me = Arc::clone(self);
            tokio::spawn(async move { me.flush(group).await });
        }
        // Wait until this notify is out: a group's senders go no faster than its
        // members can be told (bounded: the message is stored whatever happens here).
        let _ = tokio::time::timeout(PUSH_WAIT, pushed).await;
    }

    /// Pushes what waits in `group`'s feed, up to [`MAX_BATCH`] notifies a round, until
    /// nothing does.
    ///
    /// Notifiers arrive in about gseq order, not exactly (they run concurrently), so a
    /// round may find a hole: 7 and 9 waiting, 8 not yet. It pushes up to the hole and
    /// holds the rest back for one round, so members are not sent past an entry they
    /// lack (which would make every one of them sync). A hole that stays (8 was too big
    /// to inline, or came from another logic node) is pushed past on the next round.
    async fn flush(&self, group: u64) {
        let mut last: u64 = 0;
        loop {
            let mut batch = {
                let mut feeds = self.feeds.lock();
                let Some(feed) = feeds.get_mut(&group) else {
                    return;
                };
                if feed.items.is_empty() {
                    feeds.remove(&group);
                    return;
                }
                feed.items.sort_by_key(|w| w.gseq);
                let n = feed.items.len().min(MAX_BATCH);
                feed.items.drain(..n).collect::<Vec<_>>()
            };
            let Round {
                entries,
                latest,
                cut,
            } = plan_round(last, &batch);
            if cut < batch.len() {
                let mut back = batch.split_off(cut);
                for w in &mut back {
                    w.held = true;
                }
                let mut feeds = self.feeds.lock();
                feeds.entry(group).or_default().items.extend(back);
            }
            if batch.is_empty() {
                // All of it waits behind a hole: give the missing notify a moment.
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            if latest > last {
                self.push(group, entries, latest, &[]).await;
                last = latest;
            }
            for w in batch {
                let _ = w.done.send(());
            }
        }
    }

    /// The bots among the group's members hear of entry `gseq`: a held `bot/updates`
    /// of theirs wakes, and one with an endpoint of its own gets it as a `bot.update`.
    /// Costs two atomic loads while no bot waits and none has an endpoint.
    ///
    /// The member list comes from the short-lived cache: in a cluster, a bot added
    /// through another logic node may miss a webhook delivery for up to
    /// [`MEMBERS_TTL`] (its `bot/updates` reads the log itself and misses nothing).
    async fn tell_bots(&self, group: u64, entry: Option<&v1::GroupEntry>, gseq: u64) {
        let waiting = self.notifier.watchers.any();
        let hooks = self.notifier.bot_hooks();
        if !waiting && hooks.is_none() {
            return;
        }
        let Ok(members) = self.member_ids(group).await else {
            return;
        };
        if waiting {
            for &(user, _) in members.iter() {
                self.notifier.watchers.wake(user);
            }
        }
        let Some(hooks) = hooks else {
            return;
        };
        let mut update: Option<serde_json::Value> = None;
        for &(user, joined) in members.iter() {
            if joined > gseq || !hooks.has_owner(user) {
                continue;
            }
            if update.is_none() {
                let e = match entry {
                    Some(e) => e.clone(),
                    None => match self
                        .core
                        .store
                        .group_log(group, gseq.saturating_sub(1), 1)
                        .await
                    {
                        Ok((mut es, _, _)) if es.first().map(|e| e.gseq) == Some(gseq) => {
                            es.swap_remove(0)
                        }
                        _ => return,
                    },
                };
                update = Some(crate::api::json::group_entry_json(group, &e));
            }
            if let Some(u) = &update {
                hooks.bot_updates(user, vec![u.clone()]).await;
            }
        }
    }

    /// Waits (boundedly) until `group`'s feed has pushed everything queued so far: a
    /// membership change waits for it, so the messages before the change reach the
    /// members of that time.
    pub async fn drain(&self, group: u64) {
        let until = Instant::now() + PUSH_WAIT;
        while self.feeds.lock().contains_key(&group) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// One `GROUP_NOTIFY` to every member online (and to `extra`): one push per
    /// gateway, whatever the group's size. A member who joined after the batch's first
    /// entry gets the notify without entries (and syncs from their join point).
    async fn push(&self, group: u64, entries: Vec<v1::GroupEntry>, latest: u64, extra: &[u64]) {
        let members = match self.member_ids(group).await {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "no group notify: members unknown");
                return;
            }
        };
        let first = entries.first().map(|e| e.gseq);
        let inline = entries.len() as u64;
        let notify = |entries| {
            Bytes::from(
                v1::GroupNotify {
                    group_id: group,
                    latest_gseq: latest,
                    entries,
                }
                .encode_to_vec(),
            )
        };
        let full = notify(entries);
        let mut bare: Option<Bytes> = None;
        // (gateway, full body?) → users.
        let mut by_gateway: HashMap<(Arc<str>, bool), Vec<u64>> = HashMap::new();
        let everyone = members
            .iter()
            .map(|&(user, joined)| (user, sees_batch(joined, first)))
            .chain(extra.iter().map(|&user| (user, true)));
        for (user, whole) in everyone {
            self.notifier.each_gateway_of(user, |gw| {
                by_gateway
                    .entry((gw.clone(), whole))
                    .or_default()
                    .push(user);
            });
        }
        let mut delivered = 0;
        for ((gw, whole), users) in by_gateway {
            delivered += users.len() as u64;
            let body = if whole {
                full.clone()
            } else {
                bare.get_or_insert_with(|| notify(Vec::new())).clone()
            };
            let push = Push {
                user_id: users[0],
                more_user_ids: users[1..].to_vec(),
                cmd: u32::from(cmd::GROUP_NOTIFY),
                body,
                ..Default::default()
            };
            self.notifier.push_to(&gw, push).await;
        }
        metrics::counter!("ferry_group_notifies_total").increment(delivered);
        metrics::counter!("ferry_group_notify_entries_total").increment(delivered * inline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(gseq: u64, inline: bool, held: bool) -> Waiting {
        let entry = inline.then(|| v1::GroupEntry {
            gseq,
            ..Default::default()
        });
        Waiting {
            gseq,
            entry,
            held,
            done: tokio::sync::oneshot::channel().0,
        }
    }

    fn gseqs(r: &Round) -> Vec<u64> {
        r.entries.iter().map(|e| e.gseq).collect()
    }

    #[test]
    fn a_round_inlines_consecutive_entries_up_to_a_hole() {
        // A new flusher (nothing pushed yet) takes what it finds.
        let r = plan_round(0, &[waiting(7, true, false), waiting(8, true, false)]);
        assert_eq!((gseqs(&r), r.latest, r.cut), (vec![7, 8], 8, 2));
        // 4 follows 3; 6 does not (5 is late): the round stops before it.
        let b = [
            waiting(4, true, false),
            waiting(6, true, false),
            waiting(7, true, false),
        ];
        let r = plan_round(3, &b);
        assert_eq!((gseqs(&r), r.latest, r.cut), (vec![4], 4, 1));
        // A hole at the very start holds back the whole batch, once.
        let r = plan_round(3, &[waiting(5, true, false), waiting(6, true, false)]);
        assert_eq!((r.entries.len(), r.latest, r.cut), (0, 3, 0));
        // Held once already: pushed past the hole, and members sync for the rest.
        let r = plan_round(3, &[waiting(5, true, true), waiting(6, true, true)]);
        assert_eq!((r.latest, r.cut), (6, 2));
        assert_eq!(gseqs(&r), vec![6]);
    }

    #[test]
    fn duplicates_and_entries_too_big_to_inline() {
        // A duplicate send notifies again: announced once.
        let b = [
            waiting(3, true, false),
            waiting(4, true, false),
            waiting(4, true, false),
        ];
        let r = plan_round(3, &b);
        assert_eq!((gseqs(&r), r.latest, r.cut), (vec![4], 4, 3));
        // 5 is too big to ride inline: the notify goes without entries up to it, and
        // what follows it can still ride (a member at 5 applies 6 at once).
        let r = plan_round(4, &[waiting(5, false, false), waiting(6, true, false)]);
        assert_eq!((gseqs(&r), r.latest, r.cut), (vec![6], 6, 2));
        let r = plan_round(4, &[waiting(5, true, false), waiting(6, false, false)]);
        assert_eq!((r.entries.len(), r.latest), (0, 6));
        // Nothing new: nothing announced.
        let r = plan_round(9, &[waiting(8, true, false)]);
        assert_eq!((r.entries.len(), r.latest, r.cut), (0, 9, 1));
    }

    #[test]
    fn a_batch_never_shows_a_member_history_from_before_they_joined() {
        assert!(sees_batch(9, Some(9)));
        assert!(sees_batch(3, Some(9)));
        assert!(!sees_batch(10, Some(9)));
        assert!(sees_batch(10, None));
    }
}
