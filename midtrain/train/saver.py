"""The run's checkpoint writer: what every save repeats, held once.

``Saver(fabric, out_dir, ...)`` knows where a run's checkpoints go, in which format (sharded step
checkpoints for a sharded model, a full ``lit_model.pth`` otherwise and always in ``final/``), what
they carry beside the weights (resolved config, model config, tokenizer and HF side files) and how
many to keep; ``save(state)`` writes the current step (``final/`` at the end) through
``checkpoint.save_checkpoint`` (atomic, never overwriting). The counters and the data position go
into ``training_state.json`` too, readable without torch: a sharded checkpoint is resumed from there.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from midtrain.train import checkpoint as ckpt

COUNTERS = ("iter_num", "step_count", "tokens", "source_tokens", "end_step", "decay_from", "segment_start")


class Saver:
    def __init__(self, fabric, out_dir: Path, hparams: dict, model_config, side_files: dict[str, bytes],
                 keep_last_n: Optional[int], sharded: bool) -> None:
        self.fabric, self.out_dir, self.hparams = fabric, Path(out_dir), hparams
        self.model_config, self.side_files, self.keep_last_n = model_config, side_files, keep_last_n
        self.sharded = sharded
        self.divergence = None  # set by the loop: a save first checks that no step was non-finite

    def exists(self, state: dict[str, Any]) -> bool:
        return (self.out_dir / ckpt.step_name(state["step_count"])).exists()

    def save(self, state: dict[str, Any], final: bool = False) -> Path:
        """Write the current step's checkpoint (or ``final/``: full, and no prune touches it). Never non-finite
        weights: a diverged run raises its line here instead (``divergence``)."""
        if self.divergence is not None:
            self.divergence.check(self.fabric, state["model"], state["step_count"])
        t0 = time.perf_counter()
        name = ckpt.FINAL if final else ckpt.step_name(state["step_count"])
        loader = state["train_dataloader"]
        data_state = loader.state_dict() if hasattr(loader, "state_dict") else {}
        training_state = {
            "step": state["step_count"], "iter_num": state["iter_num"], "tokens": state["tokens"],
            "end_step": state["end_step"], "segment_start": state["segment_start"],
            "source_tokens": state["source_tokens"], "decay_from": state["decay_from"], "data": data_state,
        }
        extra = {"train_dataloader": data_state, **{k: state[k] for k in COUNTERS}}
        path = ckpt.save_checkpoint(self.fabric, self.out_dir, name, unwrap(state["model"]),
                                    unwrap(state["optimizer"]), extra, training_state, self.hparams,
                                    self.model_config, self.side_files, None if final else self.keep_last_n,
                                    sharded=self.sharded and not final)
        seconds = time.perf_counter() - t0  # (logged as save_s: what a checkpoint costs the run, bench/gpu.sh reads it)
        self.fabric.print(f"saved {path} in {seconds:.1f} s")
        self.fabric.log_dict({"save_s": seconds}, step=state["step_count"])
        return path

    def save_missing(self, state: dict[str, Any]) -> None:
        """The current step, unless it is already on disk (a stop right after a periodic save)."""
        if not self.exists(state):
            self.save(state)


def unwrap(obj):
    """The torch module / optimizer inside Fabric's wrappers (the one whose state dict names the parameters)."""
    if hasattr(obj, "optimizer") and not hasattr(obj, "parameters"):
        return obj.optimizer
    return getattr(obj, "module", obj)
