//! The "ferry" tokenizer: words for the scripts that put spaces between words, overlapping
//! bigrams for Chinese, Japanese and Korean (see the crate doc for why).
//!
//! The base tokenizer ([`FerryTokenizer`]) does the splitting, lower-casing, the removal
//! of combining marks (a decomposed "é" is "e" + U+0301), Greek accent folding and the
//! half-width katakana → full-width mapping; [`analyzer`] chains tantivy's
//! `AsciiFoldingFilter` (é → e, ß → ss, full-width Ａ → a …) and drops over-long tokens.
//! Indexing and queries go through the same analyzer, so both sides agree.

use tantivy::tokenizer::{
    AsciiFoldingFilter, RemoveLongFilter, TextAnalyzer, Token, TokenStream, Tokenizer,
};

/// The name the analyzer is registered under in the index's tokenizer manager.
pub const TOKENIZER_NAME: &str = "ferry";

/// Tokens longer than this (in bytes, after normalisation) are dropped: base64 blobs and
/// the like, which nobody searches for and which would bloat the term dictionary.
pub const MAX_TOKEN_BYTES: usize = 64;

/// The analyzer used for the text field and for query text.
pub fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(FerryTokenizer::default())
        .filter(AsciiFoldingFilter)
        .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES + 1))
        .build()
}

/// Whether `c` belongs to a script written without spaces between words that this
/// tokenizer cuts into bigrams: Han (with the extension blocks and the compatibility
/// ideographs), Hiragana, Katakana (with the half-width forms) and Hangul.
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x11FF      // Hangul Jamo
        | 0x3005..=0x3007    // 々 〆 〇
        | 0x3041..=0x309F    // Hiragana (with its voicing marks)
        | 0x30A0..=0x30FF    // Katakana
        | 0x3130..=0x318F    // Hangul compatibility Jamo
        | 0x31F0..=0x31FF    // Katakana phonetic extensions
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xA960..=0xA97F    // Hangul Jamo extended A
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0xD7B0..=0xD7FF    // Hangul Jamo extended B
        | 0xF900..=0xFAFF    // CJK compatibility ideographs
        | 0xFF66..=0xFF9F    // half-width katakana
        | 0x20000..=0x2FA1F  // CJK extensions B–F, compatibility supplement
        | 0x30000..=0x323AF // CJK extensions G, H
    )
}

/// Combining marks (general category M in the blocks that matter for alphabetic scripts):
/// kept inside a word, dropped from its text.
fn is_combining_mark(c: char) -> bool {
    matches!(c as u32,
        0x0300..=0x036F | 0x0483..=0x0489 | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF
        | 0x20D0..=0x20FF | 0xFE20..=0xFE2F
    )
}

/// Full-width katakana for U+FF66..=U+FF9D, in order.
const HALFWIDTH_KANA: &str =
    "ヲァィゥェォャュョッーアイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワン";

/// Maps half-width katakana to full width; other characters are returned as they are.
fn widen(c: char) -> char {
    let u = c as u32;
    if (0xFF66..=0xFF9D).contains(&u) {
        HALFWIDTH_KANA
            .chars()
            .nth((u - 0xFF66) as usize)
            .unwrap_or(c)
    } else {
        c
    }
}

/// A voicing mark: the combining (U+3099, U+309A) or half-width (U+FF9E, U+FF9F) dakuten
/// and handakuten. `Some(false)` for dakuten, `Some(true)` for handakuten.
fn voicing_mark(c: char) -> Option<bool> {
    match c {
        '\u{3099}' | '\u{FF9E}' => Some(false),
        '\u{309A}' | '\u{FF9F}' => Some(true),
        _ => None,
    }
}

/// The kana `base` with a dakuten (`semi` false) or handakuten (`semi` true), if it has one.
fn voice(base: char, semi: bool) -> Option<char> {
    let u = base as u32;
    // Work on katakana; hiragana is the same table 0x60 lower.
    let (kata, hira) = if (0x3041..=0x3096).contains(&u) {
        (u + 0x60, true)
    } else {
        (u, false)
    };
    let voiced = match kata {
        // カ..ト step 2 (カガキギ…), except ッツヅ…: listed explicitly.
        0x30AB | 0x30AD | 0x30AF | 0x30B1 | 0x30B3 | 0x30B5 | 0x30B7 | 0x30B9 | 0x30BB | 0x30BD
        | 0x30BF | 0x30C1 | 0x30C4 | 0x30C6 | 0x30C8
            if !semi =>
        {
            kata + 1
        }
        // ハ ヒ フ ヘ ホ: バ (+1), パ (+2).
        0x30CF | 0x30D2 | 0x30D5 | 0x30D8 | 0x30DB => kata + if semi { 2 } else { 1 },
        0x30A6 if !semi => 0x30F4, // ウ → ヴ
        _ => return None,
    };
    let out = if hira { voiced - 0x60 } else { voiced };
    char::from_u32(out)
}

/// One character of a CJK run after normalisation, with its span in the source text.
#[derive(Clone, Copy)]
struct RunChar {
    c: char,
    from: usize,
    to: usize,
}

/// The base tokenizer. See the module doc.
///
/// A CJK run of two or more characters gives its bigrams at consecutive positions, then
/// its last character alone at the same position as the last bigram ("一二三" → 一二@0,
/// 二三@1, 三@1). That extra unigram lets a one-character query find the character at the
/// end of a run by looking up "c" and the bigrams "c?" (a prefix walk of the term
/// dictionary), instead of also walking every bigram for "?c". Sharing a position, it
/// never breaks a phrase of bigrams; query parsing drops it (it drops any token at the
/// position of the one before).
#[derive(Clone, Default)]
pub struct FerryTokenizer {
    token: Token,
    run: Vec<RunChar>,
}

impl Tokenizer for FerryTokenizer {
    type TokenStream<'a> = FerryTokenStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> FerryTokenStream<'a> {
        self.token.reset();
        self.run.clear();
        FerryTokenStream {
            text,
            pos: 0,
            token: &mut self.token,
            run: &mut self.run,
            run_at: 0,
        }
    }
}

/// The stream of [`FerryTokenizer`].
pub struct FerryTokenStream<'a> {
    text: &'a str,
    /// Byte offset of the next character to read.
    pos: usize,
    token: &'a mut Token,
    /// The CJK run being emitted as bigrams (empty when none).
    run: &'a mut Vec<RunChar>,
    /// Index in `run` of the first character of the next bigram.
    run_at: usize,
}

impl FerryTokenStream<'_> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn emit(&mut self, from: usize, to: usize) {
        self.token.offset_from = from;
        self.token.offset_to = to;
        self.token.position = self.token.position.wrapping_add(1);
    }

    /// Emits the next token of the current run, if any is left.
    fn next_of_run(&mut self) -> bool {
        let n = self.run.len();
        if n == 0 {
            return false;
        }
        if n == 1 && self.run_at == 0 {
            let rc = self.run[0];
            self.token.text.clear();
            self.token.text.push(rc.c);
            self.run_at = 1;
            self.emit(rc.from, rc.to);
            return true;
        }
        if self.run_at + 1 < n {
            let (a, b) = (self.run[self.run_at], self.run[self.run_at + 1]);
            self.token.text.clear();
            self.token.text.push(a.c);
            self.token.text.push(b.c);
            self.run_at += 1;
            self.emit(a.from, b.to);
            return true;
        }
        if n >= 2 && self.run_at + 1 == n {
            // The run's last character alone, at the last bigram's position (see
            // `FerryTokenizer`).
            let z = self.run[n - 1];
            self.token.text.clear();
            self.token.text.push(z.c);
            self.token.offset_from = z.from;
            self.token.offset_to = z.to;
            self.run_at = n;
            return true;
        }
        self.run.clear();
        self.run_at = 0;
        false
    }

    /// Reads a run of CJK characters starting at `self.pos`.
    fn read_run(&mut self) {
        self.run.clear();
        self.run_at = 0;
        while let Some(c) = self.peek() {
            if !is_cjk(c) && voicing_mark(c).is_none() {
                break;
            }
            let from = self.pos;
            self.pos += c.len_utf8();
            if let Some(semi) = voicing_mark(c) {
                // Joins the kana before it; a stray mark is dropped.
                if let Some(last) = self.run.last_mut() {
                    if let Some(v) = voice(last.c, semi) {
                        last.c = v;
                        last.to = self.pos;
                    }
                }
                continue;
            }
            self.run.push(RunChar {
                c: widen(c),
                from,
                to: self.pos,
            });
        }
    }

    /// Reads a word (letters and digits of non-CJK scripts, with their combining marks)
    /// starting at `self.pos` into the token.
    fn read_word(&mut self) {
        let from = self.pos;
        self.token.text.clear();
        while let Some(c) = self.peek() {
            if is_combining_mark(c) {
                self.pos += c.len_utf8();
                continue;
            }
            if !c.is_alphanumeric() || is_cjk(c) {
                break;
            }
            self.pos += c.len_utf8();
            for l in c.to_lowercase() {
                self.token.text.push(fold_greek(l));
            }
        }
        let to = self.pos;
        self.emit(from, to);
    }
}

/// Greek lower-case letters with tonos or dialytika → the bare letter; final sigma → σ.
fn fold_greek(c: char) -> char {
    match c {
        'ά' => 'α',
        'έ' => 'ε',
        'ή' => 'η',
        'ί' | 'ϊ' | 'ΐ' => 'ι',
        'ό' => 'ο',
        'ύ' | 'ϋ' | 'ΰ' => 'υ',
        'ώ' => 'ω',
        'ς' => 'σ',
        _ => c,
    }
}

impl TokenStream for FerryTokenStream<'_> {
    fn advance(&mut self) -> bool {
        loop {
            if self.next_of_run() {
                return true;
            }
            let Some(c) = self.peek() else {
                return false;
            };
            if is_cjk(c) {
                self.read_run();
                continue;
            }
            if c.is_alphanumeric() {
                self.read_word();
                return true;
            }
            self.pos += c.len_utf8();
        }
    }

    fn token(&self) -> &Token {
        self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        self.token
    }
}

/// Runs the analyzer over `text` and returns its tokens.
pub fn tokens(analyzer: &mut TextAnalyzer, text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut stream = analyzer.token_stream(text);
    while stream.advance() {
        out.push(stream.token().clone());
    }
    out
}

/// Whether a token (as produced by the analyzer) is a CJK unigram or bigram.
pub fn is_cjk_token(text: &str) -> bool {
    text.chars().next().is_some_and(is_cjk)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(text: &str) -> Vec<(String, usize, usize, usize)> {
        tokens(&mut analyzer(), text)
            .into_iter()
            .map(|t| (t.text, t.position, t.offset_from, t.offset_to))
            .collect()
    }

    fn texts(text: &str) -> Vec<String> {
        toks(text).into_iter().map(|t| t.0).collect()
    }

    #[test]
    fn latin_words_split_and_lowercased() {
        assert_eq!(
            texts("Hello, World! it's 2024-05-01"),
            ["hello", "world", "it", "s", "2024", "05", "01"]
        );
        let t = toks("Hello, World");
        assert_eq!(t[0], ("hello".into(), 0, 0, 5));
        assert_eq!(t[1], ("world".into(), 1, 7, 12));
    }

    #[test]
    fn diacritics_and_scripts_fold() {
        assert_eq!(texts("Café CRÈME naïve"), ["cafe", "creme", "naive"]);
        // Decomposed é (e + U+0301) is one word, folded the same.
        assert_eq!(texts("Cafe\u{301} ok"), ["cafe", "ok"]);
        assert_eq!(texts("Straße"), ["strasse"]);
        assert_eq!(texts("ＡＢＣ１２３"), ["abc123"]);
        assert_eq!(texts("Привет МИР"), ["привет", "мир"]);
        assert_eq!(texts("Καλημέρα ΟΔΌΣ"), ["καλημερα", "οδοσ"]);
    }

    #[test]
    fn cjk_runs_become_overlapping_bigrams() {
        assert_eq!(texts("一二三"), ["一二", "二三", "三"]);
        assert_eq!(texts("饭"), ["饭"]);
        assert_eq!(texts("吃饭"), ["吃饭", "饭"]);
        let t = toks("一二三");
        assert_eq!(t[0], ("一二".into(), 0, 0, 6));
        assert_eq!(t[1], ("二三".into(), 1, 3, 9));
        // The tail unigram shares the last bigram's position.
        assert_eq!(t[2], ("三".into(), 1, 6, 9));
        // Punctuation ends a run.
        assert_eq!(texts("你好，世界。"), ["你好", "好", "世界", "界"]);
        // Japanese: kana and kanji alike.
        assert_eq!(texts("東京タワー"), ["東京", "京タ", "タワ", "ワー", "ー"]);
        // Hangul.
        assert_eq!(texts("안녕하세요"), ["안녕", "녕하", "하세", "세요", "요"]);
        // A compatibility ideograph is CJK too (kept as it is: no NFKC here).
        assert_eq!(texts("\u{F900}"), ["\u{F900}"]);
    }

    #[test]
    fn halfwidth_katakana_is_widened_and_voiced() {
        assert_eq!(texts("ｶﾀｶﾅ"), texts("カタカナ"));
        assert_eq!(texts("ｶﾞｲﾄﾞ"), texts("ガイド"));
        assert_eq!(texts("ﾊﾟﾝ"), texts("パン"));
        // Offsets still point into the source: ｶﾞ is two source characters.
        let t = toks("ｶﾞｲ");
        assert_eq!(t[0].0, "ガイ");
        assert_eq!((t[0].2, t[0].3), (0, 9));
        // Combining dakuten (NFD) composes too.
        assert_eq!(texts("か\u{3099}いこく"), texts("がいこく"));
    }

    #[test]
    fn mixed_scripts_positions_are_consecutive() {
        let t = toks("去Café吃饭");
        let got: Vec<_> = t.iter().map(|t| (t.0.as_str(), t.1)).collect();
        assert_eq!(got, [("去", 0), ("cafe", 1), ("吃饭", 2), ("饭", 2)]);
        let s = "去Café吃饭";
        assert_eq!(&s[t[1].2..t[1].3], "Café");
        assert_eq!(&s[t[2].2..t[2].3], "吃饭");

        let t = toks("明天3点在星巴克见 ok?");
        let got: Vec<_> = t.iter().map(|t| (t.0.as_str(), t.1)).collect();
        assert_eq!(
            got,
            [
                ("明天", 0),
                ("天", 0),
                ("3", 1),
                ("点在", 2),
                ("在星", 3),
                ("星巴", 4),
                ("巴克", 5),
                ("克见", 6),
                ("见", 6),
                ("ok", 7)
            ]
        );
    }

    #[test]
    fn long_tokens_are_dropped_and_junk_gives_nothing() {
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(texts(&format!("x {long} y")), ["x", "y"]);
        assert!(texts("!!! ... ——— 🎉🎉").is_empty());
        assert!(texts("").is_empty());
        // A stray voicing mark alone is dropped, not a token.
        assert!(texts("\u{FF9E}").is_empty());
    }

    #[test]
    fn halfwidth_table_is_complete() {
        assert_eq!(HALFWIDTH_KANA.chars().count(), 0xFF9D - 0xFF66 + 1);
        assert_eq!(widen('ｦ'), 'ヲ');
        assert_eq!(widen('ﾝ'), 'ン');
        assert_eq!(widen('ﾜ'), 'ワ');
    }
}
