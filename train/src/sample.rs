//! `train sample`: text from a checkpoint, with temperature, top-k and top-p sampling.

use anyhow::{Context, Result};
use ingot_tokenizer::Tokenizer;

use crate::checkpoint::hf;
use crate::cli::SampleArgs;
use crate::engine::cpu::CpuEngine;
use crate::engine::Engine;
use crate::model::init::Rng;

/// Picks the next token from `logits` (modified in place).
pub fn choose(
    logits: &mut [f32],
    temperature: f32,
    top_k: usize,
    top_p: f32,
    rng: &mut Rng,
) -> u32 {
    if temperature <= 0.0 {
        return argmax(logits);
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    // Highest first; ties broken by id so the order is fully determined.
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if top_k > 0 {
        idx.truncate(top_k);
    }
    let max = logits[idx[0]];
    let mut probs: Vec<f64> = idx
        .iter()
        .map(|&i| f64::from((logits[i] - max) / temperature).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs.iter().position(|p| {
            acc += p;
            acc >= f64::from(top_p)
        });
        let keep = keep.map_or(probs.len(), |k| k + 1);
        idx.truncate(keep);
        probs.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let r = rng.next_f64();
    let mut acc = 0.0;
    for (i, p) in idx.iter().zip(&probs) {
        acc += p;
        if r < acc {
            return *i as u32;
        }
    }
    *idx.last().expect("at least one candidate") as u32
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

pub fn run(args: &SampleArgs) -> Result<String> {
    let model = hf::read_model_dir(&args.checkpoint)?;
    let tok_path = args.checkpoint.join("tokenizer.json");
    let tokenizer = Tokenizer::from_file(&tok_path).with_context(|| {
        format!(
            "{}: a checkpoint needs its tokenizer.json",
            args.checkpoint.display()
        )
    })?;
    let (bos, eos) = (model.bos, model.eos);
    let vocab = model.config.vocab_size;
    let max_ctx = model.config.max_seq_len;
    let mut engine = CpuEngine::new(model.config, model.params)?;
    let mut ids: Vec<u32> = bos.into_iter().collect();
    ids.extend(tokenizer.encode(&args.prompt)?);
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        anyhow::bail!("the prompt encodes to id {bad}, outside the model's vocabulary of {vocab}");
    }
    let prompt_len = ids.len();
    let mut rng = Rng(args.seed);
    for _ in 0..args.max_new_tokens {
        let ctx = &ids[ids.len().saturating_sub(max_ctx)..];
        if ctx.is_empty() {
            break;
        }
        let logits = engine.logits(ctx)?;
        let mut last = logits[(ctx.len() - 1) * vocab..].to_vec();
        let next = choose(
            &mut last,
            args.temperature,
            args.top_k,
            args.top_p,
            &mut rng,
        );
        if Some(next) == eos {
            break;
        }
        ids.push(next);
    }
    let start = usize::from(bos.is_some());
    let prompt = tokenizer.decode(&ids[start..prompt_len])?;
    let generated = tokenizer.decode(&ids[prompt_len..])?;
    Ok(format!("{prompt}{generated}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_top_k_and_top_p() {
        let mut rng = Rng(1);
        assert_eq!(choose(&mut [0.1, 3.0, 2.0], 0.0, 0, 1.0, &mut rng), 1);
        // top-k 1 is greedy whatever the temperature.
        for _ in 0..20 {
            assert_eq!(choose(&mut [0.1, 3.0, 2.0], 5.0, 1, 1.0, &mut rng), 1);
        }
        // top-p keeps only the dominant token here.
        for _ in 0..20 {
            assert_eq!(choose(&mut [0.0, 20.0, 0.0], 1.0, 0, 0.5, &mut rng), 1);
        }
        // With everything kept, every token turns up.
        let mut seen = [false; 3];
        for _ in 0..200 {
            seen[choose(&mut [0.0, 0.0, 0.0], 1.0, 0, 1.0, &mut rng) as usize] = true;
        }
        assert_eq!(seen, [true; 3]);
    }
}
