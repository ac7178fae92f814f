//! The output directory: refusing to overwrite, cleaning up after a failure, and the dataset's
//! fixed files. Nothing here is half-written on error: shards are removed, `index.json` is only
//! ever written last by the caller.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ingot_formats::INDEX_FILE;

use crate::shuffle::SPILL_PREFIX;

/// Files of a dataset that `--force` removes (and nothing else).
fn is_dataset_file(name: &str) -> bool {
    let shard = |prefix: &str| {
        name.strip_prefix(prefix)
            .and_then(|rest| {
                rest.strip_suffix(".bin")
                    .or_else(|| rest.strip_suffix(".bin.partial"))
            })
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    name == INDEX_FILE
        || name == "index.json.tmp"
        || name == "tokenizer.json"
        || shard("train-")
        || shard("val-")
}

/// Owns the output directory while a dataset is being written. Dropped without
/// [`OutputDir::commit`], it removes every file it was told about and, if it created the
/// directory, the directory too when empty.
pub struct OutputDir {
    dir: PathBuf,
    created_dir: bool,
    files: Vec<PathBuf>,
    committed: bool,
}

impl OutputDir {
    pub fn prepare(dir: &Path, force: bool) -> Result<OutputDir> {
        let mut created_dir = false;
        match fs::read_dir(dir) {
            Ok(entries) => {
                let names: Vec<String> = entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                if !names.is_empty() {
                    if !force {
                        bail!("--out {} exists and is not empty; pass --force to replace the dataset in it, or choose another directory", dir.display());
                    }
                    // Drop the index first so the old dataset is never seen half-deleted.
                    let index = dir.join(INDEX_FILE);
                    if index.exists() {
                        fs::remove_file(&index)
                            .with_context(|| format!("cannot remove {}", index.display()))?;
                    }
                    for name in names
                        .iter()
                        .filter(|n| is_dataset_file(n) && *n != INDEX_FILE)
                    {
                        let path = dir.join(name);
                        fs::remove_file(&path)
                            .with_context(|| format!("cannot remove {}", path.display()))?;
                    }
                    // Spill directories of a `--shuffle-docs` run that was killed.
                    for name in names.iter().filter(|n| n.starts_with(SPILL_PREFIX)) {
                        let path = dir.join(name);
                        if path.is_dir() {
                            fs::remove_dir_all(&path)
                                .with_context(|| format!("cannot remove {}", path.display()))?;
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create --out {}", dir.display()))?;
                created_dir = true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                bail!("--out {} is a file, not a directory", dir.display());
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read --out {}", dir.display()))
            }
        }
        Ok(OutputDir {
            dir: dir.to_path_buf(),
            created_dir,
            files: Vec::new(),
            committed: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes a file that belongs to the dataset, remembering it for cleanup. It is synced to
    /// disk, like the shards, before `index.json` can vouch for it.
    pub fn write_file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.dir.join(name);
        self.files.push(path.clone());
        let write = || -> std::io::Result<()> {
            let mut file = fs::File::create(&path)?;
            file.write_all(bytes)?;
            file.sync_all()
        };
        write().with_context(|| format!("cannot write {}", path.display()))
    }

    /// Remembers files created by someone else (the shard writers) for cleanup.
    pub fn track(&mut self, files: &[PathBuf]) {
        self.files.extend_from_slice(files);
    }

    pub fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for f in &self.files {
            let _ = fs::remove_file(f);
        }
        let _ = fs::remove_file(self.dir.join("index.json.tmp"));
        if self.created_dir {
            let _ = fs::remove_dir(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn force_removes_a_killed_runs_spill_directory() {
        let dir = tempfile::tempdir().unwrap();
        let spill = dir.path().join(".prep-shuffle-Ab12");
        std::fs::create_dir(&spill).unwrap();
        std::fs::write(spill.join("bucket-0000"), b"tokens").unwrap();
        std::fs::write(dir.path().join("train-00000.bin"), b"x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"keep").unwrap();
        assert!(OutputDir::prepare(dir.path(), false).is_err());
        let out = OutputDir::prepare(dir.path(), true).unwrap();
        out.commit();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["notes.txt"]);
    }

    #[test]
    fn only_dataset_files_are_ours() {
        for ours in [
            "index.json",
            "tokenizer.json",
            "train-00000.bin",
            "val-00012.bin",
            "train-00001.bin.partial",
        ] {
            assert!(is_dataset_file(ours), "{ours}");
        }
        for theirs in [
            "notes.txt",
            "train-.bin",
            "train-abc.bin",
            "model.safetensors",
            "val-1.binx",
        ] {
            assert!(!is_dataset_file(theirs), "{theirs}");
        }
    }
}
