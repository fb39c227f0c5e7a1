"""The task contract: what every task (``conf/task/*.yaml``'s ``_target_``) implements.

A task owns one benchmark: it builds the float model, draws calibration images and evaluates a
model. The pipelines (``calibrate.py``, ``evaluate.py``, ``train.py``, ``export.py``) talk to a task
only through :class:`Task`, so a new task is a subclass plus a config file (see ``docs/tasks.md``).

Two parts run at different times:

* **Before any work** (the entry scripts' pre-flight, before Hydra creates a run folder):
  :func:`check_task` composes nothing heavy — it checks the task's options against its constructor
  and calls the class's :meth:`Task.check_config`, which refuses a model or data set of another
  task and a missing optional stack, each with one line naming the bad value and the fix.
* **During the run**: the instance's :meth:`~Task.build_model`, :meth:`~Task.calibration_images`
  and :meth:`~Task.evaluate`; its :attr:`~Task.metric_keys` (primary first) say which of
  ``evaluate``'s keys are quality metrics, and :attr:`~Task.primary_metric` is the number an
  entry script returns (what Hydra sweepers optimise).
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from vitquant.errors import UserError

BOOKKEEPING_KEYS = ("_target_", "name")  # task config keys that are not constructor options


class Task(ABC):
    """Model + data + evaluation of one benchmark.

    Class attributes: ``can_train`` (``train.py`` can fine-tune its models with QAT) and
    ``compares_to_reference`` (``evaluate`` measures label-free fidelity against a float ``reference``,
    so evaluating a checkpoint builds the float model too). Instance
    attributes (set by ``__init__`` or as class attributes): ``metric_keys`` — the quality metrics
    ``evaluate`` returns, primary first —, ``primary_metric`` (= ``metric_keys[0]``) and
    ``primary_needs_reference`` (the primary metric exists only against the float ``reference``: label-free
    data, where QAT's epoch scores and the final score are fidelity to the float model).
    """

    can_train: ClassVar[bool] = False
    compares_to_reference: ClassVar[bool] = False
    primary_needs_reference: bool = False
    metric_keys: tuple[str, ...]
    primary_metric: str

    @classmethod
    @abstractmethod
    def check_config(cls, task_cfg: Mapping[str, Any], model_cfg: Mapping[str, Any],
                     data_cfg: Mapping[str, Any]) -> None:
        """Refuse (``UserError``) a model or data set of another task, or a missing package it needs.

        Runs before any work starts, so it must stay cheap: read configs and import packages, but
        build no model and read no data.
        """

    @abstractmethod
    def build_model(self, load_weights: bool = True) -> nn.Module:
        """The float model in eval mode (``load_weights=False``: architecture only, for a checkpoint
        that overwrites every weight)."""

    @abstractmethod
    def calibration_images(self, n: int, seed: int) -> tuple[torch.Tensor, list[int]]:
        """``n`` seeded images as one CPU batch the model's ``forward`` takes, and their ids."""

    @abstractmethod
    def evaluate(self, model: nn.Module, device: torch.device | str = "cpu",
                 reference: nn.Module | None = None) -> dict[str, float | int]:
        """Every key of ``metric_keys`` and ``n_images``. ``reference`` is the float model: a task with
        label-free fidelity metrics compares ``model`` against it, others ignore it."""


def task_class(task_cfg: Mapping[str, Any]) -> type[Task]:
    """The :class:`Task` subclass a task config names (``_target_``)."""
    target = task_cfg.get("_target_")
    try:
        cls = get_class(str(target))
    except Exception as e:  # noqa: BLE001 - any import failure means the same: a bad _target_
        raise UserError(f"task._target_={target} cannot be imported ({type(e).__name__}); "
                        "name a task class, e.g. vitquant.tasks.classification.ClassificationTask") from None
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise UserError(f"task._target_={target} is not a vitquant.tasks.base.Task subclass; "
                        "a task implements that contract (docs/tasks.md)")
    return cls


def task_options(task_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor options of a task config. ``null`` means the constructor's default, so a
    config may list an option its task does not take (``evaluate.yaml``'s overridable keys)."""
    return {k: v for k, v in task_cfg.items() if k not in BOOKKEEPING_KEYS and v is not None}


def constructor_options(cls: type) -> list[str] | None:
    """The options ``cls(model_cfg, data_cfg, **options)`` takes, following ``**options`` up the
    base classes; None when they end in an untyped ``**kwargs``."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names += [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                  and p.name not in ("self", "model_cfg", "data_cfg") and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
    return None


def check_task(task_cfg: Mapping[str, Any], model_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any]) -> type[Task]:
    """Everything about a task, model and data combination that can be checked before any work; the class."""
    cls = task_class(task_cfg)
    valid = constructor_options(cls)
    unknown = [] if valid is None else [k for k in task_options(task_cfg) if k not in valid]
    if unknown:
        raise UserError(f"task.{unknown[0]} is not an option of task={task_cfg.get('name')}; "
                        f"valid: {', '.join(valid)}")
    cls.check_config(task_cfg, model_cfg, data_cfg)
    return cls


def build_task(task_cfg: Mapping[str, Any], model_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any]) -> Task:
    """The task a config names, built with its options; configs reach it as plain containers."""
    return task_class(task_cfg)(model_cfg=plain(model_cfg), data_cfg=plain(data_cfg),
                                **{k: plain(v) for k, v in task_options(task_cfg).items()})


def plain(value: Any) -> Any:
    """OmegaConf containers as resolved plain dicts/lists; anything else unchanged."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
