//! `ferry bench search` (issue 24): the search index on a synthetic chat corpus, and the
//! send path with search on and off.
//!
//! 1. **The index** (in this process, as a logic node keeps it): a corpus made with a
//!    fixed seed — English, Chinese, Japanese and mixed texts, 1:1 between friends and in
//!    groups (each user in about 10 of them) — indexed in commits of `--commit` messages
//!    (1 000 unless told) with the cursor, as the feeder does; then searches as random
//!    users with their real scope (1:1 plus their groups, 30 % of them joined late), 1–2
//!    word queries, a quarter by relevance, half with highlights. Indexing messages/s, bytes per message, search
//!    latency percentiles.
//! 2. **The send path** (the bench's own server, only without `--server`): closed-loop
//!    1:1 runs with `logic.search` on and off, interleaved, `--rounds` of each; the
//!    median messages/s of each and their ratio (the target: within 5 %). After each
//!    search-on round, how many feed rows the index was behind when the senders stopped
//!    and how long it took to catch up (what indexing left for later; read from the
//!    server's `GET /v1/admin/search`).

use std::time::{Duration, Instant};

use anyhow::bail;
use ferry_search::{Change, Conv, Doc, GroupSpan, Index, Kind, Options, Order, Query, Scope};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::report::Report;
use super::{BenchArgs, Target};

const EN: &str = "the a to and you i it is of for in on that we this be at have are with \
    not do can what so just my me your was will if all get about out up no like know but \
    go time how when there one now see today tomorrow meeting lunch dinner coffee call \
    later tonight weekend friday monday office home train flight hotel ticket movie game \
    project report deadline review budget invoice contract client design code deploy bug \
    fix server release test build schedule plan trip beach mountain park restaurant pizza \
    sushi noodles burger salad birthday party gift photo video music concert station \
    airport taxi bus ready sorry thanks great awesome cool maybe sure okay yes happy \
    tired busy late early morning night rain sunny cold hot weather doctor hospital \
    school homework exam class teacher student book library shop market price discount \
    order delivery package address phone message email password account bank payment \
    salary rent apartment kitchen dog cat baby family mom dad brother sister friend \
    team boss colleague interview job holiday vacation visa passport museum gallery \
    festival wedding anniversary garden bike car parking traffic shanghai tokyo london \
    paris berlin osaka kyoto beijing shenzhen chengdu hangzhou starbucks costco ikea";

const ZH: &str = "我们 你们 今天 明天 昨天 晚上 早上 中午 周末 吃饭 火锅 烧烤 咖啡 奶茶 \
    会议 项目 报告 老板 同事 客户 合同 发票 预算 上线 测试 修复 服务器 版本 计划 \
    旅行 机票 酒店 高铁 地铁 出租车 机场 火车站 电影 音乐会 生日 礼物 照片 视频 \
    海底捞 星巴克 麦当劳 肯德基 外卖 快递 地址 电话 微信 支付宝 密码 账号 工资 房租 \
    公寓 厨房 小狗 小猫 宝宝 爸爸 妈妈 哥哥 姐姐 朋友 面试 工作 假期 签证 护照 \
    博物馆 公园 婚礼 周年 自行车 停车 堵车 上海 北京 深圳 成都 杭州 广州 西湖 外滩 \
    天气 下雨 晴天 好冷 好热 医生 医院 学校 作业 考试 老师 学生 图书馆 商场 超市 \
    价格 打折 下单 快点 谢谢 没问题 好的 可以 不行 抱歉 辛苦 加油 哈哈 厉害 麻烦 \
    准备 出发 到了 等我 回家 上班 下班 加班 开会 迟到 早退 排队 预订 取消 改签";

const JA: &str = "今日 明日 昨日 今夜 週末 ランチ ディナー コーヒー ラーメン 寿司 居酒屋 \
    会議 資料 上司 同僚 お客様 予算 リリース テスト 修正 サーバー 計画 旅行 \
    新幹線 ホテル 空港 駅 映画 誕生日 プレゼント 写真 東京 大阪 京都 渋谷 新宿 \
    ありがとう よろしく お願いします すみません 大丈夫 了解 楽しみ 遅れます \
    電車 タクシー 天気 雨 晴れ 病院 学校 宿題 試験 先生 図書館 買い物 値段 \
    セール 注文 配達 住所 電話 パスワード 家賃 アパート 犬 猫 家族 友達 面接 \
    仕事 休み パスポート 美術館 公園 結婚式 自転車 駐車場 渋滞 カフェ コンビニ";

const GROUPS_PER_USER: u64 = 10;
const FRIENDS: u64 = 20;

/// The world: who is in which group, who talks to whom.
struct World {
    users: u64,
    /// Members of each group.
    members: Vec<Vec<u64>>,
}

impl World {
    fn new(users: u64, groups: u64) -> World {
        let mut members = vec![Vec::new(); groups as usize];
        for u in 0..users {
            for g in Self::groups_of_in(u, groups) {
                members[g as usize].push(u);
            }
        }
        World { users, members }
    }

    fn groups_of_in(u: u64, groups: u64) -> Vec<u64> {
        let mut gs: Vec<u64> = (0..GROUPS_PER_USER)
            .map(|k| (u.wrapping_mul(7919) + k * 104_729 + k * k * 31) % groups)
            .collect();
        gs.sort_unstable();
        gs.dedup();
        gs
    }

    fn friend(&self, u: u64, k: u64) -> u64 {
        (u + 1 + k * 97) % self.users
    }
}

/// Picks a word, favouring the start of the list (a rough Zipf).
fn word<'a>(rng: &mut StdRng, words: &[&'a str]) -> &'a str {
    let x: f64 = rng.random();
    words[((x * x * x) * words.len() as f64) as usize % words.len()]
}

fn text(rng: &mut StdRng, en: &[&str], zh: &[&str], ja: &[&str]) -> String {
    let n = rng.random_range(3..12);
    let mut s = String::new();
    match rng.random_range(0..10) {
        0..=4 => {
            for i in 0..n {
                if i > 0 {
                    s.push(' ');
                }
                s.push_str(word(rng, en));
            }
        }
        5..=7 => {
            for i in 0..n {
                s.push_str(word(rng, zh));
                if i % 4 == 3 {
                    s.push('，');
                }
            }
            if rng.random_bool(0.3) {
                s.push(' ');
                s.push_str(word(rng, en));
            }
        }
        _ => {
            for i in 0..n {
                s.push_str(word(rng, ja));
                if i % 3 == 2 {
                    s.push('、');
                }
            }
        }
    }
    s
}

/// What the index part measured.
struct IndexRun {
    messages: usize,
    index_secs: f64,
    bytes: u64,
    docs: u64,
    segments: usize,
    text_bytes: usize,
    lat: Vec<Duration>,
    mean_matches: f64,
    empty: usize,
}

/// The synthetic corpus and how it is indexed and searched.
#[derive(Clone, Copy, Debug)]
pub struct Corpus {
    pub messages: usize,
    pub users: u64,
    pub groups: u64,
    pub searches: usize,
    /// Messages per index commit (the feeder commits up to 10 000 when behind).
    pub commit: usize,
}

impl std::fmt::Display for Corpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} messages, {} users, {} groups, {} searches, {} a commit",
            self.messages, self.users, self.groups, self.searches, self.commit
        )
    }
}

fn index_run(c: Corpus) -> anyhow::Result<IndexRun> {
    let Corpus {
        messages,
        users,
        groups,
        searches,
        commit,
    } = c;
    let en: Vec<&str> = EN.split_whitespace().collect();
    let zh: Vec<&str> = ZH.split_whitespace().collect();
    let ja: Vec<&str> = JA.split_whitespace().collect();
    let world = World::new(users, groups);
    let mut rng = StdRng::seed_from_u64(0xF3_22_5E_A2);
    let mut gseq = vec![0u64; groups as usize];
    let temp = tempfile::Builder::new()
        .prefix("ferry-bench-search-")
        .tempdir()?;
    let index = Index::open(temp.path(), Options::default())?;
    let base_ms = 1_700_000_000_000i64;
    let mut indexing = Duration::ZERO;
    let mut batch = Vec::with_capacity(commit.min(100_000));
    let mut text_bytes = 0usize;
    for i in 0..messages {
        let (conv, sender) = if rng.random_bool(0.6) {
            let u = rng.random_range(0..users);
            let v = world.friend(u, rng.random_range(0..FRIENDS));
            (Conv::Direct { a: u, b: v }, u)
        } else {
            let g = rng.random_range(0..groups);
            let m = &world.members[g as usize];
            let sender = if m.is_empty() {
                0
            } else {
                m[rng.random_range(0..m.len())]
            };
            gseq[g as usize] += 1;
            (
                Conv::Group {
                    group_id: g,
                    gseq: gseq[g as usize],
                },
                sender,
            )
        };
        let kind = match rng.random_range(0..20) {
            0 => Kind::Image,
            1 => Kind::File,
            _ => Kind::Text,
        };
        let t = text(&mut rng, &en, &zh, &ja);
        text_bytes += t.len();
        batch.push(Change::Upsert(Doc {
            msg_id: i as u64 + 1,
            conv,
            sender,
            time_ms: base_ms + i as i64 * 50 + rng.random_range(0..50),
            kind,
            text: t,
        }));
        if batch.len() >= commit || i + 1 == messages {
            let t0 = Instant::now();
            index.apply(std::mem::take(&mut batch), &format!("bench-{i}"))?;
            indexing += t0.elapsed();
            if (i + 1) % 100_000 == 0 {
                eprintln!(
                    "  {:>8} indexed, {:.0} msgs/s so far",
                    i + 1,
                    (i + 1) as f64 / indexing.as_secs_f64()
                );
            }
        }
    }
    let stats = index.stats();
    let mut lat = Vec::with_capacity(searches);
    let mut totals = 0usize;
    let mut empty = 0usize;
    for s in 0..searches {
        let user = rng.random_range(0..users);
        let groups = World::groups_of_in(user, groups)
            .into_iter()
            .map(|g| GroupSpan {
                group_id: g,
                from_gseq: if rng.random_bool(0.3) {
                    rng.random_range(0..=gseq[g as usize])
                } else {
                    0
                },
                to_gseq: None,
            })
            .collect();
        let words = match rng.random_range(0..10) {
            0..=4 => &en,
            5..=7 => &zh,
            _ => &ja,
        };
        let mut text = words[rng.random_range(0..words.len())].to_string();
        if rng.random_bool(0.4) {
            text.push(' ');
            text.push_str(words[rng.random_range(0..words.len())]);
        }
        let query = Query {
            text,
            scope: Scope { user, groups },
            order: if s % 4 == 3 {
                Order::Relevance
            } else {
                Order::Newest
            },
            limit: 20,
            highlight: s % 2 == 0,
            ..Query::default()
        };
        let t0 = Instant::now();
        let hits = index.search(&query)?;
        lat.push(t0.elapsed());
        totals += hits.total;
        if hits.total == 0 {
            empty += 1;
        }
    }
    lat.sort();
    drop(index);
    space_usage(temp.path(), messages);
    Ok(IndexRun {
        messages,
        index_secs: indexing.as_secs_f64(),
        bytes: stats.bytes,
        docs: stats.docs,
        segments: stats.segments,
        text_bytes,
        mean_matches: totals as f64 / searches.max(1) as f64,
        empty,
        lat,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[allow(clippy::too_many_arguments)]
/// When the senders have stopped: how many feed rows the server's index is behind, and
/// how long it then takes to catch up (polled every 100 ms, for at most 2 minutes).
/// `None` when the admin API does not answer.
async fn catch_up_after(target: &Target) -> Option<(u64, f64)> {
    let own = target.own_server()?;
    let behind = |body: String| -> Option<u64> {
        serde_json::from_str::<Value>(&body).ok()?["feed_behind"].as_u64()
    };
    let at_end = behind(own.admin_get("/v1/admin/search").await?)?;
    let started = Instant::now();
    let mut now = at_end;
    while now > 0 && started.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = behind(own.admin_get("/v1/admin/search").await?)?;
    }
    (now == 0).then(|| (at_end, started.elapsed().as_secs_f64()))
}

pub async fn run(
    args: &BenchArgs,
    corpus: Corpus,
    pairs: usize,
    rounds: usize,
) -> anyhow::Result<Report> {
    let c = corpus;
    if c.users < 100 || c.groups < 10 || c.messages == 0 || c.searches == 0 || c.commit == 0 {
        bail!(
            "need --users >= 100, --groups >= 10, --messages >= 1, --searches >= 1, --commit >= 1"
        );
    }
    eprintln!("search: indexing {c}");
    let r = tokio::task::spawn_blocking(move || index_run(corpus)).await??;
    let index_per_s = r.messages as f64 / r.index_secs.max(1e-9);
    let per_msg = r.bytes as f64 / r.messages as f64;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (p50, p90, p99) = (
        percentile(&r.lat, 0.5),
        percentile(&r.lat, 0.9),
        percentile(&r.lat, 0.99),
    );
    let max = r.lat.last().copied().unwrap_or_default();

    // The send path, search on and off, interleaved.
    let mut send: Value = Value::Null;
    if args.server.is_empty() && rounds > 0 && pairs > 0 {
        let (mut on, mut off) = (Vec::new(), Vec::new());
        // Per search-on round: feed rows not yet indexed when the senders stopped, and
        // the seconds the index took to catch up after that (what indexing deferred).
        let (mut behind, mut catch_up) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let order = if round % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for search in order {
                eprintln!(
                    "search: send path, round {}, search {}",
                    round + 1,
                    if search { "on" } else { "off" }
                );
                let target = Target::own_logic(args, &format!("search = {search}"), "").await?;
                let got = super::p2p::once(args, &target, pairs, None, 4).await;
                if search && got.is_ok() {
                    if let Some((b, secs)) = catch_up_after(&target).await {
                        behind.push(b as f64);
                        catch_up.push(secs);
                    }
                }
                target.stop().await;
                let got = got?;
                let per_s = got["delivered_per_sec"].as_f64().unwrap_or(0.0);
                if search {
                    on.push(per_s);
                } else {
                    off.push(per_s);
                }
            }
        }
        let (m_on, m_off) = (median(&mut on.clone()), median(&mut off.clone()));
        send = json!({
            "pairs": pairs,
            "window": 4,
            "rounds": rounds,
            "search_on_per_sec": on,
            "search_off_per_sec": off,
            "median_on": m_on,
            "median_off": m_off,
            "ratio": m_on / m_off,
            "index_behind_at_end": behind,
            "index_catch_up_secs": catch_up,
        });
    }

    let mut report = Report::new(format!("search: {c}"));
    report.row(
        "indexing",
        format!("{index_per_s:.0} msgs/s ({:.1} s in apply)", r.index_secs),
    );
    report.row(
        "index size",
        format!(
            "{per_msg:.1} bytes/message ({} docs, {} segments; text {:.1} bytes/message)",
            r.docs,
            r.segments,
            r.text_bytes as f64 / r.messages as f64
        ),
    );
    report.row(
        "search p50 / p90 / p99 / max",
        format!(
            "{:.2} / {:.2} / {:.2} / {:.2} ms",
            ms(p50),
            ms(p90),
            ms(p99),
            ms(max)
        ),
    );
    report.row(
        "matches in scope (mean) / none",
        format!("{:.1} / {}", r.mean_matches, r.empty),
    );
    if !send.is_null() {
        let listed = |k: &str, digits: usize| {
            send[k]
                .as_array()
                .map(|v| {
                    v.iter()
                        .map(|x| format!("{:.*}", digits, x.as_f64().unwrap_or(0.0)))
                        .collect::<Vec<_>>()
                        .join(" · ")
                })
                .unwrap_or_default()
        };
        report.row(
            "search on: index behind at the end / caught up after",
            format!(
                "{} rows / {} s",
                listed("index_behind_at_end", 0),
                listed("index_catch_up_secs", 1)
            ),
        );
        report.row(
            "1:1 msgs/s search on / off (median)",
            format!(
                "{:.0} / {:.0} = {:.3}",
                send["median_on"].as_f64().unwrap_or(0.0),
                send["median_off"].as_f64().unwrap_or(0.0),
                send["ratio"].as_f64().unwrap_or(0.0)
            ),
        );
    }
    report.json = json!({
        "scenario": "search",
        "machine": super::machine(),
        "messages": c.messages,
        "commit": c.commit,
        "users": c.users,
        "groups": c.groups,
        "searches": c.searches,
        "index_msgs_per_s": index_per_s,
        "index_seconds": r.index_secs,
        "index_bytes": r.bytes,
        "bytes_per_message": per_msg,
        "search_ms": {"p50": ms(p50), "p90": ms(p90), "p99": ms(p99), "max": ms(max)},
        "mean_matches": r.mean_matches,
        "send_path": send,
    });
    Ok(report)
}

/// Where the bytes go, per message, by index component (tantivy's space usage report).
fn space_usage(dir: &std::path::Path, messages: usize) {
    let report = || -> tantivy::Result<()> {
        let index = tantivy::Index::open_in_dir(dir)?;
        let usage = index.reader()?.searcher().space_usage()?;
        let (mut termdict, mut postings, mut positions, mut fast, mut norms, mut store) =
            (0, 0, 0, 0, 0, 0);
        for seg in usage.segments() {
            termdict += seg.termdict().total().get_bytes();
            postings += seg.postings().total().get_bytes();
            positions += seg.positions().total().get_bytes();
            fast += seg.fast_fields().total().get_bytes();
            norms += seg.fieldnorms().total().get_bytes();
            store += seg.store().total().get_bytes();
        }
        let per = |b: u64| b as f64 / messages as f64;
        eprintln!(
            "bytes/message by component: terms {:.1}, postings {:.1}, positions {:.1}, fast fields {:.1}, norms {:.1}, stored text {:.1}",
            per(termdict),
            per(postings),
            per(positions),
            per(fast),
            per(norms),
            per(store)
        );
        Ok(())
    };
    if let Err(e) = report() {
        eprintln!("space usage: {e}");
    }
}
