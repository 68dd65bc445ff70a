"""Build tiny real Hugging Face checkpoints offline (run with the extras venv's python, which has transformers):

    python tests/hf_models.py OUT TOKENIZER_DIR

OUT/neox: GPTNeoXForCausalLM (safetensors, one file); OUT/olmo2: Olmo2ForCausalLM (safetensors, sharded);
OUT/smollm2, OUT/tinyllama, OUT/llama32: LlamaForCausalLM in the shapes of SmolLM2 (GQA, tied embeddings, its
nanotron keys), TinyLlama (untied, one key/value head) and Llama 3.2 (tied, llama3 RoPE scaling, head_dim);
OUT/olmo1: OlmoForCausalLM (OLMo 1B's tied embeddings, weightless LayerNorm); each with the tokenizer files copied in and OUT/<name>/reference.pt = {"input_ids", "logits"} on a fixed batch.
With `pythia OUT`: OUT/pythia-14m, a GPTNeoXForCausalLM with EleutherAI/pythia-14m's config.json values (its
padded 50,304-row vocabulary) and a 50,277-token tokenizer.json, as the hub's Pythia checkpoints pair them.
With `logits MODEL_DIR OUT.pt [...]`: the logits of `AutoModelForCausalLM.from_pretrained(MODEL_DIR)` (a folder that
`midtrain evaluate export-hf` wrote) on the same batch."""

import shutil
import sys
from pathlib import Path

import torch
import transformers

NEOX = dict(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            rotary_pct=0.25, max_position_embeddings=64, use_parallel_residual=True, layer_norm_eps=1e-5,
            rotary_emb_base=10000, tie_word_embeddings=False, hidden_act="gelu")
OLMO2 = dict(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
             intermediate_size=64, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=500000.0,
             tie_word_embeddings=False, attention_bias=False, bos_token_id=None, eos_token_id=0, pad_token_id=1)


# tiny models with each family's distinguishing features (the published config.json values they mirror: SmolLM2-
# 360M's, TinyLlama-1.1B's, Llama-3.2-1B's and OLMo-1B-hf's; widths shrunk)
SMOLLM2 = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=96, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=100000.0,
               tie_word_embeddings=True, hidden_act="silu", attention_bias=False, pretraining_tp=1,
               is_llama_config=True, rope_interleaved=False)
TINYLLAMA = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                 intermediate_size=96, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
                 tie_word_embeddings=False, hidden_act="silu", pretraining_tp=1)
LLAMA32 = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               head_dim=16, intermediate_size=96, max_position_embeddings=131072, rms_norm_eps=1e-5,
               tie_word_embeddings=True, hidden_act="silu", mlp_bias=False, attention_bias=False,
               rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
OLMO1 = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
             intermediate_size=96, max_position_embeddings=64, rope_theta=10000.0, tie_word_embeddings=True,
             attention_bias=False, clip_qkv=None, pad_token_id=1, eos_token_id=0)
FAMILIES = (("neox", "GPTNeoX", NEOX, None), ("olmo2", "Olmo2", OLMO2, "60KB"), ("smollm2", "Llama", SMOLLM2, None),
            ("tinyllama", "Llama", TINYLLAMA, "60KB"), ("llama32", "Llama", LLAMA32, None), ("olmo1", "Olmo", OLMO1, None))


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 400, (2, 24), generator=g)


def build(out: Path, tok: Path) -> None:
    for name, kind, kwargs, shard in FAMILIES:
        cls, cfg_cls = getattr(transformers, f"{kind}ForCausalLM"), getattr(transformers, f"{kind}Config")
        torch.manual_seed(0)
        model = cls(cfg_cls(**kwargs)).eval()
        with torch.no_grad():  # non-trivial norms and biases, so a mis-mapped weight shows in the logits
            for n, p in model.named_parameters():
                if "norm" in n or n.endswith(".bias"):
                    p.add_(0.1 * torch.randn_like(p))
        d = out / name
        model.save_pretrained(d, safe_serialization=True, **({"max_shard_size": shard} if shard else {}))
        for f in tok.iterdir():
            shutil.copy(f, d / f.name)
        x = batch()
        with torch.no_grad():
            torch.save({"input_ids": x, "logits": model(x).logits}, d / "reference.pt")


# EleutherAI/pythia-14m's config.json (the hub's values; random init here, no network)
PYTHIA_14M = dict(vocab_size=50304, hidden_size=128, num_hidden_layers=6, num_attention_heads=4,
                  intermediate_size=512, rotary_pct=0.25, rotary_emb_base=10000, max_position_embeddings=2048,
                  use_parallel_residual=True, layer_norm_eps=1e-5, tie_word_embeddings=False, hidden_act="gelu",
                  bos_token_id=0, eos_token_id=0)
PYTHIA_TOKENS = 50277  # the Pythia tokenizer's size: the last 27 embedding rows are padding


def pythia(out: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    torch.manual_seed(0)
    model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**PYTHIA_14M)).eval()
    d = out / "pythia-14m"
    model.save_pretrained(d, safe_serialization=True)
    tok = Tokenizer(WordLevel({("<|endoftext|>" if i == 0 else f"w{i}"): i for i in range(PYTHIA_TOKENS)},
                              unk_token="<|endoftext|>"))
    tok.pre_tokenizer = WhitespaceSplit()
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(  # Pythia's, as the hub serves it
        '{"add_prefix_space": false, "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", '
        '"name_or_path": "EleutherAI/gpt-neox-20b", "tokenizer_class": "GPTNeoXTokenizer", "unk_token": "<|endoftext|>"}')
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, PYTHIA_TOKENS, (2, 24), generator=g)
    with torch.no_grad():
        torch.save({"input_ids": x, "logits": model(x).logits}, d / "reference.pt")


def logits(model_dir: Path, out: Path) -> None:
    """What a user does with `midtrain evaluate export-hf`'s folder: from_pretrained, then a forward."""
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        torch.save({"logits": model(batch()).logits}, out)


if __name__ == "__main__":
    if sys.argv[1] == "logits":  # logits MODEL_DIR OUT.pt [MODEL_DIR OUT.pt ...]
        for model_dir, out in zip(sys.argv[2::2], sys.argv[3::2]):
            logits(Path(model_dir), Path(out))
    elif sys.argv[1] == "pythia":
        pythia(Path(sys.argv[2]))
    else:
        build(Path(sys.argv[1]), Path(sys.argv[2]))
