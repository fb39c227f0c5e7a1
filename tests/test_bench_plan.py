"""Every benchmark entry's overrides compose, and every reference model has a model config."""
from __future__ import annotations

from hydra import compose, initialize_config_dir

from bench.plan import ENTRIES
from bench.references import PROJECT_RECIPE, REFERENCES
from vitquant.cli import CONF_DIR


def test_entry_overrides_compose():
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for entry in ENTRIES:
            for overrides in {entry.cpu, entry.full}:
                cfg = compose("calibrate", overrides=[f"method={entry.method}", "bits=3", *overrides])
                assert cfg.method.name == entry.method, entry.name


def test_every_reference_has_a_model_config():
    assert PROJECT_RECIPE <= set(REFERENCES)
    for model in REFERENCES:
        assert (CONF_DIR / "model" / f"{model}.yaml").is_file()
