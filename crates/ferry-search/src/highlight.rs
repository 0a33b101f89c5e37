//! Highlights: the stored text run through the same analyzer as the query, the tokens
//! that match marked, and a window cut around the first match of a long text.

use std::collections::HashSet;
use std::ops::Range;

use crate::tokenizer::{analyzer, is_cjk_token, tokens};
use crate::Snippet;

/// What the query looks for, as the analyzer writes it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Needles {
    terms: HashSet<String>,
    /// One-character CJK queries: found inside bigrams.
    chars: HashSet<char>,
}

impl Needles {
    pub fn add_term(&mut self, t: &str) {
        self.terms.insert(t.to_string());
    }

    pub fn add_char(&mut self, c: char) {
        self.chars.insert(c);
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty() && self.chars.is_empty()
    }
}

/// Texts up to this many characters are returned whole.
const WHOLE_CHARS: usize = 160;
/// Characters kept before the first match when a text is cut.
const BEFORE_CHARS: usize = 30;

/// The byte ranges of `text` that match, sorted and merged.
pub(crate) fn matches(text: &str, needles: &Needles) -> Vec<Range<usize>> {
    let mut ranges: Vec<Range<usize>> = Vec::new();
    for t in tokens(&mut analyzer(), text) {
        let span = t.offset_from..t.offset_to;
        if needles.terms.contains(&t.text) {
            ranges.push(span);
            continue;
        }
        if needles.chars.is_empty() || !is_cjk_token(&t.text) {
            continue;
        }
        let src = &text[span.clone()];
        let (norm, orig): (Vec<char>, Vec<(usize, char)>) =
            (t.text.chars().collect(), src.char_indices().collect());
        if norm.len() == orig.len() {
            // One source character per token character: mark just the one that matches.
            for (i, c) in norm.iter().enumerate() {
                if needles.chars.contains(c) {
                    let from = span.start + orig[i].0;
                    ranges.push(from..from + orig[i].1.len_utf8());
                }
            }
        } else if norm.iter().any(|c| needles.chars.contains(c)) {
            ranges.push(span);
        }
    }
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start < last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// The snippet of `text`: all of it when short, else a window around the first match
/// with "…" where it was cut.
pub(crate) fn snippet(text: &str, needles: &Needles) -> Snippet {
    let ranges = matches(text, needles);
    if text.chars().count() <= WHOLE_CHARS {
        return Snippet {
            text: text.to_string(),
            ranges,
        };
    }
    let first = ranges.first().map_or(0, |r| r.start);
    // Start BEFORE_CHARS characters before the first match, end WHOLE_CHARS later.
    let start = text[..first]
        .char_indices()
        .rev()
        .nth(BEFORE_CHARS - 1)
        .map_or(0, |(i, _)| i);
    let end = text[start..]
        .char_indices()
        .nth(WHOLE_CHARS)
        .map_or(text.len(), |(i, _)| start + i);
    let mut out = String::with_capacity(end - start + 6);
    let lead = if start > 0 { "…" } else { "" };
    out.push_str(lead);
    out.push_str(&text[start..end]);
    if end < text.len() {
        out.push('…');
    }
    let shift = lead.len();
    let ranges = ranges
        .into_iter()
        .filter(|r| r.start >= start && r.end <= end)
        .map(|r| r.start - start + shift..r.end - start + shift)
        .collect();
    Snippet { text: out, ranges }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marked(s: &Snippet) -> Vec<&str> {
        s.ranges.iter().map(|r| &s.text[r.clone()]).collect()
    }

    #[test]
    fn words_and_bigrams_are_marked() {
        let mut n = Needles::default();
        n.add_term("cafe");
        n.add_term("吃饭");
        let s = snippet("去Café吃饭, then another CAFE", &n);
        assert_eq!(marked(&s), ["Café", "吃饭", "CAFE"]);
    }

    #[test]
    fn a_phrase_marks_one_range_and_single_chars_are_found_in_bigrams() {
        let mut n = Needles::default();
        n.add_term("星巴");
        n.add_term("巴克");
        let s = snippet("明天在星巴克见", &n);
        assert_eq!(marked(&s), ["星巴克"]);
        let mut n = Needles::default();
        n.add_char('饭');
        let s = snippet("吃饭了吗？饭", &n);
        assert_eq!(marked(&s), ["饭", "饭"]);
    }

    #[test]
    fn long_texts_are_cut_around_the_first_match() {
        let mut n = Needles::default();
        n.add_term("needle");
        let text = format!("{} needle {}", "hay ".repeat(100), "straw ".repeat(100));
        let s = snippet(&text, &n);
        assert!(s.text.starts_with('…') && s.text.ends_with('…'));
        assert!(s.text.chars().count() <= WHOLE_CHARS + 2);
        assert_eq!(marked(&s), ["needle"]);
        // Multi-byte text: the cut stays on character boundaries.
        let mut n = Needles::default();
        n.add_term("目标");
        let text = format!("{}目标{}", "汉字".repeat(100), "文本".repeat(100));
        let s = snippet(&text, &n);
        assert_eq!(marked(&s), ["目标"]);
    }
}
