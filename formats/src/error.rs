//! Errors of the format crate. Every variant names the file it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    // The I/O error is part of the one-line message, not a separate `source`, so that
    // printing the whole chain does not repeat it.
    #[error("{}: {cause}", .path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: no index.json, so this is not a finished ingot dataset (prep writes index.json last; an interrupted prep leaves none)", .dir.display())]
    MissingIndex { dir: PathBuf },
    #[error("{}: not a valid ingot index: {reason}", .path.display())]
    BadIndex { path: PathBuf, reason: String },
    #[error("{}: bad shard header: {reason}", .path.display())]
    BadHeader { path: PathBuf, reason: String },
    #[error("{}: {reason}", .path.display())]
    Mismatch { path: PathBuf, reason: String },
}

impl FormatError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.into(),
            cause: source,
        }
    }
}
