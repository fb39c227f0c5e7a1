"""The pipelines behind the entry scripts, one module each: ``calibrate`` (PTQ), ``evaluate``, ``train`` (QAT),
``export`` (ONNX) and ``soft_labels`` (FKD store); what they share is in :mod:`vitquant.pipelines.common`.
No pipeline imports another; ``vitquant/cli/<name>.py`` is a thin call into ``vitquant.pipelines.<name>``."""
