//! What the multi-process tests (`data_parallel.rs` over MPI, `gpu_data_parallel.rs` over
//! NCCL) share: a small dataset, reading a run's metrics and checkpoints, comparisons.
#![allow(dead_code)] // each test crate uses its own part of this module

use std::path::{Path, PathBuf};

use clap::Parser;

/// The `train` binary: `INGOT_TRAIN_BIN` if set (a bundle's `bin/train` on a GPU machine,
/// where this test executable runs without its build tree), else the one cargo built.
pub fn train_bin() -> String {
    std::env::var("INGOT_TRAIN_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_train").to_string())
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A small dataset of generated sentences (byte tokenizer, blocks of 32), made once per test.
pub fn dataset(dir: &Path) -> PathBuf {
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let words = [
        "the", "lantern", "river", "stone", "quiet", "north", "bread", "window", "carried", "over",
        "under", "bright", "old", "keeper", "road", "and",
    ];
    let mut text = String::new();
    let mut x: u64 = 7;
    for line in 0..3000 {
        for _ in 0..8 + line % 5 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            text.push_str(words[(x >> 60) as usize]);
            text.push(' ');
        }
        text.push_str(".\n\n");
    }
    std::fs::write(corpus.join("a.txt"), text).unwrap();
    let shards = dir.join("shards");
    let cli = ingot_prep::cli::Cli::try_parse_from([
        "prep",
        "--quiet",
        "--input",
        corpus.to_str().unwrap(),
        "--txt-unit",
        "paragraph",
        "--block-size",
        "32",
        "--out",
        shards.to_str().unwrap(),
    ])
    .unwrap();
    ingot_prep::build::run(&cli.build).unwrap();
    shards
}

/// `args` followed by `extra`.
pub fn with(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The records of one kind (`train`, `eval`) of a run's metrics, in order.
pub fn records(run: &Path, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == kind)
        .collect()
}

/// (step, loss) of every train line of a run's metrics.
pub fn losses(run: &Path) -> Vec<(u64, f64)> {
    records(run, "train")
        .iter()
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

/// The master weights and optimizer state of a run's checkpoint at `step`.
pub fn weights(run: &Path, step: u64) -> (Vec<f32>, ingot_train::engine::OptimizerState) {
    let dir = run.join(format!("checkpoints/step-{step:07}"));
    ingot_train::checkpoint::read_optimizer(&dir).unwrap()
}

/// max |a - b| / max |a|.
pub fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0.0f64, |m, &x| m.max(f64::from(x).abs()));
    let diff = a.iter().zip(b).fold(0.0f64, |m, (&x, &y)| {
        m.max((f64::from(x) - f64::from(y)).abs())
    });
    diff / scale.max(f64::MIN_POSITIVE)
}

pub fn bits32(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Which part of the checkpoints at `step` of runs `a` and `b` differs in any bit (master
/// weights, then the two AdamW moments), or `None` when all are equal.
pub fn state_difference(a: &Path, b: &Path, step: u64) -> Option<String> {
    let (wa, oa) = weights(a, step);
    let (wb, ob) = weights(b, step);
    if bits32(&wa) != bits32(&wb) {
        return Some(format!("weights differ ({:.2e})", rel(&wa, &wb)));
    }
    if bits32(&oa.exp_avg) != bits32(&ob.exp_avg) {
        return Some("exp_avg differs".into());
    }
    if bits32(&oa.exp_avg_sq) != bits32(&ob.exp_avg_sq) {
        return Some("exp_avg_sq differs".into());
    }
    None
}

pub fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        let kind = e.file_type().unwrap();
        if kind.is_symlink() {
            let link = std::fs::read_link(e.path()).unwrap();
            std::os::unix::fs::symlink(link, target).unwrap();
        } else if kind.is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// The one `error: …` line a refused run printed, after any `notice:` lines; panics (failing
/// the test) when stderr holds anything else, or more than one error line.
#[allow(dead_code)]
pub fn the_error_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let rest: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("notice: "))
        .collect();
    assert!(
        rest.len() == 1 && rest[0].starts_with("error: "),
        "not one error line: {text}"
    );
    rest[0].to_string()
}

/// `args` without the options named in `drop` and their values (e.g. the shape options,
/// which `--init-from` refuses).
#[allow(dead_code)]
pub fn without(args: Vec<String>, drop: &[&str]) -> Vec<String> {
    let mut kept = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if drop.contains(&a.as_str()) {
            it.next();
        } else {
            kept.push(a);
        }
    }
    kept
}
