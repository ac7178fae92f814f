//! `train` end to end on a dataset made by `prep`: runs, checkpoints as Hugging Face
//! directories, bitwise resume, thread-count determinism, init-from, sample and eval, and every
//! bad input refused with a message before any work.

mod common;

use std::path::{Path, PathBuf};

use clap::Parser;
use common::*;
use ingot_train::checkpoint::{self, hf};
use ingot_train::cli::{Cli, Command, TrainArgs};

/// A small byte-level dataset: 400 generated documents, blocks of 64, with a val split.
fn dataset(dir: &Path) -> PathBuf {
    let input = dir.join("docs.jsonl");
    write_jsonl(&input, &documents(400));
    let out = dir.join("shards");
    prep_dir(
        &input,
        &out,
        &["--block-size", "64", "--val-fraction", "0.1"],
    )
    .unwrap();
    out
}

fn args(extra: &[&str]) -> TrainArgs {
    let cli = Cli::try_parse_from(std::iter::once("train").chain(extra.iter().copied())).unwrap();
    cli.train
}

/// Small and fast: a 2-layer model over 32-token sequences.
const SMALL: &[&str] = &[
    "--model",
    "tiny",
    "--n-layers",
    "2",
    "--seq-len",
    "32",
    "--batch-size",
    "4",
    "--quiet",
    "--log-every",
    "1",
    "--eval-batches",
    "2",
];

fn train(shards: &Path, out: &Path, extra: &[&str]) -> anyhow::Result<ingot_train::run::Summary> {
    let mut a = vec!["--shards", path_str(shards), "--out", path_str(out)];
    // SMALL's options, except those `extra` sets itself.
    let mut i = 0;
    while i < SMALL.len() {
        let takes_value = SMALL.get(i + 1).is_some_and(|v| !v.starts_with("--"));
        let n = if takes_value { 2 } else { 1 };
        // --init-from takes the shape from the model it loads.
        let shape = matches!(SMALL[i], "--model" | "--n-layers");
        let overridden = extra.contains(&SMALL[i]) || (shape && extra.contains(&"--init-from"));
        if !overridden {
            a.extend_from_slice(&SMALL[i..i + n]);
        }
        i += n;
    }
    a.extend_from_slice(extra);
    ingot_train::run::run(&args(&a))
}

fn train_losses(run: &Path) -> Vec<(u64, u64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| {
            (
                v["step"].as_u64().unwrap(),
                v["loss"].as_f64().unwrap().to_bits(),
            )
        })
        .collect()
}

#[test]
fn a_run_learns_and_writes_a_hugging_face_checkpoint() {
    let dir = tempdir();
    let shards = dataset(dir.path());
    let run = dir.path().join("run");
    let s = train(
        &shards,
        &run,
        &[
            "--steps",
            "30",
            "--eval-every",
            "10",
            "--save-every",
            "10",
            "--keep-last",
            "1",
            "--lr",
            "3e-3",
        ],
    )
    .unwrap();
    assert_eq!(s.steps, 30);
    let losses = train_losses(&run);
    assert!(
        f64::from_bits(losses[0].1) > f64::from_bits(losses[29].1) + 1.0,
        "loss did not fall: {losses:?}"
    );
    assert!(run.join("loss.png").exists() && run.join("config.json").exists());

    // Keep-last 1 plus the best: at most two step directories, and `best` points at one.
    let kept = checkpoint::list(&run.join("checkpoints"));
    assert!(!kept.is_empty() && kept.len() <= 2, "{kept:?}");
    assert!(run.join("checkpoints/best/model.safetensors").exists());

    let ck = s.checkpoint.unwrap();
    for f in [
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "optimizer.safetensors",
        "trainer_state.json",
    ] {
        assert!(ck.join(f).exists(), "{f} missing");
    }
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ck.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "LlamaForCausalLM");
    assert_eq!(cfg["num_hidden_layers"], 2);
    assert_eq!(
        (cfg["bos_token_id"].as_u64(), cfg["eos_token_id"].as_u64()),
        (Some(256), Some(257))
    );
    let tc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ck.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(tc["eos_token"], "</s>");

    // The exported weights are the optimizer's master weights, bit for bit.
    let model = hf::read_model_dir(&ck).unwrap();
    let (master, _) = checkpoint::read_optimizer(&ck).unwrap();
    assert!(model
        .params
        .iter()
        .zip(&master)
        .all(|(a, b)| a.to_bits() == b.to_bits()));

    // sample and eval accept the checkpoint.
    let ck_s = path_str(&ck);
    let Some(Command::Sample(sample)) = Cli::try_parse_from([
        "train",
        "sample",
        "--checkpoint",
        ck_s,
        "--prompt",
        "The ",
        "--max-new-tokens",
        "20",
        "--seed",
        "3",
    ])
    .unwrap()
    .command
    else {
        panic!("train sample did not parse")
    };
    let out = ingot_train::sample::run(&sample).unwrap();
    let text = out.text;
    assert!(text.starts_with("The ") && text.len() > 4, "{text:?}");
    assert!(out.new_tokens > 0 && out.tokens_per_second > 0.0);
    // Past the model's context (max_position_embeddings 256 here): one line, nothing generated.
    let Some(Command::Sample(long)) = Cli::try_parse_from([
        "train",
        "sample",
        "--checkpoint",
        ck_s,
        "--max-new-tokens",
        "256",
    ])
    .unwrap()
    .command
    else {
        panic!("train sample did not parse")
    };
    let e = format!("{:#}", ingot_train::sample::run(&long).unwrap_err());
    assert!(
        e.contains("--max-new-tokens 256") && e.contains("context of 256"),
        "{e}"
    );
    let shards_s = path_str(&shards);
    let Some(Command::Eval(eval)) = Cli::try_parse_from([
        "train",
        "eval",
        "--checkpoint",
        ck_s,
        "--shards",
        shards_s,
        "--batch-size",
        "4",
        "--seq-len",
        "32",
        "--max-batches",
        "2",
        "--device",
        "cpu",
    ])
    .unwrap()
    .command
    else {
        panic!("train eval did not parse")
    };
    let report = ingot_train::evaluate::run(&eval).unwrap();
    assert_eq!(report.sequences, 8);
    assert!(report.loss.is_finite() && report.perplexity > 1.0);
    // Bad eval options: one line each.
    for (extra, want) in [
        (
            ["--split", "test"],
            "--split \"test\": expected val or train",
        ),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--seq-len", "1"], "--seq-len 1 must be between 2"),
    ] {
        let mut argv = vec!["train", "eval", "--checkpoint", ck_s, "--shards", shards_s];
        argv.extend(extra);
        let Some(Command::Eval(bad)) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("train eval did not parse")
        };
        let e = format!("{:#}", ingot_train::evaluate::run(&bad).unwrap_err());
        assert!(e.contains(want) && !e.contains('\n'), "{e}");
    }
}

#[test]
fn resume_is_bitwise_identical_to_an_uninterrupted_run() {
    let dir = tempdir();
    let shards = dataset(dir.path());
    let common = ["--steps", "12", "--eval-every", "4", "--save-every", "100"];
    let straight = dir.path().join("straight");
    train(&shards, &straight, &common).unwrap();

    let stopped = dir.path().join("stopped");
    let mut first = common.to_vec();
    first.extend_from_slice(&["--stop-after", "5"]);
    let s = train(&shards, &stopped, &first).unwrap();
    assert!(s.stopped_early && s.steps == 5);
    // Without --resume the run directory is refused, with it the run continues.
    let err = train(&shards, &stopped, &common).unwrap_err();
    assert!(format!("{err:#}").contains("--resume"), "{err:#}");
    let mut again = common.to_vec();
    again.push("--resume");
    let s = train(&shards, &stopped, &again).unwrap();
    assert_eq!(s.steps, 12);

    assert_eq!(train_losses(&straight), train_losses(&stopped));
    let a = std::fs::read(straight.join("checkpoints/step-0000012/model.safetensors")).unwrap();
    let b = std::fs::read(stopped.join("checkpoints/step-0000012/model.safetensors")).unwrap();
    assert!(a == b, "final weights differ after resume");
    let a = std::fs::read(straight.join("checkpoints/step-0000012/optimizer.safetensors")).unwrap();
    let b = std::fs::read(stopped.join("checkpoints/step-0000012/optimizer.safetensors")).unwrap();
    assert!(a == b, "optimizer state differs after resume");
}

#[test]
fn training_is_bitwise_identical_for_any_thread_count() {
    let dir = tempdir();
    let shards = dataset(dir.path());
    let mut weights = Vec::new();
    for threads in [1, 3] {
        let out = dir.path().join(format!("t{threads}"));
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| train(&shards, &out, &["--steps", "6", "--no-eval"]).unwrap());
        weights
            .push(std::fs::read(out.join("checkpoints/step-0000006/model.safetensors")).unwrap());
    }
    assert!(weights[0] == weights[1]);
}

#[test]
fn init_from_a_checkpoint_and_an_interrupted_save() {
    let dir = tempdir();
    let shards = dataset(dir.path());
    let first = dir.path().join("first");
    let s = train(&shards, &first, &["--steps", "4", "--no-eval"]).unwrap();
    let ck = s.checkpoint.unwrap();

    // A save killed half-way leaves a hidden temporary directory; it is never taken for a
    // checkpoint, and the previous one still loads and resumes.
    std::fs::create_dir_all(first.join("checkpoints/.tmp-step-0000005")).unwrap();
    std::fs::write(
        first.join("checkpoints/.tmp-step-0000005/model.safetensors"),
        b"half",
    )
    .unwrap();
    assert_eq!(checkpoint::list(&first.join("checkpoints")).len(), 1);
    train(&shards, &first, &["--steps", "6", "--no-eval", "--resume"]).unwrap();

    // Continued pretraining from the weights of a model directory; the shape comes from it.
    let second = dir.path().join("second");
    let s = train(
        &shards,
        &second,
        &["--init-from", path_str(&ck), "--steps", "2", "--no-eval"],
    )
    .unwrap();
    assert_eq!(s.steps, 2);
}

fn error_of(shards: &Path, out: &Path, extra: &[&str]) -> String {
    let msg = format!("{:#}", train(shards, out, extra).unwrap_err());
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert!(
        !out.exists(),
        "the run directory was created before refusing: {msg}"
    );
    msg
}

#[test]
fn bad_inputs_are_refused_before_any_work() {
    let dir = tempdir();
    let shards = dataset(dir.path());
    let out = dir.path().join("bad");
    assert!(error_of(&dir.path().join("nope"), &out, &[]).contains("nope"));
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(error_of(&empty, &out, &[]).contains("no index.json"));
    assert!(error_of(&shards, &out, &["--seq-len", "65"]).contains("--seq-len 65"));
    assert!(error_of(&shards, &out, &["--batch-size", "100000"]).contains("--batch-size 100000"));
    assert!(error_of(&shards, &out, &["--grad-accum", "100000"]).contains("--grad-accum 100000"));
    assert!(error_of(&shards, &out, &["--model", "huge"]).contains("tiny"));
    assert!(error_of(&shards, &out, &["--device", "cuda"]).contains("--device cuda"));
    let msg = error_of(&shards, &out, &["--device", "cpu", "--dtype", "bf16"]);
    assert!(
        msg.contains("--dtype bf16") && msg.contains("f32 only"),
        "{msg}"
    );
    // Device and dtype are parsed into enums: clap refuses other values in one line.
    for (flag, bad, want) in [
        ("--dtype", "f16", "bf16, f32"),
        ("--device", "gpu", "cuda[:N]"),
    ] {
        let e = Cli::try_parse_from(["train", flag, bad])
            .unwrap_err()
            .to_string();
        assert!(e.contains(bad) && e.contains(want), "{e}");
    }
    // A 37.6e9-parameter model: refused before anything is allocated, on the CPU (model,
    // optimizer state and activations) and for a GPU (the host's copy of the parameters).
    let huge = [
        "--dim",
        "16384",
        "--n-layers",
        "20",
        "--ffn-dim",
        "16384",
        "--n-heads",
        "128",
        "--n-kv-heads",
        "128",
    ];
    let msg = error_of(&shards, &out, &huge);
    assert!(
        msg.contains("this model and micro-batch need about"),
        "{msg}"
    );
    let msg = error_of(&shards, &out, &[&huge[..], &["--device", "cuda"]].concat());
    assert!(
        msg.contains("this model's parameters need about") && msg.contains("use a smaller model"),
        "{msg}"
    );
    assert!(error_of(&shards, &out, &["--n-heads", "3"]).contains("--n-heads"));

    // A damaged shard: a flipped payload byte is caught by --verify-data, a flipped header
    // byte by the checks every run does.
    let damaged = dir.path().join("damaged");
    std::fs::create_dir(&damaged).unwrap();
    for e in std::fs::read_dir(&shards).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), damaged.join(e.file_name())).unwrap();
    }
    let shard = damaged.join("train-00000.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[4096 + 7] ^= 1;
    std::fs::write(&shard, &bytes).unwrap();
    let msg = error_of(&damaged, &out, &["--verify-data"]);
    assert!(
        msg.contains("train-00000.bin") && msg.contains("checksum"),
        "{msg}"
    );
    bytes[4096 + 7] ^= 1;
    bytes[20] ^= 1;
    std::fs::write(&shard, &bytes).unwrap();
    let msg = error_of(&damaged, &out, &[]);
    assert!(
        msg.contains("train-00000.bin") && msg.contains("header"),
        "{msg}"
    );

    // An empty val split while evaluation is on.
    let input = dir.path().join("docs2.jsonl");
    write_jsonl(&input, &documents(100));
    let noval = dir.path().join("noval");
    prep_dir(
        &input,
        &noval,
        &["--block-size", "64", "--val-fraction", "0"],
    )
    .unwrap();
    // Evaluation asked for on a dataset without a val split: one line, no run directory.
    let msg = error_of(&noval, &out, &["--eval-every", "5"]);
    assert!(
        msg.contains("--eval-every 5") && msg.contains("val split is empty"),
        "{msg}"
    );
    assert!(!out.exists());
    // Without that request it trains, and keeps its last checkpoint as the best.
    let noval_run = dir.path().join("noval-run");
    let s = train(&noval, &noval_run, &["--steps", "2"]).unwrap();
    assert!(s.val_loss.is_none());
    let best = std::fs::read_link(noval_run.join("checkpoints/best")).unwrap();
    assert_eq!(best, std::path::PathBuf::from("step-0000002"));
    // `train eval` of its empty val split: one line naming the way out.
    let ck = noval_run.join("checkpoints/best");
    let Some(Command::Eval(eval)) = Cli::try_parse_from([
        "train",
        "eval",
        "--checkpoint",
        path_str(&ck),
        "--shards",
        path_str(&noval),
    ])
    .unwrap()
    .command
    else {
        panic!("train eval did not parse")
    };
    let e = format!("{:#}", ingot_train::evaluate::run(&eval).unwrap_err());
    assert!(
        e.contains("val split") && e.contains("is empty") && e.contains("--split train"),
        "{e}"
    );

    // --init-from something that is not a Llama, or with another vocabulary.
    let gpt2 = dir.path().join("gpt2");
    std::fs::create_dir(&gpt2).unwrap();
    std::fs::write(
        gpt2.join("config.json"),
        r#"{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}"#,
    )
    .unwrap();
    assert!(error_of(&shards, &out, &["--init-from", path_str(&gpt2)]).contains("not a Llama"));
    let first = dir.path().join("first");
    let ck = train(&shards, &first, &["--steps", "1", "--no-eval"])
        .unwrap()
        .checkpoint
        .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ck.join("config.json")).unwrap()).unwrap();
    let other = dir.path().join("other-vocab");
    std::fs::create_dir(&other).unwrap();
    cfg["vocab_size"] = 300.into();
    std::fs::write(other.join("config.json"), cfg.to_string()).unwrap();
    assert!(error_of(&shards, &out, &["--init-from", path_str(&other)]).contains("vocabulary"));

    // --resume with another model shape.
    let stopped = dir.path().join("stopped");
    train(&shards, &stopped, &["--steps", "3", "--no-eval"]).unwrap();
    let msg = format!(
        "{:#}",
        train(
            &shards,
            &stopped,
            &["--steps", "3", "--no-eval", "--resume", "--dim", "32"]
        )
        .unwrap_err()
    );
    assert!(
        msg.contains("different model") && msg.contains("dim"),
        "{msg}"
    );

    // A diverging run stops naming the step; the checkpoint saved before is left as it was.
    let nan = dir.path().join("nan");
    let msg = format!(
        "{:#}",
        train(
            &shards,
            &nan,
            &[
                "--steps",
                "20",
                "--no-eval",
                "--save-every",
                "1",
                "--lr",
                "1e30",
                "--warmup",
                "0",
                "--grad-clip",
                "0"
            ]
        )
        .unwrap_err()
    );
    assert!(
        msg.contains("at step") && msg.contains("untouched"),
        "{msg}"
    );
    let kept = checkpoint::list(&nan.join("checkpoints"));
    assert!(!kept.is_empty(), "{msg}");
    hf::read_model_dir(&kept.last().unwrap().1).unwrap();

    // Resuming keeps the run's saved settings (and says which of today's options differ), and a
    // finished run asks for a larger --steps.
    let mut again = vec!["--steps", "3", "--no-eval", "--resume"];
    let msg = format!("{:#}", train(&shards, &stopped, &again).unwrap_err());
    assert!(
        msg.contains("already at step 3 of 3") && msg.contains("--steps"),
        "{msg}"
    );
    again[1] = "4";
    assert_eq!(train(&shards, &stopped, &again).unwrap().steps, 4);

    // Values that would make a run meaningless are refused up front.
    for (flag, value, expect) in [
        ("--lr", "NaN", "--lr"),
        ("--beta2", "1", "--beta2"),
        ("--epochs", "0", "--epochs"),
        ("--keep-last", "0", "--keep-last"),
        ("--dim", "1048576", "parameters"),
        (
            "--batch-tokens",
            "9223372036854775808",
            "one optimizer step needs",
        ),
    ] {
        let msg = error_of(&shards, &out, &[flag, value]);
        assert!(msg.contains(expect), "{flag} {value}: {msg}");
    }
    let msg = error_of(
        &shards,
        &out,
        &["--batch-size", "4", "--grad-accum", "2305843009213693952"],
    );
    assert!(msg.contains("--grad-accum"), "{msg}");
}

#[test]
fn config_file_values_apply_and_the_command_line_wins() {
    let dir = tempdir();
    let shards = dataset(dir.path());
    let cfg = dir.path().join("run.toml");
    std::fs::write(
        &cfg,
        "steps = 3\nlr = 0.002\nbatch_size = 2\nno_eval = true\n",
    )
    .unwrap();
    let out = dir.path().join("run");
    let s = train(
        &shards,
        &out,
        &["--config", path_str(&cfg), "--batch-size", "4"],
    )
    .unwrap();
    assert_eq!(s.steps, 3);
    let resolved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(resolved["batch_size"], 4);
    assert_eq!(resolved["schedule"]["lr"], 0.002);
    // A run length given on the command line replaces the file's, whatever its kind.
    let out2 = dir.path().join("run-tokens");
    train(
        &shards,
        &out2,
        &["--config", path_str(&cfg), "--tokens", "256"],
    )
    .unwrap();
    let resolved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out2.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        resolved["steps"], 2,
        "256 tokens at 4 × 32 per step: {resolved}"
    );
    std::fs::write(&cfg, "steps = [1\n").unwrap();
    let msg = format!(
        "{:#}",
        train(
            &shards,
            &dir.path().join("r1"),
            &["--config", path_str(&cfg)]
        )
        .unwrap_err()
    );
    assert!(
        msg.contains("run.toml:1: not valid TOML") && !msg.contains('\n'),
        "{msg}"
    );
    std::fs::write(&cfg, "stepz = 3\n").unwrap();
    let msg = format!(
        "{:#}",
        train(
            &shards,
            &dir.path().join("r2"),
            &["--config", path_str(&cfg)]
        )
        .unwrap_err()
    );
    assert!(msg.contains("stepz"), "{msg}");
}
