"""ShardedMixedDataset on real litdata shards (written with litdata.optimize, private temp folders)."""

import math

import pytest
import torch
import yaml

from midtrain.data.sharded_mixed import ShardedMixedDataset
from midtrain.errors import ConfigError

pytestmark = pytest.mark.unit  # the fast tier: `make test-unit`


def source_of(batch: torch.Tensor) -> list[int]:
    """Shard tokens were written with offsets 0 (main/1), 100 (main/2), 200 (c1), 300 (m1)."""
    return (batch[:, 0] // 100).tolist()


@pytest.mark.parametrize("mixer", ["exact", "litdata"])
def test_realised_shares_within_3_sigma(real_tree, mixer):
    data = ShardedMixedDataset(data_path=real_tree, mix_weights_str="main:0.6,code:0.3,math:0.1", num_workers=0, seed=3,
                               mixer=mixer)
    data.connect(batch_size=8, max_seq_length=15)
    counts = [0, 0, 0, 0]
    n = 0
    for batch in data.train_dataloader():
        assert (batch // 100 == batch[:, :1] // 100).all()  # every sample is a block of one shard
        for src in source_of(batch):
            counts[src] += 1
        n += len(batch)
        if n >= 3000:
            break
    target = {0: 0.3, 1: 0.3, 2: 0.3, 3: 0.1}
    for src, p in target.items():
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(counts[src] - n * p) <= 3 * sigma, (src, counts, n)


@pytest.mark.parametrize("mixer", ["exact", "litdata"])
def test_literal_and_single_source(real_tree, mixer):
    data = ShardedMixedDataset(data_path=real_tree, literal_weights_str="m1:1", num_workers=0, mixer=mixer)
    data.connect(batch_size=4, max_seq_length=9)
    batch = next(iter(data.train_dataloader()))
    assert batch.shape == (4, 10) and set(source_of(batch)) == {3}


def test_val_loaders_per_set(real_tree):
    data = ShardedMixedDataset(data_path=real_tree, val_data_path=real_tree.parent / "val", num_workers=0)
    data.connect(batch_size=2, max_seq_length=9)
    loaders = data.val_dataloaders()
    assert list(loaders) == ["main", "code", "gsm8k"]
    firsts = {name: int(next(iter(dl))[0, 0]) // 100 for name, dl in loaders.items()}
    assert firsts == {"main": 0, "code": 2, "gsm8k": 4}
    assert data.val_dataloader() is not None  # litgpt's single loader: the main set
    assert int(next(iter(data.val_dataloader()))[0, 0]) < 100


@pytest.mark.parametrize("mixer,where", [("exact", r".*/m1: "), ("litdata", "data_path: ")])
def test_token_id_outside_vocab_is_a_clear_error(real_tree, mixer, where):
    data = ShardedMixedDataset(data_path=real_tree, mix_weights_str="main:0.5,math:0.5", num_workers=0, vocab_size=300,
                               mixer=mixer)
    data.connect(batch_size=2, max_seq_length=9)
    with pytest.raises(ConfigError, match="^" + where + r"token id 3\d\d is outside the vocabulary \[0, 300\)"):
        for _ in data.train_dataloader():
            pass


def test_token_id_outside_vocab_in_a_validation_set_names_the_set(real_tree):
    """gsm8k's ids are 400-499: with a vocabulary of 450 the error names that set and its folder."""
    data = ShardedMixedDataset(data_path=real_tree, val_data_path=real_tree.parent / "val", num_workers=0,
                               vocab_size=450)
    data.connect(batch_size=2, max_seq_length=9)
    for name, loader in data.val_dataloaders().items():
        if name != "gsm8k":
            assert sum(1 for _ in loader) > 0
            continue
        with pytest.raises(ConfigError, match=r"^val_data_path: validation set 'gsm8k' \(.*/val/gsm8k\): token id 4\d\d "
                                              r"is outside the vocabulary \[0, 450\)"):
            for _ in loader:
                pass


def test_shard_smaller_than_one_sample(fake_tree):
    base = fake_tree({"1": [10]})
    data = ShardedMixedDataset(data_path=base, num_workers=0)
    data.connect(batch_size=2, max_seq_length=64)
    with pytest.raises(ConfigError, match="not one sample of 65 tokens"):
        data.setup()


def test_original_class_path_resolves_through_midtrain_cli(real_tree):
    from jsonargparse import ArgumentParser
    from litgpt.data import DataModule

    from midtrain.run_args import install_litgpt_alias

    install_litgpt_alias()
    parser = ArgumentParser()
    parser.add_argument("--data", type=DataModule)
    cfg = parser.parse_object({"data": {"class_path": "litgpt.data.ShardedMixedDataset",
                                        "init_args": {"data_path": str(real_tree), "mix_weights_str": "main:1"}}})
    data = parser.instantiate_classes(cfg).data
    assert isinstance(data, ShardedMixedDataset) and data.mix_weights_str == "main:1"


def test_works_under_upstream_litgpt_pretrain(real_tree, tmp_path):
    """`class_path: midtrain.data.ShardedMixedDataset` through litgpt's own parser and data path."""
    import lightning as L
    from jsonargparse import ArgumentParser
    from litgpt import pretrain

    parser = ArgumentParser()
    parser.add_function_arguments(pretrain.setup)
    cfg_file = tmp_path / "litgpt.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "model_name": "pythia-14m",
        "data": {"class_path": "midtrain.data.ShardedMixedDataset",
                 "init_args": {"data_path": str(real_tree), "mix_weights_str": "main:0.5,code:0.5", "num_workers": 0}},
        "train": {"micro_batch_size": 2, "max_tokens": 1000, "max_seq_length": 15}}))
    cfg = parser.parse_path(str(cfg_file))
    init = parser.instantiate_classes(cfg)
    fabric = L.Fabric(devices=1, accelerator="cpu")
    train_dl, val_dl = pretrain.get_dataloaders(fabric, init.data, None, init.train, 15)
    train_dl, _ = fabric.setup_dataloaders(train_dl, train_dl)
    batch = next(iter(train_dl))
    assert batch.shape == (2, 16)
    assert set(source_of(batch)) <= {0, 1, 2}
    assert train_dl._dataloader.state_dict()["samples"] == 2  # what litgpt checkpoints


@pytest.mark.parametrize("mix_block", [None, 8])
def test_under_upstream_litgpt_the_block_is_said_and_mix_block_makes_every_step_exact(real_tree, tmp_path, capsys,
                                                                                      mix_block):
    """litgpt's connect() has no global batch: the block in use is printed; mix_block = global batch is exact."""
    import lightning as L
    from jsonargparse import ArgumentParser
    from litgpt import pretrain

    parser = ArgumentParser()
    parser.add_function_arguments(pretrain.setup)
    init_args = {"data_path": str(real_tree), "mix_weights_str": "main:0.75,code:0.25", "num_workers": 0}
    if mix_block:
        init_args["mix_block"] = mix_block
    cfg = parser.parse_object({"model_name": "pythia-14m",
                               "data": {"class_path": "midtrain.data.ShardedMixedDataset", "init_args": init_args},
                               "train": {"micro_batch_size": 2, "global_batch_size": 8, "max_tokens": 10000,
                                         "max_seq_length": 15}})
    init = parser.instantiate_classes(cfg)
    fabric = L.Fabric(devices=1, accelerator="cpu")
    train_dl, _ = pretrain.get_dataloaders(fabric, init.data, None, init.train, 15)
    out = capsys.readouterr().out
    if mix_block is None:
        assert "exact per block of 1024 samples" in out and "mix_block" in out
        return
    assert "exact per block" not in out
    it = iter(train_dl)
    for _ in range(20):  # 20 optimizer steps of 4 micro-batches x 2: code is 2 of every 8 samples, always
        step = torch.cat([next(it) for _ in range(4)])
        assert sum(1 for s in source_of(step) if s == 2) == 2
