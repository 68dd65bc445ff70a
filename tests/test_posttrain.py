"""Issue 6: prepare, tokenizer, SFT (masking, LR choice, forgetting), evaluate, plot, report, demo."""

import json
import os

import pytest
import torch

from support import run_cli
from support.runs import DOCS, shard_tokens
from support.runs import jsonl as write_jsonl
from midtrain.data.prepare import prepare_shard
from midtrain.data.shards import discover
from midtrain.errors import ConfigError



def test_tokenizer_loads_in_litgpt(tokenizer_dir):
    from litgpt import Tokenizer

    tok = Tokenizer(tokenizer_dir)
    assert tok.eos_id is not None and tok.decode(tok.encode("lazy dogs")) == "lazy dogs"


def test_prepare_round_trip_and_val_split(tmp_path, tokenizer_dir):
    from litgpt import Tokenizer

    src = write_jsonl(tmp_path / "docs.jsonl", [{"body": d} for d in DOCS])
    summary = prepare_shard([str(src)], str(tokenizer_dir), str(tmp_path / "shards"), "c3", field="body",
                            val_fraction=0.2, val_dir=str(tmp_path / "val"), chunk_tokens=512)
    tok = Tokenizer(tokenizer_dir)
    import zlib

    expected = {"train": [], "val": []}
    for i, d in enumerate(DOCS):
        split = "val" if zlib.crc32(d.encode()) / 2**32 < 0.2 else "train"
        expected[split] += tok.processor.encode(d).ids + [tok.eos_id]
    assert shard_tokens(tmp_path / "shards" / "c3") == expected["train"]
    assert shard_tokens(tmp_path / "val" / "c3") == expected["val"]
    assert summary["train"]["tokens"] == len(expected["train"]) and summary["train"]["chunks"] > 1
    assert [s.id for s in discover(tmp_path / "shards").shards] == ["c3"]


def test_prepare_reads_text_files_parquet_and_hf_saved(tmp_path, tokenizer_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "txt").mkdir()
    for i in range(3):
        (tmp_path / "txt" / f"{i}.txt").write_text(DOCS[i])
    pq.write_table(pa.table({"text": DOCS[:5]}), tmp_path / "d.parquet")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "state.json").write_text("{}")
    (hf / "dataset_info.json").write_text("{}")
    with pa.OSFile(str(hf / "data-00000-of-00001.arrow"), "wb") as sink:
        table = pa.table({"text": DOCS[:4]})
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
    for name, inp, n in (("1", tmp_path / "txt", 3), ("2", tmp_path / "d.parquet", 5), ("3", hf, 4)):
        s = prepare_shard([str(inp)], str(tokenizer_dir), str(tmp_path / "shards"), name)
        toks = shard_tokens(tmp_path / "shards" / name)
        assert s["train"]["tokens"] == len(toks)
        from litgpt import Tokenizer

        assert toks.count(Tokenizer(tokenizer_dir).eos_id) == n


def test_crashed_prepare_leaves_nothing_discoverable(tmp_path, tokenizer_dir):
    src = tmp_path / "docs.jsonl"
    write_jsonl(src, [{"text": d} for d in DOCS])
    with open(src, "a") as f:
        f.write("{this is not json\n")
    r = run_cli("prepare", "--input", src, "--tokenizer_dir", tokenizer_dir, "--out_dir", tmp_path / "shards",
                "--shard", "m1", "--val_fraction", "0.1", "--val_dir", tmp_path / "val")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"midtrain prepare: error: {src}:121: not a JSON line " \
        "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"
    for folder in ("shards", "val"):
        base = tmp_path / folder
        assert not base.exists() or [p.name for p in base.iterdir()] == []
    # a prepare killed with -9 leaves its hidden temp folder: discovery never reads it
    (tmp_path / "shards" / ".m1.tmp-123").mkdir(parents=True)
    (tmp_path / "shards" / ".m1.tmp-123" / "index.json").write_text('{"chunks": []}')
    d = discover(tmp_path / "shards")
    assert d.shards == [] and d.ignored == []


def test_prepare_bad_input_is_one_line(tmp_path, tokenizer_dir):
    r = run_cli("prepare", "--input", tmp_path / "missing.jsonl", "--tokenizer_dir", tokenizer_dir, "--out_dir",
                tmp_path / "s", "--type", "code", "--index", "1")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "missing.jsonl does not exist" in r.stderr
    r = run_cli("prepare", "--input", tmp_path, "--tokenizer_dir", tokenizer_dir, "--out_dir", tmp_path / "s",
                "--shard", "zz9")
    assert r.returncode == 2 and "'zz9' is not a shard id" in r.stderr


def test_prepare_refuses_inputs_that_give_no_documents(tmp_path, tokenizer_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    numbers = write_jsonl(tmp_path / "numbers.jsonl", [{"text": 5}])
    good = write_jsonl(tmp_path / "good.jsonl", [{"text": f"document {i}"} for i in range(20)])
    (tmp_path / "afile").write_text("x")
    cases = [
        (["--input", empty], "--input: no documents went to the train shard (empty input"),
        (["--input", numbers], "numbers.jsonl:1: field 'text' holds int, not text"),
        (["--input", good, "--val_fraction", "0.999", "--val_dir", tmp_path / "v"],
         "--input: no documents went to the train shard (--val_fraction 0.999 leaves none for training)"),
        (["--input", good, "--out_dir", tmp_path / "afile" / "s"], "--out_dir: "),
    ]
    for extra, needle in cases:
        args = ["prepare", "--tokenizer_dir", tokenizer_dir, "--out_dir", tmp_path / "s", "--type", "code",
                "--index", "1", *extra]
        if "--out_dir" in map(str, extra):
            args = ["prepare", "--tokenizer_dir", tokenizer_dir, "--type", "code", "--index", "1", *extra]
        r = run_cli(*args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
        assert needle in r.stderr, r.stderr
        assert not (tmp_path / "s").exists() and not (tmp_path / "v").exists()  # not even an empty folder
    r = run_cli("prepare", "--tokenizer_dir", tokenizer_dir, "--out_dir", tmp_path / "s", "--type", "code", "--index",
                "1", "--input", good, "--chunk_tokens", "0")  # was: silently one chunk
    assert r.returncode == 2 and "--chunk_tokens: must be >= 1" in r.stderr and not (tmp_path / "s").exists()


def test_sft_bad_options_are_refused_before_any_work(tmp_path, tokenizer_dir):
    (tmp_path / "afile").write_text("x")
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "response": "b"}] * 20)
    cases = [
        (["--epochs", "0"], "--epochs: must be >= 1"),
        (["--micro_batch_size", "0"], "--micro_batch_size: must be >= 1"),
        (["--val_fraction", "2"], "--val_fraction: must be in [0, 1), got 2"),
        (["--out", tmp_path / "afile" / "m.json"], "--out: "),
        (["--pretrain_val_path", tmp_path / "nope"], "--pretrain_val_path: "),
        (["--lrs", "[-1]"], "--lrs: "),
        (["--precision", "16-mixed"], "--precision: "),
    ]
    for extra, needle in cases:  # the checkpoint does not even exist: these fail first, in milliseconds
        r = run_cli("sft", "--checkpoint", tmp_path / "no_ckpt", "--data", data, *extra)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr


def test_sft_masks_the_prompt(tokenizer_dir):
    from litgpt import Tokenizer

    from midtrain.posttrain.sft import IGNORE, collate, encode_example

    tok = Tokenizer(tokenizer_dir)
    ids, labels = encode_example(tok, "Question: 3 + 4?", " 7.", 64)
    n_prompt = len(tok.encode("Question: 3 + 4?", bos=False))
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == tok.eos_id
    x, y = collate([(ids, labels), (ids[:5], labels[:5])])
    assert x.shape == y.shape == (2, len(ids) - 1)
    assert (y[1, 4:] == IGNORE).all() and y[0, n_prompt - 1] == ids[n_prompt]  # first learned target


def test_masked_loss_ignores_prompt_positions():
    from midtrain.posttrain.sft import IGNORE, masked_loss

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, x):
            return self.logits

    logits = torch.randn(1, 4, 10)
    targets = torch.tensor([[IGNORE, IGNORE, 3, 5]])
    a = masked_loss(Fixed(logits), None, targets)
    logits2 = logits.clone()
    logits2[0, :2] = torch.randn(2, 10) * 100  # change what the prompt positions predict
    assert torch.isclose(a, masked_loss(Fixed(logits2), None, targets))
    expected = torch.nn.functional.cross_entropy(logits[0, 2:], targets[0, 2:])
    assert torch.isclose(a, expected)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, real_tree):

    from support.runs import write_config

    tmp = tmp_path_factory.mktemp("tinyrun")
    cfg = write_config(tmp, real_tree, train={"max_steps": 8})
    assert run_cli("pretrain", "--config", cfg).returncode == 0
    return tmp / "base"


def test_sft_picks_lr_on_val_reports_test_and_forgetting(tmp_path, tiny_run, real_tree, tokenizer_dir):
    from midtrain.posttrain.sft import run_sft

    rows = [{"prompt": f"Q: {a} plus {b}? A:", "response": f" {a + b}"} for a in range(12) for b in range(8)]
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    m = run_sft(tiny_run / "final", data, tokenizer_dir=tokenizer_dir, lrs=(1e-4, 3e-3), epochs=1,
                micro_batch_size=8, global_batch_size=8, pretrain_val_path=real_tree.parent / "val",
                forgetting_batches=2, out=tmp_path / "m.json", score_every_lr=True)
    assert json.loads((tmp_path / "m.json").read_text()) == m
    assert m["precision"] == "32-true"  # the CPU default
    # score_every_lr: every LR has its test loss and forgetting; the kept one's equal the reported ones
    kept = m["lr_sweep"][f"{m['best_lr']:g}"]
    assert kept["test_loss"] == m["test_loss"] and kept["forgetting"] == m["forgetting"]
    other = next(v for lr, v in m["lr_sweep"].items() if float(lr) != m["best_lr"])
    assert other["test_loss"] != m["test_loss"] and set(other["forgetting"]) == {"main", "code", "gsm8k"}
    assert m["best_lr"] == min((float(lr) for lr in m["lr_sweep"]), key=lambda lr: m["lr_sweep"][f"{lr:g}"]["val_loss"])
    assert m["examples"] == {"train": 76, "val": 10, "test": 10}  # 96 examples, 10% + 10% held out
    assert (m["task"], m["arm"], m["seed"]) == ("sft", None, 42)  # labels for `midtrain report --by_seed`
    assert set(m["forgetting"]) == {"main", "code", "gsm8k"}
    assert m["test_loss"] < m["zero_shot_val_loss"]
    # the test loss is defined from its items (the item level of the report's variance): one pair per test
    # example, and the token-weighted mean of the pairs is the reported loss, for the kept LR and every other
    assert len(m["test_items"]) == m["examples"]["test"] and all(n > 0 for _, n in m["test_items"])
    for row in (m, *m["lr_sweep"].values()):
        items = row["test_items"]
        assert row["test_loss"] == pytest.approx(sum(x for x, _ in items) / sum(n for _, n in items), rel=1e-12)
    assert sum(n for _, n in m["test_items"]) == m["response_tokens"]["test"]
    # forgetting is the main-corpus loss of the SFT model: `midtrain evaluate loss` (another code path)
    # on the saved SFT model and on the base must give the same numbers
    m2 = run_sft(tiny_run / "final", data, tokenizer_dir=tokenizer_dir, lrs=(3e-3,), epochs=1, micro_batch_size=8,
                 global_batch_size=8, pretrain_val_path=real_tree.parent / "val", forgetting_batches=2,
                 save=tmp_path / "sft_model")
    for ckpt, key in ((tmp_path / "sft_model", "after"), (tiny_run / "final", "before")):
        r = run_cli("evaluate", "loss", "--checkpoint", ckpt, "--data", real_tree.parent / "val", "--max_batches", "2",
                    "--batch_size", "8", "--json", tmp_path / f"{key}.json")
        assert r.returncode == 0, r.stderr
        independent = json.loads((tmp_path / f"{key}.json").read_text())
        for name in ("main", "code", "gsm8k"):
            assert m2["forgetting"][name][key] == pytest.approx(independent[name]["loss"], rel=1e-5)
    assert m2["forgetting"]["main"]["after"] != pytest.approx(m2["forgetting"]["main"]["before"], rel=1e-4)
    import math

    import yaml

    vocab = yaml.safe_load((tiny_run / "final" / "model_config.yaml").read_text())["padded_vocab_size"]
    # the collapse reference (issue 28, item 4): the unigram entropy of the tokens scored, one per set, the same
    # for every LR and run on that set (the same tokens), below ln V
    for name, f in m2["forgetting"].items():
        assert 0 < f["unigram_entropy"] < math.log(vocab), (name, f)
        assert f["unigram_entropy"] == m["forgetting"][name]["unigram_entropy"]
    # bf16 on CPU (torch supports it): recorded, finite, close to fp32 (bf16 keeps ~3 significant digits)
    for precision in ("bf16-mixed", "bf16-true"):
        b = run_sft(tiny_run / "final", data, tokenizer_dir=tokenizer_dir, lrs=(3e-3,), epochs=1, micro_batch_size=8,
                    global_batch_size=8, precision=precision)
        assert b["precision"] == precision and b["test_loss"] == pytest.approx(m2["test_loss"], rel=0.05)
    # forgetting_sets: only the named sets are scored, with the same numbers as when every set is
    m3 = run_sft(tiny_run / "final", data, tokenizer_dir=tokenizer_dir, lrs=(3e-3,), epochs=1, micro_batch_size=8,
                 global_batch_size=8, pretrain_val_path=real_tree.parent / "val", forgetting_batches=2,
                 forgetting_sets=["main"])
    assert m3["forgetting"] == {"main": m2["forgetting"]["main"]}
    for sets, needle in ((["mian"], "'mian' is not a validation set in"), ([], "give distinct"),
                         (["main", "main"], "give distinct")):
        with pytest.raises(ConfigError, match="^--forgetting_sets") as e:  # before anything trains
            run_sft(tiny_run / "final", data, tokenizer_dir=tokenizer_dir, lrs=(3e-3,),
                    pretrain_val_path=real_tree.parent / "val", forgetting_sets=sets)
        assert needle in str(e.value)
    with pytest.raises(ConfigError, match="^--lrs"):
        run_sft(tiny_run / "final", data, tokenizer_dir=tokenizer_dir, lrs=())
    with pytest.raises(ConfigError, match="^--max_seq_length: 64 is longer than the model's block_size 32"):
        run_sft(tiny_run / "final", data, tokenizer_dir=tokenizer_dir, max_seq_length=64)


def test_evaluate_plot_report(tmp_path, tiny_run, real_tree):
    r = run_cli("evaluate", "loss", "--checkpoint", tiny_run / "final", "--data", real_tree.parent / "val",
                "--max_batches", "2", "--json", tmp_path / "e.json")
    assert r.returncode == 0, r.stderr
    assert set(json.loads((tmp_path / "e.json").read_text())) == {"main", "code", "gsm8k", "precision"}
    r = run_cli("plot", "--runs", tiny_run, "--out", tmp_path / "p.png")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "p.png").stat().st_size > 5000
    r = run_cli("report", "--runs", tiny_run, "--format", "csv", "--out", tmp_path / "r.csv")
    assert r.returncode == 0, r.stderr
    header = (tmp_path / "r.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["run", "step", "tokens", "val_loss/code", "val_loss/gsm8k", "val_loss/main"]
    r = run_cli("evaluate", "export-hf", "--checkpoint", tiny_run / "final", "--out", tmp_path / "hf")
    assert r.returncode == 0, r.stderr
    assert "gpt_neox.embed_in.weight" in torch.load(tmp_path / "hf" / "model.pth")
    r = run_cli("evaluate", "lm-eval", "--checkpoint", tiny_run / "final", "--tasks", "x", "--out_dir", tmp_path / "lm")
    assert r.returncode == 2 and "needs the eval extra" in r.stderr  # optional extra: not in this venv


def test_sft_stops_on_a_signal_with_75_and_leaves_nothing(tmp_path, tiny_run, tokenizer_dir):
    """A stop request at a wall-clock moment during the sweep (SIGTERM, as SLURM sends it; SIGINT, a Ctrl-C to the
    process group) ends `midtrain sft` at the next optimizer step: exit 75 and one line, no metrics, no half-saved
    model (SFT keeps no checkpoint: a rerun starts it over). A second Ctrl-C stops it at once with 130."""
    import random
    import signal
    import subprocess
    import sys
    import time

    from support import REPO, ctrl_c_until_it_ends

    rows = [{"prompt": f"Q: {a} plus {b}? A:", "response": f" {a + b}"} for a in range(12) for b in range(8)]
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    env = dict(os.environ, PYTHONPATH=REPO)

    def start(name, extra_env=None):
        out, save = tmp_path / f"m-{name}.json", tmp_path / f"saved-{name}"
        proc = subprocess.Popen([sys.executable, "-m", "midtrain", "sft", "--checkpoint", str(tiny_run / "final"),
                                 "--data", str(data), "--tokenizer_dir", str(tokenizer_dir), "--lrs", "[0.001, 0.003]",
                                 "--epochs", "500", "--micro_batch_size", "4", "--global_batch_size", "8",
                                 "--out", str(out), "--save", str(save)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**env, **(extra_env or {})}, start_new_session=True)
        return proc, out, save

    for sig in (signal.SIGTERM, signal.SIGINT):
        proc, out, save = start(sig.name)
        for line in proc.stdout:
            if line.startswith("sft: lr 0.001"):
                time.sleep(random.uniform(0, 0.5))  # any moment of the first LR's training
                os.killpg(proc.pid, sig)
                break
        text = proc.communicate(timeout=120)[0]
        assert proc.returncode == 75 and "Traceback" not in text, text[-3000:]
        assert f"midtrain sft: signal {sig.name} received: stopped (SFT keeps no checkpoint" in text, text[-2000:]
        assert not out.exists() and not save.exists() and not list(tmp_path.glob(".saved-*")), os.listdir(tmp_path)
    # Ctrl-C again and again from the moment its handlers are in place (signals.READY_ENV): the second one stops
    # it at once, with nothing written (as `midtrain pretrain`; see test_signals for why it is repeated)
    ready = tmp_path / "ready"
    ready.mkdir()
    proc, out, save = start("twice", {"MIDTRAIN_SIGNALS_READY": str(ready)})
    text = ctrl_c_until_it_ends(proc, ready)
    assert proc.returncode == 130 and "second interrupt" in text and "Traceback" not in text, text[-2000:]
    assert not out.exists() and not save.exists() and not list(tmp_path.glob(".saved-*"))
