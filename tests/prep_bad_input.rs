//! Bad input: each case is either skipped and counted (and named with file:line), or, with
//! `--strict` or when fatal, a one-line error with no index.json and no shards left behind.

mod common;

use std::path::Path;

use common::*;
use ingot_formats::Index;

/// A dataset directory holds a finished dataset, or nothing of ours at all.
fn assert_no_dataset(out: &Path) {
    if !out.is_dir() {
        return;
    }
    let names: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.ends_with(".bin")
            && !n.ends_with(".partial")
            && n != "index.json"
            && !n.starts_with(".prep-shuffle")),
        "left behind: {names:?}"
    );
}

fn good_lines(n: usize) -> String {
    (0..n)
        .map(|i| format!("{{\"text\": \"good document number {i}\"}}\n"))
        .collect()
}

/// Runs prep on `input` and returns the skip counts from index.json.
fn skips_of(input: &Path, out: &Path, extra: &[&str]) -> std::collections::BTreeMap<String, u64> {
    let mut args = vec!["--block-size", "8", "--val-fraction", "0"];
    args.extend_from_slice(extra);
    prep_dir(input, out, &args).unwrap();
    Index::read(out).unwrap().stats.skipped
}

#[test]
fn bad_json_records_are_skipped_and_counted_by_reason() {
    let dir = tempdir();
    let input = dir.path().join("d.jsonl");
    let body = format!(
        "{}{{\"text\": broken\n{{\"body\": \"no text field\"}}\n{{\"text\": 12}}\n{{\"text\": \"\"}}\n[1, 2]\n{}",
        good_lines(5),
        good_lines(5)
    );
    std::fs::write(&input, body).unwrap();
    let skipped = skips_of(&input, &dir.path().join("o"), &[]);
    assert_eq!(skipped.get("malformed_json"), Some(&1));
    assert_eq!(skipped.get("missing_text_field"), Some(&2)); // the object without it and the array
    assert_eq!(skipped.get("non_string_text_field"), Some(&1));
    assert_eq!(skipped.get("empty_text"), Some(&1));
    let index = Index::read(&dir.path().join("o")).unwrap();
    assert_eq!(index.stats.documents, 10);
    assert_eq!(index.stats.sources[0].skipped, 5);
}

#[test]
fn strict_stops_at_the_first_bad_record_naming_file_and_line() {
    let dir = tempdir();
    let input = dir.path().join("d.jsonl");
    // Enough good data before the bad line that shards are already being written.
    std::fs::write(
        &input,
        format!(
            "{}{{\"text\": broken\n{}",
            good_lines(20000),
            good_lines(10)
        ),
    )
    .unwrap();
    let out = dir.path().join("o");
    let err = prep_dir(
        &input,
        &out,
        &["--block-size", "8", "--strict", "--shard-size", "4KiB"],
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("d.jsonl:20001:"), "{msg}");
    assert!(msg.contains("malformed JSON"), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert_no_dataset(&out);
}

#[test]
fn invalid_utf8_in_text_files() {
    let dir = tempdir();
    let lines = dir.path().join("lines.txt");
    std::fs::write(&lines, b"fine line\nbad \xff\xfe line\nanother fine line\n").unwrap();
    let skipped = skips_of(&lines, &dir.path().join("o1"), &["--txt-unit", "line"]);
    assert_eq!(skipped.get("invalid_utf8"), Some(&1));
    assert_eq!(
        Index::read(&dir.path().join("o1")).unwrap().stats.documents,
        2
    );

    // As a whole-file document, the file is the record that is skipped.
    let corpus = dir.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    std::fs::write(corpus.join("a.txt"), "a good file with enough text").unwrap();
    std::fs::write(corpus.join("b.txt"), b"bad \xc3\x28 file").unwrap();
    let skipped = skips_of(&corpus, &dir.path().join("o2"), &[]);
    assert_eq!(skipped.get("invalid_utf8"), Some(&1));
    assert_eq!(
        Index::read(&dir.path().join("o2")).unwrap().stats.documents,
        1
    );

    let err = prep_dir(
        &corpus,
        &dir.path().join("o3"),
        &["--block-size", "8", "--strict"],
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("b.txt:1: invalid UTF-8"),
        "{err:#}"
    );
}

#[test]
fn truncated_gz_and_zst_keep_what_was_read_and_count_the_rest() {
    let dir = tempdir();
    let text = good_lines(20000);
    for (name, mut bytes) in [
        ("t.jsonl.gz", gzip(text.as_bytes())),
        ("t.jsonl.zst", zstd(text.as_bytes())),
    ] {
        bytes.truncate(bytes.len() / 2);
        let input = dir.path().join(name);
        std::fs::write(&input, bytes).unwrap();
        let out = dir.path().join(format!("o-{name}"));
        let skipped = skips_of(&input, &out, &[]);
        assert_eq!(skipped.get("truncated_compressed"), Some(&1), "{name}");
        let docs = Index::read(&out).unwrap().stats.documents;
        assert!(docs > 1000 && docs < 20000, "{name}: {docs} documents kept");
        let err = prep_dir(
            &input,
            &dir.path().join(format!("s-{name}")),
            &["--block-size", "8", "--strict"],
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains(name), "{err:#}");
        assert_no_dataset(&dir.path().join(format!("s-{name}")));
    }
}

#[test]
fn corrupt_parquet_and_missing_or_null_columns() {
    let dir = tempdir();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    let docs = documents(30);
    let values: Vec<Option<&str>> = docs.iter().map(|d| Some(d.as_str())).collect();
    write_parquet(&corpus.join("a.parquet"), "text", &values);
    // Garbage with a parquet name.
    std::fs::write(
        corpus.join("b.parquet"),
        b"PAR1 this is not really parquet PAR1",
    )
    .unwrap();
    // A real parquet file whose column has another name: all 3 rows are skipped.
    write_parquet(
        &corpus.join("c.parquet"),
        "content",
        &[Some("x"), Some("y"), Some("z")],
    );
    // Nulls in the text column.
    write_parquet(
        &corpus.join("d.parquet"),
        "text",
        &[Some("kept row"), None, Some("kept too")],
    );
    // A truncated copy of a good file.
    let good = std::fs::read(corpus.join("a.parquet")).unwrap();
    std::fs::write(corpus.join("e.parquet"), &good[..good.len() - 100]).unwrap();
    let skipped = skips_of(&corpus, &dir.path().join("o"), &[]);
    assert_eq!(skipped.get("corrupt_parquet"), Some(&2), "{skipped:?}");
    assert_eq!(
        skipped.get("missing_text_field"),
        Some(&(3 + 1)),
        "{skipped:?}"
    );
    assert_eq!(
        Index::read(&dir.path().join("o")).unwrap().stats.documents,
        docs.len() as u64 + 2
    );
}

#[test]
fn unreadable_and_vanished_files_are_counted() {
    let dir = tempdir();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    std::fs::write(corpus.join("a.jsonl"), good_lines(10)).unwrap();
    // A link to a file that is not there, as when a file vanishes during a run.
    std::os::unix::fs::symlink(dir.path().join("gone.jsonl"), corpus.join("b.jsonl")).unwrap();
    let skipped = skips_of(&corpus, &dir.path().join("o"), &[]);
    assert_eq!(skipped.get("unreadable_file"), Some(&1));
    let err = prep_dir(
        &corpus,
        &dir.path().join("s"),
        &["--block-size", "8", "--strict"],
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("b.jsonl"), "{err:#}");
}

fn fatal(input: &Path, out: &Path, extra: &[&str]) -> String {
    let err = prep_dir(input, out, extra).unwrap_err();
    assert_no_dataset(out);
    let msg = format!("{err:#}");
    assert!(!msg.contains('\n'), "one line: {msg}");
    msg
}

#[test]
fn fatal_problems_are_one_line_errors_with_nothing_written() {
    let dir = tempdir();
    let input = dir.path().join("d.jsonl");
    std::fs::write(&input, good_lines(100)).unwrap();
    let out = dir.path().join("o");

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("notes.md"), "x").unwrap();
    assert!(fatal(&empty, &out, &["--block-size", "8"]).contains("no input files"));

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"x\": 1}\nnot json\n").unwrap();
    assert!(fatal(&bad, &out, &["--block-size", "8"]).contains("nothing to pack"));

    // Not one block: the advice is the block size, with or without a val split (the
    // --val-fraction 0 advice of a one-block corpus would not help here).
    for val in ["0.005", "0"] {
        let args = ["--block-size", "100000", "--val-fraction", val];
        let msg = fatal(&input, &out, &args);
        assert!(
            msg.contains("smaller than one block") && !msg.contains("--val-fraction 0"),
            "{msg}"
        );
    }
    assert!(fatal(&input, &out, &["--block-size", "0"]).contains("--block-size must be at least 1"));
    assert!(fatal(&input, &out, &["--block-size", "16777217"]).contains("at most 16777216"));
    assert!(
        fatal(&input, &out, &["--block-size", "8", "--threads", "1025"]).contains("at most 1024")
    );
    assert!(fatal(
        &input,
        &out,
        &["--block-size", "8", "--threads", &usize::MAX.to_string()]
    )
    .contains("--threads"));
    assert!(fatal(&input, &out, &["--block-size", "8", "--threads", "0"]).contains("--threads"));
    assert!(fatal(
        &input,
        &out,
        &[
            "--block-size",
            "8",
            "--tokenizer",
            "/no/such/tokenizer.json"
        ]
    )
    .contains("/no/such/tokenizer.json"));
    assert!(fatal(&dir.path().join("missing"), &out, &["--block-size", "8"]).contains("missing"));

    let not_json = dir.path().join("tok.json");
    std::fs::write(&not_json, "{ this is not a tokenizer").unwrap();
    assert!(fatal(
        &input,
        &out,
        &[
            "--block-size",
            "8",
            "--tokenizer",
            not_json.to_str().unwrap()
        ]
    )
    .contains("tok.json"));

    // --out holds something and --force was not given.
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("precious.txt"), "keep").unwrap();
    assert!(fatal(&input, &out, &["--block-size", "8"]).contains("--force"));
    assert_eq!(
        std::fs::read_to_string(out.join("precious.txt")).unwrap(),
        "keep"
    );

    // --out is a file.
    let file = dir.path().join("afile");
    std::fs::write(&file, "x").unwrap();
    assert!(fatal(&input, &file, &["--block-size", "8"]).contains("afile"));
}

#[test]
fn a_failure_after_the_last_shard_leaves_no_shard_behind() {
    // Two documents of 41 tokens fill one block of 64. Alone in its group, that block goes to
    // val, so the val split has a shard and the train split none: the build fails after both
    // splits' last shards were finished.
    let dir = tempdir();
    let input = dir.path().join("d.jsonl");
    let docs: Vec<String> = (0..2)
        .map(|i| format!("document number {i} with some words in it"))
        .collect();
    write_jsonl(&input, &docs);
    let out = dir.path().join("o");
    let msg = fatal(
        &input,
        &out,
        &["--block-size", "64", "--val-fraction", "0.95"],
    );
    assert!(
        msg.contains("its 82 tokens fill 1 block(s) of --block-size 64")
            && msg.contains("use --val-fraction 0 for no val split, a --block-size of at most 41"),
        "{msg}"
    );
    assert!(!out.exists(), "the output directory is removed");

    // Into an existing directory: only our files go, the directory and other files stay.
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "keep").unwrap();
    let msg = fatal(
        &input,
        &out,
        &["--block-size", "64", "--val-fraction", "0.95", "--force"],
    );
    assert!(msg.contains("too small for a val split"), "{msg}");
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["notes.txt"]);
}

/// A WordLevel tokenizer whose `unk_token` is not in its vocabulary: it fails on any word but
/// `a`, `b` and `END`.
fn wordlevel_failing_on_unknown_words(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("wl.json");
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1, "END": 2}, "unk_token": "[UNK]"}
    });
    std::fs::write(&path, json.to_string()).unwrap();
    path
}

#[test]
fn a_tokenizer_error_in_one_piece_of_a_long_document_leaves_out_that_piece() {
    let dir = tempdir();
    let tok = wordlevel_failing_on_unknown_words(dir.path());
    let corpus = dir.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    let lines = "a b\n".repeat((3 << 20) / 4);
    // The unknown word in the first piece (which opens the document), in the last piece
    // (which closes it), and a short document after them.
    std::fs::write(corpus.join("1.txt"), format!("a\nzzz\n{lines}")).unwrap();
    std::fs::write(corpus.join("2.txt"), format!("{lines}zzz")).unwrap();
    std::fs::write(corpus.join("3.txt"), "a b a").unwrap();
    let out = dir.path().join("o");
    let args = [
        "--block-size",
        "1",
        "--val-fraction",
        "0",
        "--no-bos",
        "--eos",
        "END",
        "--tokenizer",
        path_str(&tok),
    ];
    prep_dir(&corpus, &out, &args).unwrap();
    let index = Index::read(&out).unwrap();
    assert_eq!(index.stats.skipped.get("tokenizer_error"), Some(&2));
    assert_eq!(index.stats.documents, 3);
    let stream = stream(&out, "train");
    // Every document is closed by its EOS, and the last one is whole.
    assert_eq!(stream.iter().filter(|&&t| t == 2).count(), 3);
    assert!(
        stream.ends_with(&[2, 0, 1, 0, 2]),
        "{:?}",
        &stream[stream.len() - 5..]
    );
    // Each document lost one piece: document 1 its first (at least the first mebibyte, which
    // decides the split), document 2 only its short last one.
    let words = 2 * lines.len() / 4;
    let first_eos = stream.iter().position(|&t| t == 2).unwrap();
    let doc2 = stream[first_eos + 1..]
        .iter()
        .position(|&t| t == 2)
        .unwrap();
    assert!(first_eos + 500_000 < words, "{first_eos} of {words}");
    assert!(doc2 < words && doc2 + 1000 > words, "{doc2} of {words}");

    // With --strict the first failure stops the run, naming the file.
    let err = prep_dir(
        &corpus,
        &dir.path().join("s"),
        &[&args[..], &["--strict"]].concat(),
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("1.txt:1: tokenizer failed"),
        "{err:#}"
    );
}

#[test]
fn a_line_longer_than_64_mib_is_skipped_and_counted() {
    let dir = tempdir();
    let input = dir.path().join("big.txt");
    let mut bytes = b"the first line\n".to_vec();
    bytes.resize(bytes.len() + (70 << 20), b'x');
    bytes.extend_from_slice(b"\nthe line after it\n");
    std::fs::write(&input, bytes).unwrap();
    let skipped = skips_of(&input, &dir.path().join("o"), &["--txt-unit", "line"]);
    assert_eq!(skipped.get("record_too_large"), Some(&1));
    let index = Index::read(&dir.path().join("o")).unwrap();
    assert_eq!(index.stats.documents, 2);
    assert_eq!(
        index.stats.bytes,
        ("the first line".len() + "the line after it".len()) as u64
    );
    let err = prep_dir(
        &input,
        &dir.path().join("s"),
        &["--block-size", "8", "--txt-unit", "line", "--strict"],
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("big.txt:2: record longer than 64 MiB"),
        "{msg}"
    );
    assert!(msg.contains("record_too_large"), "{msg}");
}

#[test]
fn a_directory_link_cycle_is_read_once() {
    let dir = tempdir();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(corpus.join("sub")).unwrap();
    std::fs::write(corpus.join("sub/a.jsonl"), good_lines(10)).unwrap();
    std::os::unix::fs::symlink(".", corpus.join("sub/loop")).unwrap();
    let skipped = skips_of(&corpus, &dir.path().join("o"), &[]);
    assert!(skipped.is_empty(), "{skipped:?}");
    let index = Index::read(&dir.path().join("o")).unwrap();
    assert_eq!(index.stats.documents, 10);
    assert_eq!(index.stats.sources.len(), 1);
}

#[test]
fn a_subdirectory_that_cannot_be_listed_is_counted() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(corpus.join("locked")).unwrap();
    std::fs::write(corpus.join("a.jsonl"), good_lines(10)).unwrap();
    std::fs::write(corpus.join("locked/b.jsonl"), good_lines(10)).unwrap();
    let locked = corpus.join("locked");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read_dir(&locked).is_ok() {
        // Running as root: permissions do not stop listing. `discover`'s unit tests cover
        // a directory that cannot be listed.
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
        eprintln!("SKIPPED: permissions do not apply to this user");
        return;
    }
    let skipped = skips_of(&corpus, &dir.path().join("o"), &[]);
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(skipped.get("unreadable_file"), Some(&1));
    assert_eq!(
        Index::read(&dir.path().join("o")).unwrap().stats.documents,
        10
    );
}
