"""The training step path (issue 31): no host sync (item 2), counted on CPU, and the loss in the compiled graph
(item 3).

``tests/count_syncs.py`` runs a real ``midtrain pretrain`` and counts every read of a tensor back to the host (what
stalls a GPU's host until its queue drains) between consecutive optimizer steps, with its call site. The stated
numbers:

- one process: **0** reads per step;
- two ranks (DDP or FSDP2): **1** per step, ``distributed.Agreement.result``: the stop flags (a signal, a failed
  loader) OR-ed across ranks, started before the step's last micro-batch and read before its optimizer step. On a GPU
  that read waits on a CUDA event recorded before the last micro-batch's work, so the queue keeps running.

Logging steps read the loss back (every ``log_interval``); the configs here log only at the last step, which no
interval covers. Before this test the trainer read 1 + (micro-batches per step) flags per step on two ranks.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from support import REPO
from support.runs import write_config

EXPECTED = {"one": 0, "ddp": 1, "fsdp": 1}


@pytest.mark.parametrize("kind", ["one", "ddp", "fsdp"])
def test_host_reads_per_optimizer_step_on_the_step_path(tmp_path, real_tree, kind):
    top = {} if kind == "one" else {"devices": 2, "strategy": kind}
    cfg = write_config(tmp_path, real_tree, out_dir=str(tmp_path / "out"), **top,
                       train={"max_steps": 6, "micro_batch_size": 2, "log_interval": 1000, "save_interval": 0,
                              "max_norm": 1.0, "max_lr": 0.003},  # 4 micro-batches per step (2 per rank on two)
                       eval={"interval": 0, "max_iters": 1, "final_validation": False})
    r = subprocess.run([sys.executable, os.path.join(REPO, "tests", "count_syncs.py"), str(tmp_path / "count"),
                        "pretrain", "--config", str(cfg)], capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=REPO), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = sorted(tmp_path.glob("count.rank*.json"))
    assert len(ranks) == (1 if kind == "one" else 2)
    for path in ranks:
        steps = json.loads(path.read_text())["steps"]
        assert len(steps) == 5  # between the 6 optimizer steps
        for k, sites in enumerate(steps, start=1):
            assert sum(sites.values()) == EXPECTED[kind], f"{path.name}, after step {k}: {sites}"
        if EXPECTED[kind]:
            assert {site.rsplit(":", 1)[0] for s in steps for site in s} == {"train/distributed.py"}


def test_the_compiled_loss_equals_the_chunked_eager_loss():
    """Under ``compile`` the trainer's loss is ``torch.compile(token_loss)`` (Inductor, here its CPU backend): the same
    per-token values and logit gradients as the eager chunked ``per_token_loss`` from bf16 logits, the paper's
    precision (both upcast before the softmax; the gradient comes back in bf16). 300 rows: two full chunks and a
    partial one."""
    dtype = torch.bfloat16
    from midtrain.train.metrics import per_token_loss, token_loss

    torch.manual_seed(0)
    logits = (torch.randn(3, 100, 211) * 4).to(dtype)
    targets = torch.randint(0, 211, (3, 100))
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    eager = per_token_loss(a, targets)
    compiled = torch.compile(token_loss)(b, targets)
    assert eager.dtype == compiled.dtype == torch.float32 and eager.shape == compiled.shape == (3, 100)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    weights = torch.rand(3, 100)
    (eager * weights).sum().backward()
    (compiled * weights).sum().backward()
    assert a.grad.dtype == b.grad.dtype == dtype
    torch.testing.assert_close(b.grad.float(), a.grad.float(), rtol=1.6e-2, atol=1e-3)  # bf16's resolution


def test_compiled_blocks_train_as_eager_with_one_graph_for_every_block():
    """``parallel.compile_blocks`` (what ``compile: true`` does to the model): each Block compiled in place, so the
    state-dict keys are the eager model's (no ``_orig_mod.``), the forward and the gradients are eager's, and Dynamo
    traces one Block's forward for all of them (compile time independent of depth: a whole-model compile traced
    every Block)."""
    import torch._dynamo
    from litgpt import GPT, Config

    from midtrain.train.parallel import compile_blocks

    cfg = Config(block_size=16, vocab_size=64, padded_vocab_size=64, n_layer=3, n_head=2, n_embd=16)
    torch.manual_seed(0)
    eager = GPT(cfg)
    compiled = GPT(cfg)
    compiled.load_state_dict(eager.state_dict())
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compile_blocks(compiled)
    assert all(block._compiled_call_impl is not None for block in compiled.transformer.h)
    assert compiled.lm_head._compiled_call_impl is None  # the root runs eagerly
    assert list(compiled.state_dict()) == list(eager.state_dict())
    x = torch.randint(0, 64, (2, 16))
    outs = []
    for model in (eager, compiled):
        out = model(x)
        out.float().pow(2).mean().backward()
        outs.append(out)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # one Block's graph serves all three
