"""The evaluation commands as library functions: ``midtrain evaluate loss|lm-eval|export-hf`` are these functions,
with their parsers built from the signatures and the ``Args:`` below (``midtrain.cli``), so each option's name,
default and help live here only. A study's eval and lm-eval steps build their command lines from the same
signatures (``midtrain.study.kinds``): an option renamed here fails when a study is planned, not in a job.
"""

from __future__ import annotations

from typing import Optional


def loss(checkpoint: str, data: str, max_seq_length: Optional[int] = None, batch_size: int = 8,
         max_batches: int = 100, json: Optional[str] = None, all_checkpoints: bool = False,
         precision: Optional[str] = None) -> int:
    """Loss per val set of a checkpoint (or of every checkpoint of a run).

    Args:
        checkpoint: a checkpoint folder (or, with --all_checkpoints, a run folder)
        data: a shard folder or a folder of val sets
        max_seq_length: tokens per sequence (default: the model's block size)
        batch_size: sequences per forward pass
        max_batches: batches per val set at most
        json: also write the losses as JSON to this path
        all_checkpoints: --checkpoint is a run folder: evaluate every saved checkpoint in it (by_step)
        precision: the forward pass: bf16-mixed (bf16 autocast, TF32) or 32-true; default bf16-mixed on a GPU with
            bf16, else 32-true (written beside the numbers)
    """
    from midtrain.posttrain import evaluate as ev

    if all_checkpoints:
        result = ev.loss_over_checkpoints(checkpoint, data, max_seq_length, batch_size, max_batches, precision)
        for step, sets in result["by_step"].items():
            print(f"step {step}: " + ", ".join(f"{n} loss {m['loss']:.4f}" for n, m in sets.items()
                                               if isinstance(m, dict) and "loss" in m))
    else:
        result = ev.loss_on_shards(checkpoint, data, max_seq_length, batch_size, max_batches, precision)
    for name, m in result.items():
        if isinstance(m, dict) and "loss" in m:
            print(f"{name}: loss {m['loss']:.4f} ppl {m['ppl']:.2f}")
    print(f"precision: {result['precision']}")
    for note in result.get("checkpoint_notes") or []:
        if note.get("optimizer"):
            print(f"note: {note['optimizer']} at step {note.get('at_step', note.get('step'))}")
    ev.write_json(result, json)
    return 0


def lm_eval(checkpoint: str, tasks: str, out_dir: str, batch_size: int = 1, num_fewshot: Optional[int] = None,
            limit: Optional[float] = None, include_path: Optional[str] = None, tokenizer_dir: Optional[str] = None,
            precision: Optional[str] = None) -> int:
    """lm-evaluation-harness tasks on a checkpoint, offline.

    Args:
        checkpoint: a checkpoint folder
        tasks: comma-separated lm-eval task names
        out_dir: results.json goes here
        batch_size: requests scored per forward pass
        num_fewshot: few-shot examples per request (default: the task's)
        limit: examples per task (a fraction if < 1)
        include_path: a folder of local task YAMLs (data files beside them: works offline)
        tokenizer_dir: default: the checkpoint folder
        precision: the forward pass: bf16-mixed (bf16 autocast, TF32) or 32-true; default bf16-mixed on a GPU with
            bf16, else 32-true (written beside the numbers)
    """
    from midtrain.posttrain import evaluate as ev

    table = ev.lm_eval(checkpoint, tasks, out_dir, batch_size, num_fewshot, limit, include_path, tokenizer_dir,
                       precision)
    for task, metrics in table.items():
        print(f"{task}: " + ", ".join(ev.format_lm_eval_metrics(metrics)))
    print(f"wrote {out_dir}/results.json")
    return 0


def export_hf(checkpoint: str, out: str) -> int:
    """A checkpoint as a Hugging Face model folder.

    Args:
        checkpoint: a checkpoint folder
        out: the HF folder to write (model.pth; with an HF config.json in the checkpoint, also model.safetensors,
            config.json and the tokenizer files that transformers loads)
    """
    from midtrain.posttrain import evaluate as ev

    print(f"wrote {ev.export_hf(checkpoint, out)}")
    return 0


COMMANDS = {"loss": loss, "lm-eval": lm_eval, "export-hf": export_hf}
