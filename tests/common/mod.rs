//! Helpers shared by the end-to-end tests: corpora written in every input format, running prep
//! through its library entry point, and reading datasets back.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Parser;
use ingot_formats::Dataset;
use ingot_prep::build::{self, Summary};
use ingot_prep::cli::Cli;

/// Documents from the project's generator plus a few that stress tokenizers: accents, CJK,
/// emoji, digits, runs of whitespace, tabs and CRLF, a very long line.
pub fn documents(n: usize) -> Vec<String> {
    let mut docs = ingot::corpus::documents(42, n);
    docs.push("Café déjà vu — naïve façade. 東京は大きい。 Emoji: 🦀🚀👍🏽 done.".into());
    docs.push(
        "Numbers 1234567890 and 3.14159, tabs\there, CRLF line\r\nnext  line   with    spaces."
            .into(),
    );
    docs.push("   leading spaces and trailing   \n\n\n\nmany blank lines   ".into());
    docs.push(format!("long {}", "word ".repeat(3000)));
    docs
}

pub fn write_jsonl(path: &Path, docs: &[String]) {
    let mut out = String::new();
    for d in docs {
        out.push_str(&serde_json::json!({ "id": out.len(), "text": d }).to_string());
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}

/// A parquet file with one string column at `column` (dotted = nested struct). `None` values are
/// written as nulls.
pub fn write_parquet(path: &Path, column: &str, values: &[Option<&str>]) {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    use std::sync::Arc;

    let parts: Vec<&str> = column.split('.').collect();
    let leaf = format!("optional binary {} (UTF8);", parts[parts.len() - 1]);
    let mut body = leaf;
    for p in parts[..parts.len() - 1].iter().rev() {
        body = format!("optional group {p} {{ {body} }}");
    }
    let schema = Arc::new(
        parse_message_type(&format!("message doc {{ required int64 id; {body} }}")).unwrap(),
    );
    let props = Arc::new(
        WriterProperties::builder()
            .set_max_row_group_size(1000)
            .build(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, schema, props).unwrap();
    let max_def = parts.len() as i16;
    for group in values.chunks(1000) {
        let mut rg = writer.next_row_group().unwrap();
        // id column
        let mut col = rg.next_column().unwrap().unwrap();
        let ids: Vec<i64> = (0..group.len() as i64).collect();
        col.typed::<parquet::data_type::Int64Type>()
            .write_batch(&ids, None, None)
            .unwrap();
        col.close().unwrap();
        // text column
        let mut col = rg.next_column().unwrap().unwrap();
        let present: Vec<ByteArray> = group
            .iter()
            .flatten()
            .map(|s| ByteArray::from(*s))
            .collect();
        let defs: Vec<i16> = group
            .iter()
            .map(|v| if v.is_some() { max_def } else { max_def - 1 })
            .collect();
        col.typed::<ByteArrayType>()
            .write_batch(&present, Some(&defs), None)
            .unwrap();
        col.close().unwrap();
        rg.close().unwrap();
    }
    writer.close().unwrap();
}

/// Runs `prep` with these arguments (as on the command line, without the program name).
pub fn prep(args: &[&str]) -> anyhow::Result<Summary> {
    let cli = Cli::try_parse_from(std::iter::once("prep").chain(args.iter().copied()))?;
    build::run(&cli.build)
}

/// Like [`prep`] with `--quiet`, `--input`, `--out` filled in.
pub fn prep_dir(input: &Path, out: &Path, extra: &[&str]) -> anyhow::Result<Summary> {
    let mut args = vec![
        "--quiet",
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    prep(&args)
}

/// Every token of a split, in order.
pub fn stream(dir: &Path, split: &str) -> Vec<u32> {
    let ds = Dataset::open(dir).unwrap();
    let mut out = Vec::new();
    for shard in ds.split(split).unwrap() {
        out.extend(shard.tokens().to_vec());
    }
    out
}

/// Every file of a dataset directory with its bytes, sorted by name.
pub fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The expected packed stream: `[BOS] ids [EOS]` per document, concatenated.
pub fn expected_stream(docs: &[Vec<u32>], bos: Option<u32>, eos: Option<u32>) -> Vec<u32> {
    let mut out = Vec::new();
    for d in docs {
        out.extend(bos);
        out.extend_from_slice(d);
        out.extend(eos);
    }
    out
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `python3` if it can import `tokenizers`; otherwise `None` after a visible message, or a panic
/// when `INGOT_REQUIRE_PYTHON=1` (set by CI) says the reference must be there.
pub fn python_with_tokenizers() -> Option<PathBuf> {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import tokenizers"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Some(PathBuf::from("python3"));
    }
    if std::env::var("INGOT_REQUIRE_PYTHON").as_deref() == Ok("1") {
        panic!("INGOT_REQUIRE_PYTHON=1 but python3 cannot import tokenizers; pip install -r .ci/requirements.txt");
    }
    eprintln!("SKIPPED: python3 with `tokenizers` not found; the comparison against Hugging Face tokenizers did not run (pip install -r .ci/requirements.txt)");
    None
}

/// The Python of the reference tests (`INGOT_TORCH_PYTHON`, else `python3`) when it imports
/// every module of `imports` (e.g. "torch, transformers"); else `None` after printing
/// `SKIPPED: ... the {what} did not run`, or a failure under `INGOT_REQUIRE_TORCH=1` (CI).
pub fn reference_python(imports: &str, what: &str) -> Option<PathBuf> {
    let python = std::env::var_os("INGOT_TORCH_PYTHON")
        .map_or_else(|| PathBuf::from("python3"), PathBuf::from);
    let ok = std::process::Command::new(&python)
        .args(["-c", &format!("import {imports}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    if std::env::var("INGOT_REQUIRE_TORCH").as_deref() == Ok("1") {
        panic!(
            "INGOT_REQUIRE_TORCH=1 but {} cannot import {imports}",
            python.display()
        );
    }
    eprintln!("SKIPPED: no Python that imports {imports} (set INGOT_TORCH_PYTHON); the {what} did not run");
    None
}

/// A random bf16 Llama written by transformers' `save_pretrained` (sharded, untied, grouped
/// query attention; `tests/reference/hf_llama.py make`) in `work/hf-model`.
pub fn make_hf_model(python: &Path, work: &Path) -> PathBuf {
    let model_dir = work.join("hf-model");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/hf_llama.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg("make")
        .arg(&model_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    model_dir
}

/// max |a − b| / max |b|: both sides compute in f32 with different summation orders.
pub fn rel_max_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// The CPU engine's logits of `tokens` for the model in `model_dir`.
pub fn our_logits(model_dir: &Path, tokens: &[u32]) -> Vec<f32> {
    use ingot_train::engine::Engine;
    let m = ingot_train::checkpoint::hf::read_model_dir(model_dir).unwrap();
    let mut e = ingot_train::engine::cpu::CpuEngine::new(m.config, m.params).unwrap();
    e.logits(tokens).unwrap()
}
