//! `prep verify DIR`: full check of a dataset; exits non-zero naming the first bad file.

use std::path::Path;

use anyhow::Result;
use ingot_formats::verify_dataset;

pub fn run(dir: &Path) -> Result<String> {
    let report = verify_dataset(dir)?;
    Ok(format!(
        "ok: {}: {} shards, {} blocks, {} payload bytes verified",
        dir.display(),
        report.shards,
        report.blocks,
        report.payload_bytes
    ))
}
