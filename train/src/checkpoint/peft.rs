//! PEFT adapter directories: what `PeftModel.from_pretrained(base, dir)` reads.
//!
//! `adapter_config.json` (a LoRA config of task `CAUSAL_LM`) and `adapter_model.safetensors`
//! (f32, PEFT's tensor names: the adapter's [`AdapterLayout`]). The safetensors metadata also
//! carries `base_sha256` ([`crate::lora::base_sha256`]) so that the adapter is refused on
//! another base; PEFT ignores it. Reading accepts adapters written by PEFT itself, as far as
//! they use what the engines compute (plain LoRA on the block's linear layers).

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};

use crate::lora::{AdapterLayout, LoraConfig, Saved, Target};
use crate::model::ModelConfig;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The metadata key of the base weights' SHA-256 in `adapter_model.safetensors`.
const BASE_SHA_KEY: &str = "base_sha256";

/// An adapter read from a directory.
pub struct LoadedAdapter {
    pub lora: LoraConfig,
    pub params: Vec<f32>,
    /// The SHA-256 of the base it was trained on, when an ingot run wrote it.
    pub base_sha256: Option<String>,
    pub base_model_name_or_path: Option<String>,
}

pub fn adapter_config_json(lora: &LoraConfig, base: &Path) -> Value {
    let names = |v: Vec<&str>| json!(v);
    // An absolute path, so that `PeftModel.from_pretrained` finds the base from anywhere.
    let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base.display().to_string(),
        "revision": null,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "use_rslora": lora.rslora,
        "target_modules": names(lora.targets.iter().map(|t| t.name()).collect()),
        "modules_to_save": if lora.save.is_empty() {
            Value::Null
        } else {
            names(lora.save.iter().map(|s| s.name()).collect())
        },
        "bias": "none",
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "use_dora": false,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
    })
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir` (which must exist).
pub fn write_adapter_dir(
    dir: &Path,
    c: &ModelConfig,
    lora: &LoraConfig,
    params: &[f32],
    base: &Path,
    base_sha256: &str,
) -> Result<()> {
    let layout = AdapterLayout::new(c, lora);
    let bytes: Vec<Vec<u8>> = layout
        .tensors
        .iter()
        .map(|t| {
            params[t.range()]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect()
        })
        .collect();
    let views = layout
        .tensors
        .iter()
        .zip(&bytes)
        .map(|(t, data)| {
            let view = safetensors::tensor::TensorView::new(Dtype::F32, t.shape.clone(), data)?;
            Ok((t.name.clone(), view))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(BASE_SHA_KEY.to_string(), base_sha256.to_string());
    let path = dir.join(WEIGHTS_FILE);
    safetensors::serialize_to_file(views, Some(meta), &path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let mut text = serde_json::to_string_pretty(&adapter_config_json(lora, base))?;
    text.push('\n');
    let path = dir.join(CONFIG_FILE);
    fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The names of a config list (`target_modules`, `modules_to_save`): a JSON list of strings.
fn name_list(v: Option<&Value>, key: &str, path: &Path) -> Result<Vec<String>> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|x| {
                x.as_str().map(str::to_string).with_context(|| {
                    format!("{}: {key} holds {x}, not a module name", path.display())
                })
            })
            .collect(),
        Some(other) => bail!(
            "{}: {key} is {other}; only a list of module names can be read",
            path.display()
        ),
    }
}

/// Reads `adapter_config.json` into the options the engines compute, refusing PEFT features
/// they do not (DoRA, biases, per-layer ranks, layer subsets).
pub fn read_adapter_config(dir: &Path) -> Result<(LoraConfig, Option<String>)> {
    let path = dir.join(CONFIG_FILE);
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    let peft_type = v.get("peft_type").and_then(Value::as_str);
    if peft_type != Some("LORA") {
        bail!(
            "{}: peft_type {peft_type:?} is not LORA; only LoRA adapters can be read",
            path.display()
        );
    }
    let unsupported = [
        (
            "use_dora",
            v.get("use_dora").and_then(Value::as_bool) == Some(true),
        ),
        (
            "bias",
            v.get("bias")
                .and_then(Value::as_str)
                .is_some_and(|b| b != "none"),
        ),
        (
            "fan_in_fan_out",
            v.get("fan_in_fan_out").and_then(Value::as_bool) == Some(true),
        ),
        (
            "layers_to_transform",
            v.get("layers_to_transform").is_some_and(|x| !x.is_null()),
        ),
        (
            "rank_pattern",
            v.get("rank_pattern")
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty()),
        ),
        (
            "alpha_pattern",
            v.get("alpha_pattern")
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty()),
        ),
    ];
    if let Some((key, _)) = unsupported.iter().find(|(_, set)| *set) {
        bail!("{}: {key} is set; ingot computes plain LoRA only (no DoRA, biases, per-layer ranks or layer subsets)", path.display());
    }
    let rank = v
        .get("r")
        .and_then(Value::as_u64)
        .with_context(|| format!("{}: no whole-number r", path.display()))?;
    let mut targets = Vec::new();
    for name in name_list(v.get("target_modules"), "target_modules", &path)? {
        let t = Target::parse(&name).with_context(|| {
            format!(
                "{}: target_modules names {name:?}, which is not a linear layer of a Llama block",
                path.display()
            )
        })?;
        targets.push(t);
    }
    let mut save = Vec::new();
    for name in name_list(v.get("modules_to_save"), "modules_to_save", &path)? {
        let s = Saved::parse(&name).with_context(|| {
            format!(
                "{}: modules_to_save names {name:?}; only embed_tokens and lm_head can be read",
                path.display()
            )
        })?;
        save.push(s);
    }
    targets.sort();
    targets.dedup();
    save.sort();
    save.dedup();
    let lora = LoraConfig {
        rank: rank as usize,
        alpha: v.get("lora_alpha").and_then(Value::as_f64).unwrap_or(8.0),
        dropout: v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
        rslora: v
            .get("use_rslora")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        targets,
        save,
    };
    let base = v
        .get("base_model_name_or_path")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok((lora, base))
}

/// Reads a whole adapter directory for a base of shape `c`.
pub fn read_adapter_dir(dir: &Path, c: &ModelConfig) -> Result<LoadedAdapter> {
    let (lora, base_model_name_or_path) = read_adapter_config(dir)?;
    let path = dir.join(CONFIG_FILE);
    lora.validate(c)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let layout = AdapterLayout::new(c, &lora);
    let path = dir.join(WEIGHTS_FILE);
    let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let mut params = vec![0f32; layout.len()];
    for t in &layout.tensors {
        let implies = "the base model and adapter_config.json imply";
        super::hf::read_tensor(&st, &path, t, implies, &mut params)?;
    }
    let (_, meta) = SafeTensors::read_metadata(&bytes)?;
    let base_sha256 = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(BASE_SHA_KEY))
        .cloned();
    Ok(LoadedAdapter {
        lora,
        params,
        base_sha256,
        base_model_name_or_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::DEFAULT_TARGETS;

    fn lora() -> LoraConfig {
        let (targets, save) = LoraConfig::parse_lists(DEFAULT_TARGETS, "lm_head").unwrap();
        LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.05,
            rslora: true,
            targets,
            save,
        }
    }

    #[test]
    fn our_config_reads_back_and_peft_features_we_do_not_compute_are_refused_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let write = |v: &Value| fs::write(dir.path().join(CONFIG_FILE), v.to_string()).unwrap();
        let ours = adapter_config_json(&lora(), Path::new("/nowhere/base"));
        write(&ours);
        let (read, base) = read_adapter_config(dir.path()).unwrap();
        assert_eq!(read, lora());
        assert_eq!(base.as_deref(), Some("/nowhere/base"));
        let cases: &[(&str, Value, &str)] = &[
            ("peft_type", json!("IA3"), "is not LORA"),
            ("use_dora", json!(true), "use_dora is set"),
            ("bias", json!("all"), "bias is set"),
            ("fan_in_fan_out", json!(true), "fan_in_fan_out is set"),
            (
                "layers_to_transform",
                json!([0]),
                "layers_to_transform is set",
            ),
            ("rank_pattern", json!({"q_proj": 8}), "rank_pattern is set"),
            (
                "alpha_pattern",
                json!({"q_proj": 8}),
                "alpha_pattern is set",
            ),
            ("r", Value::Null, "no whole-number r"),
            (
                "target_modules",
                json!("all-linear"),
                "only a list of module names",
            ),
            (
                "target_modules",
                json!(["q_proj", "fc1"]),
                "\"fc1\", which is not a linear layer",
            ),
            ("target_modules", json!([3]), "holds 3, not a module name"),
            (
                "modules_to_save",
                json!(["norm"]),
                "only embed_tokens and lm_head",
            ),
        ];
        for (key, value, want) in cases {
            let mut v = ours.clone();
            v[key] = value.clone();
            write(&v);
            let e = format!("{:#}", read_adapter_config(dir.path()).unwrap_err());
            assert!(e.contains(want) && !e.contains('\n'), "{key}: {e}");
        }
    }
}
