//! Ranks as threads of this process, each calling ncclCommInitRank with the same id.

mod common;

use std::ffi::{c_int, CStr};
use std::time::{Duration, Instant};

use common::*;
use half::{bf16, f16};

#[test]
fn all_reduce_sum_avg_max_min_f32() {
    let out = with_ranks(3, |r, comm| {
        let x: Vec<f32> = (0..100)
            .map(|i| (i as f32) * 0.5 + r as f32 * 10.0)
            .collect();
        (
            all_reduce(comm, &x, FLOAT32, SUM).unwrap(),
            all_reduce(comm, &x, FLOAT32, AVG).unwrap(),
            all_reduce(comm, &x, FLOAT32, MAX).unwrap(),
            all_reduce(comm, &x, FLOAT32, MIN).unwrap(),
            all_reduce(comm, &x, FLOAT32, PROD).unwrap(),
        )
    });
    for (sum, avg, max, min, prod) in &out {
        for i in 0..100 {
            let v = |r: usize| (i as f32) * 0.5 + r as f32 * 10.0;
            // Rank order: ((r0 + r1) + r2).
            assert_eq!(sum[i], (v(0) + v(1)) + v(2));
            assert_eq!(avg[i], ((v(0) + v(1)) + v(2)) / 3.0);
            assert_eq!(max[i], v(2));
            assert_eq!(min[i], v(0));
            assert_eq!(prod[i], (v(0) * v(1)) * v(2));
        }
    }
    // Every rank has the same bits.
    assert!(out.iter().all(|o| o.0 == out[0].0 && o.1 == out[0].1));
}

#[test]
fn all_reduce_in_place_and_nan_propagates_through_max() {
    let out = with_ranks(2, |r, comm| {
        let mut x = vec![1.0f32 + r as f32, if r == 1 { f32::NAN } else { 5.0 }];
        let p = x.as_mut_ptr();
        let rc = unsafe {
            ncclAllReduce(
                p.cast_const().cast(),
                p.cast(),
                2,
                FLOAT32,
                MAX,
                comm,
                STREAM,
            )
        };
        assert_eq!(rc, SUCCESS);
        x
    });
    for x in out {
        assert_eq!(x[0], 2.0);
        assert!(x[1].is_nan());
    }
}

#[test]
fn bf16_and_f16_accumulate_in_f32_and_round_once() {
    // 1 + 2^-8 + 2^-8: rounding after each step (to nearest even) would give 1 both times;
    // accumulating in f32 and rounding once gives 1 + 2^-7, which bf16 holds exactly.
    let vals = [1.0f32, 2f32.powi(-8), 2f32.powi(-8)];
    let out = with_ranks(3, |r, comm| {
        let x = vec![bf16::from_f32(vals[r]); 4];
        let y = vec![f16::from_f32(if r == 0 { 1.0 } else { 2f32.powi(-11) }); 4];
        let avg_in: Vec<bf16> = (0..64)
            .map(|i| bf16::from_f32(i as f32 * 0.37 + r as f32 * 1.13))
            .collect();
        (
            all_reduce(comm, &x, BFLOAT16, SUM).unwrap(),
            all_reduce(comm, &y, FLOAT16, SUM).unwrap(),
            all_reduce(comm, &avg_in, BFLOAT16, AVG).unwrap(),
        )
    });
    for (bsum, hsum, bavg) in &out {
        assert!(bsum.iter().all(|&v| v.to_f32() == 1.0 + 2f32.powi(-7)));
        assert!(hsum.iter().all(|&v| v.to_f32() == 1.0 + 2f32.powi(-10)));
        for (i, &v) in bavg.iter().enumerate() {
            let s: f32 = (0..3)
                .map(|r| bf16::from_f32(i as f32 * 0.37 + r as f32 * 1.13).to_f32())
                .sum();
            assert_eq!(v, bf16::from_f32(s / 3.0), "element {i}");
        }
    }
}

#[test]
fn integers_wrap_and_average_by_integer_division() {
    let out = with_ranks(3, |r, comm| {
        let a: Vec<i32> = vec![[1, 2, 4][r], [-1, -2, -4][r], [i32::MAX, 1, 0][r]];
        let b: Vec<u8> = vec![[200, 100, 1][r]];
        let c: Vec<i64> = vec![[-5, 7, 3][r]];
        let d: Vec<u64> = vec![[2, 3, 4][r]];
        (
            all_reduce(comm, &a, INT32, AVG).unwrap(),
            all_reduce(comm, &a, INT32, SUM).unwrap(),
            all_reduce(comm, &b, UINT8, SUM).unwrap(),
            all_reduce(comm, &c, INT64, MAX).unwrap(),
            all_reduce(comm, &c, INT64, MIN).unwrap(),
            all_reduce(comm, &d, UINT64, PROD).unwrap(),
            all_reduce(comm, &[[-1i8, 2, 3][r]], INT8, SUM).unwrap(),
            all_reduce(comm, &[[7u32, 8, 9][r]], UINT32, AVG).unwrap(),
        )
    });
    for o in out {
        assert_eq!(o.0, vec![7 / 3, -7 / 3, i32::MAX.wrapping_add(1) / 3]);
        assert_eq!(o.1, vec![7, -7, i32::MIN]);
        assert_eq!(o.2, vec![45]); // 301 mod 256
        assert_eq!(o.3, vec![7]);
        assert_eq!(o.4, vec![-5]);
        assert_eq!(o.5, vec![24]);
        assert_eq!(o.6, vec![4]);
        assert_eq!(o.7, vec![8]);
    }
}

#[test]
fn reduce_scatter_in_place_and_not() {
    let n = 3;
    let count = 5;
    let out = with_ranks(n, |r, comm| {
        let send: Vec<f64> = (0..n * count).map(|i| (i * 10 + r) as f64).collect();
        let mut recv = vec![-1.0f64; count];
        let rc = unsafe {
            ncclReduceScatter(
                send.as_ptr().cast(),
                recv.as_mut_ptr().cast(),
                count,
                FLOAT64,
                SUM,
                comm,
                STREAM,
            )
        };
        assert_eq!(rc, SUCCESS);
        let mut inplace = send.clone();
        let base = inplace.as_mut_ptr();
        let rc = unsafe {
            ncclReduceScatter(
                base.cast_const().cast(),
                base.add(r * count).cast(),
                count,
                FLOAT64,
                SUM,
                comm,
                STREAM,
            )
        };
        assert_eq!(rc, SUCCESS);
        (recv, inplace[r * count..(r + 1) * count].to_vec())
    });
    for (r, (recv, inplace)) in out.iter().enumerate() {
        let expect: Vec<f64> = (0..count)
            .map(|j| (0..n).map(|s| ((r * count + j) * 10 + s) as f64).sum())
            .collect();
        assert_eq!(recv, &expect);
        assert_eq!(inplace, &expect);
    }
}

#[test]
fn all_gather_in_place_and_not() {
    let n = 4;
    let count = 3;
    let out = with_ranks(n, |r, comm| {
        let send: Vec<u32> = (0..count).map(|i| (100 * r + i) as u32).collect();
        let mut recv = vec![0u32; n * count];
        let rc = unsafe {
            ncclAllGather(
                send.as_ptr().cast(),
                recv.as_mut_ptr().cast(),
                count,
                UINT32,
                comm,
                STREAM,
            )
        };
        assert_eq!(rc, SUCCESS);
        let mut inplace = vec![0u32; n * count];
        inplace[r * count..(r + 1) * count].copy_from_slice(&send);
        let base = inplace.as_mut_ptr();
        let rc = unsafe {
            ncclAllGather(
                base.add(r * count).cast_const().cast(),
                base.cast(),
                count,
                UINT32,
                comm,
                STREAM,
            )
        };
        assert_eq!(rc, SUCCESS);
        (recv, inplace)
    });
    let expect: Vec<u32> = (0..n)
        .flat_map(|r| (0..count).map(move |i| (100 * r + i) as u32))
        .collect();
    for (recv, inplace) in out {
        assert_eq!(recv, expect);
        assert_eq!(inplace, expect);
    }
}

#[test]
fn broadcast_bcast_and_reduce_to_a_root() {
    let out = with_ranks(3, |r, comm| {
        let send: Vec<i64> = (0..7).map(|i| i * 3 + r as i64).collect();
        let mut recv = vec![0i64; 7];
        // Only the root's sendbuff is read: the others pass null.
        let sendp = if r == 1 {
            send.as_ptr().cast()
        } else {
            std::ptr::null()
        };
        let rc =
            unsafe { ncclBroadcast(sendp, recv.as_mut_ptr().cast(), 7, INT64, 1, comm, STREAM) };
        assert_eq!(rc, SUCCESS);
        let mut buf = send.clone();
        let rc = unsafe { ncclBcast(buf.as_mut_ptr().cast(), 7, INT64, 2, comm, STREAM) };
        assert_eq!(rc, SUCCESS);
        let mut reduced = vec![0i64; 7];
        let recvp = if r == 0 {
            reduced.as_mut_ptr().cast()
        } else {
            std::ptr::null_mut()
        };
        let rc = unsafe { ncclReduce(send.as_ptr().cast(), recvp, 7, INT64, SUM, 0, comm, STREAM) };
        assert_eq!(rc, SUCCESS);
        (recv, buf, reduced)
    });
    for (r, (recv, buf, reduced)) in out.iter().enumerate() {
        assert_eq!(recv, &(0..7).map(|i| i * 3 + 1).collect::<Vec<i64>>());
        assert_eq!(buf, &(0..7).map(|i| i * 3 + 2).collect::<Vec<i64>>());
        if r == 0 {
            assert_eq!(reduced, &(0..7).map(|i| i * 9 + 3).collect::<Vec<i64>>());
        } else {
            assert!(reduced.iter().all(|&v| v == 0));
        }
    }
}

#[test]
fn counts_larger_than_a_slot_go_chunk_by_chunk() {
    // 15M floats = 60 MB, several 8 MiB slots and a partial last chunk.
    let count = 15_000_000;
    let out = with_ranks(2, |r, comm| {
        let x: Vec<f32> = (0..count)
            .map(|i| (i % 1000) as f32 + r as f32 * 0.25)
            .collect();
        let sum = all_reduce(comm, &x, FLOAT32, SUM).unwrap();
        let mut gathered = vec![0f32; 2 * 3_000_001];
        let rc = unsafe {
            ncclAllGather(
                x.as_ptr().cast(),
                gathered.as_mut_ptr().cast(),
                3_000_001,
                FLOAT32,
                comm,
                STREAM,
            )
        };
        assert_eq!(rc, SUCCESS);
        let mut rs = vec![0f32; count / 2];
        let rc = unsafe {
            ncclReduceScatter(
                x.as_ptr().cast(),
                rs.as_mut_ptr().cast(),
                count / 2,
                FLOAT32,
                MAX,
                comm,
                STREAM,
            )
        };
        assert_eq!(rc, SUCCESS);
        (sum, gathered, rs)
    });
    for (r, (sum, gathered, rs)) in out.iter().enumerate() {
        for i in (0..count).step_by(997).chain(count - 5..count) {
            assert_eq!(sum[i], 2.0 * (i % 1000) as f32 + 0.25, "element {i}");
        }
        for i in (0..3_000_001).step_by(991).chain([3_000_000]) {
            assert_eq!(gathered[i], (i % 1000) as f32);
            assert_eq!(gathered[3_000_001 + i], (i % 1000) as f32 + 0.25);
        }
        for j in (0..count / 2).step_by(1009) {
            assert_eq!(rs[j], ((r * count / 2 + j) % 1000) as f32 + 0.25);
        }
    }
}

#[test]
fn one_rank_and_zero_counts() {
    let out = with_ranks(1, |_, comm| {
        let x = [1.5f32, 2.5];
        let empty: [f32; 0] = [];
        let rc = unsafe {
            ncclAllReduce(
                std::ptr::null(),
                std::ptr::null_mut(),
                0,
                FLOAT32,
                SUM,
                comm,
                STREAM,
            )
        };
        assert_eq!(rc, SUCCESS);
        (
            all_reduce(comm, &x, FLOAT32, SUM).unwrap(),
            all_reduce(comm, &empty, FLOAT32, SUM).unwrap(),
        )
    });
    assert_eq!(out[0].0, vec![1.5, 2.5]);
}

#[test]
fn queries_version_strings_and_groups() {
    let mut v: c_int = 0;
    assert_eq!(unsafe { ncclGetVersion(&mut v) }, SUCCESS);
    assert_eq!(v / 100, 228);
    let s = |c| {
        unsafe { CStr::from_ptr(ncclGetErrorString(c)) }
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(s(SUCCESS), "no error");
    assert_eq!(
        s(REMOTE_ERROR),
        "remote process exited or there was a network error"
    );
    assert!(s(SYSTEM_ERROR).starts_with("unhandled system error"));
    assert!(s(INVALID_ARGUMENT).starts_with("invalid argument"));
    assert!(s(INVALID_USAGE).starts_with("invalid usage"));
    assert_eq!(s(99), "unknown result code");
    assert_eq!(ncclGroupStart(), SUCCESS);
    assert_eq!(ncclGroupStart(), SUCCESS);
    assert_eq!(ncclGroupEnd(), SUCCESS);
    assert_eq!(ncclGroupEnd(), SUCCESS);
    assert_eq!(ncclGroupEnd(), INVALID_USAGE);
    assert!(last_error(std::ptr::null_mut()).contains("ncclGroupEnd"));
    let out = with_ranks(2, |r, comm| {
        let (mut n, mut me, mut dev, mut err) = (0, 0, -1, 99);
        unsafe {
            assert_eq!(ncclCommCount(comm, &mut n), SUCCESS);
            assert_eq!(ncclCommUserRank(comm, &mut me), SUCCESS);
            assert_eq!(ncclCommCuDevice(comm, &mut dev), SUCCESS);
            assert_eq!(ncclCommGetAsyncError(comm, &mut err), SUCCESS);
            assert_eq!(ncclCommFinalize(comm), SUCCESS);
        }
        assert_eq!(last_error(comm), "");
        (n, me as usize == r, dev, err)
    });
    assert!(out.iter().all(|&o| o == (2, true, 0, SUCCESS)));
}

#[test]
fn bad_arguments_are_refused() {
    let id = new_id();
    assert_eq!(init(0, id, 0), Err(INVALID_ARGUMENT));
    assert_eq!(init(2, id, 2), Err(INVALID_ARGUMENT));
    assert_eq!(init(2, id, usize::MAX), Err(INVALID_ARGUMENT));
    assert!(last_error(std::ptr::null_mut()).contains("rank"));
    assert_eq!(
        init(2, UniqueId { internal: [0; 128] }, 0),
        Err(INVALID_ARGUMENT)
    );
    assert_eq!(
        unsafe { ncclCommInitRank(std::ptr::null_mut(), 1, id, 0) },
        INVALID_ARGUMENT
    );
    assert_eq!(
        unsafe { ncclGetUniqueId(std::ptr::null_mut()) },
        INVALID_ARGUMENT
    );
    let x = [1f32];
    let mut y = [0f32];
    let null = std::ptr::null_mut();
    unsafe {
        assert_eq!(
            ncclAllReduce(
                x.as_ptr().cast(),
                y.as_mut_ptr().cast(),
                1,
                FLOAT32,
                SUM,
                null,
                STREAM
            ),
            INVALID_ARGUMENT
        );
        assert_eq!(ncclCommDestroy(null), INVALID_ARGUMENT);
        assert_eq!(ncclCommAbort(0x1234 as NcclComm), INVALID_ARGUMENT);
        let mut n = 0;
        assert_eq!(ncclCommCount(null, &mut n), INVALID_ARGUMENT);
    }
    // A config not made by NCCL_CONFIG_INITIALIZER.
    let mut config = [0u8; 128];
    let mut comm: NcclComm = std::ptr::null_mut();
    let rc =
        unsafe { ncclCommInitRankConfig(&mut comm, 1, new_id(), 0, config.as_mut_ptr().cast()) };
    assert_eq!(rc, INVALID_ARGUMENT);
    // One that is, non-blocking: accepted, and complete on return.
    config[..8].copy_from_slice(&128usize.to_ne_bytes());
    config[8..12].copy_from_slice(&0xcafebeefu32.to_ne_bytes());
    config[12..16].copy_from_slice(&22805u32.to_ne_bytes());
    config[16..20].copy_from_slice(&0i32.to_ne_bytes());
    let rc =
        unsafe { ncclCommInitRankConfig(&mut comm, 1, new_id(), 0, config.as_mut_ptr().cast()) };
    assert_eq!(rc, SUCCESS);
    unsafe {
        assert_eq!(ncclCommDestroy(comm), SUCCESS);
        assert_eq!(ncclCommDestroy(comm), INVALID_ARGUMENT);
    }
}

#[test]
fn a_rank_joining_twice_is_refused_and_the_others_still_join() {
    let id = new_id();
    std::thread::scope(|s| {
        let a = s.spawn(move || init(3, id, 0).map(|c| c as usize));
        let b = s.spawn(move || init(3, id, 1).map(|c| c as usize));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(init(3, id, 1), Err(INVALID_USAGE));
        assert!(last_error(std::ptr::null_mut()).contains("joined twice"));
        let c = init(3, id, 2).expect("rank 2");
        for h in [a, b] {
            let comm = h.join().unwrap().expect("rank 0/1") as NcclComm;
            assert_eq!(unsafe { ncclCommDestroy(comm) }, SUCCESS);
        }
        assert_eq!(unsafe { ncclCommDestroy(c) }, SUCCESS);
    });
    // Rank 0 again with the same id: the name was unlinked once all joined, so it is a
    // new (lonely) communicator; not tried here, as it would wait for its peers.
}

#[test]
fn bad_collective_arguments_fail_on_every_rank_and_the_comm_stays_usable() {
    let out = with_ranks(2, |r, comm| {
        let x = [1f32 + r as f32; 4];
        let mut y = [0f32; 4];
        let (s, d) = (x.as_ptr().cast(), y.as_mut_ptr().cast());
        // Rank 1 passes an fp8 datatype: it gets InvalidArgument, rank 0 InvalidUsage.
        let bad_type = unsafe {
            ncclAllReduce(
                s,
                d,
                4,
                if r == 1 { 10 } else { FLOAT32 },
                SUM,
                comm,
                STREAM,
            )
        };
        let msg1 = last_error(comm);
        // The counts disagree: both InvalidUsage.
        let mismatch = unsafe { ncclAllReduce(s, d, 3 + r, FLOAT32, SUM, comm, STREAM) };
        let msg2 = last_error(comm);
        // A root out of range and a null buffer.
        let bad_root = unsafe { ncclBroadcast(s, d, 4, FLOAT32, 7, comm, STREAM) };
        let null_buf = unsafe { ncclAllReduce(std::ptr::null(), d, 4, FLOAT32, SUM, comm, STREAM) };
        let bad_op = unsafe { ncclAllReduce(s, d, 4, FLOAT32, 9, comm, STREAM) };
        let ok = all_reduce(comm, &x, FLOAT32, SUM);
        (
            bad_type, msg1, mismatch, msg2, bad_root, null_buf, bad_op, ok,
        )
    });
    assert_eq!(out[0].0, INVALID_USAGE);
    assert!(
        out[0].1.contains("rank 1 passed an invalid argument"),
        "{}",
        out[0].1
    );
    assert_eq!(out[1].0, INVALID_ARGUMENT);
    assert!(out[1].1.contains("datatype 10"), "{}", out[1].1);
    for o in &out {
        assert_eq!(o.2, INVALID_USAGE);
        assert!(o.3.contains("disagree"), "{}", o.3);
        assert_eq!(o.4, INVALID_ARGUMENT);
        assert_eq!(o.5, INVALID_ARGUMENT);
        assert_eq!(o.6, INVALID_ARGUMENT);
        assert_eq!(o.7, Ok(vec![3.0; 4]));
    }
}

#[test]
fn a_peer_that_aborts_fails_the_collective_with_a_remote_error() {
    let out = with_ranks_abort();
    assert_eq!(out.0, REMOTE_ERROR);
    assert!(
        out.1.contains("rank 1") && out.1.contains("aborted"),
        "{}",
        out.1
    );
    assert_eq!(out.2, REMOTE_ERROR);
    assert_eq!(out.3, REMOTE_ERROR);
}

/// Rank 1 aborts while rank 0 waits in an all-reduce; rank 0's error, message, async error
/// and the result of its next call.
fn with_ranks_abort() -> (NcclResult, String, NcclResult, NcclResult) {
    let id = new_id();
    std::thread::scope(|s| {
        let peer = s.spawn(move || {
            let comm = init(2, id, 1).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(unsafe { ncclCommAbort(comm) }, SUCCESS);
        });
        let comm = init(2, id, 0).unwrap();
        let t = Instant::now();
        let rc = all_reduce(comm, &[1f32], FLOAT32, SUM).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5));
        let msg = last_error(comm);
        let mut async_err = 0;
        assert_eq!(
            unsafe { ncclCommGetAsyncError(comm, &mut async_err) },
            SUCCESS
        );
        let again = all_reduce(comm, &[1f32], FLOAT32, SUM).unwrap_err();
        peer.join().unwrap();
        assert_eq!(unsafe { ncclCommDestroy(comm) }, SUCCESS);
        (rc, msg, async_err, again)
    })
}

#[test]
fn abort_from_another_thread_stops_a_waiting_collective() {
    let id = new_id();
    let comm = init(1, id, 0).unwrap();
    assert_eq!(unsafe { ncclCommAbort(comm) }, SUCCESS);
    // And a two-rank communicator whose rank 0 waits for a rank 1 that never calls.
    let id = new_id();
    std::thread::scope(|s| {
        let waiter = s.spawn(move || {
            let comm = init(2, id, 0).unwrap();
            let c = comm as usize;
            let t = Instant::now();
            let rc = std::thread::scope(|s2| {
                s2.spawn(move || {
                    std::thread::sleep(Duration::from_millis(200));
                    assert_eq!(unsafe { ncclCommAbort(c as NcclComm) }, SUCCESS);
                });
                all_reduce(comm, &[1f32], FLOAT32, SUM)
            });
            (rc, t.elapsed())
        });
        let idle = init(2, id, 1).unwrap();
        let (rc, elapsed) = waiter.join().unwrap();
        assert!(rc.is_err());
        assert!(elapsed < Duration::from_secs(5));
        assert_eq!(unsafe { ncclCommDestroy(idle) }, SUCCESS);
    });
}
