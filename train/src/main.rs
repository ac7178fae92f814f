use std::process::ExitCode;

use clap::Parser;
use ingot_train::cli::{Cli, Command};
use ingot_train::threads;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => {
            ingot_train::collective::finish();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ingot_train::collective::abort(1);
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => {
            let s = ingot_train::run::run(&cli.train)?;
            if !s.leader {
                return Ok(());
            }
            let val = match (s.val_loss, s.val_ppl) {
                (Some(l), Some(p)) => format!(", val loss {l:.4} (perplexity {p:.2})"),
                _ => String::new(),
            };
            let how = if s.stopped_early {
                "stopped at"
            } else {
                "finished"
            };
            println!(
                "{how} step {}: train loss {:.4}{val}, {} tokens, {:.0} tokens/s",
                s.steps, s.final_loss, s.tokens, s.tokens_per_second
            );
            if let Some(ck) = s.checkpoint {
                println!("checkpoint: {}", ck.display());
            }
        }
        Some(Command::Sample(args)) => {
            threads::configure(args.engine.threads)?;
            let s = ingot_train::sample::run(&args)?;
            println!("{}", s.text);
            eprintln!(
                "{} new tokens: {:.1} tokens/s after the prompt ({} tokens, prefill {:.3} s); {:.1} tokens/s overall",
                s.new_tokens,
                s.decode_tokens_per_second,
                s.prompt_tokens,
                s.prefill_seconds,
                s.tokens_per_second
            );
        }
        Some(Command::Eval(args)) => {
            threads::configure(args.engine.threads)?;
            let r = ingot_train::evaluate::run(&args)?;
            if args.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{} split: {} sequences, loss {:.4}, perplexity {:.3}",
                    r.split, r.sequences, r.loss, r.perplexity
                );
            }
        }
        Some(Command::Merge(args)) => {
            let m = ingot_train::merge::run(&args)?;
            if !m.base_checked {
                eprintln!("notice: the adapter records no SHA-256 of its base (PEFT wrote it, not ingot); {} was not checked against it", m.base.display());
            }
            println!(
                "merged onto {} in {}: {}",
                m.base.display(),
                m.dtype.torch_name(),
                m.out.display()
            );
        }
    }
    Ok(())
}
