//! `train merge`: the merged model computes what base plus adapter compute, in the base's
//! number format, and a wrong base, an existing output or a missing base is refused in one
//! line without writing anything.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{the_error_line, train_bin};
use ingot_train::checkpoint::{hf, peft};
use ingot_train::engine::cpu::CpuEngine;
use ingot_train::engine::Engine;
use ingot_train::lora::{self, AdapterLayout, LoraConfig, Saved, Target};
use ingot_train::model::init::{init_params, Rng};
use ingot_train::model::{Layout, ModelConfig};

fn merge(args: &[&Path]) -> std::process::Output {
    let mut cmd = Command::new(train_bin());
    cmd.arg("merge");
    for (flag, path) in ["--base", "--adapter", "--out"].iter().zip(args) {
        cmd.arg(flag).arg(path);
    }
    cmd.output().unwrap()
}

/// A random base in `dtype` (its values rounded to it, as a bf16 checkpoint holds them).
fn base_dir(dir: &Path, dtype: hf::WeightDtype, seed: u64) -> (ModelConfig, Vec<f32>, PathBuf) {
    let c = ModelConfig::preset("tiny", 259).unwrap();
    let path = dir.join(format!("base-{seed}"));
    std::fs::create_dir_all(&path).unwrap();
    hf::write_weights_and_config(
        &path,
        &c,
        &init_params(&c, &Layout::new(&c), seed),
        dtype,
        None,
        None,
    )
    .unwrap();
    std::fs::write(path.join("tokenizer.json"), b"{\"stand-in\": true}").unwrap();
    let m = hf::read_model_dir(&path).unwrap();
    assert_eq!(m.dtype, dtype);
    (m.config, m.params, path)
}

/// An adapter with random A and B (a fresh one has B = 0 and changes nothing), and a trained
/// LM head, written as a LoRA run writes its checkpoints.
fn adapter_dir(dir: &Path, c: &ModelConfig, base: &[f32], base_path: &Path) -> LoraConfig {
    let lora = LoraConfig {
        rank: 4,
        alpha: 16.0,
        dropout: 0.0,
        rslora: false,
        targets: Target::ALL.to_vec(),
        save: vec![Saved::LmHead],
    };
    let layout = AdapterLayout::new(c, &lora);
    let mut rng = Rng(7);
    let params: Vec<f32> = (0..layout.len())
        .map(|_| (rng.next_f64() as f32 - 0.5) * 0.2)
        .collect();
    let path = dir.join("adapter");
    std::fs::create_dir_all(&path).unwrap();
    peft::write_adapter_dir(
        &path,
        c,
        &lora,
        &params,
        base_path,
        &lora::base_sha256(base),
    )
    .unwrap();
    lora
}

#[test]
fn a_merged_model_computes_what_base_and_adapter_compute() {
    let dir = tempfile::tempdir().unwrap();
    let (c, base, base_path) = base_dir(dir.path(), hf::WeightDtype::F32, 1);
    assert!(c.tie_embeddings, "the test means to untie a tied base");
    let lora = adapter_dir(dir.path(), &c, &base, &base_path);
    let out = dir.path().join("merged");
    let o = merge(&[&base_path, &dir.path().join("adapter"), &out]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("tokenizer.json").is_file());
    let merged = hf::read_model_dir(&out).unwrap();
    assert!(!merged.config.tie_embeddings);
    assert_eq!(merged.dtype, hf::WeightDtype::F32);

    let loaded = peft::read_adapter_dir(&dir.path().join("adapter"), &c).unwrap();
    assert_eq!(loaded.lora, lora);
    let tokens: Vec<u32> = (0..24).map(|i| (i * 37 % 259) as u32).collect();
    let mut adapted = CpuEngine::new(c.clone(), base)
        .unwrap()
        .with_lora(lora, loaded.params, 0)
        .unwrap();
    let want = adapted.logits(&tokens).unwrap();
    let got = CpuEngine::new(merged.config, merged.params)
        .unwrap()
        .logits(&tokens)
        .unwrap();
    let top = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = want
        .iter()
        .zip(&got)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    // f32: the merged W + s·B·A against x·W + s·(x·A)·B differ by rounding only.
    assert!(
        worst <= 1e-5 * top,
        "logits differ by {worst} (largest {top})"
    );
    // The adapter changes the model: a test that cannot tell them apart proves nothing.
    let plain = CpuEngine::new(c, hf::read_model_dir(&base_path).unwrap().params)
        .unwrap()
        .logits(&tokens)
        .unwrap();
    let moved = plain
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        moved > 100.0 * worst.max(1e-6),
        "the adapter moved logits by {moved}"
    );
}

#[test]
fn a_bf16_base_merges_to_bf16_and_the_adapter_finds_its_base() {
    let dir = tempfile::tempdir().unwrap();
    let (c, base, base_path) = base_dir(dir.path(), hf::WeightDtype::Bf16, 2);
    let lora = adapter_dir(dir.path(), &c, &base, &base_path);
    let out = dir.path().join("sub/merged");
    // No --base: adapter_config.json's base_model_name_or_path names it.
    let o = Command::new(train_bin())
        .args(["merge", "--adapter"])
        .arg(dir.path().join("adapter"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["torch_dtype"], "bfloat16");
    let merged = hf::read_model_dir(&out).unwrap();
    assert_eq!(merged.dtype, hf::WeightDtype::Bf16);
    let adapter = peft::read_adapter_dir(&dir.path().join("adapter"), &c).unwrap();
    let (_, want) = lora::merge::merge(&c, base.clone(), &lora, &adapter.params);
    let rounded: Vec<f32> = want.iter().map(|&v| bf16_round(v)).collect();
    assert_eq!(common::bits32(&merged.params), common::bits32(&rounded));
}

#[test]
fn a_wrong_base_an_existing_output_and_a_missing_base_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (c, base, base_path) = base_dir(dir.path(), hf::WeightDtype::F32, 3);
    adapter_dir(dir.path(), &c, &base, &base_path);
    let (_, _, other) = base_dir(dir.path(), hf::WeightDtype::F32, 4);
    let adapter = dir.path().join("adapter");
    let out = dir.path().join("merged");

    let err = the_error_line(&merge(&[&other, &adapter, &out]).stderr);
    assert!(err.contains("other base weights"), "{err}");
    assert!(!out.exists());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with(".tmp-merge")),
        "a temporary directory was left: {names:?}"
    );

    std::fs::create_dir(&out).unwrap();
    let err = the_error_line(&merge(&[&base_path, &adapter, &out]).stderr);
    assert!(err.contains("exists"), "{err}");
    std::fs::remove_dir(&out).unwrap();

    let missing = dir.path().join("nowhere");
    let err = the_error_line(&merge(&[&missing, &adapter, &out]).stderr);
    assert!(err.contains("--base") && err.contains("nowhere"), "{err}");
    assert!(!out.exists());
}

/// `v` rounded to the nearest bf16 (ties to even), as the writer must round.
fn bf16_round(v: f32) -> f32 {
    let b = v.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000;
    f32::from_bits(rounded)
}

/// An adapter without ingot's record of its base (as PEFT writes them) merges, with a notice
/// that the base could not be checked.
#[test]
fn an_adapter_without_a_base_record_merges_with_a_notice() {
    let dir = tempfile::tempdir().unwrap();
    let (c, base, base_path) = base_dir(dir.path(), hf::WeightDtype::F32, 5);
    adapter_dir(dir.path(), &c, &base, &base_path);
    // Rewrite the weights file without its metadata.
    let file = dir.path().join("adapter/adapter_model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (name.to_string(), view))
        .collect();
    let stripped = safetensors::serialize(tensors, None).unwrap();
    std::fs::write(&file, stripped).unwrap();
    let loaded = peft::read_adapter_dir(&dir.path().join("adapter"), &c).unwrap();
    assert_eq!(loaded.base_sha256, None);

    let out = dir.path().join("merged");
    let o = merge(&[&base_path, &dir.path().join("adapter"), &out]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("notice: the adapter records no SHA-256 of its base"),
        "{err}"
    );
    assert!(out.join("model.safetensors").is_file());
}

/// A merge that cannot fit in memory is refused in one line before the weights are read.
#[test]
fn a_merge_too_large_for_memory_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let (c, base, base_path) = base_dir(dir.path(), hf::WeightDtype::F32, 6);
    adapter_dir(dir.path(), &c, &base, &base_path);
    // A config.json claiming a model of 58 B parameters (no weights behind it): merging it
    // needs about 430 GiB.
    let huge = dir.path().join("huge");
    std::fs::create_dir(&huge).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base_path.join("config.json")).unwrap())
            .unwrap();
    cfg["hidden_size"] = serde_json::json!(8192);
    cfg["intermediate_size"] = serde_json::json!(28672);
    cfg["num_hidden_layers"] = serde_json::json!(60);
    cfg["num_attention_heads"] = serde_json::json!(64);
    cfg["num_key_value_heads"] = serde_json::json!(64);
    cfg["head_dim"] = serde_json::json!(128);
    let avail = ingot_train::run::available_memory();
    if avail.is_none_or(|a| a > 400 << 30) {
        println!("SKIPPED: this machine has {avail:?} bytes available, enough to merge 58 B parameters; the refusal did not run");
        return;
    }
    std::fs::write(huge.join("config.json"), cfg.to_string()).unwrap();
    let out = dir.path().join("merged");
    let err = the_error_line(&merge(&[&huge, &dir.path().join("adapter"), &out]).stderr);
    assert!(
        err.contains("merging needs about") && err.contains("GiB"),
        "{err}"
    );
    assert!(!out.exists());
}

/// An adapter made for another shape of model is refused in one line naming the tensor.
#[test]
fn an_adapter_for_another_shape_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (c, base, base_path) = base_dir(dir.path(), hf::WeightDtype::F32, 7);
    adapter_dir(dir.path(), &c, &base, &base_path);
    let other = ModelConfig {
        ffn_dim: 128,
        ..c.clone()
    };
    let other_path = dir.path().join("other");
    std::fs::create_dir(&other_path).unwrap();
    let p = init_params(&other, &Layout::new(&other), 8);
    hf::write_weights_and_config(&other_path, &other, &p, hf::WeightDtype::F32, None, None)
        .unwrap();
    let out = dir.path().join("merged");
    let err = the_error_line(&merge(&[&other_path, &dir.path().join("adapter"), &out]).stderr);
    assert!(
        err.contains("gate_proj.lora_B.weight has shape [176, 4]; the base model and adapter_config.json imply [128, 4]"),
        "{err}"
    );
    assert!(!out.exists());
}

/// Without --base, an adapter whose base_model_name_or_path is not a directory here (or names
/// none) is refused in one line asking for --base.
#[test]
fn without_base_the_adapter_must_name_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (c, base, base_path) = base_dir(dir.path(), hf::WeightDtype::F32, 9);
    adapter_dir(dir.path(), &c, &base, &base_path);
    let adapter = dir.path().join("adapter");
    let config = adapter.join("adapter_config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let out = dir.path().join("merged");
    for (name, want) in [
        (
            serde_json::json!("meta-llama/Meta-Llama-3-8B"),
            "is not a directory here; give --base DIR",
        ),
        (
            serde_json::Value::Null,
            "names no base model; give --base DIR",
        ),
    ] {
        v["base_model_name_or_path"] = name;
        std::fs::write(&config, v.to_string()).unwrap();
        let o = Command::new(train_bin())
            .args(["merge", "--adapter"])
            .arg(&adapter)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let err = the_error_line(&o.stderr);
        assert!(err.contains(want), "{err}");
        assert!(!out.exists());
    }
}
