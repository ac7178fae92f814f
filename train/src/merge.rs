//! `train merge`: folds a LoRA adapter into its base model and writes a plain Hugging Face
//! model directory, in the base's number format, that needs neither PEFT nor ingot to load.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::checkpoint::{hf, peft};
use crate::cli::MergeArgs;
use crate::lora;

/// What a merge wrote.
pub struct Merged {
    pub out: PathBuf,
    pub base: PathBuf,
    pub dtype: hf::WeightDtype,
    /// Whether the adapter recorded its base's SHA-256, so that the base was checked.
    pub base_checked: bool,
}

/// Files beside the weights that make the directory usable with a tokenizer; copied from the
/// base when it has them, else from the adapter directory (ingot writes them there).
const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
];

pub fn run(args: &MergeArgs) -> Result<Merged> {
    if args.out.exists() {
        bail!(
            "--out {}: exists; give a new directory (merge never writes over one)",
            args.out.display()
        );
    }
    let base = match &args.base {
        Some(b) => b.clone(),
        None => adapter_base(&args.adapter)?,
    };
    let (shape, _, _) =
        hf::read_config(&base).with_context(|| format!("--base {}", base.display()))?;
    check_memory(&shape, hf::declared_bytes_per_weight(&base))?;
    let model = hf::read_model_dir(&base).with_context(|| format!("--base {}", base.display()))?;
    let adapter = peft::read_adapter_dir(&args.adapter, &model.config)
        .with_context(|| format!("--adapter {}", args.adapter.display()))?;
    if let Some(recorded) = &adapter.base_sha256 {
        let found = lora::base_sha256(&model.params);
        if *recorded != found {
            bail!(
                "the adapter in {} was trained on other base weights than {} holds (SHA-256 {recorded} recorded, {found} found); give the base it was trained on with --base",
                args.adapter.display(),
                base.display()
            );
        }
    }
    let (bos, eos, dtype) = (model.bos, model.eos, model.dtype);
    let (config, params) =
        lora::merge::merge(&model.config, model.params, &adapter.lora, &adapter.params);
    let tmp = temporary_sibling(&args.out)?;
    let written = (|| -> Result<()> {
        hf::write_weights_and_config(&tmp, &config, &params, dtype, bos, eos)?;
        copy_tokenizer_files(&base, &args.adapter, &tmp)
    })();
    if let Err(e) = written.and_then(|()| {
        fs::rename(&tmp, &args.out)
            .with_context(|| format!("cannot rename {} into place", tmp.display()))
    }) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(Merged {
        out: args.out.clone(),
        base,
        dtype,
        base_checked: adapter.base_sha256.is_some(),
    })
}

/// Refuses, before anything is read, a merge that cannot fit in the available memory: the
/// base in f32 (merged in place, plus an LM head when a tied base is untied), its encoding
/// for the file (`stored` bytes per weight), and the adapter.
fn check_memory(c: &crate::model::ModelConfig, stored: u128) -> Result<()> {
    let n = c.checked_num_params();
    let head = (c.vocab_size * c.dim) as u128;
    // The adapter: at most both tables trained whole, plus low-rank matrices far smaller.
    let need = (4 + stored) * (n + head) + 4 * 3 * head;
    if let Some(avail) = crate::run::available_memory() {
        if need > avail {
            let gib = |b: u128| b as f64 / (1u64 << 30) as f64;
            bail!(
                "merging needs about {:.1} GiB (the weights in f32 and as written) but {:.1} GiB of memory is available; merge on a machine with more memory",
                gib(need),
                gib(avail)
            );
        }
    }
    Ok(())
}

/// The base named in `adapter_config.json`, when `--base` was not given.
fn adapter_base(adapter: &Path) -> Result<PathBuf> {
    let (_, base) = peft::read_adapter_config(adapter)
        .with_context(|| format!("--adapter {}", adapter.display()))?;
    match base {
        Some(b) if Path::new(&b).is_dir() => Ok(PathBuf::from(b)),
        Some(b) => bail!(
            "--adapter {}: its base_model_name_or_path {b:?} is not a directory here; give --base DIR",
            adapter.display()
        ),
        None => bail!(
            "--adapter {}: adapter_config.json names no base model; give --base DIR",
            adapter.display()
        ),
    }
}

/// A fresh hidden directory beside `out`, so that the finished one appears by one rename.
fn temporary_sibling(out: &Path) -> Result<PathBuf> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let name = out
        .file_name()
        .with_context(|| format!("--out {}: not a directory name", out.display()))?;
    let tmp = parent.join(format!(
        ".tmp-merge-{}-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    Ok(tmp)
}

fn copy_tokenizer_files(base: &Path, adapter: &Path, out: &Path) -> Result<()> {
    let from = if base.join("tokenizer.json").is_file() || base.join("tokenizer.model").is_file() {
        base
    } else {
        adapter
    };
    for name in TOKENIZER_FILES {
        let src = from.join(name);
        if src.is_file() {
            fs::copy(&src, out.join(name))
                .with_context(|| format!("cannot copy {}", src.display()))?;
        }
    }
    Ok(())
}
