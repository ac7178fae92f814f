//! The `prep` binary as a user meets it: exit codes, one-line errors, subcommands.

use std::path::Path;
use std::process::{Command, Output};

fn prep(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_prep"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn corpus(dir: &Path) -> std::path::PathBuf {
    let input = dir.join("c.jsonl");
    let mut text = String::new();
    for i in 0..400 {
        text.push_str(&format!("{{\"text\": \"The lantern of document {i} was carried across the bridge at dawn.\"}}\n"));
    }
    std::fs::write(&input, text).unwrap();
    input
}

#[test]
fn build_json_summary_verify_and_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let input = corpus(dir.path());
    let out = dir.path().join("ds");
    let o = prep(&[
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--block-size",
        "32",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["documents"], 400);
    assert_eq!(summary["dtype"], "uint16");
    // 400 documents of 66 to 68 tokens (27090) fill 846 blocks of 32, in groups of 200 at the
    // default 0.005: four whole groups and a last one of 46 blocks, too short to give a fifth
    // val block.
    assert_eq!(summary["train_blocks"], 842);
    assert_eq!(summary["val_blocks"], 4);

    let o = prep(&["verify", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("ok: "));

    let o = prep(&[
        "inspect",
        out.to_str().unwrap(),
        "--blocks",
        "2",
        "--decode",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    // Each block decodes to a stretch of the packed documents (train blocks need not be
    // consecutive in the stream: the group rule holds one back while it looks for val's).
    let stream: String = (0..400)
        .map(|i| {
            format!("<s>The lantern of document {i} was carried across the bridge at dawn.</s>")
        })
        .collect();
    let decoded: Vec<&str> = text
        .split("--- train block ")
        .skip(1)
        .map(|b| b.split_once(" ---\n").unwrap().1.trim_end_matches('\n'))
        .collect();
    assert_eq!(decoded.len(), 2, "{text}");
    for block in decoded {
        assert!(block.len() >= 32 && stream.contains(block), "{block:?}");
    }

    // A flipped payload byte: verify fails and names the shard.
    let shard = out.join("train-00000.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[4096 + 10] ^= 1;
    std::fs::write(&shard, bytes).unwrap();
    let o = prep(&["verify", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.starts_with("error: ")
            && e.contains("train-00000.bin")
            && e.trim_end().lines().count() == 1,
        "{e}"
    );
}

#[test]
fn errors_are_one_line_with_exit_code_1_and_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let input = corpus(dir.path());
    let out = dir.path().join("ds");
    let cases: [&[&str]; 7] = [
        &[
            "--input",
            "/no/such/dir",
            "--out",
            out.to_str().unwrap(),
            "--block-size",
            "8",
        ],
        &[
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--block-size",
            "16777217",
        ],
        &[
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--block-size",
            "8",
            "--threads",
            "9223372036854775807",
        ],
        &["verify", "/no/such/dataset"],
        &[
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--block-size",
            "0",
        ],
        &[
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--block-size",
            "8",
            "--tokenizer",
            "nope.json",
        ],
        &["verify", dir.path().to_str().unwrap()],
    ];
    for args in cases {
        let o = prep(args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {e}");
        assert!(e.starts_with("error: "), "{args:?}: {e}");
        assert_eq!(e.trim_end().lines().count(), 1, "{args:?}: {e}");
        assert!(!e.contains("panicked") && !e.contains("backtrace"), "{e}");
        assert!(!out.join("index.json").exists());
    }
}

#[test]
fn tokenizer_train_is_deterministic_and_usable() {
    let dir = tempfile::tempdir().unwrap();
    let input = corpus(dir.path());
    let a = dir.path().join("a.json");
    let b = dir.path().join("b.json");
    for (path, threads) in [(&a, "1"), (&b, "2")] {
        let o = prep(&[
            "tokenizer",
            "train",
            "--input",
            input.to_str().unwrap(),
            "--vocab-size",
            "400",
            "--out",
            path.to_str().unwrap(),
            "--threads",
            threads,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&a).unwrap()).unwrap();
    assert_eq!(json["model"]["vocab"]["<s>"], 0);
    assert_eq!(json["model"]["vocab"]["</s>"], 1);
    assert_eq!(json["model"]["vocab"]["<pad>"], 2);
    // At most the asked size; fewer when the corpus runs out of pairs seen twice.
    let size = json["model"]["vocab"].as_object().unwrap().len();
    assert!(size > 259 && size <= 400, "{size}");

    // Training refuses to overwrite, and a dataset built with the result detects <s> and </s>.
    let o = prep(&[
        "tokenizer",
        "train",
        "--input",
        input.to_str().unwrap(),
        "--vocab-size",
        "400",
        "--out",
        a.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let out = dir.path().join("ds");
    let o = prep(&[
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--block-size",
        "16",
        "--tokenizer",
        a.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        (index["bos_id"].as_u64(), index["eos_id"].as_u64()),
        (Some(0), Some(1))
    );
    // Compression: the trained BPE needs far fewer tokens than bytes.
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        s["tokens"].as_u64().unwrap() * 3 < s["input_bytes"].as_u64().unwrap(),
        "{s}"
    );

    let o = prep(&[
        "tokenizer",
        "bench",
        "--tokenizer",
        a.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(r["one_thread_tokens_per_second"].as_f64().unwrap() > 0.0);
}

/// A parquet file of plain (not dictionary) encoded strings whose second-to-last value has a
/// forged length, so that the last value's length prefix is cut short: the parquet crate
/// panics ("assertion failed: size <= src.len()") instead of returning an error.
fn write_panicking_parquet(path: &Path) {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::{EnabledStatistics, WriterProperties};
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    use std::sync::Arc;

    let values = ["first row", "second row", "forged-length-row", "last row"];
    let schema =
        Arc::new(parse_message_type("message doc { required binary text (UTF8); }").unwrap());
    let props = Arc::new(
        WriterProperties::builder()
            .set_dictionary_enabled(false)
            .set_statistics_enabled(EnabledStatistics::None)
            .build(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, schema, props).unwrap();
    let mut rg = writer.next_row_group().unwrap();
    let mut col = rg.next_column().unwrap().unwrap();
    let data: Vec<ByteArray> = values.iter().map(|v| ByteArray::from(*v)).collect();
    col.typed::<ByteArrayType>()
        .write_batch(&data, None, None)
        .unwrap();
    col.close().unwrap();
    rg.close().unwrap();
    writer.close().unwrap();

    // Plain encoding: each value is a u32 LE length and the bytes. Stretch the forged row's
    // length over the next length prefix so that only 2 bytes of it remain in the page.
    let mut bytes = std::fs::read(path).unwrap();
    let mut prefixed = (values[2].len() as u32).to_le_bytes().to_vec();
    prefixed.extend_from_slice(values[2].as_bytes());
    let at = bytes
        .windows(prefixed.len())
        .position(|w| w == prefixed.as_slice())
        .expect("the value is stored plain");
    let forged = (values[2].len() + 4 + values[3].len() - 2) as u32;
    bytes[at..at + 4].copy_from_slice(&forged.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_reader_panic_is_one_counted_skip_and_later_files_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    write_panicking_parquet(&input.join("a.parquet"));
    let mut text = String::new();
    for i in 0..50 {
        text.push_str(&format!(
            "{{\"text\": \"good document {i} after the bad file\"}}\n"
        ));
    }
    std::fs::write(input.join("b.jsonl"), text).unwrap();
    let out = dir.path().join("ds");
    let o = prep(&[
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--block-size",
        "8",
        "--val-fraction",
        "0",
        "--quiet",
    ]);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "one warning: {e}");
    assert!(
        e.contains("a.parquet: skipped: reader failed: assertion failed"),
        "{e}"
    );
    let index = ingot_formats::Index::read(&out).unwrap();
    assert_eq!(index.stats.skipped.get("corrupt_parquet"), Some(&1));
    assert_eq!(index.stats.sources[1].documents, 50);
    assert_eq!(index.stats.documents, 50);

    // With --strict the panic is a one-line error and nothing is written.
    let strict = dir.path().join("strict");
    let o = prep(&[
        "--input",
        input.to_str().unwrap(),
        "--out",
        strict.to_str().unwrap(),
        "--block-size",
        "8",
        "--strict",
    ]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    assert!(e.contains("corrupt_parquet"), "{e}");
    assert!(!strict.exists());
}
