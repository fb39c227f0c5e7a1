"""Does a Slurm request fit the partition? A pure check over ``sinfo`` output, and the thin ``sinfo`` caller.

Slurm does not refuse every impossible request: ``--gres=gpu:1`` on a GPU-less partition and ``--mem`` above
the nodes' memory are refused by ``sbatch``, but ``--cpus-per-task`` above the nodes' CPUs, or a time limit above
the partition's, is accepted and stays PENDING forever, and a sweep waits on it without a word. So the launcher
asks ``sinfo`` first (one line per node configuration of each partition) and refuses a request for which some
resource exceeds what every node offers, naming the override (and environment variable) to change.

A node fits when ``tasks_per_node × cpus_per_task ≤ CPUs``, ``mem_gb × 1024 ≤ RealMemory`` (MB),
``GPUs requested ≤ gpu gres count`` and ``timeout_min ≤ the partition's time limit``; the partition must have
``nodes`` nodes.
"""
from __future__ import annotations

import logging
import math
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vitquant.errors import UserError

log = logging.getLogger("vitquant")

SINFO_FORMAT = "%P|%c|%m|%G|%l|%D"
# The launcher keys that conf/hydra/launcher/slurm.yaml also reads from the environment.
ENV = {"partition": "VITQUANT_SLURM_PARTITION", "gpus_per_node": "VITQUANT_SLURM_GPUS",
       "cpus_per_task": "VITQUANT_SLURM_CPUS", "mem_gb": "VITQUANT_SLURM_MEM_GB",
       "timeout_min": "VITQUANT_SLURM_TIME_MIN"}


@dataclass(frozen=True)
class NodeKind:
    """One line of ``sinfo``: ``nodes`` nodes of one configuration in ``partition``."""

    partition: str
    default: bool
    cpus: int
    memory_mb: int
    gpus: int
    gres: str
    time_limit_min: float   # math.inf when unlimited
    time_limit_text: str
    nodes: int


@dataclass(frozen=True)
class Request:
    """What one job of the sweep asks for, from the launcher parameters."""

    partition: str | None = None
    nodes: int = 1
    tasks_per_node: int = 1
    cpus_per_task: int = 1
    gpus: int = 0
    mem_gb: float | None = None
    timeout_min: float = 60

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Request:
        tasks = int(params.get("tasks_per_node") or 1)
        gpus = int(params.get("gpus_per_node") or 0) or gpu_count(str(params.get("gres") or "")) \
            or int(params.get("gpus_per_task") or 0) * tasks
        mem = params.get("mem_gb")
        return cls(partition=params.get("partition") or None, nodes=int(params.get("nodes") or 1),
                   tasks_per_node=tasks, cpus_per_task=int(params.get("cpus_per_task") or 1), gpus=gpus,
                   mem_gb=None if mem is None else float(mem), timeout_min=float(params.get("timeout_min") or 60))


def leading_int(text: str) -> int:
    """``"64000+"`` → 64000 (sinfo appends ``+`` to the minimum of a mixed line), ``"(null)"`` → 0."""
    match = re.match(r"\d+", text.strip())
    return int(match.group()) if match else 0


def gpu_count(gres: str) -> int:
    """GPUs in a gres string: ``gpu:a100:4(S:0-1),gpu:2,shard:8`` → 6; ``(null)`` → 0."""
    total = 0
    for item in re.sub(r"\([^)]*\)", "", gres).split(","):
        parts = item.strip().split(":")
        if parts[0] == "gpu":
            total += leading_int(parts[-1]) if len(parts) > 1 and parts[-1][:1].isdigit() else 1
    return total


def time_limit_minutes(text: str) -> float:
    """Slurm's time format → minutes: ``infinite``/``UNLIMITED`` → inf, ``D-HH[:MM[:SS]]``, ``HH:MM:SS``,
    ``MM:SS``, ``MM``."""
    text = text.strip()
    if text.lower() in ("infinite", "unlimited", "n/a", ""):
        return math.inf
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:  # after a day count the first field is hours
        h, m, s = (parts + [0, 0])[:3]
    else:
        h, m, s = {1: (0, parts[0], 0), 2: (0, *parts), 3: tuple(parts)}[len(parts)]
    return int(days or 0) * 1440 + h * 60 + m + s / 60


def parse_sinfo(text: str) -> list[NodeKind]:
    """Lines of ``sinfo -h -o '%P|%c|%m|%G|%l|%D'`` → node kinds (the default partition's name ends with ``*``)."""
    kinds = []
    for line in text.splitlines():
        if not line.strip():
            continue
        partition, cpus, memory, gres, limit, nodes = line.strip().split("|")
        kinds.append(NodeKind(partition=partition.rstrip("*"), default=partition.endswith("*"),
                              cpus=leading_int(cpus), memory_mb=leading_int(memory), gpus=gpu_count(gres),
                              gres=gres, time_limit_min=time_limit_minutes(limit), time_limit_text=limit,
                              nodes=leading_int(nodes)))
    return kinds


def override(key: str, value: Any) -> str:
    """``hydra.launcher.<key>=<value> (or <ENV>=<value>)``: the two ways to change a launcher setting."""
    env = f" (or {ENV[key]}={value})" if key in ENV else ""
    return f"hydra.launcher.{key}={value}{env}"


def partition_kinds(request: Request, kinds: Sequence[NodeKind]) -> tuple[str, list[NodeKind]]:
    """The partition the job would go to (the default one when none is set) and its node kinds."""
    names = list(dict.fromkeys(k.partition for k in kinds))
    name = request.partition or next((k.partition for k in kinds if k.default), None)
    if name is None:
        raise UserError(f"no Slurm partition given and the cluster has no default one: set "
                        f"{override('partition', '<name>')} (partitions: {', '.join(names)})")
    mine = [k for k in kinds if k.partition == name]
    if not mine:
        raise UserError(f"hydra.launcher.partition={name} is not a partition of this cluster (sinfo lists "
                        f"{', '.join(names) or 'none'}): set {override('partition', '<name>')}")
    return name, mine


def misfits(request: Request, name: str, kinds: Sequence[NodeKind]) -> list[str]:
    """One phrase per requested resource that no node of the partition offers (empty when all fit)."""
    found = []
    cpus, gpus = max(k.cpus for k in kinds), max(k.gpus for k in kinds)
    need_cpus = request.tasks_per_node * request.cpus_per_task
    if request.gpus > gpus:
        gres = ", ".join(dict.fromkeys(k.gres for k in kinds))
        cpu_profile = " or use hydra/launcher=slurm_cpu" if gpus == 0 else ""
        found.append(f"{request.gpus} GPUs per node requested but partition {name}'s nodes have {gpus} (gres {gres}): "
                     f"set {override('gpus_per_node', gpus)}{cpu_profile}, or pick a GPU partition with "
                     f"{override('partition', '<name>')}")
    if need_cpus > cpus:
        fix = max(cpus // request.tasks_per_node, 1)
        found.append(f"{need_cpus} CPUs per node requested (cpus_per_task={request.cpus_per_task} x "
                     f"tasks_per_node={request.tasks_per_node}) but partition {name}'s nodes have {cpus}: set "
                     f"{override('cpus_per_task', fix)}")
    memory_mb = max(k.memory_mb for k in kinds)
    if request.mem_gb is not None and request.mem_gb * 1024 > memory_mb:
        found.append(f"mem_gb={request.mem_gb:g} requested but partition {name}'s nodes have "
                     f"{memory_mb / 1024:.1f} GB: set {override('mem_gb', memory_mb // 1024)}")
    limit = max(kinds, key=lambda k: k.time_limit_min)
    if request.timeout_min > limit.time_limit_min:
        found.append(f"timeout_min={request.timeout_min:g} exceeds partition {name}'s time limit "
                     f"{limit.time_limit_text}: set {override('timeout_min', int(limit.time_limit_min))}")
    total_nodes = sum(k.nodes for k in kinds)
    if request.nodes > total_nodes:
        found.append(f"nodes={request.nodes} requested but partition {name} has {total_nodes}: set "
                     f"hydra.launcher.nodes={total_nodes}")
    if not found and not any(fits(request, k) for k in kinds):
        found.append(f"no single node kind of partition {name} offers {need_cpus} CPUs, {request.gpus} GPUs and "
                     f"{request.mem_gb} GB together: lower hydra.launcher.cpus_per_task/gpus_per_node/mem_gb")
    return found


def fits(request: Request, kind: NodeKind) -> bool:
    return (request.tasks_per_node * request.cpus_per_task <= kind.cpus and request.gpus <= kind.gpus
            and (request.mem_gb is None or request.mem_gb * 1024 <= kind.memory_mb)
            and request.timeout_min <= kind.time_limit_min)


def check_request(request: Request, kinds: Sequence[NodeKind]) -> None:
    """Raise a one-line ``UserError`` when the request cannot start on its partition."""
    name, mine = partition_kinds(request, kinds)
    problems = misfits(request, name, mine)
    if problems:
        raise UserError("Slurm request does not fit, nothing submitted: " + "; ".join(problems))


def query_sinfo(timeout_s: float = 30) -> list[NodeKind] | None:
    """Node kinds of every partition from ``sinfo``; None (check skipped, with a warning) when it cannot answer."""
    if shutil.which("sinfo") is None:
        log.warning("sinfo not found: the Slurm request is not checked before submitting")
        return None
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", SINFO_FORMAT], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("sinfo did not answer in %.0f s: the Slurm request is not checked", timeout_s)
        return None
    if proc.returncode != 0:
        log.warning("sinfo failed (%s): the Slurm request is not checked", proc.stderr.strip()[:200])
        return None
    return parse_sinfo(proc.stdout)
