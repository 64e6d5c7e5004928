//! Unit tests of `pseudo` (kept beside it, in their own file).
use super::*;

#[test]
fn sentences_split_on_terminal_punctuation_only() {
    let s = split_sentences("Dr. Smith met 3.5 people. Why? Because! end");
    assert_eq!(
        s,
        vec!["Dr.", "Smith met 3.5 people.", "Why?", "Because!", "end"]
    );
}

#[test]
fn windows_come_from_one_long_enough_sentence() {
    let text = "Short one. The quick brown fox jumps over the lazy dog near the river bank today. \
                Another fairly long sentence with more than six words in it here.";
    let qs = for_document(7, "d1", text, 5, 1, None, false);
    assert_eq!(qs.len(), 2, "{qs:?}");
    for q in &qs {
        let n = q.split_whitespace().count();
        assert!((MIN_WORDS..=MAX_WORDS).contains(&n), "{q}");
        assert!(text.contains(q.as_str()), "{q}");
    }
    // Deterministic for a seed and a document id; another seed draws differently.
    assert_eq!(qs, for_document(7, "d1", text, 5, 1, None, false));
    let other: Vec<_> = (0..8)
        .map(|s| for_document(s, "d1", text, 1, 1, None, false))
        .collect();
    assert!(other.iter().any(|o| o != &other[0]));
}

#[test]
fn further_windows_per_sentence_fill_the_widest_uncovered_stretch() {
    let text = "one two three four five six seven eight nine ten eleven twelve thirteen \
                fourteen fifteen sixteen seventeen eighteen nineteen twenty. \
                alpha beta gamma delta epsilon zeta eta. \
                a b c d e f g h i j k l m n o p q r s t u v w x y z aa bb cc dd.";
    let sentences: Vec<Vec<&str>> = split_sentences(text)
        .into_iter()
        .map(|s| s.split_whitespace().collect())
        .collect();
    // Where a window sits: (sentence, start).
    let locate = |q: &str| -> (usize, usize) {
        let w: Vec<&str> = q.split_whitespace().collect();
        for (s, words) in sentences.iter().enumerate() {
            if let Some(i) =
                (0..=words.len().saturating_sub(w.len())).find(|&i| words[i..].starts_with(&w))
            {
                return (s, i);
            }
        }
        panic!("{q} is no window of the text");
    };
    for seed in 0..20 {
        let one = for_document(seed, "d", text, 10, 1, None, false);
        let three = for_document(seed, "d", text, 10, 3, None, false);
        // The first pass is the one-per-sentence set, in the same order.
        assert_eq!(one.len(), 3);
        assert_eq!(three[..3], one[..]);
        // Later windows: within their sentence, clear of its earlier windows, in the
        // widest stretch they leave; a sentence whose stretches are all too short
        // gets none.
        let mut placed: Vec<Vec<(usize, usize)>> = vec![Vec::new(); 3];
        for q in &three {
            let n = q.split_whitespace().count();
            assert!((MIN_WORDS..=MAX_WORDS).contains(&n), "{q}");
            let (s, start) = locate(q);
            if !placed[s].is_empty() {
                let gap = widest_gap(sentences[s].len(), placed[s].iter().copied()).unwrap();
                assert!(
                    start >= gap.0 && start + n <= gap.0 + gap.1,
                    "{q} outside {gap:?}"
                );
            }
            placed[s].push((start, n));
        }
        // The 7-word sentence has room for one window only; the 30-word one for at
        // least two (a first window leaves 16 words, 8 of them on one side).
        assert_eq!(placed[1].len(), 1);
        assert!(placed[2].len() >= 2, "{placed:?}");
        // `n` caps the pool, first passes first.
        assert_eq!(for_document(seed, "d", text, 4, 3, None, false), three[..4]);
    }
    assert_eq!(widest_gap(10, [(2, 3), (7, 1)].into_iter()), Some((0, 2)));
    assert_eq!(widest_gap(10, [(0, 3), (5, 1)].into_iter()), Some((6, 4)));
    assert_eq!(widest_gap(4, [(0, 4)].into_iter()), None);
}

#[test]
fn informative_windows_sit_on_the_rarest_words() {
    let texts = [
        "the river and the bank of the town",
        "the river and the bank of the hill",
        "the cat and the dog of the town",
    ];
    let idf = Idf::new(texts);
    // df: the 3, of 3, and 3, river 2, bank 2, town 2, cat 1; unseen words 0.
    assert!((idf.of("The,") - (3.0f64 / 4.0).ln()).abs() < 1e-12);
    assert!((idf.of("Pickawillany") - 3.0f64.ln()).abs() < 1e-12);
    assert!((idf.of("cat") - (3.0f64 / 2.0).ln()).abs() < 1e-12);
    assert_eq!(idf.of("--"), 0.0);
    let words: Vec<&str> = "the of and the Miami rivers near Pickawillany the of and the"
        .split_whitespace()
        .collect();
    assert_eq!(informative_start(&words, 4, &idf), 4);
    // Ties go to the first: "and the Miami ... Pickawillany" and "the Miami ...
    // Pickawillany the" weigh the same.
    assert_eq!(informative_start(&words, 6, &idf), 2);
    assert_eq!(informative_start(&words, words.len(), &idf), 0);
    // Through for_document: the same sentence and length as the drawn window.
    let text = "The of and the Miami rivers near Pickawillany the of and the cat.";
    for seed in 0..20 {
        let drawn = for_document(seed, "d", text, 1, 1, None, false);
        let placed = for_document(seed, "d", text, 1, 1, Some(&idf), false);
        assert_eq!(
            drawn[0].split_whitespace().count(),
            placed[0].split_whitespace().count()
        );
        assert!(placed[0].contains("Pickawillany"), "{placed:?}");
    }
}

#[test]
fn question_windows_take_out_one_answer() {
    let words = |s: &'static str| s.split_whitespace().collect::<Vec<_>>();
    let mut rng = SplitMix64::new(1);
    // One run each: a year, a number, a name; the window's capital first word is no
    // answer when it starts its sentence.
    let w = words("In 1066 the army crossed the channel quickly.");
    assert_eq!(
        as_question(&w, true, &w.join(" "), &mut rng),
        "when In the army crossed the channel quickly?"
    );
    let w = words("the army had 7,000 men and many horses");
    assert_eq!(
        as_question(&w, false, &w.join(" "), &mut rng),
        "how many the army had men and many horses?"
    );
    let w = words("champion Denver Broncos defeated the other champion,");
    assert_eq!(
        as_question(&w, false, &w.join(" "), &mut rng),
        "what champion defeated the other champion?"
    );
    // Mid-sentence, a capital first word is a name.
    assert_eq!(
        as_question(
            &words("Denver defeated the other champion easily"),
            false,
            "Denver defeated the other champion easily",
            &mut rng
        ),
        "what defeated the other champion easily?"
    );
    // Nothing to take out, or a run that would leave too little: unchanged.
    let w = words("the army crossed the channel quickly");
    assert_eq!(as_question(&w, false, &w.join(" "), &mut rng), w.join(" "));
    let w = words("The Royal Navy Fleet Air Arm crossed");
    assert_eq!(as_question(&w, false, &w.join(" "), &mut rng), w.join(" "));
    // A name its document repeats is its topic, not an answer.
    let w = words("the army had 7,000 men and many horses");
    assert_eq!(
        as_question(
            &w,
            false,
            "7,000 men. the army had 7,000 men and many horses",
            &mut rng
        ),
        w.join(" ")
    );
    // Any of three runs, as the generator draws; the others stay.
    let w = words("the Normans reached Sicily in 1061 with few ships");
    let drawn: std::collections::BTreeSet<String> = (0..32)
        .map(|s| as_question(&w, false, &w.join(" "), &mut SplitMix64::new(s)))
        .collect();
    let expect = [
        "when the Normans reached Sicily in with few ships?",
        "what the reached Sicily in 1061 with few ships?",
        "what the Normans reached in 1061 with few ships?",
    ];
    assert_eq!(drawn, expect.iter().map(|e| e.to_string()).collect());
    // Through for_document: the windows of Windows::Random, each as a question.
    let text = "The Normans reached Sicily in 1061 with a few ships and men. \
                Their leader Robert Guiscard took Palermo after a long siege.";
    let plain = for_document(3, "d", text, 2, 1, None, false);
    let asked = for_document(3, "d", text, 2, 1, None, true);
    for (p, q) in plain.iter().zip(&asked) {
        assert!(q.ends_with('?'), "{q}");
        let p: Vec<&str> = p.split_whitespace().collect();
        let q: Vec<&str> = q.trim_end_matches('?').split_whitespace().collect();
        // The question word, then the window's words in order less one run.
        assert!(
            q.len() < p.len() + 2 && q.len() >= p.len() - 3,
            "{p:?} {q:?}"
        );
        let body = &q[if q[0] == "how" { 2 } else { 1 }..];
        let mut it = p.iter();
        assert!(
            body.iter().all(
                |w| it.any(|x| x.trim_end_matches(|c: char| !c.is_alphanumeric())
                    == w.trim_end_matches(|c: char| !c.is_alphanumeric()))
            ),
            "{p:?} {q:?}"
        );
    }
    assert_eq!(asked, for_document(3, "d", text, 2, 1, None, true));
}

fn dataset(queries: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let corpus = "{\"_id\": \"d1\", \"text\": \"The river bank was flooded after the long storm last week. It rained.\"}\n\
                  {\"_id\": \"d2\", \"text\": \"Too short.\"}\n";
    std::fs::write(d.path().join("corpus.jsonl"), corpus).unwrap();
    std::fs::write(d.path().join("queries.jsonl"), queries).unwrap();
    std::fs::create_dir_all(d.path().join("qrels")).unwrap();
    std::fs::write(d.path().join("qrels/train.tsv"), "q1\td2\t1\n").unwrap();
    d
}

#[test]
fn pseudo_queries_join_the_training_split_with_their_document() {
    let d = dataset("{\"_id\": \"q1\", \"text\": \"why?\"}\n");
    let mut ds = Dataset::load(d.path(), &["train"], true).unwrap();
    assert_eq!(
        add_to(&mut ds, "train", 3, 1, Windows::Random, Scope::All, 42).unwrap(),
        1
    );
    let id = query_id("d1", 0);
    let q = ds.queries.text(&id).unwrap().unwrap();
    assert!(ds.corpus.text("d1").unwrap().unwrap().contains(&*q), "{q}");
    assert_eq!(ds.qrels["train"][&id].len(), 1);
    assert_eq!(ds.qrels["train"][&id]["d1"], 1);
    assert_eq!(ds.qrels["train"]["q1"]["d2"], 1);
    // A dataset whose own query ids look like ours is refused, naming the id.
    let d = dataset(
        "{\"_id\": \"q1\", \"text\": \"why?\"}\n{\"_id\": \"pseudo:d1:0\", \"text\": \"x\"}\n",
    );
    let mut ds = Dataset::load(d.path(), &["train"], true).unwrap();
    let e = add_to(&mut ds, "train", 3, 1, Windows::Random, Scope::All, 42)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`pseudo:d1:0`") && e.contains("queries.jsonl"),
        "{e}"
    );
}

#[test]
fn the_uncovered_scope_skips_documents_that_training_queries_judge_relevant() {
    let d = tempfile::tempdir().unwrap();
    let long = |id: &str| {
        format!("{{\"_id\": \"{id}\", \"text\": \"The river bank of {id} was flooded after the long storm.\"}}\n")
    };
    let corpus: String = ["d1", "d2", "d3"].iter().map(|i| long(i)).collect();
    std::fs::write(d.path().join("corpus.jsonl"), corpus).unwrap();
    std::fs::write(
        d.path().join("queries.jsonl"),
        "{\"_id\": \"q1\", \"text\": \"why?\"}\n",
    )
    .unwrap();
    std::fs::create_dir_all(d.path().join("qrels")).unwrap();
    // d1 is judged relevant; d2 is judged, but not relevant (grade 0).
    std::fs::write(d.path().join("qrels/train.tsv"), "q1\td1\t1\nq1\td2\t0\n").unwrap();
    std::fs::write(d.path().join("qrels/test.tsv"), "q1\td3\t1\n").unwrap();
    let load = |splits: &[&str]| Dataset::load(d.path(), splits, true).unwrap();
    let mut all = load(&["train"]);
    assert_eq!(
        add_to(&mut all, "train", 1, 1, Windows::Random, Scope::All, 7).unwrap(),
        3
    );
    let mut some = load(&["train"]);
    assert_eq!(
        add_to(
            &mut some,
            "train",
            1,
            1,
            Windows::Random,
            Scope::Uncovered,
            7
        )
        .unwrap(),
        2
    );
    assert!(some.queries.position(&query_id("d1", 0)).is_none());
    // The documents it keeps get the pseudo-queries of the all scope.
    for doc in ["d2", "d3"] {
        let id = query_id(doc, 0);
        assert_eq!(
            some.queries.text(&id).unwrap(),
            all.queries.text(&id).unwrap()
        );
        assert_eq!(some.qrels["train"][&id][doc], 1);
    }
    // Without the training qrels the scope cannot be decided: an error naming them.
    let mut bare = load(&["test"]);
    let e = add_to(
        &mut bare,
        "train",
        1,
        1,
        Windows::Random,
        Scope::Uncovered,
        7,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("train.tsv") && e.contains("uncovered"), "{e}");
    // Through the pipeline's dataset, a stage that loads only the evaluation split
    // sees the same pseudo-queries, and no training qrels.
    let r = crate::pipeline::config::DatasetRef {
        name: "x".into(),
        path: d.path().to_path_buf(),
        train_split: "train".into(),
        eval_split: "test".into(),
        strict: true,
        pseudo_queries: 1,
        pseudo_windows: Windows::Random,
        pseudo_scope: Scope::Uncovered,
        pseudo_per_sentence: 1,
        watch: false,
    };
    let eval = r.load(&["test"], 7).unwrap();
    assert_eq!(eval.queries.len(), some.queries.len());
    assert_eq!(eval.qrels.keys().collect::<Vec<_>>(), vec!["test"]);
}
