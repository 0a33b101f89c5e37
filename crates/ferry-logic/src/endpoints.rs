//! Endpoint lists and connect reports: client-side load balancing.
//!
//! A client asks for its list (`POST /v1/endpoints`); logic picks the gateways serving
//! the client's region (configured IP prefixes → region → gateways), turns each gateway
//! address into a TCP and an HTTP (long-poll) entry, and ranks them: first by what
//! clients of the region reported lately (failing endpoints sink), then by the
//! gateways' load, spread per client by a weighted shuffle so that not every client
//! starts with the same gateway. IP literals only: the long link never depends on DNS.
//!
//! Clients report their connect attempts when idle (`POST /v1/endpoints/report`). The
//! reports are kept per region and endpoint in a sliding window (a minute by default):
//! an endpoint that fails for several users sinks within the window, and comes back
//! once the failures have aged out or successes outweigh them.
//!
//! With no gateways configured, the list is the serving gateway's own listen addresses
//! (a `0.0.0.0` listener stands for the address the client connected to).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use ferry_proto::v1;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use ferry_bus::{BusRequest, BusResponse};
use ferry_proto::ProtoMessage;

use crate::core::{ok, Core};
use crate::error::LogicError;
use crate::notify::Notifier;

/// `[logic.endpoints]`. Every field has a default; with no gateways configured, each
/// gateway hands out its own listen addresses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointsConfig {
    /// IP prefixes → region. The longest matching prefix wins.
    pub regions: Vec<RegionConfig>,
    /// The region of a client no prefix matches.
    pub default_region: String,
    /// The gateways and the addresses clients reach them on.
    pub gateways: Vec<GatewayEndpoints>,
    /// Clients ask again after this many seconds.
    pub refresh_secs: u32,
    /// Reports count for this long.
    pub report_window_secs: u32,
    /// An endpoint sinks only when at least this many distinct users saw it fail (one
    /// user cannot sink an endpoint for everyone).
    pub min_reporters: u32,
    /// Samples one report may carry; more is refused (TOO_LARGE).
    pub max_samples_per_report: usize,
    /// Reports per user per minute that count; later ones are answered `accepted: 0`.
    pub reports_per_minute: u32,
    /// Entries in one list at most.
    pub max_endpoints: usize,
}

impl Default for EndpointsConfig {
    fn default() -> Self {
        EndpointsConfig {
            regions: Vec::new(),
            default_region: "default".into(),
            gateways: Vec::new(),
            refresh_secs: 600,
            report_window_secs: 60,
            min_reporters: 2,
            max_samples_per_report: 32,
            reports_per_minute: 6,
            max_endpoints: 16,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegionConfig {
    pub name: String,
    /// `10.0.0.0/8`, `2001:db8::/32`, or a single address.
    pub prefixes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayEndpoints {
    /// The gateway's id on the bus (`gateway.id`): its load comes from its links.
    pub id: String,
    /// Regions it serves; empty: every region.
    pub regions: Vec<String>,
    /// `IP:PORT` literals clients connect to (every port speaks TCP and HTTP).
    pub addrs: Vec<String>,
    /// `"tcp"`, `"http"` or both (the default).
    pub transports: Vec<String>,
    /// Relative capacity, 1–1000.
    pub weight: u32,
}

impl Default for GatewayEndpoints {
    fn default() -> Self {
        GatewayEndpoints {
            id: String::new(),
            regions: Vec::new(),
            addrs: Vec::new(),
            transports: vec!["tcp".into(), "http".into()],
            weight: 100,
        }
    }
}

impl EndpointsConfig {
    /// Checks every prefix, address and transport; the first problem found.
    pub fn validate(&self) -> Result<(), String> {
        Parsed::new(self).map(|_| ())
    }
}

/// An IP prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Prefix {
    net: IpAddr,
    len: u8,
}

impl Prefix {
    pub fn parse(s: &str) -> Result<Prefix, String> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let net: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP prefix"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{s:?}: bad prefix length"))?,
            None => max,
        };
        Ok(Prefix { net, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// A place to connect to: address and transport.
type Key = (SocketAddr, v1::Transport);
/// Links per gateway id.
type Loads = HashMap<Arc<str>, usize>;

struct ParsedGateway {
    id: Arc<str>,
    regions: Vec<String>,
    keys: Vec<Key>,
    weight: u32,
}

struct Parsed {
    prefixes: Vec<(Prefix, Arc<str>)>,
    gateways: Vec<ParsedGateway>,
}

impl Parsed {
    fn new(cfg: &EndpointsConfig) -> Result<Parsed, String> {
        let mut prefixes = Vec::new();
        for r in &cfg.regions {
            if r.name.is_empty() {
                return Err("a region needs a name".into());
            }
            let name: Arc<str> = r.name.as_str().into();
            for p in &r.prefixes {
                prefixes.push((Prefix::parse(p)?, name.clone()));
            }
        }
        // Longest prefix first.
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len));
        let mut gateways = Vec::new();
        for g in &cfg.gateways {
            let mut transports = Vec::new();
            for t in &g.transports {
                transports.push(match t.to_ascii_lowercase().as_str() {
                    "tcp" => v1::Transport::Tcp,
                    "http" => v1::Transport::Http,
                    other => return Err(format!("unknown transport {other:?} (tcp or http)")),
                });
            }
            let mut keys = Vec::new();
            for a in &g.addrs {
                let addr: SocketAddr = a.parse().map_err(|_| {
                    format!("gateway address {a:?} must be an IP literal and a port")
                })?;
                if addr.ip().is_unspecified() || addr.port() == 0 {
                    return Err(format!("gateway address {a:?} is not reachable"));
                }
                for t in &transports {
                    keys.push((addr, *t));
                }
            }
            gateways.push(ParsedGateway {
                id: g.id.as_str().into(),
                regions: g.regions.clone(),
                keys,
                weight: g.weight.clamp(1, 1000),
            });
        }
        Ok(Parsed { prefixes, gateways })
    }
}

/// One reported attempt.
struct Sample {
    at: Instant,
    user: u64,
    ok: bool,
    ms: u32,
}

/// What the reports say about an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Health {
    Good,
    Unknown,
    Failing,
}

/// Where a request came from, as the gateway saw it.
pub(crate) struct Origin<'a> {
    pub peer: &'a str,
    pub local_addr: &'a str,
    pub listen: &'a [String],
    pub gateway_id: &'a str,
}

/// A candidate before ranking.
struct Candidate {
    key: Key,
    gateway: Arc<str>,
    weight: u32,
}

/// The ranking state: parsed configuration, recent connect samples per region and
/// endpoint, and the gateways' loads.
pub(crate) struct Ranking {
    cfg: EndpointsConfig,
    parsed: Parsed,
    /// (region, endpoint) → recent samples, oldest first.
    samples: DashMap<(Arc<str>, Key), Mutex<VecDeque<Sample>>>,
    /// Links per gateway, and when they were counted.
    loads: Mutex<Option<(Instant, Loads)>>,
    /// Per user: the start of the current minute and the reports counted in it.
    report_counts: DashMap<u64, (Instant, u32)>,
}

/// The endpoints service: lists for clients, and their connect reports.
pub(crate) struct Endpoints {
    core: Arc<Core>,
    /// The links per gateway, for ranking by load.
    notifier: Arc<Notifier>,
    ranking: Ranking,
}

impl Endpoints {
    pub fn new(core: Arc<Core>, notifier: Arc<Notifier>) -> Endpoints {
        Endpoints {
            ranking: Ranking::new(core.cfg.endpoints.clone()),
            core,
            notifier,
        }
    }

    fn origin(req: &BusRequest) -> Origin<'_> {
        Origin {
            peer: &req.peer,
            local_addr: &req.local_addr,
            listen: &req.listen,
            gateway_id: &req.gateway_id,
        }
    }

    /// The ranked endpoint list for the client behind `req` (no token needed).
    pub fn list(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let r = v1::EndpointsReq::decode(req.body.clone())?;
        let list = self.ranking.list(&Self::origin(req), r.version, || {
            self.notifier.links_per_gateway()
        });
        Ok(ok(req.cmd, &list))
    }

    /// Connect timings from a signed-in client.
    pub async fn report(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::EndpointReportReq::decode(req.body.clone())?;
        let accepted = self.ranking.report(me.user_id, &Self::origin(req), r)?;
        metrics::counter!("ferry_endpoint_samples_total").increment(u64::from(accepted));
        Ok(ok(req.cmd, &v1::EndpointReportResp { accepted }))
    }
}

/// Samples kept per (region, endpoint).
const SAMPLES_PER_KEY: usize = 256;
/// Samples per user that count for one endpoint (the newest).
const SAMPLES_PER_USER: u32 = 3;

impl Ranking {
    /// Takes the configuration; invalid entries are logged and left out (the binary
    /// validates its configuration before it starts, see [`EndpointsConfig::validate`]).
    pub fn new(cfg: EndpointsConfig) -> Ranking {
        let parsed = Parsed::new(&cfg).unwrap_or_else(|e| {
            tracing::error!(error = %e, "endpoint configuration ignored");
            Parsed {
                prefixes: Vec::new(),
                gateways: Vec::new(),
            }
        });
        Ranking {
            cfg,
            parsed,
            samples: DashMap::new(),
            loads: Mutex::new(None),
            report_counts: DashMap::new(),
        }
    }

    pub fn region_of(&self, peer: &str) -> Arc<str> {
        let ip = peer
            .parse::<SocketAddr>()
            .map(|a| a.ip())
            .or_else(|_| peer.parse::<IpAddr>());
        if let Ok(ip) = ip {
            if let Some((_, name)) = self.parsed.prefixes.iter().find(|(p, _)| p.contains(ip)) {
                return name.clone();
            }
        }
        self.cfg.default_region.as_str().into()
    }

    /// The endpoints a client of `region` may be given, unranked.
    fn candidates(&self, region: &str, origin: &Origin) -> Vec<Candidate> {
        let mut out = Vec::new();
        if self.parsed.gateways.is_empty() {
            // This gateway's own ports; an unspecified listen address stands for the
            // address the client reached.
            let local: Option<SocketAddr> = origin.local_addr.parse().ok();
            for l in origin.listen {
                let Ok(mut a) = l.parse::<SocketAddr>() else {
                    continue;
                };
                if a.ip().is_unspecified() {
                    match local {
                        Some(local) if !local.ip().is_unspecified() => a.set_ip(local.ip()),
                        _ => continue,
                    }
                }
                for t in [v1::Transport::Tcp, v1::Transport::Http] {
                    if !out.iter().any(|c: &Candidate| c.key == (a, t)) {
                        out.push(Candidate {
                            key: (a, t),
                            gateway: origin.gateway_id.into(),
                            weight: 100,
                        });
                    }
                }
            }
            return out;
        }
        let serving: Vec<&ParsedGateway> = {
            let mine: Vec<_> = self
                .parsed
                .gateways
                .iter()
                .filter(|g| g.regions.is_empty() || g.regions.iter().any(|r| r == region))
                .collect();
            if mine.is_empty() {
                self.parsed.gateways.iter().collect()
            } else {
                mine
            }
        };
        for g in serving {
            for k in &g.keys {
                if !out.iter().any(|c: &Candidate| c.key == *k) {
                    out.push(Candidate {
                        key: *k,
                        gateway: g.id.clone(),
                        weight: g.weight,
                    });
                }
            }
        }
        out
    }

    fn window(&self) -> Duration {
        Duration::from_secs(u64::from(self.cfg.report_window_secs.max(1)))
    }

    /// What the window's reports say about `key` in `region`, and the mean connect time
    /// of its successes.
    pub fn health(&self, region: &Arc<str>, key: Key, now: Instant) -> (Health, Option<u32>) {
        let Some(entry) = self.samples.get(&(region.clone(), key)) else {
            return (Health::Unknown, None);
        };
        let mut q = entry.lock();
        let window = self.window();
        while q
            .front()
            .is_some_and(|s| now.saturating_duration_since(s.at) > window)
        {
            q.pop_front();
        }
        let mut per_user: HashMap<u64, u32> = HashMap::new();
        let (mut oks, mut fails, mut ms_sum) = (0u32, 0u32, 0u64);
        let mut failing_users = HashSet::new();
        for s in q.iter().rev() {
            let n = per_user.entry(s.user).or_default();
            if *n >= SAMPLES_PER_USER {
                continue;
            }
            *n += 1;
            if s.ok {
                oks += 1;
                ms_sum += u64::from(s.ms);
            } else {
                fails += 1;
                failing_users.insert(s.user);
            }
        }
        let mean = (oks > 0).then(|| (ms_sum / u64::from(oks)) as u32);
        let health = if failing_users.len() as u32 >= self.cfg.min_reporters.max(1) && fails > oks {
            Health::Failing
        } else if oks > 0 {
            Health::Good
        } else {
            Health::Unknown
        };
        (health, mean)
    }

    /// Links per gateway, counted at most every five seconds.
    fn loads(&self, count: impl FnOnce() -> HashMap<Arc<str>, usize>) -> HashMap<Arc<str>, usize> {
        let mut l = self.loads.lock();
        match &*l {
            Some((at, m)) if at.elapsed() < Duration::from_secs(5) => m.clone(),
            _ => {
                let m = count();
                *l = Some((Instant::now(), m.clone()));
                m
            }
        }
    }

    /// The ranked list for a client.
    pub fn list(
        &self,
        origin: &Origin,
        known_version: u64,
        count_loads: impl FnOnce() -> HashMap<Arc<str>, usize>,
    ) -> v1::EndpointsResp {
        let region = self.region_of(origin.peer);
        let cands = self.candidates(&region, origin);
        let loads = if self.parsed.gateways.len() > 1 {
            self.loads(count_loads)
        } else {
            HashMap::new()
        };
        let mean_load = if loads.is_empty() {
            0.0
        } else {
            loads.values().sum::<usize>() as f64 / loads.len() as f64
        };
        let now = Instant::now();
        // Per client, so that clients spread over equally good gateways.
        let client_ip = origin
            .peer
            .parse::<SocketAddr>()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let mut ranked: Vec<(Health, f64, v1::Endpoint)> = cands
            .into_iter()
            .map(|c| {
                let (health, mean_ms) = self.health(&region, c.key, now);
                let mut w = f64::from(c.weight);
                if let Some(links) = loads.get(&c.gateway) {
                    w *= (mean_load + 1.0) / (*links as f64 + 1.0);
                }
                if let Some(ms) = mean_ms {
                    w *= 1000.0 / (1000.0 + f64::from(ms));
                }
                let mut weight = (w.round() as u32).clamp(1, 1000);
                if weight > 20 {
                    // Coarse steps: small changes in load do not change the version.
                    weight -= weight % 10;
                }
                if health == Health::Failing {
                    weight = 1;
                }
                // Weighted shuffle (Efraimidis–Spirakis): larger keys first.
                let u = unit_hash(&client_ip, &c.key);
                let order = u.ln() / f64::from(weight);
                let ep = v1::Endpoint {
                    ip: c.key.0.ip().to_string(),
                    port: u32::from(c.key.0.port()),
                    transport: c.key.1 as i32,
                    weight,
                };
                (health, order, ep)
            })
            .collect();
        ranked.sort_by(|a, b| {
            let ta = a.2.transport != v1::Transport::Tcp as i32;
            let tb = b.2.transport != v1::Transport::Tcp as i32;
            (ta, a.0)
                .cmp(&(tb, b.0))
                .then(b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal))
        });
        let endpoints: Vec<v1::Endpoint> = ranked
            .into_iter()
            .map(|(_, _, e)| e)
            .take(self.cfg.max_endpoints.max(1))
            .collect();
        let version = list_version(&region, &endpoints);
        let unchanged = known_version == version;
        v1::EndpointsResp {
            version,
            unchanged,
            endpoints: if unchanged { Vec::new() } else { endpoints },
            region: region.to_string(),
            refresh_secs: self.cfg.refresh_secs,
        }
    }

    /// Takes a user's report; returns the samples that counted.
    pub fn report(
        &self,
        user: u64,
        origin: &Origin,
        req: v1::EndpointReportReq,
    ) -> Result<u32, LogicError> {
        if req.samples.len() > self.cfg.max_samples_per_report {
            return Err(LogicError::TooLarge(format!(
                "a report carries at most {} samples",
                self.cfg.max_samples_per_report
            )));
        }
        let now = Instant::now();
        if !self.count_report(user, now) {
            return Ok(0);
        }
        let region = self.region_of(origin.peer);
        let known: HashSet<Key> = self
            .candidates(&region, origin)
            .into_iter()
            .map(|c| c.key)
            .collect();
        let window = self.window();
        let mut accepted = 0;
        for s in req.samples {
            let Ok(ip) = s.ip.parse::<IpAddr>() else {
                continue;
            };
            let Ok(port) = u16::try_from(s.port) else {
                continue;
            };
            let Ok(transport) = v1::Transport::try_from(s.transport) else {
                continue;
            };
            let key = (SocketAddr::new(ip, port), transport);
            let age = Duration::from_millis(u64::from(s.age_ms));
            if !known.contains(&key) || age > window {
                continue;
            }
            let sample = Sample {
                at: now.checked_sub(age).unwrap_or(now),
                user,
                ok: s.ok,
                ms: s.connect_ms.min(60_000),
            };
            let entry = self.samples.entry((region.clone(), key)).or_default();
            let mut q = entry.lock();
            if q.len() >= SAMPLES_PER_KEY {
                q.pop_front();
            }
            // Keep the queue in time order (a batch may carry older samples).
            let pos = q
                .iter()
                .rposition(|x| x.at <= sample.at)
                .map_or(0, |p| p + 1);
            q.insert(pos, sample);
            accepted += 1;
        }
        Ok(accepted)
    }

    /// Counts a report against the user's budget; false when over it.
    fn count_report(&self, user: u64, now: Instant) -> bool {
        if self.report_counts.len() > 100_000 {
            self.report_counts
                .retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
        }
        let mut e = self.report_counts.entry(user).or_insert((now, 0));
        if now.duration_since(e.0) >= Duration::from_secs(60) {
            *e = (now, 0);
        }
        e.1 += 1;
        e.1 <= self.cfg.reports_per_minute
    }
}

/// A number in (0, 1] from a client and an endpoint, the same every time.
fn unit_hash(client: &str, key: &Key) -> f64 {
    let mut h = sha2::Sha256::new();
    h.update(client.as_bytes());
    h.update(key.0.to_string().as_bytes());
    h.update([key.1 as u8]);
    let d = h.finalize();
    let n = u64::from_be_bytes(d[..8].try_into().unwrap_or([0; 8])) >> 11;
    (n as f64 + 1.0) / (1u64 << 53) as f64
}

/// A list's version: a digest of what it says, so that every logic node gives the same
/// version for the same list.
fn list_version(region: &str, endpoints: &[v1::Endpoint]) -> u64 {
    let mut h = sha2::Sha256::new();
    h.update(region.as_bytes());
    for e in endpoints {
        h.update(e.ip.as_bytes());
        h.update(e.port.to_be_bytes());
        h.update(e.transport.to_be_bytes());
        h.update(e.weight.to_be_bytes());
    }
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().unwrap_or([0; 8])).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin<'a>(peer: &'a str, listen: &'a [String]) -> Origin<'a> {
        Origin {
            peer,
            local_addr: "127.0.0.1:9000",
            listen,
            gateway_id: "gw-1",
        }
    }

    fn sample(ip: &str, port: u32, ok: bool) -> v1::ConnectSample {
        v1::ConnectSample {
            ip: ip.into(),
            port,
            transport: v1::Transport::Tcp as i32,
            ok,
            connect_ms: 30,
            error: if ok { String::new() } else { "refused".into() },
            age_ms: 0,
        }
    }

    fn three_gateways() -> EndpointsConfig {
        EndpointsConfig {
            regions: vec![
                RegionConfig {
                    name: "east".into(),
                    prefixes: vec!["10.1.0.0/16".into(), "127.0.0.2".into()],
                },
                RegionConfig {
                    name: "east-lab".into(),
                    prefixes: vec!["10.1.2.0/24".into()],
                },
            ],
            gateways: ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
                .iter()
                .enumerate()
                .map(|(i, a)| GatewayEndpoints {
                    id: format!("gw-{i}"),
                    addrs: vec![(*a).into()],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn prefixes() {
        let p = Prefix::parse("10.1.0.0/16").unwrap();
        assert!(p.contains("10.1.200.3".parse().unwrap()));
        assert!(!p.contains("10.2.0.1".parse().unwrap()));
        assert!(p.contains("::ffff:10.1.0.9".parse().unwrap()), "v4-mapped");
        let p = Prefix::parse("2001:db8::/32").unwrap();
        assert!(p.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!p.contains("10.1.0.1".parse().unwrap()));
        assert!(Prefix::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.1.0.0/33", "example.com/8", "", "1.2.3.4/x"] {
            assert!(Prefix::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn regions_by_longest_prefix() {
        let e = Ranking::new(three_gateways());
        assert_eq!(&*e.region_of("10.1.2.3:5000"), "east-lab");
        assert_eq!(&*e.region_of("10.1.3.3:5000"), "east");
        assert_eq!(&*e.region_of("127.0.0.2:1"), "east");
        assert_eq!(&*e.region_of("192.168.0.1:1"), "default");
        assert_eq!(&*e.region_of("garbage"), "default");
    }

    #[test]
    fn bad_config_is_reported() {
        let mut c = three_gateways();
        c.gateways[0].addrs = vec!["gw.example.com:80".into()];
        assert!(c.validate().unwrap_err().contains("IP literal"));
        let mut c = three_gateways();
        c.gateways[0].transports = vec!["udp".into()];
        assert!(c.validate().is_err());
        let mut c = three_gateways();
        c.regions[0].prefixes.push("10.0.0.0/99".into());
        assert!(c.validate().is_err());
        assert!(three_gateways().validate().is_ok());
    }

    #[test]
    fn default_list_is_the_gateways_own_ports() {
        let e = Ranking::new(EndpointsConfig::default());
        let listen = vec!["0.0.0.0:8080".to_string(), "127.0.0.5:443".to_string()];
        let list = e.list(&origin("127.0.0.1:5555", &listen), 0, HashMap::new);
        let got: Vec<_> = list
            .endpoints
            .iter()
            .map(|e| (e.ip.as_str(), e.port, e.transport))
            .collect();
        let (tcp, http) = (v1::Transport::Tcp as i32, v1::Transport::Http as i32);
        assert_eq!(got.len(), 4);
        assert!(got.contains(&("127.0.0.1", 8080, tcp)), "{got:?}");
        assert!(got.contains(&("127.0.0.5", 443, http)), "{got:?}");
        assert!(got[..2].iter().all(|e| e.2 == tcp), "TCP first: {got:?}");
        // Asking with the current version gets "unchanged".
        let again = e.list(
            &origin("127.0.0.1:5555", &listen),
            list.version,
            HashMap::new,
        );
        assert!(again.unchanged && again.endpoints.is_empty());
        assert_eq!(again.version, list.version);
    }

    #[test]
    fn failing_endpoint_sinks_and_comes_back() {
        let mut cfg = three_gateways();
        cfg.report_window_secs = 1;
        let e = Ranking::new(cfg);
        let o = origin("10.1.0.7:4000", &[]);
        let top = e.list(&o, 0, HashMap::new).endpoints[0].clone();
        assert_eq!(top.transport, v1::Transport::Tcp as i32);
        let bad = |ok| v1::EndpointReportReq {
            samples: vec![sample(&top.ip, top.port, ok)],
        };
        // One user alone cannot sink it.
        e.report(1, &o, bad(false)).unwrap();
        e.report(1, &o, bad(false)).unwrap();
        assert_eq!(e.list(&o, 0, HashMap::new).endpoints[0].ip, top.ip);
        // A second user's failures do.
        assert_eq!(e.report(2, &o, bad(false)).unwrap(), 1);
        let list = e.list(&o, 0, HashMap::new).endpoints;
        let tcp: Vec<_> = list
            .iter()
            .filter(|x| x.transport == v1::Transport::Tcp as i32)
            .collect();
        assert_eq!(tcp.last().unwrap().ip, top.ip, "{list:?}");
        assert_eq!(tcp.last().unwrap().weight, 1);
        // Once the failures age out of the window it is back on top.
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(e.list(&o, 0, HashMap::new).endpoints[0].ip, top.ip);
    }

    #[test]
    fn reports_are_bounded() {
        let e = Ranking::new(three_gateways());
        let o = origin("10.1.0.7:4000", &[]);
        let many = v1::EndpointReportReq {
            samples: (0..33).map(|_| sample("10.0.0.1", 80, false)).collect(),
        };
        assert!(matches!(
            e.report(1, &o, many),
            Err(LogicError::TooLarge(_))
        ));
        // Unknown endpoints, bad addresses and stale samples do not count.
        let junk = v1::EndpointReportReq {
            samples: vec![
                sample("10.9.9.9", 80, false),
                sample("not-an-ip", 80, false),
                sample("10.0.0.1", 70_000, false),
                v1::ConnectSample {
                    age_ms: 3_600_000,
                    ..sample("10.0.0.1", 80, false)
                },
                sample("10.0.0.1", 80, true),
            ],
        };
        assert_eq!(e.report(1, &o, junk).unwrap(), 1);
        // Past the per-minute budget, reports are ignored.
        for _ in 0..10 {
            e.report(3, &o, v1::EndpointReportReq::default()).unwrap();
        }
        let late = v1::EndpointReportReq {
            samples: vec![sample("10.0.0.1", 80, true)],
        };
        assert_eq!(e.report(3, &o, late).unwrap(), 0);
    }

    #[test]
    fn load_moves_weight() {
        let e = Ranking::new(three_gateways());
        let o = origin("10.1.0.7:4000", &[]);
        let loads = || {
            let mut m: HashMap<Arc<str>, usize> = HashMap::new();
            m.insert("gw-0".into(), 1000);
            m.insert("gw-1".into(), 10);
            m.insert("gw-2".into(), 10);
            m
        };
        let list = e.list(&o, 0, loads).endpoints;
        let w = |ip: &str| list.iter().find(|x| x.ip == ip).unwrap().weight;
        assert!(w("10.0.0.1") < w("10.0.0.2"), "{list:?}");
    }
}
