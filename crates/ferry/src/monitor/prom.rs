//! A reader for the Prometheus text format (version 0.0.4), enough to turn our own
//! `/metrics` page back into numbers for the dashboard and `ferry admin status`.
//!
//! It accepts what Prometheus accepts: `# HELP` / `# TYPE` lines, other comments, blank
//! lines and samples `name{label="value",…} value [timestamp]`, with `+Inf`, `-Inf` and
//! `NaN` values and `\\`, `\"`, `\n` escapes in label values. Anything else is an error.

/// A sample's labels, in page order.
pub type Labels = Vec<(String, String)>;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A line that is not valid Prometheus text.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for ParseError {}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    valid_name(name) && !name.contains(':')
}

/// Parses a Prometheus sample value.
pub fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Parses a whole page.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let err = |reason: String| ParseError {
            line: i + 1,
            reason,
        };
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            check_comment(comment).map_err(err)?;
            continue;
        }
        out.push(parse_sample(line).map_err(err)?);
    }
    Ok(out)
}

fn check_comment(comment: &str) -> Result<(), String> {
    let mut parts = comment.split_whitespace();
    let keyword = parts.next();
    if !matches!(keyword, Some("HELP" | "TYPE")) {
        return Ok(());
    }
    if !parts.next().is_some_and(valid_name) {
        return Err(format!(
            "{} without a valid metric name",
            keyword.unwrap_or("")
        ));
    }
    if keyword == Some("TYPE")
        && !matches!(
            parts.next(),
            Some("counter" | "gauge" | "histogram" | "summary" | "untyped")
        )
    {
        return Err("unknown TYPE".into());
    }
    Ok(())
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("a sample needs a value")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(body)?;
        labels = parsed;
        rest = after;
    }
    if !rest.starts_with([' ', '\t']) {
        return Err("expected a space before the value".into());
    }
    let mut parts = rest.split_whitespace();
    let value = parts.next().ok_or("a sample needs a value")?;
    let value = parse_value(value).ok_or_else(|| format!("bad value {value:?}"))?;
    if let Some(ts) = parts.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if parts.next().is_some() {
        return Err("trailing text after the sample".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `key="value",…}` (what follows a `{`); returns the labels and what follows
/// the `}`.
fn parse_labels(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s.find('=').ok_or("label without =")?;
        let key = s[..eq].trim();
        if !valid_label_name(key) {
            return Err(format!("bad label name {key:?}"));
        }
        let quoted = s[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value must be quoted")?;
        let mut value = String::new();
        let mut end = None;
        let mut it = quoted.char_indices();
        while let Some((j, c)) = it.next() {
            match c {
                '\\' => match it.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    _ => return Err("bad escape in a label value".into()),
                },
                '"' => {
                    end = Some(j);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.ok_or("unterminated label value")?;
        labels.push((key.to_owned(), value));
        s = &quoted[end + 1..];
        if !s.starts_with([',', '}', ' ']) {
            return Err("expected , or } after a label".into());
        }
    }
}

/// Escapes a label value for the text format.
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_prometheus_writes() {
        let text = "# HELP a_total Things.\n# TYPE a_total counter\na_total 3\n\
                    b{x=\"1\",y=\"q\\\"uote\"} 2.5 1700000000000\n\
                    h_bucket{le=\"+Inf\"} 7\nc{} NaN\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].name, "a_total");
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].label("x"), Some("1"));
        assert_eq!(s[1].label("y"), Some("q\"uote"));
        assert_eq!(s[2].label("le"), Some("+Inf"));
        assert!(s[3].value.is_nan());
        let round = format!("d{{v=\"{}\"}} 1", escape("a\\b\"c\nd"));
        assert_eq!(parse(&round).unwrap()[0].label("v"), Some("a\\b\"c\nd"));
    }

    #[test]
    fn refuses_what_prometheus_refuses() {
        for bad in [
            "1abc 1",
            "a{x=1} 1",
            "a{x=\"1\" 1",
            "a{x=\"1\"}1",
            "a one",
            "a 1 2 3",
            "# TYPE a blob",
            "a{x=\"\\q\"} 1",
            "a",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
