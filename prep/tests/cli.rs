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
    assert!(
        text.contains("train block 1") && text.contains("<s>The lantern of document 0"),
        "{text}"
    );

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
    let cases: [&[&str]; 4] = [
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
