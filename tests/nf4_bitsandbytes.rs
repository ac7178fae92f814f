//! Our NF4 quantisation (`ingot_train::quant::nf4`) against bitsandbytes' on the same tensors:
//! the same 16 code values, the same absmax per block of 64, and the same packed bytes; with
//! double quantisation, the same 8-bit dynamic code and the absmax values it stores.
//!
//! Needs a Python with torch and bitsandbytes (`python3`, or `INGOT_TORCH_PYTHON`); without one
//! the test prints SKIPPED and passes, unless `INGOT_REQUIRE_TORCH=1` (CI, which installs the
//! pinned packages of `.ci/requirements-reference.txt`).

mod common;

use std::path::Path;
use std::process::Command;

use common::reference_python;

use ingot_train::model::init::Rng;
use ingot_train::quant::nf4::{dynamic_code, Absmax, Nf4, BLOCK, CODE};

fn f32s(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Weights as a model holds them: normal with std 0.02, a few blocks much wider, a block of
/// zeros, rare outliers, and values placed exactly on the code book and on its midpoints.
fn weights(n: usize) -> Vec<f32> {
    let mut rng = Rng(12);
    let mut w: Vec<f32> = (0..n)
        .map(|i| {
            let scale = if (i / BLOCK) % 7 == 3 { 1.5 } else { 0.02 };
            let x = (rng.normal() * scale) as f32;
            if rng.next_u64().is_multiple_of(997) {
                x * 40.0
            } else {
                x
            }
        })
        .collect();
    w[5 * BLOCK..6 * BLOCK].fill(0.0);
    for (i, v) in w[8 * BLOCK..9 * BLOCK].iter_mut().enumerate() {
        *v = CODE[i % 16] * 0.5;
    }
    for (i, v) in w[9 * BLOCK..10 * BLOCK].iter_mut().enumerate() {
        *v = if i == 0 {
            0.5
        } else {
            0.25 * (CODE[i % 15] + CODE[i % 15 + 1])
        };
    }
    w
}

/// Runs `tests/reference/bnb_nf4.py` on `w`, leaving its outputs in `dir`.
fn bitsandbytes(python: &Path, w: &[f32], dir: &Path) {
    let src = dir.join("w.f32");
    std::fs::write(
        &src,
        w.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/bnb_nf4.py");
    let run = Command::new(python)
        .arg(&script)
        .arg(&src)
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

#[test]
fn our_nf4_equals_bitsandbytes_byte_for_byte() {
    let Some(python) = reference_python("torch, bitsandbytes", "NF4 comparison") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let w = weights(1024 * BLOCK);
    bitsandbytes(&python, &w, dir.path());
    let out = |name: &str| dir.path().join(name);
    let code = f32s(&out("code.f32"));
    assert_eq!(code, CODE, "bitsandbytes' NF4 code book");
    let ours = Nf4::quantize("w", &w).unwrap();
    assert_eq!(
        f32s(&out("absmax.f32")),
        ours.absmax.values(),
        "absmax per block"
    );
    let theirs = std::fs::read(out("q.u8")).unwrap();
    assert_eq!(theirs.len(), ours.packed.len());
    let differ: Vec<usize> = (0..theirs.len())
        .filter(|&i| theirs[i] != ours.packed[i])
        .collect();
    println!(
        "{} weights in {} blocks: {} of {} packed bytes differ",
        w.len(),
        ours.absmax.len(),
        differ.len(),
        theirs.len()
    );
    assert!(
        differ.is_empty(),
        "first differing bytes (index, ours, theirs): {:?}",
        differ
            .iter()
            .take(8)
            .map(|&i| (i, ours.packed[i], theirs[i]))
            .collect::<Vec<_>>()
    );
}

#[test]
fn our_double_quantisation_matches_bitsandbytes() {
    let Some(python) = reference_python("torch, bitsandbytes", "NF4 comparison") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // 1000 blocks: three whole groups of 256 absmax values and a short one of 232.
    let w = weights(1000 * BLOCK);
    bitsandbytes(&python, &w, dir.path());
    let out = |name: &str| dir.path().join(name);
    assert_eq!(
        f32s(&out("dq_code.f32")),
        dynamic_code().to_vec(),
        "bitsandbytes' 8-bit dynamic code"
    );
    let ours = Nf4::quantize_double("w", &w).unwrap();
    assert_eq!(std::fs::read(out("dq.u8")).unwrap(), ours.packed);
    let Absmax::Double {
        codes,
        scales,
        offset,
    } = &ours.absmax
    else {
        panic!("not double-quantised")
    };
    // The mean of the absmax values: ours sums in f64, torch in its own order in f32, so
    // they may differ in the last bit; the codes and scales are compared through it.
    let their_offset = f32s(&out("dq_offset.f32"))[0];
    assert!(
        (offset - their_offset).abs() <= 2.0 * f32::EPSILON * their_offset.abs(),
        "offset {offset} vs {their_offset}"
    );
    let their_scales = f32s(&out("dq_scales.f32"));
    assert_eq!(scales, &their_scales, "f32 scale per 256 absmax values");
    // bitsandbytes' CPU kernel finds the code by an approximate binary search: now and then
    // it takes the neighbour of the nearest code. Where the codes differ, ours must be the
    // nearer (or as near), and theirs next to it.
    let their_codes = std::fs::read(out("dq_absmax.u8")).unwrap();
    assert_eq!(their_codes.len(), codes.len());
    let plain = Nf4::quantize("w", &w).unwrap().absmax.values();
    let code = dynamic_code();
    let mut differ = 0;
    for (j, (&ours, &theirs)) in codes.iter().zip(&their_codes).enumerate() {
        if ours == theirs {
            continue;
        }
        differ += 1;
        let x = ((plain[j] - offset) / scales[j / 256]).clamp(-1.0, 1.0);
        let (a, b) = (code[ours as usize], code[theirs as usize]);
        assert!(
            (x - a).abs() <= (x - b).abs() && ours.abs_diff(theirs) == 1,
            "absmax {j}: {x} coded {ours} ({a}) by us, {theirs} ({b}) by bitsandbytes"
        );
    }
    let top = plain.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = ours
        .absmax
        .values()
        .iter()
        .zip(&f32s(&out("dq_absmax.f32")))
        .map(|(a, b)| (a - b).abs() / top)
        .fold(0f32, f32::max);
    println!(
        "double quantisation of {} absmax values: scales equal, offset {offset} vs {their_offset}, {differ} 8-bit codes differ (each ours the nearest, theirs its neighbour), dequantised absmax differ by at most {worst:.2e} of the largest",
        codes.len(),
    );
    assert!(differ * 100 <= codes.len(), "{differ} codes differ");
}
