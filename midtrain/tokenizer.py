"""Tokenizers: loading litgpt's ``Tokenizer`` with a clear error, its true vocabulary size, and
``midtrain tokenizer train`` (a byte-level BPE, GPT-NeoX style, trained offline with ``tokenizers``
into a folder litgpt's ``Tokenizer`` loads: tokenizer.json + tokenizer_config.json)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Optional

from midtrain.errors import ConfigError

EOS = "<|endoftext|>"
PAD = "<|padding|>"


def load_tokenizer(tokenizer_dir, field: str = "tokenizer_dir"):
    """litgpt's Tokenizer, with a one-line error naming the folder when it cannot be loaded.

    Raw text is tokenised as text: the literal text of a special token inside a document
    (``<|endoftext|>`` in a web page or a code file) becomes ordinary tokens, never the special id.
    Special tokens come only from the code: the EOS appended after each document (``prepare``) and
    after each SFT response. Hugging Face tokenizers parse added special tokens out of raw text by
    default, which would turn each literal into a document boundary; this sets their
    ``encode_special_tokens`` (tokenizers >= 0.19). SentencePiece never parses its control symbols.
    Every command (prepare, pretrain, sft, proximity, lm-eval) loads tokenizers here, so all agree."""
    from litgpt import Tokenizer

    try:
        tok = Tokenizer(tokenizer_dir)
    except (OSError, ValueError, KeyError, NotImplementedError) as e:
        raise ConfigError(field, f"{tokenizer_dir} is not a litgpt tokenizer folder "
                          f"(tokenizer.json + tokenizer_config.json): {type(e).__name__}: {e}") from None
    if tok.backend == "huggingface":
        if not hasattr(tok.processor, "encode_special_tokens"):
            raise ConfigError(field, "this `tokenizers` version cannot tokenise special-token text as text "
                              "(encode_special_tokens needs tokenizers >= 0.19)")
        tok.processor.encode_special_tokens = True
    return tok


def special_token_texts(tok) -> list[str]:
    """The literal texts of a tokenizer's special tokens (``<|endoftext|>``, ``<s>``, ...), longest first."""
    texts: set[str] = set()
    if tok.backend == "huggingface":
        texts = {t.content for t in tok.processor.get_added_tokens_decoder().values() if t.special and t.content}
    else:
        sp = tok.processor
        texts = {sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)}
    return sorted((t for t in texts if t), key=lambda t: (-len(t), t))


def check_tokenizer_fits(tokenizer, padded_vocab_size: int, field: str) -> None:
    """A tokenizer that can produce ids the model has no embedding row for is another model's tokenizer:
    one line, not an IndexError deep in the embedding."""
    from midtrain.errors import ConfigError

    size = tokenizer_vocab_size(tokenizer)
    if size is not None and size > padded_vocab_size:
        raise ConfigError(field, f"the tokenizer has {size:,} tokens and the model {padded_vocab_size:,} embedding "
                          "rows: it is not this model's tokenizer")


def tokenizer_vocab_size(tokenizer) -> int | None:
    """Token ids a tokenizer can produce, added special tokens included."""
    size = getattr(tokenizer, "vocab_size", None)
    processor = getattr(tokenizer, "processor", None)
    if processor is not None and hasattr(processor, "get_vocab_size"):
        size = max(size or 0, processor.get_vocab_size(with_added_tokens=True))
    return size


def train_bpe(texts: Iterable[str], out_dir: Path, vocab_size: int = 4096, min_frequency: int = 2) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out_dir = Path(out_dir)
    if vocab_size < 300:
        raise ConfigError("--vocab_size", f"must be >= 300 (256 bytes + specials + merges), got {vocab_size}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError("--out", f"{out_dir} exists and is not empty")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        tok.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOS, "eos_token": EOS, "pad_token": PAD,
            "add_bos_token": False, "model_max_length": 1 << 20}, indent=2))
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def train(input: list[str], out: str, vocab_size: int = 4096, field: str = "text",
          max_documents: Optional[int] = None) -> int:
    """Train a byte-level BPE tokenizer into a folder litgpt's Tokenizer loads (`midtrain tokenizer train`).

    Args:
        input: files or folders of text, read as `midtrain prepare --input` reads them
        out: the tokenizer folder to write
        vocab_size: tokens in the vocabulary
        field: JSONL/parquet field with the text
        max_documents: train on at most this many documents (null: all)
    """
    from itertools import islice

    from midtrain.data.readers import input_units, read_documents

    docs = (d for u in input_units(input) for d in read_documents(u, field))
    print(f"tokenizer: {train_bpe(islice(docs, max_documents), out, vocab_size)}")
    return 0
