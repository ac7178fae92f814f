//! The tokenizer `prep` packs documents with and `train` decodes samples with: any Hugging Face
//! `tokenizer.json` (through the `tokenizers` crate's pipeline encoder) or the built-in `byte`
//! tokenizer, plus BOS/EOS detection.
//!
//! Documents are always encoded without the tokenizer's own special tokens; `prep` inserts BOS
//! and EOS itself. Truncation and padding settings in a `tokenizer.json` are ignored: a
//! pretraining stream must never cut a document.

pub mod byte;

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use tokenizers::pipeline::{EncodeOptions, Override, PipelineToken, PipelineTokenizer};

/// The encoder behind a [`Tokenizer`].
#[derive(Clone)]
enum Engine {
    Byte,
    Hf(PipelineTokenizer),
}

/// A loaded tokenizer with what `prep` and `train` need around it: the bytes to copy into the
/// dataset, the vocabulary size and a token → id map for BOS/EOS lookup.
#[derive(Clone)]
pub struct Tokenizer {
    engine: Engine,
    /// The tokenizer.json bytes copied into the dataset, exactly as given.
    json: Vec<u8>,
    vocab_size: u64,
    /// Every token string with its id (model vocabulary and added tokens).
    ids: HashMap<String, u32>,
    /// Added tokens marked `special`, in id order.
    specials: Vec<(String, u32)>,
    /// What the user named: a path or `byte`.
    pub source: String,
}

/// Options every encode uses: no special tokens from the post-processor, no truncation, no
/// padding, whatever the file says.
fn encode_options() -> EncodeOptions {
    EncodeOptions {
        add_special_tokens: false,
        encode_special_tokens: false,
        padding: Override::Off,
        truncation: Override::Off,
    }
}

impl Tokenizer {
    /// `byte` for the built-in tokenizer, else a path to a `tokenizer.json`.
    pub fn load(spec: &str) -> Result<Tokenizer> {
        if spec == "byte" {
            return Ok(byte::tokenizer());
        }
        Self::from_file(Path::new(spec))
    }

    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let json = std::fs::read(path)
            .with_context(|| format!("cannot read tokenizer {}", path.display()))?;
        let mut t = Self::from_json_bytes(&json)
            .with_context(|| format!("{}: not a usable tokenizer.json", path.display()))?;
        t.source = path.display().to_string();
        Ok(t)
    }

    /// Parses a tokenizer.json in any version the `tokenizers` crate can upgrade.
    pub fn from_json_bytes(json: &[u8]) -> Result<Tokenizer> {
        // One JSON parse: upgrade the value in place, read the vocabulary from it, and hand the
        // canonical text to the pipeline's reader.
        let mut value: serde_json::Value =
            serde_json::from_slice(json).context("not valid JSON")?;
        tokenizers::canonicalize_value(&mut value).map_err(|e| anyhow::anyhow!("{e}"))?;
        let (ids, specials) = vocabulary(&value)?;
        let canonical = serde_json::to_string(&value)?;
        let pipeline = tokenizers::from_json(&canonical).map_err(|e| anyhow::anyhow!("{e}"))?;
        probe_pre_tokenizer(&pipeline)?;
        let vocab_size = ids.values().map(|&id| u64::from(id) + 1).max().unwrap_or(0);
        if vocab_size == 0 {
            bail!("the tokenizer has an empty vocabulary");
        }
        Ok(Tokenizer {
            engine: Engine::Hf(pipeline),
            json: json.to_vec(),
            vocab_size,
            ids,
            specials,
            source: String::new(),
        })
    }

    pub fn vocab_size(&self) -> u64 {
        self.vocab_size
    }
    pub fn json(&self) -> &[u8] {
        &self.json
    }
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }
    /// The token string of `id` (model vocabulary or added token).
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.ids
            .iter()
            .find(|(_, &i)| i == id)
            .map(|(t, _)| t.as_str())
    }
    pub fn is_byte(&self) -> bool {
        matches!(self.engine, Engine::Byte)
    }

    /// Appends the ids of `text` to `out`. `scratch` is reused between calls.
    pub fn encode_into(
        &self,
        text: &str,
        scratch: &mut Vec<PipelineToken>,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        match &self.engine {
            Engine::Byte => out.extend(text.bytes().map(u32::from)),
            Engine::Hf(t) => {
                scratch.clear();
                t.encode_into(text, &encode_options(), scratch)
                    .map_err(|e| anyhow::anyhow!("tokenizer failed: {e}"))?;
                out.extend_from_slice(PipelineToken::cast_slice(scratch));
            }
        }
        Ok(())
    }

    /// Convenience for tests and small inputs.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        self.encode_into(text, &mut Vec::new(), &mut out)?;
        Ok(out)
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.engine {
            Engine::Byte => Ok(byte::decode(ids)),
            Engine::Hf(t) => t
                .decode(ids, false)
                .map_err(|e| anyhow::anyhow!("decode failed: {e}")),
        }
    }

    /// The pipeline of a Hugging Face tokenizer (`prep tokenizer train` runs its pre-tokenizer);
    /// `None` for the byte tokenizer.
    pub fn pipeline(&self) -> Option<&PipelineTokenizer> {
        match &self.engine {
            Engine::Hf(t) => Some(t),
            Engine::Byte => None,
        }
    }
}

/// Runs the pre-tokenizer once on a short text. Some pre-tokenizers load but cannot run (a
/// `Split` regex that needs a regex engine this build does not have); without this check such a
/// tokenizer would fail on every document, each one a counted skip. Only the pre-tokenizer is
/// probed: a model may legitimately refuse a word it has no id for.
fn probe_pre_tokenizer(pipeline: &PipelineTokenizer) -> Result<()> {
    use tokenizers::pipeline::PreTokenizer as _;
    let mut spans = Vec::new();
    let mut scratch = tokenizers::pipeline::PreTokenizerScratch::default();
    pipeline
        .get_pre_tokenizer()
        .pre_tokenize("Hello, world! 123", &mut scratch, &mut spans)
        .map_err(|e| anyhow::anyhow!("its pre-tokenizer cannot run in this build: {e}"))
}

/// Token → id over the model vocabulary and the added tokens of a canonical tokenizer.json, and
/// the added tokens marked special.
/// Token → id, and the special added tokens as `(token, id)`.
type Vocabulary = (HashMap<String, u32>, Vec<(String, u32)>);

fn vocabulary(value: &serde_json::Value) -> Result<Vocabulary> {
    let mut ids = HashMap::new();
    match value.pointer("/model/vocab") {
        Some(serde_json::Value::Object(map)) => {
            for (token, id) in map {
                let id = id.as_u64().context("model.vocab has a non-integer id")?;
                ids.insert(token.clone(), u32::try_from(id).context("id too large")?);
            }
        }
        // Unigram: an array of [token, score]; the position is the id.
        Some(serde_json::Value::Array(list)) => {
            for (id, entry) in list.iter().enumerate() {
                let token = entry
                    .get(0)
                    .and_then(|t| t.as_str())
                    .context("model.vocab entry is not [token, score]")?;
                ids.insert(
                    token.to_string(),
                    u32::try_from(id).context("id too large")?,
                );
            }
        }
        _ => bail!("no model.vocab"),
    }
    let mut specials = Vec::new();
    if let Some(added) = value.get("added_tokens").and_then(|a| a.as_array()) {
        for t in added {
            let (Some(content), Some(id)) = (
                t.get("content").and_then(|c| c.as_str()),
                t.get("id").and_then(|i| i.as_u64()),
            ) else {
                bail!("added_tokens entry without content or id");
            };
            let id = u32::try_from(id).context("id too large")?;
            ids.insert(content.to_string(), id);
            if t.get("special").and_then(|s| s.as_bool()).unwrap_or(false) {
                specials.push((content.to_string(), id));
            }
        }
    }
    specials.sort_by_key(|(_, id)| *id);
    Ok((ids, specials))
}

/// Tokens recognised as beginning-of-document, most specific first.
const BOS_CANDIDATES: &[&str] = &[
    "<|begin_of_text|>",
    "<s>",
    "<|startoftext|>",
    "<bos>",
    "[CLS]",
];
/// Tokens recognised as end-of-document. GPT-2's `<|endoftext|>` separates documents, so it is EOS.
const EOS_CANDIDATES: &[&str] = &["<|end_of_text|>", "</s>", "<|endoftext|>", "<eos>", "[SEP]"];

/// How the user asked for BOS/EOS.
#[derive(Debug, Clone, Default)]
pub struct SpecialChoice {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub no_bos: bool,
    pub no_eos: bool,
}

/// The ids `prep` puts around every document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Specials {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

impl Tokenizer {
    /// Resolves BOS/EOS: explicit tokens first, then detection among the tokenizer's tokens.
    pub fn resolve_specials(&self, choice: &SpecialChoice) -> Result<Specials> {
        let pick = |flag: &str,
                    explicit: &Option<String>,
                    disabled: bool,
                    candidates: &[&str]|
         -> Result<Option<u32>> {
            if disabled {
                return Ok(None);
            }
            if let Some(token) = explicit {
                return match self.token_to_id(token) {
                    Some(id) => Ok(Some(id)),
                    None => bail!("{flag} {token:?}: no such token in the tokenizer {}; give a token it has, or --no-{}", self.source, &flag[2..]),
                };
            }
            // Prefer tokens the tokenizer marks special, then any vocabulary entry.
            for c in candidates {
                if let Some((_, id)) = self.specials.iter().find(|(t, _)| t == c) {
                    return Ok(Some(*id));
                }
            }
            Ok(candidates.iter().find_map(|c| self.token_to_id(c)))
        };
        let bos = pick("--bos", &choice.bos, choice.no_bos, BOS_CANDIDATES)?;
        let eos = pick("--eos", &choice.eos, choice.no_eos, EOS_CANDIDATES)?;
        if bos.is_none() && eos.is_none() && !(choice.no_bos && choice.no_eos) {
            bail!(
                "tokenizer {} has no recognisable BOS or EOS token (looked for {} and {}); name them with --bos TOKEN / --eos TOKEN, or pass --no-bos --no-eos to pack documents without separators",
                self.source,
                BOS_CANDIDATES.join(" "),
                EOS_CANDIDATES.join(" ")
            );
        }
        Ok(Specials { bos, eos })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wordlevel(pre_tokenizer: serde_json::Value) -> Vec<u8> {
        serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": pre_tokenizer, "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"hello": 0, "[UNK]": 1}, "unk_token": "[UNK]"}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_pre_tokenizer_that_cannot_run_fails_at_load() {
        // GPT-2's pattern is run natively only when isolated; removed, it needs a regex engine.
        let gpt2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
        let split = serde_json::json!({
            "type": "Split", "pattern": {"Regex": gpt2}, "behavior": "Removed", "invert": false
        });
        let err = Tokenizer::from_json_bytes(&wordlevel(split)).err().unwrap();
        assert!(format!("{err:#}").contains("pre-tokenizer"), "{err:#}");
        let ok =
            Tokenizer::from_json_bytes(&wordlevel(serde_json::json!({"type": "WhitespaceSplit"})));
        assert_eq!(ok.unwrap().encode("hello").unwrap(), vec![0]);
    }
}
