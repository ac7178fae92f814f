//! Ranks as processes: this test executable runs itself again (std::env::current_exe) with
//! INGOT_EMU_NCCL_TEST_ROLE set, and the test `child_rank` then acts as the rank it names.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const ROLE: &str = "INGOT_EMU_NCCL_TEST_ROLE";
const ID: &str = "INGOT_EMU_NCCL_TEST_ID";

fn spawn(role: &str, id: &UniqueId, timeout: Option<&str>) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["child_rank", "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(ID, id_to_hex(id))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match timeout {
        Some(t) => cmd.env("INGOT_EMU_NCCL_TIMEOUT", t),
        None => cmd.env_remove("INGOT_EMU_NCCL_TIMEOUT"),
    };
    cmd.spawn().unwrap()
}

fn finish(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child failed: {text}");
    text
}

/// The body of a child process; a no-op in a normal test run.
#[test]
fn child_rank() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let id = id_from_hex(&std::env::var(ID).unwrap());
    match role.as_str() {
        // Rank 1 of 2: two collectives with rank 0, then exits without destroying.
        "exit-after-two" => {
            let comm = init(2, id, 1).unwrap();
            assert_eq!(
                all_reduce(comm, &[1.0f32, 2.0], FLOAT32, SUM).unwrap(),
                vec![11.0, 22.0]
            );
            let mut all = [0i32; 4];
            let mine = [7i32, 8];
            let rc = unsafe {
                ncclAllGather(
                    mine.as_ptr().cast(),
                    all.as_mut_ptr().cast(),
                    2,
                    INT32,
                    comm,
                    STREAM,
                )
            };
            assert_eq!(rc, SUCCESS);
            assert_eq!(all, [5, 6, 7, 8]);
            std::process::exit(0);
        }
        // Rank 0 of 2, alone: the join must time out.
        "alone-rank-0" | "alone-rank-1" => {
            let rank = if role == "alone-rank-0" { 0 } else { 1 };
            let t = Instant::now();
            assert_eq!(init(2, id, rank), Err(SYSTEM_ERROR));
            let elapsed = t.elapsed();
            assert!(
                elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(10),
                "{elapsed:?}"
            );
            let msg = last_error(std::ptr::null_mut());
            assert!(msg.contains("timed out after 1 s"), "{msg}");
            if rank == 0 {
                assert!(msg.contains("rank 1"), "{msg}");
            } else {
                assert!(msg.contains("rank 0"), "{msg}");
            }
            println!("CHILD-OK {msg}");
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn a_peer_process_that_exits_mid_run_gives_a_remote_error_naming_it() {
    let id = new_id();
    let child = spawn("exit-after-two", &id, None);
    let pid = child.id();
    let comm = init(2, id, 0).unwrap();
    assert_eq!(
        all_reduce(comm, &[10.0f32, 20.0], FLOAT32, SUM).unwrap(),
        vec![11.0, 22.0]
    );
    let mut all = [0i32; 4];
    let mine = [5i32, 6];
    let rc = unsafe {
        ncclAllGather(
            mine.as_ptr().cast(),
            all.as_mut_ptr().cast(),
            2,
            INT32,
            comm,
            STREAM,
        )
    };
    assert_eq!(rc, SUCCESS);
    assert_eq!(all, [5, 6, 7, 8]);
    // The child exits now and is not reaped yet (a zombie): it must still count as gone.
    let t = Instant::now();
    let rc = all_reduce(comm, &[1.0f32], FLOAT32, SUM).unwrap_err();
    let elapsed = t.elapsed();
    assert_eq!(rc, REMOTE_ERROR);
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    let msg = last_error(comm);
    assert_eq!(
        msg,
        format!("rank 1 (pid {pid}) exited during ncclAllReduce")
    );
    let mut async_err = 0;
    assert_eq!(
        unsafe { ncclCommGetAsyncError(comm, &mut async_err) },
        SUCCESS
    );
    assert_eq!(async_err, REMOTE_ERROR);
    // The next collective fails at once with the same error.
    assert_eq!(all_reduce(comm, &[1.0f32], FLOAT32, SUM), Err(REMOTE_ERROR));
    // Abort returns promptly although the peer is gone.
    let t = Instant::now();
    assert_eq!(unsafe { ncclCommAbort(comm) }, SUCCESS);
    assert!(t.elapsed() < Duration::from_secs(1));
    finish(child);
}

#[test]
fn the_join_times_out_when_a_peer_is_missing() {
    for role in ["alone-rank-0", "alone-rank-1"] {
        let id = new_id();
        let text = finish(spawn(role, &id, Some("1")));
        assert!(text.contains("CHILD-OK"), "{text}");
        // No segment is left behind.
        let name = format!("/dev/shm/ingot-emu-nccl-{}", &id_to_hex(&id)[16..48]);
        assert!(!std::path::Path::new(&name).exists(), "{name} left behind");
    }
}

#[test]
fn the_segment_is_unlinked_once_all_ranks_joined() {
    let id = new_id();
    let name = format!("/dev/shm/ingot-emu-nccl-{}", &id_to_hex(&id)[16..48]);
    let comms = std::thread::scope(|s| {
        let a = s.spawn(move || init(2, id, 0).unwrap() as usize);
        let b = s.spawn(move || init(2, id, 1).unwrap() as usize);
        [a.join().unwrap(), b.join().unwrap()]
    });
    assert!(!std::path::Path::new(&name).exists(), "{name} left behind");
    for c in comms {
        assert_eq!(unsafe { ncclCommDestroy(c as NcclComm) }, SUCCESS);
    }
}
