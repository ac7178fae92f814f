//! The training loop: owns the engine, the data stream and the metrics, and runs optimizer
//! steps with evaluation and checkpoints until the run ends or is stopped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ingot_formats::Dataset;
use serde::Serialize;
use serde_json::json;

use super::config::RunConfig;
use crate::checkpoint::{self, hf, AdapterCheckpoint, Checkpoint, TrainerState};
use crate::data::{SplitBatches, TrainStream};
use crate::engine::{Batch, Engine};
use crate::metrics::Metrics;

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
    /// Whether this process is rank 0 (the one that reports).
    pub leader: bool,
}

pub struct Trainer<'a> {
    pub config: &'a RunConfig,
    pub engine: Box<dyn Engine>,
    pub dataset: &'a Dataset,
    pub state: TrainerState,
    pub tokenizer: &'a hf::TokenizerFiles<'a>,
    /// Steps of this invocation after which it stops as Ctrl+C would.
    pub stop_after: Option<u64>,
    pub quiet: bool,
}

/// What the loop tracks besides the trainer state.
struct Progress {
    bar: ProgressBar,
    started: Instant,
    first_step: u64,
    last_loss: f64,
    last_val: Option<f64>,
    last_saved: Option<PathBuf>,
}

impl Trainer<'_> {
    fn checkpoints(&self) -> PathBuf {
        self.config.out.join("checkpoints")
    }

    /// Tokens per optimizer step, over every rank.
    fn step_tokens(&self) -> u64 {
        let c = self.config;
        (c.global_batch() * c.seq_len) as u64
    }

    /// Only rank 0 writes metrics, plots and checkpoints and draws the progress bar.
    fn leader(&mut self) -> bool {
        self.engine.collective().rank() == 0
    }

    pub fn run(mut self) -> Result<Summary> {
        let stop = stop_flag();
        stop.store(false, Ordering::SeqCst);
        let c = self.config;
        let leader = self.leader();
        let mut metrics = match leader {
            true => Some(Metrics::open(&c.out, self.state.step)?),
            false => None,
        };
        let mut stream = TrainStream::new(self.dataset, c.seq_len, c.seed, self.state.data)?;
        let mut p = Progress {
            bar: progress_bar(c.steps, self.quiet || !leader),
            started: Instant::now(),
            first_step: self.state.step,
            last_loss: f64::NAN,
            last_val: None,
            last_saved: None,
        };
        p.bar.set_position(self.state.step);
        let mut stopped_early = false;
        let mut tokens = Vec::new();
        while self.state.step < c.steps {
            let (loss, lr, stop_asked) = self.optimizer_step(&mut stream, &mut tokens, &p.bar)?;
            p.last_loss = loss;
            if let Some(m) = metrics.as_mut() {
                self.log_step(m, &p, loss, lr.0, lr.1)?;
            }
            let last = self.state.step == c.steps;
            let interrupted = stop_asked
                || self
                    .stop_after
                    .is_some_and(|n| self.state.step - p.first_step >= n);
            let saving = last
                || interrupted
                || (c.save_every > 0 && self.state.step.is_multiple_of(c.save_every));
            self.state.val_loss = None;
            // Every checkpoint carries a validation loss, so `best` can be chosen among all.
            let eval_due = c.eval_every > 0 && self.state.step.is_multiple_of(c.eval_every);
            if c.evaluate && (last || eval_due || saving) {
                p.last_val = Some(self.evaluate_now(metrics.as_mut(), &p.bar)?);
            }
            if saving {
                p.last_saved = self.save(&p.bar)?;
            }
            if interrupted && !last {
                stopped_early = true;
                break;
            }
        }
        p.bar.finish_and_clear();
        if let Some(m) = &metrics {
            plot(c, m, None);
        }
        // Every rank got here: the collectives may shut down in order.
        self.engine.collective().close()?;
        let elapsed = p.started.elapsed().as_secs_f64().max(1e-9);
        Ok(Summary {
            steps: self.state.step,
            stopped_early,
            final_loss: p.last_loss,
            val_loss: p.last_val,
            val_ppl: p.last_val.map(f64::exp),
            tokens: self.state.tokens_seen,
            tokens_per_second: (self.state.step - p.first_step) as f64 * self.step_tokens() as f64
                / elapsed,
            checkpoint: p.last_saved,
            run_dir: c.out.clone(),
            leader,
        })
    }

    /// One optimizer step over `grad_accum` micro-batches of this rank; the mean loss over
    /// every rank, the learning rate, the gradient norm before clipping, and whether any rank
    /// was asked to stop (Ctrl+C/SIGTERM), so that all stop after the same step.
    fn optimizer_step(
        &mut self,
        stream: &mut TrainStream,
        tokens: &mut Vec<u32>,
        bar: &ProgressBar,
    ) -> Result<(f64, (f64, f32), bool)> {
        let c = self.config;
        let step = self.state.step;
        let lr = c.schedule.lr_at(step);
        let (rank, world) = (self.engine.collective().rank(), c.world);
        let rows = rank * c.batch_size..(rank + 1) * c.batch_size;
        let mut loss = 0.0f64;
        for _ in 0..c.grad_accum {
            stream.next_slice(world * c.batch_size, rows.clone(), tokens)?;
            let b = Batch {
                tokens,
                batch: c.batch_size,
                seq: c.seq_len,
            };
            let scale = 1.0 / c.grad_accum as f32;
            loss += f64::from(self.engine.forward_backward(&b, scale)?);
        }
        // Every rank's micro-batches hold as many predictions, so the global mean is the mean
        // of the ranks' means.
        let stop = stop_flag().load(Ordering::SeqCst);
        let mut agreed = [loss / c.grad_accum as f64, f64::from(u8::from(stop))];
        self.engine.collective().all_reduce_sum_f64(&mut agreed)?;
        let loss = agreed[0] / world as f64;
        if !loss.is_finite() {
            bar.finish_and_clear();
            let kept = checkpoint::list(&self.checkpoints())
                .pop()
                .map_or("no checkpoint was saved yet".to_string(), |(_, p)| {
                    format!("the last good checkpoint, {}, is untouched", p.display())
                });
            bail!("the loss became {loss} at step {}; stopping ({kept}); try a lower --lr or a --grad-clip", step + 1);
        }
        let norm = self
            .engine
            .step(&c.optimizer, lr as f32, c.grad_clip)
            .with_context(|| format!("at step {}, the last checkpoint is untouched", step + 1))?;
        self.state.step += 1;
        self.state.tokens_seen = self.state.tokens_seen.saturating_add(self.step_tokens());
        self.state.data = stream.position;
        Ok((loss, (lr, norm), agreed[1] > 0.0))
    }

    fn log_step(
        &self,
        metrics: &mut Metrics,
        p: &Progress,
        loss: f64,
        lr: f64,
        norm: f32,
    ) -> Result<()> {
        let (c, step) = (self.config, self.state.step);
        let elapsed = p.started.elapsed().as_secs_f64().max(1e-9);
        let tps = (step - p.first_step) as f64 * self.step_tokens() as f64 / elapsed;
        if step.is_multiple_of(c.log_every) || step == c.steps {
            let mut record = json!({"kind": "train", "step": step, "loss": loss, "lr": lr, "grad_norm": norm, "tokens": self.state.tokens_seen, "tokens_per_second": tps});
            if let Some(bytes) = self.engine.device_memory_used() {
                record["device_memory_bytes"] = bytes.into();
            }
            metrics.log(&record)?;
        }
        p.bar.set_position(step);
        p.bar
            .set_message(format!("loss {loss:.4} lr {lr:.2e} {tps:.0} tok/s"));
        Ok(())
    }

    /// Mean loss over the first `eval_batches` global batches of the val split (as many blocks
    /// as one process with a `world`-times larger batch reads), read as it goes: the ranks
    /// share the batches out (rank r takes every world-th from the r-th) and add their sums.
    fn evaluate_now(&mut self, metrics: Option<&mut Metrics>, bar: &ProgressBar) -> Result<f64> {
        let c = self.config;
        let (rank, world) = (self.engine.collective().rank(), c.world);
        let batches = SplitBatches::new(self.dataset, "val", c.seq_len, c.batch_size)?;
        let (mut sum, mut count) = (0.0, 0usize);
        let mine = batches
            .take(c.eval_batches * world)
            .enumerate()
            .filter(|(i, _)| i % world == rank);
        for (_, batch) in mine {
            let (rows, tokens) = batch?;
            let b = Batch {
                tokens: &tokens,
                batch: rows,
                seq: c.seq_len,
            };
            sum += f64::from(self.engine.loss(&b)?) * b.predictions() as f64;
            count += b.predictions();
        }
        let mut sums = [sum, count as f64];
        self.engine.collective().all_reduce_sum_f64(&mut sums)?;
        let vl = sums[0] / sums[1].max(1.0);
        self.state.val_loss = Some(vl);
        self.state.best_val_loss = Some(self.state.best_val_loss.map_or(vl, |b| b.min(vl)));
        if let Some(metrics) = metrics {
            metrics.log(
                &json!({"kind": "eval", "step": self.state.step, "val_loss": vl, "val_ppl": vl.exp()}),
            )?;
            plot(c, metrics, Some(bar));
        }
        Ok(vl)
    }

    /// Saves a checkpoint (refusing non-finite weights) and prunes the old ones: rank 0
    /// writes, every rank takes part in gathering the state and waits until it is written.
    /// The path, on rank 0.
    fn save(&mut self, bar: &ProgressBar) -> Result<Option<PathBuf>> {
        let params = self.engine.params()?;
        if let Some(bad) = params.iter().position(|p| !p.is_finite()) {
            bar.finish_and_clear();
            bail!(
                "the weights hold a non-finite value (parameter {bad}) after step {}; nothing was saved and the last checkpoint is untouched; try a lower --lr",
                self.state.step
            );
        }
        let opt = self.engine.optimizer_state()?;
        if !self.leader() {
            self.engine.collective().barrier()?;
            return Ok(None);
        }
        let checkpoints = self.checkpoints();
        let c = self.config;
        let adapter = match (&c.lora, &c.init_from, &self.state.base_sha256) {
            (Some(lora), Some(base), Some(sha)) => Some(AdapterCheckpoint {
                lora,
                base,
                base_sha256: sha,
            }),
            (Some(_), _, _) => bail!("a LoRA run without its base model's path and SHA-256"),
            (None, _, _) => None,
        };
        let path = checkpoint::save(
            &checkpoints,
            &Checkpoint {
                config: &c.model,
                params: &params,
                optimizer: &opt,
                state: &self.state,
                tokenizer: self.tokenizer,
                adapter,
            },
        )?;
        checkpoint::prune(&checkpoints, self.config.keep_last)?;
        self.engine.collective().barrier()?;
        Ok(Some(path))
    }
}

fn progress_bar(steps: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::hidden());
    }
    let b = ProgressBar::new(steps);
    b.set_style(
        ProgressStyle::with_template("{bar:30.green/blue} {pos}/{len} {msg} eta {eta}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    b
}

/// Redraws `loss.png`; a failure is a warning (above the progress bar, if any).
fn plot(c: &RunConfig, metrics: &Metrics, bar: Option<&ProgressBar>) {
    let path: &Path = &c.out.join("loss.png");
    if let Err(e) = crate::plot::loss_curve(path, &metrics.train, &metrics.eval) {
        let msg = format!("warning: loss plot not written: {e:#}");
        match bar {
            Some(b) => b.suspend(|| eprintln!("{msg}")),
            None => eprintln!("{msg}"),
        }
    }
}
