//! The built-in `byte` tokenizer: ids 0–255 are the UTF-8 bytes of the text, then `<s>` (256,
//! BOS), `</s>` (257, EOS) and `<pad>` (258). It needs no file; the dataset still gets a real
//! `tokenizer.json` (a byte-level BPE without merges) that Hugging Face `tokenizers` loads and
//! that maps text to the same ids.

use serde_json::json;

use crate::{Engine, Tokenizer};

pub const BOS: u32 = 256;
pub const EOS: u32 = 257;
pub const PAD: u32 = 258;
pub const VOCAB_SIZE: u64 = 259;
pub const SPECIAL_TOKENS: [(&str, u32); 3] = [("<s>", BOS), ("</s>", EOS), ("<pad>", PAD)];

pub fn tokenizer() -> Tokenizer {
    let mut ids = std::collections::HashMap::new();
    let alphabet = byte_alphabet();
    for (b, c) in alphabet.iter().enumerate() {
        ids.insert(c.to_string(), b as u32);
    }
    for (t, id) in SPECIAL_TOKENS {
        ids.insert(t.to_string(), id);
    }
    Tokenizer {
        engine: Engine::Byte,
        json: tokenizer_json().into_bytes(),
        vocab_size: VOCAB_SIZE,
        ids,
        specials: SPECIAL_TOKENS
            .iter()
            .map(|(t, id)| (t.to_string(), *id))
            .collect(),
        source: "byte".into(),
    }
}

/// Bytes back to text; special ids are written as their token strings.
pub fn decode(ids: &[u32]) -> String {
    let mut bytes = Vec::with_capacity(ids.len());
    for &id in ids {
        match id {
            0..=255 => bytes.push(id as u8),
            _ => {
                let name = SPECIAL_TOKENS
                    .iter()
                    .find(|(_, i)| *i == id)
                    .map_or("<unk>", |(t, _)| t);
                bytes.extend_from_slice(name.as_bytes());
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// GPT-2's reversible byte → printable character map: printable Latin-1 bytes map to
/// themselves, the rest to code points from 256 upwards, in byte order.
pub fn byte_alphabet() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            b
        } else {
            next += 1;
            next - 1
        };
        out[b as usize] = char::from_u32(c).expect("code points below 512 are valid");
    }
    out
}

/// A byte-level BPE `tokenizer.json` (format 1.0, which every `tokenizers` release reads):
/// `vocab` maps byte-level symbols and merged tokens to ids, `merges` in rank order, `specials`
/// become special added tokens. With `split_words` the text is first cut into GPT-2
/// pre-tokens; without it the whole text is one pre-token.
pub fn byte_level_bpe_json(
    vocab: &[(String, u32)],
    merges: &[(String, String)],
    specials: &[(&str, u32)],
    split_words: bool,
) -> String {
    let vocab: serde_json::Map<String, serde_json::Value> =
        vocab.iter().map(|(t, id)| (t.clone(), json!(id))).collect();
    let added: Vec<_> = specials
        .iter()
        .map(|(t, id)| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let merges: Vec<_> = merges.iter().map(|(a, b)| json!([a, b])).collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": split_words});
    let value = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges
        }
    });
    let mut text = serde_json::to_string_pretty(&value).expect("a json! value serialises");
    text.push('\n');
    text
}

/// The dataset's `tokenizer.json` for the byte tokenizer: a byte-level BPE with no merges and
/// no word split, so each byte is one token whose id is the byte value.
pub fn tokenizer_json() -> String {
    let vocab: Vec<(String, u32)> = byte_alphabet()
        .iter()
        .enumerate()
        .map(|(b, c)| (c.to_string(), b as u32))
        .chain(SPECIAL_TOKENS.iter().map(|(t, id)| (t.to_string(), *id)))
        .collect();
    byte_level_bpe_json(&vocab, &[], &SPECIAL_TOKENS, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ids_are_utf8_bytes() {
        let t = tokenizer();
        assert_eq!(t.encode("hé").unwrap(), vec![104, 195, 169]);
        assert_eq!(t.decode(&[BOS, 104, 105, EOS]).unwrap(), "<s>hi</s>");
        assert_eq!(t.vocab_size(), 259);
    }

    #[test]
    fn the_generated_tokenizer_json_encodes_like_the_builtin() {
        let builtin = tokenizer();
        let hf = Tokenizer::from_json_bytes(builtin.json()).unwrap();
        assert_eq!(hf.vocab_size(), VOCAB_SIZE);
        for text in [
            "plain ascii",
            "émoji 🦀 and tabs\t\n",
            "  leading spaces",
            "\u{0}\u{7f}",
        ] {
            assert_eq!(
                hf.encode(text).unwrap(),
                builtin.encode(text).unwrap(),
                "{text:?}"
            );
        }
        assert_eq!(hf.token_to_id("</s>"), Some(EOS));
    }

    #[test]
    fn alphabet_is_a_permutation_of_distinct_chars() {
        let a = byte_alphabet();
        let set: std::collections::HashSet<char> = a.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(a[b'A' as usize], 'A');
        assert_eq!(a[b' ' as usize], 'Ġ');
    }
}
