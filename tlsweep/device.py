"""How a job uses its hardware: GPU memory, numeric precision, XLA and CPU threads.

TensorFlow reads most of these once, when it first touches a device; ``configure`` runs at the
start of each job, before any model is built. In a process that already ran a job (a multirun
with the basic launcher) a setting TensorFlow can no longer change is logged, not fatal.
"""

from __future__ import annotations

import contextlib
import logging

from tlsweep.spec import JobSpec

log = logging.getLogger(__name__)


def configure(cfg: JobSpec) -> None:
    """Apply ``precision``, ``gpu_memory_growth`` and ``threads``."""
    import keras
    import tensorflow as tf

    precision = cfg.precision
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        with contextlib.suppress(RuntimeError):  # the GPU is already in use by an earlier job of this process
            tf.config.experimental.set_memory_growth(gpu, cfg.gpu_memory_growth)
    if cfg.threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(cfg.threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(cfg.threads, 2))
        except RuntimeError:
            log.warning("threads=%s not applied: TensorFlow already started in this process", cfg.threads)
    if precision != "float32" and not gpus:
        log.warning("precision=%s on a CPU is usually slower than float32 (it is meant for GPUs)", precision)
    keras.mixed_precision.set_global_policy(precision)  # the head's softmax always computes in float32
    log.info(
        "devices: %s; precision %s%s",
        ", ".join(g.name.split("physical_device:")[-1] for g in gpus) or "CPU",
        precision,
        ", XLA" if cfg.jit_compile else "",
    )
