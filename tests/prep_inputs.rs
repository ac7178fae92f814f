//! Every input format and compression gives the stream the documents predict; the output is
//! byte-identical for any thread count; BOS/EOS and the val split follow their rules.

mod common;

use common::*;
use ingot_formats::Index;

const BOS: u32 = 256;
const EOS: u32 = 257;

fn byte_ids(docs: &[String]) -> Vec<Vec<u32>> {
    docs.iter()
        .map(|d| d.bytes().map(u32::from).collect())
        .collect()
}

/// The train stream must be the expected stream cut to whole blocks.
fn assert_packed(out: &std::path::Path, expected: &[u32], block: usize) {
    let got = stream(out, "train");
    let whole = expected.len() / block * block;
    assert_eq!(got.len(), whole, "stream length");
    assert!(
        got == expected[..whole],
        "stream differs from the documents"
    );
    let index = Index::read(out).unwrap();
    assert_eq!(
        index.splits.train.tokens_dropped as usize,
        expected.len() - whole
    );
}

#[test]
fn jsonl_plain_gz_and_zst_give_the_documents_in_order() {
    let docs = documents(300);
    let expected = expected_stream(&byte_ids(&docs), Some(BOS), Some(EOS));
    let dir = tempdir();
    let mut jsonl = Vec::new();
    for d in &docs {
        jsonl.extend_from_slice(serde_json::json!({ "text": d }).to_string().as_bytes());
        jsonl.push(b'\n');
    }
    for (name, bytes) in [
        ("c.jsonl", jsonl.clone()),
        ("c.jsonl.gz", gzip(&jsonl)),
        ("c.json.zst", zstd(&jsonl)),
    ] {
        let input = dir.path().join(name);
        std::fs::write(&input, bytes).unwrap();
        let out = dir.path().join(format!("out-{name}"));
        let s = prep_dir(
            &input,
            &out,
            &["--block-size", "128", "--val-fraction", "0"],
        )
        .unwrap();
        assert_eq!(s.documents, docs.len() as u64, "{name}");
        assert_packed(&out, &expected, 128);
    }
}

#[test]
fn txt_units_file_paragraph_and_line() {
    let dir = tempdir();
    let text = "First para line one\nline two\n\nSecond para\n\n\nThird\n";
    let input = dir.path().join("a.txt");
    std::fs::write(&input, text).unwrap();
    let cases: [(&str, Vec<&str>); 3] = [
        ("file", vec![text]),
        (
            "paragraph",
            vec!["First para line one\nline two", "Second para", "Third"],
        ),
        (
            "line",
            vec!["First para line one", "line two", "Second para", "Third"],
        ),
    ];
    for (unit, docs) in cases {
        let docs: Vec<String> = docs.into_iter().map(String::from).collect();
        let out = dir.path().join(format!("out-{unit}"));
        prep_dir(
            &input,
            &out,
            &[
                "--block-size",
                "4",
                "--val-fraction",
                "0",
                "--txt-unit",
                unit,
            ],
        )
        .unwrap();
        assert_packed(
            &out,
            &expected_stream(&byte_ids(&docs), Some(BOS), Some(EOS)),
            4,
        );
    }
}

#[test]
fn compressed_txt_and_a_large_file_document_in_pieces() {
    // A 3 MiB single document is read in pieces; the stream must still be the whole text.
    let dir = tempdir();
    let mut big = String::new();
    let mut i = 0;
    while big.len() < 3 << 20 {
        big.push_str(&format!("Line {i} of a long book.\n"));
        i += 1;
    }
    let expected = expected_stream(&byte_ids(std::slice::from_ref(&big)), Some(BOS), Some(EOS));
    for (name, bytes) in [
        ("big.txt", big.clone().into_bytes()),
        ("big.txt.gz", gzip(big.as_bytes())),
        ("big.txt.zst", zstd(big.as_bytes())),
    ] {
        let input = dir.path().join(name);
        std::fs::write(&input, bytes).unwrap();
        let out = dir.path().join(format!("out-{name}"));
        let s = prep_dir(
            &input,
            &out,
            &["--block-size", "1000", "--val-fraction", "0"],
        )
        .unwrap();
        assert_eq!(s.documents, 1);
        assert_packed(&out, &expected, 1000);
    }
}

#[test]
fn parquet_top_level_and_nested_columns() {
    let docs = documents(2500); // more than one row group
    let expected = expected_stream(&byte_ids(&docs), Some(BOS), Some(EOS));
    let dir = tempdir();
    let values: Vec<Option<&str>> = docs.iter().map(|d| Some(d.as_str())).collect();
    let flat = dir.path().join("flat.parquet");
    write_parquet(&flat, "text", &values);
    prep_dir(
        &flat,
        &dir.path().join("o1"),
        &["--block-size", "64", "--val-fraction", "0"],
    )
    .unwrap();
    assert_packed(&dir.path().join("o1"), &expected, 64);

    let nested = dir.path().join("nested.parquet");
    write_parquet(&nested, "meta.body", &values);
    prep_dir(
        &nested,
        &dir.path().join("o2"),
        &[
            "--block-size",
            "64",
            "--val-fraction",
            "0",
            "--text-field",
            "meta.body",
        ],
    )
    .unwrap();
    assert_packed(&dir.path().join("o2"), &expected, 64);
}

#[test]
fn nested_jsonl_field_and_directory_order() {
    let dir = tempdir();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(corpus.join("sub")).unwrap();
    // Files are read in sorted path order whatever order they were created in.
    std::fs::write(
        corpus.join("sub/z.jsonl"),
        "{\"meta\": {\"t\": \"third\"}}\n",
    )
    .unwrap();
    std::fs::write(corpus.join("b.jsonl"), "{\"meta\": {\"t\": \"second\"}}\n").unwrap();
    std::fs::write(
        corpus.join("a.jsonl"),
        "{\"meta\": {\"t\": \"first\"}, \"x\": [1, {\"y\": 2}]}\n",
    )
    .unwrap();
    std::fs::write(corpus.join("README.md"), "not a corpus file").unwrap();
    let out = dir.path().join("out");
    let s = prep_dir(
        &corpus,
        &out,
        &[
            "--block-size",
            "2",
            "--val-fraction",
            "0",
            "--text-field",
            "meta.t",
        ],
    )
    .unwrap();
    assert_eq!(s.skipped.get("unsupported_extension"), Some(&1));
    let docs: Vec<String> = ["first", "second", "third"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_packed(
        &out,
        &expected_stream(&byte_ids(&docs), Some(BOS), Some(EOS)),
        2,
    );
    let index = Index::read(&out).unwrap();
    let names: Vec<&str> = index
        .stats
        .sources
        .iter()
        .map(|s| s.file.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(names, ["a.jsonl", "b.jsonl", "z.jsonl"]);
}

#[test]
fn output_is_byte_identical_for_any_thread_count() {
    let dir = tempdir();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    // Several files of several kinds, enough data for many chunks per file.
    let docs = documents(4000);
    write_jsonl(&corpus.join("a.jsonl"), &docs[..2000]);
    std::fs::write(
        corpus.join("b.txt.zst"),
        zstd(docs[2000..].join("\n\n").as_bytes()),
    )
    .unwrap();
    std::fs::write(corpus.join("c.txt"), docs.join("\n")).unwrap();
    for extra in [&[][..], &["--shuffle-docs", "--seed", "7"][..]] {
        let mut runs = Vec::new();
        for threads in ["1", "2", "5"] {
            let out = dir.path().join(format!("out-{threads}-{}", extra.len()));
            let mut args = vec![
                "--block-size",
                "256",
                "--threads",
                threads,
                "--txt-unit",
                "paragraph",
                "--val-fraction",
                "0.1",
                "--shard-size",
                "64KiB",
            ];
            args.extend_from_slice(extra);
            prep_dir(&corpus, &out, &args).unwrap();
            runs.push(files(&out));
        }
        assert!(runs[0].len() > 4, "expected several shards");
        assert!(
            runs[0] == runs[1] && runs[1] == runs[2],
            "outputs differ between thread counts ({extra:?})"
        );
    }
}

#[test]
fn shuffle_permutes_whole_documents_and_depends_on_the_seed() {
    let dir = tempdir();
    let docs: Vec<String> = (0..200).map(|i| format!("doc number {i}")).collect();
    let input = dir.path().join("d.jsonl");
    write_jsonl(&input, &docs);
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut args = vec!["--block-size", "1", "--val-fraction", "0"];
        args.extend_from_slice(extra);
        prep_dir(&input, &out, &args).unwrap();
        // Split the stream back into documents at EOS.
        let s = stream(&out, "train");
        s.split(|&t| t == EOS)
            .filter(|d| !d.is_empty())
            .map(|d| String::from_utf8(d[1..].iter().map(|&b| b as u8).collect()).unwrap())
            .collect::<Vec<_>>()
    };
    let plain = run("plain", &[]);
    let a = run("a", &["--shuffle-docs", "--seed", "1"]);
    let b = run("b", &["--shuffle-docs", "--seed", "2"]);
    assert_eq!(plain, docs);
    assert_ne!(a, docs);
    assert_ne!(a, b);
    let mut sorted = a.clone();
    sorted.sort();
    let mut want = docs.clone();
    want.sort();
    assert_eq!(
        sorted, want,
        "shuffle must keep every document exactly once"
    );
    assert_eq!(a, run("a2", &["--shuffle-docs", "--seed", "1"]));
}

#[test]
fn bos_eos_flags() {
    let dir = tempdir();
    let input = dir.path().join("d.jsonl");
    let docs: Vec<String> = vec!["ab".into(), "cd".into()];
    write_jsonl(&input, &docs);
    let ids = byte_ids(&docs);
    let cases: [(&[&str], Option<u32>, Option<u32>); 4] = [
        (&[], Some(BOS), Some(EOS)),
        (&["--no-bos"], None, Some(EOS)),
        (&["--no-eos", "--bos", "</s>"], Some(EOS), None),
        (&["--eos", "<pad>"], Some(BOS), Some(258)),
    ];
    for (i, (flags, bos, eos)) in cases.into_iter().enumerate() {
        let out = dir.path().join(format!("o{i}"));
        let mut args = vec!["--block-size", "1", "--val-fraction", "0"];
        args.extend_from_slice(flags);
        prep_dir(&input, &out, &args).unwrap();
        assert_eq!(
            stream(&out, "train"),
            expected_stream(&ids, bos, eos),
            "{flags:?}"
        );
        let index = Index::read(&out).unwrap();
        assert_eq!((index.bos_id, index.eos_id), (bos, eos));
    }
    let err = prep_dir(
        &input,
        &dir.path().join("bad"),
        &["--block-size", "1", "--bos", "<nope>"],
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("--bos \"<nope>\""), "{err:#}");
}

/// A WordLevel tokenizer.json with no special tokens at all.
fn wordlevel_without_specials(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("wl.json");
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"hello": 0, "world": 1, "[UNK]": 2, "END": 3}, "unk_token": "[UNK]"}
    });
    std::fs::write(&path, json.to_string()).unwrap();
    path
}

#[test]
fn a_tokenizer_without_bos_or_eos_needs_the_flags() {
    let dir = tempdir();
    let tok = wordlevel_without_specials(dir.path());
    let input = dir.path().join("d.jsonl");
    write_jsonl(&input, &["hello world".into(), "world hello hello".into()]);
    let base = [
        "--block-size",
        "2",
        "--val-fraction",
        "0",
        "--tokenizer",
        path_str(&tok),
    ];
    let err = prep_dir(&input, &dir.path().join("o1"), &base).unwrap_err();
    let msg = format!("{err:#}");
    for flag in ["--bos", "--eos", "--no-bos", "--no-eos"] {
        assert!(msg.contains(flag), "message should name {flag}: {msg}");
    }
    assert!(
        !dir.path().join("o1").exists(),
        "a failed run leaves no output directory"
    );
    let mut args = base.to_vec();
    args.extend_from_slice(&["--eos", "END", "--no-bos"]);
    prep_dir(&input, &dir.path().join("o2"), &args).unwrap();
    assert_eq!(
        stream(&dir.path().join("o2"), "train"),
        vec![0, 1, 3, 1, 0, 0, 3][..6].to_vec()
    );
    let mut args = base.to_vec();
    args.extend_from_slice(&["--no-eos", "--no-bos"]);
    prep_dir(&input, &dir.path().join("o3"), &args).unwrap();
    assert_eq!(stream(&dir.path().join("o3"), "train"), vec![0, 1, 1, 0]);
}

/// The val blocks (in order) and the train blocks (sorted) that the group rule picks from a
/// stream of blocks: groups of `group`, the lowest XXH3-64 of the block's uint16 bytes in each
/// (the earlier on a tie), and a last short group only from half a group or when alone.
fn split_by_groups(stream: &[u32], block: usize, group: usize) -> (Vec<u32>, Vec<Vec<u32>>) {
    let blocks: Vec<&[u32]> = stream.chunks_exact(block).collect();
    let hash = |b: &[u32]| {
        let bytes: Vec<u8> = b.iter().flat_map(|&t| (t as u16).to_le_bytes()).collect();
        xxhash_rust::xxh3::xxh3_64(&bytes)
    };
    let groups: Vec<&[&[u32]]> = blocks.chunks(group).collect();
    let mut val = Vec::new();
    let mut train = Vec::new();
    for g in &groups {
        let chosen = (g.len() == group || 2 * g.len() >= group || groups.len() == 1)
            .then(|| (0..g.len()).min_by_key(|&i| hash(g[i])).unwrap());
        for (i, b) in g.iter().enumerate() {
            if Some(i) == chosen {
                val.extend_from_slice(b);
            } else {
                train.push(b.to_vec());
            }
        }
    }
    train.sort();
    (val, train)
}

fn sorted_blocks(stream: &[u32], block: usize) -> Vec<Vec<u32>> {
    let mut blocks: Vec<Vec<u32>> = stream.chunks_exact(block).map(|b| b.to_vec()).collect();
    blocks.sort();
    blocks
}

#[test]
fn val_takes_the_lowest_hash_block_of_every_group() {
    let dir = tempdir();
    let docs: Vec<String> = (0..2000).map(|i| format!("document {i}")).collect();
    let input = dir.path().join("d.jsonl");
    write_jsonl(&input, &docs);
    let build = |name: &str, fraction: &str| {
        let out = dir.path().join(name);
        prep_dir(
            &input,
            &out,
            &["--block-size", "16", "--val-fraction", fraction],
        )
        .unwrap();
        out
    };
    // With no val split, train is the whole stream in order.
    let all = build("all", "0");
    let index = Index::read(&all).unwrap();
    assert_eq!(
        (index.splits.val.blocks, index.splits.val.shards.len()),
        (0, 0)
    );
    let whole = stream(&all, "train");

    // Groups of 4: every block lands in exactly one split, val's are the groups' lowest.
    let out = build("quarter", "0.25");
    let (want_val, want_train) = split_by_groups(&whole, 16, 4);
    let val = stream(&out, "val");
    assert!(val == want_val, "val is not the groups' lowest blocks");
    let train = sorted_blocks(&stream(&out, "train"), 16);
    assert!(train == want_train, "train is not the other blocks");
    let index = Index::read(&out).unwrap();
    let blocks = (whole.len() / 16) as u64;
    assert_eq!(index.splits.train.blocks + index.splits.val.blocks, blocks);
    assert_eq!(
        index.splits.val.blocks,
        blocks / 4 + u64::from(blocks % 4 >= 2)
    );
    // A document counts in the split of the block holding its first token, its BOS.
    let bos_in_val = val.iter().filter(|&&t| t == BOS).count() as u64;
    assert_eq!(index.splits.val.documents, bos_in_val);
    assert_eq!(index.splits.train.documents + bos_in_val, 2000);
    assert_eq!(index.splits.val.tokens_dropped, 0);
    assert_eq!(
        index.splits.train.tokens_dropped,
        index.stats.tokens - 16 * blocks
    );
}

/// 43 text files of about 200 KB, each one document (`--txt-unit file`, the default).
fn few_large_files(dir: &std::path::Path) -> std::path::PathBuf {
    let corpus = dir.join("books");
    std::fs::create_dir_all(&corpus).unwrap();
    let docs = ingot::corpus::documents(43, 43 * 450);
    for (i, book) in docs.chunks(450).enumerate() {
        std::fs::write(corpus.join(format!("book-{i:02}.txt")), book.join("\n\n")).unwrap();
    }
    corpus
}

#[test]
fn a_corpus_of_few_large_files_gets_a_val_split_of_its_share() {
    // Split by documents, 43 documents at the default 0.005 would most likely give no val at
    // all. Split by blocks, val holds about 0.5% of the tokens whatever the documents.
    let dir = tempdir();
    let corpus = few_large_files(dir.path());
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut args = vec!["--block-size", "1024", "--shard-size", "1MiB"];
        args.extend_from_slice(extra);
        prep_dir(&corpus, &out, &args).unwrap();
        out
    };
    let one = run("t1", &["--threads", "1"]);
    let index = Index::read(&one).unwrap();
    assert_eq!(index.stats.documents, 43);
    let (train, val) = (&index.splits.train, &index.splits.val);
    let share = val.tokens as f64 / (train.tokens + val.tokens) as f64;
    assert!(val.blocks >= 1, "no val block");
    assert!(
        (0.0025..=0.01).contains(&share),
        "val holds {share} of the tokens at --val-fraction 0.005"
    );
    assert!(
        files(&one) == files(&run("t2", &["--threads", "2"])),
        "threads 1 and 2 differ"
    );

    // The same blocks as the stream made without a val split, none in both splits.
    let all = run("all", &["--val-fraction", "0"]);
    let whole = stream(&all, "train");
    let (want_val, want_train) = split_by_groups(&whole, 1024, 200);
    assert!(
        stream(&one, "val") == want_val,
        "val is not the groups' lowest blocks"
    );
    let train = sorted_blocks(&stream(&one, "train"), 1024);
    assert!(train == want_train, "train is not the other blocks");

    // Shuffled documents: still the same bytes for any thread count, still a val split.
    let shuffled = ["--shuffle-docs", "--seed", "3"];
    let s1 = run("s1", &[&shuffled[..], &["--threads", "1"]].concat());
    let s2 = run("s2", &[&shuffled[..], &["--threads", "2"]].concat());
    assert!(
        files(&s1) == files(&s2),
        "shuffled runs differ between thread counts"
    );
    assert_eq!(Index::read(&s1).unwrap().splits.val.blocks, val.blocks);
    assert!(
        stream(&s1, "val") != stream(&one, "val"),
        "shuffling did not move val"
    );
}

#[test]
fn shards_roll_at_the_shard_size_and_hold_whole_blocks() {
    let dir = tempdir();
    let input = dir.path().join("d.jsonl");
    write_jsonl(&input, &documents(500));
    let out = dir.path().join("o");
    prep_dir(
        &input,
        &out,
        &[
            "--block-size",
            "100",
            "--val-fraction",
            "0",
            "--shard-size",
            "1000",
        ],
    )
    .unwrap();
    let index = Index::read(&out).unwrap();
    // 1000 bytes / (100 tokens × 2 bytes) = 5 blocks per shard.
    let shards = &index.splits.train.shards;
    assert!(shards.len() > 3);
    assert!(shards[..shards.len() - 1].iter().all(|s| s.blocks == 5));
    assert!(shards.last().unwrap().blocks <= 5);
    assert_eq!(shards[1].file, "train-00001.bin");
    ingot_formats::verify_dataset(&out).unwrap();
}

#[test]
fn force_replaces_a_dataset_and_keeps_other_files() {
    let dir = tempdir();
    let input = dir.path().join("d.jsonl");
    write_jsonl(&input, &documents(50));
    let out = dir.path().join("o");
    prep_dir(
        &input,
        &out,
        &["--block-size", "16", "--shard-size", "1KiB"],
    )
    .unwrap();
    let before = std::fs::read_dir(&out).unwrap().count();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    prep_dir(&input, &out, &["--block-size", "4096", "--force"]).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
    assert!(
        std::fs::read_dir(&out).unwrap().count() < before,
        "old shards must be gone"
    );
    ingot_formats::verify_dataset(&out).unwrap();
}

#[test]
fn a_bom_at_the_start_of_a_file_is_not_text() {
    let dir = tempdir();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    // A BOM opens each file; one later in a file is text like any other.
    std::fs::write(
        corpus.join("a.jsonl"),
        "\u{feff}{\"text\": \"first\"}\n{\"text\": \"second\"}\n",
    )
    .unwrap();
    std::fs::write(corpus.join("b.txt"), "\u{feff}whole file \u{feff}").unwrap();
    let out = dir.path().join("o");
    prep_dir(&corpus, &out, &["--block-size", "1", "--val-fraction", "0"]).unwrap();
    let index = Index::read(&out).unwrap();
    assert!(index.stats.skipped.is_empty(), "{:?}", index.stats.skipped);
    let docs: Vec<String> = vec![
        "first".into(),
        "second".into(),
        "whole file \u{feff}".into(),
    ];
    assert_eq!(
        stream(&out, "train"),
        expected_stream(&byte_ids(&docs), Some(BOS), Some(EOS))
    );
}

#[test]
fn parquet_chunks_stay_near_the_chunk_size_whatever_the_rows() {
    use ingot_prep::chunk::Body;
    use ingot_prep::discover::{Compression, Format, InputFile};
    use ingot_prep::readers::{parquet, ReadOptions, TxtUnit, CHUNK_BYTES};
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    let dir = tempdir();
    let path = dir.path().join("long-rows.parquet");
    let row = "x".repeat(300 << 10);
    let values: Vec<Option<&str>> = (0..40).map(|_| Some(row.as_str())).collect();
    write_parquet(&path, "text", &values);
    let file = InputFile {
        size: std::fs::metadata(&path).unwrap().len(),
        path,
        name: "long-rows.parquet".into(),
        format: Format::Parquet,
        compression: Compression::None,
    };
    let options = ReadOptions {
        txt_unit: TxtUnit::File,
        text_path: vec!["text".into()],
    };
    let mut chunks = Vec::new();
    parquet::read(
        &file,
        0,
        &options,
        &Arc::new(AtomicU64::new(0)),
        &mut |chunk| {
            let Body::Rows(rows) = chunk.body else {
                panic!("{chunk:?}")
            };
            let bytes: usize = rows
                .iter()
                .map(|(_, v)| v.as_ref().map_or(0, |v| v.len()))
                .sum();
            chunks.push((chunk.first_line, rows.len(), bytes));
            true
        },
    );
    assert_eq!(chunks.iter().map(|c| c.1).sum::<usize>(), 40);
    for (_, _, bytes) in &chunks {
        assert!(*bytes < CHUNK_BYTES + row.len(), "{chunks:?}");
    }
    assert_eq!(chunks[1].0, chunks[0].1 as u64 + 1, "row numbers run on");
}
