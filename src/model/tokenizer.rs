//! Tokenization for encoders: a Hugging Face `tokenizer.json` (or a BERT WordPiece
//! tokenizer rebuilt from `vocab.txt` + `tokenizer_config.json`), with our own
//! truncation and no padding; batches are padded to their longest member.
use crate::error::{Error, Result};
use crate::model::hf_config::TokenizerConfig;
use crate::model::wordpiece::FastWordPiece;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{
    AddedToken, PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

/// Token ids of one input (a text or a query/passage pair), unpadded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<i64>,
    pub type_ids: Vec<i64>,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The tokens of many texts in flat arrays: 4 bytes a token id and 1 a segment, where a
/// `Vec<Encoded>` takes 16 bytes a token and 48 a text. For token sets that stay in memory
/// (the student's training texts).
#[derive(Debug, Default)]
pub struct TokenStore {
    ids: Vec<u32>,
    type_ids: Vec<u8>,
    /// End of each entry's tokens in `ids`.
    ends: Vec<usize>,
}

impl TokenStore {
    /// Add an entry; its index is the number of entries before it.
    pub fn push(&mut self, e: &Encoded) {
        self.ids.extend(e.ids.iter().map(|&i| i as u32));
        self.type_ids.extend(e.type_ids.iter().map(|&i| i as u8));
        self.ends.push(self.ids.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The number of tokens of entry `i`.
    pub fn tokens(&self, i: usize) -> usize {
        self.ends[i] - if i == 0 { 0 } else { self.ends[i - 1] }
    }

    /// Entry `i`, as it was pushed.
    pub fn get(&self, i: usize) -> Encoded {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        let range = start..self.ends[i];
        Encoded {
            ids: self.ids[range.clone()].iter().map(|&i| i as i64).collect(),
            type_ids: self.type_ids[range].iter().map(|&i| i as i64).collect(),
        }
    }
}

/// Tokenizer with fixed truncation: single texts are cut to `max_length` tokens
/// (special tokens included); pairs lose tokens from the passage only, falling back to
/// longest-first when the query alone does not fit.
#[derive(Clone)]
pub struct TextTokenizer {
    single: Tokenizer,
    /// No truncation: pairs are truncated by [`pair_lengths`], then post-processed.
    raw: Tokenizer,
    max_length: usize,
    pad_id: i64,
    source: PathBuf,
    /// The exact fast path for ASCII text, when the tokenizer is BERT WordPiece and gives
    /// the library's tokens on the probe texts ([`Fast::checked`]).
    fast: Option<Fast>,
}

/// [`FastWordPiece`] with the special tokens the post-processor puts around a text
/// (`[CLS] a [SEP]`) and a pair (`[CLS] a [SEP] b [SEP]`, segments 0 then 1).
#[derive(Clone)]
struct Fast {
    wp: FastWordPiece,
    cls: i64,
    sep: i64,
}

impl TextTokenizer {
    /// Load from a model directory: `tokenizer.json` when present, otherwise a BERT
    /// WordPiece tokenizer from `vocab.txt` and `tokenizer_config.json`.
    pub fn load(dir: &Path, max_length: usize) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let (base, source) = if json.exists() {
            let t = Tokenizer::from_file(&json).map_err(|e| Error::Tokenizer {
                path: json.clone(),
                message: e.to_string(),
            })?;
            (t, json)
        } else {
            let vocab = dir.join("vocab.txt");
            if !vocab.exists() {
                return Err(Error::model(
                    dir,
                    "no tokenizer.json or vocab.txt in the model directory",
                ));
            }
            (wordpiece_from_vocab(dir, &vocab)?, vocab)
        };
        let pad_id = pad_token_id(&base, dir)?;
        let mut single = base.clone();
        single.with_padding(None);
        single
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                ..Default::default()
            }))
            .map_err(|e| Error::Tokenizer {
                path: source.clone(),
                message: e.to_string(),
            })?;
        let mut raw = base;
        raw.with_padding(None);
        raw.with_truncation(None).map_err(|e| Error::Tokenizer {
            path: source.clone(),
            message: e.to_string(),
        })?;
        let mut t = TextTokenizer {
            single,
            raw,
            max_length,
            pad_id,
            source,
            fast: None,
        };
        t.fast = Fast::checked(&t);
        Ok(t)
    }

    /// Whether ASCII text takes the fast path ([`crate::model::wordpiece`]).
    pub fn has_fast_path(&self) -> bool {
        self.fast.is_some()
    }

    /// The same tokenizer with every text going through the library.
    pub fn without_fast_path(&self) -> Self {
        TextTokenizer {
            fast: None,
            ..self.clone()
        }
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn pad_id(&self) -> i64 {
        self.pad_id
    }

    /// Vocabulary entries that are whole lowercase ASCII words of 3 letters or more,
    /// sorted: each one tokenizes to itself, so a text of n of them is n tokens (used
    /// to build inputs of exact lengths for benchmarks).
    pub fn whole_words(&self) -> Vec<String> {
        let mut words: Vec<String> = self
            .single
            .get_vocab(false)
            .into_keys()
            .filter(|w| w.len() >= 3 && w.bytes().all(|b| b.is_ascii_lowercase()))
            .collect();
        words.sort();
        words
    }

    /// Tokenize texts in parallel. Texts are stripped of surrounding whitespace first,
    /// as sentence-transformers does.
    pub fn encode_texts<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Encoded>> {
        texts
            .par_iter()
            .map(|t| self.encode_text(t.as_ref().trim()))
            .collect()
    }

    /// One text, through the fast path when it takes it.
    fn encode_text(&self, text: &str) -> Result<Encoded> {
        if let Some(f) = &self.fast {
            let limit = self.max_length.saturating_sub(2);
            if let Some(tokens) = self.fast_tokens(f, text, limit)? {
                return Ok(f.single(&tokens[..tokens.len().min(limit)]));
            }
        }
        self.library_text(text)
    }

    /// The model's tokens of `text` by the fast path (at least the first `limit`, exact),
    /// the pieces it leaves to the library tokenized by the raw tokenizer; `None` when it
    /// leaves the whole text to the library.
    fn fast_tokens(&self, f: &Fast, text: &str, limit: usize) -> Result<Option<Vec<u32>>> {
        let mut tokens = Vec::with_capacity(text.len() / 4 + 2);
        let mut library = |piece: &str, out: &mut Vec<u32>| -> Result<()> {
            let e = self
                .raw
                .encode_fast(piece, false)
                .map_err(|e| self.err(e))?;
            out.extend_from_slice(e.get_ids());
            Ok(())
        };
        let taken = f.wp.tokenize(text, limit, &mut tokens, &mut library)?;
        Ok(taken.then_some(tokens))
    }

    /// One text, through the library.
    fn library_text(&self, text: &str) -> Result<Encoded> {
        let e = self
            .single
            .encode_fast(text, true)
            .map_err(|e| self.err(e))?;
        Ok(to_encoded(&e))
    }

    /// Tokenize (query, passage) pairs in parallel, truncating the passage only; when the
    /// query alone does not fit, both are cut, longest first (see [`pair_lengths`]).
    pub fn encode_pairs<Q, P>(&self, pairs: &[(Q, P)]) -> Result<Vec<Encoded>>
    where
        Q: AsRef<str> + Sync,
        P: AsRef<str> + Sync,
    {
        let added = self
            .raw
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(true));
        let budget = self.max_length.saturating_sub(added);
        // Each distinct text is tokenized once (a query recurs over its candidates, a
        // document over the queries that retrieved it), then every pair is cut from
        // copies of its two sides: the same tokens as tokenizing each pair.
        let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        let mut distinct: Vec<&str> = Vec::new();
        let mut sides: Vec<(usize, usize)> = Vec::with_capacity(pairs.len());
        for (q, p) in pairs {
            let mut ids = [0usize; 2];
            for (slot, t) in ids.iter_mut().zip([q.as_ref(), p.as_ref()]) {
                *slot = *index.entry(t).or_insert_with(|| {
                    distinct.push(t);
                    distinct.len() - 1
                });
            }
            sides.push((ids[0], ids[1]));
        }
        // The fast path's tokens where it takes the text; the pairs of the others go
        // through the library.
        let fast = distinct
            .par_iter()
            .map(|t| match &self.fast {
                Some(f) => self.fast_tokens(f, t, usize::MAX),
                None => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        let singles = distinct
            .par_iter()
            .zip(&fast)
            .map(|(t, f)| match f {
                Some(_) => Ok(None),
                None => self
                    .raw
                    .encode_fast(*t, false)
                    .map(Some)
                    .map_err(|e| self.err(e)),
            })
            .collect::<Result<Vec<_>>>()?;
        sides
            .par_iter()
            .map(|&(q, p)| {
                if let (Some(f), Some(a), Some(b)) = (&self.fast, &fast[q], &fast[p]) {
                    let (nq, np) = pair_lengths(a.len(), b.len(), budget);
                    return Ok(f.pair(&a[..nq], &b[..np]));
                }
                let library = |i: usize| match &singles[i] {
                    Some(e) => Ok(e.clone()),
                    None => self
                        .raw
                        .encode_fast(distinct[i], false)
                        .map_err(|e| self.err(e)),
                };
                self.library_pair(library(q)?, library(p)?, budget)
            })
            .collect()
    }

    /// A pair of the raw tokenizer's encodings, cut to `budget` and post-processed.
    fn library_pair(
        &self,
        mut q: tokenizers::Encoding,
        mut p: tokenizers::Encoding,
        budget: usize,
    ) -> Result<Encoded> {
        let (nq, np) = pair_lengths(q.len(), p.len(), budget);
        q.truncate(nq, 0, TruncationDirection::Right);
        p.truncate(np, 0, TruncationDirection::Right);
        let e = self
            .raw
            .post_process(q, Some(p), true)
            .map_err(|e| self.err(e))?;
        Ok(to_encoded(&e))
    }

    fn err(&self, e: tokenizers::Error) -> Error {
        Error::Tokenizer {
            path: self.source.clone(),
            message: e.to_string(),
        }
    }
}

/// Texts the fast path is checked on when a tokenizer loads: punctuation, digits, case,
/// control characters and every kind of ASCII whitespace, subwords, accents, other
/// scripts, Unicode spaces and marks, special tokens' texts (words the fast path leaves
/// to the library), a word over WordPiece's 100 characters, and one text long enough to
/// be truncated.
fn probe_texts() -> Vec<String> {
    let mut texts: Vec<String> = [
        "",
        "Hello, World! It's 3.14 -- a (small) test; isn't it? [CLS] #hash_tag @user",
        "Tabs\tand\nnew lines\r\nand\x0bvertical\x0cfeeds\x00nul\x07bell\x7fdel end",
        "unaffable tokenization preprocessing antidisestablishmentarianism XYZZY qwxz",
        "e=mc^2 <tag> a|b ~x `code` $5 100% {braces} \\path/to/file.txt",
    ]
    .map(String::from)
    .to_vec();
    texts.extend(
        [
            "Café naïve résumé Ångström façade — “quotes” … 50 µm ± 2 °C, β-catenin → p53",
            "Ελληνικά ΣΟΦΊΑ and Кириллица, 中文分词 and 日本語 mixed with ASCII words",
            "no\u{a0}break\u{2009}thin\u{3000}ideographic spaces, e\u{301} combining, 👩\u{200d}👩 emoji",
            "word[CLS]glued and [SEP] apart, [MASK]ed, [unk] lower",
        ]
        .map(String::from),
    );
    texts.push("pneumonoultramicroscopicsilicovolcanoconiosis".repeat(3));
    texts.push("The quick brown fox jumps over the lazy dog, again and again. ".repeat(40));
    texts
}

impl Fast {
    /// The fast path of `t`, if its tokenizer is BERT WordPiece and the fast path gives
    /// the library's tokens for every probe text, alone and in pairs.
    fn checked(t: &TextTokenizer) -> Option<Fast> {
        let wp = FastWordPiece::new(&t.raw)?;
        let empty = t.library_text("").ok()?;
        let (cls, sep) = match (&empty.ids[..], &empty.type_ids[..]) {
            (&[cls, sep], &[0, 0]) => (cls, sep),
            _ => return None,
        };
        let fast = Fast { wp, cls, sep };
        let probes = probe_texts();
        let t_library = t.without_fast_path();
        let mut t_fast = t.clone();
        t_fast.fast = Some(fast.clone());
        if t_fast.encode_texts(&probes).ok()? != t_library.encode_texts(&probes).ok()? {
            return None;
        }
        let pairs: Vec<(&str, &str)> = probes
            .iter()
            .zip(probes.iter().rev())
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let same = t_library.encode_pairs(&pairs).ok()? == t_fast.encode_pairs(&pairs).ok()?;
        same.then_some(fast)
    }

    /// `[CLS] tokens [SEP]`.
    fn single(&self, tokens: &[u32]) -> Encoded {
        let mut ids = Vec::with_capacity(tokens.len() + 2);
        ids.push(self.cls);
        ids.extend(tokens.iter().map(|&i| i as i64));
        ids.push(self.sep);
        let type_ids = vec![0; ids.len()];
        Encoded { ids, type_ids }
    }

    /// `[CLS] a [SEP] b [SEP]`, segment 0 up to the first `[SEP]`, 1 after it.
    fn pair(&self, a: &[u32], b: &[u32]) -> Encoded {
        let mut ids = Vec::with_capacity(a.len() + b.len() + 3);
        ids.push(self.cls);
        ids.extend(a.iter().map(|&i| i as i64));
        ids.push(self.sep);
        ids.extend(b.iter().map(|&i| i as i64));
        ids.push(self.sep);
        let mut type_ids = vec![0; a.len() + 2];
        type_ids.resize(ids.len(), 1);
        Encoded { ids, type_ids }
    }
}

/// Token counts of a (query, passage) pair that fit `budget` (special tokens excluded):
/// the passage is cut first ("only second"); if the query alone leaves no room for a
/// passage token, both are cut "longest first" as Hugging Face tokenizers do: the shorter
/// keeps its length if the longer still fits, else each gets half, the longer the odd one.
pub fn pair_lengths(q: usize, p: usize, budget: usize) -> (usize, usize) {
    if q + p <= budget {
        return (q, p);
    }
    if budget > q {
        return (q, budget - q);
    }
    let (short, long) = (q.min(p), q.max(p));
    let (mut n_short, mut n_long) = (
        short,
        if short > budget {
            short
        } else {
            long.min(budget - short).max(short)
        },
    );
    if n_short + n_long > budget {
        n_short = budget / 2;
        n_long = n_short + budget % 2;
    }
    if q <= p {
        (n_short, n_long)
    } else {
        (n_long, n_short)
    }
}

fn to_encoded(e: &tokenizers::Encoding) -> Encoded {
    Encoded {
        ids: e.get_ids().iter().map(|&i| i as i64).collect(),
        type_ids: e.get_type_ids().iter().map(|&i| i as i64).collect(),
    }
}

fn pad_token_id(t: &Tokenizer, dir: &Path) -> Result<i64> {
    if let Some(p) = t.get_padding() {
        return Ok(p.pad_id as i64);
    }
    let cfg = TokenizerConfig::load_or_default(dir)?;
    let pad = TokenizerConfig::token(&cfg.pad_token, "[PAD]");
    Ok(t.token_to_id(&pad).unwrap_or(0) as i64)
}

/// The fast BERT tokenizer that transformers derives from a slow `BertTokenizer`.
fn wordpiece_from_vocab(dir: &Path, vocab: &Path) -> Result<Tokenizer> {
    let cfg = TokenizerConfig::load_or_default(dir)?;
    let unk = TokenizerConfig::token(&cfg.unk_token, "[UNK]");
    let sep = TokenizerConfig::token(&cfg.sep_token, "[SEP]");
    let cls = TokenizerConfig::token(&cfg.cls_token, "[CLS]");
    let terr = |m: String| Error::Tokenizer {
        path: vocab.to_path_buf(),
        message: m,
    };
    let vocab_str = vocab
        .to_str()
        .ok_or_else(|| terr("path is not valid UTF-8".into()))?;
    let model = WordPiece::from_file(vocab_str)
        .unk_token(unk.clone())
        .continuing_subword_prefix("##".into())
        .max_input_chars_per_word(100)
        .build()
        .map_err(|e| terr(e.to_string()))?;
    let mut t = Tokenizer::new(model);
    let id = |tok: &str| {
        t.token_to_id(tok)
            .ok_or_else(|| terr(format!("special token `{tok}` is not in the vocabulary")))
    };
    let (sep_id, cls_id) = (id(&sep)?, id(&cls)?);
    t.with_normalizer(Some(BertNormalizer::new(
        true,
        cfg.tokenize_chinese_chars,
        cfg.strip_accents,
        cfg.do_lower_case,
    )))
    .map_err(|e| terr(e.to_string()))?;
    t.with_pre_tokenizer(Some(BertPreTokenizer));
    t.with_post_processor(Some(BertProcessing::new(
        (sep.clone(), sep_id),
        (cls.clone(), cls_id),
    )));
    let pad = TokenizerConfig::token(&cfg.pad_token, "[PAD]");
    let mask = TokenizerConfig::token(&cfg.mask_token, "[MASK]");
    let specials: Vec<AddedToken> = [unk, sep, pad, cls, mask]
        .into_iter()
        .map(|s| AddedToken::from(s, true))
        .collect();
    t.add_special_tokens(specials)
        .map_err(|e| terr(e.to_string()))?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_store_gives_back_each_entry_as_pushed() {
        let entries = [
            Encoded {
                ids: vec![101, 7592, 30521, 102],
                type_ids: vec![0, 0, 0, 0],
            },
            Encoded {
                ids: vec![],
                type_ids: vec![],
            },
            Encoded {
                ids: vec![101, 2000, 102, 3000, 102],
                type_ids: vec![0, 0, 0, 1, 1],
            },
        ];
        let mut store = TokenStore::default();
        for e in &entries {
            store.push(e);
        }
        assert_eq!(store.len(), 3);
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(&store.get(i), e);
        }
    }

    #[test]
    fn pair_truncation_cuts_the_passage_then_both() {
        assert_eq!(pair_lengths(5, 10, 20), (5, 10));
        assert_eq!(pair_lengths(5, 100, 61), (5, 56));
        // The query alone fills the budget: longest first, half each, longer one odd.
        assert_eq!(pair_lengths(83, 350, 61), (30, 31));
        assert_eq!(pair_lengths(350, 83, 61), (31, 30));
        assert_eq!(pair_lengths(61, 2, 61), (59, 2));
        assert_eq!(pair_lengths(70, 40, 61), (31, 30));
    }
}
