"""A litgpt checkpoint as an lm-evaluation-harness ``LM``: log-likelihoods straight from the model.

litgpt's own wrapper converts to an HF model first, which needs the HF ``config.json`` of a hub
model; this one reads our checkpoints (any ``model_config.yaml``) and a litgpt tokenizer folder, so
it works offline on locally trained models. Multiple-choice and perplexity tasks use
``loglikelihood``/``loglikelihood_rolling``; ``generate_until`` decodes greedily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM

from midtrain.errors import ConfigError


def stop_sequences(until) -> list[str]:
    """A task's ``generation_kwargs.until`` as a list: a string is one stop sequence, as lm-eval's own models
    read it (iterated as it was, ``until: "Question:"`` stopped at the first "o": lm-eval-harness#699, #1608)."""
    if until is None:
        return []
    if isinstance(until, str):
        return [until]
    if isinstance(until, (list, tuple)) and all(isinstance(u, str) for u in until):
        return list(until)
    from midtrain.errors import ConfigError

    raise ConfigError("generation_kwargs.until", f"expected a string or a list of strings, got {until!r}")


class LitLM(LM):
    def __init__(self, checkpoint: Path, tokenizer_dir: Optional[Path] = None, batch_size: int = 1) -> None:
        super().__init__()
        from midtrain.posttrain.sft import load_checkpoint_model
        from midtrain.tokenizer import check_tokenizer_fits, load_tokenizer

        self.model, self.config = load_checkpoint_model(checkpoint)
        self.tokenizer = load_tokenizer(tokenizer_dir or checkpoint, "--tokenizer_dir")
        check_tokenizer_fits(self.tokenizer, self.config.padded_vocab_size, "--tokenizer_dir")
        self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self._device).eval()
        self.max_length = self.config.block_size
        self.model.max_seq_length = self.max_length
        self.batch_size = batch_size

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, bos=False).tolist() if text else []

    @torch.no_grad()
    def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """(sum of log p(continuation | context), whether every continuation token is the argmax)."""
        if not continuation:
            raise ConfigError("lm-eval", "a request with an empty continuation")
        if len(continuation) > self.max_length:  # its first tokens would have no position in the window
            raise ConfigError("lm-eval", f"a continuation of {len(continuation)} tokens is longer than the model's "
                              f"block_size {self.max_length}: it cannot be scored in one window (choose tasks whose "
                              "answers fit, or a model with a longer context)")
        if not context:  # score the first token from the EOS "document boundary"
            context = [self.tokenizer.eos_id]
        tokens = (context + continuation)[-(self.max_length + 1):]
        n = len(continuation)
        x = torch.tensor(tokens[:-1], device=self._device)[None]
        logits = self.model(x)[0, -n:].float()
        target = torch.tensor(tokens[-n:], device=self._device)
        logp = F.log_softmax(logits, dim=-1)
        return float(logp.gather(1, target[:, None]).sum()), bool((logits.argmax(-1) == target).all())

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [(self.encode(context), self.encode(continuation)) for context, continuation in (r.args for r in requests)]
        longest = max((len(c) for _, c in pairs), default=0)
        if longest > self.max_length:  # refused before any request is scored
            self._score([], [0] * longest)
        return [self._score(context, continuation) for context, continuation in pairs]

    def loglikelihood_rolling(self, requests) -> list[float]:
        out = []
        for req in requests:
            tokens = self.encode(req.args[0])
            total, start = 0.0, 0
            while start < len(tokens):  # disjoint windows, each conditioned on as much as precedes it as fits
                window = tokens[start:start + self.max_length]
                total += self._score(tokens[:start], window)[0]
                start += len(window)
            out.append(total)
        return out

    @torch.no_grad()
    def generate_until(self, requests) -> list[str]:
        out = []
        for req in requests:
            context, kwargs = req.args
            until = stop_sequences(kwargs.get("until"))
            max_new = int(kwargs.get("max_gen_toks", 64))
            tokens = self.encode(context) or [self.tokenizer.eos_id]
            new: list[int] = []
            for _ in range(max_new):
                x = torch.tensor((tokens + new)[-self.max_length:], device=self._device)[None]
                nxt = int(self.model(x)[0, -1].argmax())
                if nxt == self.tokenizer.eos_id:
                    break
                new.append(nxt)
                text = self.tokenizer.decode(torch.tensor(new))
                if any(u in text for u in until):
                    break
            text = self.tokenizer.decode(torch.tensor(new)) if new else ""
            for u in until:
                text = text.split(u)[0]
            out.append(text)
        return out
