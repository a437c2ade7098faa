"""How a recipe would scale on 8 to 512 GPUs, projected from a cost model that is first
checked against published measurements (``make bench`` prints both).

The model, for data-parallel training with ``p`` workers, each taking a step of
``compute`` seconds on its own batch (weak scaling):

* a ring all-reduce of ``n`` bytes over links of ``B`` bytes/s with a per-message latency
  ``alpha`` takes ``T = 2 (p - 1) alpha + 2 (p - 1) / p * n / B`` (every worker sends and
  receives ``(p - 1) / p`` of the buffer twice: reduce-scatter, then all-gather);
* synchronous training all-reduces the gradients every step, while the backward pass is
  still running: a fraction ``HIDDEN_FRACTION`` of the all-reduce is assumed hidden behind
  it (never more than the backward pass itself, ``BACKWARD_SHARE`` of the step), the rest
  adds to the step;
* local SGD all-reduces the weights once every ``K`` steps, between steps: nothing is
  hidden, and each step carries ``T / K``;
* efficiency is ``compute / step``: throughput per worker relative to one worker alone.

Before any projection is shown the same model, with the same constants, recomputes
Horovod's published 512-GPU results (``PUBLISHED``); if any point is missed by more than
``TOLERANCE_POINTS`` percentage points the projection is withheld. Every constant's source
is beside it, and in the README.
"""

import dataclasses
import typing

# Assumptions of the model (the README explains each).
LATENCY_SECONDS = 10e-6  # per message on an RDMA network, software included
HIDDEN_FRACTION = 0.5  # of a synchronous all-reduce, overlapped with the backward pass
BACKWARD_SHARE = 2 / 3  # of a step: the backward pass costs about twice the forward
TOLERANCE_POINTS = 10.0  # a published efficiency must be met within this many points

GPUS = (8, 64, 512)
NETWORKS_GBIT = (10, 25, 100, 400)
LOCAL_STEPS = 16  # local SGD's K in the projection


@dataclasses.dataclass(frozen=True)
class PublishedPoint:
    """A published scaling result and what the model needs to recompute it."""

    model: str
    parameters: int  # trainable, float32 gradients: 4 bytes each
    images_per_second_one_gpu: float
    batch_size_per_gpu: int
    gpus: int
    network_gbit: float
    efficiency: float  # published, 0..1


# Horovod's benchmark page (docs/benchmarks.rst): 128 servers x 4 Pascal GPUs, RoCE 25 Gbit/s,
# tf_cnn_benchmarks at batch 64 per GPU, synthetic data: 90 % for Inception V3 and
# ResNet-101, 68 % for VGG-16 at 512 GPUs. One GPU's images/s: TensorFlow's r1 benchmarks
# page (DGX-1, P100, batch 64, synthetic, May 2017): Inception V3 142, VGG16 154; it has no
# ResNet-101, so its time per image is taken halfway between ResNet-50's (219/s) and
# ResNet-152's (91.8/s), as its depth is: 129/s. Parameters: tf_keras.applications with
# 1000 classes (tests/test_scaling_projection.py builds them to check).
PUBLISHED = (
    PublishedPoint("Inception V3", 23_817_352, 142.0, 64, 512, 25, 0.90),
    PublishedPoint("ResNet-101", 44_601_832,
                   2 / (1 / 219.0 + 1 / 91.8), 64, 512, 25, 0.90),
    PublishedPoint("VGG-16", 138_357_544, 154.0, 64, 512, 25, 0.68),
)


@dataclasses.dataclass(frozen=True)
class Assumptions:
    latency_seconds: float = LATENCY_SECONDS
    hidden_fraction: float = HIDDEN_FRACTION
    backward_share: float = BACKWARD_SHARE


def ring_allreduce_seconds(workers: int, message_bytes: float, network_gbit: float,
                           latency_seconds: float) -> float:
    """The ring all-reduce of ``message_bytes`` over ``workers`` (0 for one worker)."""
    if workers == 1:
        return 0.0
    bandwidth = network_gbit * 1e9 / 8
    return (2 * (workers - 1) * latency_seconds
            + 2 * (workers - 1) / workers * message_bytes / bandwidth)


def synchronous_step_seconds(compute_seconds: float, allreduce_seconds: float,
                             assumptions: Assumptions) -> float:
    hidden = min(assumptions.hidden_fraction * allreduce_seconds,
                 assumptions.backward_share * compute_seconds)
    return compute_seconds + allreduce_seconds - hidden


def local_sgd_step_seconds(compute_seconds: float, allreduce_seconds: float,
                           local_steps: int) -> float:
    return compute_seconds + allreduce_seconds / local_steps


def validation(assumptions: Assumptions = Assumptions()) -> typing.List[typing.Dict]:
    """The model's efficiency beside each published one, and whether it is within
    TOLERANCE_POINTS."""
    rows = []
    for point in PUBLISHED:
        compute = point.batch_size_per_gpu / point.images_per_second_one_gpu
        allreduce = ring_allreduce_seconds(point.gpus, 4 * point.parameters,
                                           point.network_gbit, assumptions.latency_seconds)
        modelled = compute / synchronous_step_seconds(compute, allreduce, assumptions)
        difference = 100 * (modelled - point.efficiency)
        rows.append({"model": point.model, "gpus": point.gpus,
                     "network_gbit": point.network_gbit,
                     "compute_ms": 1000 * compute, "allreduce_ms": 1000 * allreduce,
                     "published": point.efficiency, "modelled": modelled,
                     "difference_points": difference,
                     "within_tolerance": abs(difference) <= TOLERANCE_POINTS})
    return rows


def project(gradient_bytes: float, weight_bytes: float, compute_seconds: float,
            assumptions: Assumptions = Assumptions()) -> typing.List[typing.Dict]:
    """Step time and efficiency at each of GPUS x NETWORKS_GBIT for synchronous
    all-reduce (float32 gradients, and float16-compressed: half the bytes) and local SGD
    (all weights, once every LOCAL_STEPS steps)."""
    rows = []
    for gpus in GPUS:
        for network in NETWORKS_GBIT:
            def allreduce(size):
                return ring_allreduce_seconds(gpus, size, network, assumptions.latency_seconds)

            steps = {
                "allreduce fp32": synchronous_step_seconds(
                    compute_seconds, allreduce(gradient_bytes), assumptions),
                "allreduce fp16": synchronous_step_seconds(
                    compute_seconds, allreduce(gradient_bytes / 2), assumptions),
                f"local SGD K={LOCAL_STEPS}": local_sgd_step_seconds(
                    compute_seconds, allreduce(weight_bytes), LOCAL_STEPS),
            }
            for mode, step in steps.items():
                rows.append({"gpus": gpus, "network_gbit": network, "mode": mode,
                             "step_ms": 1000 * step, "efficiency": compute_seconds / step})
    return rows


def report_lines(valid_rows, projection_rows, inputs,
                 assumptions: Assumptions = Assumptions()) -> typing.List[str]:
    """The report's section: the validation, then the projection, or why it is withheld
    (``assumptions``: those both were computed with)."""
    lines = ["## Projection to 8-512 GPUs", "",
             "A ring all-reduce cost model (toolkit/launcher/scaling_projection.py; README, "
             f"\"Projection\"): latency {assumptions.latency_seconds * 1e6:.0f} us per "
             f"message, {assumptions.hidden_fraction:.0%} of a synchronous all-reduce hidden "
             f"behind the backward pass (at most {assumptions.backward_share:.0%} of the "
             "step), local SGD's averaging not hidden.", "",
             "### First: the model against Horovod's published 512-GPU results", "",
             "| model | GPUs | network | compute ms | all-reduce ms | published | model | "
             "difference |", "|---|---|---|---|---|---|---|---|"]
    for row in valid_rows:
        lines.append(f"| {row['model']} | {row['gpus']} | {row['network_gbit']} Gb/s | "
                     f"{row['compute_ms']:.0f} | {row['allreduce_ms']:.0f} | "
                     f"{row['published']:.0%} | {row['modelled']:.0%} | "
                     f"{row['difference_points']:+.1f} points |")
    missed = [row["model"] for row in valid_rows if not row["within_tolerance"]]
    if missed:
        lines += ["", f"**Projection withheld**: the model misses {', '.join(missed)} by more "
                  f"than {TOLERANCE_POINTS:.0f} points, so its figures for this recipe would "
                  "not be believable."]
        return lines
    lines += ["", f"Every published point is met within {TOLERANCE_POINTS:.0f} points.", "",
              f"### This recipe: {inputs['gradient_bytes'] / 2 ** 20:.2f} MiB of gradients, "
              f"{inputs['weight_bytes'] / 2 ** 20:.2f} MiB of weights, "
              f"{inputs['compute_ms']:.1f} ms of compute per step ({inputs['compute_source']})",
              "", "Efficiency (step ms):", ""]
    modes = list(dict.fromkeys(row["mode"] for row in projection_rows))
    lines += ["| GPUs | network | " + " | ".join(modes) + " |",
              "|---|---|" + "---|" * len(modes)]
    by_place = {}
    for row in projection_rows:
        by_place.setdefault((row["gpus"], row["network_gbit"]), {})[row["mode"]] = row
    for (gpus, network), cells in by_place.items():
        lines.append(f"| {gpus} | {network} Gb/s | " + " | ".join(
            f"{cells[mode]['efficiency']:.2f} ({cells[mode]['step_ms']:.1f})"
            for mode in modes) + " |")
    return lines


def plot(path, projection_rows):
    """Efficiency against GPUs, one panel per network speed, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, panels = pyplot.subplots(1, len(NETWORKS_GBIT), figsize=(4 * len(NETWORKS_GBIT), 3.5),
                                     dpi=100, sharey=True)
    modes = list(dict.fromkeys(row["mode"] for row in projection_rows))
    for panel, network in zip(panels, NETWORKS_GBIT):
        for mode in modes:
            points = [(row["gpus"], row["efficiency"]) for row in projection_rows
                      if row["network_gbit"] == network and row["mode"] == mode]
            panel.plot([gpus for gpus, _ in points], [value for _, value in points],
                       marker="o", label=mode)
        panel.set(xscale="log", xticks=list(GPUS), xticklabels=[str(g) for g in GPUS],
                  xlabel="GPUs", title=f"{network} Gb/s", ylim=(0, 1.05))
        panel.grid(alpha=0.3)
    panels[0].set_ylabel("projected efficiency")
    panels[0].legend()
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
