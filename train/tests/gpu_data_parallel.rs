//! Data parallelism of the CUDA engine over NCCL: ranks of `train --device cuda`, started
//! here as torchrun starts them (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR`,
//! `MASTER_PORT`), against one process.
//!
//! Runs on two or more GPUs, or on the stand-in CUDA device with the stand-in NCCL
//! (`scripts/emulated-gpu-check.sh` puts both first on `LD_LIBRARY_PATH`; there the ranks
//! share the one emulated device and reduce through shared memory). With one real GPU only
//! the world-size-1 test runs (NCCL refuses two ranks on one GPU) and the others print
//! `SKIPPED`. Without a usable device or NCCL every test prints `SKIPPED: <reason>` and
//! passes, unless `INGOT_REQUIRE_GPU=1`, which makes it fail.
//!
//! Tolerances, those of `gpu_engine.rs`: 2 ranks × micro-batch 4 make the same sums as
//! 1 × micro-batch 8 in another order (each rank's GEMMs see half the rows; NCCL adds the
//! halves), so they agree to rounding:
//! - f32: every step's loss and gradient norm within [`TRAIN_TOL`] = 1e-4 relative; the
//!   update of the second half of the run (master weights at the end minus at the middle)
//!   within [`GRAD_TOL`] = 1e-4 relative;
//! - bf16: losses within [`BF16_FWD_TOL`] = 1e-2, gradient norms and the update within
//!   [`BF16_GRAD_TOL`] = 3e-2 (every activation is rounded to bf16, and half a batch rounds
//!   differently from a whole one).
//!
//! Comparing the update rather than the weights keeps the check sensitive: the weights move
//! little in a few steps, so unreduced or wrongly scaled gradients would hide in them. The
//! gradient norm catches a sum taken for a mean (AdamW alone would not: it is invariant to
//! the gradients' scale). A run stopped and resumed with the same world size is checked bit
//! for bit (same operations in the same order).

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{copy_dir, dataset, records, state_difference, train_bin, weights, with, without};

const TRAIN_TOL: f64 = 1e-4;
const GRAD_TOL: f64 = 1e-4;
const BF16_FWD_TOL: f64 = 1e-2;
const BF16_GRAD_TOL: f64 = 3e-2;

/// Steps of every run: checkpoints at the middle and the end.
const STEPS: u64 = 8;

/// Wall-clock bound of one run (the emulated device runs every kernel on the CPU).
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// Whether the tests can run, and on how many ranks: `Some(2)` (two GPUs, or the stand-in
/// device), `Some(1)` (one real GPU), or `None` after printing why (a failure under
/// `INGOT_REQUIRE_GPU=1`).
fn ranks_available(test: &str) -> Option<usize> {
    let why = match ingot_kernels::probe::cuda_device(0) {
        Err(e) => format!("no CUDA device ({e})"),
        Ok(gpu) => match ingot_train::collective::nccl::library::get() {
            Err(e) => e,
            Ok(_) if gpu.is_emulated() || gpu.device_count >= 2 => return Some(2),
            Ok(_) => return Some(1),
        },
    };
    if std::env::var("INGOT_REQUIRE_GPU").as_deref() == Ok("1") {
        panic!("{test}: {why}, and INGOT_REQUIRE_GPU=1");
    }
    println!("SKIPPED {test}: {why}");
    None
}

/// `ranks_available(test)` is 2, or says why the test does not run.
fn two_ranks(test: &str) -> bool {
    match ranks_available(test) {
        Some(2) => true,
        Some(_) => {
            println!("SKIPPED {test}: one GPU only, and NCCL needs a GPU per rank");
            false
        }
        None => false,
    }
}

/// The options every run shares: the tiny preset cut down to 2 layers, blocks of 32,
/// a metrics line per step, checkpoints at the middle and the end.
fn common_args(shards: &Path, out: &Path, dtype: &str) -> Vec<String> {
    let (steps, half) = (STEPS.to_string(), (STEPS / 2).to_string());
    [
        "--device",
        "cuda",
        "--dtype",
        dtype,
        "--shards",
        shards.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--model",
        "tiny",
        "--n-layers",
        "2",
        "--seq-len",
        "32",
        "--steps",
        &steps,
        "--lr",
        "3e-3",
        "--log-every",
        "1",
        "--eval-every",
        &half,
        "--eval-batches",
        "2",
        "--save-every",
        &half,
        "--keep-last",
        "5",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A port for `MASTER_PORT` whose successor (the rendezvous's) was free a moment ago.
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// Starts `world` ranks of `train args` as torchrun would on one node.
fn spawn_ranks(world: usize, args: &[String]) -> Vec<Child> {
    let port = free_port().to_string();
    (0..world)
        .map(|rank| {
            Command::new(train_bin())
                .args(args)
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("LOCAL_WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("train starts")
        })
        .collect()
}

/// Waits for `child` at most until `deadline`, killing it past that.
fn wait_until(mut child: Child, deadline: Instant) -> Output {
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn describe(outs: &[Output]) -> String {
    outs.iter()
        .enumerate()
        .map(|(rank, o)| {
            format!(
                "rank {rank} ({}):\n{}{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .collect()
}

/// `world` ranks of `train args`, which must all succeed.
fn run_ranks(world: usize, args: &[String]) -> Vec<Output> {
    let deadline = Instant::now() + RUN_LIMIT;
    let outs: Vec<Output> = spawn_ranks(world, args)
        .into_iter()
        .map(|c| wait_until(c, deadline))
        .collect();
    assert!(
        outs.iter().all(|o| o.status.success()),
        "{world} ranks of {args:?}:\n{}",
        describe(&outs)
    );
    outs
}

/// One process of `train args`, without a launcher's environment.
fn run_one(args: &[String]) -> Output {
    let mut c = Command::new(train_bin());
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = wait_until(c.spawn().unwrap(), Instant::now() + RUN_LIMIT);
    assert!(
        out.status.success(),
        "{args:?}:\n{}",
        describe(std::slice::from_ref(&out))
    );
    out
}

/// ‖a − b‖₂ / ‖b‖₂, in f64.
fn rel2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += (f64::from(x) - f64::from(y)).powi(2);
        den += f64::from(y).powi(2);
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// The master weights' change from the middle checkpoint to the last.
fn update(run: &Path) -> Vec<f32> {
    let (mid, _) = weights(run, STEPS / 2);
    let (end, _) = weights(run, STEPS);
    end.iter().zip(&mid).map(|(e, m)| e - m).collect()
}

/// The tolerances of `dtype`: (losses, gradient norms and updates).
fn tolerances(dtype: &str) -> (f64, f64) {
    match dtype {
        "f32" => (TRAIN_TOL, GRAD_TOL),
        _ => (BF16_FWD_TOL, BF16_GRAD_TOL),
    }
}

/// Every step's loss and gradient norm of run `a` equal run `b`'s within the tolerances of
/// `dtype`; returns the largest relative differences.
fn assert_close_records(a: &Path, b: &Path, dtype: &str, what: &str) -> (f64, f64) {
    let (loss_tol, grad_tol) = tolerances(dtype);
    let (ra, rb) = (records(a, "train"), records(b, "train"));
    assert_eq!(ra.len(), STEPS as usize, "{what}: {ra:?}");
    assert_eq!(ra.len(), rb.len(), "{what}");
    let mut worst = (0.0f64, 0.0f64);
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!(x["step"], y["step"], "{what}");
        for (key, tol, worst) in [
            ("loss", loss_tol, &mut worst.0),
            ("grad_norm", grad_tol, &mut worst.1),
        ] {
            let (u, v) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
            let r = (u - v).abs() / v.abs();
            assert!(
                r < tol,
                "{what}: step {} {key} {u} vs {v} ({r:.2e})",
                x["step"]
            );
            *worst = worst.max(r);
        }
    }
    println!(
        "{what} ({dtype}): losses {:.2e}, gradient norms {:.2e} relative at worst",
        worst.0, worst.1
    );
    worst
}

/// The update of run `a`'s second half equals run `b`'s within the gradient tolerance of
/// `dtype` (both resumed from the same checkpoint); returns whether the final master
/// weights and moments are equal bit for bit.
fn assert_close_updates(a: &Path, b: &Path, dtype: &str, what: &str) -> bool {
    let ru = rel2(&update(a), &update(b));
    println!(
        "{what} ({dtype}): update of steps {}-{STEPS} {ru:.2e} relative",
        STEPS / 2 + 1
    );
    assert!(ru < tolerances(dtype).1, "{what}: update {ru:.2e} relative");
    state_difference(a, b, STEPS).is_none()
}

/// A run's records of `kind` without the fields that measure the machine (speed, memory).
fn results(run: &Path, kind: &str) -> Vec<serde_json::Value> {
    let mut r = records(run, kind);
    for v in &mut r {
        let m = v.as_object_mut().unwrap();
        m.remove("tokens_per_second");
        m.remove("device_memory_bytes");
    }
    r
}

fn assert_bitwise_runs(a: &Path, b: &Path, what: &str) {
    for kind in ["train", "eval"] {
        assert_eq!(results(a, kind), results(b, kind), "{what}: {kind} records");
    }
    if let Some(what_differs) = state_difference(a, b, STEPS) {
        panic!("{what}: {what_differs}");
    }
}

#[test]
fn one_rank_under_torchrun_equals_one_process_bit_for_bit() {
    if ranks_available("one_rank_under_torchrun_equals_one_process_bit_for_bit").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shards = dataset(dir.path());
    let (solo, rank) = (dir.path().join("solo"), dir.path().join("rank"));
    let b8 = ["--batch-size", "8"];
    run_one(&with(common_args(&shards, &solo, "bf16"), &b8));
    let outs = run_ranks(1, &with(common_args(&shards, &rank, "bf16"), &b8));
    let stderr = String::from_utf8_lossy(&outs[0].stderr);
    assert!(
        stderr.contains("data-parallel over 1 rank") && stderr.contains("NCCL"),
        "{stderr}"
    );
    assert_bitwise_runs(&solo, &rank, "1 rank over NCCL against one process");
}

/// In `dtype`: 2 ranks × micro-batch 4 from the start against 1 process × 8 (losses and
/// gradient norms), and from the single process's middle checkpoint, 2 ranks without and
/// with ZeRO-1 against the process itself (the update of the second half). An update is
/// compared from a common checkpoint because AdamW's first steps are nearly
/// `lr · sign(gradient)`: entries whose gradients almost cancel flip with rounding, and
/// runs apart from step 1 drift by more than their gradients differ (measured 2.6e-4 in
/// f32, 1.6e-3 in bf16, under emulation).
fn two_ranks_against_one(dtype: &str) {
    let dir = tempfile::tempdir().unwrap();
    let shards = dataset(dir.path());
    let path = |name: &str| dir.path().join(name);
    let (one, two) = (path("one"), path("two"));
    let (two_resumed, zero_resumed) = (path("two-resumed"), path("zero-resumed"));
    let args = |out: &Path, extra: &[&str]| with(common_args(&shards, out, dtype), extra);
    let half = (STEPS / 2).to_string();
    let (b8, b4) = (["--batch-size", "8"], ["--batch-size", "4"]);

    run_one(&args(&one, &[&b8[..], &["--stop-after", &half]].concat()));
    for copy in [&two_resumed, &zero_resumed] {
        std::fs::create_dir_all(copy).unwrap();
        copy_dir(&one, copy);
    }
    run_one(&args(&one, &[&b8[..], &["--resume"]].concat()));
    let outs = run_ranks(2, &args(&two, &b4));
    // Only rank 0 reports and writes.
    assert!(outs[1].stdout.is_empty(), "{}", describe(&outs));
    assert_close_records(&two, &one, dtype, "2 ranks × 4 against 1 × 8");

    run_ranks(2, &args(&two_resumed, &[&b4[..], &["--resume"]].concat()));
    let zero_args = [&b4[..], &["--resume", "--zero", "1"]].concat();
    let outs = run_ranks(2, &args(&zero_resumed, &zero_args));
    let stderr = String::from_utf8_lossy(&outs[0].stderr);
    assert!(stderr.contains("ZeRO-1"), "{stderr}");
    let what = "from 1 × 8 at the middle, 2 ranks × 4";
    assert_close_updates(&two_resumed, &one, dtype, what);
    let bitwise =
        assert_close_updates(&zero_resumed, &two_resumed, dtype, "ZeRO-1 against without");
    println!("ZeRO-1 against without ({dtype}): bit for bit: {bitwise}");
}

#[test]
fn two_ranks_equal_one_process_with_a_twice_larger_micro_batch_f32() {
    if two_ranks("two_ranks_equal_one_process_with_a_twice_larger_micro_batch_f32") {
        two_ranks_against_one("f32");
    }
}

#[test]
fn two_ranks_equal_one_process_with_a_twice_larger_micro_batch_bf16() {
    if two_ranks("two_ranks_equal_one_process_with_a_twice_larger_micro_batch_bf16") {
        two_ranks_against_one("bf16");
    }
}

/// LoRA over NCCL (f32): a LoRA run of 2 ranks × 4 sequences on a base trained here equals one
/// process of 8, step by step and in the adapter's update, with and without ZeRO-1 (which
/// then shards the adapter's master weights and moments).
#[test]
fn lora_ranks_equal_one_process() {
    if !two_ranks("lora_ranks_equal_one_process") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shards = dataset(dir.path());
    let path = |name: &str| dir.path().join(name);
    run_one(&with(
        common_args(&shards, &path("base"), "f32"),
        &["--batch-size", "8"],
    ));
    let base = path("base").join(format!("checkpoints/step-{STEPS:07}"));
    // The shape comes from the base: the common options without --model and --n-layers.
    let args = |out: &Path, extra: &[&str]| {
        let kept = without(common_args(&shards, out, "f32"), &["--model", "--n-layers"]);
        let lora = ["--init-from", base.to_str().unwrap(), "--lora-rank", "4"];
        with(kept, &[&lora[..], extra].concat())
    };
    let (one, two, zero) = (path("one"), path("two"), path("zero"));
    run_one(&args(&one, &["--batch-size", "8"]));
    run_ranks(2, &args(&two, &["--batch-size", "4"]));
    run_ranks(2, &args(&zero, &["--batch-size", "4", "--zero", "1"]));
    assert!(two
        .join(format!(
            "checkpoints/step-{STEPS:07}/adapter_model.safetensors"
        ))
        .is_file());
    assert_close_records(&two, &one, "f32", "LoRA: 2 ranks × 4 against 1 × 8");
    assert_close_updates(&two, &one, "f32", "LoRA: 2 ranks × 4 against 1 × 8");
    assert_close_updates(&zero, &two, "f32", "LoRA: ZeRO-1 against without");
}

#[test]
fn zero_1_ranks_stopped_and_resumed_continue_bit_for_bit_or_on_one_process() {
    let test = "zero_1_ranks_stopped_and_resumed_continue_bit_for_bit_or_on_one_process";
    if !two_ranks(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shards = dataset(dir.path());
    let straight = dir.path().join("straight");
    let resumed = dir.path().join("resumed");
    let other_world = dir.path().join("other-world");
    let args = |out: &Path, extra: &[&str]| {
        with(
            common_args(&shards, out, "bf16"),
            &[&["--batch-size", "4", "--zero", "1"][..], extra].concat(),
        )
    };
    let half = (STEPS / 2).to_string();
    run_ranks(2, &args(&straight, &[]));
    run_ranks(2, &args(&resumed, &["--stop-after", &half]));
    std::fs::create_dir_all(&other_world).unwrap();
    copy_dir(&resumed, &other_world);
    run_ranks(2, &args(&resumed, &["--resume"]));
    assert_bitwise_runs(&straight, &resumed, "2 ZeRO-1 ranks stopped and resumed");

    // One process with the same global batch continues from the same data position, with
    // the optimizer state that the two shards saved as one.
    let one = with(
        common_args(&shards, &other_world, "bf16"),
        &["--batch-size", "8", "--resume"],
    );
    run_one(&one);
    let (ra, rb) = (records(&straight, "train"), records(&other_world, "train"));
    assert_eq!(ra.len(), rb.len());
    for (x, y) in ra.iter().zip(&rb).skip(STEPS as usize / 2) {
        let (u, v) = (x["loss"].as_f64().unwrap(), y["loss"].as_f64().unwrap());
        let r = (u - v).abs() / v;
        assert!(r < BF16_FWD_TOL, "step {}: loss {u} vs {v}", x["step"]);
    }
    let what = "2 ZeRO-1 ranks to the middle, then 1 process";
    assert_close_updates(&other_world, &straight, "bf16", what);
}

/// Starts a long 2-rank run, waits for its first checkpoint, sends `signal` to rank 1, and
/// waits (at most a minute) for both ranks.
fn signal_rank_one(signal: &str, run: &Path, shards: &Path) -> (Vec<Output>, Duration) {
    let mut args = with(common_args(shards, run, "bf16"), &["--batch-size", "4"]);
    let steps = args.iter().position(|a| a == "--steps").unwrap();
    args[steps + 1] = "100000".into();
    let save = args.iter().position(|a| a == "--save-every").unwrap();
    args[save + 1] = "2".into();
    let children = spawn_ranks(2, &args);
    let started = Instant::now();
    while ingot_train::checkpoint::list(&run.join("checkpoints")).is_empty() {
        assert!(started.elapsed() < RUN_LIMIT, "no checkpoint");
        std::thread::sleep(Duration::from_millis(50));
    }
    let sent = Instant::now();
    let ok = Command::new("kill")
        .args([signal, &children[1].id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let deadline = sent + Duration::from_secs(60);
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| wait_until(c, deadline))
        .collect();
    (outs, sent.elapsed())
}

#[test]
fn sigterm_on_one_rank_saves_once_and_every_rank_exits_0() {
    if !two_ranks("sigterm_on_one_rank_saves_once_and_every_rank_exits_0") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shards = dataset(dir.path());
    let run = dir.path().join("run");
    let (outs, _) = signal_rank_one("-TERM", &run, &shards);
    assert!(
        outs.iter().all(|o| o.status.success()),
        "{}",
        describe(&outs)
    );
    let (step, last) = ingot_train::checkpoint::list(&run.join("checkpoints"))
        .pop()
        .unwrap();
    let stdout = String::from_utf8_lossy(&outs[0].stdout);
    assert!(
        stdout.contains(&format!("stopped at step {step}")),
        "{stdout}"
    );
    ingot_train::checkpoint::read_optimizer(&last).unwrap();
}

#[test]
fn a_killed_rank_ends_the_run_naming_it_and_the_checkpoint_stays_intact() {
    if !two_ranks("a_killed_rank_ends_the_run_naming_it_and_the_checkpoint_stays_intact") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shards = dataset(dir.path());
    let run = dir.path().join("run");
    let (outs, took) = signal_rank_one("-KILL", &run, &shards);
    let rank0 = &outs[0];
    let stderr = String::from_utf8_lossy(&rank0.stderr);
    assert!(!rank0.status.success(), "{}", describe(&outs));
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(stderr.contains("rank 1"), "{stderr}");
    let last_line = stderr.lines().last().unwrap_or_default();
    assert!(last_line.starts_with("error: "), "{stderr}");
    println!("rank 1 killed: rank 0 ended after {took:.1?}: {last_line}");
    for (_, ck) in ingot_train::checkpoint::list(&run.join("checkpoints")) {
        ingot_train::checkpoint::read_optimizer(&ck).unwrap();
        ingot_train::checkpoint::read_state(&ck).unwrap();
    }
}
