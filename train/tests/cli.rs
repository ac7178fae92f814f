//! The `train` binary as a user meets it: SIGTERM finishes the step, saves and exits 0;
//! errors are one line.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A tiny byte-level dataset written with the format crate directly (no prep needed).
fn dataset(dir: &Path) -> std::path::PathBuf {
    use ingot_formats::checksum::sha256_hex;
    use ingot_formats::index::{Splits, Stats};
    use ingot_formats::*;
    let tok = ingot_tokenizer::byte::tokenizer_json();
    let out = dir.join("shards");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("tokenizer.json"), &tok).unwrap();
    let text: Vec<u32> = "the quick brown fox jumps over the lazy dog. "
        .repeat(400)
        .bytes()
        .map(u32::from)
        .collect();
    let split = |name: &str, tokens: &[u32]| {
        let mut w = SplitWriter::new(&out, name, Dtype::U16, 64, 1 << 20);
        w.push(tokens).unwrap();
        let done = w.finish().unwrap();
        SplitIndex {
            blocks: done.blocks,
            tokens: done.blocks * 64,
            documents: 1,
            tokens_dropped: done.tokens_dropped,
            shards: done.shards,
        }
    };
    let index = Index {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
        dtype: Dtype::U16,
        block_size: 64,
        header_bytes: HEADER_BYTES as u64,
        vocab_size: 259,
        bos_id: Some(256),
        eos_id: Some(257),
        tokenizer: TokenizerRef {
            file: "tokenizer.json".into(),
            sha256: sha256_hex(tok.as_bytes()),
        },
        splits: Splits {
            train: split("train", &text),
            val: split("val", &text[..640]),
        },
        stats: Stats::default(),
        prep: serde_json::json!({}),
    };
    index.write_atomic(&out).unwrap();
    out
}

#[test]
fn sigterm_finishes_the_step_saves_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let shards = dataset(dir.path());
    let run = dir.path().join("run");
    let child = Command::new(env!("CARGO_BIN_EXE_train"))
        .args([
            "--shards",
            shards.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ])
        .args([
            "--model",
            "tiny",
            "--seq-len",
            "64",
            "--batch-size",
            "4",
            "--steps",
            "1000000",
            "--no-eval",
            "--log-every",
            "1",
            "--quiet",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training is under way.
    let start = Instant::now();
    while std::fs::read_to_string(run.join("metrics.jsonl")).map_or(true, |m| m.lines().count() < 3)
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "training did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("stopped at step"), "{stdout}");
    let checkpoints: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .filter_map(|e| e.ok())
        .collect();
    assert!(checkpoints
        .iter()
        .any(|e| e.file_name().to_string_lossy().starts_with("step-")));
}

#[test]
fn errors_are_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["--shards", "/no/such/shards"],
        vec!["--shards", dir.path().to_str().unwrap()],
        vec!["sample", "--checkpoint", "/no/such/checkpoint"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_train"))
            .args(&args)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {e}");
        assert!(
            e.starts_with("error: ") && e.trim_end().lines().count() == 1,
            "{args:?}: {e}"
        );
    }
}

/// `train eval --json` prints one JSON object with loss and perplexity; `train sample` prints
/// the text on stdout and its speed on stderr.
#[test]
fn eval_json_and_sample_speed() {
    let dir = tempfile::tempdir().unwrap();
    let shards = dataset(dir.path());
    let run = dir.path().join("run");
    let train = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_train"))
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {err}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), err)
    };
    let (s, r) = (shards.to_str().unwrap(), run.to_str().unwrap());
    train(
        &[
            "--shards",
            s,
            "--out",
            r,
            "--model",
            "tiny",
            "--seq-len",
            "64",
        ]
        .into_iter()
        .chain(["--batch-size", "4", "--steps", "2", "--quiet"])
        .collect::<Vec<_>>(),
    );
    let ck = run.join("checkpoints/best");
    let ck = ck.to_str().unwrap();
    let (json, _) = train(&["eval", "--checkpoint", ck, "--shards", s, "--json"]);
    let report: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    let (loss, ppl) = (
        report["loss"].as_f64().unwrap(),
        report["perplexity"].as_f64().unwrap(),
    );
    assert!((ppl - loss.exp()).abs() < 1e-9 * ppl, "{report}");
    assert_eq!(report["split"], "val");
    assert!(
        report["engine"].as_str().unwrap().starts_with("cpu"),
        "{report}"
    );
    let (text, speed) = train(&[
        "sample",
        "--checkpoint",
        ck,
        "--prompt",
        "the ",
        "--max-new-tokens",
        "8",
    ]);
    assert!(text.starts_with("the "), "{text}");
    assert!(speed.contains("tokens/s after the prompt"), "{speed}");
}
