"""What each study step asks a scheduler for. Pure (no I/O, no torch).

Guarantees:
- **The run config is the one source of a training step's shape.** A pretrain segment or midtrain
  arm gets ``--nodes`` = ``num_nodes`` (1 when unset), ``--ntasks-per-node`` = ``devices`` and, unless
  its config says ``accelerator: cpu``, ``--gpus-per-node`` = ``devices``; the step runner launches it
  with ``srun``, one process per device, so its world size is ``devices × num_nodes``.
- **An SFT step's shape is its ``sft.options``.** ``devices`` (default 1) × ``num_nodes`` (default 1) tasks, one
  GPU each when the base run is on GPU, launched with ``srun`` when there is more than one (``midtrain sft``
  checks that the process count is the one its options name).
- **Single-process steps ask for one task.** Eval and lm-eval get one node, one task and one GPU when the base
  run is on GPU; the report gets one task and no GPU.
- **Contradictions are refused, never merged.** A shape option (``nodes``, ``ntasks``,
  ``ntasks-per-node``, ``gpus``, ``gpus-per-node``, ``gres``) given in ``slurm.options``, in a kind's
  section or on the command line must equal the derived value for every step it applies to;
  otherwise ``ConfigError`` names both values. Nothing is submitted before this check.
- Other options (partition, time, account, qos, cpus-per-task, mem, constraint, ...) come from the
  shared ``slurm.options``, then the kind's section (``slurm.pretrain``, ``midtrain``, ``sft``,
  ``eval``, ``lm_eval``, ``report``), then the command line (``--slurm``), the later winning.
- **A GPU step gets a CPU and memory share per GPU unless the spec names one** (``gpu_share``):
  ``cpus-per-task`` = the run's data-loader workers + 2 (the rank's main thread, pinning and NCCL
  threads), and ``mem-per-gpu`` = 16 GiB + (4 + 16 / devices) bytes per parameter (the fp32 model a
  rank builds at init, and its share of the full fp32 weights-and-AdamW state gathered on the node
  for a checkpoint). Without them a scheduler gives one core per task: the main thread, 8 loader
  workers and NCCL on one core. Any of ``mem``/``mem-per-cpu``/``mem-per-gpu`` replaces the memory share.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

from midtrain.errors import ConfigError
from midtrain.study.kinds import SECTIONS, TRAINING  # noqa: F401 (the kinds' sections and training kinds)

SHAPE = ("nodes", "ntasks", "ntasks-per-node", "gpus", "gpus-per-node", "gres")
KIND_OPTIONS = {"partition", "time", "account", "qos", "cpus-per-task", "mem", "mem-per-cpu", "mem-per-gpu",
                "constraint", "reservation", "exclude", "nodelist", "comment", "exclusive", *SHAPE}
OWNED = {"array", "dependency", "output", "error", "job-name", "parsable", "wait", "requeue", "signal", "open-mode"}
# options that would give each task a slice of the node's GPUs: Lightning's rank r uses cuda:r of the node's
PER_TASK_GPU = {"gpus-per-task", "ntasks-per-gpu", "gpu-bind"}


@dataclass(frozen=True)
class Allocation:
    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    options: dict = field(default_factory=dict)   # the other sbatch options, resolved
    srun: bool = False                            # launch with srun (one task per device)
    gpu_type: str | None = None                   # e.g. a100 from gpus-per-node: a100:8

    @property
    def tasks(self) -> int:
        return self.nodes * self.tasks_per_node

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def sbatch_args(self) -> list[str]:
        args = [f"--nodes={self.nodes}", f"--ntasks-per-node={self.tasks_per_node}"]
        if self.gpus_per_node:
            args.append(f"--gpus-per-node={self.gpu_type + ':' if self.gpu_type else ''}{self.gpus_per_node}")
        for k, v in self.options.items():
            if k in SHAPE or v is None or v is False:
                continue
            args.append(f"--{k}" if v is True else f"--{k}={v}")
        return args

    def describe(self) -> str:
        gpu = (f", {self.gpus_per_node}{' ' + self.gpu_type if self.gpu_type else ''} GPU/node" if self.gpus_per_node
               else ", no GPU")
        extra = ", ".join(f"{k}={v}" for k, v in self.options.items() if k not in SHAPE)
        launch = ", srun" if self.srun else ""
        return f"{self.nodes} node(s) x {self.tasks_per_node} task(s){gpu}{launch}" + (f"; {extra}" if extra else "")

    def key(self) -> tuple:
        return (self.nodes, self.tasks_per_node, self.gpus_per_node, tuple(sorted(self.options.items())), self.srun,
                self.gpu_type)


def run_shape(config: Mapping, where: str) -> tuple[int, int, bool]:
    """(devices per node, nodes, on GPU) of a run config; refuses what a scheduler cannot be asked for."""
    devices = config.get("devices", 1)
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ConfigError(f"{where}: devices", f"a study step needs the number of devices per node (an integer >= 1), "
                          f"got {devices!r}")
    nodes = config.get("num_nodes")
    nodes = 1 if nodes is None else nodes
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise ConfigError(f"{where}: num_nodes", f"expected an integer >= 1, got {nodes!r}")
    accelerator = config.get("accelerator", "auto")
    if accelerator not in ("auto", "cuda", "cpu"):
        raise ConfigError(f"{where}: accelerator", f"expected auto, cuda or cpu, got {accelerator!r}")
    return devices, nodes, accelerator != "cpu"


def sft_ranks(options: Mapping) -> tuple[int, int]:
    """(devices per node, nodes) of an SFT step from its ``sft.options``; refuses what is not a count."""
    out = []
    for key in ("devices", "num_nodes"):
        value = options.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"sft.options.{key}", f"expected an integer >= 1, got {value!r}")
        out.append(value)
    return out[0], out[1]


def step_ranks(kind: str, config: Mapping) -> tuple[int, int] | None:
    """The (devices, nodes) a step's own config gives it: an SFT step's options; None for the others."""
    return sft_ranks(config.get("options") or {}) if kind == "sft" else None


def check_options(options: Mapping, where: str, allowed: set[str] | None = None) -> dict:
    """An options mapping (sbatch long names without ``--``); refuses what the executor owns."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ConfigError(where, f"expected a mapping of sbatch options, got {type(options).__name__}")
    out = {}
    for k, v in options.items():
        k = str(k).lstrip("-").replace("_", "-")
        if k in OWNED:
            raise ConfigError(f"{where}.{k}", "is set by the study executor (arrays, dependencies, logs, requeue)")
        if k in PER_TASK_GPU:
            raise ConfigError(f"{where}.{k}", "would give each task a slice of the node's GPUs, but each rank uses "
                              "cuda:<local rank> of all of them: the executor asks for --gpus-per-node = devices")
        if allowed is not None and k not in allowed:
            raise ConfigError(f"{where}.{k}", f"unknown option here (known: {', '.join(sorted(allowed))})")
        if isinstance(v, (dict, list)):
            raise ConfigError(f"{where}.{k}", f"expected a value, got {v!r}")
        out[k] = v
    return out


def _shape_value(alloc: Allocation, key: str):
    if key == "nodes":
        return alloc.nodes
    if key == "ntasks":
        return alloc.tasks
    if key == "ntasks-per-node":
        return alloc.tasks_per_node
    if key == "gpus":
        return alloc.gpus
    if key == "gpus-per-node":
        return alloc.gpus_per_node
    return f"gpu:{alloc.gpus_per_node}" if alloc.gpus_per_node else None  # gres


def _same(given, derived) -> bool:
    if derived is None:
        return given in (None, 0, "0", False)
    text = str(given).strip()
    if isinstance(derived, int):
        m = re.fullmatch(r"(?:[\w-]+:)?(\d+)", text)  # gpus-per-node may be written type:count
        return bool(m) and int(m.group(1)) == derived
    return text == str(derived) or (text.startswith("gpu:") and text.rsplit(":", 1)[-1] == str(derived).rsplit(":", 1)[-1])


GPU_SHARE_BASE_GIB = 16
MEMORY_OPTIONS = ("mem", "mem-per-cpu", "mem-per-gpu")


def gpu_share(run_config: Mapping, params: int | None, devices: int) -> dict:
    """The default ``cpus-per-task`` and ``mem-per-gpu`` of a GPU task (see the module docstring). Pure."""
    data = run_config.get("data") if isinstance(run_config.get("data"), Mapping) else {}
    init = data.get("init_args") if isinstance(data.get("init_args"), Mapping) else data
    workers = init.get("num_workers", 8) if isinstance(init, Mapping) else 8
    workers = workers if isinstance(workers, int) and not isinstance(workers, bool) and workers >= 0 else 8
    per_param = 4 + 16 / max(1, devices)
    gib = GPU_SHARE_BASE_GIB + (-(-int(per_param * params) // 2**30) if params else 16)
    return {"cpus-per-task": workers + 2, "mem-per-gpu": f"{gib}G"}


def allocation(kind: str, run_config: Mapping, slurm: Mapping, cli: Mapping | None = None,
               where: str = "step", params: int | None = None, ranks: tuple[int, int] | None = None) -> Allocation:
    """The allocation of one step. ``run_config``: the training step's config, or the base run's for the others;
    ``params``: the model's parameter count (for the default memory share of a GPU task); ``ranks``: an SFT step's
    (devices, nodes) (``step_ranks``)."""
    devices, nodes, gpu = run_shape(run_config, where)
    if kind in TRAINING:
        base = Allocation(nodes, devices, devices if gpu else 0, srun=True)
    elif kind == "sft" and ranks is not None:
        devices, nodes = ranks
        base = Allocation(nodes, devices, devices if gpu else 0, srun=devices * nodes > 1)
    elif kind == "report":
        base = Allocation(1, 1, 0)
    else:
        base = Allocation(1, 1, 1 if gpu else 0)
    layers = [("slurm.options", slurm.get("options") or {}),
              (f"slurm.{SECTIONS[kind]}", slurm.get(SECTIONS[kind]) or {}), ("--slurm", cli or {})]
    options: dict = {}
    gpu_type = None
    for source, opts in layers:
        for k, v in opts.items():
            if k in ("gpus", "gpus-per-node", "gres") and isinstance(v, str) and v.count(":") >= (2 if k == "gres" else 1):
                gpu_type = v.split(":")[-2]  # gpus-per-node: a100:8, gres: gpu:a100:8 -> a100 (kept, never dropped)
            if k in SHAPE:
                derived = _shape_value(base, k)
                if not _same(v, derived):
                    what = ("from its run config (devices/num_nodes/accelerator)" if kind in TRAINING else
                            "from sft.options (devices/num_nodes)" if kind == "sft" else "(one process)")
                    raise ConfigError(f"{source}.{k}", f"{v!r} contradicts {kind} step {where}: {k}="
                                      f"{derived if derived is not None else 'none'} {what}; the executor derives "
                                      "the shape of every step: remove it" + (" or change the run config"
                                                                               if kind in TRAINING else ""))
            options[k] = v
    if base.gpus_per_node:
        share = gpu_share(run_config, params, base.tasks_per_node)
        options.setdefault("cpus-per-task", share["cpus-per-task"])
        if not any(k in options for k in MEMORY_OPTIONS):
            options["mem-per-gpu"] = share["mem-per-gpu"]
    return Allocation(base.nodes, base.tasks_per_node, base.gpus_per_node,
                      {k: v for k, v in options.items() if k not in SHAPE}, base.srun,
                      gpu_type if base.gpus_per_node else None)
