//! The built shared object, opened as cudarc opens NCCL (libloading, one symbol at a time)
//! and called through C function pointers: the 128-byte ncclUniqueId by value, the enums as
//! ints, the handle as a pointer.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::PathBuf;

#[repr(C)]
#[derive(Clone, Copy)]
struct UniqueId {
    internal: [c_char; 128],
}

type Comm = *mut c_void;

fn library() -> PathBuf {
    // target/<profile>/deps/abi-<hash> -> target/<profile>/libingot_emu_nccl.so
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("libingot_emu_nccl.so")
}

#[test]
fn the_shared_object_works_through_the_c_abi() {
    let path = library();
    // `cargo test` builds the crate as an rlib only; the shared object exists once
    // `cargo build -p ingot-emu-nccl` has run, as scripts/emulated-gpu-check.sh does first
    // (with INGOT_REQUIRE_GPU=1, which makes a missing one a failure there).
    if !path.exists() {
        let why = format!(
            "{} was not built (cargo build -p ingot-emu-nccl)",
            path.display()
        );
        assert!(
            std::env::var("INGOT_REQUIRE_GPU").as_deref() != Ok("1"),
            "{why}"
        );
        eprintln!("SKIPPED the_shared_object_works_through_the_c_abi: {why}");
        return;
    }
    unsafe {
        let lib = libloading::Library::new(&path).unwrap();
        let version: libloading::Symbol<unsafe extern "C" fn(*mut c_int) -> u32> =
            lib.get(b"ncclGetVersion").unwrap();
        let get_id: libloading::Symbol<unsafe extern "C" fn(*mut UniqueId) -> u32> =
            lib.get(b"ncclGetUniqueId").unwrap();
        let init: libloading::Symbol<
            unsafe extern "C" fn(*mut Comm, c_int, UniqueId, c_int) -> u32,
        > = lib.get(b"ncclCommInitRank").unwrap();
        type AllReduce = unsafe extern "C" fn(
            *const c_void,
            *mut c_void,
            usize,
            u32,
            u32,
            Comm,
            *mut c_void,
        ) -> u32;
        let all_reduce: libloading::Symbol<AllReduce> = lib.get(b"ncclAllReduce").unwrap();
        let destroy: libloading::Symbol<unsafe extern "C" fn(Comm) -> u32> =
            lib.get(b"ncclCommDestroy").unwrap();
        let error_string: libloading::Symbol<unsafe extern "C" fn(u32) -> *const c_char> =
            lib.get(b"ncclGetErrorString").unwrap();
        let last_error: libloading::Symbol<unsafe extern "C" fn(Comm) -> *const c_char> =
            lib.get(b"ncclGetLastError").unwrap();

        let mut v = 0;
        assert_eq!(version(&mut v), 0);
        assert_eq!(v, 22805);
        let mut id = UniqueId { internal: [0; 128] };
        assert_eq!(get_id(&mut id), 0);
        let mut comm: Comm = std::ptr::null_mut();
        assert_eq!(init(&mut comm, 1, id, 0), 0);
        assert!(!comm.is_null());
        let x = [1.5f64, -2.0];
        let mut y = [0f64; 2];
        assert_eq!(
            all_reduce(
                x.as_ptr().cast(),
                y.as_mut_ptr().cast(),
                2,
                8,
                0,
                comm,
                std::ptr::null_mut()
            ),
            0
        );
        assert_eq!(y, x);
        // nranks 1 but rank 3: invalid argument, explained.
        let mut other: Comm = std::ptr::null_mut();
        assert_eq!(init(&mut other, 1, id, 3), 4);
        assert!(CStr::from_ptr(last_error(std::ptr::null_mut()))
            .to_str()
            .unwrap()
            .contains("rank = 3"));
        assert_eq!(
            CStr::from_ptr(error_string(6)).to_str().unwrap(),
            "remote process exited or there was a network error"
        );
        assert_eq!(destroy(comm), 0);
    }
}
