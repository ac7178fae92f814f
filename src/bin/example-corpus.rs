//! Writes the example corpus used by the README's quickstart into the directory given:
//! generated English-like documents in the formats prep reads (jsonl, gzip and zstd jsonl, and
//! a plain-text file of paragraphs). Same bytes on every machine.
//!
//! Usage: example-corpus DIR [DOCUMENTS]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("error: usage: example-corpus DIR [DOCUMENTS]");
        return ExitCode::FAILURE;
    };
    let n = match args.next().map(|s| s.parse::<usize>()) {
        None => 6000,
        Some(Ok(n)) if n >= 4 => n,
        Some(_) => {
            eprintln!("error: DOCUMENTS must be a whole number of at least 4");
            return ExitCode::FAILURE;
        }
    };
    match write(&dir, n) {
        Ok(bytes) => {
            println!(
                "wrote {n} documents ({:.1} MB of text) to {}",
                bytes as f64 / 1e6,
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

fn write(dir: &std::path::Path, n: usize) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let docs = ingot::corpus::documents(2024, n);
    let quarter = n / 4;
    let jsonl = |docs: &[String]| -> Vec<u8> {
        let mut out = Vec::new();
        for d in docs {
            out.extend_from_slice(serde_json::json!({ "text": d }).to_string().as_bytes());
            out.push(b'\n');
        }
        out
    };
    std::fs::write(dir.join("part-0.jsonl"), jsonl(&docs[..quarter]))?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&jsonl(&docs[quarter..2 * quarter]))?;
    std::fs::write(dir.join("part-1.jsonl.gz"), gz.finish()?)?;
    std::fs::write(
        dir.join("part-2.jsonl.zst"),
        zstd::encode_all(&jsonl(&docs[2 * quarter..3 * quarter])[..], 3)?,
    )?;
    // Plain text: one document per paragraph, so the paragraphs inside documents are joined.
    let text: Vec<String> = docs[3 * quarter..]
        .iter()
        .map(|d| d.replace("\n\n", " "))
        .collect();
    std::fs::write(dir.join("part-3.txt"), text.join("\n\n"))?;
    Ok(docs.iter().map(|d| d.len()).sum())
}
