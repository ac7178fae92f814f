//! Token width on disk.

use serde::{Deserialize, Serialize};

/// The on-disk type of one token id, little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dtype {
    #[serde(rename = "uint16")]
    U16,
    #[serde(rename = "uint32")]
    U32,
}

impl Dtype {
    /// uint16 whenever every id fits (ids 0..=65535, so a vocabulary of up to 65536), else uint32.
    pub fn for_vocab(vocab_size: u64) -> Dtype {
        if vocab_size <= 1 << 16 {
            Dtype::U16
        } else {
            Dtype::U32
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            Dtype::U16 => 2,
            Dtype::U32 => 4,
        }
    }

    /// The code stored in shard headers: the width in bytes.
    pub fn code(self) -> u32 {
        self.bytes() as u32
    }

    pub fn from_code(code: u32) -> Option<Dtype> {
        match code {
            2 => Some(Dtype::U16),
            4 => Some(Dtype::U32),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::U16 => "uint16",
            Dtype::U32 => "uint32",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uint16_holds_every_id_of_a_65536_vocabulary() {
        assert_eq!(Dtype::for_vocab(259), Dtype::U16);
        assert_eq!(Dtype::for_vocab(50257), Dtype::U16);
        // Megatron switches at 65500; ids up to 65535 fit in uint16, so 65536 still does.
        assert_eq!(Dtype::for_vocab(65_500), Dtype::U16);
        assert_eq!(Dtype::for_vocab(65_536), Dtype::U16);
        assert_eq!(Dtype::for_vocab(65_537), Dtype::U32);
        assert_eq!(Dtype::for_vocab(128_256), Dtype::U32);
    }

    #[test]
    fn codes_round_trip() {
        for d in [Dtype::U16, Dtype::U32] {
            assert_eq!(Dtype::from_code(d.code()), Some(d));
        }
        assert_eq!(Dtype::from_code(3), None);
    }
}
