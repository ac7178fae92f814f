//! `--threads N`: the size of rayon's global pool, which every CPU op runs on.

use anyhow::{bail, Result};

/// Starts the global pool with `n` threads (all cores when `None`). The pool can start only
/// once per process: asking again for the size it has is fine, another size is an error.
pub fn configure(n: Option<usize>) -> Result<()> {
    let Some(n) = n else { return Ok(()) };
    let n = n.max(1);
    if rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .is_err()
        && rayon::current_num_threads() != n
    {
        bail!(
            "--threads {n}: this process already runs {} threads",
            rayon::current_num_threads()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_pool_starts_once_and_a_different_size_is_refused() {
        // Touching the pool starts it with its default size.
        let n = rayon::current_num_threads();
        assert!(super::configure(None).is_ok());
        assert!(super::configure(Some(n)).is_ok());
        let e = super::configure(Some(n + 1)).unwrap_err().to_string();
        assert!(e.contains(&format!("--threads {}", n + 1)), "{e}");
    }
}
