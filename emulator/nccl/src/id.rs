//! `ncclUniqueId`: 128 bytes that every rank passes to `ncclCommInitRank`. The stand-in's
//! holds a tag (so that an id not made by `ncclGetUniqueId`, e.g. all zeros, is refused) and
//! a random token that names the shared-memory segment of the communicator.

use std::ffi::{c_char, CString};
use std::hash::{BuildHasher, Hasher};
use std::io::Read;

/// The C layout of `ncclUniqueId` (`char internal[128]`), passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UniqueId {
    pub internal: [c_char; 128],
}

const TAG: &[u8; 8] = b"ingotNCL";
pub const TOKEN_BYTES: usize = 16;

impl UniqueId {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 128];
        bytes[..8].copy_from_slice(TAG);
        bytes[8..8 + TOKEN_BYTES].copy_from_slice(&random_token());
        UniqueId {
            internal: bytes.map(|b| b as c_char),
        }
    }

    pub fn bytes(&self) -> [u8; 128] {
        self.internal.map(|c| c as u8)
    }

    /// The token, if this id came from the stand-in's `ncclGetUniqueId`.
    pub fn token(&self) -> Option<[u8; TOKEN_BYTES]> {
        let bytes = self.bytes();
        if &bytes[..8] != TAG || bytes[8 + TOKEN_BYTES..].iter().any(|&b| b != 0) {
            return None;
        }
        let mut token = [0u8; TOKEN_BYTES];
        token.copy_from_slice(&bytes[8..8 + TOKEN_BYTES]);
        Some(token)
    }
}

/// The POSIX shared-memory name of the communicator with this token
/// (`/dev/shm/ingot-emu-nccl-<hex>` on Linux).
pub fn segment_name(token: &[u8; TOKEN_BYTES]) -> CString {
    let hex: String = token.iter().map(|b| format!("{b:02x}")).collect();
    // The name has no NUL byte by construction.
    CString::new(format!("/ingot-emu-nccl-{hex}")).unwrap_or_default()
}

/// 16 bytes from /dev/urandom; where that fails, from std's randomly seeded hasher mixed
/// with the clock and the pid, which is still unique enough for ids made on one host.
fn random_token() -> [u8; TOKEN_BYTES] {
    let mut token = [0u8; TOKEN_BYTES];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut token))
        .is_ok();
    if !ok {
        for half in token.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            h.write_u32(std::process::id());
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    token
}
