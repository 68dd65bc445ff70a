"""ShardedMixedDataset: the litgpt DataModule that mixes typed token shards.

The mixture *spec* (which shards, which weights) is worked out by the pure modules ``shards`` and
``mixture``; this file only realises it with litdata. The original's config name
``litgpt.data.ShardedMixedDataset`` resolves here when configs go through the ``midtrain`` CLI.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from litdata.streaming import CombinedStreamingDataset, StreamingDataLoader, StreamingDataset, TokensLoader
from torch.utils.data import DataLoader
from litgpt.data import DataModule
from litgpt.tokenizer import Tokenizer

from midtrain.data.blend import Blend, StageSpec, append_stage, describe_change, quantize_weights, same_mixture
from midtrain.data.exact import ExactMixDataset, ExactMixLoader, ShardReader, distributed_rank_world, out_of_vocab
from midtrain.data.mixture import Mixture, mix_spec, resolve_mixture
from midtrain.data.plan import MixPlan, mixture_plan
from midtrain.data.shards import Discovery, Shard, discover, discover_val_sets
from midtrain.errors import ConfigError
from midtrain.tokenizer import tokenizer_vocab_size


def read_mix_config(path: str | os.PathLike, field_name: str = "mix_config_path") -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConfigError(field_name, f"{path} does not exist") from None
    except (OSError, ValueError) as e:
        raise ConfigError(field_name, f"{path} is not valid JSON ({e})") from None


@dataclass
class ShardedMixedDataset(DataModule):
    """Mixes the shards under ``data_path`` by type weights, literal shard weights or token counts.

    Args:
        data_path: folder of shards (``1, 2, ...`` main; ``c1`` code, ``m1`` math, ...), or one litdata dataset.
        val_data_path: validation data: one litdata dataset, or a folder of several (typed shards are
            grouped per type, other folders are named sets); each set gets its own loader.
        mix_config_path: JSON file with ``weights`` or ``literal_weights`` (+ ``proportional_sampling``, ``within_type``).
        mix_weights_str: type weights, e.g. ``"main:0.8,code:0.2"``.
        literal_weights_str: shard weights, e.g. ``"main/1:0.8,q1:0.1,q2:0.1"``.
        proportional_sampling: weight shards by token count (type weights, if any, act as multipliers).
        within_type: how a type's weight is split over its shards: ``equal`` (original) or ``tokens``.
        shard_types: extra or overriding shard types, name -> folder prefix (e.g. ``{"flan": "f"}``).
        seed: shuffling / mixing seed.
        num_workers: data loader worker processes.
        mixer: ``exact`` (default) = deterministic blend: exact shares per global batch, each source
            cycles on its own, O(1) sample-exact resume at any world size / worker count, and a new
            mixture on resume appends a stage (midtraining). ``litdata`` = litdata's
            CombinedStreamingDataset, the original's behaviour (docs/data.md, *Mixers*, says its defects).
        mix_block: samples per schedule block for ``exact`` (default: the global batch size).
        allow_data_change: resume even if a shard used before has changed content (``exact``).
        vocab_size: token ids must be below this; defaults to the tokenizer's size (with added tokens).
    """

    data_path: Path = Path("data")
    val_data_path: Optional[Path] = None
    mix_config_path: Optional[Path] = None
    mix_weights_str: Optional[str] = None
    literal_weights_str: Optional[str] = None
    proportional_sampling: bool = False
    within_type: Literal["equal", "tokens"] = "equal"
    shard_types: Optional[dict[str, str]] = None
    seed: int = 42
    num_workers: int = 8
    mixer: Literal["exact", "litdata"] = "exact"
    mix_block: Optional[int] = None
    allow_data_change: bool = False
    vocab_size: Optional[int] = None

    batch_size: int = field(init=False, repr=False, default=1)
    global_batch_size: Optional[int] = field(init=False, repr=False, default=None)
    seq_length: int = field(init=False, repr=False, default=2049)

    def __post_init__(self) -> None:
        super().__init__()
        self._discovery: Discovery | None = None
        self._mixture: Mixture | None = None
        self._val_sets: dict[str, list[Shard]] | None = None
        self._told_block = False
        self._verified = False

    def check(self) -> None:
        """Field checks (here, not in __post_init__: jsonargparse would bury the message in union noise)."""
        if str(self.data_path).strip() in ("", "."):
            raise ConfigError("data.data_path", f"{str(self.data_path)!r}: give the shard folder's path (empty would "
                              "mean the current directory)")
        if self.num_workers < 0:
            raise ConfigError("data.num_workers", f"must be >= 0, got {self.num_workers}")
        if self.mix_block is not None and self.mix_block < 1:
            raise ConfigError("data.mix_block", f"must be >= 1, got {self.mix_block}")

    def connect(self, tokenizer: Tokenizer | None = None, batch_size: int = 1, max_seq_length: int | None = None,
                **kwargs: Any) -> None:
        self.check()
        if max_seq_length is None or max_seq_length < 1:
            raise ConfigError("train.max_seq_length", f"must be a positive integer, got {max_seq_length!r}")
        self.batch_size = batch_size
        self.global_batch_size = kwargs.get("global_batch_size") or self.global_batch_size
        self.seq_length = max_seq_length + 1  # the next token of the last position is the last target
        if self.vocab_size is None and tokenizer is not None:
            self.vocab_size = tokenizer_vocab_size(tokenizer)

    # ---- the spec: discovery + weights (no torch) ----
    def discovery(self) -> Discovery:
        if self._discovery is None:
            self._discovery = discover(self.data_path, self.shard_types)
        return self._discovery

    def val_sets(self) -> dict[str, list[Shard]]:
        if self._val_sets is None:
            self._val_sets = discover_val_sets(self.val_data_path, self.shard_types)
        return self._val_sets

    def check_val_sets(self, field_name: str = "val_data_path") -> dict[str, int]:
        """Samples of ``max_seq_length + 1`` tokens in each validation set (name -> count), after
        ``connect``. A set that holds not one sample would validate over zero tokens: refused (one line)."""
        counts = {}
        for name, shards in self.val_sets().items():
            counts[name] = sum(s.samples(self.seq_length) for s in shards)
            if counts[name] == 0:
                tokens = sum(s.tokens for s in shards)
                raise ConfigError(field_name, f"validation set {name!r} ({shards[0].path}) has {tokens} tokens, not one "
                                  f"sample of {self.seq_length} (max_seq_length + 1; a sample never spans chunks): "
                                  "a loss over it would cover zero tokens")
        return counts

    def mixture(self) -> Mixture:
        if self._mixture is None:
            mix_config = read_mix_config(self.mix_config_path) if self.mix_config_path is not None else None
            spec = mix_spec(self.mix_weights_str, self.literal_weights_str, mix_config, "mix_config_path",
                            self.proportional_sampling, self.within_type)
            self._mixture = resolve_mixture(spec, self.discovery())
        return self._mixture

    def block(self) -> int:
        """Samples per schedule block of the exact mixer: one global batch, so every step is exact."""
        block = self.mix_block or self.global_batch_size or 1024
        if block < 1:
            raise ConfigError("mix_block", f"must be >= 1, got {block}")
        return block

    def stage(self, start: int = 0) -> StageSpec:
        """This config's mixture as an exact-mixer stage beginning at global sample ``start``."""
        sources = self.mixture().sources
        return StageSpec(start, tuple(s.shard.id for s in sources),
                         tuple(quantize_weights([s.weight for s in sources], self.block())), self.block(), self.seed,
                         tuple(s.shard.fingerprint() for s in sources), self.seq_length)

    def plan(self, total_samples: int | None) -> MixPlan:
        draws, quantized = None, None
        if self.mixer == "exact":
            stage = self.stage()
            quantized = list(stage.units)
            if total_samples is not None:
                draws = Blend([stage]).consumed(total_samples)
        return mixture_plan(self.mixture(), self.discovery(), self.seq_length, total_samples, self.mixer, draws,
                            quantized)

    def check_tokenizer(self, tokenizer_dir=None) -> list[str]:
        """The mixture's shards and the validation sets were made with one tokenizer, ``tokenizer_dir``'s when
        given (``data.identity``): one line if not; notes for shards that record none."""
        from midtrain.data.identity import check_same_tokenizer

        shards = {src.shard.id: src.shard.path for src in self.mixture().sources}
        if self.val_data_path is not None:
            shards.update({f"val {name}/{s.id}": s.path for name, group in self.val_sets().items() for s in group})
        return check_same_tokenizer(shards, "data.data_path", tokenizer_dir)

    def verify_files(self) -> None:
        """Every chunk file of every shard the mixture reads exists and is complete (stat only)."""
        for src in self.mixture().sources:
            ShardReader(src.shard.path, self.seq_length).verify()

    def setup(self, stage: str = "") -> None:
        for src in self.mixture().sources:
            if src.shard.samples(self.seq_length) == 0:
                raise ConfigError(src.shard.path, f"has {src.shard.tokens} tokens per chunk at most "
                                  f"{max(src.shard.chunk_tokens, default=0)}: not one sample of {self.seq_length} tokens")
        if self.mixer == "exact" and not self._verified:
            self.verify_files()
            self._verified = True
        if self.val_data_path is not None:
            self.check_val_sets()  # fail early on a bad path or a set shorter than one sample
        if self.mixer == "exact" and self.mix_block is None and self.global_batch_size is None and not self._told_block:
            self._told_block = True
            if _is_rank_zero():  # e.g. under upstream `litgpt pretrain`, whose connect() has no global batch
                print(f"data: the exact mixer's shares are exact per block of {self.block()} samples; the global batch "
                      "was not passed to connect(), so set data.init_args.mix_block to train.global_batch_size "
                      "for exact shares in every optimizer step", flush=True)

    # ---- the realisation: litdata ----
    def _train_dataset(self):
        sources = self.mixture().sources
        datasets = [
            StreamingDataset(input_dir=s.shard.path, item_loader=TokensLoader(block_size=self.seq_length),
                             shuffle=True, drop_last=True, seed=self.seed)
            for s in sources
        ]
        if len(datasets) == 1:
            return datasets[0]
        return CombinedStreamingDataset(datasets=datasets, seed=self.seed, weights=[s.weight for s in sources],
                                        iterate_over_all=False)

    def train_dataloader(self, with_source_ids: bool = False) -> DataLoader:
        """Micro-batches of ``max_seq_length + 1`` tokens; with ``with_source_ids`` (exact mixer only),
        ``(tokens, source index)`` pairs, the index into ``loader.source_ids``."""
        self.setup()
        if self.mixer == "exact":
            shards = self.discovery().by_id()
            dataset = ExactMixDataset([self.stage()], shards, self.seq_length, self.batch_size, self.seed)
            return ExactMixLoader(dataset, self.num_workers, with_source_ids, self.vocab_size, self._resume_stages)
        if with_source_ids:
            raise ConfigError("data.mixer", "per-source ids need mixer: exact (litdata's mixer does not report sources)")
        return VocabCheckedLoader(self._train_dataset(), vocab_size=self.vocab_size, where="data_path",
                                  batch_size=self.batch_size, pin_memory=torch.cuda.is_available(),
                                  num_workers=self.num_workers, drop_last=True)

    def _resume_stages(self, saved: list[StageSpec], samples: int) -> list[StageSpec]:
        """Called when a checkpoint's data state is loaded: continue, or append a new mixture stage."""
        new = self.stage(start=samples)
        if not saved:
            raise ConfigError("data", "the checkpoint's data state has no mixture stages")
        history = append_stage(saved, new, self.allow_data_change)
        if not same_mixture(saved[-1], new) and _is_rank_zero():
            print(describe_change(saved[-1], new), flush=True)
        return history

    def _val_loader(self, shards: list[Shard], name: str = "val", whole: bool = False) -> StreamingDataLoader:
        datasets = [StreamingDataset(input_dir=s.path, item_loader=TokensLoader(block_size=self.seq_length),
                                     shuffle=False, drop_last=False) for s in shards]
        if whole:  # litdata gives each rank its part of the set (the rank read at construction): here, the whole
            from litdata.utilities.env import _DistributedEnv

            for d in datasets:
                d.distributed_env = _DistributedEnv(1, 0, 1)
        dataset = datasets[0] if len(datasets) == 1 else CombinedStreamingDataset(datasets, iterate_over_all=True)
        return VocabCheckedLoader(dataset, vocab_size=self.vocab_size,
                                  where=f"val_data_path: validation set {name!r} ({shards[0].path})",
                                  batch_size=self.batch_size, pin_memory=torch.cuda.is_available(),
                                  num_workers=self.num_workers)

    def val_dataloaders(self, whole: bool = False) -> dict[str, StreamingDataLoader]:
        """One loader per validation set, so loss can be reported per source. ``whole``: every rank reads the whole
        set in order (for a caller that spreads the batches over the ranks itself); otherwise each rank its part."""
        if self.val_data_path is None:
            return {}
        return {name: self._val_loader(shards, name, whole)
                for name, shards in self.val_sets().items()}

    def val_dataloader(self) -> StreamingDataLoader | None:
        """litgpt compatibility: the single loader litgpt validates on (``main``/``val`` set if present)."""
        if self.val_data_path is None:
            return None
        sets = self.val_sets()
        name = next((n for n in ("main", "val") if n in sets), next(iter(sets)))
        return self._val_loader(sets[name], name)


def _is_rank_zero() -> bool:
    return distributed_rank_world()[0] == 0


class VocabCheckedLoader(StreamingDataLoader):
    """A StreamingDataLoader (mixer: litdata) that fails with a clear message on out-of-vocabulary ids."""

    def __init__(self, *args: Any, vocab_size: int | None = None, where: str = "data_path", **kwargs: Any) -> None:
        from midtrain.signals import worker_init

        if kwargs.get("num_workers"):
            kwargs.setdefault("worker_init_fn", worker_init)
        super().__init__(*args, **kwargs)
        self.vocab_size = vocab_size
        self.where = where

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """litdata's own resume; what it cannot fit (another mixture, a state of another kind) is one line."""
        if not isinstance(state, dict) or state.get("mixer") == "exact":
            raise ConfigError("data.mixer", "the checkpoint's data state is from mixer 'exact'; resume it with "
                              "mixer: exact")
        try:
            super().load_state_dict(state)
        except Exception as e:  # litdata raises with object reprs; say what it means instead
            raise ConfigError("data.mixer", "litdata cannot resume this checkpoint's data state with this mixture "
                              f"({type(e).__name__}); mixer: exact can (a changed mixture becomes a new stage)") from None

    def __iter__(self):
        for batch in super().__iter__():
            bad = out_of_vocab(batch, self.vocab_size) if isinstance(batch, torch.Tensor) else None
            if bad is not None:
                raise ConfigError(self.where, f"token id {bad[1]} is outside the vocabulary [0, {self.vocab_size}): "
                                  "the shards were tokenized with another tokenizer than tokenizer_dir / the model's vocab")
            yield batch
