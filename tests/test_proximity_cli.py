"""`midtrain proximity`: shards read directly, raw text tokenised like `prepare`, seeded sampling, errors."""

import json

import numpy as np
import pytest

from support import run_cli
from midtrain.analysis import counting
from midtrain.analysis import proximity as px
from midtrain.data.prepare import prepare_shard, write_token_shard
from midtrain.errors import ConfigError

PROSE = [f"The river {i} runs past the old mill and the quiet town of number {i * 3}." for i in range(80)]
CODE = [f"def f{i}(x):\n    return x * {i} + sum(range({i}))\n" for i in range(80)]
MATH = [f"Question: what is {i} plus {i * 2}? Answer: {i} + {i * 2} = {i * 3}." for i in range(80)]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    from midtrain.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("prox")
    tok = train_bpe((PROSE + CODE + MATH) * 2, root / "tok", vocab_size=500)
    out = {"tok": tok}
    for name, docs in (("main", PROSE), ("code", CODE), ("math", MATH)):
        raw = root / "raw" / f"{name}.jsonl"
        raw.parent.mkdir(exist_ok=True)
        raw.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        prepare_shard([str(raw)], str(tok), str(root / "shards"), {"main": "1", "code": "c1", "math": "m1"}[name])
        out[name] = raw
    out["shards"] = root / "shards"
    return out


@pytest.mark.unit
def test_sample_ranges_are_seeded_disjoint_and_sized():
    whole = counting.sample_ranges(10_000, None, 0)
    assert whole == [(0, 10_000)] and counting.sample_ranges(10_000, 10_000, 3) == whole
    r = counting.sample_ranges(100_000, 7_000, seed=1, block=1000)
    assert sum(e - s for s, e in r) == 7_000
    assert all(a[1] <= b[0] for a, b in zip(r, r[1:]))
    assert r == counting.sample_ranges(100_000, 7_000, seed=1, block=1000)
    assert r != counting.sample_ranges(100_000, 7_000, seed=2, block=1000)


@pytest.mark.unit
def test_counts_are_bincounts_of_the_stream(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 300, size=rng.integers(10, 400)).tolist() for _ in range(60)]
    write_token_shard(tmp_path / "s", docs, chunk_tokens=1500)
    stream = np.concatenate([np.array(d) for d in docs])
    whole = counting.count_dataset("s", tmp_path / "s", None, 0)
    assert whole.tokens == whole.total == len(stream)
    assert np.array_equal(whole.counts, np.bincount(stream))
    # a sample: the same ranges of the same stream, whichever chunk boundaries they cross
    sampled = counting.count_dataset("s", tmp_path / "s", 5000, seed=4)
    ranges = counting.sample_ranges(len(stream), 5000, 4)
    expect = np.bincount(np.concatenate([stream[s:e] for s, e in ranges]), minlength=len(sampled.counts))
    assert sampled.tokens == 5000 and np.array_equal(sampled.counts, expect)


def test_shards_and_raw_text_agree(sets, tmp_path):
    common = ["--targets", f"t_math={sets['math']}", "--tokenizer_dir", sets["tok"], "--max_tokens", "null"]
    a = run_cli("proximity", "--data", f"main={sets['shards'] / '1'}", f"code={sets['shards'] / 'c1'}",
                "--mixtures", "code20=main:0.8,code:0.2", "--json", tmp_path / "a.json", *common)
    b = run_cli("proximity", "--data", f"main={sets['main']}", f"code={sets['code']}",
                "--mixtures", "code20=main:0.8,code:0.2", "--json", tmp_path / "b.json", *common)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    ja, jb = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert ja["sets"]["main"]["source"] == "shards" and jb["sets"]["main"]["source"] == "text"
    assert ja["rows"] == jb["rows"]
    by = {r["mixture"]: r for r in ja["rows"]}
    assert by["main"]["advantage/cosine"] == 0 and by["main"]["advantage/jsd"] == 0
    assert "| code20 | t_math |" in a.stdout and "cosine" in a.stdout.splitlines()[0]


def test_identical_target_and_disjoint_sets(sets, tmp_path):
    write_token_shard(tmp_path / "lo", [[1, 2, 3, 4] * 10], chunk_tokens=100)
    write_token_shard(tmp_path / "hi", [[7, 8, 9] * 10], chunk_tokens=100)
    r = run_cli("proximity", "--data", f"main={tmp_path / 'lo'}", "--targets", f"same={tmp_path / 'lo'}",
                f"other={tmp_path / 'hi'}", "--json", tmp_path / "o.json")
    assert r.returncode == 0, r.stderr
    rows = {row["target"]: row for row in json.loads((tmp_path / "o.json").read_text())["rows"]}
    assert rows["same"]["jsd"] == 0 and rows["same"]["cosine"] == pytest.approx(1)
    assert rows["other"]["jsd"] == 1 and rows["other"]["cosine"] == 0


@pytest.mark.unit
def test_advantage_rises_with_the_domain_weight(sets):
    from midtrain.analysis.run_proximity import run_proximity

    weights = [0.0, 0.1, 0.3, 0.6, 1.0]
    res = run_proximity([f"main={sets['shards'] / '1'}", f"math={sets['shards'] / 'm1'}"],
                        [f"gsm={sets['math']}"], [f"w{w}=main:{1 - w},math:{w}" for w in weights if 0 < w < 1],
                        tokenizer_dir=str(sets["tok"]), max_tokens=None)
    by = {r["mixture"]: r for r in res["rows"]}
    names = ["main"] + [f"w{w}" for w in weights[1:-1]] + ["math"]
    for m in px.MEASURES:
        adv = [by[n][f"advantage/{m}"] for n in names]
        assert adv == sorted(adv) and adv[-1] > 0, (m, adv)


@pytest.mark.parametrize("args, needle", [
    (["--data", "main", "--targets", "t=X"], "--data: 'main' is not NAME=VALUE"),
    (["--data", "main=/nope", "--targets", "t=/nope"], "main: /nope does not exist"),
    (["--data", "main=@S", "--targets", "t=@S", "--mixtures", "m=main:0.5,zz:0.5"], "'zz' is not a --data name"),
    (["--data", "main=@S", "--targets", "t=@S", "--reference", "c4"], "--reference: 'c4'"),
    (["--data", "main=@S", "--targets", "t=@S", "--measure", "kl"], "--measure: 'kl'"),
    (["--data", "main=@S", "--targets", "t=@S", "--max_tokens", "0"], "--max_tokens: must be >= 1"),
    (["--data", "main=@S", "--targets", "main=@S"], "also a --data name"),
    (["--data", "main=@R", "--targets", "t=@S"], "give --tokenizer_dir"),
])
def test_bad_input_is_one_line(sets, args, needle):
    args = [a.replace("@S", str(sets["shards"] / "1")).replace("@R", str(sets["main"])) for a in args]
    r = run_cli("proximity", *args)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.unit
def test_unreadable_shard_is_an_error_not_placeholder(tmp_path):
    write_token_shard(tmp_path / "s", [[1, 2, 3] * 50], chunk_tokens=100)
    chunk = next((tmp_path / "s").glob("*.bin"))
    chunk.write_bytes(chunk.read_bytes()[:20])
    with pytest.raises(ConfigError, match="truncated"):
        counting.count_dataset("s", tmp_path / "s", None, 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no token shard"):
        counting.shard_segments(tmp_path / "empty")
    with pytest.raises(ConfigError, match="give --tokenizer_dir"):  # an empty folder is not silently zero counts
        counting.count_dataset("e", tmp_path / "empty", None, 0)


@pytest.mark.unit
def test_a_prompt_response_target_is_counted_as_the_study_report_counts_an_sft_task(sets, tmp_path):
    """Issue 30: `--targets` given an SFT file (prompt/response JSONL) failed on its missing "text" field, though the
    study report measures the same file's proximity. Both now count it one way: prompt + response per example
    (counting.sft_counts)."""
    from midtrain.analysis.run_proximity import run_proximity
    from midtrain.tokenizer import load_tokenizer

    sft = tmp_path / "gsm.jsonl"
    sft.write_text("".join(json.dumps({"prompt": m.split(" Answer:")[0], "response": " Answer:" + m.split(" Answer:")[1]})
                           + "\n" for m in MATH))
    counts = counting.count_dataset("gsm", sft, None, 0, tokenizer_dir=str(sets["tok"]))
    want = counting.sft_counts(sft, load_tokenizer(sets["tok"]))
    assert counts.source == "sft" and np.array_equal(counts.counts[:len(want)], want) and not counts.counts[len(want):].any()
    res = run_proximity([f"main={sets['shards'] / '1'}", f"math={sets['shards'] / 'm1'}"], [f"gsm={sft}"], [],
                        tokenizer_dir=str(sets["tok"]), max_tokens=None)
    by = {r["mixture"]: r for r in res["rows"]}
    assert by["math"]["advantage/cosine"] > 0  # math shards are nearer to the math task than main is
