//! Folding an adapter into its base: `W ← W + s·B·A` for every adapted layer, and the saved
//! modules' trained copies in place of the base's. The result is a plain model.

use rayon::prelude::*;

use super::{AdapterLayout, LoraConfig, Target};
use crate::model::{Layout, ModelConfig};

/// The merged model's shape and weights, computed in `base`'s own buffer (an 8B model's
/// weights are 32 GB in f32: no second copy). A tied base whose embedding or head was
/// trained whole comes out untied, as the adapted model computes it (PEFT trains a separate
/// copy of each saved module, so the two no longer share one table): its head, the last
/// tensor of an untied layout, is appended.
pub fn merge(
    c: &ModelConfig,
    base: Vec<f32>,
    lora: &LoraConfig,
    adapter: &[f32],
) -> (ModelConfig, Vec<f32>) {
    let al = AdapterLayout::new(c, lora);
    let s = lora.scaling() as f32;
    let mut out_config = c.clone();
    let mut params = base;
    if c.tie_embeddings && !lora.save.is_empty() {
        out_config.tie_embeddings = false;
        let embed = Layout::new(c).embed;
        params.extend_from_within(embed..embed + al.table_len);
    }
    let out_layout = Layout::new(&out_config);
    debug_assert_eq!(params.len(), out_layout.len());
    for (i, block) in out_layout.blocks.iter().enumerate() {
        for target in Target::ALL {
            let Some(p) = al.pair(i, target) else {
                continue;
            };
            let off = target.base_offset(block);
            let w = &mut params[off..off + p.out_dim * p.in_dim];
            let a = &adapter[p.a..p.a + al.rank * p.in_dim];
            let b = &adapter[p.b..p.b + p.out_dim * al.rank];
            add_low_rank(w, a, b, s, al.rank, p.in_dim);
        }
    }
    let table = al.table_len;
    if let Some(e) = al.embed {
        let dst = out_layout.embed;
        params[dst..dst + table].copy_from_slice(&adapter[e..e + table]);
    }
    if let Some(h) = al.lm_head {
        let dst = out_layout.lm_head;
        params[dst..dst + table].copy_from_slice(&adapter[h..h + table]);
    }
    (out_config, params)
}

/// `w[out, in] += s·(b[out, r]·a[r, in])`, row by row; each row's sum over the rank runs in
/// order, so the result does not depend on the thread count.
fn add_low_rank(w: &mut [f32], a: &[f32], b: &[f32], s: f32, rank: usize, in_dim: usize) {
    w.par_chunks_mut(in_dim)
        .zip(b.par_chunks(rank))
        .for_each(|(row, b_row)| {
            let mut delta = vec![0f32; in_dim];
            for (k, &bk) in b_row.iter().enumerate() {
                for (d, &x) in delta.iter_mut().zip(&a[k * in_dim..(k + 1) * in_dim]) {
                    *d += bk * x;
                }
            }
            for (w, d) in row.iter_mut().zip(delta) {
                *w += s * d;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::Saved;
    use crate::model::init::{init_params, Rng};

    #[test]
    fn merging_adds_the_scaled_product_and_unties_a_trained_head() {
        let c = ModelConfig::preset("tiny", 40).unwrap();
        let lora = LoraConfig {
            rank: 2,
            alpha: 3.0,
            dropout: 0.0,
            rslora: false,
            targets: vec![Target::VProj],
            save: vec![Saved::LmHead],
        };
        let base_layout = Layout::new(&c);
        let base = init_params(&c, &base_layout, 1);
        let al = AdapterLayout::new(&c, &lora);
        let mut rng = Rng(5);
        let adapter: Vec<f32> = (0..al.len()).map(|_| rng.normal() as f32).collect();
        let (mc, merged) = merge(&c, base.clone(), &lora, &adapter);
        assert!(!mc.tie_embeddings);
        let ml = Layout::new(&mc);
        // One entry of layer 2's v_proj by hand: W[o, j] + 1.5 · Σ_k B[o, k]·A[k, j].
        let p = al.pair(2, Target::VProj).unwrap();
        let (o, j) = (5, 7);
        let want = base[base_layout.blocks[2].wv + o * 64 + j]
            + 1.5
                * (0..2)
                    .map(|k| adapter[p.b + o * 2 + k] * adapter[p.a + k * 64 + j])
                    .sum::<f32>();
        let got = merged[ml.blocks[2].wv + o * 64 + j];
        assert!(
            (got - want).abs() <= 1e-6 * want.abs().max(1.0),
            "{got} vs {want}"
        );
        // Untouched layers, the base's embedding, and the trained head.
        assert_eq!(merged[ml.blocks[2].wq], base[base_layout.blocks[2].wq]);
        assert_eq!(&merged[..40 * 64], &base[..40 * 64]);
        let h = al.lm_head.unwrap();
        assert_eq!(
            &merged[ml.lm_head..ml.lm_head + 40 * 64],
            &adapter[h..h + 40 * 64]
        );
    }
}
