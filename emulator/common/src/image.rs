//! The stand-in "CUBIN": what the NVRTC stand-in returns from `nvrtcGetCUBIN` and the driver
//! stand-in accepts in `cuModuleLoadData`.
//!
//! `cuModuleLoadData` gets a bare pointer, so the image says its own length:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 8 | magic `INGOTEMU` (a real CUBIN starts with `\x7fELF`, PTX with text) |
//! | 8 | 4 | format version, little-endian ([`FORMAT_VERSION`]) |
//! | 12 | 4 | metadata length `m` |
//! | 16 | 8 | shared-object length `s` |
//! | 24 | `m` | metadata, JSON ([`Metadata`]) |
//! | 24 + `m` | `s` | the module: an x86-64 ELF shared object with the SIMT runtime |

use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 8] = b"INGOTEMU";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 24;

/// What the driver stand-in needs to know of a module that the shared object cannot say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The architecture it was compiled for, e.g. `sm_90`.
    pub arch: String,
    /// The program name given to `nvrtcCreateProgram`.
    pub program: String,
    pub kernels: Vec<KernelMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelMeta {
    pub name: String,
    /// Bytes of `__shared__` storage the kernel can reach (the variables its code refers to).
    pub static_shared_bytes: u32,
    /// From `__launch_bounds__`, 0 when none was given.
    pub max_threads: u32,
}

/// Serialises an image.
pub fn encode(meta: &Metadata, object: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(meta).expect("metadata is plain data");
    let mut out = Vec::with_capacity(HEADER_BYTES + json.len() + object.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&(object.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(object);
    out
}

/// Why an image was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Not an image of ours (a real CUBIN, PTX, or garbage).
    NotAnImage,
    /// Ours, but of another format version or malformed.
    Malformed(String),
}

/// The total length of the image at `header` (its first [`HEADER_BYTES`] bytes).
pub fn total_len(header: &[u8]) -> Result<usize, DecodeError> {
    if header.len() < HEADER_BYTES || &header[..8] != MAGIC {
        return Err(DecodeError::NotAnImage);
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(DecodeError::Malformed(format!(
            "image format {version}, this stand-in reads {FORMAT_VERSION}"
        )));
    }
    let meta = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes")) as usize;
    let object = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
    usize::try_from(object)
        .ok()
        .and_then(|o| o.checked_add(meta)?.checked_add(HEADER_BYTES))
        .ok_or_else(|| DecodeError::Malformed("length overflows".into()))
}

/// Splits a whole image into its metadata and shared object.
pub fn decode(image: &[u8]) -> Result<(Metadata, &[u8]), DecodeError> {
    let total = total_len(image)?;
    if image.len() != total {
        return Err(DecodeError::Malformed(format!(
            "{} bytes, the header says {total}",
            image.len()
        )));
    }
    let meta_len = u32::from_le_bytes(image[12..16].try_into().expect("4 bytes")) as usize;
    let json = &image[HEADER_BYTES..HEADER_BYTES + meta_len];
    let meta: Metadata = serde_json::from_slice(json)
        .map_err(|e| DecodeError::Malformed(format!("metadata: {e}")))?;
    Ok((meta, &image[HEADER_BYTES + meta_len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Metadata {
        Metadata {
            arch: "sm_90".into(),
            program: "x.cu".into(),
            kernels: vec![KernelMeta {
                name: "k".into(),
                static_shared_bytes: 128,
                max_threads: 0,
            }],
        }
    }

    #[test]
    fn round_trips_and_says_its_length() {
        let img = encode(&meta(), b"\x7fELF...");
        assert_eq!(total_len(&img[..HEADER_BYTES]), Ok(img.len()));
        let (m, obj) = decode(&img).unwrap();
        assert_eq!(m, meta());
        assert_eq!(obj, b"\x7fELF...");
    }

    #[test]
    fn refuses_real_cubin_other_versions_and_truncation() {
        assert_eq!(
            total_len(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"),
            Err(DecodeError::NotAnImage)
        );
        let mut img = encode(&meta(), b"so");
        assert!(matches!(
            decode(&img[..img.len() - 1]),
            Err(DecodeError::Malformed(_))
        ));
        img[8] = 9;
        assert!(matches!(total_len(&img), Err(DecodeError::Malformed(_))));
    }
}
