"""The optional extras, offline: wandb (WANDB_MODE=offline) logs a run, lm-eval evaluates a checkpoint on a local
task. They run with the extras venv's python (`make extras`, which `make test` builds: MIDTRAIN_EXTRAS_PYTHON);
the main venv, without them, answers with one line naming the extra to install."""

import json
import os
import subprocess

import pytest
import torch

from support import REPO, run_cli
from support.runs import TINY_MODEL, write_config

EXTRAS_PY = os.environ.get("MIDTRAIN_EXTRAS_PYTHON")
needs_extras = pytest.mark.skipif(not EXTRAS_PY and not os.environ.get("CI"),
                                  reason="MIDTRAIN_EXTRAS_PYTHON unset (run through `make test`)")


def run_extras(*args, env=None):
    assert EXTRAS_PY, "CI runs `make test`, which builds the extras venv and sets MIDTRAIN_EXTRAS_PYTHON"
    e = dict(os.environ, PYTHONPATH=REPO, **(env or {}))
    return subprocess.run([EXTRAS_PY, "-m", "midtrain", *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          env=e, timeout=600)


@pytest.fixture(scope="module")
def checkpoint_with_tokenizer(tmp_path_factory):
    """A tiny model saved with a BPE tokenizer whose ids fit its vocabulary (as `pretrain --tokenizer_dir` saves)."""
    from litgpt import Config
    from litgpt.model import GPT
    from litgpt.utils import copy_config_files, save_config

    from midtrain.tokenizer import train_bpe

    tmp = tmp_path_factory.mktemp("lmeval")
    docs = [f"{a} plus {b} is {a + b}." for a in range(10) for b in range(10)] * 5
    tok = train_bpe(docs, tmp / "tok", vocab_size=300)
    torch.manual_seed(0)
    config = Config(**TINY_MODEL)
    ckpt = tmp / "ckpt"
    ckpt.mkdir()
    torch.save({"model": GPT(config).state_dict()}, ckpt / "lit_model.pth")
    save_config(config, ckpt)
    copy_config_files(tok, ckpt)
    return ckpt


@needs_extras
def test_lm_eval_on_a_local_task_offline(tmp_path, checkpoint_with_tokenizer):
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    r = run_extras("evaluate", "lm-eval", "--checkpoint", checkpoint_with_tokenizer, "--tasks", "tiny_arith",
                   "--include_path", "tests/lm_eval_tasks", "--out_dir", tmp_path / "out", env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("tiny_arith:"))
    assert line.startswith("tiny_arith: acc 0.") and "(n=24)" in line
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    acc = results["results"]["tiny_arith"]["acc,none"]
    assert 0 <= acc <= 1 and results["n_samples"]["tiny_arith"]["effective"] == 24
    bad = run_extras("evaluate", "lm-eval", "--checkpoint", checkpoint_with_tokenizer, "--tasks", "nope_task",
                     "--include_path", "tests/lm_eval_tasks", "--out_dir", tmp_path / "o2", env=env)
    assert bad.returncode == 2 and "--tasks: unknown task(s) nope_task" in bad.stderr


@needs_extras
def test_lm_eval_local_task_data_files_resolve_beside_the_yaml_from_any_folder(tmp_path, checkpoint_with_tokenizer):
    """Issue 20, class 6: lm-eval resolves a task's relative data_files from the working directory, so a local
    task worked only from its own folder (a FileNotFoundError traceback elsewhere). Here: run from another
    folder, with data_files as a split mapping and as a list; a missing file is one line naming it."""
    import shutil

    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    tasks = tmp_path / "my_tasks" / "arith"
    tasks.mkdir(parents=True)
    shutil.copy(os.path.join(REPO, "tests", "lm_eval_tasks", "tiny_arith.jsonl"), tasks / "items.jsonl")
    text = open(os.path.join(REPO, "tests", "lm_eval_tasks", "tiny_arith.yaml")).read()
    (tasks / "a.yaml").write_text(text.replace("task: tiny_arith", "task: arith_a")
                                  .replace("test: tiny_arith.jsonl", "test: items.jsonl"))
    (tasks / "b.yaml").write_text(text.replace("task: tiny_arith", "task: arith_b")
                                  .replace("test: tiny_arith.jsonl", "test: [items.jsonl]"))
    (tasks / "c.yaml").write_text(text.replace("task: tiny_arith", "task: arith_missing")
                                  .replace("test: tiny_arith.jsonl", "test: nope.jsonl"))
    (tasks / "d.yaml").write_text(text.replace("task: tiny_arith", "task: arith_long")  # answers past block_size
                                  .replace("test: tiny_arith.jsonl", "test: items.jsonl")
                                  .replace('doc_to_choice: "{{choices}}"', 'doc_to_choice: "{{[question * 40] + choices[1:]}}"'))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def lm_eval(names, out):
        e = dict(os.environ, PYTHONPATH=REPO, **env)
        return subprocess.run([EXTRAS_PY, "-m", "midtrain", "evaluate", "lm-eval", "--checkpoint",
                               str(checkpoint_with_tokenizer), "--tasks", names, "--include_path",
                               str(tmp_path / "my_tasks"), "--out_dir", str(out), "--limit", "4"],
                              capture_output=True, text=True, cwd=elsewhere, env=e, timeout=600)

    r = lm_eval("arith_a,arith_b", tmp_path / "o")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    results = json.loads((tmp_path / "o" / "results.json").read_text())["results"]
    assert set(results) == {"arith_a", "arith_b"} and results["arith_a"] == results["arith_b"]
    r = lm_eval("arith_missing", tmp_path / "o3")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "c.yaml: dataset_kwargs.data_files: nope.jsonl not found beside the task YAML" in r.stderr
    r = lm_eval("arith_long", tmp_path / "o4")  # before: a raw RuntimeError from gather
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]  # (lm-eval's own progress bars aside)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(errors) == 1, r.stderr
    assert "tokens is longer than the model's block_size" in r.stderr


@needs_extras
def test_lm_eval_adapter_scores_equal_the_models_own_log_probs(checkpoint_with_tokenizer):
    """The adapter's log-likelihood is the model's: recomputed here by hand for one request."""
    code = f"""
import torch, torch.nn.functional as F
from pathlib import Path
from midtrain.posttrain.lm_eval_adapter import LitLM
lm = LitLM(Path({str(checkpoint_with_tokenizer)!r}))
ctx, cont = lm.encode("3 plus 4 is"), lm.encode(" 7.")
(ll, greedy), = lm._score_all([(ctx, cont)])
x = torch.tensor(ctx + cont)
logp = F.log_softmax(lm.model(x[None, :-1])[0].float(), -1)
manual = sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
assert abs(ll - manual) < 1e-4, (ll, manual)
print("ok", ll)
"""
    r = subprocess.run([EXTRAS_PY, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=REPO), timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-2000:]


@needs_extras
def test_wandb_offline_logs_a_run(tmp_path, real_tree):
    cfg = write_config(tmp_path, real_tree, logger_name="wandb", train={"max_steps": 4})
    r = run_extras("pretrain", "--config", cfg, env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert r.returncode == 0, r.stderr[-3000:]
    runs = list((tmp_path / "base" / "logs" / "wandb").glob("offline-run-*"))  # inside the run folder
    assert len(runs) == 1
    (log,) = runs[0].glob("run-*.wandb")
    # read the offline log back: LevelDB-style blocks of wandb protobuf records (wandb's own reader is in Go)
    code = f"""
import json, struct
from wandb.proto import wandb_internal_pb2 as pb
raw = open({str(log)!r}, "rb").read()
pos, buf, rows = 7, b"", []
while pos + 7 <= len(raw):
    if 32768 - pos % 32768 < 7:
        pos += 32768 - pos % 32768
        continue
    _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
    data, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
    if kind == 0:
        break
    buf = data if kind in (1, 2) else buf + data
    if kind in (1, 4):
        rec = pb.Record()
        rec.ParseFromString(buf)
        if rec.WhichOneof("record_type") == "history":
            rows.append({{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}})
print(json.dumps(rows))
"""
    out = subprocess.run([EXTRAS_PY, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    train = [row for row in json.loads(out.stdout) if "loss" in row]
    assert [row["step"] for row in train] == [1, 2, 3, 4]
    assert all("source_share/m1" in row and "lr" in row for row in train)
    assert any("val_loss/main" in row for row in json.loads(out.stdout))


def test_without_the_extras_one_line_names_the_extra(tmp_path, real_tree):
    import importlib.util

    if importlib.util.find_spec("wandb") or importlib.util.find_spec("lm_eval"):
        pytest.skip("this python has the extras")
    r = run_cli("evaluate", "lm-eval", "--checkpoint", tmp_path, "--tasks", "x", "--out_dir", tmp_path / "o")
    assert r.returncode == 2 and "pip install -e '.[eval]'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    cfg = write_config(tmp_path, real_tree, logger_name="wandb", out_dir=str(tmp_path / "w"))
    r = run_cli("pretrain", "--config", cfg)
    assert r.returncode == 2 and "pip install -e .[wandb]" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@needs_extras
def test_lm_eval_stop_sequence_given_as_a_string_is_one_sequence(checkpoint_with_tokenizer):
    """Issue 27, class 6: `generation_kwargs: {until: "Question:"}` was iterated character by character,
    so generation stopped at the first "o" (0.0 where the list form scored 1.0). A string is now one stop
    sequence, as lm-eval's own models read it: the same generations as the list form."""
    code = f"""
import json
from lm_eval.api.instance import Instance
from midtrain.posttrain.lm_eval_adapter import LitLM
lm = LitLM("{checkpoint_with_tokenizer}")
reqs = lambda until: [Instance("generate_until", {{}}, (f"{{a}} plus 2 is", {{"until": until, "max_gen_toks": 24}}), 0)
                      for a in range(6)]
print(json.dumps([lm.generate_until(reqs("Question:")), lm.generate_until(reqs(["Question:"])),
                  lm.generate_until(reqs([]))]))
"""
    r = subprocess.run([EXTRAS_PY, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=REPO), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    as_string, as_list, free = json.loads(r.stdout.strip().splitlines()[-1])
    assert as_string == as_list
    # the generations hold characters of "Question:" (so a per-character stop would have cut them short)
    assert any(set(text) & set("Question:") for text in free) and as_list == free


@needs_extras
def test_batched_scoring_and_cached_generation_give_todays_numbers_on_cpu(tmp_path, checkpoint_with_tokenizer):
    """Issue 31, item 4: requests scored ``batch_size`` at a time (right-padded, longest first) give the numbers the
    one-request-per-forward scoring gave, computed here by hand as before (log-likelihood with and without context,
    a request longer than the window, rolling windows); greedy generation through litgpt's KV cache gives the
    tokens of the uncached loop, and a prompt too long for the cache slides its window as before. The precision is
    32-true on CPU and written to results.json; bf16-mixed (autocast) runs on CPU too, close to fp32; a bad value
    is one line."""
    code = f"""
import json, torch, torch.nn.functional as F
from lm_eval.api.instance import Instance
from midtrain.posttrain.lm_eval_adapter import LitLM
path = {str(checkpoint_with_tokenizer)!r}
one, five = LitLM(path, batch_size=1), LitLM(path, batch_size=5)
assert one.precision == "32-true"
m, W, eos = one.model, one.max_length, one.tokenizer.eos_id

def by_hand(ctx, cont):  # the scoring before batching: one request per forward pass
    tokens = ((ctx or [eos]) + cont)[-(W + 1):]
    x = torch.tensor(tokens[:-1])[None]
    logits = m(x)[0, -len(cont):].float()
    t = torch.tensor(tokens[-len(cont):])
    return float(F.log_softmax(logits, -1).gather(1, t[:, None]).sum()), bool((logits.argmax(-1) == t).all())

pairs = [(f"{{a}} plus {{b}} is", f" {{a + b}}.") for a in range(4) for b in range(3)]
pairs += [("", "1 plus 1 is 2."), ("9 plus 9 is 18. " * 6, " 4."), ("2 plus", " 2 is 4. 3 plus 3 is 6.")]
reqs = [Instance("loglikelihood", {{}}, p, 0) for p in pairs]
a, b = one.loglikelihood(reqs), five.loglikelihood(reqs)
ref = [by_hand(one.encode(c), one.encode(x)) for c, x in pairs]
assert [g for _, g in a] == [g for _, g in b] == [g for _, g in ref]
assert max(abs(x[0] - y[0]) for x, y in zip(a + b, ref + ref)) < 1e-4
texts = ["1 plus 2 is 3. " * k for k in (1, 3, 9)]  # the last is several windows
roll = [Instance("loglikelihood_rolling", {{}}, (t,), 0) for t in texts]
ra, rb = one.loglikelihood_rolling(roll), five.loglikelihood_rolling(roll)
def rolling_by_hand(text):
    tokens, total, start = one.encode(text), 0.0, 0
    while start < len(tokens):
        window = tokens[start:start + W]
        total += by_hand(tokens[:start], window)[0]
        start += len(window)
    return total
assert max(abs(x - y) for x, y in zip(ra + rb, [rolling_by_hand(t) for t in texts] * 2)) < 1e-4

def greedy_by_hand(tokens, max_new):  # the loop before the cache: the whole window per token
    new = []
    for _ in range(max_new):
        nxt = int(m(torch.tensor((tokens + new)[-W:])[None])[0, -1].argmax())
        if nxt == eos:
            break
        new.append(nxt)
    return new
prompts = [one.encode(f"{{a}} plus 2 is") for a in range(5)] + [one.encode("7 plus 1 is 8. " * 4)]
for tokens, n in [(p, 12) for p in prompts] + [(prompts[0], W)]:  # the last two do not fit: the window slides
    assert one._greedy(tokens, n, []) == greedy_by_hand(tokens, n), tokens
gen = [Instance("generate_until", {{}}, ("3 plus 2 is", {{"until": ["."], "max_gen_toks": 10}}), 0)]
assert one.generate_until(gen) == five.generate_until(gen)
bf = LitLM(path, batch_size=4, precision="bf16-mixed").loglikelihood(reqs[:6])
assert max(abs(x[0] - y[0]) for x, y in zip(bf, a[:6])) < 0.25 * max(1.0, max(abs(y[0]) for y in a[:6]))
print("ok")
"""
    r = subprocess.run([EXTRAS_PY, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=REPO), timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    r = run_extras("evaluate", "lm-eval", "--checkpoint", checkpoint_with_tokenizer, "--tasks", "tiny_arith",
                   "--include_path", "tests/lm_eval_tasks", "--out_dir", tmp_path / "out", "--batch_size", "8",
                   "--limit", "4", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["precision"] == "32-true"
    bad = run_extras("evaluate", "lm-eval", "--checkpoint", checkpoint_with_tokenizer, "--tasks", "tiny_arith",
                     "--include_path", "tests/lm_eval_tasks", "--out_dir", tmp_path / "o2", "--precision", "fp8",
                     env=env)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1, bad.stderr
    assert "--precision: expected one of bf16-mixed, 32-true, got 'fp8'" in lines[0]
