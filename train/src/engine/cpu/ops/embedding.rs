//! Token embedding lookup, `table[vocab, d]`:
//!
//! ```text
//! forward:  x[i]            = table[ids[i]]
//! backward: dtable[ids[i]] += dx[i]            (accumulated, i in increasing order)
//! ```
//!
//! The backward is a scatter-add: a token repeated in the batch adds into the same row, so it
//! runs single-threaded in index order, which fixes the summation order.

use rayon::prelude::*;

use super::Float;

/// Rows of `x` per rayon task for the gather.
const ROWS_PER_TASK: usize = 64;

/// `x[i] = table[ids[i]]`; `x` is `[ids.len(), d]`.
pub fn embedding_forward<T: Float>(x: &mut [T], table: &[T], ids: &[u32], d: usize) {
    assert_eq!(x.len(), ids.len() * d, "embedding_forward: x shape");
    assert!(d > 0, "embedding_forward: d must be positive");
    let vocab = table.len() / d;
    assert_eq!(vocab * d, table.len(), "embedding_forward: table shape");
    x.par_chunks_mut(ROWS_PER_TASK * d)
        .zip(ids.par_chunks(ROWS_PER_TASK))
        .for_each(|(x, ids)| {
            for (row, &id) in x.chunks_mut(d).zip(ids) {
                let id = id as usize;
                assert!(
                    id < vocab,
                    "embedding_forward: id {id} out of vocab {vocab}"
                );
                row.copy_from_slice(&table[id * d..(id + 1) * d]);
            }
        });
}

/// `dtable[ids[i]] += dx[i]` for every i in order.
pub fn embedding_backward<T: Float>(dtable: &mut [T], dx: &[T], ids: &[u32], d: usize) {
    assert_eq!(dx.len(), ids.len() * d, "embedding_backward: dx shape");
    assert!(d > 0, "embedding_backward: d must be positive");
    let vocab = dtable.len() / d;
    assert_eq!(vocab * d, dtable.len(), "embedding_backward: dtable shape");
    for (row, &id) in dx.chunks(d).zip(ids) {
        let id = id as usize;
        assert!(
            id < vocab,
            "embedding_backward: id {id} out of vocab {vocab}"
        );
        for (t, &g) in dtable[id * d..(id + 1) * d].iter_mut().zip(row) {
            *t = *t + g;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    /// Gradient check of dtable with repeated ids (accumulating onto random values),
    /// tolerance [`GRAD_TOL`]; 150 ids span three gather tasks.
    #[test]
    fn embedding_grad_check_f64() {
        let (vocab, d, n) = (11, 3, 150);
        let mut rng = Rng::new(50);
        let table = rng.vec(vocab * d);
        let ids: Vec<u32> = (0..n).map(|_| rng.below(vocab as u32)).collect();
        let r = rng.vec(n * d);
        let mut x = vec![f64::NAN; n * d];
        embedding_forward(&mut x, &table, &ids, d);
        for (i, &id) in ids.iter().enumerate() {
            assert_eq!(
                &x[i * d..(i + 1) * d],
                &table[id as usize * d..(id as usize + 1) * d]
            );
        }
        let dt0 = rng.vec(vocab * d);
        let mut dt = dt0.clone();
        embedding_backward(&mut dt, &r, &ids, d);
        let dt: Vec<f64> = dt.iter().zip(&dt0).map(|(a, b)| a - b).collect();
        grad_check("dtable", &table, &dt, |table| {
            let mut x = vec![0.0; n * d];
            embedding_forward(&mut x, table, &ids, d);
            dot(&x, &r)
        });
    }

    /// f32 gather is exact.
    #[test]
    fn embedding_forward_f32_matches_f64() {
        let (vocab, d) = (7, 5);
        let mut rng = Rng::new(51);
        let table = rng.vec(vocab * d);
        let ids = [3u32, 0, 6, 3];
        let mut x = vec![0.0; ids.len() * d];
        embedding_forward(&mut x, &table, &ids, d);
        let mut x32 = vec![0.0f32; ids.len() * d];
        embedding_forward(&mut x32, &to_f32(&table), &ids, d);
        assert_eq!(x32, to_f32(&x));
    }
}
