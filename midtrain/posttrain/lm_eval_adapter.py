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
    """``batch_size`` (log-likelihood) requests per forward pass, longest first, right-padded (the model is causal,
    so a row's scores do not depend on what follows it); greedy generation with litgpt's KV cache where prompt and
    answer fit the context; forward passes in ``precision`` (``midtrain.posttrain.numerics``)."""

    def __init__(self, checkpoint: Path, tokenizer_dir: Optional[Path] = None, batch_size: int = 1,
                 precision: Optional[str] = None) -> None:
        super().__init__()
        from midtrain.posttrain import numerics
        from midtrain.posttrain.sft import load_checkpoint_model
        from midtrain.tokenizer import check_tokenizer_fits, load_tokenizer

        if batch_size < 1:
            raise ConfigError("--batch_size", f"must be >= 1, got {batch_size}")
        self.model, self.config = load_checkpoint_model(checkpoint)
        self.tokenizer = load_tokenizer(tokenizer_dir or checkpoint, "--tokenizer_dir")
        check_tokenizer_fits(self.tokenizer, self.config.padded_vocab_size, "--tokenizer_dir")
        self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = numerics.resolve(precision, self._device)
        self.model.to(self._device).eval()
        self.max_length = self.config.block_size
        self.model.max_seq_length = self.max_length
        self.batch_size = batch_size

    def _forward(self, x: torch.Tensor, input_pos: Optional[torch.Tensor] = None, maxp1: Optional[int] = None):
        from midtrain.posttrain import numerics

        with numerics.forward_context(self.precision, self._device):  # (the caller upcasts the rows it scores:
            return self.model(x, input_pos, input_pos_maxp1=maxp1)      # a whole [B, T, V] in fp32 is GBs)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, bos=False).tolist() if text else []

    def _row(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        """(model input, the continuation tokens it scores): the last ``max_length`` + 1 tokens of the request."""
        if not continuation:
            raise ConfigError("lm-eval", "a request with an empty continuation")
        if len(continuation) > self.max_length:  # its first tokens would have no position in the window
            raise ConfigError("lm-eval", f"a continuation of {len(continuation)} tokens is longer than the model's "
                              f"block_size {self.max_length}: it cannot be scored in one window (choose tasks whose "
                              "answers fit, or a model with a longer context)")
        if not context:  # score the first token from the EOS "document boundary"
            context = [self.tokenizer.eos_id]
        tokens = (context + continuation)[-(self.max_length + 1):]
        return tokens[:-1], tokens[-len(continuation):]

    @torch.no_grad()
    def _score_all(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), whether every continuation token is the argmax) per pair, in
        the order given; ``batch_size`` rows per forward pass, the longest first."""
        rows = [self._row(context, continuation) for context, continuation in pairs]  # every refusal before scoring
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        out: list = [None] * len(rows)
        for at in range(0, len(order), self.batch_size):
            chunk = order[at:at + self.batch_size]
            width = len(rows[chunk[0]][0])
            x = torch.zeros(len(chunk), width, dtype=torch.long)
            for j, i in enumerate(chunk):
                x[j, :len(rows[i][0])] = torch.tensor(rows[i][0])
            logits = self._forward(x.to(self._device))
            for j, i in enumerate(chunk):
                inputs, target = rows[i]
                n, end = len(target), len(inputs)
                scored = logits[j, end - n:end].float()
                t = torch.tensor(target, device=self._device)
                logp = F.log_softmax(scored, dim=-1)
                out[i] = (logp.gather(1, t[:, None]).sum(), (scored.argmax(-1) == t).all())
        return [(float(lp), bool(greedy)) for lp, greedy in out]  # one read back per request, after the forwards

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        return self._score_all([(self.encode(context), self.encode(continuation))
                                for context, continuation in (r.args for r in requests)])

    def loglikelihood_rolling(self, requests) -> list[float]:
        windows, owner = [], []
        for k, req in enumerate(requests):
            tokens = self.encode(req.args[0])
            start = 0
            while start < len(tokens):  # disjoint windows, each conditioned on as much as precedes it as fits
                window = tokens[start:start + self.max_length]
                windows.append((tokens[max(0, start - (self.max_length + 1 - len(window))):start], window))  # (what
                # _row keeps of the context: the window's conditioning, not the whole prefix per window)
                owner.append(k)
                start += len(window)
        totals = [0.0] * len(requests)
        for k, (logp, _) in zip(owner, self._score_all(windows)):
            totals[k] += logp
        return totals

    @torch.no_grad()
    def _greedy(self, tokens: list[int], max_new: int, until: list[str]) -> list[int]:
        """Greedy continuation of ``tokens``: up to ``max_new`` tokens, ending at EOS or once a stop sequence
        appears. Where prompt and answer fit the context, each new token is one cached forward (litgpt's KV
        cache); a longer one slides its window and recomputes it per token, as lm-eval's HF model does."""
        new: list[int] = []
        if max_new <= 0:
            return new

        def done(nxt: int) -> bool:
            if nxt == self.tokenizer.eos_id:
                return True
            new.append(nxt)
            return any(u in self.tokenizer.decode(torch.tensor(new)) for u in until) or len(new) == max_new

        if len(tokens) + max_new > self.max_length:
            while True:
                x = torch.tensor((tokens + new)[-self.max_length:], device=self._device)[None]
                if done(int(self._forward(x)[0, -1].float().argmax())):
                    return new
        self.model.set_kv_cache(batch_size=1, max_seq_length=len(tokens) + max_new, device=self._device)
        try:
            pos = torch.arange(len(tokens), device=self._device)
            logits = self._forward(torch.tensor(tokens, device=self._device)[None], pos, len(tokens))[:, -1:]
            while not done(int(logits[0, -1].float().argmax())):
                at = len(tokens) + len(new) - 1
                logits = self._forward(torch.tensor([[new[-1]]], device=self._device),
                                       torch.tensor([at], device=self._device), at + 1)
        finally:
            self.model.clear_kv_cache()
        return new

    def generate_until(self, requests) -> list[str]:
        out = []
        for req in requests:
            context, kwargs = req.args
            until = stop_sequences(kwargs.get("until"))
            new = self._greedy(self.encode(context) or [self.tokenizer.eos_id], int(kwargs.get("max_gen_toks", 64)),
                               until)
            text = self.tokenizer.decode(torch.tensor(new)) if new else ""
            for u in until:
                text = text.split(u)[0]
            out.append(text)
        return out
