"""The verdict, tables and figure of ``cnnkit compare --synthetic``, from :func:`measure_synthetic`'s numbers.

The verdict is a pure function of the results: a difference whose 95% interval lies above 0
paid off, one below 0 hurt, and one whose interval spans 0 is "no measurable benefit",
whatever its mean. :mod:`cnnkit.compare.report` writes these parts as it writes the other studies'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnkit.compare.verdict import percent, points

COLOURS = {"real": "tab:blue", "mixed": "tab:green", "synthetic": "tab:purple"}
TITLE = "Do synthetic images help? `cnnkit compare --synthetic` report"


def arm_labels(results: dict[str, Any]) -> dict[str, str]:
    """What each arm trained on, in words."""
    real, synthetic = results["per_class"], results["synthetic_per_class"]
    return {
        "real": f"{real:,} real / class",
        "mixed": f"{real:,} real + {synthetic:,} synthetic / class",
        "synthetic": f"{synthetic:,} synthetic / class",
    }


def _accuracy(interval: dict[str, float]) -> str:
    """A mean accuracy and its interval, cut to 0-100% (with two or three seeds the t interval can overshoot)."""
    low, high = max(0.0, interval["low"]), min(1.0, interval["high"])
    return f"{percent(interval['mean'])} (95% CI {low * 100:.1f} to {high * 100:.1f}%)"


def _difference(interval: dict[str, float]) -> str:
    return f"{points(interval['mean'])} (95% CI {interval['low'] * 100:+.1f} to {interval['high'] * 100:+.1f} pp)"


def _sign(interval: dict[str, float]) -> int:
    """+1 when the whole interval lies above 0, -1 below, 0 when it spans 0."""
    return 1 if interval["low"] > 0 else -1 if interval["high"] < 0 else 0


def _cost(results: dict[str, Any]) -> str:
    arms, generator = results["arms"], results["generator"]
    made = results["synthetic_per_class"] * results["classes"]
    cost = (
        f"generating {made:,} images took {arms['mixed']['generation_seconds']:.1f} s a seed, and training on "
        f"{arms['mixed']['images']:,} images {arms['mixed']['train_seconds']:.1f} s against "
        f"{arms['real']['train_seconds']:.1f} s on the {arms['real']['images']:,} real ones (the same steps)"
    )
    if generator.get("train_seconds") is not None:
        cost += f", after {generator['train_seconds']:.0f} s of training the generator (its metrics.csv)"
    return cost


def synthetic_verdict(results: dict[str, Any]) -> list[str]:
    """Whether the synthetic images paid off on this data, by how much and at what cost; then what they hold alone.

    Args:
        results: The structure :func:`cnnkit.compare.synthetic.measure_synthetic` returns.

    Returns:
        The answer first (paid off, hurt, or no measurable benefit), then train-on-synthetic /
        test-on-real, then whether the generator's training split was checked against the test images,
        and, where it learned from more labelled images than the real arm has, that a gain passes those on.
    """
    arms, differences = results["arms"], results["differences"]
    real, synthetic = results["per_class"], results["synthetic_per_class"]
    seeds = arms["real"]["test_accuracy"]["count"]
    added, change = differences["mixed"], _difference(differences["mixed"])
    real_mean, mixed_mean = (arms[arm]["test_accuracy"]["mean"] for arm in ("real", "mixed"))
    accuracies = f"{percent(real_mean)} -> {percent(mixed_mean)}"
    what = f"adding {synthetic:,} generated images per class to {real:,} real ones changed test accuracy by {change}"
    if _sign(added) > 0:
        answer = f"The synthetic images paid off on this data: {what} over {seeds} seeds ({accuracies}); the cost: "
        answer += f"{_cost(results)}."
    elif _sign(added) < 0:
        answer = f"The synthetic images hurt on this data: {what} over {seeds} seeds ({accuracies}); leave them out. "
        answer += f"They cost: {_cost(results)}."
    else:
        answer = f"No measurable benefit on this data: {what} over {seeds} seeds, an interval that spans 0 "
        answer += f"({accuracies}); {_cost(results)}, for nothing measurable. More --seeds narrow the interval."
    lines = [answer]
    alone = differences["synthetic"]
    holds = {
        1: f"the generated images carry more of each class than {real} real ones",
        -1: f"the generated images alone carry less of each class than {real} real ones",
        0: f"the generated images alone carry about as much of each class as {real} real ones (the interval spans 0)",
    }[_sign(alone)]
    lines.append(
        f"Train on synthetic, test on real: {synthetic:,} generated images per class alone reached "
        f"{_accuracy(arms['synthetic']['test_accuracy'])} on the real test images "
        f"(chance {percent(results['chance'])}), "
        f"{_difference(alone)} against {real} real images per class: {holds}."
    )
    generator = results["generator"]
    if generator["split_checked"]:
        lines.append("The generator never trained on the test images (its run's split.json checked).")
    else:
        lines.append(
            "The generator's training images could not be checked against the test images (no split.json beside "
            "its checkpoint): if it trained on them, its images carry the test set and these gains are too high."
        )
    learned_from = generator.get("train_images")
    if learned_from is not None and learned_from > real * results["classes"]:
        lines.append(
            f"The generator learned from {learned_from:,} labelled images, the real arm from {real} per class "
            f"({real * results['classes']:,}): any gain here passes those images on second-hand, it is not what a "
            f"GAN adds to {real} labelled images per class; to measure that, train the generator on the same {real} "
            "per class."
        )
    return lines


def _error(interval: dict[str, float], scale: float = 1.0, low: float = -1.0, high: float = 1.0) -> list[list[float]]:
    """Matplotlib's (2, 1) ``yerr``: from the mean down to ``low`` and up to ``high``, the interval cut to them."""
    down, up = interval["mean"] - max(low, interval["low"]), min(high, interval["high"]) - interval["mean"]
    return [[down * scale], [up * scale]]


def _plot(results: dict[str, Any], path: Path) -> None:
    """Left: each arm's mean test accuracy, its 95% interval and each seed; right: each difference from real."""
    from cnnkit.understand import figures

    plt = figures.pyplot()
    labels = arm_labels(results)
    figure, (arms_axes, gap_axes) = plt.subplots(1, 2, figsize=(11, 3.8))
    lowest = 1.0
    for position, (key, arm) in enumerate(results["arms"].items()):
        interval, seeds = arm["test_accuracy"], [run["test_accuracy"] for run in arm["runs"]]
        arms_axes.errorbar(position, interval["mean"], yerr=_error(interval, low=0.0), fmt="s", capsize=6,
                           color=COLOURS[key])  # fmt: skip
        arms_axes.plot([position + 0.08] * len(seeds), seeds, "o", color=COLOURS[key], alpha=0.5, markersize=4)
        lowest = min(lowest, *seeds, max(0.0, interval["low"]))
    names = [labels[key].replace(" + ", "\n+ ") for key in results["arms"]]
    arms_axes.set_xticks(range(len(names)), names, fontsize=8)
    arms_axes.set_xlim(-0.5, len(names) - 0.5)
    arms_axes.set(ylabel="test accuracy", title="test accuracy (squares: mean, 95% CI; dots: seeds)")
    bottom = max(0.0, lowest - 0.05)  # zoomed to the seeds: a 1-point gap at 95% must be visible
    if results["chance"] >= bottom:
        arms_axes.axhline(results["chance"], color="grey", ls=":", lw=0.8, label="chance")
        arms_axes.legend(fontsize=8)
    arms_axes.set_ylim(bottom, 1.0)
    arms_axes.grid(alpha=0.3)
    for position, (key, interval) in enumerate(results["differences"].items()):
        error = _error(interval, 100)
        gap_axes.errorbar(position, interval["mean"] * 100, yerr=error, fmt="o", capsize=6, color=COLOURS[key])
    gap_axes.axhline(0, color="black", lw=0.8)
    names = [labels[key].replace(" + ", "\n+ ") for key in results["differences"]]
    gap_axes.set_xticks(range(len(names)), names, fontsize=8)
    gap_axes.set_xlim(-0.5, len(names) - 0.5)
    gap_axes.set(ylabel="pp against the real arm", title="difference from real (paired by seed, 95% CI)")
    gap_axes.grid(alpha=0.3)
    figures.save(figure, path)


def _tables(results: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]], str, str]]:
    labels = arm_labels(results)
    arm_rows = [
        [
            labels[key],
            f"{arm['images']:,}",
            f"{arm['runs'][0]['steps']:,}",
            _accuracy(arm["test_accuracy"]),
            ", ".join(f"{run['test_accuracy']:.1%}" for run in arm["runs"]),
            f"{arm['train_seconds']:.1f}",
            f"{arm['generation_seconds']:.1f}",
        ]
        for key, arm in results["arms"].items()
    ]
    outcome = {1: "paid off", -1: "hurt", 0: "no measurable difference"}
    difference_rows = [
        [labels[key], _difference(interval), outcome[_sign(interval)]]
        for key, interval in results["differences"].items()
    ]
    return [
        (
            "Test accuracy per arm",
            ["arm", "training images", "steps", "test acc (mean, 95% CI)", "seeds", "train s", "generation s"],
            arm_rows,
            "summary.png",
            "Means over the seeds; train and generation seconds are per seed.",
        ),
        (
            f"Difference from {labels['real']} (paired by seed)",
            ["arm", "test accuracy difference", "outcome"],
            difference_rows,
            "",
            "Each seed's arms share the real images, so the difference is taken per seed before the interval.",
        ),
    ]


def _setup(results: dict[str, Any]) -> str:
    budget, sizes = results["budget"], results["sizes"]
    first, last = budget["seed"], budget["seed"] + budget["seeds"] - 1
    return (
        f"Data `{results['data']}`, generator `{results['run']}` ({results['generator']['name']}): "
        f"{results['classes']} classes of {'x'.join(map(str, results['image_shape']))} images. Per seed, "
        f"{results['per_class']} real images per class are drawn from the {sizes['train_split']:,} training images "
        f"and {results['synthetic_per_class']} generated per class; every arm is tested on the same "
        f"{sizes['test']:,} real test images. Every arm: the default network (convnet), --augment "
        f"{results['augment']}, batch {budget['batch_size']}, AdamW one-cycle lr {budget['lr']}, and the same "
        f"optimizer steps (--epochs {budget['epochs']}: passes over the real + synthetic set), seeds {first} to "
        f"{last}, on {results['device']}. Intervals: Student's t over the seeds. The whole study took "
        f"{results['seconds']:.0f} s."
    )


def synthetic_parts(results: dict[str, Any]) -> tuple[str, str, list, dict]:
    """The title, setup line, tables and plots :mod:`cnnkit.compare.report` writes."""
    return TITLE, _setup(results), _tables(results), {"summary.png": _plot}
