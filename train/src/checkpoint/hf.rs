//! Hugging Face model directories: what `LlamaForCausalLM.from_pretrained` reads.
//!
//! Writing: `model.safetensors` (f32, HF tensor names), `config.json`, `generation_config.json`,
//! and, beside them, the dataset's `tokenizer.json` with a `tokenizer_config.json`.
//! Reading: ours or any `transformers`-written Llama (single or sharded safetensors, f32, bf16
//! or f16, tied or untied embeddings).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};

use crate::model::{Layout, ModelConfig};

/// Special tokens and tokenizer files that go with a model directory.
pub struct TokenizerFiles<'a> {
    pub tokenizer_json: &'a [u8],
    pub bos: Option<(u32, String)>,
    pub eos: Option<(u32, String)>,
}

/// The number format of a model directory's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    Bf16,
    F16,
}

impl WeightDtype {
    /// The name `config.json` gives it (`torch_dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "float32",
            WeightDtype::Bf16 => "bfloat16",
            WeightDtype::F16 => "float16",
        }
    }

    fn safetensors(self) -> Dtype {
        match self {
            WeightDtype::F32 => Dtype::F32,
            WeightDtype::Bf16 => Dtype::BF16,
            WeightDtype::F16 => Dtype::F16,
        }
    }

    fn of(dtype: Dtype) -> Option<WeightDtype> {
        match dtype {
            Dtype::F32 => Some(WeightDtype::F32),
            Dtype::BF16 => Some(WeightDtype::Bf16),
            Dtype::F16 => Some(WeightDtype::F16),
            _ => None,
        }
    }

    /// Little-endian bytes of `values` in this format, rounded to nearest even.
    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            WeightDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            WeightDtype::Bf16 => values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
            WeightDtype::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
        }
    }
}

pub fn config_json(c: &ModelConfig, bos: Option<u32>, eos: Option<u32>) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.dim,
        "intermediate_size": c.ffn_dim,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim(),
        "max_position_embeddings": c.max_seq_len,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": null,
        "tie_word_embeddings": c.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": true,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    })
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes a complete model directory into `dir` (which must exist), weights in f32.
pub fn write_model_dir(
    dir: &Path,
    c: &ModelConfig,
    params: &[f32],
    tok: &TokenizerFiles,
) -> Result<()> {
    let (bos, eos) = (tok.bos.as_ref().map(|b| b.0), tok.eos.as_ref().map(|e| e.0));
    write_weights_and_config(dir, c, params, WeightDtype::F32, bos, eos)?;
    write_tokenizer_files(dir, c, tok)
}

/// `model.safetensors` in `dtype`, `config.json` and `generation_config.json`: a model
/// directory but for its tokenizer files.
pub fn write_weights_and_config(
    dir: &Path,
    c: &ModelConfig,
    params: &[f32],
    dtype: WeightDtype,
    bos: Option<u32>,
    eos: Option<u32>,
) -> Result<()> {
    let layout = Layout::new(c);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = layout
        .tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.shape.clone(),
                dtype.encode(&params[t.range()]),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, data)| {
            Ok((
                name.clone(),
                safetensors::tensor::TensorView::new(dtype.safetensors(), shape.clone(), data)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let path = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, Some(meta), &path)
        .with_context(|| format!("cannot write {}", path.display()))?;

    let mut config = config_json(c, bos, eos);
    config["torch_dtype"] = json!(dtype.torch_name());
    write_json(&dir.join("config.json"), &config)?;
    write_json(
        &dir.join("generation_config.json"),
        &json!({"bos_token_id": bos, "eos_token_id": eos}),
    )
}

/// `tokenizer.json` and `tokenizer_config.json`, beside a model or an adapter.
pub fn write_tokenizer_files(dir: &Path, c: &ModelConfig, tok: &TokenizerFiles) -> Result<()> {
    fs::write(dir.join("tokenizer.json"), tok.tokenizer_json)
        .context("cannot write tokenizer.json")?;
    let mut tc = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": c.max_seq_len,
        "clean_up_tokenization_spaces": false,
    });
    if let Some((_, t)) = &tok.bos {
        tc["bos_token"] = json!(t);
    }
    if let Some((_, t)) = &tok.eos {
        tc["eos_token"] = json!(t);
    }
    write_json(&dir.join("tokenizer_config.json"), &tc)
}

/// Bytes per weight a model directory's `config.json` declares (`torch_dtype`, or
/// transformers 5's `dtype`): 2 for bf16 and f16, else (f32, or not said) 4.
pub fn declared_bytes_per_weight(dir: &Path) -> u128 {
    let cfg: Option<Value> = fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let dtype = cfg
        .as_ref()
        .and_then(|v| v.get("torch_dtype").or_else(|| v.get("dtype")))
        .and_then(Value::as_str);
    match dtype {
        Some("bfloat16" | "float16") => 2,
        _ => 4,
    }
}

/// A model read from a Hugging Face directory.
pub struct LoadedModel {
    pub config: ModelConfig,
    pub params: Vec<f32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// The format its weights were stored in (f32 when tensors differ).
    pub dtype: WeightDtype,
}

fn field<'a>(cfg: &'a Value, key: &str, path: &Path) -> Result<&'a Value> {
    cfg.get(key)
        .with_context(|| format!("{}: config.json has no {key:?}", path.display()))
}

fn usize_field(cfg: &Value, key: &str, path: &Path) -> Result<usize> {
    field(cfg, key, path)?
        .as_u64()
        .map(|v| v as usize)
        .with_context(|| {
            format!(
                "{}: config.json {key:?} is not a whole number",
                path.display()
            )
        })
}

/// Reads `config.json` of a Llama; refuses other architectures and features we do not compute.
pub fn read_config(dir: &Path) -> Result<(ModelConfig, Option<u32>, Option<u32>)> {
    let path = dir.join("config.json");
    if !path.exists() && dir.join("adapter_config.json").is_file() {
        bail!(
            "{} is a LoRA adapter, not a model: fold it into its base first (train merge --adapter {} --out DIR) and use that directory",
            dir.display(),
            dir.display()
        );
    }
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let cfg: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    let is_llama = cfg.get("model_type").and_then(Value::as_str) == Some("llama")
        || cfg
            .get("architectures")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x == "LlamaForCausalLM"));
    if !is_llama {
        bail!(
            "{}: not a Llama model (model_type {}); only LlamaForCausalLM checkpoints can be loaded",
            path.display(),
            cfg.get("model_type").unwrap_or(&Value::Null)
        );
    }
    if let Some(act) = cfg.get("hidden_act").and_then(Value::as_str) {
        if act != "silu" {
            bail!(
                "{}: hidden_act {act:?} is not supported (only silu)",
                path.display()
            );
        }
    }
    // RoPE: transformers 4 writes `rope_theta` (and `rope_scaling`), transformers 5
    // `rope_parameters`. Only the plain ("default") rotation is computed here.
    let mut rope_theta = cfg.get("rope_theta").and_then(Value::as_f64);
    for key in ["rope_scaling", "rope_parameters"] {
        let Some(rope) = cfg.get(key).filter(|v| !v.is_null()) else {
            continue;
        };
        let kind = rope
            .get("rope_type")
            .or_else(|| rope.get("type"))
            .and_then(Value::as_str);
        if kind.is_some_and(|k| k != "default") {
            bail!(
                "{}: {key} asks for {:?} RoPE; only plain (default) RoPE models can be loaded",
                path.display(),
                kind.unwrap_or_default()
            );
        }
        if let Some(theta) = rope.get("rope_theta").and_then(Value::as_f64) {
            rope_theta = Some(theta);
        }
    }
    for bias in ["attention_bias", "mlp_bias"] {
        if cfg.get(bias).and_then(Value::as_bool) == Some(true) {
            bail!("{}: {bias} is not supported", path.display());
        }
    }
    let n_heads = usize_field(&cfg, "num_attention_heads", &path)?;
    let c = ModelConfig {
        vocab_size: usize_field(&cfg, "vocab_size", &path)?,
        dim: usize_field(&cfg, "hidden_size", &path)?,
        n_layers: usize_field(&cfg, "num_hidden_layers", &path)?,
        n_heads,
        n_kv_heads: cfg
            .get("num_key_value_heads")
            .and_then(Value::as_u64)
            .map_or(n_heads, |v| v as usize),
        ffn_dim: usize_field(&cfg, "intermediate_size", &path)?,
        rope_theta: rope_theta.unwrap_or(10_000.0),
        rms_norm_eps: cfg
            .get("rms_norm_eps")
            .and_then(Value::as_f64)
            .unwrap_or(1e-6),
        tie_embeddings: cfg
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        max_seq_len: cfg
            .get("max_position_embeddings")
            .and_then(Value::as_u64)
            .map_or(2048, |v| v as usize),
    };
    if let Some(hd) = cfg.get("head_dim").and_then(Value::as_u64) {
        if c.n_heads == 0 || hd as usize * c.n_heads != c.dim {
            bail!(
                "{}: head_dim {hd} × {} heads is not hidden_size {}; such models are not supported",
                path.display(),
                c.n_heads,
                c.dim
            );
        }
    }
    c.validate()
        .map_err(|e| anyhow::anyhow!("{}: {e} (in config.json)", path.display()))?;
    // Llama 3 lists several EOS ids; the first one is the document end.
    let id = |k: &str| {
        let v = cfg.get(k)?;
        v.as_u64()
            .or_else(|| v.as_array()?.first()?.as_u64())
            .and_then(|v| u32::try_from(v).ok())
    };
    Ok((c, id("bos_token_id"), id("eos_token_id")))
}

/// Tensor name → file holding it (one file, or the shards of `model.safetensors.index.json`).
fn weight_files(dir: &Path) -> Result<BTreeMap<String, String>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let v: Value = serde_json::from_str(
            &fs::read_to_string(&index)
                .with_context(|| format!("cannot read {}", index.display()))?,
        )
        .with_context(|| format!("{}: not valid JSON", index.display()))?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .with_context(|| format!("{}: no weight_map", index.display()))?;
        return map
            .iter()
            .map(|(k, f)| {
                Ok((
                    k.clone(),
                    f.as_str()
                        .with_context(|| format!("{}: bad weight_map entry", index.display()))?
                        .to_string(),
                ))
            })
            .collect();
    }
    if !dir.join("model.safetensors").exists() {
        bail!(
            "{}: no model.safetensors or model.safetensors.index.json",
            dir.display()
        );
    }
    Ok(BTreeMap::new())
}

/// Reads tensor `t` of the safetensors file `st` (read from `path`) as f32 into its range of
/// `params`, checking its shape against what `implies` (e.g. "the config implies") it should
/// be; returns the dtype it was stored in.
pub(crate) fn read_tensor(
    st: &SafeTensors,
    path: &Path,
    t: &crate::model::Tensor,
    implies: &str,
    params: &mut [f32],
) -> Result<Dtype> {
    let view = st
        .tensor(&t.name)
        .with_context(|| format!("{}: no tensor {}", path.display(), t.name))?;
    if view.shape() != t.shape.as_slice() {
        bail!(
            "{}: {} has shape {:?}; {implies} {:?}",
            path.display(),
            t.name,
            view.shape(),
            t.shape
        );
    }
    let values = to_f32(view.dtype(), view.data()).with_context(|| {
        format!(
            "{}: {} is {:?}; only f32, bf16 and f16 are read",
            path.display(),
            t.name,
            view.dtype()
        )
    })?;
    params[t.range()].copy_from_slice(&values);
    Ok(view.dtype())
}

/// Converts a tensor's raw bytes to f32.
fn to_f32(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        _ => return None,
    })
}

/// Reads a whole Llama model directory into our flat layout.
pub fn read_model_dir(dir: &Path) -> Result<LoadedModel> {
    let (config, bos, eos) = read_config(dir)?;
    let layout = Layout::new(&config);
    let files = weight_files(dir)?;
    let mut params = vec![0f32; layout.len()];
    let mut dtypes = Vec::new();
    // Open each file once.
    let mut names: BTreeMap<String, Vec<&crate::model::Tensor>> = BTreeMap::new();
    for t in &layout.tensors {
        let file = files
            .get(&t.name)
            .cloned()
            .unwrap_or_else(|| "model.safetensors".into());
        names.entry(file).or_default().push(t);
    }
    for (file, tensors) in names {
        let path = dir.join(&file);
        let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let st = SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{}: not a safetensors file", path.display()))?;
        for t in tensors {
            let dtype = read_tensor(&st, &path, t, "the config implies", &mut params)?;
            dtypes.extend(WeightDtype::of(dtype));
        }
    }
    dtypes.dedup();
    let dtype = match dtypes.as_slice() {
        [one] => *one,
        _ => WeightDtype::F32,
    };
    Ok(LoadedModel {
        config,
        params,
        bos,
        eos,
        dtype,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with(extra: Value) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let c = ModelConfig::preset("tiny", 259).unwrap();
        let mut v = config_json(&c, Some(256), Some(257));
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        fs::write(dir.path().join("config.json"), v.to_string()).unwrap();
        dir
    }

    #[test]
    fn transformers_5_rope_parameters_and_eos_lists_are_read() {
        let dir = config_with(
            json!({"rope_theta": null, "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}, "eos_token_id": [257, 3]}),
        );
        let (c, bos, eos) = read_config(dir.path()).unwrap();
        assert_eq!(c.rope_theta, 500_000.0);
        assert_eq!((bos, eos), (Some(256), Some(257)));
        let dir = config_with(json!({"rope_scaling": {"rope_type": "default"}}));
        assert_eq!(read_config(dir.path()).unwrap().0.rope_theta, 10_000.0);
    }

    #[test]
    fn scaled_rope_and_other_architectures_are_refused() {
        let dir = config_with(
            json!({"rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0}}),
        );
        let e = read_config(dir.path()).unwrap_err().to_string();
        assert!(e.contains("llama3") && e.contains("default"), "{e}");
        let dir = config_with(json!({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}));
        assert!(read_config(dir.path())
            .unwrap_err()
            .to_string()
            .contains("not a Llama"));
    }
}
