//! Data types, reduction operators and the element-wise arithmetic of the collectives.
//!
//! The order is fixed so that every rank computes the same bits and a run can be repeated
//! exactly: the contributions are combined in rank order, `((r0 op r1) op r2) op ...`.
//! - Integers wrap on overflow (sum, product); `Avg` is the wrapped sum divided by the number
//!   of ranks with integer division (truncating toward zero), as NCCL defines it.
//! - f32 and f64 accumulate in their own type; `Avg` is the sum divided by the number of
//!   ranks.
//! - f16 and bf16 accumulate in f32 and are rounded once, to nearest even, at the end (after
//!   the division for `Avg`).
//! - `Max`/`Min` of floats propagate NaN (a NaN in any rank's input gives NaN, so a bad
//!   gradient is not hidden), and between equal values (-0 and +0) keep the lower rank's.

use half::{bf16, f16};

/// `ncclDataType_t` values the stand-in reduces (fp8 types, 10 and 11, are refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    I8,
    U8,
    I32,
    U32,
    I64,
    U64,
    F16,
    F32,
    F64,
    Bf16,
}

impl DataType {
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::I8,
            1 => Self::U8,
            2 => Self::I32,
            3 => Self::U32,
            4 => Self::I64,
            5 => Self::U64,
            6 => Self::F16,
            7 => Self::F32,
            8 => Self::F64,
            9 => Self::Bf16,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Self::I8 | Self::U8 => 1,
            Self::F16 | Self::Bf16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::I64 | Self::U64 | Self::F64 => 8,
        }
    }
}

/// `ncclRedOp_t` values the stand-in knows (no `ncclRedOpCreatePreMulSum` ops).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Sum,
    Prod,
    Max,
    Min,
    Avg,
}

impl Op {
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::Sum,
            1 => Self::Prod,
            2 => Self::Max,
            3 => Self::Min,
            4 => Self::Avg,
            _ => return None,
        })
    }
}

/// Arithmetic of an accumulator type.
trait Acc: Copy {
    fn add(a: Self, b: Self) -> Self;
    fn mul(a: Self, b: Self) -> Self;
    fn max(a: Self, b: Self) -> Self;
    fn min(a: Self, b: Self) -> Self;
    fn div_ranks(a: Self, n: usize) -> Self;
}

macro_rules! int_acc {
    ($($t:ty),*) => {$(
        impl Acc for $t {
            fn add(a: Self, b: Self) -> Self { a.wrapping_add(b) }
            fn mul(a: Self, b: Self) -> Self { a.wrapping_mul(b) }
            fn max(a: Self, b: Self) -> Self { if b > a { b } else { a } }
            fn min(a: Self, b: Self) -> Self { if b < a { b } else { a } }
            // n is at most the rank limit, which fits every type but i8/u8; there the
            // division by a larger n is 0, which is the truncated quotient anyway.
            fn div_ranks(a: Self, n: usize) -> Self {
                <$t>::try_from(n).map(|n| a.wrapping_div(n)).unwrap_or(0)
            }
        }
    )*};
}
int_acc!(i8, u8, i32, u32, i64, u64);

macro_rules! float_acc {
    ($($t:ty),*) => {$(
        impl Acc for $t {
            fn add(a: Self, b: Self) -> Self { a + b }
            fn mul(a: Self, b: Self) -> Self { a * b }
            fn max(a: Self, b: Self) -> Self {
                if a.is_nan() || b.is_nan() { <$t>::NAN } else if b > a { b } else { a }
            }
            fn min(a: Self, b: Self) -> Self {
                if a.is_nan() || b.is_nan() { <$t>::NAN } else if b < a { b } else { a }
            }
            fn div_ranks(a: Self, n: usize) -> Self { a / n as $t }
        }
    )*};
}
float_acc!(f32, f64);

/// How a stored element becomes an accumulator and back.
trait Element: Copy {
    type A: Acc;
    fn widen(self) -> Self::A;
    fn narrow(a: Self::A) -> Self;
}

macro_rules! same_element {
    ($($t:ty),*) => {$(
        impl Element for $t {
            type A = $t;
            fn widen(self) -> $t { self }
            fn narrow(a: $t) -> $t { a }
        }
    )*};
}
same_element!(i8, u8, i32, u32, i64, u64, f32, f64);

impl Element for f16 {
    type A = f32;
    fn widen(self) -> f32 {
        self.to_f32()
    }
    fn narrow(a: f32) -> f16 {
        f16::from_f32(a) // round to nearest even
    }
}

impl Element for bf16 {
    type A = f32;
    fn widen(self) -> f32 {
        self.to_f32()
    }
    fn narrow(a: f32) -> bf16 {
        bf16::from_f32(a) // round to nearest even
    }
}

/// Combines `len` elements of each source, in the order of `sources` (rank order), into
/// `out`.
///
/// # Safety
/// Each source must be aligned for `dt` and valid for `len` elements; `out` valid for
/// writing `len` elements (any alignment) and not overlapping a source.
pub unsafe fn reduce(dt: DataType, op: Op, sources: &[*const u8], len: usize, out: *mut u8) {
    match dt {
        DataType::I8 => typed::<i8>(op, sources, len, out),
        DataType::U8 => typed::<u8>(op, sources, len, out),
        DataType::I32 => typed::<i32>(op, sources, len, out),
        DataType::U32 => typed::<u32>(op, sources, len, out),
        DataType::I64 => typed::<i64>(op, sources, len, out),
        DataType::U64 => typed::<u64>(op, sources, len, out),
        DataType::F16 => typed::<f16>(op, sources, len, out),
        DataType::F32 => typed::<f32>(op, sources, len, out),
        DataType::F64 => typed::<f64>(op, sources, len, out),
        DataType::Bf16 => typed::<bf16>(op, sources, len, out),
    }
}

unsafe fn typed<T: Element>(op: Op, sources: &[*const u8], len: usize, out: *mut u8) {
    let Some((first, rest)) = sources.split_first() else {
        return;
    };
    let first = std::slice::from_raw_parts(first.cast::<T>(), len);
    let mut acc: Vec<T::A> = first.iter().map(|x| x.widen()).collect();
    for &src in rest {
        let src = std::slice::from_raw_parts(src.cast::<T>(), len);
        // One loop per operator, so that each is a plain loop the compiler can vectorise.
        match op {
            Op::Sum | Op::Avg => combine(&mut acc, src, Acc::add),
            Op::Prod => combine(&mut acc, src, Acc::mul),
            Op::Max => combine(&mut acc, src, Acc::max),
            Op::Min => combine(&mut acc, src, Acc::min),
        }
    }
    let n = sources.len();
    let out = out.cast::<T>();
    for (i, &a) in acc.iter().enumerate() {
        let a = if op == Op::Avg {
            T::A::div_ranks(a, n)
        } else {
            a
        };
        out.add(i).write_unaligned(T::narrow(a));
    }
}

fn combine<T: Element>(acc: &mut [T::A], src: &[T], f: impl Fn(T::A, T::A) -> T::A) {
    for (a, &x) in acc.iter_mut().zip(src) {
        *a = f(*a, x.widen());
    }
}
