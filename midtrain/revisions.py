"""What a public checkpoint's revision name says: the optimizer step, and the tokens seen where the name has them.

Families publish intermediate checkpoints under names that encode where in training each was saved. ``parse``
reads a name (a Hugging Face branch, a repo name, or the folder a user downloaded it into, which usually holds
it) with one entry of ``SCHEMES`` per naming scheme. Pure: no I/O. Guarantees, each tested on real published
names (tests/test_revisions.py lists them with where each list was read):

- the schemes exclude each other; in a longer name (a folder ``pythia-160m-step100000``) the last match is read;
- ``step`` is the optimizer step the publisher names, exact unless ``Revision.rounded`` (TinyLlama names steps
  in thousands: ``step-480k``);
- ``tokens`` is the publisher's token count (rounded as they round it; OLMo rounds up or down, TinyLlama to
  a tenth of a trillion), never a count computed here;
- a scheme whose number is not a step (Amber's ``ckpt_NNN``, a data-chunk index) gives ``step=None`` with the
  tokens its chunks hold, so that a given ``--step`` can still be checked.

``tokens_agree`` is the one check of a schedule's tokens against a name's: within the rounding the name shows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Revision:
    scheme: Optional[str]
    """The naming scheme that matched (a key of ``SCHEMES``; None: a name in no published scheme)."""
    step: Optional[int]
    """The optimizer step the name gives (None: the name's number is not a step)."""
    tokens: Optional[float]
    """Tokens seen at the checkpoint as the name states them (None: not in the name)."""
    token_unit: Optional[float] = None
    """The place of the name's last written digit, in tokens (1e9 for ``tokens84B``, 1e11 for ``1.5T``)."""
    rounded: bool = False
    """The step is rounded by the publisher (``step-480k``): give ``--step`` for the exact one."""
    stage: Optional[int] = None
    """The training stage the name names (OLMo 2's ``stage2-…``: its steps restart at the stage's start)."""
    note: str = ""
    """What the reader must know about this scheme (said by ``midtrain import``)."""


def _unit(number: str, suffix: str) -> tuple[float, float]:
    scale = {"b": 1e9, "t": 1e12}[suffix.lower()]
    decimals = len(number.split(".")[1]) if "." in number else 0
    return float(number) * scale, scale / 10 ** decimals


def _olmo(m: re.Match) -> Revision:
    tokens, unit = _unit(m["tokens"], "B")
    stage = int(m["stage"]) if m["stage"] else None
    note = ("OLMo 2's stage 2 (its own mid-training): steps count from the stage's start, so the run config must "
            "describe that stage's schedule" if stage and stage > 1 else "")
    return Revision("olmo", int(m["step"]), tokens, unit, stage=stage, note=note)


def _tinyllama(m: re.Match) -> Revision:
    tokens, unit = _unit(m["tokens"], m["unit"])
    return Revision("tinyllama", int(m["k"]) * 1000, tokens, unit, rounded=True,
                    note="TinyLlama names its steps in thousands: the step is rounded")


def _smollm2(m: re.Match) -> Revision:
    return Revision("smollm2", int(m["step"]), None)


def _pythia(m: re.Match) -> Revision:
    return Revision("pythia", int(m["step"]), None)


AMBER_CHUNK_TOKENS = 1_706_976 * 2048  # sequences of 2048 tokens per data chunk (LLM360/amber-train main.py)


def _amber(m: re.Match) -> Revision:
    chunks = int(m["index"]) + 1
    return Revision("amber", None, float(chunks * AMBER_CHUNK_TOKENS), float(AMBER_CHUNK_TOKENS),
                    note=f"Amber's ckpt_NNN counts data chunks (after {chunks} of 360, ~3.5B tokens each), not "
                         "optimizer steps")


_END = r"(?=$|[-/_.])"
# (pattern, reader, where the scheme is documented). The patterns exclude each other (a step followed by
# "-tokens" is OLMo's, one followed by "k" TinyLlama's): tests/test_revisions.py checks every listed published
# name against every pattern.
SCHEMES = {
    "olmo": (re.compile(r"(?:^|[-_/])(?:stage(?P<stage>\d+)-)?(?:ingredient\d+-)?step(?P<step>\d+)-tokens"
                        r"(?P<tokens>\d+)B" + _END), _olmo,
             "OLMo model cards: 'The naming convention is step1000-tokens4B'; OLMo 2: stage1-/stage2-ingredientN-"),
    "tinyllama": (re.compile(r"(?:^|[-_/])step-(?P<k>\d+)[kK]-(?:token-)?(?P<tokens>\d+(?:\.\d+)?)(?P<unit>[bBtT])"
                             + _END), _tinyllama,
                  "jzhang38/TinyLlama README: TinyLlama-1.1B-intermediate-step-480k-1T, ...-step-955k-token-2T"),
    "smollm2": (re.compile(r"(?:^|[-_/])step-(?P<step>\d+)(?![\dkK])" + _END), _smollm2,
                "HuggingFaceTB/SmolLM2-*-intermediate-checkpoints cards: revision step-160000"),
    "pythia": (re.compile(r"(?:^|[-_/])step(?P<step>\d+)(?!\d)(?!-tokens)" + _END), _pythia,
               "EleutherAI/pythia README: branches step0, step1, step2, step4, ... step512, step1000, ... step143000"),
    "amber": (re.compile(r"(?:^|[-_/])ckpt_(?P<index>\d{3})(?!\d)" + _END), _amber,
              "LLM360/Amber card: revisions ckpt_000 to ckpt_358"),
}


def parse(name: str) -> Optional[Revision]:
    """The revision a name holds (the last match in the name; None: no published scheme matches)."""
    best = None
    for scheme, (pattern, read, _) in SCHEMES.items():
        for m in pattern.finditer(name):
            if best is None or m.start() > best[0].start():
                best = (m, read)
    return best[1](best[0]) if best else None


def tokens_agree(revision: Revision, tokens: float, tokens_per_step: float) -> bool:
    """Whether a schedule's ``tokens`` at the checkpoint agree with the name's, within the rounding the name shows:
    a whole unit of its last digit for names in billions (OLMo rounds up as well as down: stage 1's 4.19B is
    ``tokens5B``), half of it for larger units (TinyLlama's ``1.5T``, Amber's data chunk), 1% where the step is
    rounded (``step-480k``), one step's tokens, and 0.1% of the tokens: allenai/OLMo-1B-hf's names count up to
    0.07% fewer tokens than step x 4,194,304 (``step720000-tokens3018B`` against 3,019.9B; allenai/OLMo-1B's own
    names round the product: ``step330000-tokens1384B`` where -hf says 1383B), a difference far below what a wrong
    batch or sequence length makes."""
    if revision.tokens is None:
        return True
    unit = revision.token_unit or 0.0
    slack = max(unit if unit <= 1e9 else unit / 2, 0.01 * revision.tokens if revision.rounded else 0.0,
                tokens_per_step, 0.001 * revision.tokens)
    return abs(tokens - revision.tokens) <= slack
