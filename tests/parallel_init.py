"""Step-0 weights as the trainer sets a model up (``pretrain.setup_model``) under a strategy, gathered to rank 0.

    python tests/parallel_init.py KIND PRECISION OUT.pt     (KIND: single, ddp, fsdp; 2 CPU processes unless single)
    step0("single", "32-true", out)                          (in-process: one process needs no launcher)
"""

import sys
from pathlib import Path

import lightning as L
import torch
from litgpt import Config
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from midtrain.train import parallel
from midtrain.train.args import EvalArgs, TrainArgs
from midtrain.train.pretrain import Run, setup_model
from midtrain.train.saver import unwrap

TINY = {"name": "tiny", "block_size": 32, "vocab_size": 512, "padded_vocab_size": 512, "n_layer": 2, "n_head": 2,
        "n_embd": 32, "rotary_percentage": 0.25, "parallel_residual": True, "bias": True, "norm_class_name": "LayerNorm",
        "mlp_class_name": "GptNeoxMLP", "intermediate_size": 128}

def step0(kind: str, precision: str, out: Path) -> None:
    world = 1 if kind == "single" else 2
    run = Run(Config(**TINY), out.parent, precision, None, False, None, TrainArgs(), EvalArgs(), "AdamW", None, 42,
              False, None, {}, kind, False, 1)
    fabric = L.Fabric(accelerator="cpu", devices=world, precision=precision,
                      strategy=parallel.fabric_strategy(kind, 60, "cpu", world, 1, precision))
    fabric.launch()
    fabric.seed_everything(7)  # the trainer seeds here too; the init must not depend on what ran before it
    model, _ = setup_model(fabric, run, 16, will_load=False)
    weights = get_model_state_dict(unwrap(model), options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # the path of a sharded model that a checkpoint fills (built on meta): its buffers must be the fresh path's
    meta, _ = setup_model(fabric, run, 16, will_load=True)
    buffers = {name: (unwrap(m).cos.clone(), unwrap(m).sin.clone()) for name, m in (("fresh", model), ("meta", meta))}
    if fabric.global_rank == 0:
        torch.save({"weights": weights, "sharded": parallel.is_sharded(unwrap(model)), "rope": buffers}, out)


if __name__ == "__main__":
    step0(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
