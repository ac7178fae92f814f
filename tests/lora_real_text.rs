//! Continued pretraining with LoRA on real English: a `tiny` model trained on technical
//! fortunes (Debian's `fortunes` package: computers, linux, science, …) gets an adapter
//! trained on the prose ones (literature, love, people, wisdom), and the adapted model's
//! loss on held-out prose is lower than the base's.
//!
//! Needs `/usr/share/games/fortunes` (`apt-get install fortunes`); skipped with a message
//! without it, unless `INGOT_REQUIRE_CORPUS=1` (CI installs the package and sets it).

mod common;

use std::path::{Path, PathBuf};

use common::*;

const FORTUNES: &str = "/usr/share/games/fortunes";

/// Every fortune of the named files, one document each (they are separated by `%` lines).
fn fortunes(files: &[&str]) -> Vec<String> {
    let mut docs = Vec::new();
    for name in files {
        let text = std::fs::read_to_string(Path::new(FORTUNES).join(name)).unwrap();
        docs.extend(
            text.split("\n%\n")
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(str::to_string),
        );
    }
    docs
}

fn corpus(dir: &Path, name: &str, files: &[&str]) -> PathBuf {
    let input = dir.join(format!("{name}.jsonl"));
    write_jsonl(&input, &fortunes(files));
    let shards = dir.join(name);
    prep_dir(
        &input,
        &shards,
        &["--block-size", "64", "--val-fraction", "0.05"],
    )
    .unwrap();
    shards
}

fn train(args: &[&str]) -> ingot_train::run::Summary {
    let mut all = vec!["train", "--quiet", "--device", "cpu", "--seq-len", "64"];
    all.extend_from_slice(args);
    let cli = <ingot_train::cli::Cli as clap::Parser>::try_parse_from(all).unwrap();
    ingot_train::run::run(&cli.train).unwrap()
}

#[test]
fn a_lora_adapter_lowers_the_loss_on_a_new_domain_of_real_text() {
    if !Path::new(FORTUNES).is_dir() {
        if std::env::var("INGOT_REQUIRE_CORPUS").as_deref() == Ok("1") {
            panic!("INGOT_REQUIRE_CORPUS=1 but {FORTUNES} is missing; apt-get install fortunes");
        }
        eprintln!("SKIPPED: {FORTUNES} not found (apt-get install fortunes); the real-text LoRA run did not run");
        return;
    }
    let dir = tempdir();
    let technical = corpus(
        dir.path(),
        "technical",
        &["computers", "linux", "science", "debian", "perl"],
    );
    let prose = corpus(
        dir.path(),
        "prose",
        &["literature", "love", "people", "wisdom"],
    );
    let base = train(&[
        "--shards",
        path_str(&technical),
        "--out",
        path_str(&dir.path().join("base")),
        "--model",
        "tiny",
        "--batch-size",
        "16",
        "--steps",
        "150",
        "--lr",
        "3e-3",
        "--no-eval",
    ])
    .checkpoint
    .unwrap();
    let eval = |checkpoint: &Path| {
        let cli = <ingot_train::cli::Cli as clap::Parser>::try_parse_from([
            "train",
            "eval",
            "--checkpoint",
            path_str(checkpoint),
            "--shards",
            path_str(&prose),
            "--device",
            "cpu",
        ])
        .unwrap();
        let Some(ingot_train::cli::Command::Eval(args)) = cli.command else {
            unreachable!("parsed as eval")
        };
        ingot_train::evaluate::run(&args).unwrap().loss
    };
    let before = eval(&base);
    let run = dir.path().join("lora");
    let s = train(&[
        "--shards",
        path_str(&prose),
        "--init-from",
        path_str(&base),
        "--out",
        path_str(&run),
        "--lora-rank",
        "8",
        "--lora-alpha",
        "16",
        "--batch-size",
        "16",
        "--steps",
        "60",
        "--lr",
        "1e-2",
    ]);
    let after = s.val_loss.unwrap();
    let l = common_losses(&run);
    eprintln!(
        "prose val loss: base {before:.4}, after 60 LoRA steps {after:.4}; train loss {:.4} -> {:.4}",
        l[0],
        l[l.len() - 1]
    );
    assert!(after < before - 0.05, "val loss {before} -> {after}");
    assert!(l[l.len() - 1] < l[0], "train loss did not fall: {l:?}");
}

/// The train losses a run logged, in step order.
fn common_losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}
