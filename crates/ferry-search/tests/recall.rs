//! Recall (and precision, printed) on a hand-judged corpus of Chinese, Japanese, English
//! and mixed chat messages: tests/data/cjk_corpus.txt, whose header says how relevance
//! was judged.

use std::collections::{BTreeSet, HashSet};

use ferry_search::{Change, Conv, Doc, Index, Kind, Options, Query, Scope};

struct Corpus {
    messages: Vec<(u64, String)>,
    queries: Vec<(String, BTreeSet<u64>)>,
}

fn corpus() -> Corpus {
    let raw = include_str!("data/cjk_corpus.txt");
    let mut c = Corpus {
        messages: Vec::new(),
        queries: Vec::new(),
    };
    for (n, line) in raw.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("m ") {
            let (id, text) = rest
                .split_once(' ')
                .unwrap_or_else(|| panic!("line {}: no text", n + 1));
            c.messages.push((id.parse().unwrap(), text.to_string()));
        } else if let Some(rest) = line.strip_prefix("q ") {
            let (q, ids) = rest
                .rsplit_once(" | ")
                .unwrap_or_else(|| panic!("line {}: no ' | '", n + 1));
            let ids = ids.split_whitespace().map(|i| i.parse().unwrap()).collect();
            c.queries.push((q.to_string(), ids));
        } else {
            panic!("line {}: unknown {line:?}", n + 1);
        }
    }
    c
}

#[test]
fn recall_on_the_cjk_corpus() {
    let c = corpus();
    let ids: HashSet<u64> = c.messages.iter().map(|m| m.0).collect();
    assert_eq!(ids.len(), c.messages.len(), "duplicate message ids");
    let zh = c.messages.iter().filter(|m| m.0 < 200).count();
    let ja = c
        .messages
        .iter()
        .filter(|m| (200..400).contains(&m.0))
        .count();
    assert!(zh >= 150 && ja >= 100, "{zh} Chinese, {ja} Japanese");
    assert!(c.queries.len() >= 40);
    for (q, rel) in &c.queries {
        assert!(!rel.is_empty(), "{q}: no relevant message");
        for id in rel {
            assert!(ids.contains(id), "{q}: unknown id {id}");
        }
    }

    let index = Index::in_ram(Options::default()).unwrap();
    // Spread over a few conversations and batches (several segments).
    for chunk in c.messages.chunks(64) {
        let changes = chunk
            .iter()
            .map(|(id, text)| {
                Change::Upsert(Doc {
                    msg_id: *id,
                    conv: Conv::Direct {
                        a: 7,
                        b: 100 + id % 3,
                    },
                    sender: 7,
                    time_ms: *id as i64,
                    kind: Kind::Text,
                    text: text.clone(),
                })
            })
            .collect();
        index.apply(changes, "corpus").unwrap();
    }

    let (mut relevant, mut found_relevant, mut returned) = (0usize, 0usize, 0usize);
    let (mut recall_sum, mut precision_sum) = (0f64, 0f64);
    for (text, rel) in &c.queries {
        let hits = index
            .search(&Query {
                text: text.clone(),
                scope: Scope {
                    user: 7,
                    groups: vec![],
                },
                limit: 100,
                ..Query::default()
            })
            .unwrap();
        assert_eq!(hits.total, hits.hits.len(), "{text}: more than a page");
        let got: BTreeSet<u64> = hits.hits.iter().map(|h| h.msg_id).collect();
        let hit = got.intersection(rel).count();
        relevant += rel.len();
        found_relevant += hit;
        returned += got.len();
        let r = hit as f64 / rel.len() as f64;
        let p = if got.is_empty() {
            1.0
        } else {
            hit as f64 / got.len() as f64
        };
        recall_sum += r;
        precision_sum += p;
        if r < 1.0 || p < 1.0 {
            let missed: Vec<_> = rel.difference(&got).collect();
            let extra: Vec<_> = got.difference(rel).collect();
            println!(
                "{text:>12}: recall {r:.2} precision {p:.2} missed {missed:?} extra {extra:?}"
            );
        }
    }
    let n = c.queries.len() as f64;
    let micro_recall = found_relevant as f64 / relevant as f64;
    let micro_precision = found_relevant as f64 / returned as f64;
    println!(
        "{} messages, {} queries: recall {micro_recall:.3} (mean per query {:.3}), precision {micro_precision:.3} (mean per query {:.3})",
        c.messages.len(),
        c.queries.len(),
        recall_sum / n,
        precision_sum / n
    );
    assert!(micro_recall >= 0.9, "recall {micro_recall:.3}");
    assert!(recall_sum / n >= 0.9, "mean recall {:.3}", recall_sum / n);
}
