//! The adapter's parameters in one flat buffer of their own, with a view per tensor named as
//! PEFT names it in `adapter_model.safetensors`: for each block and target, `lora_A` `[r, in]`
//! then `lora_B` `[out, r]`, then the whole copies of the saved modules. The optimizer, the
//! gradient buffer and the checkpoint walk this buffer exactly as they walk the base model's.

use super::{LoraConfig, Saved, Target};
use crate::model::init::Rng;
use crate::model::{Layout, ModelConfig, Tensor};

/// PEFT's prefix of every tensor of a `PeftModelForCausalLM` around a `LlamaForCausalLM`.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// One adapted layer: where its A and B start, and their shapes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    pub a: usize,
    pub b: usize,
    pub in_dim: usize,
    pub out_dim: usize,
}

#[derive(Debug, Clone)]
pub struct AdapterLayout {
    pub tensors: Vec<Tensor>,
    /// Per block, per [`Target::ALL`] entry: the pair, where that layer is adapted.
    pub blocks: Vec<[Option<Pair>; 7]>,
    /// The trained copy of the embedding, with `--lora-save embed_tokens`.
    pub embed: Option<usize>,
    /// The trained copy of the LM head, with `--lora-save lm_head`.
    pub lm_head: Option<usize>,
    pub rank: usize,
    /// Values in a vocabulary-by-dim table (the embedding or the LM head).
    pub table_len: usize,
    len: usize,
}

impl AdapterLayout {
    pub fn new(c: &ModelConfig, lora: &LoraConfig) -> AdapterLayout {
        let mut tensors = Vec::new();
        let mut offset = 0;
        let mut add = |name: String, shape: Vec<usize>, decay: bool| -> usize {
            let len = shape.iter().product();
            tensors.push(Tensor {
                name,
                shape,
                offset,
                len,
                decay,
            });
            offset += len;
            offset - len
        };
        let r = lora.rank;
        let mut blocks = Vec::new();
        for i in 0..c.n_layers {
            let mut pairs = [None; 7];
            for (slot, t) in Target::ALL.iter().enumerate() {
                if !lora.targets.contains(t) {
                    continue;
                }
                let (in_dim, out_dim) = t.dims(c);
                let p = format!("{PEFT_PREFIX}model.layers.{i}.{}", t.module());
                // Weight decay as the Hugging Face Trainer applies it: every weight matrix.
                let a = add(format!("{p}.lora_A.weight"), vec![r, in_dim], true);
                let b = add(format!("{p}.lora_B.weight"), vec![out_dim, r], true);
                pairs[slot] = Some(Pair {
                    a,
                    b,
                    in_dim,
                    out_dim,
                });
            }
            blocks.push(pairs);
        }
        let table = vec![c.vocab_size, c.dim];
        // As in full training: no decay on the embedding, decay on an untied head.
        let embed = lora.save.contains(&Saved::EmbedTokens).then(|| {
            add(
                format!("{PEFT_PREFIX}model.embed_tokens.weight"),
                table.clone(),
                false,
            )
        });
        let lm_head = lora
            .save
            .contains(&Saved::LmHead)
            .then(|| add(format!("{PEFT_PREFIX}lm_head.weight"), table, true));
        AdapterLayout {
            tensors,
            blocks,
            embed,
            lm_head,
            rank: r,
            table_len: c.vocab_size * c.dim,
            len: offset,
        }
    }

    /// Number of trained parameters.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn pair(&self, layer: usize, target: Target) -> Option<Pair> {
        let slot = Target::ALL.iter().position(|&t| t == target)?;
        self.blocks.get(layer).and_then(|b| b[slot])
    }

    /// The starting adapter: A Kaiming-uniform with PEFT's `a = √5` (bound `1/√in`), B zero,
    /// the saved modules copied from the base. The random stream depends only on the seed.
    pub fn init(&self, base: &[f32], base_layout: &Layout, seed: u64) -> Vec<f32> {
        let mut params = vec![0f32; self.len];
        let mut rng = Rng(seed ^ 0x10a4_ada9_7e25_0bd1);
        for pairs in &self.blocks {
            for p in pairs.iter().flatten() {
                let bound = 1.0 / (p.in_dim as f64).sqrt();
                for v in &mut params[p.a..p.a + self.rank * p.in_dim] {
                    *v = ((2.0 * rng.next_f64() - 1.0) * bound) as f32;
                }
            }
        }
        let table = base_layout.embed..base_layout.embed + self.table_len;
        if let Some(off) = self.embed {
            params[off..off + self.table_len].copy_from_slice(&base[table]);
        }
        if let Some(off) = self.lm_head {
            let head = base_layout.lm_head..base_layout.lm_head + self.table_len;
            params[off..off + self.table_len].copy_from_slice(&base[head]);
        }
        params
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::DEFAULT_TARGETS;
    use crate::model::init::init_params;

    #[test]
    fn views_tile_the_buffer_with_peft_names_and_shapes() {
        let c = ModelConfig::preset("tiny", 259).unwrap();
        let (targets, save) = LoraConfig::parse_lists(DEFAULT_TARGETS, "embed_tokens").unwrap();
        let lora = LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            rslora: false,
            targets,
            save,
        };
        let l = AdapterLayout::new(&c, &lora);
        let mut next = 0;
        for t in &l.tensors {
            assert_eq!(t.offset, next, "{}", t.name);
            next += t.len;
        }
        assert_eq!(next, l.len());
        assert_eq!(l.tensors.len(), 2 * 7 * c.n_layers + 1);
        let find = |n: &str| {
            l.tensors
                .iter()
                .find(|t| t.name == n)
                .unwrap()
                .shape
                .clone()
        };
        assert_eq!(
            find("base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight"),
            [4, 64]
        );
        assert_eq!(
            find("base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"),
            [32, 4]
        );
        assert_eq!(
            find("base_model.model.model.layers.3.mlp.down_proj.lora_A.weight"),
            [4, 176]
        );
        assert_eq!(
            find("base_model.model.model.embed_tokens.weight"),
            [259, 64]
        );
        assert!(l.lm_head.is_none());

        // Step 0: B is zero, A bounded by 1/√in and not all zero, the embedding the base's.
        let base_layout = Layout::new(&c);
        let base = init_params(&c, &base_layout, 1);
        let p = l.init(&base, &base_layout, 2);
        let q = l.pair(0, Target::QProj).unwrap();
        let a = &p[q.a..q.a + 4 * 64];
        assert!(a.iter().all(|v| v.abs() <= 0.125) && a.iter().any(|&v| v != 0.0));
        assert!(p[q.b..q.b + 64 * 4].iter().all(|&v| v == 0.0));
        let e = l.embed.unwrap();
        assert_eq!(&p[e..e + 259 * 64], &base[..259 * 64]);
        assert_eq!(p, l.init(&base, &base_layout, 2));
    }
}
