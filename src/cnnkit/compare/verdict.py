"""The plain-language verdict of ``cnnkit compare``: a pure function of the measured numbers.

Each sentence tests one of the usual claims about CNNs against the results and quotes the
numbers it rests on. Differences smaller than :data:`MARGIN` (one percentage point of
accuracy) are called ties: with a few hundred to a few thousand test images, smaller
gaps are within the noise of a single seed.
"""

from __future__ import annotations

from statistics import mean
from typing import Any

MARGIN = 0.01


def _pct(value: float) -> str:
    return f"{value:.1%}"


def _pp(value: float) -> str:
    return f"{value * 100:+.1f} pp"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b else "n/a"


def _mean_drop(robustness: dict[str, Any], kinds: tuple[str, ...]) -> float:
    """Clean accuracy minus the mean accuracy over every level of the given perturbations."""
    return robustness["clean"] - mean(accuracy for kind in kinds for _, accuracy in robustness[kind])


def _choice(cnn: dict[str, Any], mlp: dict[str, Any]) -> str:
    gap = cnn["test_accuracy"] - mlp["test_accuracy"]
    accuracies = f"{_pct(cnn['test_accuracy'])} vs {_pct(mlp['test_accuracy'])} test accuracy"
    cost = (
        f"it costs {_ratio(cnn['multiply_adds'], mlp['multiply_adds'])} the multiply-adds and "
        f"{_ratio(cnn['train_seconds'], mlp['train_seconds'])} the training time of the MLP"
    )
    if gap > MARGIN:
        return f"Use the CNN on this data: {accuracies} ({_pp(gap)}); {cost}, which the accuracy gain pays for."
    if gap < -MARGIN:
        return f"Use the MLP on this data: {accuracies} for the CNN ({_pp(gap)}), although {cost}."
    return (
        f"Either model will do ({accuracies}, within {_pp(MARGIN)[1:]}); prefer the cheaper MLP unless the "
        f"robustness findings below matter for your inputs: the CNN {cost}."
    )


def _claim(name: str, holds: bool, evidence: str) -> str:
    return f"{name}: {'held' if holds else 'did not hold'} ({evidence})."


def verdict(results: dict[str, Any]) -> list[str]:
    """Sentences that say which model to use and which CNN claims held, each quoting its numbers.

    Args:
        results: The structure returned by :func:`cnnkit.compare.run_comparison` (keys
            ``models``, ``robustness``, ``data_efficiency``, ``overfitting``, ``depth``, ``depth_match``).

    Returns:
        The recommendation first, then one sentence per claim.
    """
    cnn, mlp = results["models"]["cnn"], results["models"]["mlp"]
    lines = [_choice(cnn, mlp)]

    cnn_shift = _mean_drop(results["robustness"]["cnn"], ("shift",))
    mlp_shift = _mean_drop(results["robustness"]["mlp"], ("shift",))
    lines.append(
        _claim(
            "Translation robustness (CNNs tolerate shifted inputs better)",
            cnn_shift + MARGIN < mlp_shift,
            f"mean accuracy drop over 1-6 pixel shifts: CNN {_pp(-cnn_shift)}, MLP {_pp(-mlp_shift)}",
        )
    )
    geometric = ("rotation", "scale")
    cnn_geo = _mean_drop(results["robustness"]["cnn"], geometric)
    mlp_geo = _mean_drop(results["robustness"]["mlp"], geometric)
    lines.append(
        _claim(
            "Rotation and scale robustness",
            cnn_geo + MARGIN < mlp_geo,
            f"mean drop over 5-30 degree rotations and 0.8-1.2 scaling: CNN {_pp(-cnn_geo)}, MLP {_pp(-mlp_geo)}",
        )
    )
    fewer = cnn["parameters"] < mlp["parameters"]
    not_worse = cnn["test_accuracy"] >= mlp["test_accuracy"] - MARGIN
    lines.append(
        _claim(
            "Parameter efficiency (weight sharing gives more accuracy per parameter)",
            fewer and not_worse,
            f"CNN {cnn['parameters']:,} parameters for {_pct(cnn['test_accuracy'])}, "
            f"MLP {mlp['parameters']:,} for {_pct(mlp['test_accuracy'])}; the CNN spends "
            f"{_ratio(cnn['multiply_adds'], mlp['multiply_adds'])} the multiply-adds, since each weight is reused "
            "at every position",
        )
    )
    efficiency = results["data_efficiency"]
    smallest_cnn, smallest_mlp = efficiency["cnn"][0], efficiency["mlp"][0]
    images = efficiency["train_images"][0] if efficiency.get("train_images") else None
    share = f"{efficiency['fractions'][0]:.0%} of the training data" + (f" ({images} images)" if images else "")
    lines.append(
        _claim(
            "Hunger for data (a CNN needs more examples than an MLP)",
            smallest_cnn < smallest_mlp - MARGIN,
            f"with {share} the CNN reached {_pct(smallest_cnn)} and the MLP {_pct(smallest_mlp)}",
        )
    )
    photometric = ("noise", "brightness")
    cnn_photo = _mean_drop(results["robustness"]["cnn"], photometric)
    mlp_photo = _mean_drop(results["robustness"]["mlp"], photometric)
    sturdier = "CNN" if cnn_photo + MARGIN < mlp_photo else "MLP" if mlp_photo + MARGIN < cnn_photo else "neither model"
    lines.append(
        f"Noise and brightness changes (no usual claim either way): {sturdier} held up better, mean drop "
        f"CNN {_pp(-cnn_photo)}, MLP {_pp(-mlp_photo)}."
    )
    for key, label in (("cnn", "CNN"), ("mlp", "MLP")):
        plain, regularised = results["overfitting"][key]["plain"], results["overfitting"][key]["regularised"]
        change = regularised["val_accuracy"] - plain["val_accuracy"]
        effect = "helped" if change > MARGIN else "hurt" if change < -MARGIN else "made no clear difference to"
        lines.append(
            f"Regularisation (shift augmentation, dropout, weight decay) {effect} the {label}: train/validation gap "
            f"{_pp(plain['gap'])} without and {_pp(regularised['gap'])} with it, validation accuracy "
            f"{_pct(plain['val_accuracy'])} -> {_pct(regularised['val_accuracy'])}."
        )
    lines.append(_depth(results["depth"], results["depth_match"]))
    return lines


def _depth(depth: list[dict[str, Any]], match: dict[str, Any]) -> str:
    """The depth sentence: networks of every depth hold about the same parameters, so only depth differs."""
    size = f"at a matched size ({match['parameters']:,} parameters ± {match['tolerance']:.0%})"
    left_out = ", ".join(str(row["stages"]) for row in match["left_out"])
    caveat = (
        f"; {left_out} stage(s) left out: with at most {match['max_width']:,} channels they cannot reach that size"
        if left_out
        else ""
    )
    if len(depth) < 2:
        return f"Depth could not be compared {size}: only {len(depth)} depth could be matched{caveat}."
    best = max(depth, key=lambda row: row["test_accuracy"])
    shallowest = depth[0]
    by_stages = ", ".join(f"{row['stages']}: {_pct(row['test_accuracy'])}" for row in depth)
    if best["test_accuracy"] > shallowest["test_accuracy"] + MARGIN:
        return (
            f"Depth paid off {size}: {best['stages']} convolution stage(s) ({best['conv_layers']} layer(s)) reached "
            f"{_pct(best['test_accuracy'])} against {_pct(shallowest['test_accuracy'])} with "
            f"{shallowest['stages']} stage(s); accuracy by stages: {by_stages}{caveat}."
        )
    return (
        f"Depth did not pay off {size}: {shallowest['stages']} stage(s) ({shallowest['conv_layers']} layer(s)) already "
        f"reached {_pct(shallowest['test_accuracy'])}, and the best depth ({best['stages']} stage(s)) "
        f"{_pct(best['test_accuracy'])}; a shallower CNN of the same size is enough for this data{caveat}."
    )
