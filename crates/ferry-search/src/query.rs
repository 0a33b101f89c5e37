//! From a [`crate::Query`] to a tantivy query: the text's clauses, the scope and the
//! filters, and the page cursor.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use tantivy::columnar::Column;
use tantivy::query::doc_predicate_query::{
    ConstOrVariableSegmentPredicate, DocPredicate, DocPredicateQuery, SegmentDocPredicate,
};
use tantivy::query::{
    BooleanQuery, ConstScoreQuery, EmptyQuery, EnableScoring, Occur, PhraseQuery, Query,
    RegexQuery, TermQuery, TermSetQuery, Weight,
};
use tantivy::schema::{IndexRecordOption, Schema};
use tantivy::{DocId, SegmentReader, Term};

use crate::collect::parse_cursor;
use crate::highlight::Needles;
use crate::index::{Fields, F_GROUP, F_GSEQ, F_KIND, F_PA, F_PB, F_TIME};
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
pub(crate) fn build(q: &crate::Query, f: &Fields, schema: Schema) -> Result<Built, SearchError> {
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
    let candidates: Box<dyn Query> = match (q.group, q.peer) {
        (Some(_), Some(_)) => return Ok(Built::Nothing),
        (Some(g), None) => {
            if !spans.contains_key(&g) {
                return Ok(Built::Nothing);
            }
            Box::new(TermQuery::new(
                Term::from_field_u64(f.group_id, g),
                IndexRecordOption::Basic,
            ))
        }
        (None, Some(p)) => Box::new(TermQuery::new(
            Term::from_field_u64(f.parties, p),
            IndexRecordOption::Basic,
        )),
        (None, None) => {
            let mut terms = vec![Term::from_field_u64(f.parties, q.scope.user)];
            terms.extend(spans.keys().map(|&g| Term::from_field_u64(f.group_id, g)));
            Box::new(TermSetQuery::new(terms))
        }
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
    let candidates = candidates.weight(EnableScoring::disabled_from_schema(&schema))?;
    let filter = ScopeFilter {
        candidates: Arc::from(candidates),
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
        let toks = tokens(&mut an, piece);
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
                    let pattern = format!("{c}.?|.{c}");
                    must.push(Box::new(RegexQuery::from_pattern(&pattern, f.text)?));
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
    candidates: Arc<dyn Weight>,
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

impl DocPredicate for ScopeFilter {
    type SegmentDocPredicate = SegmentFilter;

    fn doc_predicate(
        &self,
        reader: &SegmentReader,
    ) -> tantivy::Result<ConstOrVariableSegmentPredicate<SegmentFilter>> {
        let ff = reader.fast_fields();
        let candidates = self.candidates.scorer(reader, 1.0)?;
        Ok(ConstOrVariableSegmentPredicate::Variable {
            predicate: SegmentFilter {
                params: self.params.clone(),
                pa: ff.column_opt(F_PA)?,
                pb: ff.column_opt(F_PB)?,
                group: ff.column_opt(F_GROUP)?,
                gseq: ff.column_opt(F_GSEQ)?,
                time: ff.column_opt(F_TIME)?,
                kind: ff.column_opt(F_KIND)?,
            },
            necessary_condition: Box::new(candidates),
        })
    }
}

/// [`ScopeFilter`] on one segment. A column is `None` when no document of the segment
/// has the field.
struct SegmentFilter {
    params: Arc<Params>,
    pa: Option<Column<u64>>,
    pb: Option<Column<u64>>,
    group: Option<Column<u64>>,
    gseq: Option<Column<u64>>,
    time: Option<Column<i64>>,
    kind: Option<Column<u64>>,
}

impl SegmentFilter {
    fn get(col: &Option<Column<u64>>, doc: DocId) -> Option<u64> {
        col.as_ref().and_then(|c| c.first(doc))
    }

    fn in_scope(&self, doc: DocId) -> Option<bool> {
        let p = &*self.params;
        if let Some(g) = Self::get(&self.group, doc) {
            if p.peer.is_some() || p.group.is_some_and(|want| want != g) {
                return Some(false);
            }
            let spans = p.spans.get(&g)?;
            let s = Self::get(&self.gseq, doc)?;
            return Some(spans.iter().any(|&(from, to)| from <= s && s <= to));
        }
        if p.group.is_some() {
            return Some(false);
        }
        let (a, b) = (Self::get(&self.pa, doc)?, Self::get(&self.pb, doc)?);
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
        let t = self.time.as_ref()?.first(doc)?;
        if t < p.after_ms || t >= p.before_ms {
            return Some(false);
        }
        if p.kinds != u64::MAX {
            let k = Self::get(&self.kind, doc)?;
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
