"""Data-parallel training on the engines Keras already runs on.

TensorFlow backend: ``tf.distribute`` strategies (``mirrored``: the GPUs/devices of one
host; ``multi_worker``: several hosts described by ``TF_CONFIG``; ``tpu``). JAX backend:
``keras.distribution.DataParallel`` (``data_parallel``), an SPMD program over all devices.
(In released Keras, ``keras.distribution`` works on JAX only; its TensorFlow file is a
DTensor prototype, so TensorFlow goes through ``tf.distribute``.)

The backend-specific pieces of the contrastive loss also live here: ``replica_context``
tells the loss whether it runs on one replica of a ``tf.distribute`` strategy, and
``all_gather`` collects the projections of every replica with gradients that reach each
replica's own slice.
"""

import contextlib
import json
import os

import keras

DISTRIBUTIONS = ("none", "mirrored", "multi_worker", "tpu", "data_parallel")
TF_DISTRIBUTIONS = ("mirrored", "multi_worker", "tpu")


class DistributionError(ValueError):
    """A distribution that cannot be set up here; the message says why and what to do."""


def split_logical_cpus(count):
    """Split the host CPU into ``count`` logical devices (for tests and benchmarks).

    TensorFlow: ``tf.config.set_logical_device_configuration``; must run before TensorFlow
    initialises its devices. JAX: needs ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
    in the environment before JAX starts (set it in a fresh process); this function only
    checks that it was done.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * count
            )
        except RuntimeError as error:
            raise DistributionError(
                f"Cannot split the CPU into {count} logical devices: "
                f"TensorFlow is already initialised "
                f"({error}). Call split_logical_cpus before any TensorFlow op, in a fresh process."
            ) from error
    elif backend == "jax":
        import jax

        if len(jax.devices()) < count:
            raise DistributionError(
                f"JAX sees {len(jax.devices())} devices, {count} wanted: start the process with "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={count}."
            )
    else:
        raise DistributionError(f"No logical device split on the {backend} backend.")


class Distribution:
    """The chosen distribution: ``scope()`` to build and compile the model in, the number of
    replicas, whether this process writes checkpoints (``is_chief``) and this worker's index.
    """

    def __init__(
        self,
        name,
        strategy=None,
        distribution=None,
        num_replicas=1,
        is_chief=True,
        worker_index=0,
        num_workers=1,
    ):
        self.name = name
        self.strategy = strategy
        self.distribution = distribution
        self.num_replicas = int(num_replicas)
        self.is_chief = bool(is_chief)
        self.worker_index = int(worker_index)
        self.num_workers = int(num_workers)

    def scope(self):
        """Build, load and compile the model inside this context."""
        if self.strategy is not None:
            return self.strategy.scope()
        return contextlib.nullcontext()

    def __repr__(self):
        return (
            f"Distribution({self.name!r}, replicas={self.num_replicas}, "
            f"workers={self.num_workers}, chief={self.is_chief})"
        )


def _tf_config():
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise DistributionError(
            "--distribution=multi_worker needs the TF_CONFIG environment variable, e.g. "
            'TF_CONFIG=\'{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
            '"task": {"type": "worker", "index": 0}}\' on the first host (index 1 on the second).'
        )
    try:
        config = json.loads(raw)
        workers = list(config["cluster"]["worker"])
        task = config["task"]
        return workers, task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise DistributionError(
            f"TF_CONFIG is not valid ({error}): it needs cluster.worker (a list of host:port) "
            f"and task.type/task.index."
        ) from error


def setup_distribution(name="none", devices=None, tpu=None):
    """A ``Distribution`` for the flag value ``name`` on the current Keras backend.

    ``devices``: for ``mirrored`` and ``data_parallel``, the devices to use (default: all
    accelerators, else all CPU devices). ``tpu``: the TPU address for ``tpu`` (default:
    the one the environment provides).
    """
    if name not in DISTRIBUTIONS:
        raise DistributionError(
            f"Unknown distribution {name!r}; choose one of {', '.join(DISTRIBUTIONS)}."
        )
    backend = keras.backend.backend()
    if name == "none":
        return Distribution("none")
    if name in TF_DISTRIBUTIONS and backend != "tensorflow":
        raise DistributionError(
            f"--distribution={name} uses tf.distribute and needs KERAS_BACKEND=tensorflow "
            f"(this process runs {backend}); on JAX use --distribution=data_parallel."
        )
    if name == "data_parallel" and backend != "jax":
        raise DistributionError(
            f"--distribution=data_parallel uses keras.distribution, "
            f"which released Keras supports on JAX "
            f"only (this process runs {backend}); use KERAS_BACKEND=jax, "
            f"or --distribution=mirrored on TensorFlow."
        )

    if name == "data_parallel":
        import jax

        devices = devices or keras.distribution.list_devices()
        distribution = keras.distribution.DataParallel(devices=devices)
        keras.distribution.set_distribution(distribution)
        return Distribution(
            name,
            distribution=distribution,
            num_replicas=len(devices),
            is_chief=jax.process_index() == 0,
            worker_index=jax.process_index(),
            num_workers=jax.process_count(),
        )

    import tensorflow as tf

    if name == "mirrored":
        if devices is None:
            gpus = tf.config.list_logical_devices("GPU")
            devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
        return Distribution(name, strategy=strategy, num_replicas=strategy.num_replicas_in_sync)
    if name == "multi_worker":
        workers, task_type, index = _tf_config()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        # The first worker is the chief unless TF_CONFIG names a separate chief task.
        is_chief = task_type == "chief" or (task_type == "worker" and index == 0)
        return Distribution(
            name,
            strategy=strategy,
            num_replicas=strategy.num_replicas_in_sync,
            is_chief=is_chief,
            worker_index=index,
            num_workers=len(workers),
        )
    # tpu
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    strategy = tf.distribute.TPUStrategy(resolver)
    return Distribution(name, strategy=strategy, num_replicas=strategy.num_replicas_in_sync)


def data_parallel_size():
    """Devices of the batch axis of the active ``keras.distribution`` (JAX), else 1."""
    distribution = keras.distribution.distribution()
    if distribution is None:
        return 1
    mesh = getattr(distribution, "device_mesh", None)
    if mesh is None:
        return 1
    batch_dim = getattr(distribution, "batch_dim_name", None) or mesh.axis_names[0]
    return int(mesh.shape[mesh.axis_names.index(batch_dim)])


def replica_context():
    """(replica_id, num_replicas) when running on one replica of a ``tf.distribute``
    strategy with more than one replica, else None (one device, or an SPMD program that
    sees the global batch, as JAX's ``DataParallel``)."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if tf.distribute.in_cross_replica_context():
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None
    return context.replica_id_in_sync_group, context.num_replicas_in_sync


def all_gather(x):
    """Concatenate ``x`` [n, ...] of every replica along axis 0 (replica order), inside a
    ``tf.distribute`` replica context. The gradient of the result is summed over replicas
    and each replica gets its own slice back, so a loss computed on the gathered tensor
    trains every replica's encoder correctly."""
    import tensorflow as tf

    return tf.distribute.get_replica_context().all_gather(x, axis=0)


def scale_loss_for_replicas(loss):
    """Divide a per-replica loss by the replica count under ``tf.distribute`` (the summed
    gradients then equal the gradient of the mean); Keras un-scales the logged loss."""
    from keras.src.losses.loss import scale_loss_for_distribution

    return scale_loss_for_distribution(loss)


def set_sync_batchnorm(model, enabled=True):
    """Compute BatchNormalization statistics over the global batch (all replicas).

    TensorFlow: sets ``synchronized`` on every BatchNormalization layer of ``model`` (an
    all-reduce of the moments under ``tf.distribute``; a no-op on one device). JAX
    ``DataParallel`` always normalises over the global batch (the program is SPMD), so
    there is nothing to set there. Returns the number of layers changed.
    """
    count = 0
    backend = keras.backend.backend()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            if backend == "tensorflow":
                layer.synchronized = bool(enabled)
                count += 1
    return count
