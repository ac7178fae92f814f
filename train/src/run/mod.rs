//! The training run, in three parts: [`config`] resolves the options into the run's
//! configuration (a pure function, tested without an engine), [`resume`] continues a run from
//! its checkpoint, and [`trainer`] owns the engine, the data and the metrics and loops over
//! optimizer steps with evaluation and checkpoints, stopping cleanly on Ctrl+C/SIGTERM.
//! [`run`] opens the dataset, ties them together and builds the engine.

pub mod config;
pub mod resume;
pub mod trainer;

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ingot_formats::checksum::sha256_hex;
use ingot_formats::{Dataset, Index};
use ingot_tokenizer::Tokenizer;

use crate::checkpoint::{hf, TrainerState};
use crate::cli::TrainArgs;
use crate::collective::DataParallel;
use crate::data::DataPosition;
use crate::engine::{Adapter, Weights};
use crate::lora::{base_sha256, AdapterLayout};
use crate::model::{init::init_params, Layout};
pub use config::RunConfig;
use config::{DatasetFacts, Resolved};
pub use trainer::Summary;

/// Runs `train` with `args` (the command line; a `--config` file is merged here, the one
/// place it is).
pub fn run(args: &TrainArgs) -> Result<Summary> {
    let args = args.merged_with_file()?;
    let dp = data_parallel(&args)?;
    match dp.world() {
        1 => run_rank(&args, &dp),
        world => run_rank(&args, &dp).with_context(|| format!("rank {} of {world}", dp.rank())),
    }
}

/// The launcher's description of this process and the data-parallel options, resolved once.
fn data_parallel(args: &TrainArgs) -> Result<DataParallel> {
    let launch = crate::launch::from_process_env()?;
    if launch.is_none() && args.zero == Some(1) {
        eprintln!("notice: --zero 1 with one process: nothing to shard");
    }
    Ok(DataParallel {
        launch,
        zero: args.zero == Some(1),
        rendezvous: args.rendezvous.clone(),
        timeout: args
            .dist_timeout
            .map_or(crate::collective::DEFAULT_TIMEOUT, Duration::from_secs),
    })
}

fn run_rank(args: &TrainArgs, dp: &DataParallel) -> Result<Summary> {
    crate::threads::configure(args.threads)?;
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

    // The configuration alone decides whether the weights of --init-from are worth reading.
    let init_shape = match &args.init_from {
        Some(dir) => Some(hf::read_config(dir)?.0),
        None => None,
    };
    let Resolved { config, notices } = config::resolve_ranks(
        args,
        &facts(&shards, &index)?,
        init_shape.as_ref(),
        dp.world(),
    )?;
    let start = match resume::checkpoint_to_resume(args, &config.out)? {
        Some(dir) => resume::load(&dir, args, config, &index_sha, &index.tokenizer.sha256)?,
        None => fresh(config, args, index_sha)?,
    };
    let leader = dp.rank() == 0;
    for n in notices.iter().filter(|_| leader) {
        eprintln!("{n}");
    }
    let mut config = start.config;
    let model = config.model.clone();
    check_memory(&config, leader)?;
    let params = start
        .params
        .unwrap_or_else(|| init_params(&model, &Layout::new(&model), config.seed));
    let weights = match (&config.lora, start.base) {
        (None, _) => params.into(),
        (Some(lora), Some(base)) => Weights {
            base,
            adapter: Some(Adapter {
                lora: lora.clone(),
                params,
                seed: config.seed,
                quantize: config.quantize,
            }),
        },
        (Some(_), None) => bail!("a LoRA run without its base model's weights"),
    };
    // The dtype asked for, so that `--device cpu --dtype bf16` is refused and `auto` says that
    // it computes in f32; config.dtype records the one used.
    let asked = args.dtype.unwrap_or(config.dtype);
    let (mut engine, notice) =
        crate::device::create(config.device, asked, config.attention, model, weights, dp)?;
    config.attention_kernels = engine.attention_kernels();
    if let Some(opt) = start.optimizer {
        engine.set_optimizer_state(opt)?;
    }
    engine.prepare(config.batch_size, config.seq_len)?;
    if let Some(n) = notice.filter(|_| leader) {
        eprintln!("{n}");
    }
    if dp.launch.is_some() && leader {
        eprintln!(
            "notice: data-parallel over {} rank{} ({}), global batch {} blocks{}",
            config.world,
            if config.world == 1 { "" } else { "s" },
            engine.collective().name(),
            config.global_batch(),
            if config.zero { ", ZeRO-1" } else { "" }
        );
    }
    // Every rank has checked the run directory before rank 0 writes into it.
    engine.collective().barrier()?;
    if leader {
        write_config(&config)?;
    }
    let tok_files = hf::TokenizerFiles {
        tokenizer_json: &tokenizer_json,
        bos: special(&tokenizer, index.bos_id),
        eos: special(&tokenizer, index.eos_id),
    };
    trainer::Trainer {
        config: &config,
        engine,
        dataset: &dataset,
        state: start.state,
        tokenizer: &tok_files,
        stop_after: args.stop_after,
        quiet: args.quiet,
    }
    .run()
}

fn facts(shards: &Path, index: &Index) -> Result<DatasetFacts> {
    Ok(DatasetFacts {
        shards: shards.to_path_buf(),
        vocab_size: usize::try_from(index.vocab_size).context("vocab_size too large")?,
        block_size: index.block_size as usize,
        train_blocks: index.splits.train.blocks,
        val_blocks: index.splits.val.blocks,
    })
}

/// A run from step 0: fresh weights, or those of `--init-from`; with LoRA, those are the
/// frozen base and a fresh adapter trains.
fn fresh(config: RunConfig, args: &TrainArgs, index_sha: String) -> Result<resume::Start> {
    // The shape was read from the same config.json by the resolution.
    let params = match &args.init_from {
        Some(dir) => Some(hf::read_model_dir(dir)?.params),
        None => None,
    };
    let (params, base, base_sha) = match (&config.lora, params) {
        (Some(lora), Some(base)) => {
            let adapter = AdapterLayout::new(&config.model, lora).init(
                &base,
                &Layout::new(&config.model),
                config.seed,
            );
            let sha = base_sha256(&base);
            (Some(adapter), Some(base), Some(sha))
        }
        (_, params) => (params, None, None),
    };
    let state = TrainerState {
        step: 0,
        tokens_seen: 0,
        data: DataPosition::default(),
        seed: config.seed,
        val_loss: None,
        best_val_loss: None,
        dataset_index_sha256: index_sha,
        model: config.model.clone(),
        base_sha256: base_sha,
    };
    Ok(resume::Start {
        config,
        state,
        params,
        base,
        optimizer: None,
    })
}

/// Only now, with everything checked and the engine built, does the run directory appear.
fn write_config(config: &RunConfig) -> Result<()> {
    let dir = &config.out;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut resolved = serde_json::to_string_pretty(config)?;
    resolved.push('\n');
    std::fs::write(dir.join("config.json"), resolved).context("cannot write the resolved config")
}

/// Bytes of memory available to a new allocation (Linux `/proc/meminfo`'s MemAvailable), or
/// `None` where the system does not say.
pub fn available_memory() -> Option<u128> {
    std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u128>().ok())
            .map(|kb| kb * 1024)
    })
}

/// Refuses a run that cannot fit in the memory this machine has available (Linux
/// `/proc/meminfo`), instead of aborting on an allocation later; the estimate is the
/// engine's own.
fn check_memory(config: &RunConfig, leader: bool) -> Result<()> {
    let (model, device) = (&config.model, config.device);
    let need = match &config.lora {
        Some(lora) if device.is_cuda() => {
            let elem = match config.dtype {
                crate::device::DType::Bf16 => 2,
                crate::device::DType::F32 => 4,
            };
            let e = crate::engine::cuda::lora_memory_estimate(
                model,
                lora,
                config.quantize,
                config.batch_size,
                config.seq_len,
                elem,
            );
            if leader {
                eprintln!("notice: estimated GPU memory: {e}");
            }
            // The host holds the base in f32 while it is uploaded (the GPU's own check is
            // the engine's, when it allocates).
            device.host_memory_estimate(model, config.batch_size, config.seq_len)
        }
        Some(lora) => {
            let e = crate::engine::cpu::lora_memory_estimate(
                model,
                lora,
                config.quantize,
                config.batch_size,
                config.seq_len,
            );
            if leader {
                eprintln!("notice: estimated memory: {e}");
            }
            e.total()
        }
        None => device.host_memory_estimate(model, config.batch_size, config.seq_len),
    };
    let (what, advice) = if device.is_cuda() {
        ("this model's parameters need", "use a smaller model")
    } else {
        (
            "this model and micro-batch need",
            "lower --batch-size or --seq-len (attention keeps batch × heads × seq² values per layer), or use a smaller model",
        )
    };
    if let Some(avail) = available_memory() {
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

/// The dataset tokenizer's BOS/EOS strings for the checkpoint's tokenizer_config.json.
fn special(tok: &Tokenizer, id: Option<u32>) -> Option<(u32, String)> {
    id.and_then(|i| tok.id_to_token(i).map(|t| (i, t.to_string())))
}
