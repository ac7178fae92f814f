//! `prep tokenizer train`: a byte-level BPE (GPT-2 style pre-tokenization) trained with the
//! `tokenizers` crate's BPE trainer on the documents prep's readers produce, written as a
//! tokenizer.json (format 1.0) that Hugging Face `tokenizers` and `prep` both load.
//!
//! Ids 0, 1, 2 are `<s>`, `</s>` and `<pad>`; the 256 byte symbols and the merged tokens follow
//! in the order the trainer numbers them.

use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::trainers::BpeTrainerBuilder;
use tokenizers::vocab::bucket_added_vocabulary::AddedToken;
use tokenizers::Trainer;

use ingot_tokenizer::byte::{byte_alphabet, byte_level_bpe_json};
use ingot_tokenizer::Tokenizer;

use crate::cli::TrainArgs;
use crate::discover::{discover, InputFile};
use crate::readers::{read_file, ReadOptions};
use crate::records;

pub const SPECIALS: [&str; 3] = ["<s>", "</s>", "<pad>"];

/// The tokenizer.json of a byte-level BPE with GPT-2 word splitting and our special tokens.
fn tokenizer_json(vocab: &[(String, u32)], merges: &[(String, String)]) -> String {
    let specials: Vec<(&str, u32)> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, t)| (*t, i as u32))
        .collect();
    byte_level_bpe_json(vocab, merges, &specials, true)
}

/// Splits text into GPT-2 pre-tokens, each mapped to byte-level symbols.
struct PreTokenizer {
    skeleton: Tokenizer,
    alphabet: [char; 256],
}

impl PreTokenizer {
    fn new() -> Result<PreTokenizer> {
        // A merge-free byte-level BPE whose only job is to run the pre-tokenizer.
        let alphabet = byte_alphabet();
        let vocab: Vec<(String, u32)> = SPECIALS
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .chain(
                alphabet
                    .iter()
                    .enumerate()
                    .map(|(b, c)| (c.to_string(), b as u32 + 3)),
            )
            .collect();
        let skeleton = Tokenizer::from_json_bytes(tokenizer_json(&vocab, &[]).as_bytes())?;
        Ok(PreTokenizer { skeleton, alphabet })
    }

    fn words(&self, text: &str) -> Vec<String> {
        use tokenizers::pipeline::PreTokenizer as _;
        let pipeline = self
            .skeleton
            .pipeline()
            .expect("a tokenizer.json always has a pipeline");
        let mut spans = Vec::new();
        let mut scratch = tokenizers::pipeline::PreTokenizerScratch::default();
        if pipeline
            .get_pre_tokenizer()
            .pre_tokenize(text, &mut scratch, &mut spans)
            .is_err()
        {
            return Vec::new();
        }
        spans
            .iter()
            .map(|s| {
                text.as_bytes()[s.start as usize..s.end as usize]
                    .iter()
                    .map(|&b| self.alphabet[b as usize])
                    .collect()
            })
            .collect()
    }
}

/// Calls `send` with the text of every document, piece by piece, until it returns `false`,
/// and returns the number of documents. The pieces of a long document are never joined:
/// they are cut where a pre-token ends (see `readers::text::safe_cut`), so counting the words
/// of each piece gives the counts of the whole, without holding the whole document.
fn for_each_text(
    files: &[InputFile],
    options: &ReadOptions,
    consumed: &Arc<AtomicU64>,
    send: &mut dyn FnMut(String) -> bool,
) -> u64 {
    let mut docs = 0u64;
    for (i, f) in files.iter().enumerate() {
        read_file(f, i, options, consumed, &mut |chunk| {
            let mut ok = true;
            records::for_each(
                &chunk,
                &options.text_path,
                |doc| {
                    if doc.last {
                        docs += 1;
                    }
                    if ok {
                        ok = send(doc.text.into_owned());
                    }
                },
                |_| {},
            );
            ok
        });
    }
    docs
}

pub fn run(args: &TrainArgs) -> Result<String> {
    if args.vocab_size < SPECIALS.len() + 256 {
        bail!("--vocab-size {} is too small: it must hold 3 special tokens and 256 byte symbols (at least 259)", args.vocab_size);
    }
    if args.out.exists() && !args.force {
        bail!(
            "--out {} exists; pass --force to overwrite it",
            args.out.display()
        );
    }
    let found = discover(&args.input.inputs)?;
    if found.files.is_empty() {
        bail!("no input files with a supported extension under --input");
    }
    let options = ReadOptions {
        txt_unit: args.input.txt_unit,
        text_path: args.input.text_field.split('.').map(String::from).collect(),
    };
    let pre = PreTokenizer::new()?;
    if let Some(n) = args.input.threads()? {
        // The trainer counts words on rayon's global pool.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }

    // Documents stream from a reader thread into the trainer: nothing holds the corpus.
    let (tx, rx) = mpsc::sync_channel::<String>(1024);
    let consumed = Arc::new(AtomicU64::new(0));
    let files = found.files.clone();
    let reader = std::thread::spawn(move || {
        for_each_text(&files, &options, &consumed, &mut |text| {
            tx.send(text).is_ok()
        })
    });
    let specials: Vec<AddedToken> = SPECIALS
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(args.vocab_size)
        .min_frequency(args.min_frequency)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    trainer
        .feed(rx.into_iter(), |text| Ok(pre.words(text)))
        .map_err(|e| anyhow!("tokenizer training failed: {e}"))?;
    let documents = reader
        .join()
        .map_err(|_| anyhow!("the reader thread failed"))?;
    if documents == 0 {
        bail!("no documents to train on under --input (check --text-field and --txt-unit)");
    }
    let (vocab, merges, _) = trainer
        .train_vocab()
        .map_err(|e| anyhow!("tokenizer training failed: {e}"))?;
    let mut vocab: Vec<(String, u32)> = vocab.into_iter().collect();
    vocab.sort_by_key(|(_, id)| *id);
    let text = tokenizer_json(&vocab, &merges);
    // Check the result loads before writing it anywhere.
    Tokenizer::from_json_bytes(text.as_bytes())
        .context("the trained tokenizer does not load back")?;
    let tmp = args.out.with_extension("json.tmp");
    std::fs::write(&tmp, &text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    Ok(format!(
        "wrote {}: {} tokens ({} merges) from {documents} documents",
        args.out.display(),
        vocab.len(),
        merges.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::{Compression, Format};
    use crate::readers::{TxtUnit, CHUNK_BYTES};

    #[test]
    fn a_long_document_reaches_the_trainer_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.txt");
        let text = "a few words on a line\n".repeat(5 * CHUNK_BYTES / 22);
        std::fs::write(&path, &text).unwrap();
        let file = InputFile {
            path,
            name: "big.txt".into(),
            format: Format::Txt,
            compression: Compression::None,
            size: text.len() as u64,
        };
        let options = ReadOptions {
            txt_unit: TxtUnit::File,
            text_path: vec!["text".into()],
        };
        let mut texts = Vec::new();
        let docs = for_each_text(&[file], &options, &Arc::new(AtomicU64::new(0)), &mut |t| {
            texts.push(t);
            true
        });
        assert_eq!(docs, 1);
        assert!(texts.len() > 2, "{} texts", texts.len());
        assert!(texts.iter().all(|t| t.len() < 3 * CHUNK_BYTES));
        assert_eq!(texts.concat(), text);
    }
}
