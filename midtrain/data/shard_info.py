"""``midtrain shard PATH``: what a shard holds, for a user who suspects it (issue 27, class 10).

Its tokenizer identity (``midtrain_shard.json``, or "not recorded"), tokens, chunks, documents (EOS
tokens, when the record names the EOS id) and the first few documents decoded with the recorded
tokenizer (or ``--tokenizer_dir``): text that reads as nonsense was made with another tokenizer.
"""

from __future__ import annotations

import os

import numpy as np

from midtrain.errors import ConfigError


def _chunk_tokens(path: str, meta: dict, dtype) -> np.ndarray:
    header = (2 + int(meta["chunk_size"])) * 4  # [n u32][n + 1 offsets u32], then the tokens
    return np.memmap(os.path.join(path, meta["filename"]), dtype=dtype, mode="r", offset=header,
                     shape=(int(meta["dim"]),))


def describe(path: str, samples: int = 3, tokenizer_dir: str | None = None, chars: int = 300) -> str:
    from midtrain.data.exact import ShardReader
    from midtrain.data.identity import RECORD, read_record, tokenizer_identity

    if not os.path.isfile(os.path.join(path, "index.json")):
        raise ConfigError("PATH", f"{path} is not a shard (no index.json)")
    reader = ShardReader(path, 1)
    record = read_record(path)
    tokens = sum(int(c["dim"]) for c in reader.chunks)
    lines = [f"shard: {path}", f"tokens: {tokens:,} in {len(reader.chunks)} chunk(s)"]
    if record is None:
        lines.append(f"tokenizer: not recorded (no {RECORD}: prepared before midtrain recorded it)")
    else:
        lines.append(f"tokenizer: {record['tokenizer']} (prepared with {record.get('tokenizer_dir')}, "
                     f"{record.get('vocab_size')} tokens, EOS id {record.get('eos_id')})")
    eos = record.get("eos_id") if record else None
    tok_dir = tokenizer_dir or (record or {}).get("tokenizer_dir")
    tok = None
    if tok_dir is not None and os.path.isdir(tok_dir):
        from midtrain.tokenizer import load_tokenizer

        tok = load_tokenizer(tok_dir, "--tokenizer_dir")
        eos = tok.eos_id if eos is None else eos
        if record is not None and tokenizer_dir is not None and tokenizer_identity(tokenizer_dir) != record["tokenizer"]:
            lines.append(f"warning: --tokenizer_dir is tokenizer {tokenizer_identity(tokenizer_dir)}, not the shard's")
    if eos is not None:
        docs = sum(int(np.count_nonzero(_chunk_tokens(path, c, reader.dtype) == eos)) for c in reader.chunks)
        lines.append(f"documents: {docs:,} (EOS id {eos})")
    if samples and tok is not None:
        import torch

        first = _chunk_tokens(path, reader.chunks[0], reader.dtype) if reader.chunks else np.zeros(0, np.int64)
        ends = np.flatnonzero(first == eos) if eos is not None else np.array([len(first)])
        start = 0
        lines.append(f"first {min(samples, len(ends))} document(s), decoded with {tok_dir}:")
        for end in ends[:samples]:
            text = tok.decode(torch.tensor(np.asarray(first[start:end], dtype=np.int64)))
            lines.append(f"  {text[:chars]!r}" + (" ..." if len(text) > chars else ""))
            start = end + 1
    elif samples:
        lines.append("samples: no tokenizer to decode with (give --tokenizer_dir)")
    return "\n".join(lines)
