//! A deterministic generator of English-like documents.
//!
//! Sentences come from a small grammar over fixed word lists; documents are a few paragraphs.
//! The text is varied enough for a BPE tokenizer to learn merges and for a language model to
//! learn something, and it is the same on every machine for a given seed.

use std::fmt::Write;

/// SplitMix64: tiny, well-distributed, and fully specified here, so the corpus never changes
/// because a dependency did.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const NAMES: &[&str] = &[
    "Ada", "Brin", "Cato", "Dara", "Eli", "Fenna", "Goran", "Hale", "Iris", "Joss", "Kira", "Lio",
    "Mara", "Nils", "Orla", "Pavel", "Quin", "Runa", "Sol", "Tamsin",
];
const ADJECTIVES: &[&str] = &[
    "small", "quiet", "bright", "old", "curious", "patient", "brave", "tired", "clever", "gentle",
    "heavy", "narrow", "golden", "distant", "careful", "sudden", "warm", "cold", "hidden",
    "simple",
];
const NOUNS: &[&str] = &[
    "river", "lantern", "garden", "engine", "harbor", "library", "mountain", "kettle", "letter",
    "window", "bridge", "forest", "market", "compass", "village", "machine", "orchard", "station",
    "tower", "notebook", "boat", "field", "clock", "storm",
];
const VERBS: &[&str] = &[
    "found",
    "carried",
    "repaired",
    "painted",
    "followed",
    "opened",
    "counted",
    "watched",
    "measured",
    "borrowed",
    "built",
    "cleaned",
    "crossed",
    "described",
    "remembered",
    "weighed",
];
const ADVERBS: &[&str] = &[
    "slowly",
    "again",
    "carefully",
    "at dawn",
    "before supper",
    "without a word",
    "twice",
    "in the rain",
    "by lantern light",
    "after school",
];
const CONNECTIVES: &[&str] = &[
    "because", "although", "while", "after", "before", "so that", "until",
];

fn noun_phrase(rng: &mut Rng, out: &mut String) {
    let article = if rng.below(3) == 0 { "a" } else { "the" };
    if rng.below(2) == 0 {
        let _ = write!(
            out,
            "{article} {} {}",
            rng.pick(ADJECTIVES),
            rng.pick(NOUNS)
        );
    } else {
        let _ = write!(out, "{article} {}", rng.pick(NOUNS));
    }
}

fn clause(rng: &mut Rng, out: &mut String) {
    out.push_str(rng.pick(NAMES));
    out.push(' ');
    out.push_str(rng.pick(VERBS));
    out.push(' ');
    noun_phrase(rng, out);
    if rng.below(2) == 0 {
        out.push(' ');
        out.push_str(rng.pick(ADVERBS));
    }
}

/// One sentence, capitalised and punctuated.
pub fn sentence(rng: &mut Rng, out: &mut String) {
    let start = out.len();
    match rng.below(6) {
        0 => {
            let _ = write!(out, "{} ", capitalise(rng.pick(CONNECTIVES)));
            clause(rng, out);
            out.push_str(", ");
            clause(rng, out);
            out.push('.');
        }
        1 => {
            let _ = write!(out, "Did {} see ", rng.pick(NAMES));
            noun_phrase(rng, out);
            out.push('?');
        }
        2 => {
            clause(rng, out);
            let _ = write!(out, " and counted {} of them.", 2 + rng.below(97));
        }
        _ => {
            clause(rng, out);
            out.push('.');
        }
    }
    // Capitalise the first letter (names already are; articles are not).
    if let Some(first) = out[start..].chars().next() {
        if first.is_ascii_lowercase() {
            out.replace_range(start..start + 1, &first.to_ascii_uppercase().to_string());
        }
    }
}

fn capitalise(word: &str) -> String {
    let mut c = word.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// One document: a title line and 1–4 paragraphs of 2–6 sentences, paragraphs separated by a
/// blank line.
pub fn document(rng: &mut Rng) -> String {
    let mut out = String::new();
    out.push_str("The ");
    out.push_str(&capitalise(rng.pick(NOUNS)));
    out.push_str(" of ");
    out.push_str(rng.pick(NAMES));
    out.push_str("\n\n");
    let paragraphs = 1 + rng.below(4);
    for p in 0..paragraphs {
        if p > 0 {
            out.push_str("\n\n");
        }
        let sentences = 2 + rng.below(5);
        for s in 0..sentences {
            if s > 0 {
                out.push(' ');
            }
            sentence(rng, &mut out);
        }
    }
    out
}

/// `n` documents from `seed`.
pub fn documents(seed: u64, n: usize) -> Vec<String> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| document(&mut rng)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_text_other_seed_other_text() {
        assert_eq!(documents(7, 5), documents(7, 5));
        assert_ne!(documents(7, 5), documents(8, 5));
    }

    #[test]
    fn documents_look_like_prose() {
        for doc in documents(1, 50) {
            assert!(doc.starts_with("The "));
            assert!(doc.contains("\n\n"));
            assert!(doc.ends_with('.') || doc.ends_with('?'), "{doc:?}");
        }
    }
}
