"""Reference side of tests/tokenizer_reference.rs, run with Hugging Face's Python `tokenizers`.

make OUT_DIR DOCS_JSONL   train three tokenizers of different families on the documents and
                          save them as OUT_DIR/{wordpiece,unigram,llama3}.json
encode TOKENIZER DOCS_JSONL
                          print {"ids": [[...], ...]}: each document encoded the way a user
                          of `tokenizers` would for pretraining (no special tokens, no truncation)
"""
import json
import sys

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

# Llama 3's pre-tokenization pattern.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def read_docs(path):
    if path.endswith(".txt"):
        # A whole text file is one document, as prep's --txt-unit file reads it.
        with open(path, encoding="utf-8", newline="") as f:
            return [f.read()]
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def make(out_dir, docs_path):
    docs = read_docs(docs_path)

    # BERT-style WordPiece, shipped with the truncation a sentence-embedding model carries:
    # prep must ignore it.
    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.decoder = decoders.WordPiece()
    wp.train_from_iterator(docs, trainers.WordPieceTrainer(
        vocab_size=600, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    wp.enable_truncation(max_length=128)
    wp.save(f"{out_dir}/wordpiece.json")

    # SentencePiece-style Unigram with a metaspace, as Llama 2 / T5 tokenizers are.
    ug = Tokenizer(models.Unigram())
    ug.normalizer = normalizers.NFKC()
    ug.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    ug.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    ug.train_from_iterator(docs, trainers.UnigramTrainer(
        vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"], unk_token="<unk>"))
    ug.save(f"{out_dir}/unigram.json")

    # Byte-level BPE with Llama 3's split and special tokens.
    bl = Tokenizer(models.BPE())
    bl.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bl.decoder = decoders.ByteLevel()
    bl.train_from_iterator(docs, trainers.BpeTrainer(
        vocab_size=700, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bl.save(f"{out_dir}/llama3.json")


def encode(tokenizer_path, docs_path):
    tok = Tokenizer.from_file(tokenizer_path)
    tok.no_truncation()
    tok.no_padding()
    ids = [e.ids for e in tok.encode_batch(read_docs(docs_path), add_special_tokens=False)]
    json.dump({"ids": ids}, sys.stdout)


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "encode":
        encode(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown mode {sys.argv[1]}")
