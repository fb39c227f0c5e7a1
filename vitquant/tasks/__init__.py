"""Tasks: build the model and data of one benchmark, sample calibration images, evaluate.

Every task implements the contract :class:`vitquant.tasks.base.Task` (``docs/tasks.md``). Only this
package imports task-specific ecosystems (mmdet/mmseg for detection/segmentation)."""
