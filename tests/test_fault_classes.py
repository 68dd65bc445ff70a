"""Issue 20: fault classes from neighbouring tools' bug reports, each as a class with the correct value as a test.

1. a loss over zero scorable tokens is never a number (SFT splits, the trainer's validation, evaluate loss);
2. a validation set shorter than one sample is refused (mix, pretrain start-up, evaluate);
3. SFT gradient accumulation weighs tokens, not micro-batches;
4. an SFT set smaller than the global batch is one line before the sweep.
"""

import json

import pytest
import torch

from support import run_cli
from support.runs import WORDS, jsonl  # noqa: F401
from midtrain.errors import ConfigError

def long_prompt(i):
    return " ".join(WORDS[(i + j) % len(WORDS)] for j in range(80))


def one_line(r, needle):
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr[-2000:])
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stdout + r.stderr, r.stderr
    assert needle in r.stderr, r.stderr


# ---- 1. a loss over zero scorable tokens ----

def test_sft_where_no_example_keeps_a_response_token_is_refused_before_training(tmp_path, ckpt):
    """The issue's case: 8 pairs with ~80-word prompts, max_seq_length 32, micro = global = 2: every
    response is cut off. Before: loss nan at every step, a bare NaN in the metrics JSON, exit 0."""
    data = jsonl(tmp_path / "long.jsonl", [{"prompt": long_prompt(i), "response": f" {i}"} for i in range(8)])
    r = run_cli("sft", "--checkpoint", ckpt, "--data", data, "--max_seq_length", "32", "--micro_batch_size", "2",
                "--global_batch_size", "2", "--lrs", "[1e-3, 1e-2]", "--val_fraction", "0.25", "--test_fraction",
                "0.25", "--out", tmp_path / "m.json")
    one_line(r, "--data: no train example keeps a response token within max_seq_length 32")
    assert not (tmp_path / "m.json").exists() and "step" not in r.stdout


def test_sft_drops_unscorable_examples_with_a_count_and_every_loss_is_a_number(tmp_path, ckpt):
    """Mixed data: before, steps whose micro-batch had no response token were NaN and scaled the others
    down. Now those examples are dropped (counted, printed, recorded) and every step's loss is finite."""
    rows = [{"prompt": long_prompt(i), "response": f" {i}"} for i in range(6)]
    rows += [{"prompt": f"{i} plus {i % 7} is", "response": f" {i + i % 7}."} for i in range(18)]
    train = jsonl(tmp_path / "train.jsonl", rows)
    val = jsonl(tmp_path / "val.jsonl", [{"prompt": f"{i} plus 1 is", "response": f" {i + 1}."} for i in range(4)]
                + [{"prompt": long_prompt(3), "response": " x"}])
    test = jsonl(tmp_path / "test.jsonl", [{"prompt": f"{i} plus 2 is", "response": f" {i + 2}."} for i in range(4)])
    r = run_cli("sft", "--checkpoint", ckpt, "--data", train, "--val_data", val, "--test_data", test,
                "--max_seq_length", "32", "--micro_batch_size", "2", "--global_batch_size", "4", "--epochs", "2",
                "--lrs", "[1e-3]", "--out", tmp_path / "m.json")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "dropped 6 of 24 train examples" in r.stdout and "dropped 1 of 5 val examples" in r.stdout, r.stdout
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    m = json.loads(text)
    assert m["examples"] == {"train": 18, "val": 4, "test": 4}
    assert m["dropped_unscorable"] == {"train": 6, "val": 1, "test": 0}
    assert all(v > 0 for v in m["response_tokens"].values())
    # the held-out split named by its own option when it is the one left empty
    bad_val = jsonl(tmp_path / "bad_val.jsonl", [{"prompt": long_prompt(i), "response": " y"} for i in range(3)])
    r = run_cli("sft", "--checkpoint", ckpt, "--data", train, "--val_data", bad_val, "--test_data", test,
                "--max_seq_length", "32", "--micro_batch_size", "2", "--global_batch_size", "4")
    one_line(r, "--val_data: no val example keeps a response token")


def test_mean_over_nothing_is_no_data_never_zero():
    from midtrain.posttrain.sft import examples_loss
    from midtrain.train.metrics import NoData, mean_loss

    assert mean_loss(3.0, 2, "x") == 1.5
    with pytest.raises(NoData, match="^val: no data"):
        mean_loss(0.0, 0, "val")
    with pytest.raises(NoData):
        examples_loss(torch.nn.Identity(), [], 4, "cpu")
    assert issubclass(NoData, ConfigError)  # the CLI says it in one line, exit 2


# ---- 2. a validation set shorter than one sample ----

@pytest.fixture(scope="module")
def short_val(tmp_path_factory):
    """A training shard and val sets: main (500 tokens) and gsm8k of 20 tokens (max_seq_length 32 needs 33)."""
    from midtrain.data.prepare import write_token_shard

    base = tmp_path_factory.mktemp("shortval")
    write_token_shard(base / "data" / "1", [[i % 300 for i in range(j, j + 100)] for j in range(40)], chunk_tokens=1000)
    write_token_shard(base / "val" / "1", [[i % 300 for i in range(50)]] * 10, chunk_tokens=500)
    write_token_shard(base / "val" / "gsm8k", [list(range(20))], chunk_tokens=500)
    return base


def run_yaml(tmp_path, base, **extra):
    import yaml

    cfg = {"model_config": {"block_size": 32, "vocab_size": 400, "padded_vocab_size": 400, "n_layer": 1,
                            "n_head": 2, "n_embd": 16, "rotary_percentage": 1.0},
           "out_dir": str(tmp_path / "run"), "devices": 1, "accelerator": "cpu", "precision": "32-true",
           "data": {"class_path": "midtrain.data.ShardedMixedDataset",
                    "init_args": {"data_path": str(base / "data"), "val_data_path": str(base / "val"),
                                  "mix_weights_str": "main:1.0"}},
           "train": {"global_batch_size": 4, "micro_batch_size": 4, "max_steps": 2, "max_seq_length": 32,
                     "save_interval": None, "log_interval": 1},
           "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}},
           "eval": {"interval": 1000, "max_iters": 2}}
    cfg.update(extra)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_val_set_shorter_than_one_sample_is_refused_in_mix_pretrain_and_evaluate(tmp_path, short_val, ckpt):
    """Before: the trainer's final validation and `evaluate loss` printed `gsm8k loss 0.0000 ppl 1.00`."""
    cfg = run_yaml(tmp_path, short_val)
    needle = "val_data_path: validation set 'gsm8k'"
    r = run_cli("mix", "--config", cfg)
    one_line(r, needle)
    assert "has 20 tokens, not one sample of 33" in r.stderr
    r = run_cli("pretrain", "--config", cfg)
    one_line(r, needle)
    assert "step 1" not in r.stdout and not (tmp_path / "run" / "final").exists()
    r = run_cli("evaluate", "loss", "--checkpoint", ckpt, "--data", short_val / "val", "--max_seq_length", "32")
    one_line(r, "--data: validation set 'gsm8k'")
    # the forgetting probe of SFT reads val sets the same way (its own option is named), before any training
    from midtrain.posttrain.evaluate import loss_on_shards
    from midtrain.posttrain.sft import run_sft

    data = jsonl(tmp_path / "d.jsonl", [{"prompt": f"{i} plus", "response": f" {i}"} for i in range(20)])
    with pytest.raises(ConfigError, match="^--pretrain_val_path: validation set 'gsm8k'"):
        run_sft(ckpt, data, max_seq_length=32, pretrain_val_path=short_val / "val", global_batch_size=4,
                micro_batch_size=4, out=tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()
    # a shorter context where gsm8k holds a sample: the 20-token set is scored (a real number, not 0)
    losses = loss_on_shards(ckpt, short_val / "val", max_seq_length=16)
    assert set(losses) == {"main", "gsm8k", "precision"} and losses["gsm8k"]["loss"] > 1.0
    assert losses["precision"] == "32-true"  # (CPU: fp32 throughout, as the numbers before it was written)


def test_trainer_validation_over_no_tokens_is_no_data():
    """The trainer's validate() over an empty loader returns None (logged as "no data"), not 0."""
    from types import SimpleNamespace

    from midtrain.train.validation import validate

    fabric = SimpleNamespace(device=torch.device("cpu"), to_device=lambda t: t, all_reduce=lambda t, reduce_op: t,
                             world_size=1)
    model = torch.nn.Module()
    model.max_seq_length = 8
    assert validate(fabric, model, [], 4) is None



@pytest.mark.parametrize("loss", ["per_token_loss", "token_loss"])
def test_trainer_validation_is_the_mean_cross_entropy_over_every_token(loss):
    """validate() is the full-softmax mean cross-entropy over every token of the batches it is given (unequal
    batches weigh by tokens), with either form of the training loss: the chunked one or the one-expression one
    the trainer compiles (the loss is not a second definition, and no fp32 copy of the logits is made)."""
    from types import SimpleNamespace

    from litgpt import GPT, Config

    from midtrain.train import metrics
    from midtrain.train.validation import validate

    torch.manual_seed(0)
    model = GPT(Config(block_size=8, vocab_size=64, padded_vocab_size=64, n_layer=1, n_head=2, n_embd=16))
    model.max_seq_length = 8
    fabric = SimpleNamespace(device=torch.device("cpu"), all_reduce=lambda t, reduce_op: t, world_size=1)
    batches = [torch.randint(0, 64, (3, 9), dtype=torch.int32), torch.randint(0, 64, (1, 9), dtype=torch.int32)]
    got = validate(fabric, model, batches, 4, getattr(metrics, loss))
    with torch.no_grad():
        rows = torch.cat(batches).long()
        logits = model(rows[:, :8])
        want = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), rows[:, 1:].reshape(-1)).item()
    assert got == pytest.approx(want, rel=1e-6)
    assert validate(fabric, model, batches, 1, getattr(metrics, loss)) == pytest.approx(
        torch.nn.functional.cross_entropy(model(batches[0][:, :8].long()).reshape(-1, 64),
                                          batches[0][:, 1:].long().reshape(-1)).item(), rel=1e-6)

# ---- 3. gradient accumulation weighs tokens ----

def _encoded(tok_dir):
    from litgpt import Tokenizer

    from midtrain.posttrain.sft import encode_example

    tok = Tokenizer(tok_dir)
    pairs = [("1 plus 1 is", " 2."), ("the quick brown fox", " jumps over a lazy dog while seven small cats watch."),
             ("3 plus", " 4 is 7."), ("a", " b")]
    return [encode_example(tok, p, r, 32) for p, r in pairs]


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_accumulated_gradient_is_the_token_mean_of_the_global_batch_whatever_the_micro_batch(ckpt, tok_dir):
    """Before: each micro-batch mean was divided by the number of micro-batches; micro 4 vs 1 differed 13%."""
    from midtrain.posttrain.sft import IGNORE, accumulate_gradients, collate, load_checkpoint_model, scorable

    enc = _encoded(tok_dir)
    assert len({scorable(e) for e in enc}) == 4  # different response lengths: the case the old weighting got wrong
    model, _ = load_checkpoint_model(ckpt)
    reference = None
    for micro in (4, 2, 1):
        model.zero_grad(set_to_none=True)
        loss = accumulate_gradients(model, enc, micro, "cpu")
        g = _grads(model)
        if reference is None:
            reference = (loss, g)
            # and it is the plain token mean over the whole batch
            x, y = collate(enc)
            logits = model(x)
            expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                                         ignore_index=IGNORE)
            assert loss == pytest.approx(expected.item(), rel=1e-5)
        else:
            assert loss == pytest.approx(reference[0], rel=1e-5)
            assert torch.allclose(g, reference[1], rtol=1e-4, atol=1e-7), (micro, (g - reference[1]).abs().max())


def test_twenty_steps_give_the_same_model_with_micro_batch_4_or_1(ckpt, tok_dir):
    from midtrain.posttrain.sft import examples_loss, finetune, load_checkpoint_model

    enc = _encoded(tok_dir)
    vals = []
    for micro in (4, 1):
        torch.manual_seed(0)
        model, _ = load_checkpoint_model(ckpt)
        finetune(model, enc, 3e-3, 20, micro, 4, 0.1, 0.0, 0.0, 0, "cpu")
        vals.append(examples_loss(model, enc, 4, "cpu"))
    assert vals[0] == pytest.approx(vals[1], rel=1e-4, abs=1e-5), vals


# ---- 4. an SFT set smaller than the global batch ----

def test_sft_set_smaller_than_the_global_batch_is_one_line_before_the_sweep(tmp_path, ckpt):
    """Before: `ValueError: max() arg is an empty sequence` from collate after the model loaded, exit 1."""
    rows = [{"prompt": f"{i} plus 1 is", "response": f" {i + 1}."} for i in range(5)]
    train = jsonl(tmp_path / "five.jsonl", rows)
    held = jsonl(tmp_path / "held.jsonl", rows[:2])
    r = run_cli("sft", "--checkpoint", ckpt, "--data", train, "--val_data", held, "--test_data", held,
                "--global_batch_size", "16", "--micro_batch_size", "8", "--out", tmp_path / "m.json")
    one_line(r, "--global_batch_size: 16 is more than the 5 training examples")
    assert not (tmp_path / "m.json").exists()
    # 50 examples, 10% + 10% held out: 40 train with global batch 64
    rows = [{"prompt": f"{i} plus 2 is", "response": f" {i + 2}."} for i in range(50)]
    r = run_cli("sft", "--checkpoint", ckpt, "--data", jsonl(tmp_path / "fifty.jsonl", rows), "--global_batch_size",
                "64", "--micro_batch_size", "8")
    one_line(r, "--global_batch_size: 64 is more than the 40 training examples")


# ---- 5. extending a finished run in place ----

def test_extending_a_finished_run_in_place_is_refused_before_the_first_step(tmp_path, real_tree):
    """Before: a finished 40-step run re-run with max_steps 60 trained steps 41-55, then failed on
    "final: already exists" (exit 2, the extension lost, and again at every requeue)."""
    from support.runs import write_config

    cfg = write_config(tmp_path, real_tree, train={"max_steps": 6, "save_interval": 3})
    assert run_cli("pretrain", "--config", cfg).returncode == 0
    final = tmp_path / "base" / "final" / "lit_model.pth"
    before = final.read_bytes()
    r = run_cli("pretrain", "--config", cfg, "--train.max_steps", "10", "--resume", "auto")
    one_line(r, f"out_dir: {tmp_path / 'base' / 'final'} holds a finished run, and this config trains from step 6 to 10")
    assert "step 7" not in r.stdout and final.read_bytes() == before
    # the command the refusal names does it: a new folder continuing from final/
    r = run_cli("pretrain", "--config", cfg, "--train.max_steps", "10", "--out_dir", tmp_path / "extended",
                "--resume_from", tmp_path / "base" / "final")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "done: 10 steps" in r.stdout and (tmp_path / "extended" / "final").is_dir()
    # the same class through another option: a finished segment re-run with more max_additional_steps
    seg = write_config(tmp_path, real_tree, name="seg.yaml", train={"max_steps": 12, "max_additional_steps": 4,
                                                                    "save_interval": 2}, out_dir=str(tmp_path / "seg"))
    assert run_cli("pretrain", "--config", seg).returncode == 0
    r = run_cli("pretrain", "--config", seg, "--train.max_additional_steps", "6", "--resume", "auto")
    one_line(r, "holds a finished run, and this config trains from step 4 to 6")
    # and re-running the finished run as it was is still "already complete", exit 0
    r = run_cli("pretrain", "--config", seg, "--resume", "auto")
    assert r.returncode == 0 and "run already complete" in r.stdout, r.stderr
    # resume: false (a fresh start) in a folder that holds checkpoints: refused at start-up, not at the first save
    r = run_cli("pretrain", "--config", seg)
    one_line(r, f"resume: False, but {tmp_path / 'seg'} already holds checkpoints (newest final)")


# ---- 7. special-token text inside raw documents ----

def test_special_token_text_in_raw_documents_is_tokenised_as_text(tmp_path, tok_dir, ckpt):
    """Before: `prepare` on 2 documents, one holding the literal `<|endoftext|>` three times, wrote 5 EOS
    tokens (each literal became a document boundary). The same tokenisation feeds SFT and proximity."""
    from litgpt import Tokenizer

    from midtrain.posttrain.sft import encode_example
    from midtrain.tokenizer import load_tokenizer, special_token_texts

    docs = ["a plain first document about a lazy dog.",
            "code: s = '<|endoftext|>'; t = s + '<|endoftext|>' # and <|endoftext|> again"]
    src = jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in docs])
    r = run_cli("prepare", "--input", src, "--tokenizer_dir", tok_dir, "--out_dir", tmp_path / "shards",
                "--shard", "c1")
    assert r.returncode == 0, r.stderr
    assert "1 train document(s) contain a special token's text" in r.stdout, r.stdout
    tok = load_tokenizer(tok_dir)
    assert "<|endoftext|>" in special_token_texts(tok)
    from support.runs import shard_tokens

    ids = shard_tokens(tmp_path / "shards" / "c1")
    assert ids.count(tok.eos_id) == 2  # one after each document, none from the text
    assert tok.decode(torch.tensor(ids)).count("<|endoftext|>") == 3  # the literals survive as text (decode drops EOS)
    # litgpt's plain Tokenizer (what upstream does) would have made the literals special ids
    assert Tokenizer(tok_dir).encode(docs[1]).tolist().count(tok.eos_id) >= 2
    # SFT: a response quoting the literal keeps it as text; the only EOS is the one after the response
    ids, labels = encode_example(tok, "print the marker:", " '<|endoftext|>'", 64)
    assert ids.count(tok.eos_id) == 1 and ids[-1] == tok.eos_id
    # proximity tokenises raw text the same way: one EOS per document, none from the text
    from midtrain.analysis.counting import text_tokens

    stream = text_tokens([str(jsonl(tmp_path / "one.jsonl", [{"text": docs[1]}]))], str(tok_dir))
    assert stream.tolist().count(tok.eos_id) == 1
