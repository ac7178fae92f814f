//! Generation with a key/value cache: the forward pass of the new positions of one sequence
//! only, reading the keys and values of the earlier positions from the cache.
//!
//! Each call runs `n` new tokens (the whole prompt in one batched pass, then one token per
//! call) through the same ops as [`Model::forward_trunk`], with RoPE at their positions, appends
//! their rotated keys and values to every layer's cache, and applies the LM head to the last
//! row only. A prompt (nothing cached yet) attends with training's blocked causal forward;
//! later tokens with [`attention_cached`] over the cache. A new token thus costs one position's forward pass (plus attention over the
//! cache), not the whole prefix's.

use super::ops::*;
use super::Model;

/// The keys and values of every layer for the positions decoded so far.
pub struct KvCache<T> {
    /// Per layer `[capacity, n_kv_heads*head_dim]`, rows `0..len` filled.
    k: Vec<Vec<T>>,
    v: Vec<Vec<T>>,
    len: usize,
    capacity: usize,
}

impl<T: Float> KvCache<T> {
    pub fn new(layers: usize, kv_width: usize, capacity: usize) -> Self {
        let layer = || vec![T::zero(); capacity * kv_width];
        KvCache {
            k: (0..layers).map(|_| layer()).collect(),
            v: (0..layers).map(|_| layer()).collect(),
            len: 0,
            capacity,
        }
    }

    /// Positions decoded so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl<T: Float> Model<T> {
    /// Runs `tokens` at positions `cache.len()..` and returns the logits `[vocab]` of the last
    /// one. The caller checks the ids and that the cache has room (the engine does).
    pub fn extend(&self, cache: &mut KvCache<T>, tokens: &[u32]) -> Vec<T> {
        let c = &self.config;
        let (n, d, f, hd) = (tokens.len(), c.dim, c.ffn_dim, c.head_dim());
        let (nh, nkv) = (c.n_heads, c.n_kv_heads);
        let (qd, kvd) = (nh * hd, nkv * hd);
        let past = cache.len;
        assert!(
            n > 0 && past + n <= cache.capacity,
            "extend: cache overflow"
        );
        let eps = T::from(c.rms_norm_eps).expect("eps fits the float type");
        let (p, l) = (&self.params, &self.layout);
        let w = |off: usize, len: usize| &p[off..off + len];
        let buf = |len: usize| vec![T::zero(); len];
        let (mut h, mut rstd) = (buf(n * d), buf(n));
        let (mut q, mut att, mut mid) = (buf(n * qd), buf(n * qd), buf(n * d));
        let (mut g, mut u, mut a) = (buf(n * f), buf(n * f), buf(n * f));
        let mut x = buf(n * d);
        embedding_forward(&mut x, w(l.embed, c.vocab_size * d), tokens, d);
        for (i, b) in l.blocks.iter().enumerate() {
            rmsnorm_forward(&mut h, &mut rstd, &x, w(b.attn_norm, d), n, d, eps);
            linear_forward(&mut q, &h, w(b.wq, qd * d), n, d, qd);
            let rows = past * kvd..(past + n) * kvd;
            linear_forward(
                &mut cache.k[i][rows.clone()],
                &h,
                w(b.wk, kvd * d),
                n,
                d,
                kvd,
            );
            linear_forward(
                &mut cache.v[i][rows.clone()],
                &h,
                w(b.wv, kvd * d),
                n,
                d,
                kvd,
            );
            rope_forward_at(&mut q, n, nh, hd, c.rope_theta, past);
            rope_forward_at(&mut cache.k[i][rows], n, nkv, hd, c.rope_theta, past);
            if past == 0 && n > 1 {
                // A prompt: the blocked causal forward of training (gemm over row blocks) is
                // the faster way to attend n rows to each other.
                let prompt = ..n * kvd;
                let (k, v) = (&cache.k[i][prompt], &cache.v[i][prompt]);
                let mut probs = buf(nh * n * n);
                attention_forward(&mut att, &mut probs, &q, k, v, 1, n, nh, nkv, hd);
            } else {
                attention_cached(&mut att, &q, &cache.k[i], &cache.v[i], n, past, nh, nkv, hd);
            }
            linear_forward(&mut mid, &att, w(b.wo, d * qd), n, qd, d);
            add_inplace(&mut mid, &x);
            rmsnorm_forward(&mut h, &mut rstd, &mid, w(b.mlp_norm, d), n, d, eps);
            linear_forward(&mut g, &h, w(b.w_gate, f * d), n, d, f);
            linear_forward(&mut u, &h, w(b.w_up, f * d), n, d, f);
            swiglu_forward(&mut a, &g, &u);
            linear_forward(&mut x, &a, w(b.w_down, d * f), n, f, d);
            add_inplace(&mut x, &mid);
        }
        cache.len += n;
        // Only the last row's logits are needed to pick the next token.
        let last = &x[(n - 1) * d..];
        let (mut hf, mut rf) = (buf(d), buf(1));
        rmsnorm_forward(&mut hf, &mut rf, last, w(l.final_norm, d), 1, d, eps);
        let v = c.vocab_size;
        let mut logits = buf(v);
        linear_forward(&mut logits, &hf, w(l.lm_head, v * d), 1, d, v);
        logits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::{init_params, Rng};
    use crate::model::{Layout, ModelConfig};

    fn model() -> Model<f32> {
        let c = ModelConfig {
            vocab_size: 37,
            dim: 32,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            ffn_dim: 48,
            max_seq_len: 64,
            ..ModelConfig::preset("tiny", 37).expect("tiny exists")
        };
        let p = init_params(&c, &Layout::new(&c), 7);
        Model::new(c, p)
    }

    /// Prefill then one token at a time: every step's logits equal the last row of the
    /// uncached forward of the whole prefix (f32, within 1e-5 of the largest logit), and so
    /// the greedy tokens are the same.
    #[test]
    fn cached_logits_equal_the_whole_prefix_forward() {
        let mut m = model();
        let v = m.config.vocab_size;
        let mut rng = Rng(3);
        let mut ids: Vec<u32> = (0..7).map(|_| (rng.next_u64() % v as u64) as u32).collect();
        let mut cache = KvCache::new(m.config.n_layers, 2 * 8, 20);
        let mut step = m.extend(&mut cache, &ids);
        for _ in 0..10 {
            let whole = m.logits(&ids);
            let want = &whole[(ids.len() - 1) * v..];
            let top = want.iter().fold(0f32, |a, &x| a.max(x.abs()));
            for (a, b) in step.iter().zip(want) {
                assert!((a - b).abs() <= 1e-5 * top, "{a} vs {b}");
            }
            let next = argmax(want);
            assert_eq!(argmax(&step), next);
            ids.push(next);
            step = m.extend(&mut cache, &[next]);
        }
        assert_eq!(cache.len(), 17);
    }

    fn argmax(x: &[f32]) -> u32 {
        (0..x.len()).fold(0, |b, i| if x[i] > x[b] { i } else { b }) as u32
    }

    /// The engine refuses, in one line and leaving the sequence as it was: extending before
    /// beginning, no tokens, an id outside the vocabulary, more positions than begun with, a
    /// capacity the model cannot take; and a weight change ends the sequence.
    #[test]
    fn the_engine_refuses_bad_extensions_in_one_line() {
        use crate::engine::cpu::CpuEngine;
        use crate::engine::Engine;
        let m = model();
        let (c, p) = (m.config.clone(), m.params.clone());
        let mut e = CpuEngine::new(c, p.clone()).unwrap();
        let refuse = |r: anyhow::Result<Vec<f32>>, want: &str| {
            let msg = format!("{:#}", r.unwrap_err());
            assert!(msg.contains(want) && !msg.contains('\n'), "{msg}");
        };
        refuse(e.extend_sequence(&[1]), "no sequence to extend");
        for bad in [0, 65] {
            let msg = format!("{:#}", e.begin_sequence(bad).unwrap_err());
            assert!(msg.contains("the model takes 1 to 64"), "{msg}");
        }
        e.begin_sequence(4).unwrap();
        refuse(e.extend_sequence(&[]), "no tokens");
        refuse(
            e.extend_sequence(&[37]),
            "outside the model's vocabulary of 37",
        );
        let first = e.extend_sequence(&[1, 2, 3]).unwrap();
        refuse(e.extend_sequence(&[4, 5]), "it was begun with room for 4");
        // The refusals changed nothing: the fourth position still fits, and equals the
        // uncached logits of the four tokens.
        let last = e.extend_sequence(&[4]).unwrap();
        let whole = e.logits(&[1, 2, 3, 4]).unwrap();
        assert_eq!(first.len(), last.len());
        let top = last.iter().fold(0f32, |a, &x| a.max(x.abs()));
        for (a, b) in last.iter().zip(&whole[3 * 37..]) {
            assert!((a - b).abs() <= 1e-5 * top, "{a} vs {b}");
        }
        e.set_params(&p).unwrap();
        refuse(e.extend_sequence(&[1]), "no sequence to extend");
    }
}
