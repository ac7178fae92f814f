use std::process::ExitCode;

use clap::Parser;
use ingot_prep::cli::{Cli, Command, TokenizerCommand};
use ingot_prep::{build, commands, tokenizer};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Panics that prep catches and reports (a reader failing on a corrupt file) must not add
    // a multi-line panic message to the one-line report.
    ingot_prep::pipeline::install_panic_hook();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the whole context chain, outermost first.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => {
            let args = cli.build;
            let summary = build::run(&args)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else if !args.quiet {
                println!(
                    "wrote {}: {} documents, {} tokens -> {} train + {} val blocks of {} ({}), {} tokens dropped at the tail",
                    summary.out, summary.documents, summary.tokens, summary.train_blocks, summary.val_blocks, summary.block_size, summary.dtype, summary.tokens_dropped
                );
                if !summary.skipped.is_empty() {
                    let s: Vec<String> = summary
                        .skipped
                        .iter()
                        .map(|(k, v)| format!("{v} {k}"))
                        .collect();
                    println!("skipped: {}", s.join(", "));
                }
                println!(
                    "{:.2} s, {:.2}M tokens/s, {:.1} MB/s of text",
                    summary.seconds,
                    summary.tokens_per_second / 1e6,
                    summary.input_bytes as f64 / summary.seconds.max(1e-9) / 1e6
                );
            }
        }
        Some(Command::Verify { dir }) => println!("{}", commands::verify::run(&dir)?),
        Some(Command::Inspect {
            dir,
            blocks,
            decode,
        }) => print!("{}", commands::inspect::run(&dir, blocks, decode)?),
        Some(Command::Tokenizer(TokenizerCommand::Train(args))) => {
            println!("{}", tokenizer::train::run(&args)?)
        }
        Some(Command::Tokenizer(TokenizerCommand::Bench(args))) => {
            let r = tokenizer::bench::run(&args)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{}: {} documents, {:.1} MB, {} tokens\n1 thread:   {:.2}M tokens/s\n{} threads: {:.2}M tokens/s",
                    r.tokenizer, r.documents, r.bytes as f64 / 1e6, r.tokens, r.one_thread_tokens_per_second / 1e6, r.threads, r.all_threads_tokens_per_second / 1e6
                );
            }
        }
    }
    Ok(())
}
