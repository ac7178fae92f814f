//! `metrics.jsonl` (one JSON object per logged step and per evaluation) and the loss curve
//! `loss.png`, both in the run directory.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

pub struct Metrics {
    path: PathBuf,
    file: File,
    /// (step, loss) of training and evaluation, for the plot.
    pub train: Vec<(u64, f64)>,
    pub eval: Vec<(u64, f64)>,
}

impl Metrics {
    /// Opens `metrics.jsonl`, keeping only records up to `keep_through_step` (a resumed run
    /// drops what the interrupted run logged after its checkpoint).
    pub fn open(run_dir: &Path, keep_through_step: u64) -> Result<Metrics> {
        let path = run_dir.join("metrics.jsonl");
        let mut train = Vec::new();
        let mut eval = Vec::new();
        let mut kept = String::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                let Ok(v) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                let step = v["step"].as_u64().unwrap_or(u64::MAX);
                if step > keep_through_step {
                    continue;
                }
                kept.push_str(line);
                kept.push('\n');
                match (
                    v["kind"].as_str(),
                    v["loss"].as_f64(),
                    v["val_loss"].as_f64(),
                ) {
                    (Some("train"), Some(l), _) => train.push((step, l)),
                    (Some("eval"), _, Some(l)) => eval.push((step, l)),
                    _ => {}
                }
            }
        }
        std::fs::write(&path, kept).with_context(|| format!("cannot write {}", path.display()))?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Metrics {
            path,
            file,
            train,
            eval,
        })
    }

    pub fn log(&mut self, record: &Value) -> Result<()> {
        let step = record["step"].as_u64().unwrap_or(0);
        match record["kind"].as_str() {
            Some("train") => self
                .train
                .extend(record["loss"].as_f64().map(|l| (step, l))),
            Some("eval") => self
                .eval
                .extend(record["val_loss"].as_f64().map(|l| (step, l))),
            _ => {}
        }
        writeln!(self.file, "{record}")
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}
