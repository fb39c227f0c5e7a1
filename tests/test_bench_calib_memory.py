"""bench.calib_memory: its command composes with a single range-init stage, its table lists every cell."""
from __future__ import annotations

from hydra import compose, initialize_config_dir

from bench.calib_memory import COMMAND, markdown
from vitquant.cli import CONF_DIR


def test_the_benchmarked_command_composes_with_one_range_init_stage():
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("calibrate", overrides=[*COMMAND, "method.n_calib=8", "+method.stages.0.batch_pixels=1024"])
    assert [s["_target_"] for s in cfg.method.stages] == ["vitquant.engines.range_init.init_ranges"]
    assert cfg.method.stages[0].batch_pixels == 1024 and cfg.task.image_scale is None  # the default 1333×800


def test_table_lists_measured_and_failed_cells_and_the_agreement():
    cell = {"images": 8, "mode": "bounded", "images_per_forward": 7, "rss_before_calib_mb": 2000,
            "peak_rss_mb": 5000, "calib_cpu_s": 100.0}
    same = {"scale_rel_diff_median": 0.001, "scale_rel_diff_p99": 0.01, "scale_rel_diff_max": 0.1}
    agreement = {"images": 6, "held_out": 2, "image_shape": [3, 256, 448], "batch": 2,
                 "unbounded": {"feature_sqnr_db": 30.0, "calib_cpu_s": 9.0},
                 "one_batch": {"feature_sqnr_db": 29.9, "calib_cpu_s": 8.0, **same},
                 "streamed": {"feature_sqnr_db": 29.8, "calib_cpu_s": 7.0, **same}}
    text = markdown({"memory": [cell, {"images": 32, "mode": "one_batch", "error": "MemoryError"}],
                     "agreement": agreement})
    assert "| 8 | bounded | 7 | 2000 | 5000 | 100.0 |" in text
    assert "| 32 | one_batch | failed: MemoryError |" in text
    assert "| streamed | 29.8 | 1.00e-03 | 1.00e-02 | 1.00e-01 | 7.0 |" in text
