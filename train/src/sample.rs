//! `train sample`: text from a checkpoint, with temperature, top-k and top-p sampling, on any
//! engine, decoding with its key/value cache.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use ingot_tokenizer::Tokenizer;

use crate::checkpoint::hf;
use crate::cli::SampleArgs;
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

/// How the next token is picked.
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub seed: u64,
}

impl Sampling {
    /// Always the most likely token.
    pub const GREEDY: Sampling = Sampling {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
    };
}

/// The new tokens of one generation and how long it took.
#[derive(Debug, Clone)]
pub struct Generated {
    pub tokens: Vec<u32>,
    /// The prompt's forward pass (prefill), seconds.
    pub prefill_seconds: f64,
    /// Every later step, seconds.
    pub decode_seconds: f64,
}

/// Generates up to `max_new` tokens after `prompt` (stopping at `eos`) with the engine's
/// key/value cache: the prompt in one batched pass, then one position per new token.
pub fn generate(
    engine: &mut dyn Engine,
    prompt: &[u32],
    max_new: usize,
    sampling: Sampling,
    eos: Option<u32>,
) -> Result<Generated> {
    check_request(engine.config().max_seq_len, prompt.len(), max_new)?;
    engine.begin_sequence(prompt.len() + max_new)?;
    let t0 = Instant::now();
    let mut logits = engine.extend_sequence(prompt)?;
    let prefill_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut rng = Rng(sampling.seed);
    let mut out = Vec::new();
    while out.len() < max_new {
        let next = pick(&mut logits, sampling, &mut rng);
        if Some(next) == eos {
            break;
        }
        out.push(next);
        if out.len() < max_new {
            logits = engine.extend_sequence(&[next])?;
        }
    }
    Ok(Generated {
        tokens: out,
        prefill_seconds,
        decode_seconds: t1.elapsed().as_secs_f64(),
    })
}

/// As [`generate`], recomputing the whole sequence for every new token (`--no-kv-cache`):
/// the reference the cached path is tested and measured against.
pub fn generate_uncached(
    engine: &mut dyn Engine,
    prompt: &[u32],
    max_new: usize,
    sampling: Sampling,
    eos: Option<u32>,
) -> Result<Generated> {
    check_request(engine.config().max_seq_len, prompt.len(), max_new)?;
    let v = engine.config().vocab_size;
    let mut rng = Rng(sampling.seed);
    let mut ids = prompt.to_vec();
    let (mut prefill_seconds, t0) = (0.0, Instant::now());
    while ids.len() - prompt.len() < max_new {
        let logits = engine.logits(&ids)?;
        if ids.len() == prompt.len() {
            prefill_seconds = t0.elapsed().as_secs_f64();
        }
        let mut last = logits[(ids.len() - 1) * v..].to_vec();
        let next = pick(&mut last, sampling, &mut rng);
        if Some(next) == eos {
            break;
        }
        ids.push(next);
    }
    Ok(Generated {
        tokens: ids.split_off(prompt.len()),
        prefill_seconds,
        decode_seconds: t0.elapsed().as_secs_f64() - prefill_seconds,
    })
}

/// A generation needs a prompt, and the prompt and the new tokens must fit the model's
/// context (`max_position_embeddings`): the sequence that results is at most that long.
fn check_request(context: usize, prompt: usize, max_new: usize) -> Result<()> {
    if prompt == 0 {
        bail!(
            "the prompt is empty and the tokenizer has no BOS token to start from; give --prompt"
        );
    }
    match prompt.checked_add(max_new) {
        Some(total) if total <= context => Ok(()),
        _ => bail!(
            "--max-new-tokens {max_new}: the prompt's {prompt} tokens and the new ones exceed the model's context of {context} positions; use --max-new-tokens {} or less",
            context.saturating_sub(prompt)
        ),
    }
}

fn pick(logits: &mut [f32], s: Sampling, rng: &mut Rng) -> u32 {
    choose(logits, s.temperature, s.top_k, s.top_p, rng)
}

/// What `train sample` prints: the text, and the speed on stderr.
#[derive(Debug, Clone)]
pub struct SampleOutput {
    pub text: String,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    /// New tokens per second of the whole generation (prefill included).
    pub tokens_per_second: f64,
    /// New tokens per second after the prompt's pass: the cost of decoding itself.
    pub decode_tokens_per_second: f64,
}

pub fn run(args: &SampleArgs) -> Result<SampleOutput> {
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
    let context = model.config.max_seq_len;
    let mut ids: Vec<u32> = bos.into_iter().collect();
    ids.extend(tokenizer.encode(&args.prompt)?);
    check_request(context, ids.len(), args.max_new_tokens)?;
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        bail!("the prompt encodes to id {bad}, outside the model's vocabulary of {vocab}");
    }
    let e = &args.engine;
    let (mut engine, notice) = crate::device::create(
        e.device,
        e.dtype(),
        e.attention,
        model.config,
        model.params.into(),
        &crate::collective::DataParallel::default(),
    )?;
    if let Some(n) = notice {
        eprintln!("{n}");
    }
    let sampling = Sampling {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };
    let how = if args.no_kv_cache {
        generate_uncached
    } else {
        generate
    };
    let g = how(engine.as_mut(), &ids, args.max_new_tokens, sampling, eos)?;
    let start = usize::from(bos.is_some());
    let prompt = tokenizer.decode(&ids[start..])?;
    let generated = tokenizer.decode(&g.tokens)?;
    let seconds = (g.prefill_seconds + g.decode_seconds).max(1e-9);
    Ok(SampleOutput {
        text: format!("{prompt}{generated}"),
        prompt_tokens: ids.len(),
        new_tokens: g.tokens.len(),
        prefill_seconds: g.prefill_seconds,
        decode_seconds: g.decode_seconds,
        tokens_per_second: g.tokens.len() as f64 / seconds,
        // The first new token comes from the prompt's pass; each later one from one step.
        decode_tokens_per_second: g.tokens.len().saturating_sub(1) as f64
            / g.decode_seconds.max(1e-9),
    })
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

    /// Greedy generation with the cache gives the tokens of the uncached path, on a random
    /// model whose logits are far from ties, for a prompt and 24 new tokens.
    #[test]
    fn cached_greedy_equals_uncached_greedy() {
        use crate::engine::cpu::CpuEngine;
        use crate::model::{init::init_params, Layout, ModelConfig};
        let mut c = ModelConfig::preset("tiny", 61).unwrap();
        c.max_seq_len = 64;
        let p = init_params(&c, &Layout::new(&c), 11);
        let mut engine = CpuEngine::new(c, p).unwrap();
        let prompt = [1, 5, 9, 2, 33, 7];
        let greedy = Sampling::GREEDY;
        let a = generate(&mut engine, &prompt, 24, greedy, None).unwrap();
        let b = generate_uncached(&mut engine, &prompt, 24, greedy, None).unwrap();
        assert_eq!(a.tokens.len(), 24);
        assert_eq!(a.tokens, b.tokens);
        // Sampling with a seed is reproducible on the cached path too.
        let hot = Sampling {
            temperature: 1.0,
            top_k: 10,
            top_p: 0.9,
            seed: 4,
        };
        let x = generate(&mut engine, &prompt, 24, hot, None).unwrap();
        let y = generate(&mut engine, &prompt, 24, hot, None).unwrap();
        assert_eq!(x.tokens, y.tokens);
        // The prompt and the new tokens must fit the model's context; an empty prompt and a
        // count that overflows are refused in one line too, on both paths.
        let e = generate(&mut engine, &prompt, 64, greedy, None).unwrap_err();
        assert!(
            format!("{e:#}").contains("context of 64 positions"),
            "{e:#}"
        );
        let huge = format!("--max-new-tokens {}", usize::MAX);
        let cases = [
            (&prompt[..], usize::MAX, &huge[..]),
            (&[][..], 3, "prompt is empty"),
        ];
        for (p, n, want) in cases {
            for how in [generate, generate_uncached] {
                let e = format!("{:#}", how(&mut engine, p, n, greedy, None).unwrap_err());
                assert!(e.contains(want) && !e.contains('\n'), "{e}");
            }
        }
        assert!(generate(&mut engine, &prompt, 58, greedy, None).is_ok());
    }
}
