//! LoRA through the `train` binary: a run from a trained checkpoint writes PEFT adapter
//! directories, resumes bit for bit, and refuses bad options in one line without a run
//! directory.

mod common;

use std::path::Path;
use std::process::Command;

use common::{dataset, losses, state_difference, the_error_line, train_bin, with};

fn train(args: &[String]) -> std::process::Output {
    Command::new(train_bin()).args(args).output().unwrap()
}

fn ok(args: &[String]) {
    let out = train(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A trained `tiny` base: a few full-training steps, its last checkpoint a HF directory.
fn base(dir: &Path, shards: &Path) -> std::path::PathBuf {
    let run = dir.join("base");
    ok(&with(
        vec![],
        &[
            "--shards",
            shards.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "--model",
            "tiny",
            "--steps",
            "20",
            "--lr",
            "3e-3",
            "--batch-size",
            "8",
            "--no-eval",
            "--quiet",
            "--device",
            "cpu",
        ],
    ));
    run.join("checkpoints/step-0000020")
}

fn lora_args(shards: &Path, base: &Path, out: &Path, steps: &str) -> Vec<String> {
    with(
        vec![],
        &[
            "--shards",
            shards.to_str().unwrap(),
            "--init-from",
            base.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--lora-rank",
            "4",
            "--lora-alpha",
            "8",
            "--lora-dropout",
            "0.1",
            "--lora-save",
            "lm_head",
            "--steps",
            steps,
            "--lr",
            "1e-2",
            "--batch-size",
            "4",
            "--log-every",
            "1",
            "--save-every",
            "4",
            "--no-eval",
            "--quiet",
            "--device",
            "cpu",
            "--threads",
            "2",
        ],
    )
}

#[test]
fn a_lora_run_writes_peft_adapters_and_resumes_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let shards = dataset(dir.path());
    let base = base(dir.path(), &shards);

    let whole = dir.path().join("whole");
    let out = train(&lora_args(&shards, &base, &whole, "8"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("estimated memory") && stderr.contains("adapters"),
        "{stderr}"
    );
    let ck = whole.join("checkpoints/step-0000008");
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
        "tokenizer.json",
    ] {
        assert!(ck.join(f).is_file(), "{f} missing");
    }
    assert!(!ck.join("model.safetensors").exists());
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ck.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["modules_to_save"], serde_json::json!(["lm_head"]));
    let bytes = std::fs::read(ck.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let q = st
        .tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
        .unwrap();
    assert_eq!(q.shape(), [4, 64]);
    let v = st
        .tensor("base_model.model.model.layers.3.self_attn.v_proj.lora_B.weight")
        .unwrap();
    assert_eq!(v.shape(), [32, 4]);
    assert_eq!(
        st.tensor("base_model.model.lm_head.weight")
            .unwrap()
            .shape(),
        [259, 64]
    );
    // The base is untouched by the run.
    let (base_before, _) = ingot_train::checkpoint::read_optimizer(&base).unwrap();
    assert_eq!(
        ingot_train::checkpoint::hf::read_model_dir(&base)
            .unwrap()
            .params,
        base_before
    );
    let l = losses(&whole);
    assert!(l[7].1 < l[0].1, "the loss did not fall: {l:?}");
    // Sampling from an adapter directory points at `train merge`, in one line.
    let o = Command::new(train_bin())
        .args(["sample", "--checkpoint"])
        .arg(&ck)
        .args(["--device", "cpu"])
        .output()
        .unwrap();
    let err = the_error_line(&o.stderr);
    assert!(
        err.contains("is a LoRA adapter") && err.contains("train merge"),
        "{err}"
    );

    // Stopped at step 4 and resumed: the same losses and adapter state to the bit.
    let halves = dir.path().join("halves");
    ok(&with(
        lora_args(&shards, &base, &halves, "8"),
        &["--stop-after", "4"],
    ));
    ok(&with(
        lora_args(&shards, &base, &halves, "8"),
        &["--resume"],
    ));
    let bits = |v: Vec<(u64, f64)>| {
        v.into_iter()
            .map(|(s, l)| (s, l.to_bits()))
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(losses(&whole)), bits(losses(&halves)));
    assert_eq!(state_difference(&whole, &halves, 8), None);

    // Resuming onto changed base weights is refused in one line.
    let (mut c, mut p, tok) = {
        let m = ingot_train::checkpoint::hf::read_model_dir(&base).unwrap();
        (
            m.config,
            m.params,
            std::fs::read(base.join("tokenizer.json")).unwrap(),
        )
    };
    p[0] += 1.0;
    c.max_seq_len = c.max_seq_len.max(32);
    let other = dir.path().join("other-base");
    std::fs::create_dir_all(&other).unwrap();
    let files = ingot_train::checkpoint::hf::TokenizerFiles {
        tokenizer_json: &tok,
        bos: None,
        eos: None,
    };
    ingot_train::checkpoint::hf::write_model_dir(&other, &c, &p, &files).unwrap();
    std::fs::copy(
        other.join("model.safetensors"),
        base.join("model.safetensors"),
    )
    .unwrap();
    let out = train(&with(
        lora_args(&shards, &base, &halves, "12"),
        &["--resume"],
    ));
    let err = the_error_line(&out.stderr);
    assert!(
        !out.status.success() && err.contains("other base weights"),
        "{err}"
    );
}

/// QLoRA: the same run on a base kept in NF4 (double-quantised) trains, resumes bit for bit,
/// computes other losses than the f32 base (the weights are rounded), and merges onto the
/// base it was trained from.
#[test]
fn a_qlora_run_trains_resumes_and_merges() {
    let dir = tempfile::tempdir().unwrap();
    let shards = dataset(dir.path());
    let base = base(dir.path(), &shards);
    let q = ["--quantize", "nf4", "--double-quant"];
    let whole = dir.path().join("whole");
    let out = train(&with(lora_args(&shards, &base, &whole, "8"), &q));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("estimated memory"), "{stderr}");
    let l = losses(&whole);
    assert!(l[7].1 < l[0].1, "the loss did not fall: {l:?}");
    let plain = dir.path().join("plain");
    ok(&lora_args(&shards, &base, &plain, "8"));
    let p = losses(&plain);
    assert_ne!(p[0].1, l[0].1, "NF4 changed nothing");
    assert!(
        (p[0].1 - l[0].1).abs() < 0.05 * p[0].1,
        "NF4 moved the loss too far: {} vs {}",
        p[0].1,
        l[0].1
    );

    let halves = dir.path().join("halves");
    ok(&with(
        lora_args(&shards, &base, &halves, "8"),
        &[q[0], q[1], q[2], "--stop-after", "4"],
    ));
    ok(&with(
        lora_args(&shards, &base, &halves, "8"),
        &["--resume"],
    ));
    assert_eq!(state_difference(&whole, &halves, 8), None);
    assert_eq!(losses(&whole), losses(&halves));

    let merged = dir.path().join("merged");
    let o = Command::new(train_bin())
        .args(["merge", "--base"])
        .arg(&base)
        .arg("--adapter")
        .arg(whole.join("checkpoints/step-0000008"))
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(merged.join("model.safetensors").is_file());
}

#[test]
fn bad_lora_options_are_one_line_and_leave_no_run_directory() {
    let dir = tempfile::tempdir().unwrap();
    let shards = dataset(dir.path());
    let base = base(dir.path(), &shards);
    let out = dir.path().join("bad");
    let cases: &[(&[&str], &str)] = &[
        (&["--lora-rank", "0"], "--lora-rank must be at least 1"),
        (
            &["--lora-rank", "40"],
            "--lora-rank 40 is larger than 32 of k_proj",
        ),
        (
            &["--lora-rank", "4", "--lora-targets", "qkv"],
            "--lora-targets: no module \"qkv\"",
        ),
        (&["--quantize", "nf4"], "it needs a LoRA run"),
        (
            &["--lora-rank", "4", "--double-quant"],
            "--double-quant is an option of --quantize nf4",
        ),
    ];
    for (extra, want) in cases {
        let mut args = with(
            vec![],
            &[
                "--shards",
                shards.to_str().unwrap(),
                "--init-from",
                base.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--steps",
                "2",
                "--quiet",
            ],
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        let o = train(&args);
        let err = the_error_line(&o.stderr);
        assert!(
            !o.status.success() && err.contains(want),
            "{extra:?}: {err}"
        );
        assert!(!out.exists(), "{extra:?} left a run directory");
    }
    let o = train(&with(
        vec![],
        &[
            "--shards",
            shards.to_str().unwrap(),
            "--lora-rank",
            "4",
            "--out",
            out.to_str().unwrap(),
        ],
    ));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("give --init-from DIR") && !out.exists(),
        "{err}"
    );

    // A base whose dimensions are not whole NF4 blocks (k_proj is 20 × 40 = 800 weights).
    let odd = dir.path().join("odd");
    ok(&with(
        vec![],
        &[
            "--shards",
            shards.to_str().unwrap(),
            "--out",
            odd.to_str().unwrap(),
            "--dim",
            "40",
            "--n-layers",
            "1",
            "--n-heads",
            "4",
            "--n-kv-heads",
            "2",
            "--ffn-dim",
            "96",
            "--steps",
            "1",
            "--no-eval",
            "--quiet",
            "--device",
            "cpu",
        ],
    ));
    let o = train(&with(
        vec![],
        &[
            "--shards",
            shards.to_str().unwrap(),
            "--init-from",
            odd.join("checkpoints/step-0000001").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--lora-rank",
            "4",
            "--quantize",
            "nf4",
        ],
    ));
    let err = the_error_line(&o.stderr);
    assert!(
        err.contains("--quantize nf4: k_proj (20×40) has 800 elements, not a multiple of the NF4 block of 64"),
        "{err}"
    );
    assert!(!out.exists());
}
