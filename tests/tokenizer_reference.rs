//! Ids from prep are identical to Hugging Face's Python `tokenizers` (the reference), for
//! tokenizers of every family: WordPiece (with a truncation setting prep must ignore), Unigram
//! with a metaspace, a byte-level BPE with Llama 3's split, the BPE prep trains itself, and
//! GPT-2 when `INGOT_GPT2_TOKENIZER` names its tokenizer.json (CI builds one).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use common::*;
use ingot_formats::Index;
use ingot_prep::cli::{Cli, Command as PrepCommand, TokenizerCommand};
use ingot_tokenizer::Tokenizer;

fn python_ids(python: &Path, tokenizer: &Path, docs: &Path) -> Vec<Vec<u32>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/hf_reference.py");
    let out = Command::new(python)
        .arg(script)
        .arg("encode")
        .arg(tokenizer)
        .arg(docs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python encode failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    serde_json::from_value(v["ids"].clone()).unwrap()
}

fn check(
    python: &Path,
    name: &str,
    tokenizer: &Path,
    docs: &[String],
    docs_path: &Path,
    work: &Path,
) {
    let want = python_ids(python, tokenizer, docs_path);
    assert_eq!(want.len(), docs.len());
    // Document by document first, for a readable failure.
    let ours = Tokenizer::from_file(tokenizer).unwrap();
    for (i, (doc, want)) in docs.iter().zip(&want).enumerate() {
        let got = ours.encode(doc).unwrap();
        assert!(
            got == *want,
            "{name}: document {i} differs\ntext: {doc:?}\nours:   {got:?}\npython: {want:?}"
        );
    }
    // Then the packed stream, with the BOS/EOS prep detected.
    let out = work.join(format!("ds-{name}"));
    prep_dir(
        docs_path,
        &out,
        &[
            "--block-size",
            "16",
            "--val-fraction",
            "0",
            "--tokenizer",
            path_str(tokenizer),
        ],
    )
    .unwrap();
    let index = Index::read(&out).unwrap();
    let expected = expected_stream(&want, index.bos_id, index.eos_id);
    let got = stream(&out, "train");
    assert_eq!(got.len(), expected.len() / 16 * 16);
    assert!(
        got == expected[..got.len()],
        "{name}: packed stream differs"
    );
    eprintln!(
        "{name}: {} documents, {} tokens identical to Python tokenizers (bos {:?}, eos {:?})",
        docs.len(),
        expected.len(),
        index.bos_id,
        index.eos_id
    );
}

#[test]
fn ids_match_python_tokenizers() {
    let Some(python) = python_with_tokenizers() else {
        return;
    };
    let dir = tempdir();
    let docs = documents(400);
    let docs_path = dir.path().join("docs.jsonl");
    write_jsonl(&docs_path, &docs);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/hf_reference.py");
    let made = Command::new(&python)
        .arg(&script)
        .arg("make")
        .arg(dir.path())
        .arg(&docs_path)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "python make failed: {}",
        String::from_utf8_lossy(&made.stderr)
    );

    // prep's own trainer.
    let trained = dir.path().join("trained.json");
    let cli = Cli::try_parse_from([
        "prep",
        "tokenizer",
        "train",
        "--input",
        path_str(&docs_path),
        "--vocab-size",
        "800",
        "--out",
        path_str(&trained),
    ])
    .unwrap();
    let Some(PrepCommand::Tokenizer(TokenizerCommand::Train(args))) = cli.command else {
        panic!("parsed as something else")
    };
    ingot_prep::tokenizer::train::run(&args).unwrap();

    let mut tokenizers: Vec<(String, PathBuf)> = ["wordpiece", "unigram", "llama3"]
        .iter()
        .map(|n| (n.to_string(), dir.path().join(format!("{n}.json"))))
        .collect();
    tokenizers.push(("prep-trained-bpe".into(), trained));
    match std::env::var_os("INGOT_GPT2_TOKENIZER") {
        Some(p) => tokenizers.push(("gpt2".into(), PathBuf::from(p))),
        None => eprintln!("note: INGOT_GPT2_TOKENIZER not set; the GPT-2 comparison did not run"),
    }
    for (name, path) in &tokenizers {
        check(&python, name, path, &docs, &docs_path, dir.path());
    }

    // One 3 MiB text file is one document that prep reads and tokenizes in pieces: for
    // tokenizers whose pre-tokenizer always breaks after a newline between words, the ids must
    // equal Python's for the whole text. (A metaspace that prepends to every input would not;
    // README says so.)
    let mut book = String::new();
    while book.len() < 3 << 20 {
        book.push_str(&docs.join("\n"));
        book.push('\n');
    }
    let book_path = dir.path().join("book.txt");
    std::fs::write(&book_path, &book).unwrap();
    for (name, path) in tokenizers.iter().filter(|(n, _)| n != "unigram") {
        let want = python_ids(&python, path, &book_path);
        let out = dir.path().join(format!("book-{name}"));
        prep_dir(
            &book_path,
            &out,
            &[
                "--block-size",
                "16",
                "--val-fraction",
                "0",
                "--tokenizer",
                path_str(path),
            ],
        )
        .unwrap();
        let index = Index::read(&out).unwrap();
        let expected = expected_stream(&want, index.bos_id, index.eos_id);
        let got = stream(&out, "train");
        let first_diff = got.iter().zip(&expected).position(|(a, b)| a != b);
        assert_eq!(
            first_diff, None,
            "{name}: a 3 MiB document read in pieces differs from the whole-text ids"
        );
        assert_eq!(got.len(), expected.len() / 16 * 16, "{name}");
        eprintln!("{name}: a 3 MiB single-document file, tokenized in pieces, equals the whole-text ids ({} tokens)", expected.len());
    }
}

#[test]
fn byte_tokenizer_json_matches_python_tokenizers() {
    let Some(python) = python_with_tokenizers() else {
        return;
    };
    let dir = tempdir();
    let docs = documents(50);
    let docs_path = dir.path().join("docs.jsonl");
    write_jsonl(&docs_path, &docs);
    let json = dir.path().join("byte.json");
    std::fs::write(&json, ingot_tokenizer::byte::tokenizer_json()).unwrap();
    let want = python_ids(&python, &json, &docs_path);
    for (doc, ids) in docs.iter().zip(want) {
        let bytes: Vec<u32> = doc.bytes().map(u32::from).collect();
        assert_eq!(
            ids, bytes,
            "the byte tokenizer's tokenizer.json must give byte ids in Python too"
        );
    }
}
