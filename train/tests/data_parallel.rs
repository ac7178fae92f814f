//! Data parallelism of the CPU engine over MPI: `mpirun -np 2 train` against one process.
//!
//! Needs the `mpi` feature (`cargo test -p ingot-train --features mpi --test data_parallel`)
//! and `mpirun` on the PATH (Debian: openmpi-bin). Without either every test says SKIPPED
//! and passes, unless `INGOT_REQUIRE_MPI=1` (CI), which makes a skip a failure.
//!
//! Tolerance: 2 ranks × micro-batch 4 compute the same sums as 1 process × micro-batch 8 in
//! another order (each rank's GEMMs see half the rows; MPI adds the two halves), so losses and
//! weights agree to rounding, checked at 1e-6 relative after 20 steps. Runs that differ only in
//! ZeRO-1, or only in being stopped and resumed, make the same operations in the same order and
//! are checked bit for bit.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{
    copy_dir, dataset, losses, rel, state_difference, train_bin, weights, which, with, without,
};

/// `mpirun` when the tests can run; otherwise says why (and fails under INGOT_REQUIRE_MPI=1).
fn mpirun(test: &str) -> Option<PathBuf> {
    let why = if !cfg!(feature = "mpi") {
        Some("train was built without --features mpi".to_string())
    } else {
        match which("mpirun") {
            Some(p) => return Some(p),
            None => Some("no mpirun on the PATH (Debian: apt install openmpi-bin)".into()),
        }
    };
    let why = why.unwrap_or_default();
    if std::env::var("INGOT_REQUIRE_MPI").as_deref() == Ok("1") {
        panic!("{test}: {why}, and INGOT_REQUIRE_MPI=1");
    }
    eprintln!("SKIPPED {test}: {why}");
    None
}

/// The options every run here shares: the tiny preset cut down to 2 layers, 20 steps,
/// a metrics line per step, checkpoints at 10 and 20.
fn common(shards: &Path, out: &Path) -> Vec<String> {
    [
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
        "20",
        "--lr",
        "3e-3",
        "--log-every",
        "1",
        "--eval-every",
        "10",
        "--eval-batches",
        "2",
        "--save-every",
        "10",
        "--keep-last",
        "5",
        "--threads",
        "1",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn ranks(mpirun: &Path, np: usize, args: &[String]) -> Command {
    let mut c = Command::new(mpirun);
    c.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "--bind-to",
        "none",
    ])
    .args(["-np", &np.to_string(), &train_bin()])
    .args(args);
    c
}

fn one(args: &[String]) -> Command {
    let mut c = Command::new(train_bin());
    c.args(args);
    c
}

fn run_ok(mut c: Command) -> Output {
    let out = c.output().expect("the command starts");
    assert!(
        out.status.success(),
        "{:?} failed: {}\n{}",
        c,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Losses within 1e-6, final master weights within `weights_tol` and first moments within
/// 1e-5, all relative.
fn assert_close_runs(a: &Path, b: &Path, what: &str, weights_tol: f64) {
    let (la, lb) = (losses(a), losses(b));
    assert_eq!(la.len(), 20, "{what}: {la:?}");
    assert_eq!(
        la.iter().map(|l| l.0).collect::<Vec<_>>(),
        lb.iter().map(|l| l.0).collect::<Vec<_>>()
    );
    for ((s, x), (_, y)) in la.iter().zip(&lb) {
        let r = (x - y).abs() / x.abs();
        assert!(r < 1e-6, "{what}: step {s} loss {x} vs {y} ({r:.2e})");
    }
    let (wa, oa) = weights(a, 20);
    let (wb, ob) = weights(b, 20);
    let (rw, rm) = (rel(&wa, &wb), rel(&oa.exp_avg, &ob.exp_avg));
    eprintln!("{what}: weights {rw:.2e}, exp_avg {rm:.2e} relative");
    assert!(
        rw < weights_tol && rm < 1e-5,
        "{what}: weights {rw:.2e}, exp_avg {rm:.2e}"
    );
}

fn assert_bitwise_runs(a: &Path, b: &Path, what: &str) {
    let bits = |l: Vec<(u64, f64)>| {
        l.into_iter()
            .map(|(s, x)| (s, x.to_bits()))
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(losses(a)), bits(losses(b)), "{what}: losses");
    if let Some(what_differs) = state_difference(a, b, 20) {
        panic!("{what}: {what_differs}");
    }
}

#[test]
fn two_ranks_equal_one_process_with_a_twice_larger_micro_batch() {
    let Some(mpirun) = mpirun("two_ranks_equal_one_process_with_a_twice_larger_micro_batch") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shards = dataset(dir.path());
    for accum in ["1", "2"] {
        let single = dir.path().join(format!("one-{accum}"));
        let double = dir.path().join(format!("two-{accum}"));
        let zero = dir.path().join(format!("zero-{accum}"));
        let acc = ["--grad-accum", accum];
        run_ok(one(&with(
            common(&shards, &single),
            &[&acc[..], &["--batch-size", "8"]].concat(),
        )));
        let out = run_ok(ranks(
            &mpirun,
            2,
            &with(
                common(&shards, &double),
                &[&acc[..], &["--batch-size", "4"]].concat(),
            ),
        ));
        // Only rank 0 reports.
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.matches("finished step 20").count(), 1, "{stdout}");
        run_ok(ranks(
            &mpirun,
            2,
            &with(
                common(&shards, &zero),
                &[&acc[..], &["--batch-size", "4", "--zero", "1"]].concat(),
            ),
        ));
        assert_close_runs(
            &single,
            &double,
            &format!("2×4 vs 1×8, accumulation {accum}"),
            1e-6,
        );
        assert_bitwise_runs(
            &double,
            &zero,
            &format!("ZeRO-1 vs not, accumulation {accum}"),
        );
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(zero.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(
            (cfg["world"].as_u64(), cfg["zero"].as_bool()),
            (Some(2), Some(true))
        );
    }
}

/// LoRA over MPI: the adapter's gradients are what the ranks sum. Two ranks of 4 sequences
/// equal one process of 8 (to rounding), ZeRO-1 shards the adapter's state bit for bit, and
/// QLoRA (`--quantize nf4`) runs the same way.
#[test]
fn lora_ranks_equal_one_process() {
    let Some(mpirun) = mpirun("lora_ranks_equal_one_process") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shards = dataset(dir.path());
    let base_run = dir.path().join("base");
    run_ok(one(&with(
        common(&shards, &base_run),
        &["--batch-size", "8"],
    )));
    let base = base_run.join("checkpoints/step-0000020");
    let lora = [
        "--init-from",
        base.to_str().unwrap(),
        "--lora-rank",
        "4",
        "--lora-save",
        "lm_head",
    ];
    for quantize in [&[][..], &["--quantize", "nf4"][..]] {
        let tag = if quantize.is_empty() { "lora" } else { "qlora" };
        let single = dir.path().join(format!("{tag}-one"));
        let double = dir.path().join(format!("{tag}-two"));
        let zero = dir.path().join(format!("{tag}-zero"));
        // The shape comes from the base: `common` without --model and --n-layers.
        let opts = |out: &Path, extra: &[&str]| {
            let kept = without(common(&shards, out), &["--model", "--n-layers"]);
            with(kept, &[&lora[..], quantize, extra].concat())
        };
        run_ok(one(&opts(&single, &["--batch-size", "8"])));
        run_ok(ranks(&mpirun, 2, &opts(&double, &["--batch-size", "4"])));
        run_ok(ranks(
            &mpirun,
            2,
            &opts(&zero, &["--batch-size", "4", "--zero", "1"]),
        ));
        assert!(double
            .join("checkpoints/step-0000020/adapter_model.safetensors")
            .is_file());
        // The adapter starts from B = 0, so its weights are small and their rounding
        // differences relatively larger than a whole model's (1.7e-6 measured).
        assert_close_runs(&single, &double, &format!("{tag}: 2×4 vs 1×8"), 1e-5);
        assert_bitwise_runs(&double, &zero, &format!("{tag}: ZeRO-1 vs not"));
    }
}

#[test]
fn stopped_and_resumed_ranks_continue_bit_for_bit() {
    let Some(mpirun) = mpirun("stopped_and_resumed_ranks_continue_bit_for_bit") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shards = dataset(dir.path());
    let straight = dir.path().join("straight");
    let resumed = dir.path().join("resumed");
    let other_world = dir.path().join("other-world");
    let b4 = ["--batch-size", "4"];
    run_ok(ranks(&mpirun, 2, &with(common(&shards, &straight), &b4)));
    run_ok(ranks(
        &mpirun,
        2,
        &with(
            common(&shards, &resumed),
            &[&b4[..], &["--stop-after", "10"]].concat(),
        ),
    ));
    assert!(!resumed.join("checkpoints/step-0000020").exists());
    // Same world, with ZeRO-1 switched on at the resume (the state is saved whole).
    std::fs::create_dir_all(&other_world).unwrap();
    copy_dir(&resumed, &other_world);
    run_ok(ranks(
        &mpirun,
        2,
        &with(common(&shards, &resumed), &["--resume", "--zero", "1"]),
    ));
    assert_bitwise_runs(&straight, &resumed, "2 ranks stopped at 10 and resumed");

    // One process with the same global batch continues from the same data position.
    let one_too_small = one(&with(common(&shards, &other_world), &["--resume"]));
    let refused = one_too_small_output(one_too_small);
    assert!(
        refused.contains("global batch is 8 blocks") && refused.contains("--batch-size 8"),
        "{refused}"
    );
    run_ok(one(&with(
        common(&shards, &other_world),
        &["--resume", "--batch-size", "8"],
    )));
    assert_close_runs(
        &straight,
        &other_world,
        "2 ranks to 10, then 1 process",
        1e-6,
    );
}

/// The stderr of a run that must fail, with no checkpoint written past step 10.
fn one_too_small_output(mut c: Command) -> String {
    let out = c.output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The processes `mpirun` (pid `parent`) started, with their rank.
fn rank_pids(parent: u32) -> Vec<(usize, u32)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The parent pid is the second field after the parenthesised command name.
        let after = stat.rsplit_once(')').map_or("", |s| s.1);
        if after.split_whitespace().nth(1) != Some(&parent.to_string()) {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let rank = env
            .split(|&b| b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok())
            .find_map(|kv| kv.strip_prefix("OMPI_COMM_WORLD_RANK="))
            .and_then(|r| r.parse().ok());
        if let Some(rank) = rank {
            found.push((rank, pid));
        }
    }
    found.sort();
    found
}

/// Starts a long 2-rank run, waits for its first checkpoint, and sends `signal` to rank 1.
fn signal_rank_one(signal: &str, run: &Path, shards: &Path, mpirun: &Path) -> (Output, Duration) {
    let mut args = with(common(shards, run), &["--batch-size", "4"]);
    let steps = args.iter().position(|a| a == "--steps").unwrap();
    args[steps + 1] = "100000".into();
    let save = args.iter().position(|a| a == "--save-every").unwrap();
    args[save + 1] = "5".into();
    let mut cmd = ranks(mpirun, 2, &args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let started = Instant::now();
    while ingot_train::checkpoint::list(&run.join("checkpoints")).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pids = rank_pids(child.id());
    let (_, pid) = *pids.iter().find(|p| p.0 == 1).expect("rank 1 is running");
    let sent = Instant::now();
    let ok = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let out = child.wait_with_output().unwrap();
    (out, sent.elapsed())
}

#[test]
fn sigterm_on_one_rank_saves_once_and_every_rank_exits_0() {
    let Some(mpirun) = mpirun("sigterm_on_one_rank_saves_once_and_every_rank_exits_0") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shards = dataset(dir.path());
    let run = dir.path().join("run");
    let (out, _) = signal_rank_one("-TERM", &run, &shards, &mpirun);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("stopped at step"), "{stdout}");
    let (step, last) = ingot_train::checkpoint::list(&run.join("checkpoints"))
        .pop()
        .unwrap();
    assert!(
        stdout.contains(&format!("stopped at step {step}")),
        "{stdout}"
    );
    ingot_train::checkpoint::read_optimizer(&last).unwrap();
}

#[test]
fn a_killed_rank_ends_the_run_naming_it_and_the_checkpoint_stays_intact() {
    let Some(mpirun) =
        mpirun("a_killed_rank_ends_the_run_naming_it_and_the_checkpoint_stays_intact")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shards = dataset(dir.path());
    let run = dir.path().join("run");
    let (out, took) = signal_rank_one("-KILL", &run, &shards, &mpirun);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(all.contains("rank 1"), "{all}");
    for (_, ck) in ingot_train::checkpoint::list(&run.join("checkpoints")) {
        ingot_train::checkpoint::read_optimizer(&ck).unwrap();
        ingot_train::checkpoint::read_state(&ck).unwrap();
    }
}
