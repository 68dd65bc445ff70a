"""`midtrain overlap`: planted near-duplicates are found (renamed entities, changed whitespace and case, a
13-gram inside a longer document, a short item inside a document), disjoint text gives no false positive,
and bad input is one line. Speed: bench/overlap.py."""

import json
import random

import numpy as np
import pytest

from support import run_cli
from midtrain.analysis import overlap as ov


def _words(rng, k):
    return " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "omega", "sigma", "tau", "rho", "phi", "chi",
                                "psi", "zeta", "eta", "theta", "iota", "kappa"]) + str(rng.randrange(50))
                    for _ in range(k))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.unit
def test_normalisation_and_entity_keys():
    assert ov.normalise("  Hello,\tWORLD!!\n x ") == "hello world x"
    assert ov.entity_key("Tom has 3 apples and gives Ann 1.5 of them.") == \
        ov.entity_key("Maria has 12 apples and gives Bob 7 of them.")
    assert ov.entity_key("Tom has 3 apples.") != ov.entity_key("Tom has 3 pears.")


@pytest.mark.unit
def test_planted_near_duplicates_are_found_and_disjoint_text_is_not(tmp_path):
    rng = random.Random(0)
    clean = [{"prompt": f"Question {i}: {_words(rng, 12)}", "response": f" {_words(rng, 10)}"} for i in range(40)]
    planted = {
        "case_space": {"prompt": "Compute the SUM of\tseven   and nine, then   double it please",
                       "response": " The answer is thirty two which we write as 32"},
        "inside_doc": {"prompt": "the quick brown fox jumps over the lazy dog near the river bank today",
                       "response": " and then it rests"},
        "renamed": {"prompt": "Xyzzy question nobody wrote before", "response": " Tom has 3 apples, so Ann has 5."},
        "short": {"prompt": "tiny", "response": " item"},
    }
    evals = clean + list(planted.values())
    write_jsonl(tmp_path / "test.jsonl", evals)
    corpus = [{"text": _words(rng, 200)} for _ in range(30)]
    corpus.append({"text": "compute the sum of seven and nine then double it please the answer is thirty two"})
    corpus.append({"text": _words(rng, 50) + " The Quick Brown Fox jumps over the LAZY dog near the river bank "
                   + _words(rng, 50)})
    corpus.append({"text": _words(rng, 30) + " Tiny, item! " + _words(rng, 30)})
    write_jsonl(tmp_path / "corpus.jsonl", corpus)
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": "another question", "response": " Maria has 12 apples, so Bob has 7."}]
                + [{"prompt": _words(rng, 8), "response": _words(rng, 8)} for _ in range(20)])
    res = ov.run_overlap([f"test={tmp_path / 'test.jsonl'}"],
                         [f"corpus={tmp_path / 'corpus.jsonl'}", f"train={tmp_path / 'train.jsonl'}"], n=13,
                         json_out=str(tmp_path / "o.json"))
    s = res["eval"]["test"]
    assert s["items"] == len(evals)
    assert s["ngram"] == {"corpus": 3, "train": 0} and s["ngram_any"] == 3  # case/space, inside a doc, short
    assert s["same_response"] == {"train": 1} and s["same_response_any"] == 1
    found = {e["index"] for e in s["examples"]}
    n_clean = len(clean)
    assert found == {n_clean, n_clean + 1, n_clean + 2, n_clean + 3}  # every planted item, no clean one
    assert json.loads((tmp_path / "o.json").read_text())["eval"]["test"]["ngram_any"] == 3
    assert res["words_read"]["corpus"] > 6000


@pytest.mark.unit
def test_hash_collisions_are_never_reported_and_batches_do_not_join_documents():
    items = [ov.EvalItem("e", 0, tuple("a b c d".split()))]
    index = ov.Index(items, n=4)
    # "a b" ends one document and "c d" starts the next: no n-gram spans them, whatever the batch size
    for batch in (1, 3, 1 << 20):
        items[0].hits.clear()
        index.scan("c", ["x y a b", "c d z"], batch_words=batch)
        assert items[0].hits == {}
    index.scan("c", ["x a b c d y"])
    assert items[0].hits == {"c": 1}
    # a forced collision (same hash, other words) is re-checked on the words and dropped
    table = index.by_length[4]
    h = next(iter(table))
    ids = np.asarray(index.vocab.encode("p q r s".split()), dtype=np.int64)
    _, (hp,) = ov._window_hashes(ids, 4)
    table[int(hp)] = table[h]
    index.sorted[4] = np.array(sorted(table), dtype=np.uint64)
    items[0].hits.clear()
    index.scan("c", ["p q r s"])
    assert items[0].hits == {}


def test_cli_and_bad_input_is_one_line(tmp_path):
    write_jsonl(tmp_path / "e.jsonl", [{"prompt": "what is two plus two", "response": " four"}])
    write_jsonl(tmp_path / "c.jsonl", [{"text": "We know that what is two plus two four is true."}])
    r = run_cli("overlap", "--eval", f"val={tmp_path / 'e.jsonl'}", "--against", f"web={tmp_path / 'c.jsonl'}")
    assert r.returncode == 0, r.stderr
    assert "| val | 1 | 1 (web: 1) | 0 (-) |" in r.stdout and "words read: web 11" in r.stdout
    (tmp_path / "shards" / "1").mkdir(parents=True)
    (tmp_path / "shards" / "1" / "index.json").write_text("{}")
    write_jsonl(tmp_path / "b.jsonl", [{"body": "what is two plus two"}])
    for args, needle in (
        (["--eval", f"val={tmp_path / 'nope.jsonl'}", "--against", f"web={tmp_path / 'c.jsonl'}"], "--eval: val="),
        (["--eval", f"val={tmp_path / 'e.jsonl'}", "--against", "web"], "--against: expected NAME=PATH"),
        (["--eval", f"val={tmp_path / 'e.jsonl'}", "--against", f"s={tmp_path / 'shards'}"], "holds token shards"),
        (["--eval", f"val={tmp_path / 'b.jsonl'}", "--against", f"web={tmp_path / 'c.jsonl'}"], "has no 'prompt'"),
        (["--eval", f"val={tmp_path / 'e.jsonl'}", "--against", f"web={tmp_path / 'c.jsonl'}", "--n", "0"], "--n: "),
    ):
        r = run_cli("overlap", *args)
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.unit
def test_a_corpus_is_read_as_prepare_reads_it(tmp_path):
    """Issue 30: `overlap --against` refused a folder of .py files that `prepare --input` reads. Both now read the
    same files of a folder the same way (midtrain.data.readers): .py/.md/.txt files as documents, JSONL rows, hidden
    folders (a clone's .git/) skipped, and one line naming the file for undecodable bytes."""
    rng = random.Random(2)
    items = [{"prompt": _words(rng, 10), "response": " " + _words(rng, 20)} for _ in range(4)]
    write_jsonl(tmp_path / "test.jsonl", items)
    code = tmp_path / "code"
    (code / "pkg").mkdir(parents=True)
    (code / "a.py").write_text("def f():\n    # " + _words(rng, 30) + "\n")
    (code / "pkg" / "b.py").write_text('"""' + items[1]["prompt"] + items[1]["response"] + '"""\n')
    (code / "README.md").write_text(_words(rng, 50))
    (code / ".git" / "objects").mkdir(parents=True)  # a clone's history: hidden, never a document (nor UTF-8)
    (code / ".git" / "objects" / "ab12").write_bytes(b"\x78\x9c\xff\xfe")
    res = ov.run_overlap([f"test={tmp_path / 'test.jsonl'}"], [f"code={code}"], n=13)
    assert res["eval"]["test"]["ngram_any"] == 1 and res["eval"]["test"]["examples"][0]["index"] == 1
    assert res["words_read"]["code"] == 30 + 2 + 10 + 20 + 50  # every file: a.py's "def f(): #" words too
    from midtrain.data.readers import input_units

    assert len(input_units([code])) == 3  # what prepare reads from the same folder
    (code / "latin1.py").write_bytes(b"x = 'caf\xe9'\n")
    r = run_cli("overlap", "--eval", f"t={tmp_path / 'test.jsonl'}", "--against", f"code={code}")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "latin1.py:1:" in r.stderr, r.stderr


def test_documents_with_text_are_checked_whole(tmp_path):
    """A corpus's val split (JSONL documents with "text", no prompt/response) is an evaluation set too: the demo
    checks its main val split this way."""
    rng = random.Random(1)
    docs = [{"text": _words(rng, 40)} for _ in range(5)]
    write_jsonl(tmp_path / "val.jsonl", docs)
    write_jsonl(tmp_path / "corpus.jsonl", [{"text": _words(rng, 30) + " " + docs[2]["text"][:200]}])
    s = ov.run_overlap([f"val={tmp_path / 'val.jsonl'}"], [f"corpus={tmp_path / 'corpus.jsonl'}"], n=13)["eval"]["val"]
    assert s["items"] == 5 and s["ngram_any"] == 1 and s["examples"][0]["index"] == 2
    write_jsonl(tmp_path / "bad.jsonl", [{"body": "x"}])
    r = run_cli("overlap", "--eval", f"bad={tmp_path / 'bad.jsonl'}", "--against", f"c={tmp_path / 'corpus.jsonl'}")
    assert r.returncode == 2 and "has no 'prompt' and 'response' (nor \"text\")" in r.stderr


@pytest.mark.unit
def test_the_demo_corpora_are_cleaned_against_each_other_and_every_sft_item():
    """``clean_corpora`` walks main > books > code > math: a document sharing a 13-gram with a later corpus or any
    SFT item (train, val or test) is dropped from the earlier corpus, and disjoint ones stay."""
    from midtrain.demo.data import clean_corpora

    rng = random.Random(2)
    shared = _words(rng, 15)
    sft_text = _words(rng, 20)
    corpora = {"main": [_words(rng, 50), _words(rng, 20) + " " + shared, _words(rng, 10) + " " + sft_text[:120],
                        _words(rng, 50)],
               "books": [_words(rng, 30)], "code": [shared + " " + _words(rng, 10)], "math": [_words(rng, 30)]}
    sft = {"t": {"train": [], "val": [], "test": [{"prompt": sft_text, "response": " x"}]}}
    out, dropped = clean_corpora(corpora, sft)
    assert dropped == {"main": 2, "books": 0, "code": 0, "math": 0}
    assert out["main"] == [corpora["main"][0], corpora["main"][3]] and out["code"] == corpora["code"]
