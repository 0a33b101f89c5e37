//! From a [`crate::Query`] to a tantivy query: the text's clauses, the scope and the
//! filters, and the page cursor.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use tantivy::postings::TermInfo;
use tantivy::query::doc_predicate_query::{
    ConstOrVariableSegmentPredicate, DocPredicate, DocPredicateQuery, SegmentDocPredicate,
};
use tantivy::query::{
    AllScorer, BitSetDocSet, BooleanQuery, ConstScoreQuery, EmptyQuery, Occur, PhraseQuery, Query,
    TermQuery,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{BitSet, DocId, DocSet, SegmentReader, Term, TERMINATED};

use crate::collect::parse_cursor;
use crate::columns::{get, Cols, ColumnCache};
use crate::highlight::Needles;
use crate::index::Fields;
use crate::onechar::OneCharQuery;
use crate::tokenizer::{analyzer, is_cjk_token, tokens};
use crate::{SearchError, MAX_QUERY_BYTES};

/// A query ready to run.
pub(crate) struct BuiltQuery {
    pub query: Box<dyn Query>,
    /// Only keys below this one (the page cursor).
    pub after: Option<(u64, u64)>,
    pub needles: Needles,
}

pub(crate) enum Built {
    /// Nothing can match (a group or peer outside the scope, text with nothing to search).
    Nothing,
    Query(BuiltQuery),
}

/// Checks and translates `q`.
pub(crate) fn build(
    q: &crate::Query,
    f: &Fields,
    cache: &Arc<ColumnCache>,
) -> Result<Built, SearchError> {
    if q.text.len() > MAX_QUERY_BYTES {
        return Err(SearchError::BadQuery(format!(
            "query text is {} bytes, at most {MAX_QUERY_BYTES} allowed",
            q.text.len()
        )));
    }
    if q.limit == 0 {
        return Err(SearchError::BadQuery("limit must be at least 1".into()));
    }
    let after = match &q.page {
        Some(page) => Some(parse_cursor(page, q.order)?),
        None => None,
    };

    let mut must: Vec<Box<dyn Query>> = Vec::new();
    let mut needles = Needles::default();
    if !q.text.trim().is_empty() {
        text_clauses(&q.text, f, &mut must, &mut needles)?;
        if must.is_empty() {
            return Ok(Built::Nothing);
        }
    }

    // The scope: the spans per group (a group listed twice gets both spans).
    let mut spans: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
    for s in &q.scope.groups {
        let to = s.to_gseq.unwrap_or(u64::MAX);
        if s.from_gseq <= to {
            spans.entry(s.group_id).or_default().push((s.from_gseq, to));
        }
    }
    // The documents the scope can match at all, from the inverted index: the user's 1:1
    // messages and their groups' (narrowed by `peer` or `group`).
    let (parties, groups) = match (q.group, q.peer) {
        (Some(_), Some(_)) => return Ok(Built::Nothing),
        (Some(g), None) => {
            if !spans.contains_key(&g) {
                return Ok(Built::Nothing);
            }
            (vec![], vec![g])
        }
        (None, Some(p)) => (vec![p], vec![]),
        (None, None) => (vec![q.scope.user], spans.keys().copied().collect()),
    };
    if let Some(s) = q.sender {
        must.push(Box::new(TermQuery::new(
            Term::from_field_u64(f.sender, s),
            IndexRecordOption::Basic,
        )));
    }
    let (after_ms, before_ms) = (q.after_ms.unwrap_or(i64::MIN), q.before_ms);
    if before_ms.is_some_and(|b| b <= after_ms) {
        return Ok(Built::Nothing);
    }
    let kinds = q.kinds.iter().fold(0u64, |m, k| m | (1 << k.code()));
    let filter = ScopeFilter {
        fields: *f,
        parties,
        groups,
        cache: cache.clone(),
        params: Arc::new(Params {
            user: q.scope.user,
            spans,
            peer: q.peer,
            group: q.group,
            after_ms,
            before_ms: before_ms.unwrap_or(i64::MAX),
            // Empty: every kind.
            kinds: if kinds == 0 { u64::MAX } else { kinds },
        }),
    };
    must.push(Box::new(ConstScoreQuery::new(
        Box::new(DocPredicateQuery::from(filter)),
        0.0,
    )));
    let query: Box<dyn Query> = if must.len() == 1 {
        must.pop().unwrap_or_else(|| Box::new(EmptyQuery))
    } else {
        Box::new(BooleanQuery::new(
            must.into_iter().map(|q| (Occur::Must, q)).collect(),
        ))
    };
    Ok(Built::Query(BuiltQuery {
        query,
        after,
        needles,
    }))
}

/// The clauses of the query text: every word a term, every CJK run a phrase of its
/// bigrams, every quoted part a phrase; all required.
fn text_clauses(
    text: &str,
    f: &Fields,
    must: &mut Vec<Box<dyn Query>>,
    needles: &mut Needles,
) -> Result<(), SearchError> {
    let mut an = analyzer();
    // Even pieces are outside quotes, odd ones inside (an unclosed quote runs to the end).
    for (i, piece) in text.split('"').enumerate() {
        let mut toks = tokens(&mut an, piece);
        // A run's tail unigram shares the last bigram's position: not part of the query.
        toks.dedup_by(|t, prev| t.position == prev.position);
        if toks.is_empty() {
            continue;
        }
        if i % 2 == 1 && toks.len() > 1 {
            let first = toks[0].position;
            let terms = toks
                .iter()
                .map(|t| {
                    needles.add_term(&t.text);
                    (t.position - first, Term::from_field_text(f.text, &t.text))
                })
                .collect();
            must.push(Box::new(PhraseQuery::new_with_offset(terms)));
            continue;
        }
        let mut at = 0;
        while at < toks.len() {
            let t = &toks[at];
            // A CJK run: its bigrams overlap each other by one character.
            let mut end = at + 1;
            if is_cjk_token(&t.text) {
                while end < toks.len()
                    && is_cjk_token(&toks[end].text)
                    && toks[end].offset_from < toks[end - 1].offset_to
                {
                    end += 1;
                }
            }
            let run = &toks[at..end];
            at = end;
            if run.len() > 1 {
                let terms = run
                    .iter()
                    .map(|t| {
                        needles.add_term(&t.text);
                        Term::from_field_text(f.text, &t.text)
                    })
                    .collect();
                must.push(Box::new(PhraseQuery::new(terms)));
                continue;
            }
            let mut chars = t.text.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) if is_cjk_token(&t.text) => {
                    // One character: its unigram, or any bigram that holds it.
                    needles.add_char(c);
                    must.push(Box::new(OneCharQuery::new(f.text, c)));
                }
                _ => {
                    needles.add_term(&t.text);
                    must.push(Box::new(TermQuery::new(
                        Term::from_field_text(f.text, &t.text),
                        IndexRecordOption::WithFreqs,
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The filters checked per document on fast fields.
struct Params {
    user: u64,
    spans: HashMap<u64, Vec<(u64, u64)>>,
    peer: Option<u64>,
    group: Option<u64>,
    after_ms: i64,
    /// Exclusive.
    before_ms: i64,
    /// Bit `Kind::code()` set for each kind allowed.
    kinds: u64,
}

/// The scope and the filters as a tantivy query: the candidates from the inverted index,
/// each checked against the spans, the 1:1 pair and the filters.
struct ScopeFilter {
    fields: Fields,
    /// Candidates: the 1:1 messages of these users …
    parties: Vec<u64>,
    /// … and the messages of these groups.
    groups: Vec<u64>,
    cache: Arc<ColumnCache>,
    params: Arc<Params>,
}

impl fmt::Debug for ScopeFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopeFilter")
            .field("user", &self.params.user)
            .field("groups", &self.params.spans.len())
            .finish_non_exhaustive()
    }
}

/// Above this many terms, the term dictionary is walked once instead of looking each
/// term up.
const LOOKUP_MAX: usize = 64;

/// Above this share of a segment's documents, the scope's candidates are not gathered
/// into a bit set: the filter is checked on whatever the rest of the query yields (it
/// checks the whole scope itself), which is cheaper than reading that many postings.
const DENSE_SHARE: u64 = 8;

/// The term infos of the terms of `field` among `values` in `reader`.
fn term_infos(
    reader: &SegmentReader,
    field: Field,
    values: &[u64],
) -> tantivy::Result<Vec<TermInfo>> {
    let mut infos = Vec::new();
    if values.is_empty() {
        return Ok(infos);
    }
    let inv = reader.inverted_index(field)?;
    if values.len() <= LOOKUP_MAX {
        for &v in values {
            if let Some(info) = inv.get_term_info(&Term::from_field_u64(field, v))? {
                infos.push(info);
            }
        }
    } else {
        let wanted: HashSet<u64> = values.iter().copied().collect();
        let mut terms = inv.terms().stream()?;
        while terms.advance() {
            let Ok(key) = <[u8; 8]>::try_from(terms.key()) else {
                continue;
            };
            if wanted.contains(&u64::from_be_bytes(key)) {
                infos.push(terms.value().clone());
            }
        }
    }
    Ok(infos)
}

/// Adds to `bits` the documents of the postings `infos` point at.
fn add_postings(
    bits: &mut BitSet,
    reader: &SegmentReader,
    field: Field,
    infos: &[TermInfo],
) -> tantivy::Result<()> {
    if infos.is_empty() {
        return Ok(());
    }
    let inv = reader.inverted_index(field)?;
    for info in infos {
        let mut postings = inv.read_postings_from_terminfo(info, IndexRecordOption::Basic)?;
        let mut doc = postings.doc();
        while doc != TERMINATED {
            bits.insert(doc);
            doc = postings.advance();
        }
    }
    Ok(())
}

impl DocPredicate for ScopeFilter {
    type SegmentDocPredicate = SegmentFilter;

    fn doc_predicate(
        &self,
        reader: &SegmentReader,
    ) -> tantivy::Result<ConstOrVariableSegmentPredicate<SegmentFilter>> {
        let f = &self.fields;
        let parties = term_infos(reader, f.parties, &self.parties)?;
        let groups = term_infos(reader, f.group_id, &self.groups)?;
        let candidates: u64 = parties
            .iter()
            .chain(&groups)
            .map(|i| u64::from(i.doc_freq))
            .sum();
        if candidates == 0 {
            return Ok(ConstOrVariableSegmentPredicate::Const(false));
        }
        let max_doc = reader.max_doc();
        let necessary_condition: Box<dyn DocSet> = if candidates > u64::from(max_doc) / DENSE_SHARE
        {
            Box::new(AllScorer::new(max_doc))
        } else {
            let mut bits = BitSet::with_max_value(max_doc);
            add_postings(&mut bits, reader, f.parties, &parties)?;
            add_postings(&mut bits, reader, f.group_id, &groups)?;
            Box::new(BitSetDocSet::from(bits))
        };
        Ok(ConstOrVariableSegmentPredicate::Variable {
            predicate: SegmentFilter {
                params: self.params.clone(),
                cols: self.cache.get(reader)?,
            },
            necessary_condition,
        })
    }
}

/// [`ScopeFilter`] on one segment.
struct SegmentFilter {
    params: Arc<Params>,
    cols: Arc<Cols>,
}

impl SegmentFilter {
    fn in_scope(&self, doc: DocId) -> Option<bool> {
        let p = &*self.params;
        if let Some(g) = get(&self.cols.group, doc) {
            if p.peer.is_some() || p.group.is_some_and(|want| want != g) {
                return Some(false);
            }
            let spans = p.spans.get(&g)?;
            let s = get(&self.cols.gseq, doc)?;
            return Some(spans.iter().any(|&(from, to)| from <= s && s <= to));
        }
        if p.group.is_some() {
            return Some(false);
        }
        let (a, b) = (get(&self.cols.pa, doc)?, get(&self.cols.pb, doc)?);
        let other = if a == p.user {
            b
        } else if b == p.user {
            a
        } else {
            return Some(false);
        };
        Some(p.peer.is_none_or(|want| want == other))
    }

    fn filters(&self, doc: DocId) -> Option<bool> {
        let p = &*self.params;
        let t = get(&self.cols.time, doc)?;
        if t < p.after_ms || t >= p.before_ms {
            return Some(false);
        }
        if p.kinds != u64::MAX {
            let k = get(&self.cols.kind, doc)?;
            if k >= 64 || p.kinds & (1 << k) == 0 {
                return Some(false);
            }
        }
        Some(true)
    }
}

impl SegmentDocPredicate for SegmentFilter {
    fn eval(&mut self, doc: DocId) -> bool {
        self.in_scope(doc) == Some(true) && self.filters(doc) == Some(true)
    }

    fn cost(&self) -> u64 {
        20
    }
}
