//! The training run: resolve the configuration, open the data, build or load the model, loop
//! over optimizer steps with evaluation, metrics and checkpoints, and stop cleanly on
//! Ctrl+C/SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ingot_formats::checksum::sha256_hex;
use ingot_formats::Dataset;
use ingot_tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::checkpoint::{self, hf, Checkpoint, TrainerState};
use crate::cli::TrainArgs;
use crate::data::{val_batches, DataPosition, TrainStream};
use crate::engine::{AdamW, Batch, Engine};
use crate::metrics::Metrics;
use crate::model::{init::init_params, Layout, ModelConfig};
use crate::schedule::{Schedule, ScheduleKind};

/// The fully resolved configuration of a run, saved as `config.json` in the run directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub shards: PathBuf,
    pub out: PathBuf,
    pub model: ModelConfig,
    pub seq_len: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub steps: u64,
    pub schedule: Schedule,
    pub optimizer: AdamW,
    pub grad_clip: Option<f32>,
    pub eval_every: u64,
    pub eval_batches: usize,
    pub evaluate: bool,
    pub save_every: u64,
    pub keep_last: usize,
    pub log_every: u64,
    pub seed: u64,
    pub device: String,
    /// `bf16` or `f32`; configs written before `--dtype` existed were f32.
    #[serde(default = "f32_name")]
    pub dtype: String,
    pub init_from: Option<PathBuf>,
}

fn f32_name() -> String {
    "f32".into()
}

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub steps: u64,
    pub stopped_early: bool,
    pub final_loss: f64,
    pub val_loss: Option<f64>,
    pub val_ppl: Option<f64>,
    pub tokens: u64,
    pub tokens_per_second: f64,
    pub checkpoint: Option<PathBuf>,
    pub run_dir: PathBuf,
}

/// Set by Ctrl+C / SIGTERM; the loop finishes its step, saves and returns.
fn stop_flag() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let f = Arc::clone(&flag);
        // If a handler cannot be installed (another library owns the signals), training still
        // runs; only the graceful stop is lost.
        // A second signal means "now": exit at once (the last checkpoint is intact).
        let _ = ctrlc::set_handler(move || {
            if f.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
        flag
    })
}

/// Refuses values that would make the run meaningless before any work is done.
fn check_hyperparameters(args: &TrainArgs, lr: f64) -> Result<()> {
    let nonneg = |name: &str, v: Option<f64>| -> Result<()> {
        match v {
            Some(x) if !x.is_finite() || x < 0.0 => {
                bail!("{name} must be a finite number ≥ 0, got {x}")
            }
            _ => Ok(()),
        }
    };
    nonneg("--lr", Some(lr))?;
    nonneg("--min-lr", args.min_lr)?;
    nonneg("--weight-decay", args.weight_decay.map(f64::from))?;
    nonneg("--adam-eps", args.adam_eps.map(f64::from))?;
    nonneg("--grad-clip", args.grad_clip.map(f64::from))?;
    for (name, b) in [("--beta1", args.beta1), ("--beta2", args.beta2)] {
        if let Some(b) = b {
            if !(0.0..1.0).contains(&b) {
                bail!("{name} must be in [0, 1), got {b}");
            }
        }
    }
    if let Some(f) = args.decay_fraction {
        if !(f > 0.0 && f <= 1.0) {
            bail!("--decay-fraction must be in (0, 1], got {f}");
        }
    }
    for (name, v) in [
        ("--eval-batches", args.eval_batches),
        ("--keep-last", args.keep_last),
    ] {
        if v == Some(0) {
            bail!("{name} must be at least 1");
        }
    }
    for (name, v) in [
        ("--log-every", args.log_every),
        ("--stop-after", args.stop_after),
    ] {
        if v == Some(0) {
            bail!("{name} must be at least 1");
        }
    }
    Ok(())
}

/// Refuses a run that cannot fit in the memory this machine has available (Linux
/// `/proc/meminfo`), instead of aborting on an allocation later. On the CPU that is the
/// model, its optimizer state and the activations of a micro-batch; with a GPU, the host
/// keeps only the f32 parameters and their storage-type copy for the upload (the CUDA
/// engine checks the device's memory itself, before allocating).
fn check_memory(model: &ModelConfig, batch: usize, seq: usize, device: &str) -> Result<()> {
    let (what, need, advice) = if crate::device::is_cuda(device) {
        (
            "this model's parameters need",
            8 * model.checked_num_params(),
            "use a smaller model",
        )
    } else {
        (
            "this model and micro-batch need",
            crate::engine::cpu::memory_estimate(model, batch, seq),
            "lower --batch-size or --seq-len (attention keeps batch × heads × seq² values per layer), or use a smaller model",
        )
    };
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u128>().ok())
            .map(|kb| kb * 1024)
    });
    if let Some(avail) = available {
        if need > avail {
            let gib = |b: u128| b as f64 / (1u64 << 30) as f64;
            bail!(
                "{what} about {:.1} GiB but {:.1} GiB of memory is available; {advice}",
                gib(need),
                gib(avail)
            );
        }
    }
    Ok(())
}

/// Whether any option that sets the model's shape was given.
fn shape_given(args: &TrainArgs) -> bool {
    args.model.is_some()
        || args.dim.is_some()
        || args.n_layers.is_some()
        || args.n_heads.is_some()
        || args.n_kv_heads.is_some()
        || args.ffn_dim.is_some()
        || args.rope_theta.is_some()
        || args.tie_embeddings.is_some()
}

fn model_config(args: &TrainArgs, vocab_size: usize) -> Result<ModelConfig> {
    let name = args.model.as_deref().unwrap_or("tiny");
    let mut c = ModelConfig::preset(name, vocab_size).with_context(|| {
        let names: Vec<&str> = crate::model::PRESETS.iter().map(|p| p.0).collect();
        format!(
            "--model {name:?}: no such preset; choose one of {}",
            names.join(", ")
        )
    })?;
    if let Some(v) = args.dim {
        c.dim = v;
    }
    if let Some(v) = args.n_layers {
        c.n_layers = v;
    }
    if let Some(v) = args.n_heads {
        c.n_heads = v;
        if args.n_kv_heads.is_none() {
            c.n_kv_heads = v;
        }
    }
    if let Some(v) = args.n_kv_heads {
        c.n_kv_heads = v;
    }
    if let Some(v) = args.ffn_dim {
        c.ffn_dim = v;
    }
    if let Some(v) = args.rope_theta {
        c.rope_theta = v;
    }
    if let Some(v) = args.tie_embeddings {
        c.tie_embeddings = v;
    }
    Ok(c)
}

/// Shape differences between two configurations, for refusal messages.
fn differences(a: &ModelConfig, b: &ModelConfig) -> String {
    let (va, vb) = (
        serde_json::to_value(a).unwrap_or_default(),
        serde_json::to_value(b).unwrap_or_default(),
    );
    let mut out = Vec::new();
    if let (Some(ma), Some(mb)) = (va.as_object(), vb.as_object()) {
        for (k, x) in ma {
            if mb.get(k) != Some(x) {
                out.push(format!(
                    "{k}: {x} vs {}",
                    mb.get(k).unwrap_or(&serde_json::Value::Null)
                ));
            }
        }
    }
    out.join(", ")
}

/// `key: a → b` for every top-level setting that differs between two run configurations.
fn differences_json(now: &RunConfig, saved: &RunConfig) -> Vec<String> {
    let (a, b) = (
        serde_json::to_value(now).unwrap_or_default(),
        serde_json::to_value(saved).unwrap_or_default(),
    );
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return Vec::new();
    };
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, v)| {
            format!(
                "{k} (given {v}, kept {})",
                b.get(k).unwrap_or(&serde_json::Value::Null)
            )
        })
        .collect()
}

/// Loads the dataset tokenizer's BOS/EOS strings for the checkpoint's tokenizer_config.json.
fn special(tok: &Tokenizer, id: Option<u32>) -> Option<(u32, String)> {
    id.and_then(|i| tok.id_to_token(i).map(|t| (i, t.to_string())))
}

pub fn run(args: &TrainArgs) -> Result<Summary> {
    let args = args.merged_with_file()?;
    let shards = args
        .shards
        .clone()
        .context("--shards is required: the dataset directory written by prep")?;
    if args.verify_data {
        ingot_formats::verify_dataset(&shards)?;
    }
    let dataset = Dataset::open(&shards)?;
    let index = dataset.index().clone();
    let index_sha = sha256_hex(
        &std::fs::read(shards.join(ingot_formats::INDEX_FILE)).context("cannot read index.json")?,
    );
    let tok_path = shards.join(&index.tokenizer.file);
    let tokenizer_json =
        std::fs::read(&tok_path).with_context(|| format!("cannot read {}", tok_path.display()))?;
    let tokenizer = Tokenizer::from_file(&tok_path)?;
    let vocab = usize::try_from(index.vocab_size).context("vocab_size too large")?;

    let name = args.name.clone().unwrap_or_else(|| "run".into());
    let run_dir = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&name));
    let checkpoints = run_dir.join("checkpoints");

    // Where the weights come from: a checkpoint of this run, another model, or fresh.
    let resume_from = if args.resume {
        let last = checkpoint::list(&checkpoints).pop();
        Some(
            last.with_context(|| format!("--resume: no checkpoint in {}", checkpoints.display()))?
                .1,
        )
    } else {
        None
    };
    if resume_from.is_none() && checkpoints.exists() && !checkpoint::list(&checkpoints).is_empty() {
        bail!(
            "{} already holds checkpoints; pass --resume to continue that run, or choose another --out/--name",
            run_dir.display()
        );
    }
    let mut model = model_config(&args, vocab)?;
    let mut loaded: Option<Vec<f32>> = None;
    if let Some(dir) = &args.init_from {
        if shape_given(&args) {
            bail!("--init-from {} takes the model's shape from its config.json; leave out --model, --dim, --n-layers, --n-heads, --n-kv-heads, --ffn-dim, --rope-theta and --tie-embeddings", dir.display());
        }
        // The configuration alone decides whether the weights are worth reading.
        let (shape, _, _) = hf::read_config(dir)?;
        if shape.vocab_size != vocab {
            bail!(
                "--init-from {}: the model's vocabulary has {} ids but the dataset's tokenizer has {vocab}; the dataset must be made with that model's tokenizer",
                dir.display(),
                shape.vocab_size
            );
        }
        let m = hf::read_model_dir(dir)?;
        model = m.config;
        loaded = Some(m.params);
    }

    let block_size = index.block_size as usize;
    let seq_len = args
        .seq_len
        .unwrap_or(block_size.min(model.max_seq_len.max(2)));
    if seq_len > block_size {
        bail!("--seq-len {seq_len} is longer than the dataset's blocks ({block_size} tokens); use --seq-len {block_size} or less, or re-run prep with a larger --block-size");
    }
    if seq_len < 2 {
        bail!("--seq-len must be at least 2 (one token predicts the next)");
    }
    if args.init_from.is_none() {
        model.max_seq_len = model.max_seq_len.max(seq_len);
    }
    model
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid model: {e}"))?;

    let batch_size = args.batch_size.unwrap_or(8);
    if batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let train_blocks = index.splits.train.blocks;
    if batch_size as u64 > train_blocks {
        bail!("--batch-size {batch_size} is larger than the train split ({train_blocks} blocks); use --batch-size {train_blocks} or less, or a smaller --block-size in prep");
    }
    let grad_accum = match args.batch_tokens {
        Some(t) => {
            let per_micro = batch_size * seq_len; // both bounded by the dataset above
            if t < per_micro || t % per_micro != 0 {
                bail!("--batch-tokens {t} must be a multiple of --batch-size × --seq-len = {per_micro}");
            }
            t / per_micro
        }
        None => args.grad_accum.unwrap_or(1),
    };
    if grad_accum == 0 {
        bail!("--grad-accum must be at least 1");
    }
    if (batch_size as u64).saturating_mul(grad_accum as u64) > train_blocks {
        bail!(
            "one optimizer step needs {} blocks (--batch-size {batch_size} × --grad-accum {grad_accum}) but the train split has {train_blocks}; lower one of them",
            batch_size * grad_accum
        );
    }
    let evaluate = !args.no_eval;
    if evaluate && index.splits.val.blocks == 0 {
        bail!("the dataset's val split is empty, so nothing can be evaluated; re-run prep with --val-fraction above 0, or pass --no-eval");
    }
    let step_blocks = (batch_size * grad_accum) as u64;
    if let Some(e) = args.epochs {
        if !e.is_finite() || e <= 0.0 {
            bail!("--epochs must be a positive number, got {e}");
        }
    }
    let steps = match (args.steps, args.epochs, args.tokens) {
        (Some(s), _, _) => s,
        (None, Some(e), _) => ((e * train_blocks as f64) / step_blocks as f64).ceil() as u64,
        (None, None, Some(t)) => t.div_ceil(step_blocks * seq_len as u64),
        (None, None, None) => train_blocks.div_ceil(step_blocks),
    };
    if steps == 0 {
        bail!("the run has 0 steps; give --steps, --epochs or --tokens");
    }
    let lr = args.lr.unwrap_or(1e-3);
    check_hyperparameters(&args, lr)?;
    let schedule = Schedule {
        kind: args.schedule.unwrap_or(ScheduleKind::Cosine),
        lr,
        min_lr: args.min_lr.unwrap_or(lr / 10.0),
        warmup_steps: args.warmup.unwrap_or((steps / 10).min(1000)),
        total_steps: steps,
        decay_fraction: args.decay_fraction.unwrap_or(0.2),
    };
    let defaults = AdamW::default();
    let optimizer = AdamW {
        beta1: args.beta1.unwrap_or(defaults.beta1),
        beta2: args.beta2.unwrap_or(defaults.beta2),
        eps: args.adam_eps.unwrap_or(defaults.eps),
        weight_decay: args.weight_decay.unwrap_or(defaults.weight_decay),
    };
    let device = args.device.clone().unwrap_or_else(|| "auto".into());
    let config = RunConfig {
        shards: shards.clone(),
        out: run_dir.clone(),
        model: model.clone(),
        seq_len,
        batch_size,
        grad_accum,
        steps,
        schedule,
        optimizer,
        grad_clip: args.grad_clip.or(Some(1.0)).filter(|c| *c > 0.0),
        eval_every: args.eval_every.unwrap_or(100),
        eval_batches: args.eval_batches.unwrap_or(20),
        evaluate,
        save_every: args.save_every.unwrap_or(500),
        keep_last: args.keep_last.unwrap_or(2),
        log_every: args.log_every.unwrap_or(10),
        seed: args.seed.unwrap_or(0),
        device: device.clone(),
        dtype: crate::device::effective_dtype(&device, args.dtype.as_deref(), None),
        init_from: args.init_from.clone(),
    };

    // Resume: the checkpoint must be of this model and this dataset.
    let mut start = TrainerState {
        step: 0,
        tokens_seen: 0,
        data: DataPosition::default(),
        seed: config.seed,
        val_loss: None,
        best_val_loss: None,
        dataset_index_sha256: index_sha.clone(),
        model: model.clone(),
    };
    let mut optimizer_state = None;
    let mut config = config;
    if let Some(dir) = &resume_from {
        let state = checkpoint::read_state(dir)?;
        // The run's own settings are the defaults of a resumed run: the shape and every
        // training option come from its config.json, so `--resume` alone continues exactly.
        let saved_path = run_dir.join("config.json");
        let saved: RunConfig = serde_json::from_str(
            &std::fs::read_to_string(&saved_path)
                .with_context(|| format!("--resume: cannot read {}", saved_path.display()))?,
        )
        .with_context(|| {
            format!(
                "--resume: {} is not a run configuration",
                saved_path.display()
            )
        })?;
        if shape_given(&args) && state.model != model {
            bail!(
                "--resume: the checkpoint in {} is a different model ({})",
                dir.display(),
                differences(&state.model, &model)
            );
        }
        if state.dataset_index_sha256 != index_sha {
            bail!("--resume: the checkpoint in {} was trained on another dataset (index.json differs from {})", dir.display(), shards.display());
        }
        match std::fs::read(dir.join("tokenizer.json")) {
            Ok(t) if sha256_hex(&t) == index.tokenizer.sha256 => {}
            Ok(_) => bail!("--resume: the checkpoint's tokenizer.json differs from the dataset's"),
            Err(e) => bail!("--resume: {}: {e}", dir.join("tokenizer.json").display()),
        }
        if args.seed.is_some_and(|s| s != state.seed) {
            bail!(
                "--resume: the run used --seed {}, not {}",
                state.seed,
                config.seed
            );
        }
        let mut resumed = saved.clone();
        resumed.model = state.model.clone();
        resumed.shards = config.shards.clone();
        resumed.out = config.out.clone();
        resumed.device = config.device.clone();
        resumed.dtype = crate::device::effective_dtype(
            &config.device,
            args.dtype.as_deref(),
            Some((&saved.device, &saved.dtype)),
        );
        resumed.seed = state.seed;
        // The run may be lengthened (or shortened) deliberately.
        if args.steps.is_some() || args.epochs.is_some() || args.tokens.is_some() {
            resumed.steps = config.steps;
            resumed.schedule.total_steps = config.steps;
        }
        let kept: Vec<String> = differences_json(&config, &resumed);
        if !kept.is_empty() {
            eprintln!(
                "notice: --resume keeps the run's saved settings where today's options differ: {}",
                kept.join(", ")
            );
        }
        if state.step >= resumed.steps {
            bail!(
                "--resume: the run is already at step {} of {}; pass a larger --steps to continue it",
                state.step,
                resumed.steps
            );
        }
        let (params, opt) = checkpoint::read_optimizer(dir)?;
        if opt.step != state.step {
            bail!(
                "--resume: {} says step {} but its optimizer state is at step {}; the checkpoint is inconsistent, resume from an earlier one by removing this directory",
                dir.display(),
                state.step,
                opt.step
            );
        }
        model = state.model.clone();
        config = resumed;
        loaded = Some(params);
        optimizer_state = Some(opt);
        start = state;
    }

    check_memory(&model, config.batch_size, config.seq_len, &config.device)?;
    let params = loaded.unwrap_or_else(|| init_params(&model, &Layout::new(&model), config.seed));
    // The dtype asked for, so that `--device cpu --dtype bf16` is refused and `auto` says that
    // it trains in f32; config.dtype records the one used.
    let asked = args.dtype.as_deref().unwrap_or(&config.dtype);
    let (mut engine, notice) = crate::device::create(&config.device, asked, model.clone(), params)?;
    if let Some(opt) = optimizer_state {
        engine.set_optimizer_state(opt)?;
    }
    engine.prepare(config.batch_size, config.seq_len)?;
    if let Some(n) = notice {
        eprintln!("{n}");
    }

    // Only now, with everything checked and the engine built, does the run directory appear.
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    let mut resolved = serde_json::to_string_pretty(&config)?;
    resolved.push('\n');
    std::fs::write(run_dir.join("config.json"), resolved)
        .context("cannot write the resolved config")?;

    let tok_files = hf::TokenizerFiles {
        tokenizer_json: &tokenizer_json,
        bos: special(&tokenizer, index.bos_id),
        eos: special(&tokenizer, index.eos_id),
    };
    train_loop(
        &config,
        engine.as_mut(),
        &dataset,
        start,
        &checkpoints,
        &tok_files,
        args.stop_after,
        args.quiet,
    )
}

#[allow(clippy::too_many_arguments)]
fn train_loop(
    config: &RunConfig,
    engine: &mut dyn Engine,
    dataset: &Dataset,
    mut state: TrainerState,
    checkpoints: &Path,
    tok: &hf::TokenizerFiles,
    stop_after: Option<u64>,
    quiet: bool,
) -> Result<Summary> {
    let stop = stop_flag();
    stop.store(false, Ordering::SeqCst);
    let mut metrics = Metrics::open(&config.out, state.step)?;
    let mut stream = TrainStream::new(dataset, config.seq_len, config.seed, state.data)?;
    let val = if config.evaluate {
        val_batches(
            dataset,
            config.seq_len,
            config.batch_size,
            config.eval_batches,
        )
    } else {
        Vec::new()
    };

    let bar = if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressBar::with_draw_target(Some(config.steps), ProgressDrawTarget::hidden())
    } else {
        let b = ProgressBar::new(config.steps);
        b.set_style(
            ProgressStyle::with_template("{bar:30.green/blue} {pos}/{len} {msg} eta {eta}")
                .expect("the template is valid")
                .progress_chars("=> "),
        );
        b
    };
    bar.set_position(state.step);

    let started = Instant::now();
    let first_step = state.step;
    let step_tokens = (config.batch_size * config.seq_len * config.grad_accum) as u64;
    let mut tokens_buf = Vec::new();
    let mut last_loss = f64::NAN;
    let mut last_val: Option<f64> = None;
    let mut last_saved: Option<PathBuf> = None;
    let mut stopped_early = false;

    let evaluate = |engine: &mut dyn Engine| -> Result<f64> {
        let mut sum = 0.0;
        let mut count = 0usize;
        for (rows, tokens) in &val {
            let b = Batch {
                tokens,
                batch: *rows,
                seq: config.seq_len,
            };
            sum += f64::from(engine.loss(&b)?) * b.predictions() as f64;
            count += b.predictions();
        }
        Ok(sum / count.max(1) as f64)
    };

    while state.step < config.steps {
        let step = state.step;
        let lr = config.schedule.lr_at(step);
        let mut loss = 0.0f64;
        for _ in 0..config.grad_accum {
            stream.next_batch(config.batch_size, &mut tokens_buf)?;
            let b = Batch {
                tokens: &tokens_buf,
                batch: config.batch_size,
                seq: config.seq_len,
            };
            loss += f64::from(engine.forward_backward(&b, 1.0 / config.grad_accum as f32)?);
        }
        loss /= config.grad_accum as f64;
        if !loss.is_finite() {
            bar.finish_and_clear();
            let kept = checkpoint::list(checkpoints)
                .pop()
                .map_or("no checkpoint was saved yet".to_string(), |(_, p)| {
                    format!("the last good checkpoint, {}, is untouched", p.display())
                });
            bail!("the loss became {loss} at step {}; stopping ({kept}); try a lower --lr or a --grad-clip", step + 1);
        }
        let norm = engine
            .step(&config.optimizer, lr as f32, config.grad_clip)
            .with_context(|| format!("at step {}, the last checkpoint is untouched", step + 1))?;
        state.step += 1;
        state.tokens_seen = state.tokens_seen.saturating_add(step_tokens);
        state.data = stream.position;
        last_loss = loss;

        let elapsed = started.elapsed().as_secs_f64().max(1e-9);
        let tps = (state.step - first_step) as f64 * step_tokens as f64 / elapsed;
        if state.step.is_multiple_of(config.log_every) || state.step == config.steps {
            let mut record = json!({"kind": "train", "step": state.step, "loss": loss, "lr": lr, "grad_norm": norm, "tokens": state.tokens_seen, "tokens_per_second": tps});
            if let Some(bytes) = engine.device_memory_used() {
                record["device_memory_bytes"] = bytes.into();
            }
            metrics.log(&record)?;
        }
        bar.set_position(state.step);
        bar.set_message(format!("loss {loss:.4} lr {lr:.2e} {tps:.0} tok/s"));

        let last = state.step == config.steps;
        let interrupted =
            stop.load(Ordering::SeqCst) || stop_after.is_some_and(|n| state.step - first_step >= n);
        let saving = last
            || interrupted
            || (config.save_every > 0 && state.step.is_multiple_of(config.save_every));
        state.val_loss = None;
        // Every checkpoint carries a validation loss, so `best` can be chosen among all of them.
        let eval_due = config.eval_every > 0 && state.step.is_multiple_of(config.eval_every);
        if config.evaluate && (last || eval_due || saving) {
            let vl = evaluate(engine)?;
            state.val_loss = Some(vl);
            state.best_val_loss = Some(state.best_val_loss.map_or(vl, |b: f64| b.min(vl)));
            last_val = Some(vl);
            metrics.log(
                &json!({"kind": "eval", "step": state.step, "val_loss": vl, "val_ppl": vl.exp()}),
            )?;
            if let Err(e) =
                crate::plot::loss_curve(&config.out.join("loss.png"), &metrics.train, &metrics.eval)
            {
                bar.suspend(|| eprintln!("warning: loss plot not written: {e:#}"));
            }
        }
        if saving {
            let params = engine.params();
            if let Some(bad) = params.iter().position(|p| !p.is_finite()) {
                bar.finish_and_clear();
                bail!(
                    "the weights hold a non-finite value (parameter {bad}) after step {}; nothing was saved and the last checkpoint is untouched; try a lower --lr",
                    state.step
                );
            }
            let opt = engine.optimizer_state();
            let path = checkpoint::save(
                checkpoints,
                &Checkpoint {
                    config: &config.model,
                    params: &params,
                    optimizer: &opt,
                    state: &state,
                    tokenizer: tok,
                },
            )?;
            checkpoint::prune(checkpoints, config.keep_last)?;
            last_saved = Some(path);
        }
        if interrupted && !last {
            stopped_early = true;
            break;
        }
    }
    bar.finish_and_clear();
    if let Err(e) =
        crate::plot::loss_curve(&config.out.join("loss.png"), &metrics.train, &metrics.eval)
    {
        eprintln!("warning: loss plot not written: {e:#}");
    }
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    Ok(Summary {
        steps: state.step,
        stopped_early,
        final_loss: last_loss,
        val_loss: last_val,
        val_ppl: last_val.map(f64::exp),
        tokens: state.tokens_seen,
        tokens_per_second: (state.step - first_step) as f64 * step_tokens as f64 / elapsed,
        checkpoint: last_saved,
        run_dir: config.out.clone(),
    })
}
