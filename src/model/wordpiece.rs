//! An exact fast path for BERT WordPiece tokenization of ASCII text.
//!
//! Hugging Face `tokenizers` keeps an alignment entry per byte through normalisation and
//! pre-tokenisation, which makes it the slowest step of encoding on a GPU. For a
//! tokenizer made of exactly `BertNormalizer`, `BertPreTokenizer` and a `WordPiece` model
//! (what BERT, MiniLM and their cross-encoders ship), ASCII text needs none of that: the
//! normaliser only drops control characters, turns whitespace into spaces and lowercases;
//! the pre-tokeniser splits on whitespace and isolates ASCII punctuation; WordPiece takes
//! the longest vocabulary entry first. [`FastWordPiece`] does exactly that over bytes.
//!
//! It answers only where it is sure to give the library's tokens: a word that is not
//! plain ASCII (some other character, or one that an added token such as `[CLS]` starts
//! with) goes to the library on its own. [`crate::model::tokenizer::TextTokenizer`] also checks it against
//! the library on probe texts when loading, and does not use it if they ever differ.
use ahash::AHashMap;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{ModelWrapper, Tokenizer};

/// The WordPiece model and the normaliser's switches that matter for ASCII text.
#[derive(Clone)]
pub struct FastWordPiece {
    /// Entries as they are: looked up at the start of a word.
    first: AHashMap<Box<[u8]>, u32>,
    /// Entries that start with the continuing prefix (`##`), without it: looked up
    /// inside a word.
    rest: AHashMap<Box<[u8]>, u32>,
    /// Longest entry in bytes, so the longest-match search starts no further out.
    longest: usize,
    unk: u32,
    max_chars: usize,
    clean_text: bool,
    lowercase: bool,
    /// Bytes that send a piece to the library: the first characters of added tokens.
    guard: [bool; 128],
    /// Whether pieces that are not plain ASCII may go to the library one by one (no added
    /// token holds whitespace, so none spans two pieces).
    by_piece: bool,
}

impl FastWordPiece {
    /// The fast path for `tokenizer`, when it is a BERT WordPiece tokenizer; `None`
    /// otherwise.
    pub fn new(tokenizer: &Tokenizer) -> Option<Self> {
        let Some(NormalizerWrapper::BertNormalizer(n)) = tokenizer.get_normalizer() else {
            return None;
        };
        if !matches!(
            tokenizer.get_pre_tokenizer(),
            Some(PreTokenizerWrapper::BertPreTokenizer(_))
        ) {
            return None;
        }
        let ModelWrapper::WordPiece(wp) = tokenizer.get_model() else {
            return None;
        };
        let vocab = tokenizers::Model::get_vocab(wp);
        let unk = *vocab.get(&wp.unk_token)?;
        let prefix = wp.continuing_subword_prefix.as_bytes();
        let mut first = AHashMap::with_capacity(vocab.len());
        let mut rest = AHashMap::new();
        let mut longest = 0;
        for (piece, &id) in &vocab {
            let bytes = piece.as_bytes();
            longest = longest.max(bytes.len());
            first.insert(bytes.into(), id);
            if let Some(tail) = bytes.strip_prefix(prefix) {
                rest.insert(tail.into(), id);
            }
        }
        let mut guard = [false; 128];
        let mut by_piece = true;
        for token in tokenizer.get_added_tokens_decoder().values() {
            by_piece &= !token.content.chars().any(char::is_whitespace);
            if let Some(c) = token.content.chars().next().filter(char::is_ascii) {
                guard[c.to_ascii_lowercase() as usize] = true;
                guard[c.to_ascii_uppercase() as usize] = true;
            }
        }
        Some(FastWordPiece {
            first,
            rest,
            longest,
            unk,
            max_chars: wp.max_input_chars_per_word,
            clean_text: n.clean_text,
            lowercase: n.lowercase,
            guard,
            by_piece,
        })
    }

    /// Append the model's tokens of `text` (no special tokens, no truncation) to `out`,
    /// stopping once `out` holds at least `limit` (the first `limit` are then exact).
    /// The text is cut at the ASCII whitespace that separates words after
    /// normalisation; a piece that is all plain ASCII is tokenised here, any other goes
    /// to `library` (the library's tokens of that piece alone, which are the tokens it
    /// gives that piece within the text: BERT's normalisation works character by
    /// character and its pre-tokeniser splits at whitespace anyway). False, with `out`
    /// as it was, when the text is not plain ASCII and pieces cannot go to the library
    /// (an added token holds whitespace).
    pub fn tokenize(
        &self,
        text: &str,
        limit: usize,
        out: &mut Vec<u32>,
        library: &mut dyn FnMut(&str, &mut Vec<u32>) -> crate::error::Result<()>,
    ) -> crate::error::Result<bool> {
        let bytes = text.as_bytes();
        let plain = |b: &u8| b.is_ascii() && !self.guard[*b as usize];
        if !self.by_piece && !bytes.iter().all(plain) {
            return Ok(false);
        }
        let mut word: Vec<u8> = Vec::with_capacity(32);
        let mut at = 0;
        while at < bytes.len() && out.len() < limit {
            let end = bytes[at..]
                .iter()
                .position(|&b| self.separates(b))
                .map_or(bytes.len(), |n| at + n);
            let piece = &bytes[at..end];
            if piece.iter().all(plain) {
                self.ascii_piece(piece, &mut word, out);
            } else {
                library(&text[at..end], out)?;
            }
            at = end + 1;
        }
        Ok(true)
    }

    /// Whether `b` ends a piece: whitespace that normalisation keeps as whitespace
    /// (`clean_text` drops vertical tab and form feed, and turns tab, CR and LF into
    /// spaces).
    fn separates(&self, b: u8) -> bool {
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => true,
            0x0b | 0x0c => !self.clean_text,
            _ => false,
        }
    }

    /// The tokens of a piece of plain ASCII without separators.
    fn ascii_piece(&self, piece: &[u8], word: &mut Vec<u8>, out: &mut Vec<u32>) {
        word.clear();
        for &b in piece {
            let b = match b {
                // clean_text: NUL and control characters go.
                0..=31 | 127 if self.clean_text => continue,
                _ if self.lowercase => b.to_ascii_lowercase(),
                _ => b,
            };
            if b.is_ascii_punctuation() {
                self.word(word, out);
                word.clear();
                self.word(&[b], out);
            } else {
                word.push(b);
            }
        }
        self.word(word, out);
    }

    /// WordPiece of one pre-tokenised word: longest entry first, `[UNK]` for the whole
    /// word when it is too long or some part of it matches nothing.
    fn word(&self, word: &[u8], out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if word.len() > self.max_chars {
            out.push(self.unk);
            return;
        }
        let before = out.len();
        let mut start = 0;
        while start < word.len() {
            let table = if start == 0 { &self.first } else { &self.rest };
            let mut end = word.len().min(start + self.longest);
            let found = loop {
                if end == start {
                    break None;
                }
                if let Some(&id) = table.get(&word[start..end]) {
                    break Some(id);
                }
                end -= 1;
            };
            match found {
                Some(id) => out.push(id),
                None => {
                    out.truncate(before);
                    out.push(self.unk);
                    return;
                }
            }
            start = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::tokenizer::TextTokenizer;
    use crate::rng::SplitMix64;
    use std::path::{Path, PathBuf};

    fn repo(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
    }

    /// Random text: mostly ASCII letters and spaces, with digits, punctuation, whitespace
    /// of every kind, control characters, `#` runs, accents, other scripts, Unicode
    /// spaces and combining marks, special tokens' texts, and now and then a very long
    /// word.
    fn random_text(rng: &mut SplitMix64) -> String {
        const ASCII: &str = "aaaaeeeiioouu bcdfghklmnprst    STAEON0123456789.,;:!?'\"()-_/#[]{}<>@$%^&*+=|~`\\\t\n\r\x0b\x0c\x00\x01\x1f\x7f";
        const OTHER: [&str; 16] = [
            "é", "Å", "ß", "µ", "β", "Σ", "Ж", "中", "日", "\u{a0}", "\u{2009}", "\u{301}", "—",
            "“", "[CLS]", "[sep]",
        ];
        let ascii: Vec<char> = ASCII.chars().collect();
        let n = (rng.next_u64() % 300) as usize;
        let mut s = String::new();
        for _ in 0..n {
            if rng.next_u64() % 40 == 0 {
                s.push_str(OTHER[(rng.next_u64() % OTHER.len() as u64) as usize]);
            } else {
                s.push(ascii[(rng.next_u64() % ascii.len() as u64) as usize]);
            }
        }
        if rng.next_u64() % 10 == 0 {
            s.push_str(&"x".repeat(95 + (rng.next_u64() % 10) as usize));
        }
        s
    }

    /// Texts of the SciFact corpus (real, mostly ASCII, some not).
    fn scifact(n: usize) -> Vec<String> {
        let path = repo("../shared/data/scifact/corpus.jsonl");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (../shared must be beside the repository)",
                path.display()
            )
        });
        text.lines()
            .take(n)
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                format!(
                    "{} {}",
                    v["title"].as_str().unwrap(),
                    v["text"].as_str().unwrap()
                )
            })
            .collect()
    }

    /// The fast path and the library give the same tokens, alone and in pairs.
    fn assert_same(t: &TextTokenizer, texts: &[String]) {
        assert!(t.has_fast_path());
        let library = t.without_fast_path();
        let got = t.encode_texts(texts).unwrap();
        let want = library.encode_texts(texts).unwrap();
        for ((g, w), text) in got.iter().zip(&want).zip(texts) {
            assert_eq!(g, w, "{text:?}");
        }
        let pairs: Vec<(&str, &str)> = texts
            .iter()
            .zip(texts.iter().rev())
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let got = t.encode_pairs(&pairs).unwrap();
        let want = library.encode_pairs(&pairs).unwrap();
        for ((g, w), pair) in got.iter().zip(&want).zip(&pairs) {
            assert_eq!(g, w, "{pair:?}");
        }
    }

    #[test]
    fn fast_path_gives_the_library_tokens() {
        let mut rng = SplitMix64::new(7);
        let mut texts: Vec<String> = (0..3000).map(|_| random_text(&mut rng)).collect();
        texts.extend(scifact(1500));
        // MiniLM's tokenizer.json, and a tokenizer rebuilt from vocab.txt (cross-encoder).
        for (dir, max_length) in [
            ("models/all-MiniLM-L6-v2", 256),
            ("tests/fixtures/generated/ce_msmarco", 64),
        ] {
            let t = TextTokenizer::load(&repo(dir), max_length).unwrap();
            assert_same(&t, &texts);
        }
    }

    #[test]
    fn fast_path_keeps_case_when_the_tokenizer_does() {
        let dir = tempfile::tempdir().unwrap();
        let ce = repo("tests/fixtures/generated/ce_msmarco");
        std::fs::copy(ce.join("vocab.txt"), dir.path().join("vocab.txt")).unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"do_lower_case": false}"#,
        )
        .unwrap();
        let t = TextTokenizer::load(dir.path(), 128).unwrap();
        let mut rng = SplitMix64::new(11);
        let texts: Vec<String> = (0..500).map(|_| random_text(&mut rng)).collect();
        assert_same(&t, &texts);
        // Upper case then maps to other ids than lower case (so the switch is exercised).
        let ids = |s: &str| t.encode_texts(&[s]).unwrap()[0].ids.clone();
        assert_ne!(ids("The Protein"), ids("the protein"));
    }
}
