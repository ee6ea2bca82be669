"""Worker for tests/test_distributed.py: MirroredStrategy training killed at a step, then resumed.

``python tests/workers/distributed_resume.py kill|resume OUT REPO``: ``kill`` SIGKILLs itself at
step KILL_AT; ``resume`` trains an uninterrupted run, resumes OUT and prints ``RESULT <json>``.
"""

import json
import os
import signal
import sys

import keras
import numpy as np

from keras_clmr import distributed

mode, out, repo = sys.argv[1], sys.argv[2], sys.argv[3]
distributed.split_logical_cpus(2)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from keras_clmr.models import CLMR
from keras_clmr.optimizers import build_optimizer
from keras_clmr.pretraining import (
    EpochCheckpoint,
    SegmentBatches,
    StepCheckpoint,
    fit_resumable,
    load_checkpoint,
    resume_position,
)

from conftest import tiny_sample_cnn

STEPS, EPOCHS, EVERY, KILL_AT = 4, 2, 3, 7
distribution = distributed.setup_distribution("mirrored")


class Kill(keras.callbacks.Callback):
    step = 0

    def on_train_batch_end(self, batch, logs=None):
        Kill.step += 1
        if Kill.step == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)


def train(directory, kill):
    keras.utils.set_random_seed(5)
    clips = list(np.random.default_rng(1).standard_normal((16, 16000)).astype("float32"))
    data = SegmentBatches(clips, 8000, 4, steps_per_epoch=STEPS, seed=7)
    epoch = in_epoch = 0
    with distribution.scope():
        if os.path.exists(os.path.join(directory, "state.json")):
            path, epoch, in_epoch = resume_position(directory)
            model = load_checkpoint(path)
            # The backbone's config does not carry BatchNorm's `synchronized`: set it again.
            distributed.set_sync_batchnorm(model)
        else:
            model = CLMR(tiny_sample_cnn(), projection_dim=8, hidden_dim=16, seed=0)
            distributed.set_sync_batchnorm(model)
            model.compile(
                optimizer=build_optimizer(
                    "lars", batch_size=4, steps_per_epoch=STEPS, epochs=EPOCHS, warmup_epochs=1
                ),
                jit_compile=False,
            )
    callbacks = [
        StepCheckpoint(directory, EVERY, STEPS, initial_step=epoch * STEPS + in_epoch),
        EpochCheckpoint(directory, steps_per_epoch=STEPS),
    ]
    if kill:
        callbacks.append(Kill())
    fit_resumable(
        model,
        data,
        epochs=EPOCHS,
        steps_per_epoch=STEPS,
        initial_epoch=epoch,
        initial_step_in_epoch=in_epoch,
        callbacks=callbacks,
        verbose=0,
        shuffle=False,
    )
    return model, (epoch, in_epoch)


if mode == "kill":
    train(out, kill=True)
    raise SystemExit("not killed")
# The uninterrupted run first: its weights are initialised exactly as in the killed process.
fresh, _ = train(out + "-fresh", kill=False)
resumed, position = train(out, kill=False)
diff = max(
    float(np.max(np.abs(keras.ops.convert_to_numpy(a) - keras.ops.convert_to_numpy(b))))
    for a, b in zip(resumed.weights, fresh.weights)
)
print(
    "RESULT "
    + json.dumps(
        {
            "position": position,
            "diff": diff,
            "iterations": int(keras.ops.convert_to_numpy(resumed.optimizer.iterations)),
            "files": sorted(os.listdir(out)),
        }
    )
)
