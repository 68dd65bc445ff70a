"""The per-rank memory table of docs/training-on-gpus.md: the paper's four sizes at their micro-batches on 8 GPUs, and
OLMo-2-7B with and without activation checkpointing (tests/test_footprint.py holds the doc equal to this output).

    python bench/memory_table.py
"""

from litgpt import Config

from midtrain.train.footprint import footprint

ROWS = [("pythia-70m", 16, 2048), ("pythia-160m", 16, 2048), ("pythia-410m", 8, 2048), ("pythia-1b", 4, 2048)]


def table() -> str:
    lines = ["| model | micro x seq | precision | auto picks | params+grads+AdamW | activations | logits grad | total |",
             "|---|---|---|---|---|---|---|---|"]

    def row(name, micro, seq, precision, ac=False):
        fp = footprint(Config.from_name(name), micro, seq, precision, "auto", 8, 1, "cuda", ac, gpu_type="h100")
        e = fp.estimate
        label = name + (" + activation ckpt" if ac else "")
        lines.append(f"| {label} | {micro} x {seq} | {precision} | {fp.strategy} x 8 | {e.states / 2**30:.1f} GiB | "
                     f"{(e.activations + e.recompute) / 2**30:.1f} GiB | {e.logits_grad / 2**30:.1f} GiB | "
                     f"{e.total / 2**30:.1f} GiB |")

    for name, micro, seq in ROWS:
        for precision in ("bf16-true", "bf16-mixed"):
            row(name, micro, seq, precision)
    for ac in (False, True):
        row("OLMo-2-1124-7B", 1, 4096, "bf16-mixed", ac)
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
