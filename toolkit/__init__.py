"""Distributed training toolkit for TensorFlow/Keras on Horovod.

Who runs what (the tree says it too):

Shared by the launching machine and every worker
    ``config``        one typed config per run: defaults, ``--key=value`` overrides, checks
    ``recipe``        the recipe contract (typed) and the registry of ``recipes/``
    ``data``          shards, the training stream of indexed examples, the cache policy
    ``record_stream`` the training stream of TFRecords: each worker reads its own files
    ``manifests``     a data source scanned once, reused while it is unchanged
    ``run_folder``    the run folder's paths, and whether a folder may be resumed
    ``errors``        the user's mistakes (one base class) as opposed to bugs
    ``versions``      library versions recorded with a run
    ``keras_compat``  makes Keras 2 (tf-keras) the Keras of TensorFlow and Horovod

``launcher/``: on the machine you launch from (``make train``, ``make doctor``, ...)
    ``launch``              validate a run, then start it under horovodrun
    ``horovodrun``          horovodrun, with its Gloo check answered from a cache
    ``hostfile``            parse and validate hostfiles
    ``ssh``                 the ssh config and reachability checks of a launch
    ``doctor``              preflight checks of every host
    ``job_files``           Slurm scripts and Kubeflow MPIJobs
    ``tensorboard_server``  ``make tensorboard``, here or on rank 0's host
    ``bench``               ``make bench``: runs the measurements, writes the report
    ``scaling_projection``  ``make bench``'s projection to 8-512 GPUs, checked first
    ``bench_data``          ``make bench-data``: the data path at real sizes
    ``bench_serve``         ``make bench-serve``: make serve under closed-loop load
    ``prepare_data``        ``make prepare-data``: scan a data source into its manifest
    ``serve``               ``make serve``: TF Serving's REST API for the exports, batched

``worker/``: inside every worker process
    ``train``             the entry point: set up, restore or start, fit, summarise
    ``distributed``       the whole Horovod surface (every call tagged ``# Horovod:``)
    ``runtime``           threads, devices, precision, seeds, Horovod's environment
    ``callbacks``         throughput, progress, step scalars, checkpointing
    ``checkpoints``       atomic checkpoints and the run's position
    ``local_sgd``         how workers agree: gradients every step, or local SGD
    ``guards``            the NaN/Inf guard and the lifeline to the launcher
    ``lr_schedules``      the learning rate: scaled, warmed up, decayed
    ``tensorboard_logs``  what rank 0 writes to TensorBoard beyond loss curves
    ``resources``         each worker's CPU, memory and GPU use, gathered to TensorBoard
    ``export``            the SavedModel, as a TF Serving version folder
    ``warm_start``        a new run from an earlier run's weights (``init_from``)
    ``faults``            test-only fault injection (off unless a test turns it on)
    ``bench_worker``      one ``make bench`` measurement

``keras_compat`` is imported first on purpose: it sets ``TF_USE_LEGACY_KERAS=1``,
which only takes effect if it happens before TensorFlow is imported anywhere.
"""

import os

from toolkit import keras_compat  # noqa: F401  (must precede any TensorFlow import)

# The checkout: the launcher runs workers and tools from here, with it on PYTHONPATH.
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
