//! `prep tokenizer bench`: the tokenizer's raw encode throughput on one thread and on all
//! threads, over documents already in memory. This is the ceiling `prep` end to end is held to.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use ingot_tokenizer::Tokenizer;
use rayon::prelude::*;
use serde::Serialize;

use crate::cli::BenchArgs;
use crate::discover::discover;
use crate::readers::{read_file, ReadOptions};
use crate::records;

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub tokenizer: String,
    pub documents: usize,
    pub bytes: u64,
    pub tokens: u64,
    pub threads: usize,
    pub one_thread_tokens_per_second: f64,
    pub all_threads_tokens_per_second: f64,
}

pub fn run(args: &BenchArgs) -> Result<BenchReport> {
    let tokenizer = Tokenizer::load(&args.tokenizer)?;
    let found = discover(&args.input.inputs)?;
    let options = ReadOptions {
        txt_unit: args.input.txt_unit,
        text_path: args.input.text_field.split('.').map(String::from).collect(),
    };
    let consumed = Arc::new(AtomicU64::new(0));
    let mut docs: Vec<String> = Vec::new();
    let mut bytes = 0u64;
    let mut open = String::new();
    for (i, f) in found.files.iter().enumerate() {
        read_file(f, i, &options, &consumed, &mut |chunk| {
            records::for_each(
                &chunk,
                &options.text_path,
                |doc| {
                    open.push_str(&doc.text);
                    if doc.last {
                        bytes += open.len() as u64;
                        docs.push(std::mem::take(&mut open));
                    }
                },
                |_| {},
            );
            bytes < args.max_bytes
        });
        if bytes >= args.max_bytes {
            break;
        }
    }
    if docs.is_empty() {
        bail!("no documents under --input to benchmark on");
    }
    let threads = args
        .input
        .threads()?
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;

    let encode_all = |tokenizer: &Tokenizer, docs: &[String]| -> Result<u64> {
        let mut scratch = Vec::new();
        let mut out = Vec::new();
        let mut n = 0u64;
        for d in docs {
            out.clear();
            tokenizer.encode_into(d, &mut scratch, &mut out)?;
            n += out.len() as u64;
        }
        Ok(n)
    };
    // Each measurement gets a freshly loaded tokenizer, so neither inherits the other's word
    // caches: prep starts cold too. A few documents warm up lazily built tables first.
    let fresh = || -> Result<Tokenizer> {
        let t = Tokenizer::load(&args.tokenizer)?;
        encode_all(&t, &docs[..docs.len().min(100)])?;
        Ok(t)
    };

    let one_tok = fresh()?;
    let t = Instant::now();
    let tokens = encode_all(&one_tok, &docs)?;
    let one = tokens as f64 / t.elapsed().as_secs_f64();
    drop(one_tok);

    let all_tok = fresh()?;
    let t = Instant::now();
    let per_chunk: Vec<Result<u64>> = pool.install(|| {
        docs.par_chunks(64)
            .map(|c| encode_all(&all_tok, c))
            .collect()
    });
    let mut all_tokens = 0;
    for r in per_chunk {
        all_tokens += r?;
    }
    let all = all_tokens as f64 / t.elapsed().as_secs_f64();
    Ok(BenchReport {
        tokenizer: tokenizer.source.clone(),
        documents: docs.len(),
        bytes,
        tokens,
        threads,
        one_thread_tokens_per_second: one,
        all_threads_tokens_per_second: all,
    })
}
