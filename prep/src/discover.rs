//! Input discovery: `--input` files and directories, walked recursively in sorted path order,
//! each file classified by extension.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Txt,
    Jsonl,
    Parquet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gz,
    Zst,
}

#[derive(Debug, Clone)]
pub struct InputFile {
    pub path: PathBuf,
    /// The path as shown in messages and stats.
    pub name: String,
    pub format: Format,
    pub compression: Compression,
    /// Size on disk (compressed size for compressed files).
    pub size: u64,
}

#[derive(Debug, Default)]
pub struct Discovery {
    pub files: Vec<InputFile>,
    /// Files whose extension no reader handles; skipped and counted.
    pub unsupported: Vec<String>,
    /// Entries that could not be examined (a dangling link, a vanished file): name and error.
    pub unreadable: Vec<(String, String)>,
}

/// Classifies a file name: `(format, compression)`, or `None` for an unsupported extension.
pub fn classify(name: &str) -> Option<(Format, Compression)> {
    let lower = name.to_ascii_lowercase();
    let (stem, compression) = if let Some(s) = lower.strip_suffix(".gz") {
        (s, Compression::Gz)
    } else if let Some(s) = lower.strip_suffix(".zst") {
        (s, Compression::Zst)
    } else {
        (lower.as_str(), Compression::None)
    };
    let format = if stem.ends_with(".txt") {
        Format::Txt
    } else if stem.ends_with(".jsonl") || stem.ends_with(".json") {
        Format::Jsonl
    } else if stem.ends_with(".parquet") {
        // Parquet needs random access to its footer; a compressed parquet file is not readable
        // as a stream, and parquet compresses its pages itself anyway.
        if compression != Compression::None {
            return None;
        }
        Format::Parquet
    } else {
        return None;
    };
    Some((format, compression))
}

/// Walks every input in the order given; directories are expanded recursively, sorted by path.
pub fn discover(inputs: &[PathBuf]) -> Result<Discovery> {
    if inputs.is_empty() {
        bail!("no --input given; pass one or more files or directories");
    }
    let mut found = Discovery::default();
    for input in inputs {
        let meta =
            std::fs::metadata(input).with_context(|| format!("--input {}", input.display()))?;
        let mut paths = Vec::new();
        if meta.is_dir() {
            let mut seen = HashSet::new();
            if let Ok(canonical) = input.canonicalize() {
                seen.insert(canonical);
            }
            // The --input directory itself must be listable; below it, problems are counted.
            walk(input, &mut seen, &mut paths, &mut found.unreadable)
                .with_context(|| format!("cannot list --input {}", input.display()))?;
            paths.sort();
            found.unreadable.sort();
        } else {
            paths.push(input.clone());
        }
        for path in paths {
            let name = path.display().to_string();
            let file_name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match classify(&file_name) {
                Some((format, compression)) => {
                    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    found.files.push(InputFile {
                        path,
                        name,
                        format,
                        compression,
                        size,
                    });
                }
                None => found.unsupported.push(name),
            }
        }
    }
    Ok(found)
}

/// Collects the files under `dir`; fails only when `dir` itself cannot be listed. `seen` holds
/// the directories walked so far (canonical paths), so a directory reached again through a
/// link (`loop -> .`, or two links to one place) is walked once. Entries below `dir` that
/// cannot be examined or listed are counted in `unreadable`.
fn walk(
    dir: &Path,
    seen: &mut HashSet<PathBuf>,
    out: &mut Vec<PathBuf>,
    unreadable: &mut Vec<(String, String)>,
) -> std::io::Result<()> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        match entry {
            Ok(entry) => paths.push(entry.path()),
            Err(e) => {
                // The listing broke off part-way: what was listed is kept.
                unreadable.push((dir.display().to_string(), e.to_string()));
                break;
            }
        }
    }
    // Sorted, so that which of two links to one directory is walked does not depend on the
    // order the file system lists them in.
    paths.sort();
    for path in paths {
        // Follow symbolic links to what they point at; one that leads nowhere is counted.
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => walk_subdir(&path, seen, out, unreadable),
            Ok(meta) if meta.is_file() => out.push(path),
            Ok(_) => {}
            Err(e) => unreadable.push((path.display().to_string(), e.to_string())),
        }
    }
    Ok(())
}

/// A directory below an `--input` directory: walked unless seen before; one that cannot be
/// listed is counted, not fatal.
fn walk_subdir(
    path: &Path,
    seen: &mut HashSet<PathBuf>,
    out: &mut Vec<PathBuf>,
    unreadable: &mut Vec<(String, String)>,
) {
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    if !seen.insert(canonical) {
        return;
    }
    if let Err(e) = walk(path, seen, out, unreadable) {
        unreadable.push((path.display().to_string(), format!("cannot list: {e}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions() {
        assert_eq!(classify("a.txt"), Some((Format::Txt, Compression::None)));
        assert_eq!(classify("a.TXT.gz"), Some((Format::Txt, Compression::Gz)));
        assert_eq!(
            classify("a.jsonl.zst"),
            Some((Format::Jsonl, Compression::Zst))
        );
        assert_eq!(classify("a.json"), Some((Format::Jsonl, Compression::None)));
        assert_eq!(
            classify("train-0000.parquet"),
            Some((Format::Parquet, Compression::None))
        );
        assert_eq!(classify("a.parquet.gz"), None);
        assert_eq!(classify("README.md"), None);
        assert_eq!(classify("data.csv.gz"), None);
    }

    #[test]
    fn a_directory_that_cannot_be_listed_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("vanished");
        let (mut seen, mut out, mut unreadable) = (HashSet::new(), Vec::new(), Vec::new());
        walk_subdir(&gone, &mut seen, &mut out, &mut unreadable);
        assert!(out.is_empty());
        assert_eq!(unreadable.len(), 1);
        assert!(unreadable[0].0.ends_with("vanished"), "{unreadable:?}");
        // The same directory at the top is an error for the caller.
        assert!(walk(&gone, &mut seen, &mut out, &mut unreadable).is_err());
    }

    #[test]
    fn a_link_cycle_is_walked_once() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("a.txt"), "x").unwrap();
        std::os::unix::fs::symlink(".", sub.join("loop")).unwrap();
        std::os::unix::fs::symlink(&sub, dir.path().join("again")).unwrap();
        let found = discover(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = found.files.iter().map(|f| f.path.clone()).collect();
        assert_eq!(names, vec![dir.path().join("again/a.txt")], "{names:?}");
        assert!(found.unreadable.is_empty(), "{:?}", found.unreadable);
    }
}
