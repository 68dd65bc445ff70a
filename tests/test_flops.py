"""Issue 31, item 1: FLOPs per token without the input embedding, and a dense peak table that knows the H200."""

import pytest

from midtrain.study.params import gpt_param_count, litgpt_config
from midtrain.train import flops as F

pytestmark = pytest.mark.unit  # the fast tier: `make test-unit`

# The Pythia paper (Biderman et al. 2023, table 1): total and non-embedding parameters (non-embedding leaves out
# the input embedding and the untied output projection, V x d each), layers, width, padded vocabulary
PYTHIA = {
    "pythia-70m": (70_426_624, 18_915_328, 6, 512, 50_304),
    "pythia-160m": (162_322_944, 85_056_000, 12, 768, 50_304),
    "pythia-410m": (405_334_016, 302_311_424, 24, 1024, 50_304),
    "pythia-1b": (1_011_781_632, 805_736_448, 16, 2048, 50_304),
    "pythia-1.4b": (1_414_647_808, 1_208_602_624, 24, 2048, 50_304),
    "pythia-2.8b": (2_775_208_960, 2_517_652_480, 32, 2560, 50_304),
    "pythia-6.9b": (6_857_302_016, 6_444_163_072, 32, 4096, 50_432),
    "pythia-12b": (11_846_072_320, 11_327_027_200, 36, 5120, 50_688),
}
# by hand, at seq 2048: 6 x (non-embedding + the output projection V x d) + 12 x L x d x 2048
BY_HAND = {"pythia-70m": 343_523_328, "pythia-160m": 968_629_248, "pythia-410m": 2_726_916_096,
           "pythia-1b": 6_257_860_608}


@pytest.mark.parametrize("name", sorted(PYTHIA))
def test_flops_per_token_leaves_out_the_input_embedding_for_every_pythia_size(name):
    total, non_embedding, layers, width, vocab = PYTHIA[name]
    c = litgpt_config(name)
    assert (c.n_layer, c.n_embd, c.padded_vocab_size) == (layers, width, vocab)
    assert gpt_param_count(c) == total  # litgpt's model is the paper's
    matmul = F.non_embedding_params(total, vocab, width)
    assert matmul == non_embedding + vocab * width  # the lm_head is a matmul and counts; the lookup does not
    fpt = F.flops_per_token(matmul, layers, width, 2048)
    assert fpt == 6 * (non_embedding + vocab * width) + 12 * layers * width * 2048
    if name in BY_HAND:
        assert fpt == BY_HAND[name]
    # what counting the lookup overstated MFU by: +45% at 70M down to ~+10% at 1B (the figures)
    over = (6 * total + 12 * layers * width * 2048) / fpt - 1
    assert {"pythia-70m": 0.45, "pythia-160m": 0.24, "pythia-410m": 0.11, "pythia-1b": 0.10}.get(name, over) == \
        pytest.approx(over, abs=0.01)


def test_tied_embeddings_count_the_shared_matrix_once():
    assert F.non_embedding_params(1000, 10, 8, tied=True) == 1000
    assert F.non_embedding_params(1000, 10, 8) == 920


@pytest.mark.parametrize("device, dtype, peak", [
    ("NVIDIA H200", "bf16", 989.4e12),          # what torch reports on an H200 SXM: known, dense
    ("NVIDIA H200 NVL", "bf16", 835.5e12),
    ("NVIDIA H100 80GB HBM3", "bf16", 989.4e12),  # H100 SXM
    ("NVIDIA H100 PCIe", "bf16", 756e12),
    ("NVIDIA H100 NVL", "tf32", 417.5e12),
    ("NVIDIA GH200 480GB", "bf16", 989.4e12),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312e12),
    ("NVIDIA A100 80GB PCIe", "tf32", 156e12),
    ("NVIDIA A100-SXM4-40GB", "fp32", 19.5e12),
    ("NVIDIA B200", "bf16", 2250e12),
    ("NVIDIA L40S", "fp16", 362.05e12),
])
def test_peak_table_is_dense_and_matches_torch_names(device, dtype, peak):
    assert F.peak_flops(device, dtype) == pytest.approx(peak)
    assert F.mfu_note(device, dtype) is None


def test_unknown_gpus_and_dtypes_say_so_never_nan():
    assert F.peak_flops("NVIDIA GeForce GTX 1080", "bf16") is None
    assert F.mfu_note("NVIDIA GeForce GTX 1080", "bf16") == "MFU: unknown GPU NVIDIA GeForce GTX 1080"
    assert F.peak_flops("NVIDIA B200", "fp32") == pytest.approx(75e12)
    assert F.peak_flops("NVIDIA GB200", "bf16") == pytest.approx(2500e12)  # not the B200's row
    assert F.mfu_note("NVIDIA L40S", "fp64") == "MFU: no fp64 peak for NVIDIA L40S"
    assert F.mfu_note("NVIDIA H200", None) == "MFU: no known peak for NVIDIA H200"


def test_the_precision_picks_the_peak_dtype():
    assert F.dtype_of("bf16-mixed") == F.dtype_of("bf16-true") == "bf16"
    assert F.dtype_of("16-mixed") == "fp16"
    assert F.dtype_of("32-true") == "fp32" and F.dtype_of("32-true", "high") == "tf32"
    assert F.dtype_of("64-true") is None
    # MFU: achieved FLOP/s over the world's peak
    assert F.mfu(10_000, 6e9, 989.4e12, 8) == pytest.approx(10_000 * 6e9 / (8 * 989.4e12))
