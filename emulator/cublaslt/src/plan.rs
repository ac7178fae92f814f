//! What a matmul descriptor and four layouts describe, checked the way cuBLASLt checks them
//! (shared by the heuristic, `cublasLtMatmulAlgoCheck` and the matmul), and the one
//! algorithm the stand-in has.

use crate::descriptors::{
    desc_attr, Layout, MatmulDesc, CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_PEDANTIC, CUDA_R_16BF,
    CUDA_R_32F,
};
use crate::gemm::{self, Shape};
use crate::status::{Fail, Res, SUCCESS};

/// The supported element types under `CUBLAS_COMPUTE_32F` with an f32 scale: (A and B) →
/// (C and D). f32 inputs with a bf16 output are not among them (cuBLASLt has no such GEMM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combo {
    F32,
    Bf16,
    Bf16ToF32,
}

impl Combo {
    fn of(ab: u32, cd: u32) -> Option<Combo> {
        match (ab, cd) {
            (CUDA_R_32F, CUDA_R_32F) => Some(Combo::F32),
            (CUDA_R_16BF, CUDA_R_16BF) => Some(Combo::Bf16),
            (CUDA_R_16BF, CUDA_R_32F) => Some(Combo::Bf16ToF32),
            _ => None,
        }
    }

    /// Element bytes of A, B, C and D.
    pub fn elem_sizes(self) -> [usize; 4] {
        match self {
            Combo::F32 => [4; 4],
            Combo::Bf16 => [2; 4],
            Combo::Bf16ToF32 => [2, 2, 4, 4],
        }
    }

    fn code(self) -> u64 {
        match self {
            Combo::F32 => 1,
            Combo::Bf16 => 2,
            Combo::Bf16ToF32 => 3,
        }
    }

    fn from_code(code: u64) -> Option<Combo> {
        [Combo::F32, Combo::Bf16, Combo::Bf16ToF32]
            .into_iter()
            .find(|c| c.code() == code)
    }
}

/// A validated GEMM: its shape, types and how many elements each of A, B, C, D spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Problem {
    pub shape: Shape,
    pub combo: Combo,
    pub spans: [usize; 4],
    pub c: Layout,
    pub d: Layout,
}

impl Problem {
    /// Bytes each of A, B, C, D spans.
    pub fn span_bytes(&self) -> [usize; 4] {
        let sizes = self.combo.elem_sizes();
        [0, 1, 2, 3].map(|i| self.spans[i] * sizes[i])
    }
}

/// cublasOperation_t: N, T, and C (the conjugate transpose, which is T for real types).
fn transposed(op: i32, which: &str) -> Res<bool> {
    match op {
        0 => Ok(false),
        1 | 2 => Ok(true),
        _ => Err(Fail::invalid(format!(
            "{which} = {op} is not a cublasOperation_t"
        ))),
    }
}

/// Refuses every descriptor setting the stand-in does not implement.
fn check_desc(desc: &MatmulDesc) -> Res<(bool, bool)> {
    let compute = desc.raw(desc_attr::COMPUTE_TYPE) as u32;
    if compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_PEDANTIC {
        return Err(Fail::not_supported(format!(
            "compute type {compute}: only CUBLAS_COMPUTE_32F (68) is implemented"
        )));
    }
    let scale = desc.raw(desc_attr::SCALE_TYPE) as u32;
    if scale != CUDA_R_32F {
        return Err(Fail::not_supported(format!(
            "scale type {scale}: only CUDA_R_32F"
        )));
    }
    let mode = desc.i32(desc_attr::POINTER_MODE);
    if mode != 0 {
        return Err(Fail::not_supported(format!(
            "pointer mode {mode}: only host alpha/beta"
        )));
    }
    let epilogue = desc.raw(desc_attr::EPILOGUE) as u32;
    if epilogue != 1 {
        return Err(Fail::not_supported(format!(
            "epilogue {epilogue}: only CUBLASLT_EPILOGUE_DEFAULT"
        )));
    }
    if desc.i32(desc_attr::TRANSC) != 0 {
        return Err(Fail::not_supported("TRANSC: only CUBLAS_OP_N"));
    }
    for attr in desc_attr::POINTERS {
        if desc.raw(attr) != 0 {
            return Err(Fail::not_supported(format!(
                "matmul descriptor attribute {attr} (bias/aux/scale/emulation pointer) is set"
            )));
        }
    }
    for attr in desc_attr::SCALE_MODES {
        if desc.raw(attr) != 0 {
            return Err(Fail::not_supported(format!(
                "matmul descriptor attribute {attr}: only scalar f32 scaling"
            )));
        }
    }
    let ta = transposed(desc.i32(desc_attr::TRANSA), "TRANSA")?;
    let tb = transposed(desc.i32(desc_attr::TRANSB), "TRANSB")?;
    Ok((ta, tb))
}

/// Refuses memory orders and batching the stand-in does not implement.
fn check_layout(l: &Layout, name: &str) -> Res<()> {
    if l.order() != 0 {
        return Err(Fail::not_supported(format!(
            "{name}: order {}: only CUBLASLT_ORDER_COL",
            l.order()
        )));
    }
    match l.batch_count() {
        1 => {}
        n if n < 1 => return Err(Fail::invalid(format!("{name}: batch count {n}"))),
        n => {
            return Err(Fail::not_supported(format!(
                "{name}: batch count {n}: only 1"
            )))
        }
    }
    if l.batch_mode() != 0 {
        return Err(Fail::not_supported(format!(
            "{name}: only the strided batch mode"
        )));
    }
    Ok(())
}

/// (rows, cols, ld) of a column-major layout as host sizes. cuBLASLt accepts any leading
/// dimension at create time (the order may still change) and refuses a column-major one
/// below `max(1, rows)` when the layout is used; so does this.
fn dims(l: &Layout, name: &str) -> Res<(usize, usize, usize)> {
    let rows = usize::try_from(l.rows()).map_err(|_| Fail::invalid(format!("{name}: rows")))?;
    let cols = usize::try_from(l.cols()).map_err(|_| Fail::invalid(format!("{name}: cols")))?;
    let ld = l.ld();
    if ld < 1 || (ld as u64) < l.rows() {
        return Err(Fail::invalid(format!(
            "{name}: ld {ld} < max(1, rows {rows}) (column-major)"
        )));
    }
    let ld = usize::try_from(ld).map_err(|_| Fail::invalid(format!("{name}: ld")))?;
    Ok((rows, cols, ld))
}

/// Checks a matmul: the descriptor, the layouts, the types, the shapes.
pub fn validate(desc: &MatmulDesc, a: &Layout, b: &Layout, c: &Layout, d: &Layout) -> Res<Problem> {
    let (trans_a, trans_b) = check_desc(desc)?;
    for (l, name) in [(a, "A"), (b, "B"), (c, "C"), (d, "D")] {
        check_layout(l, name)?;
    }
    let combo = match (
        a.data_type() == b.data_type(),
        c.data_type() == d.data_type(),
    ) {
        (true, true) => Combo::of(a.data_type(), d.data_type()),
        _ => None,
    }
    .ok_or_else(|| {
        Fail::not_supported(format!(
            "types A={} B={} C={} D={} (cudaDataType): only f32→f32, bf16→bf16, bf16→f32",
            a.data_type(),
            b.data_type(),
            c.data_type(),
            d.data_type()
        ))
    })?;
    let (ar, ac, lda) = dims(a, "A")?;
    let (br, bc, ldb) = dims(b, "B")?;
    let (cr, cc, ldc) = dims(c, "C")?;
    let (m, n, ldd) = dims(d, "D")?;
    if (cr, cc) != (m, n) {
        return Err(Fail::invalid(format!("C is {cr}x{cc}, D is {m}x{n}")));
    }
    let (opa_rows, k) = if trans_a { (ac, ar) } else { (ar, ac) };
    let (opb_rows, opb_cols) = if trans_b { (bc, br) } else { (br, bc) };
    if opa_rows != m || opb_rows != k || opb_cols != n {
        return Err(Fail::invalid(format!(
            "op(A) is {opa_rows}x{k}, op(B) is {opb_rows}x{opb_cols}, D is {m}x{n}"
        )));
    }
    let sizes = combo.elem_sizes();
    let mut spans = [0usize; 4];
    let all = [(ar, ac, lda), (br, bc, ldb), (cr, cc, ldc), (m, n, ldd)];
    for (i, (rows, cols, ld)) in all.into_iter().enumerate() {
        spans[i] = gemm::span(rows, cols, ld)
            .filter(|s| {
                s.checked_mul(sizes[i])
                    .is_some_and(|b| b <= isize::MAX as usize)
            })
            .ok_or_else(|| {
                Fail::invalid(format!(
                    "{} spans more than the address space",
                    "ABCD".as_bytes()[i] as char
                ))
            })?;
    }
    let shape = Shape {
        m,
        n,
        k,
        trans_a,
        trans_b,
        lda,
        ldb,
        ldc,
        ldd,
    };
    Ok(Problem {
        shape,
        combo,
        spans,
        c: *c,
        d: *d,
    })
}

/// The widest alignment an algorithm of a real cuBLASLt relies on (128-bit vector loads):
/// an algorithm chosen under a 256-byte promise needs 16 bytes, not 256.
pub const MAX_ALGO_ALIGNMENT: u32 = 16;

/// Marks an algorithm the stand-in filled in (`cublasLtMatmulAlgo_t::data[0]`).
const ALGO_MAGIC: u64 = u64::from_le_bytes(*b"ingotLt1");
/// The algorithm id reported (the stand-in has one algorithm: the CPU column GEMM).
pub const ALGO_ID: u64 = 1;

/// The stand-in's algorithm for one type combination, with the pointer alignment (bytes) it
/// was chosen for, per matrix A, B, C, D. It needs no workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Algo {
    pub combo: Combo,
    pub align: [u32; 4],
}

impl Algo {
    /// What the heuristic offers under a preference promising `min_align` byte alignments,
    /// or `None` when a promise is below an element's size (no algorithm can work then).
    pub fn for_preference(p: &Problem, min_align: [u32; 4]) -> Option<Algo> {
        let sizes = p.combo.elem_sizes();
        let mut align = [0u32; 4];
        for i in 0..4 {
            // The promise as a power of two, capped at what an algorithm can rely on.
            let promise = match min_align[i] {
                0 => 0,
                a => (1u32 << a.trailing_zeros()).min(MAX_ALGO_ALIGNMENT),
            };
            if (promise as usize) < sizes[i] {
                return None;
            }
            align[i] = promise;
        }
        Some(Algo {
            combo: p.combo,
            align,
        })
    }

    /// What a matmul given no algorithm picks: one that works for any element-aligned pointer.
    pub fn internal(p: &Problem) -> Algo {
        Algo {
            combo: p.combo,
            align: p.combo.elem_sizes().map(|s| s as u32),
        }
    }

    pub fn encode(&self) -> [u64; 8] {
        let [a, b, c, d] = self.align.map(u64::from);
        let mut data = [0u64; 8];
        data[0] = ALGO_MAGIC;
        data[1] = ALGO_ID;
        data[2] = self.combo.code();
        data[3] = a | (b << 16) | (c << 32) | (d << 48);
        data
    }

    pub fn decode(data: &[u64; 8]) -> Res<Algo> {
        let combo = (data[0] == ALGO_MAGIC && data[1] == ALGO_ID)
            .then(|| Combo::from_code(data[2]))
            .flatten()
            .ok_or_else(|| Fail::invalid("the algorithm was not produced by this cuBLASLt"))?;
        let align = [0, 16, 32, 48].map(|shift| ((data[3] >> shift) & 0xffff) as u32);
        Ok(Algo { combo, align })
    }
}

/// `cublasLtMatmulHeuristicResult_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeuristicResult {
    pub algo: [u64; 8],
    pub workspace_size: usize,
    pub state: i32,
    pub waves_count: f32,
    pub reserved: [i32; 4],
}

const _: () = assert!(std::mem::size_of::<HeuristicResult>() == 96);

impl HeuristicResult {
    pub fn of(algo: &Algo) -> HeuristicResult {
        HeuristicResult {
            algo: algo.encode(),
            workspace_size: 0,
            state: SUCCESS,
            waves_count: 1.0,
            reserved: [0; 4],
        }
    }
}
