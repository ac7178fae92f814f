//! `prep tokenizer ...`: training a byte-level BPE on the corpus readers, and measuring a
//! tokenizer's encode throughput. The tokenizer itself is [`ingot_tokenizer::Tokenizer`].

pub mod bench;
pub mod train;
