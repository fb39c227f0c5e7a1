"""Tasks: build the model and data of one benchmark, sample calibration images, evaluate.

Only this package imports task-specific ecosystems (mmdet/mmseg for detection/segmentation)."""
