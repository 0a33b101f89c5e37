//! The configuration's tests: loading, refusing unknown keys and wrong types, and keeping
//! the reference in docs/operations.md complete (every key and environment variable the
//! code has is documented with its default, and everything documented exists).
//!
//! This file (and `tests/it/config.rs`) names misspelt keys and `FERRY_*` variables on
//! purpose, so the scan for the variables the code reads skips it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use toml::Value;

use super::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// Loads `text` from a file named `ferry.toml` with an empty environment.
fn load_text(text: &str) -> anyhow::Result<Config> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, text).unwrap();
    Config::load_with(Some(&path), |_| None)
}

fn load_err(text: &str) -> String {
    match load_text(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => format!("{e:#}"),
    }
}

fn defaults() -> toml::Table {
    toml::Table::try_from(Config::default()).unwrap()
}

#[test]
fn file_then_env() {
    let mut cfg =
        load_text("listen = [\"127.0.0.1:9000\"]\n[gateway]\nheartbeat_timeout_ms = 1234\n")
            .unwrap();
    assert_eq!(cfg.listen, ["127.0.0.1:9000"]);
    assert_eq!(cfg.gateway.heartbeat_timeout_ms, 1234);
    assert_eq!(
        cfg.gateway.login_timeout_ms, 10_000,
        "defaults fill the rest"
    );
    cfg.apply_env(|k| match k {
        "FERRY_LISTEN" => Some("127.0.0.1:1, 127.0.0.1:2".into()),
        "FERRY_DURABILITY" => Some("os".into()),
        "FERRY_TICKET_EPOCH" => Some("7".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(cfg.listen, ["127.0.0.1:1", "127.0.0.1:2"]);
    assert_eq!(
        (cfg.gateway.ticket_epoch, cfg.gateway.ticket_lifetime_secs),
        (7, 86_400)
    );
    assert_eq!(cfg.durability().unwrap(), ferry_store::Durability::Os);
    cfg.durability = "maybe".into();
    assert!(cfg.durability().is_err());
}

#[test]
fn endpoint_lists_are_checked_at_load() {
    let good = "[[logic.endpoints.regions]]\nname = \"east\"\nprefixes = [\"10.1.0.0/16\"]\n\
                [[logic.endpoints.gateways]]\nid = \"gw-1\"\nregions = [\"east\"]\n\
                addrs = [\"10.0.0.1:443\"]\n";
    let cfg = load_text(good).unwrap();
    assert_eq!(cfg.logic.endpoints.gateways[0].addrs, ["10.0.0.1:443"]);
    assert_eq!(cfg.logic.endpoints.gateways[0].transports, ["tcp", "http"]);
    let e = load_err(&good.replace("10.0.0.1:443", "gw.example.com:443"));
    assert!(
        e.contains("ferry.toml: logic.endpoints: ") && e.contains("IP literal"),
        "{e}"
    );
}

#[test]
fn defaults_just_work() {
    let cfg = Config::default();
    assert_eq!(cfg.listen, ["0.0.0.0:8080"]);
    assert_eq!(cfg.durability().unwrap(), ferry_store::Durability::Fsync);
    let e = load_err("durability = \"maybe\"\n");
    assert!(
        e.contains("ferry.toml: durability") && e.contains("maybe"),
        "{e}"
    );
    let e = Config::load_with(None, |k| (k == "FERRY_DURABILITY").then(|| "maybe".into()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"maybe\" (set by the environment)"), "{e}");
}

#[test]
fn unknown_keys_are_refused_with_the_key_its_table_and_the_file() {
    // (file, what the message must say)
    let cases: &[(&str, &[&str])] = &[
        (
            "[gatway]\nid = \"gw-1\"\n",
            &["unknown table [gatway]", "did you mean `gateway`"],
        ),
        (
            "[gateway]\nalow_plaintext = true\n",
            &[
                "unknown key `alow_plaintext` in [gateway]",
                "did you mean `allow_plaintext`",
            ],
        ),
        (
            "gateway.alow_plaintext = true\n",
            &["unknown key `alow_plaintext` in [gateway]"],
        ),
        (
            "data_dri = \"/var/lib/ferry\"\n",
            &[
                "unknown key `data_dri` at the top level",
                "did you mean `data_dir`",
            ],
        ),
        (
            "[logic.limits]\nsends_per_usr = { per_sec = 1.0, burst = 5.0 }\n",
            &[
                "unknown key `sends_per_usr` in [logic.limits]",
                "did you mean `sends_per_user`",
            ],
        ),
        (
            "[logic.limits]\nsends_per_user = { per_sec = 1.0, brust = 5.0 }\n",
            &[
                "unknown key `brust` in [logic.limits.sends_per_user]",
                "did you mean `burst`",
            ],
        ),
        (
            "[[logic.endpoints.gateways]]\nid = \"a\"\naddrs = [\"10.0.0.1:1\"]\n\
             [[logic.endpoints.gateways]]\nid = \"b\"\naddr = [\"10.0.0.2:1\"]\n",
            &[
                "unknown key `addr` in [[logic.endpoints.gateways]] number 2",
                "did you mean `addrs`",
            ],
        ),
        (
            "[cluster]\nnats_url = \"nats://127.0.0.1:4222\"\n",
            &["unknown key `nats_url` in [cluster]"],
        ),
        ("[logic]\nzebra = 1\n", &["unknown key `zebra` in [logic]"]),
    ];
    for (text, want) in cases {
        let e = load_err(text);
        assert!(e.contains("ferry.toml: "), "names the file: {e}");
        assert!(e.contains("Configuration reference"), "{e}");
        for w in *want {
            assert!(e.contains(w), "{text:?}: {e:?} should say {w:?}");
        }
    }
    // No suggestion when nothing is close.
    assert!(!load_err("[logic]\nzebra = 1\n").contains("did you mean"));
    // The free keys of a map are not checked against anything.
    let cfg = load_text("[gateway.body_limits]\nauth = 2048\n").unwrap();
    assert_eq!(cfg.gateway.body_limits["auth"], 2048);
}

/// Every table of the configuration: its path through the tree of known keys (an array
/// of tables is entered at its one template entry).
fn struct_tables(t: &toml::Table, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    for (k, v) in t {
        path.push(k.clone());
        match v {
            Value::Table(inner) if !inner.is_empty() => {
                out.push(path.clone());
                struct_tables(inner, path, out);
            }
            Value::Array(a) => {
                if let Some(Value::Table(inner)) = a.first() {
                    out.push(path.clone());
                    struct_tables(inner, path, out);
                }
            }
            _ => {}
        }
        path.pop();
    }
}

fn table_at<'a>(v: &'a mut Value, path: &[String]) -> &'a mut toml::Table {
    let v = match v {
        Value::Array(a) => &mut a[0],
        v => v,
    };
    let Value::Table(t) = v else {
        panic!("not a table at {path:?}")
    };
    match path.split_first() {
        None => t,
        Some((first, rest)) => table_at(t.get_mut(first).unwrap(), rest),
    }
}

#[test]
fn every_table_refuses_unknown_fields_by_itself() {
    // The check before reading names the key; serde refuses it too, so no struct of the
    // configuration can take a misspelt key even when read some other way.
    let mut tables = Vec::new();
    struct_tables(&known_keys(), &mut Vec::new(), &mut tables);
    assert!(tables.len() >= 12, "{tables:?}");
    for path in std::iter::once(Vec::new()).chain(tables) {
        let mut tree = Value::Table(known_keys());
        table_at(&mut tree, &path).insert("zz_not_a_key".into(), Value::Integer(1));
        let e = match tree.try_into::<Config>() {
            Ok(_) => panic!(
                "[{}] takes unknown keys: give its struct #[serde(deny_unknown_fields)]",
                path.join(".")
            ),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("unknown field `zz_not_a_key`"), "{path:?}: {e}");
    }
}

#[test]
fn wrong_types_are_refused_with_their_line() {
    let e = load_err("[gateway]\nallow_plaintext = \"yes\"\n");
    assert!(e.contains("ferry.toml: "), "{e}");
    assert!(e.contains("line 2"), "{e}");
    assert!(e.contains("allow_plaintext"), "{e}");
    assert!(e.contains("expected a boolean"), "{e}");

    let e = load_err("listen = \"0.0.0.0:8080\"\n");
    assert!(
        e.contains("line 1") && e.contains("expected a sequence"),
        "{e}"
    );

    let e = load_err("[logic.limits]\nsends_per_user = 20\n");
    assert!(e.contains("sends_per_user") && e.contains("line 2"), "{e}");
    assert!(
        e.contains("expected a rate: { per_sec = 20.0, burst = 60.0 }"),
        "{e}"
    );

    let e = load_err("[logic.limits]\nsends_per_user = { per_sec = 20.0 }\n");
    assert!(e.contains("missing field `burst`"), "{e}");

    let e = load_err("[gateway]\nmax_frame_bytes = -1\n");
    assert!(e.contains("max_frame_bytes") && e.contains("line 2"), "{e}");

    let e = load_err("[gateway\n");
    assert!(e.contains("ferry.toml: ") && e.contains("line 1"), "{e}");
}

#[test]
fn the_default_config_round_trips() {
    let text = Config::default_toml();
    assert!(text.contains("allow_plaintext = false"), "{text}");
    let cfg = load_text(&text).unwrap();
    assert_eq!(toml::Table::try_from(cfg).unwrap(), defaults());
    assert_eq!(
        Config::from_toml("").map(|c| c.listen).unwrap(),
        ["0.0.0.0:8080"]
    );
}

/// The ```toml blocks of a Markdown text.
fn toml_blocks(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut block: Option<String> = None;
    for line in md.lines() {
        match &mut block {
            None if line.trim_start() == "```toml" => block = Some(String::new()),
            Some(b) if line.trim_start() == "```" => {
                out.push(std::mem::take(b));
                block = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    out
}

fn markdown_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    files.push("README.md".into());
    files.sort();
    files
}

#[test]
fn every_toml_example_in_the_docs_loads() {
    let mut n = 0;
    for file in markdown_files() {
        for (i, block) in toml_blocks(&read(&file)).iter().enumerate() {
            if let Err(e) = load_text(block) {
                panic!("{file}, TOML block {}: {e:#}\n{block}", i + 1);
            }
            n += 1;
        }
    }
    assert!(n >= 3, "found {n} TOML blocks");
}

#[test]
fn the_configs_the_tests_and_scripts_write_load() {
    // bench/cluster.sh writes this (with LOAD_TEST=1 and CHEAP_PASSWORDS=1).
    let script = read("bench/cluster.sh");
    for line in [
        "printf '[gateway]\\nmax_connections_per_ip = 0\\n[logic.limits]\\n'",
        "for k in auth_per_user auth_per_ip register_per_ip login_per_ip sends_per_user; do",
        "off='{ per_sec = 0.0, burst = 0.0 }'",
        "printf '[logic.password]\\nmemory_kib = 8\\niterations = 1\\nparallelism = 1\\n'",
    ] {
        assert!(script.contains(line), "bench/cluster.sh changed: {line}");
    }
    let mut text = String::from(
        "[logic]\nopen_messaging = true\n[cluster]\nnats = \"nats://127.0.0.1:4322\"\n\
         postgres = \"host=127.0.0.1 dbname=ferry_cluster\"\n\
         [gateway]\nmax_connections_per_ip = 0\n[logic.limits]\n",
    );
    for k in [
        "auth_per_user",
        "auth_per_ip",
        "register_per_ip",
        "login_per_ip",
        "sends_per_user",
    ] {
        text += &format!("{k} = {{ per_sec = 0.0, burst = 0.0 }}\n");
    }
    text += "[logic.password]\nmemory_kib = 8\niterations = 1\nparallelism = 1\n";
    let cfg = load_text(&text).unwrap();
    assert_eq!(
        cfg.logic.limits.sends_per_user,
        ferry_logic::Rate::UNLIMITED
    );
}

/// The text between `<!-- NAME:start -->` and `<!-- NAME:end -->` in docs/operations.md.
fn section(doc: &str, name: &str) -> String {
    let (start, end) = (
        format!("<!-- {name}:start -->\n"),
        format!("<!-- {name}:end -->"),
    );
    let from = doc
        .find(&start)
        .unwrap_or_else(|| panic!("{start} in docs/operations.md"))
        + start.len();
    let to = doc[from..]
        .find(&end)
        .unwrap_or_else(|| panic!("{end} in docs/operations.md"))
        + from;
    doc[from..to].to_owned()
}

/// The rows of the Markdown tables in `text` whose first cell is a `code` span: the
/// cells, trimmed, with that first cell's backticks removed.
fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let mut cells: Vec<String> = l
                .trim()
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_owned())
                .collect();
            cells[0] = cells[0].trim_matches('`').to_owned();
            cells
        })
        .collect()
}

/// `{ per_sec, burst }`.
fn is_rate(t: &toml::Table) -> bool {
    t.len() == 2 && t.contains_key("per_sec") && t.contains_key("burst")
}

/// Every documented key: dotted path → its value in the tree of known keys. Tables are
/// entered (their own keys are the rows), except a rate and a map (empty by default),
/// which are one row each; an array of tables is a row and so is each key of its entry.
fn leaves(t: &toml::Table, prefix: &str, out: &mut BTreeMap<String, Value>) {
    for (k, v) in t {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Table(inner) if !inner.is_empty() && !is_rate(inner) => {
                leaves(inner, &path, out)
            }
            Value::Array(a) if matches!(a.first(), Some(Value::Table(_))) => {
                out.insert(path.clone(), v.clone());
                if let Some(Value::Table(entry)) = a.first() {
                    leaves(entry, &path, out);
                }
            }
            _ => {
                out.insert(path, v.clone());
            }
        }
    }
}

/// The default of `path`: from the defaults, else (a key of an array's entry) from the
/// tree of known keys.
fn default_of(path: &str, known: &Value) -> Value {
    default_of_opt(path).unwrap_or_else(|| known.clone())
}

/// How the reference names the type of `v`.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::Integer(_) => "integer",
        Value::Float(_) => "float",
        Value::Boolean(_) => "boolean",
        Value::Datetime(_) => "datetime",
        Value::Array(a) if matches!(a.first(), Some(Value::Table(_))) => "array of tables",
        Value::Array(_) => "array",
        Value::Table(t) if is_rate(t) => "rate",
        Value::Table(_) => "table",
    }
}

/// Equal as values, numbers within 0.1 % (the reference rounds 1/6).
fn same(a: &Value, b: &Value) -> bool {
    let num = |v: &Value| match v {
        Value::Integer(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    };
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Table(x), Value::Table(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => match (num(a), num(b)) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-3 * x.abs().max(y.abs()),
            _ => a == b,
        },
    }
}

#[test]
fn the_reference_documents_every_key_with_its_default() {
    let doc = read("docs/operations.md");
    let reference = section(&doc, "config-keys");
    let mut code = BTreeMap::new();
    leaves(&known_keys(), "", &mut code);
    let mut documented = BTreeSet::new();
    let mut problems = Vec::new();
    for cells in rows(&reference) {
        let key = &cells[0];
        if !documented.insert(key.clone()) {
            problems.push(format!("`{key}` is documented twice"));
        }
        let Some(known) = code.get(key) else {
            problems.push(format!(
                "`{key}` is documented but is no key of the configuration: remove its row \
                 (or fix its name)"
            ));
            continue;
        };
        let [_, ty, default, meaning] = &cells[..] else {
            problems.push(format!(
                "`{key}`: a row has 4 cells: key, type, default, meaning"
            ));
            continue;
        };
        let want = kind(known);
        if !ty.starts_with(want) {
            problems.push(format!("`{key}`: its type is {want}, not {ty:?}"));
        }
        let value = default_of(key, known);
        let written = default
            .strip_prefix('`')
            .and_then(|d| d.strip_suffix('`'))
            .and_then(|d| format!("v = {d}").parse::<toml::Table>().ok())
            .and_then(|mut t| t.remove("v"));
        match written {
            Some(w) if same(&w, &value) => {}
            _ => problems.push(format!(
                "`{key}`: its default is `{value}`, the reference says {default}"
            )),
        }
        if meaning.is_empty() {
            problems.push(format!("`{key}`: say what it does"));
        }
    }
    for (key, known) in &code {
        if !documented.contains(key) {
            let table = key.rsplit_once('.').map_or("the top level", |(t, _)| t);
            problems.push(format!(
                "`{key}` is not documented: add this row to the table of {table} in \
                 docs/operations.md, \"Configuration reference\":\n| `{key}` | {} | `{}` | WHAT IT DOES |",
                kind(known),
                default_of(key, known)
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/operations.md's configuration reference and the code disagree:\n{}",
        problems.join("\n")
    );
}

/// A value for `key` that differs from `v`, as an environment variable would spell it.
fn other_value(v: &Value) -> String {
    match v {
        Value::Boolean(b) => (!b).to_string(),
        Value::Integer(i) => (i + 1).to_string(),
        Value::String(s) => format!("{s}x"),
        Value::Array(_) => "127.0.0.1:1,127.0.0.1:2".into(),
        other => panic!("no environment override for a {}", kind(other)),
    }
}

fn changed_leaves(a: &toml::Table, b: &toml::Table) -> Vec<String> {
    let (mut x, mut y) = (BTreeMap::new(), BTreeMap::new());
    leaves(a, "", &mut x);
    leaves(b, "", &mut y);
    x.keys()
        .filter(|k| x.get(*k) != y.get(*k))
        .cloned()
        .collect()
}

#[test]
fn the_reference_documents_every_environment_variable() {
    let doc = read("docs/operations.md");
    let table = rows(&section(&doc, "env-vars"));
    let documented: BTreeSet<&str> = table.iter().map(|c| c[0].as_str()).collect();
    let listed: BTreeSet<&str> = ENV_VARS.iter().copied().collect();
    let undocumented: Vec<_> = listed.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&listed).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "add a row to docs/operations.md's environment table for {undocumented:?}; \
         {unknown:?} are documented but not in config::ENV_VARS"
    );
    assert_eq!(
        documented.len(),
        table.len(),
        "a variable is documented twice"
    );

    // A row whose second cell is a key says the variable overrides that key (and
    // nothing else); a row without one, that it overrides no key.
    let known = defaults();
    for cells in &table {
        let var = cells[0].as_str();
        let key = cells
            .get(1)
            .and_then(|c| c.strip_prefix('`'))
            .and_then(|c| c.strip_suffix('`'));
        let mut cfg = Config::default();
        let mut set = None;
        if let Some(key) = key {
            let Some(v) = default_of_opt(key) else {
                panic!("{var}: `{key}` is no key of the configuration")
            };
            set = Some(other_value(&v));
        }
        let value = set.clone().unwrap_or_else(|| "1".into());
        cfg.apply_env(|k| (k == var).then(|| value.clone()))
            .unwrap_or_else(|e| panic!("{var}={value}: {e:#}"));
        let changed = changed_leaves(&known, &toml::Table::try_from(cfg).unwrap());
        let want: Vec<String> = key.map(str::to_owned).into_iter().collect();
        assert_eq!(
            changed, want,
            "{var} overrides {changed:?}; docs/operations.md says {want:?}"
        );
    }
}

/// The default of `path`, if the defaults have it.
fn default_of_opt(path: &str) -> Option<Value> {
    let mut at = Value::Table(defaults());
    for seg in path.split('.') {
        at = at.get(seg)?.clone();
    }
    Some(at)
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let path = e.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_environment_variable_the_code_reads_is_listed() {
    let mut files = Vec::new();
    for e in std::fs::read_dir(repo().join("crates")).unwrap() {
        rust_files(&e.unwrap().path(), &mut files);
    }
    assert!(files.len() > 50, "{} source files", files.len());
    // The tests of the configuration name misspelt variables on purpose.
    let skip = [
        Path::new("ferry/src/config/tests.rs"),
        Path::new("ferry/tests/it/config.rs"),
    ];
    let mut found = BTreeMap::<String, PathBuf>::new();
    for f in files {
        if skip.iter().any(|s| f.ends_with(s)) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("FERRY_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            let name = name.trim_end_matches('_');
            if name.len() > "FERRY_".len() {
                found.entry(name.to_owned()).or_insert_with(|| f.clone());
            }
        }
    }
    let missing: Vec<_> = found
        .iter()
        .filter(|(n, _)| !ENV_VARS.contains(&n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "read by the code but not in config::ENV_VARS (add them there and to \
         docs/operations.md's environment table): {missing:?}"
    );
    assert!(found.len() >= 20, "{found:?}");
}

#[test]
fn unknown_environment_variables_are_warned_about() {
    let names = ["FERRY_DATA", "PATH", "FERRY_ALLOW_PLAINTXT", "FERRY_ZEBRA"];
    let warnings = unknown_env_vars(names.map(String::from));
    assert_eq!(
        warnings,
        [
            "unknown environment variable FERRY_ALLOW_PLAINTXT is ignored \
             (did you mean FERRY_ALLOW_PLAINTEXT?)",
            "unknown environment variable FERRY_ZEBRA is ignored",
        ]
    );
    assert!(unknown_env_vars(ENV_VARS.iter().map(|s| s.to_string())).is_empty());
}

/// Whether `path` (dotted, `*` matching within a segment) names a table or key.
fn resolves(tree: &toml::Table, path: &str) -> bool {
    let (first, rest) = match path.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (path, None),
    };
    let glob = |k: &str| match first.split_once('*') {
        Some((pre, post)) => {
            k.len() >= pre.len() + post.len() && k.starts_with(pre) && k.ends_with(post)
        }
        None => k == first,
    };
    tree.iter()
        .filter(|(k, _)| glob(k))
        .any(|(_, v)| match rest {
            None => true,
            Some(rest) => match v {
                Value::Table(t) => resolves(t, rest),
                Value::Array(a) => matches!(a.first(), Some(Value::Table(t)) if resolves(t, rest)),
                _ => false,
            },
        })
}

#[test]
fn the_docs_name_only_keys_that_exist() {
    let known = known_keys();
    assert!(resolves(&known, "logic.media.max_*_bytes"));
    assert!(resolves(&known, "logic.endpoints.gateways.addrs"));
    assert!(!resolves(&known, "gateway.alow_plaintext"));
    let mut bad = Vec::new();
    let mut n = 0;
    for file in markdown_files() {
        let text = read(&file);
        // Every `code` span that starts with a table of the configuration.
        for span in text.split('`').skip(1).step_by(2) {
            let (path, after) = match span.strip_prefix('[') {
                Some(s) => match s.trim_start_matches('[').split_once(']') {
                    Some((table, after)) => (table, after.trim_start_matches(']').trim()),
                    None => continue,
                },
                None => (span, ""),
            };
            let path: String = path
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.*".contains(*c))
                .collect();
            let root = path.split('.').next().unwrap_or("");
            if !["gateway", "logic", "cluster"].contains(&root)
                || (!path.contains('.') && !span.starts_with('['))
            {
                continue;
            }
            // `[logic.admission] max_in_flight`: a key of that table.
            let key: String = after
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let full = if key.is_empty() {
                path.clone()
            } else {
                format!("{path}.{key}")
            };
            n += 1;
            if !resolves(&known, &full) {
                bad.push(format!("{file}: `{span}`"));
            }
        }
    }
    assert!(n >= 30, "{n} mentions");
    assert!(
        bad.is_empty(),
        "the docs name keys that do not exist:\n{}",
        bad.join("\n")
    );
}

#[test]
fn suggestions_are_near_misses_only() {
    assert_eq!(edit_distance("burst", "brust"), 1);
    assert_eq!(edit_distance("allow_plaintext", "alow_plaintext"), 1);
    assert_eq!(edit_distance("", "abc"), 3);
    assert_eq!(
        closest("brust", ["burst", "per_sec"].into_iter()),
        Some("burst")
    );
    assert_eq!(closest("zebra", ["burst", "per_sec"].into_iter()), None);
}

#[test]
fn media_goes_to_a_shared_folder_or_to_s3_in_parts_s3_takes() {
    let both = "[cluster]\nmedia_dir = \"/srv/m\"\nmedia_s3_bucket = \"b\"\n";
    let e = load_text(both).unwrap_err().to_string();
    assert!(e.contains("both set"), "{e}");
    let small = "[cluster]\nmedia_s3_bucket = \"b\"\nmedia_s3_part_size = 1_048_576\n";
    let e = load_text(small).unwrap_err().to_string();
    assert!(e.contains("media_s3_part_size"), "{e}");
    let cfg = load_text("[cluster]\nmedia_s3_bucket = \"b\"\nmedia_s3_prefix = \"p/\"\n").unwrap();
    let s3 = cfg.cluster.media_s3().expect("S3 settings");
    assert_eq!((s3.bucket.as_str(), s3.prefix.as_str()), ("b", "p/"));
    assert_eq!(s3.part_size, 8 * 1024 * 1024);
    assert!(Config::default().cluster.media_s3().is_none());
    // The environment names the bucket too, and is checked the same way.
    let cfg = Config::load_with(None, |k| {
        (k == "FERRY_MEDIA_S3_BUCKET").then(|| "from-env".to_owned())
    })
    .unwrap();
    assert_eq!(cfg.cluster.media_s3_bucket, "from-env");
    let e = Config::load_with(None, |k| match k {
        "FERRY_MEDIA_S3_BUCKET" => Some("b".into()),
        "FERRY_MEDIA_DIR" => Some("/srv/m".into()),
        _ => None,
    })
    .unwrap_err();
    assert!(e.to_string().contains("both set"), "{e}");
}

#[test]
fn push_providers_and_settings_load_and_misspellings_are_refused() {
    let cfg = load_text(
        "[logic.push]\nquiet_ms = 5000\nlarge_group_members = 50\n\
         [push]\ntimeout_ms = 3000\n\
         [push.apns]\nkey_file = \"/k.p8\"\nkey_id = \"ABC123DEFG\"\nteam_id = \"TEAM\"\n\
         [push.webpush]\nvapid_private_key_file = \"/v.pem\"\nsubject = \"mailto:a@b.c\"\n",
    )
    .unwrap();
    assert_eq!(cfg.logic.push.quiet_ms, 5000);
    assert_eq!(cfg.logic.push.large_group_members, 50);
    assert_eq!(cfg.push.timeout_ms, 3000);
    let apns = cfg.push.apns.as_ref().unwrap();
    assert_eq!(
        apns.url, "https://api.push.apple.com",
        "defaults fill the rest"
    );
    assert_eq!(apns.concurrency, 64);
    assert!(cfg.push.fcm.is_none(), "no table, no provider");
    assert!(cfg.push.webpush.is_some());
    let e = load_err("[push.apns]\nkey_fle = \"/k.p8\"\n");
    assert!(e.contains("key_fle") && e.contains("key_file"), "{e}");
    let e = load_err("[logic.push]\nquiet = 1\n");
    assert!(e.contains("quiet") && e.contains("logic.push"), "{e}");
    // The defaults push through nothing.
    assert!(crate::push_senders(&Config::default()).unwrap().is_empty());
}
