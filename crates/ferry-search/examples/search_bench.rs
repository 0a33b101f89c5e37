//! Indexing and search throughput of ferry-search on a synthetic chat corpus.
//!
//! `cargo run --release -p ferry-search --example search_bench -- --messages 1000000 --users 10000`
//!
//! Generates (with a fixed seed) messages in English, Chinese, Japanese and mixed text,
//! 1:1 between friends and in groups (each user in ~10 of the groups), indexes them in
//! batches of 1 000 with `Index::apply` into a temporary directory, and then runs
//! searches as random users with their real scope (1:1 plus their groups), 1–2 word
//! queries. Prints indexing msgs/s, bytes per message and search latency percentiles.

use std::time::{Duration, Instant};

use ferry_search::{Change, Conv, Doc, GroupSpan, Index, Kind, Options, Order, Query, Scope};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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

struct Args {
    messages: usize,
    users: u64,
    groups: u64,
    searches: usize,
    /// Keep the index here (and reuse it when it already holds this corpus).
    dir: Option<std::path::PathBuf>,
    /// The writer's memory budget, MiB (default: `Options::default()`'s).
    writer_mb: Option<usize>,
    /// Search with this many groups in every scope instead of the user's own (a user in
    /// very many groups).
    scope_groups: Option<u64>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        messages: 100_000,
        users: 10_000,
        groups: 1_000,
        searches: 2_000,
        dir: None,
        writer_mb: None,
        scope_groups: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        if flag == "--dir" {
            a.dir = Some(value.into());
            continue;
        }
        let n: u64 = value
            .replace('_', "")
            .parse()
            .map_err(|e| format!("{flag} {value}: {e}"))?;
        match flag.as_str() {
            "--messages" => a.messages = n as usize,
            "--users" => a.users = n,
            "--groups" => a.groups = n,
            "--searches" => a.searches = n as usize,
            "--writer-mb" => a.writer_mb = Some(n as usize),
            "--scope-groups" => a.scope_groups = Some(n),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.users < 100 || a.groups < 10 || a.messages == 0 {
        return Err("need --users >= 100, --groups >= 10, --messages >= 1".into());
    }
    Ok(a)
}

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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("search_bench: {e}");
            std::process::exit(2);
        }
    };
    let en: Vec<&str> = EN.split_whitespace().collect();
    let zh: Vec<&str> = ZH.split_whitespace().collect();
    let ja: Vec<&str> = JA.split_whitespace().collect();
    let world = World::new(a.users, a.groups);
    let mut rng = StdRng::seed_from_u64(0xF3_22_5E_A2);
    let mut gseq = vec![0u64; a.groups as usize];
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = a.dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    let mut opts = Options::default();
    if let Some(mb) = a.writer_mb {
        opts.writer_memory = mb << 20;
    }
    let index = Index::open(&dir, opts).expect("open");
    let done = format!("bench-{}", a.messages - 1);
    let reuse = index.cursor().as_deref() == Some(&*done);
    println!(
        "corpus: {} messages, {} users, {} groups; index in {}{}",
        a.messages,
        a.users,
        a.groups,
        dir.display(),
        if reuse { " (reused)" } else { "" }
    );
    if !reuse && index.cursor().is_some() {
        index.clear().expect("clear");
    }

    // Indexing.
    let base_ms = 1_700_000_000_000i64;
    let mut indexing = Duration::ZERO;
    let mut batch = Vec::with_capacity(1000);
    let mut text_bytes = 0usize;
    let started = Instant::now();
    for i in 0..a.messages {
        let (conv, sender) = if rng.random_bool(0.6) {
            let u = rng.random_range(0..a.users);
            let v = world.friend(u, rng.random_range(0..FRIENDS));
            (Conv::Direct { a: u, b: v }, u)
        } else {
            let g = rng.random_range(0..a.groups);
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
        if reuse {
            batch.clear();
        } else if batch.len() == 1000 || i + 1 == a.messages {
            let t0 = Instant::now();
            index
                .apply(std::mem::take(&mut batch), &format!("bench-{i}"))
                .expect("apply");
            indexing += t0.elapsed();
            if (i + 1) % 100_000 == 0 {
                let s = index.stats();
                println!(
                    "  {:>8} indexed, {:.0} msgs/s so far, {} segments",
                    i + 1,
                    (i + 1) as f64 / indexing.as_secs_f64(),
                    s.segments
                );
            }
        }
    }
    let wall = started.elapsed();
    let stats = index.stats();
    if !reuse {
        println!(
        "indexing: {:.0} msgs/s in apply ({:.1} s), {:.0} msgs/s wall with generation ({:.1} s)",
        a.messages as f64 / indexing.as_secs_f64(),
        indexing.as_secs_f64(),
        a.messages as f64 / wall.as_secs_f64(),
        wall.as_secs_f64()
    );
    }
    println!(
        "index: {} docs, {} segments, {} bytes = {:.1} bytes/message (text itself {:.1} bytes/message)",
        stats.docs,
        stats.segments,
        stats.bytes,
        stats.bytes as f64 / a.messages as f64,
        text_bytes as f64 / a.messages as f64
    );

    // Searching.
    let mut lat = Vec::with_capacity(a.searches);
    let mut totals = 0usize;
    let mut empty = 0usize;
    // Queries with a one-character CJK word (a regex over the term dictionary) and not.
    let mut by_kind: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for s in 0..a.searches {
        let user = rng.random_range(0..a.users);
        let own = match a.scope_groups {
            Some(n) => (0..n.min(a.groups)).collect(),
            None => World::groups_of_in(user, a.groups),
        };
        let groups = own
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
        let one_char = query
            .text
            .split_whitespace()
            .any(|w| w.chars().count() == 1 && !w.is_ascii());
        let t0 = Instant::now();
        let hits = index.search(&query).expect("search");
        let took = t0.elapsed();
        lat.push(took);
        by_kind[usize::from(one_char)].push(took);
        totals += hits.total;
        if hits.total == 0 {
            empty += 1;
        }
    }
    lat.sort();
    drop(index);
    space_usage(&dir, a.messages);
    println!(
        "search: {} queries, p50 {:?}, p90 {:?}, p99 {:?}, max {:?}; mean matches in scope {:.1}, {} with none",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        lat[lat.len() - 1],
        totals as f64 / lat.len() as f64,
        empty
    );
    for (name, mut l) in ["words", "one-char CJK"].into_iter().zip(by_kind) {
        if l.is_empty() {
            continue;
        }
        l.sort();
        println!(
            "  {name}: {} queries, p50 {:?}, p99 {:?}",
            l.len(),
            percentile(&l, 0.5),
            percentile(&l, 0.99)
        );
    }
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
        println!(
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
        println!("space usage: {e}");
    }
}
