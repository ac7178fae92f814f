//! One flat buffer for all parameters, with a named view per tensor.
//!
//! Each entry maps one-to-one to a Hugging Face `LlamaForCausalLM` tensor (same name, same
//! shape, same row-major order), so export is a walk over the entries, and AdamW, clipping and
//! any future all-reduce run over one contiguous buffer. Gradients and optimizer moments use
//! the same layout in buffers of their own.

use super::ModelConfig;

/// One tensor's place in the flat buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Hugging Face name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub len: usize,
    /// Whether AdamW applies weight decay (matrices yes; norms and embeddings no).
    pub decay: bool,
}

impl Tensor {
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// Offsets of the tensors of one transformer block.
#[derive(Debug, Clone, Copy)]
pub struct BlockOffsets {
    pub attn_norm: usize,
    pub wq: usize,
    pub wk: usize,
    pub wv: usize,
    pub wo: usize,
    pub mlp_norm: usize,
    pub w_gate: usize,
    pub w_up: usize,
    pub w_down: usize,
}

#[derive(Debug, Clone)]
pub struct Layout {
    pub tensors: Vec<Tensor>,
    pub embed: usize,
    pub blocks: Vec<BlockOffsets>,
    pub final_norm: usize,
    /// The LM head's offset: the embedding's when tied.
    pub lm_head: usize,
    len: usize,
}

/// Where a weight that lives outside the flat buffer would be (a quantised base's linear
/// layers, see [`Layout::without_linears`]): any use as an offset fails at once.
pub const ELSEWHERE: usize = usize::MAX;

impl Layout {
    pub fn new(c: &ModelConfig) -> Layout {
        Layout::build(c, true)
    }

    /// The tensors a quantised base keeps dense: embeddings, norms and the LM head. The seven
    /// linear weights of each block are stored elsewhere (in NF4); their offsets are
    /// [`ELSEWHERE`].
    pub fn without_linears(c: &ModelConfig) -> Layout {
        Layout::build(c, false)
    }

    fn build(c: &ModelConfig, linears: bool) -> Layout {
        let mut tensors = Vec::new();
        let mut offset = 0;
        let mut add = |name: String, shape: Vec<usize>, decay: bool| -> usize {
            // A block's matrices are its seven linear weights.
            if !linears && shape.len() == 2 && name.starts_with("model.layers.") {
                return ELSEWHERE;
            }
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
        let (d, hd) = (c.dim, c.head_dim());
        let (q_out, kv_out) = (c.n_heads * hd, c.n_kv_heads * hd);
        let embed = add(
            "model.embed_tokens.weight".into(),
            vec![c.vocab_size, d],
            false,
        );
        let mut blocks = Vec::new();
        for i in 0..c.n_layers {
            let p = format!("model.layers.{i}");
            blocks.push(BlockOffsets {
                attn_norm: add(format!("{p}.input_layernorm.weight"), vec![d], false),
                wq: add(format!("{p}.self_attn.q_proj.weight"), vec![q_out, d], true),
                wk: add(
                    format!("{p}.self_attn.k_proj.weight"),
                    vec![kv_out, d],
                    true,
                ),
                wv: add(
                    format!("{p}.self_attn.v_proj.weight"),
                    vec![kv_out, d],
                    true,
                ),
                wo: add(format!("{p}.self_attn.o_proj.weight"), vec![d, q_out], true),
                mlp_norm: add(
                    format!("{p}.post_attention_layernorm.weight"),
                    vec![d],
                    false,
                ),
                w_gate: add(
                    format!("{p}.mlp.gate_proj.weight"),
                    vec![c.ffn_dim, d],
                    true,
                ),
                w_up: add(format!("{p}.mlp.up_proj.weight"), vec![c.ffn_dim, d], true),
                w_down: add(
                    format!("{p}.mlp.down_proj.weight"),
                    vec![d, c.ffn_dim],
                    true,
                ),
            });
        }
        let final_norm = add("model.norm.weight".into(), vec![d], false);
        let lm_head = if c.tie_embeddings {
            embed
        } else {
            add("lm_head.weight".into(), vec![c.vocab_size, d], true)
        };
        Layout {
            tensors,
            embed,
            blocks,
            final_norm,
            lm_head,
            len: offset,
        }
    }

    /// Number of parameters (length of the flat buffer).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_tile_the_buffer_in_order() {
        let c = ModelConfig::preset("tiny", 259).unwrap();
        let l = Layout::new(&c);
        let mut next = 0;
        for t in &l.tensors {
            assert_eq!(t.offset, next, "{}", t.name);
            next += t.len;
        }
        assert_eq!(next, l.len());
        assert_eq!(l.tensors.len(), 1 + 9 * c.n_layers + 1);
        assert_eq!(
            l.get("model.layers.1.self_attn.k_proj.weight")
                .unwrap()
                .shape,
            vec![32, 64]
        );
        assert!(l.get("lm_head.weight").is_none());
        let untied = ModelConfig {
            tie_embeddings: false,
            ..c
        };
        assert_eq!(
            Layout::new(&untied).get("lm_head.weight").unwrap().shape,
            vec![259, 64]
        );
    }

    #[test]
    fn preset_sizes() {
        // llama2.c's stories15M has 15.2M parameters with its 32000-id vocabulary.
        let c = ModelConfig::preset("15M", 32000).unwrap();
        assert_eq!(c.num_params(), 15_191_712);
        let c = ModelConfig::preset("124M", 50257).unwrap();
        assert!(
            (123_000_000..125_000_000).contains(&c.num_params()),
            "{}",
            c.num_params()
        );
        let tiny = ModelConfig::preset("tiny", 259).unwrap();
        assert!((150_000..400_000).contains(&tiny.num_params()));
    }
}
