//! The index through its public API: access control, filters, paging, highlights,
//! edits and removals, the cursor, bad input.

use ferry_search::{
    Change, Conv, Doc, GroupSpan, Index, Kind, Options, Order, Query, Scope, SearchError,
};

const ALICE: u64 = 1;
const BOB: u64 = 2;
const CAROL: u64 = 3;
const MALLORY: u64 = 99;
const G: u64 = 500;
const G2: u64 = 501;

fn direct(msg_id: u64, from: u64, to: u64, time_ms: i64, text: &str) -> Change {
    Change::Upsert(Doc {
        msg_id,
        conv: Conv::Direct { a: from, b: to },
        sender: from,
        time_ms,
        kind: Kind::Text,
        text: text.into(),
    })
}

fn group(msg_id: u64, group_id: u64, gseq: u64, from: u64, time_ms: i64, text: &str) -> Change {
    Change::Upsert(Doc {
        msg_id,
        conv: Conv::Group { group_id, gseq },
        sender: from,
        time_ms,
        kind: Kind::Text,
        text: text.into(),
    })
}

fn everything(user: u64) -> Scope {
    Scope {
        user,
        groups: vec![
            GroupSpan {
                group_id: G,
                from_gseq: 0,
                to_gseq: None,
            },
            GroupSpan {
                group_id: G2,
                from_gseq: 0,
                to_gseq: None,
            },
        ],
    }
}

fn q(text: &str, scope: Scope) -> Query {
    Query {
        text: text.into(),
        scope,
        ..Query::default()
    }
}

fn ids(index: &Index, query: &Query) -> Vec<u64> {
    index
        .search(query)
        .unwrap()
        .hits
        .iter()
        .map(|h| h.msg_id)
        .collect()
}

/// A small world: Alice and Bob talk 1:1, Bob and Carol too, group G has all three.
fn world() -> Index {
    let index = Index::in_ram(Options::default()).unwrap();
    index
        .apply(
            vec![
                direct(1, ALICE, BOB, 1_000, "lunch at the noodle place?"),
                direct(2, BOB, ALICE, 2_000, "Noodles sound great, 12:30"),
                direct(3, BOB, CAROL, 3_000, "secret noodle recipe for Carol"),
                group(10, G, 1, ALICE, 4_000, "group noodle night on Friday"),
                group(11, G, 2, BOB, 5_000, "bring noodle bowls"),
                group(12, G, 3, CAROL, 6_000, "noodle party cancelled"),
                group(13, G, 4, ALICE, 7_000, "noodle party back on"),
                direct(4, ALICE, ALICE, 8_000, "note to self: noodle shopping"),
            ],
            "w-1",
        )
        .unwrap();
    index
}

#[test]
fn a_stranger_finds_nothing() {
    let index = world();
    let hits = index.search(&q("noodle", everything(MALLORY))).unwrap();
    // Mallory claims the groups but is a party of no 1:1: only group messages, and with
    // an empty scope nothing at all.
    assert!(hits
        .hits
        .iter()
        .all(|h| matches!(h.conv, Conv::Group { .. })));
    let nothing = Scope {
        user: MALLORY,
        groups: vec![],
    };
    let hits = index.search(&q("noodle", nothing.clone())).unwrap();
    assert_eq!((hits.hits.len(), hits.total), (0, 0));
    // Not even with an empty text (listing), nor by naming a peer or a group.
    assert_eq!(ids(&index, &q("", nothing.clone())), Vec::<u64>::new());
    let mut by_peer = q("", nothing.clone());
    by_peer.peer = Some(ALICE);
    assert_eq!(ids(&index, &by_peer), Vec::<u64>::new());
    let mut by_group = q("", nothing);
    by_group.group = Some(G);
    assert_eq!(ids(&index, &by_group), Vec::<u64>::new());
}

#[test]
fn both_sides_of_a_direct_conversation_find_it() {
    let index = world();
    let alone = |u| Scope {
        user: u,
        groups: vec![],
    };
    assert_eq!(ids(&index, &q("noodle", alone(ALICE))), [4, 1]);
    assert_eq!(ids(&index, &q("noodle", alone(BOB))), [3, 1]);
    assert_eq!(ids(&index, &q("noodles", alone(ALICE))), [2]);
    assert_eq!(ids(&index, &q("noodle", alone(CAROL))), [3]);
    // Carol's secret is not Alice's.
    assert_eq!(ids(&index, &q("secret", alone(ALICE))), Vec::<u64>::new());
    let hits = index.search(&q("secret", alone(CAROL))).unwrap();
    assert_eq!(hits.total, 1);
    assert_eq!(hits.hits[0].conv, Conv::Direct { a: BOB, b: CAROL });
    assert_eq!(hits.hits[0].sender, BOB);
}

#[test]
fn group_messages_only_inside_the_span() {
    let index = world();
    // Carol joined at gseq 2 and left after gseq 3.
    let scope = Scope {
        user: CAROL,
        groups: vec![GroupSpan {
            group_id: G,
            from_gseq: 2,
            to_gseq: Some(3),
        }],
    };
    let mut query = q("noodle", scope);
    query.group = Some(G);
    let hits = index.search(&query).unwrap();
    assert_eq!(
        hits.hits.iter().map(|h| h.msg_id).collect::<Vec<_>>(),
        [12, 11]
    );
    assert_eq!(hits.total, 2);
    assert_eq!(
        hits.hits[0].conv,
        Conv::Group {
            group_id: G,
            gseq: 3
        }
    );
    // Without the group filter: her 1:1 with Bob too, still not gseq 1 or 4.
    query.group = None;
    assert_eq!(ids(&index, &query), [12, 11, 3]);
    // A group she is not in gives nothing, not an error.
    query.group = Some(G2);
    assert_eq!(ids(&index, &query), Vec::<u64>::new());
}

#[test]
fn remove_and_edit() {
    let index = world();
    let alice = || everything(ALICE);
    index
        .apply(
            vec![
                Change::Remove { msg_id: 13 },
                direct(1, ALICE, BOB, 1_000, "lunch at the dumpling place?"),
                Change::Remove { msg_id: 424242 },
            ],
            "w-2",
        )
        .unwrap();
    assert_eq!(ids(&index, &q("noodle", alice())), [4, 12, 11, 10]);
    assert_eq!(ids(&index, &q("dumpling", alice())), [1]);
    assert_eq!(ids(&index, &q("party", alice())), [12]);
    assert_eq!(index.stats().docs, 7);
    // An edit and a removal of the same message in one batch: the later one wins.
    index
        .apply(
            vec![
                direct(2, BOB, ALICE, 2_000, "make it ramen"),
                Change::Remove { msg_id: 2 },
                direct(5, BOB, ALICE, 9_000, "ramen v1"),
                direct(5, BOB, ALICE, 9_000, "ramen v2"),
            ],
            "w-3",
        )
        .unwrap();
    assert_eq!(ids(&index, &q("ramen", alice())), [5]);
    assert_eq!(ids(&index, &q("v1", alice())), Vec::<u64>::new());
    assert_eq!(ids(&index, &q("v2", alice())), [5]);
}

#[test]
fn filters() {
    let index = Index::in_ram(Options::default()).unwrap();
    let mut changes = Vec::new();
    let kinds = [Kind::Text, Kind::Image, Kind::File, Kind::Voice];
    for i in 0..40u64 {
        let (conv, sender) = match i % 4 {
            0 => (Conv::Direct { a: ALICE, b: BOB }, ALICE),
            1 => (Conv::Direct { a: CAROL, b: ALICE }, CAROL),
            2 => (
                Conv::Group {
                    group_id: G,
                    gseq: i,
                },
                BOB,
            ),
            _ => (
                Conv::Group {
                    group_id: G2,
                    gseq: i,
                },
                ALICE,
            ),
        };
        changes.push(Change::Upsert(Doc {
            msg_id: 100 + i,
            conv,
            sender,
            time_ms: 1_000 * i as i64,
            kind: kinds[(i / 4 % 4) as usize],
            text: format!("report number {i}"),
        }));
    }
    index.apply(changes, "f-1").unwrap();
    let base = || q("report", everything(ALICE));
    let all = index.search(&base()).unwrap();
    assert_eq!(all.total, 40);

    let mut query = base();
    query.peer = Some(BOB);
    let got = ids(&index, &query);
    assert_eq!(got.len(), 10);
    assert!(got.iter().all(|id| (id - 100) % 4 == 0));
    // Peer from the other side of the pair.
    query.peer = Some(CAROL);
    let got = ids(&index, &query);
    assert_eq!(got.len(), 10);
    assert!(got.iter().all(|id| (id - 100) % 4 == 1));

    let mut query = base();
    query.group = Some(G2);
    let got = ids(&index, &query);
    assert_eq!(got.len(), 10);
    assert!(got.iter().all(|id| (id - 100) % 4 == 3));

    let mut query = base();
    query.sender = Some(ALICE);
    query.limit = 100;
    let got = ids(&index, &query);
    assert_eq!(got.len(), 20);
    assert!(got.iter().all(|id| matches!((id - 100) % 4, 0 | 3)));

    let mut query = base();
    query.after_ms = Some(10_000);
    query.before_ms = Some(15_000);
    assert_eq!(ids(&index, &query), [114, 113, 112, 111, 110]);
    query.before_ms = Some(10_000);
    assert_eq!(ids(&index, &query), Vec::<u64>::new());

    let mut query = base();
    query.kinds = vec![Kind::Voice, Kind::Image];
    query.limit = 100;
    let got = ids(&index, &query);
    assert_eq!(got.len(), 20);
    for h in index.search(&query).unwrap().hits {
        assert!(matches!(h.kind, Kind::Voice | Kind::Image));
    }
    query.kinds = vec![Kind::Video];
    assert_eq!(index.search(&query).unwrap().total, 0);

    // Filters combine, and an empty text lists newest first.
    let mut query = q("", everything(ALICE));
    query.group = Some(G);
    query.kinds = vec![Kind::File];
    assert_eq!(ids(&index, &query), [126, 110]);
}

#[test]
fn paging_visits_every_hit_once_in_order() {
    let index = Index::in_ram(Options::default()).unwrap();
    // Ties in time_ms, across several segments (one commit per batch).
    for batch in 0..5u64 {
        let changes = (0..30u64)
            .map(|i| {
                let id = batch * 30 + i;
                direct(id, ALICE, BOB, (id / 7) as i64, &format!("page test {id}"))
            })
            .collect();
        index.apply(changes, &format!("p-{batch}")).unwrap();
    }
    let mut expected: Vec<(i64, u64)> = (0..150u64).map(|id| ((id / 7) as i64, id)).collect();
    expected.sort_by(|a, b| b.cmp(a));
    for order in [Order::Newest, Order::Relevance] {
        let mut query = q("page", everything(ALICE));
        query.limit = 17;
        query.order = order;
        let mut seen = Vec::new();
        for _ in 0..20 {
            let hits = index.search(&query).unwrap();
            assert_eq!(hits.total, 150);
            seen.extend(hits.hits.iter().map(|h| (h.time_ms, h.msg_id)));
            match hits.next {
                Some(next) => query.page = Some(next),
                None => break,
            }
        }
        assert_eq!(seen.len(), 150, "{order:?}");
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 150, "{order:?}");
        if order == Order::Newest {
            assert_eq!(seen, expected);
        }
    }
    // A new message arriving between pages does not shift the ones already seen.
    let mut query = q("page", everything(ALICE));
    query.limit = 10;
    let first = index.search(&query).unwrap();
    index
        .apply(vec![direct(1000, ALICE, BOB, 999, "page test new")], "p-x")
        .unwrap();
    query.page = first.next;
    let second = index.search(&query).unwrap();
    assert_eq!(second.hits[0].msg_id, expected[10].1);
}

#[test]
fn highlights_point_at_the_matches() {
    let index = Index::in_ram(Options::default()).unwrap();
    index
        .apply(
            vec![
                direct(1, ALICE, BOB, 1, "Meet me at Café Rouge, the café on 5th"),
                direct(2, ALICE, BOB, 2, "我们明天去海底捞吃火锅，然后去星巴克"),
                direct(3, ALICE, BOB, 3, "東京駅の近くのラーメン屋に行こう"),
                direct(4, ALICE, BOB, 4, "晚饭吃什么"),
            ],
            "h",
        )
        .unwrap();
    let marked = |text: &str| -> Vec<String> {
        let mut query = q(text, everything(ALICE));
        query.highlight = true;
        let hits = index.search(&query).unwrap();
        assert_eq!(hits.hits.len(), 1, "{text}");
        let s = hits.hits[0].snippet.clone().unwrap();
        s.ranges
            .iter()
            .map(|r| s.text[r.clone()].to_string())
            .collect()
    };
    assert_eq!(marked("cafe"), ["Café", "café"]);
    assert_eq!(marked("rouge CAFÉ"), ["Café", "Rouge", "café"]);
    assert_eq!(marked("海底捞"), ["海底捞"]);
    assert_eq!(marked("星巴克 火锅"), ["火锅", "星巴克"]);
    assert_eq!(marked("ラーメン"), ["ラーメン"]);
    assert_eq!(marked("晚饭"), ["晚饭"]);
    // A one-character query marks just that character.
    assert_eq!(marked("什"), ["什"]);
    // No highlight unless asked.
    let hits = index.search(&q("cafe", everything(ALICE))).unwrap();
    assert!(hits.hits[0].snippet.is_none());
}

#[test]
fn cjk_and_phrase_semantics() {
    let index = Index::in_ram(Options::default()).unwrap();
    index
        .apply(
            vec![
                direct(1, ALICE, BOB, 1, "去Café吃饭"),
                direct(2, ALICE, BOB, 2, "吃饭了吗"),
                direct(3, ALICE, BOB, 3, "饭吃了"),
                direct(4, ALICE, BOB, 4, "the quick brown fox"),
                direct(5, ALICE, BOB, 5, "the brown quick fox"),
                direct(6, ALICE, BOB, 6, "一二三四"),
                direct(7, ALICE, BOB, 7, "一二 三四"),
            ],
            "c",
        )
        .unwrap();
    let find = |text: &str| ids(&index, &q(text, everything(ALICE)));
    assert_eq!(find("吃饭"), [2, 1]);
    assert_eq!(find("café 吃饭"), [1]);
    assert_eq!(find("去Café吃饭"), [1]);
    assert_eq!(find("饭"), [3, 2, 1]);
    // A run is a phrase of its bigrams: the run must be there as it is.
    assert_eq!(find("二三"), [6]);
    assert_eq!(find("一二三"), [6]);
    assert_eq!(find("一二三四"), [6]);
    assert_eq!(find("一二 三四"), [7, 6]);
    // Words are ANDed in any order; quotes make a phrase.
    assert_eq!(find("fox quick"), [5, 4]);
    assert_eq!(find("\"quick brown\""), [4]);
    assert_eq!(find("\"quick brown"), [4]);
    assert_eq!(find("quick missing"), Vec::<u64>::new());
    // Nothing searchable: nothing, not everything.
    assert_eq!(find("?!"), Vec::<u64>::new());
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let index = world();
    let bad = |query: Query| match index.search(&query) {
        Err(SearchError::BadQuery(msg)) => msg,
        other => panic!("expected BadQuery, got {other:?}"),
    };
    let msg = bad(q(&"x".repeat(1025), everything(ALICE)));
    assert!(msg.contains("1024"), "{msg}");
    let mut query = q("noodle", everything(ALICE));
    query.limit = 0;
    assert!(bad(query).contains("limit"));
    for page in ["", "garbage", "n:1", "n:x:1", "r:1:1"] {
        let mut query = q("noodle", everything(ALICE));
        query.page = Some(page.into());
        assert!(bad(query).contains("cursor"), "{page}");
    }
    // A too-big limit is clamped, not refused.
    let mut query = q("", everything(ALICE));
    query.limit = 10_000;
    assert_eq!(index.search(&query).unwrap().hits.len(), 7);
    // Exactly 1 KiB is fine.
    assert!(index
        .search(&q(&"x".repeat(1024), everything(ALICE)))
        .is_ok());
}

#[test]
fn a_user_in_a_thousand_groups() {
    let index = Index::in_ram(Options::default()).unwrap();
    let changes = (0..2000u64)
        .map(|i| group(i, 10_000 + i, 1, BOB, i as i64, "weekly sync notes"))
        .collect();
    index.apply(changes, "g").unwrap();
    let scope = Scope {
        user: ALICE,
        groups: (0..1000u64)
            .map(|i| GroupSpan {
                group_id: 10_000 + 2 * i,
                from_gseq: 0,
                to_gseq: None,
            })
            .collect(),
    };
    let hits = index.search(&q("sync", scope.clone())).unwrap();
    assert_eq!(hits.total, 1000);
    assert!(hits.hits.iter().all(|h| h.msg_id % 2 == 0));
    assert_eq!(index.search(&q("", scope)).unwrap().total, 1000);
}

#[test]
fn cursor_clear_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let index = Index::open(dir.path(), Options::default()).unwrap();
        assert_eq!(index.cursor(), None);
        index
            .apply(vec![direct(1, ALICE, BOB, 1, "persisted")], "feed:42")
            .unwrap();
        assert_eq!(index.cursor().as_deref(), Some("feed:42"));
        // A second index on the same directory is refused while the first is open.
        assert!(Index::open(dir.path(), Options::default()).is_err());
    }
    let index = Index::open(dir.path(), Options::default()).unwrap();
    assert_eq!(index.cursor().as_deref(), Some("feed:42"));
    assert_eq!(ids(&index, &q("persisted", everything(ALICE))), [1]);
    let stats = index.stats();
    assert_eq!(stats.docs, 1);
    assert!(stats.bytes > 0);
    index.clear().unwrap();
    assert_eq!(index.cursor(), None);
    assert_eq!(index.stats().docs, 0);
    assert_eq!(
        ids(&index, &q("persisted", everything(ALICE))),
        Vec::<u64>::new()
    );
    drop(index);
    let index = Index::open(dir.path(), Options::default()).unwrap();
    assert_eq!(index.cursor(), None);
    assert_eq!(index.stats().docs, 0);
}

#[test]
fn relevance_puts_the_better_match_first() {
    let index = Index::in_ram(Options::default()).unwrap();
    index
        .apply(
            vec![
                direct(1, ALICE, BOB, 3, "noodle"),
                direct(2, ALICE, BOB, 2, "noodle noodle noodle soup"),
                direct(
                    3,
                    ALICE,
                    BOB,
                    1,
                    "we talked about many things today and noodle came up once",
                ),
            ],
            "r",
        )
        .unwrap();
    let mut query = q("noodle", everything(ALICE));
    query.order = Order::Relevance;
    let hits = index.search(&query).unwrap();
    assert_eq!(hits.hits.last().map(|h| h.msg_id), Some(3));
    assert!(hits.hits.windows(2).all(|w| w[0].score >= w[1].score));
    assert!(hits.hits.iter().all(|h| h.score > 0.0));
    // Newest ignores the score.
    assert_eq!(ids(&index, &q("noodle", everything(ALICE))), [1, 2, 3]);
}

#[test]
fn the_index_is_send_and_sync() {
    fn shared<T: Send + Sync>(_: &T) {}
    let index = std::sync::Arc::new(world());
    shared(&index);
    // Searches from several threads while a batch is applied.
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let index = index.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    let hits = index.search(&q("noodle", everything(ALICE))).unwrap();
                    assert!(hits.total == 6 || hits.total == 7);
                }
            })
        })
        .collect();
    index
        .apply(vec![direct(77, ALICE, BOB, 77, "more noodle")], "t")
        .unwrap();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        index.search(&q("noodle", everything(ALICE))).unwrap().total,
        7
    );
}

/// Every hit of `query`, all pages.
fn all_ids(index: &Index, mut query: Query) -> Vec<u64> {
    query.limit = 100;
    let mut out = Vec::new();
    for _ in 0..100 {
        let hits = index.search(&query).unwrap();
        out.extend(hits.hits.iter().map(|h| h.msg_id));
        match hits.next {
            Some(n) => query.page = Some(n),
            None => return out,
        }
    }
    panic!("more than 100 pages");
}

#[test]
fn scopes_sparse_or_dense_match_a_plain_filter() {
    // 3 000 messages: 1:1 between 60 users, and 30 groups; every 3rd says "ping".
    let mut docs = Vec::new();
    for i in 0..3000u64 {
        let conv = if i % 2 == 0 {
            Conv::Direct {
                a: i % 60,
                b: (i * 7 + 1) % 60,
            }
        } else {
            Conv::Group {
                group_id: 1000 + i % 30,
                gseq: i / 30,
            }
        };
        docs.push(Doc {
            msg_id: i,
            conv,
            sender: i % 60,
            time_ms: i as i64,
            kind: Kind::Text,
            text: if i % 3 == 0 { "ping" } else { "pong" }.into(),
        });
    }
    let index = Index::in_ram(Options::default()).unwrap();
    for chunk in docs.chunks(700) {
        index
            .apply(chunk.iter().cloned().map(Change::Upsert).collect(), "s")
            .unwrap();
    }
    let visible = |scope: &Scope, d: &Doc| match d.conv {
        Conv::Direct { a, b } => a == scope.user || b == scope.user,
        Conv::Group { group_id, gseq } => scope.groups.iter().any(|s| {
            s.group_id == group_id && s.from_gseq <= gseq && s.to_gseq.is_none_or(|to| gseq <= to)
        }),
    };
    // A user with one group and a span (sparse: a bit set of candidates), and one in
    // every group (dense: the filter alone).
    let sparse = Scope {
        user: 5,
        groups: vec![GroupSpan {
            group_id: 1003,
            from_gseq: 20,
            to_gseq: Some(60),
        }],
    };
    let dense = Scope {
        user: 6,
        groups: (0..30)
            .map(|g| GroupSpan {
                group_id: 1000 + g,
                from_gseq: 10,
                to_gseq: if g % 2 == 0 { None } else { Some(80) },
            })
            .collect(),
    };
    for scope in [sparse, dense] {
        for text in ["ping", ""] {
            let mut want: Vec<u64> = docs
                .iter()
                .filter(|d| visible(&scope, d) && (text.is_empty() || d.text == text))
                .map(|d| d.msg_id)
                .collect();
            want.reverse();
            assert!(!want.is_empty());
            let got = all_ids(&index, q(text, scope.clone()));
            assert_eq!(got, want, "user {} text {text:?}", scope.user);
            let hits = index.search(&q(text, scope.clone())).unwrap();
            assert_eq!(hits.total, want.len());
        }
    }
}
