"""Run under horovodrun by tests/test_multiprocess.py; prints one JSON line per rank.

``distributed|local``: train a tiny image model for a few steps through the same pieces
the trainer uses, with Horovod's DistributedOptimizer or (the control) with a plain
optimizer, and report this rank's weight hash and whether the gradient allreduce was
traced with AutoGraph (see toolkit.worker.distributed: it must not be).
"""

import json
import sys

import toolkit  # noqa: F401
import tf_keras as keras

from recipes import image
from toolkit import config as config_lib
from toolkit.worker import distributed
from toolkit.worker import runtime
from toolkit.worker import train


def weights(mode, world):
    config = config_lib.build(image.ImageConfig, {
        "width": "8", "stages": "2", "batch_size_per_worker": "32", "max_train_examples": "2048",
        "max_validation_examples": "64"})
    runtime.configure(config, world)
    data = image.build_data(config, world.shard())
    model = image.build_model(config, data)
    optimizer = keras.optimizers.Adam(1e-3)
    if mode == "distributed":
        optimizer = distributed.wrap_optimizer(optimizer, config)
    model.compile(optimizer=optimizer, loss=image.RECIPE.build_loss(config))
    optimizer.build(model.trainable_variables)
    distributed.broadcast_variables(model.variables + list(optimizer.variables))
    model.fit(data.train.batches(0, 0, 1), steps_per_epoch=8, epochs=1, verbose=0,
              callbacks=distributed.first_callbacks())
    allreduce = getattr(optimizer, "_allreduce_grads", None)
    return {"sha256": train.weights_sha256(model),
            "allreduce_autograph": getattr(allreduce, "_autograph", None)}


def main():
    world = distributed.init()
    print("RESULT " + json.dumps(dict(weights(sys.argv[1], world), rank=world.rank)),
          flush=True)


if __name__ == "__main__":
    main()
