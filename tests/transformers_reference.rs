//! Checkpoints load in Hugging Face `transformers` and give the engine's logits; models written
//! by `transformers` (bf16, sharded, untied, grouped-query) load here with its logits.
//!
//! Greedy generation with our key/value cache gives the ids of transformers' `generate`.
//!
//! Needs a Python with `torch` and `transformers`: `INGOT_TORCH_PYTHON` names it (default
//! `python3`). Without one the test is skipped with a message, unless `INGOT_REQUIRE_TORCH=1`
//! (CI sets it, and installs the pinned packages of `.ci/requirements-reference.txt`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use ingot_train::checkpoint::hf;
use ingot_train::engine::cpu::CpuEngine;

fn torch_python() -> Option<PathBuf> {
    reference_python("torch, transformers", "transformers comparison")
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/hf_llama.py")
}

fn hf_logits(python: &Path, model_dir: &Path, tokens: &[u32], work: &Path) -> Vec<f32> {
    let tok_path = work.join("tokens.json");
    std::fs::write(&tok_path, serde_json::to_string(tokens).unwrap()).unwrap();
    let out = Command::new(python)
        .arg(script())
        .arg("logits")
        .arg(model_dir)
        .arg(&tok_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "transformers failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    serde_json::from_value(v["logits"].clone()).unwrap()
}

#[test]
fn checkpoints_load_in_transformers_with_the_same_logits() {
    let Some(python) = torch_python() else { return };
    let dir = tempdir();
    let input = dir.path().join("docs.jsonl");
    write_jsonl(&input, &documents(300));
    let shards = dir.path().join("shards");
    prep_dir(&input, &shards, &["--block-size", "64"]).unwrap();
    let tokens: Vec<u32> = stream(&shards, "train")[..48].to_vec();
    // Tied and untied, with grouped-query attention (tiny has 4 heads over 2 kv heads).
    for tie in ["true", "false"] {
        let run = dir.path().join(format!("run-{tie}"));
        let args = [
            "train",
            "--shards",
            path_str(&shards),
            "--out",
            path_str(&run),
            "--model",
            "tiny",
            "--seq-len",
            "64",
            "--batch-size",
            "4",
            "--steps",
            "5",
            "--lr",
            "1e-2",
            "--no-eval",
            "--quiet",
            "--tie-embeddings",
            tie,
        ];
        let cli = <ingot_train::cli::Cli as clap::Parser>::try_parse_from(args).unwrap();
        let ck = ingot_train::run::run(&cli.train)
            .unwrap()
            .checkpoint
            .unwrap();
        let ours = our_logits(&ck, &tokens);
        let theirs = hf_logits(&python, &ck, &tokens, dir.path());
        let err = rel_max_err(&ours, &theirs);
        // Tolerance: 1e-5 of the largest logit (f32 on both sides).
        assert!(
            err < 1e-5,
            "tie_embeddings={tie}: logits differ from transformers by {err}"
        );
        eprintln!(
            "tie_embeddings={tie}: logits match transformers to {err:.2e} (relative max error)"
        );
    }
}

#[test]
fn models_written_by_transformers_load_with_the_same_logits() {
    let Some(python) = torch_python() else { return };
    let dir = tempdir();
    let model_dir = make_hf_model(&python, dir.path());
    assert!(
        model_dir.join("model.safetensors.index.json").exists(),
        "expected a sharded checkpoint"
    );
    let tokens: Vec<u32> = (0..40).map(|i| (i * 37 % 259) as u32).collect();
    let ours = our_logits(&model_dir, &tokens);
    let theirs = hf_logits(&python, &model_dir, &tokens, dir.path());
    let err = rel_max_err(&ours, &theirs);
    assert!(err < 1e-5, "logits differ from transformers by {err}");
    eprintln!("transformers-written bf16 sharded model: logits match to {err:.2e}");
}

fn hf_generate(python: &Path, model_dir: &Path, prompt: &[u32], n: usize, work: &Path) -> Vec<u32> {
    let tok_path = work.join("prompt.json");
    std::fs::write(&tok_path, serde_json::to_string(prompt).unwrap()).unwrap();
    let out = Command::new(python)
        .arg(script())
        .args([
            "generate".as_ref(),
            model_dir.as_os_str(),
            tok_path.as_os_str(),
        ])
        .arg(n.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "transformers generate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    serde_json::from_value(v["tokens"].clone()).unwrap()
}

/// Greedy generation with our key/value cache (CPU engine) gives the ids of transformers'
/// `generate` (greedy, its own cache) for the same checkpoint: a transformers-written
/// grouped-query model, 40 new tokens after a 9-token prompt.
#[test]
fn greedy_generation_equals_transformers_generate() {
    let Some(python) = torch_python() else { return };
    let dir = tempdir();
    let model_dir = make_hf_model(&python, dir.path());
    let prompt: Vec<u32> = vec![256, 84, 104, 101, 32, 108, 97, 110, 116];
    let n = 40;
    let m = hf::read_model_dir(&model_dir).unwrap();
    let mut engine = CpuEngine::new(m.config, m.params).unwrap();
    let greedy = ingot_train::sample::Sampling::GREEDY;
    let ours = ingot_train::sample::generate(&mut engine, &prompt, n, greedy, None)
        .unwrap()
        .tokens;
    let theirs = hf_generate(&python, &model_dir, &prompt, n, dir.path());
    assert_eq!(
        ours, theirs,
        "greedy ids differ from transformers' generate"
    );
    // A comparison worth making: the sequence is not one id repeated.
    let distinct: std::collections::BTreeSet<_> = ours.iter().collect();
    assert!(distinct.len() >= 5, "degenerate greedy output {ours:?}");
    eprintln!("greedy generation: {n} ids equal to transformers' generate: {ours:?}");
}
