"""Every task config names a class that implements the task contract (vitquant.tasks.base.Task)."""
from __future__ import annotations

import inspect

import pytest
from hydra import compose, initialize_config_dir

from vitquant.cli import CONF_DIR
from vitquant.errors import UserError
from vitquant.tasks.base import Task, check_task, constructor_options, task_class

TASKS = sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml"))


def task_config(name: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("calibrate", overrides=[f"task={name}"]).task


@pytest.mark.parametrize("name", TASKS)
def test_every_task_config_implements_the_contract(name):
    cfg = task_config(name)
    cls = task_class(cfg)
    assert issubclass(cls, Task) and not inspect.isabstract(cls)
    assert set(cfg) - {"_target_", "name"} <= set(constructor_options(cls))  # every option is a constructor option
    assert cls.can_train == (name == "classification")  # QAT trains classification only


def test_a_class_outside_the_contract_is_refused():
    with pytest.raises(UserError, match="is not a vitquant.tasks.base.Task subclass"):
        task_class({"_target_": "vitquant.data.datasets.DigitsDataset"})


def test_classification_refuses_data_of_another_task():
    cfg = task_config("classification")
    with pytest.raises(UserError, match="task=classification needs a classification data set.*data.format=coco"):
        check_task(cfg, {"name": "vit_cifar", "arch": "vit_tiny_patch16_224"}, {"name": "coco128", "format": "coco"})
