"""The task contract on an mm model: what the mmdet and mmseg adapters share.

:class:`MMTask` implements :class:`~vitquant.tasks.base.Task` (``build_model``, ``calibration_images``,
``evaluate``, the pre-flight ``check_config``) for any mm config (``model.mm_config``) with its backbone
replaced by the timm Swin or ViT (``TimmSwin``/``TimmViT``, :mod:`vitquant.tasks.mm_common`). A task
on it names its ``package``, ``data_format``, an ``example_model`` and ``example_data``, and says only what differs:
the data set config of a split, the evaluator, and how the evaluator's output becomes our metric keys.
mm tasks cannot train (``can_train`` is False): QAT is classification only.
"""
from __future__ import annotations

import importlib
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from vitquant.data.calibration import calibration_ids
from vitquant.errors import UserError
from vitquant.tasks.base import Task
from vitquant.tasks.mm_checkpoint import load_detector_checkpoint, load_pretrained_backbone
from vitquant.tasks.mm_common import (
    MMModel,
    build_dataset,
    find_config,
    load_mm_config,
    preprocess,
    require,
    run_evaluator,
    set_resize,
)


class MMTask(Task):
    """Model + data of one dense-prediction benchmark on ``package`` (``mmdet`` or ``mmseg``).

    ``image_scale`` (w, h) overrides the test ``Resize``; ``max_eval_images`` keeps the first N
    validation images; ``quantize_heads`` also quantizes the neck's and heads' conv/linear layers.
    Calibration images come from the *train* split through the *test* pipeline (``protocol.md`` §0).
    """

    package: ClassVar[str] = ""        # the mm package whose registries build the model and data
    data_format: ClassVar[str] = ""    # the ``data.format`` its data sets have
    example_model: ClassVar[str] = ""  # a model config of this task, for error messages
    example_data: ClassVar[str] = ""   # a data config of ``data_format``, for error messages

    def __init__(self, model_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any], batch_size: int = 1,
                 num_workers: int = 0, max_eval_images: int | None = None, image_scale: Sequence[int] | None = None,
                 quantize_heads: bool = False) -> None:
        require(self.package)
        importlib.import_module(f"{self.package}.utils").register_all_modules(init_default_scope=True)
        self.model_cfg, self.data_cfg = model_cfg, data_cfg
        self.batch_size, self.num_workers, self.max_eval_images = batch_size, num_workers, max_eval_images
        self.quantize_heads = quantize_heads
        self.mm_cfg = load_mm_config(model_cfg, self.package)
        self.pipeline = set_resize(list(self.mm_cfg.test_dataloader.dataset.pipeline), image_scale)
        self._datasets: dict[str, Any] = {}

    # ----------------------------------------------------------------------------- what a task says
    @abstractmethod
    def dataset_config(self, split: str) -> dict[str, Any]:
        """The mm data set config of ``split`` (``train``/``val``) with ``self.pipeline``."""

    @abstractmethod
    def make_evaluator(self, val) -> Any:
        """The mm ``Evaluator`` for the validation data set ``val``."""

    @abstractmethod
    def read_metrics(self, raw: dict[str, float]) -> dict[str, float]:
        """The evaluator's output as ``{metric key: value in percent}``."""

    # ----------------------------------------------------------------------------- the shared interface
    @classmethod
    def check_config(cls, task_cfg: Mapping[str, Any], model_cfg: Mapping[str, Any],
                     data_cfg: Mapping[str, Any]) -> None:
        """An mm model of ``package`` (``model.mm_config``) on ``data_format`` data, with the mm stack installed."""
        name, model = task_cfg.get("name"), model_cfg.get("name")
        if model_cfg.get("mm_config") is None:
            raise UserError(f"task={name} needs an {cls.package} network (a model with model.mm_config, e.g. "
                            f"model={cls.example_model}), but model={model} is a timm classification model; use "
                            "task=classification with it")
        if data_cfg.get("format") != cls.data_format:
            raise UserError(f"task={name} needs data.format={cls.data_format} data, but data={data_cfg.get('name')} "
                            f"has data.format={data_cfg.get('format')}; use a data set of that format (e.g. "
                            f"data={cls.example_data})")
        require(cls.package, f"task={name}")
        try:
            find_config(str(model_cfg["mm_config"]), cls.package)
        except UserError as e:
            raise UserError(f"model={model} is not an {cls.package} network for task={name}: {e}; use a model of "
                            f"the task (e.g. model={cls.example_model})") from None

    def build_model(self, load_weights: bool = True) -> nn.Module:
        """The float network (wrapped for PTQ) in eval mode, with ``model.pretrained`` (ImageNet backbone
        weights) and then ``model.checkpoint`` (the whole network) loaded."""
        net = importlib.import_module(f"{self.package}.registry").MODELS.build(self.mm_cfg.model)
        pretrained, checkpoint = self.model_cfg.get("pretrained"), self.model_cfg.get("checkpoint")
        if pretrained and load_weights:
            load_pretrained_backbone(net.backbone, pretrained)
        if checkpoint and load_weights:
            load_detector_checkpoint(net, checkpoint)
        return MMModel(net, self.quantize_heads).eval()

    def dataset(self, split: str):
        """``split`` through the test pipeline (built once; ``val`` cut to ``max_eval_images``)."""
        if split not in self._datasets:
            cfg = self.dataset_config(split)
            if split == "val" and self.max_eval_images is not None:
                cfg["indices"] = int(self.max_eval_images)
            self._datasets[split] = build_dataset(cfg, self.package)
        return self._datasets[split]

    def calibration_images(self, n: int, seed: int) -> tuple[torch.Tensor, list[int]]:
        """``n`` seeded training images, resized by the test pipeline, normalised and padded to one batch."""
        train = self.dataset("train")
        ids = calibration_ids(len(train), n, seed)
        net = self.build_model(load_weights=False).net  # only its data preprocessor is used
        return preprocess(net, train, ids), ids

    def evaluate(self, model: nn.Module, device: torch.device | str = "cpu",
                 reference: nn.Module | None = None) -> dict[str, float | int]:
        """The task's metrics (percent) of ``model`` on the validation split, and ``n_images``
        (``reference`` is ignored: the metrics compare against the annotations)."""
        from mmengine.dataset import DefaultSampler, pseudo_collate
        from torch.utils.data import DataLoader

        val = self.dataset("val")
        evaluator = self.make_evaluator(val)
        evaluator.dataset_meta = val.metainfo
        loader = DataLoader(val, batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=pseudo_collate,
                            sampler=DefaultSampler(val, shuffle=False))
        raw = run_evaluator(model, loader, evaluator, len(val), torch.device(device))
        return {**self.read_metrics(raw), "n_images": len(val)}
