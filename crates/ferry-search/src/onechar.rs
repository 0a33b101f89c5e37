//! A one-character CJK query: the documents with a term that is that character alone (a
//! run of one, or the tail unigram of a longer run) or a bigram starting with it. Every
//! character of a run is the first of a bigram but the last, which has its tail unigram
//! (see `tokenizer::FerryTokenizer`), so this finds every occurrence while walking only
//! the terms that start with the character. A hand-written automaton over the term
//! dictionary's bytes (a regex would build a Unicode DFA per query).

use tantivy::query::{AutomatonWeight, EnableScoring, Query, Weight};
use tantivy::schema::Field;
use tantivy_fst::Automaton;

/// Matches the terms `c` and `c?` (`?` any one character).
#[derive(Clone, Debug)]
pub(crate) struct OneCharQuery {
    field: Field,
    needle: char,
}

impl OneCharQuery {
    pub fn new(field: Field, needle: char) -> OneCharQuery {
        OneCharQuery { field, needle }
    }
}

impl Query for OneCharQuery {
    fn weight(&self, _: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(AutomatonWeight::new(
            self.field,
            OneChar::new(self.needle),
        )))
    }
}

/// The automaton: reads at most two UTF-8 characters, the first of which must be the
/// needle.
pub(crate) struct OneChar {
    needle: [u8; 4],
    len: u8,
}

impl OneChar {
    pub fn new(c: char) -> OneChar {
        let mut needle = [0u8; 4];
        let len = c.encode_utf8(&mut needle).len() as u8;
        OneChar { needle, len }
    }
}

/// Where the automaton is. `None` (dead) once nothing can match any more.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct State {
    /// Characters completed.
    chars: u8,
    /// Bytes of the current character read, and how many it has.
    at: u8,
    of: u8,
}

fn utf8_len(lead: u8) -> Option<u8> {
    match lead {
        0x00..=0x7F => Some(1),
        0xC0..=0xDF => Some(2),
        0xE0..=0xEF => Some(3),
        0xF0..=0xF7 => Some(4),
        _ => None,
    }
}

impl Automaton for OneChar {
    type State = Option<State>;

    fn start(&self) -> Option<State> {
        Some(State::default())
    }

    fn is_match(&self, state: &Option<State>) -> bool {
        state.is_some_and(|s| s.at == s.of && s.chars >= 1)
    }

    fn can_match(&self, state: &Option<State>) -> bool {
        state.is_some()
    }

    fn accept(&self, state: &Option<State>, byte: u8) -> Option<State> {
        let mut s = (*state)?;
        if s.at == s.of {
            // A new character.
            if s.chars == 2 {
                return None;
            }
            s.of = utf8_len(byte)?;
            s.at = 0;
        }
        if s.chars == 0 && (s.at >= self.len || self.needle[s.at as usize] != byte) {
            // The first character is not the needle.
            return None;
        }
        s.at += 1;
        if s.at == s.of {
            if s.chars == 0 && s.of != self.len {
                return None;
            }
            s.chars += 1;
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(a: &OneChar, term: &str) -> bool {
        let mut s = a.start();
        for &b in term.as_bytes() {
            s = a.accept(&s, b);
            if !a.can_match(&s) {
                return false;
            }
        }
        a.is_match(&s)
    }

    #[test]
    fn matches_the_char_alone_or_first_in_a_bigram() {
        let a = OneChar::new('饭');
        for yes in ["饭", "饭店", "饭a", "饭饭"] {
            assert!(matches(&a, yes), "{yes}");
        }
        for no in [
            "",
            "吃",
            "吃饭",
            "a饭",
            "吃喝",
            "饭店里",
            "a",
            "ab",
            "饮",
            "abc饭",
        ] {
            assert!(!matches(&a, no), "{no}");
        }
        // A four-byte character (CJK extension B).
        let a = OneChar::new('𠀀');
        assert!(matches(&a, "𠀀"));
        assert!(matches(&a, "𠀀我"));
        assert!(!matches(&a, "我𠀀"));
    }
}
