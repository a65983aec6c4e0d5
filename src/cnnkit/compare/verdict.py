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


def percent(value: float) -> str:
    """An accuracy in [0, 1] as every verdict prints it: ``0.953`` -> ``95.3%``."""
    return f"{value:.1%}"


def points(value: float) -> str:
    """A difference of accuracies as signed percentage points: ``-0.019`` -> ``-1.9 pp``."""
    return f"{value * 100:+.1f} pp"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b else "n/a"


def _mean_drop(robustness: dict[str, Any], kinds: tuple[str, ...]) -> float:
    """Clean accuracy minus the mean accuracy over every level of the given perturbations."""
    return robustness["clean"] - mean(accuracy for kind in kinds for _, accuracy in robustness[kind])


def _choice(cnn: dict[str, Any], mlp: dict[str, Any]) -> str:
    gap = cnn["test_accuracy"] - mlp["test_accuracy"]
    accuracies = f"{percent(cnn['test_accuracy'])} vs {percent(mlp['test_accuracy'])} test accuracy"
    cost = (
        f"it costs {_ratio(cnn['multiply_adds'], mlp['multiply_adds'])} the multiply-adds and "
        f"{_ratio(cnn['train_seconds'], mlp['train_seconds'])} the training time of the MLP"
    )
    if gap > MARGIN:
        return f"Use the CNN on this data: {accuracies} ({points(gap)}); {cost}, which the accuracy gain pays for."
    if gap < -MARGIN:
        return f"Use the MLP on this data: {accuracies} for the CNN ({points(gap)}), although {cost}."
    return (
        f"Either model will do ({accuracies}, within {points(MARGIN)[1:]}); prefer the cheaper MLP unless the "
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
            f"mean accuracy drop over 1-6 pixel shifts: CNN {points(-cnn_shift)}, MLP {points(-mlp_shift)}",
        )
    )
    geometric = ("rotation", "scale")
    cnn_geo = _mean_drop(results["robustness"]["cnn"], geometric)
    mlp_geo = _mean_drop(results["robustness"]["mlp"], geometric)
    lines.append(
        _claim(
            "Rotation and scale robustness",
            cnn_geo + MARGIN < mlp_geo,
            f"mean drop over 5-30 degree rotations and 0.8-1.2 scaling: CNN {points(-cnn_geo)}, MLP {points(-mlp_geo)}",
        )
    )
    fewer = cnn["parameters"] < mlp["parameters"]
    not_worse = cnn["test_accuracy"] >= mlp["test_accuracy"] - MARGIN
    lines.append(
        _claim(
            "Parameter efficiency (weight sharing gives more accuracy per parameter)",
            fewer and not_worse,
            f"CNN {cnn['parameters']:,} parameters for {percent(cnn['test_accuracy'])}, "
            f"MLP {mlp['parameters']:,} for {percent(mlp['test_accuracy'])}; the CNN spends "
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
            f"with {share} the CNN reached {percent(smallest_cnn)} and the MLP {percent(smallest_mlp)}",
        )
    )
    photometric = ("noise", "brightness")
    cnn_photo = _mean_drop(results["robustness"]["cnn"], photometric)
    mlp_photo = _mean_drop(results["robustness"]["mlp"], photometric)
    sturdier = "CNN" if cnn_photo + MARGIN < mlp_photo else "MLP" if mlp_photo + MARGIN < cnn_photo else "neither model"
    lines.append(
        f"Noise and brightness changes (no usual claim either way): {sturdier} held up better, mean drop "
        f"CNN {points(-cnn_photo)}, MLP {points(-mlp_photo)}."
    )
    for key, label in (("cnn", "CNN"), ("mlp", "MLP")):
        plain, regularised = results["overfitting"][key]["plain"], results["overfitting"][key]["regularised"]
        change = regularised["val_accuracy"] - plain["val_accuracy"]
        effect = "helped" if change > MARGIN else "hurt" if change < -MARGIN else "made no clear difference to"
        lines.append(
            f"Regularisation (shift augmentation, dropout, weight decay) {effect} the {label}: train/validation gap "
            f"{points(plain['gap'])} without and {points(regularised['gap'])} with it, validation accuracy "
            f"{percent(plain['val_accuracy'])} -> {percent(regularised['val_accuracy'])}."
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
    by_stages = ", ".join(f"{row['stages']}: {percent(row['test_accuracy'])}" for row in depth)
    if best["test_accuracy"] > shallowest["test_accuracy"] + MARGIN:
        return (
            f"Depth paid off {size}: {best['stages']} convolution stage(s) ({best['conv_layers']} layer(s)) reached "
            f"{percent(best['test_accuracy'])} against {percent(shallowest['test_accuracy'])} with "
            f"{shallowest['stages']} stage(s); accuracy by stages: {by_stages}{caveat}."
        )
    return (
        f"Depth did not pay off {size}: {shallowest['stages']} stage(s) ({shallowest['conv_layers']} layer(s)) already "
        f"reached {percent(shallowest['test_accuracy'])}, and the best depth ({best['stages']} stage(s)) "
        f"{percent(best['test_accuracy'])}; a shallower CNN of the same size is enough for this data{caveat}."
    )


LAG_SHARE = 0.05  # a class's series lying further than this share of the length from its mean shape: it moves
TEMPLATE_GAP = 0.10  # a fixed-position template within this of the better model: the classes sit at fixed places


def _spread(model: dict[str, Any]) -> str:
    return f"{percent(model['test_accuracy'])} ± {model['test_accuracy_std'] * 100:.1f}"


def signal_verdict(results: dict[str, Any]) -> list[str]:
    """Which model to use on series or audio, and why, from :func:`cnnkit.compare.signals.measure_signals`'s numbers.

    The reason rests on where the pattern sits: a fixed-position template's accuracy and the
    median time lag of each series from its class's mean shape (``data_facts``), and how much
    each model loses when the test series are shifted in time (``shift``). A gap within one
    point, or within the seeds' spread where that is larger, is a tie.
    """
    cnn, mlp = results["models"]["cnn"], results["models"]["mlp"]
    facts, shift = results["data_facts"], results["shift"]
    audio = results["modality"] == "audio"
    item, items, unit = ("clip", "clips", "envelope frames") if audio else ("series", "series", "steps")
    margin = max(MARGIN, cnn["test_accuracy_std"], mlp["test_accuracy_std"])
    gap = cnn["test_accuracy"] - mlp["test_accuracy"]
    seeds = len(cnn["runs"])
    accuracies = (
        f"{cnn['name']} {_spread(cnn)} vs {mlp['name']} {_spread(mlp)} test accuracy (mean ± std over {seeds} seeds)"
    )
    cost = f"{_ratio(cnn['multiply_adds'], mlp['multiply_adds'])} the multiply-adds of the MLP"
    if gap > margin:
        lines = [f"Use the CNN on this data: {accuracies}, {points(gap)}; it costs {cost}."]
    elif gap < -margin:
        lines = [f"Use the MLP on this data: {accuracies}, {points(-gap)} for the MLP, and the CNN costs {cost}."]
    else:
        lines = [f"The MLP matches the CNN on this data ({accuracies}, within {points(margin)[1:]}): prefer the MLP."]
    middle = len(shift["shares"]) // 2
    share, steps = shift["shares"][middle], shift["steps"][middle]
    cnn_drop = cnn["test_accuracy"] - shift["cnn"][middle]
    mlp_drop = mlp["test_accuracy"] - shift["mlp"][middle]
    template, lag = facts["template_accuracy"], facts["median_lag"]
    moves = facts["lag_share"] >= LAG_SHARE
    fixed = template >= max(cnn["test_accuracy"], mlp["test_accuracy"]) - TEMPLATE_GAP
    where = (
        f"a fixed-position template (the nearest class-mean {item}) reaches {percent(template)}, and a training {item} "
        f"sits a median {lag:g} {unit} ({facts['lag_share']:.0%} of the length) from its class's mean shape"
    )
    shifted = (
        f"moving the test {items} by {share:.0%} of the length ({steps} {'samples' if audio else 'steps'}) "
        f"changes the CNN's accuracy by {points(-cnn_drop)} and the MLP's by {points(-mlp_drop)}"
    )
    if gap > margin and moves:
        lines.append(
            f"Why the CNN wins: the pattern shifts in time: {where}; {shifted}. An MLP has one weight per time step, "
            "so it must learn a pattern at every place it occurs; the CNN's shared filters and global pooling find "
            "it anywhere."
        )
    elif gap > margin:
        alone = ", so a fixed position alone does not tell the classes apart" if not fixed else ""
        lines.append(
            f"Why the CNN wins: not where the pattern sits but its shape ({where}{alone}): its filters read local "
            f"shape (slopes, peaks, their order) that one weight per step learns less easily from "
            f"{results['sizes']['train']} {items}; {shifted}."
        )
    else:
        verb = "wins" if gap < -margin else "matches"
        if fixed and not moves:
            reason = (
                f"the classes differ in level or shape at fixed positions: {where}. Finding a pattern wherever it "
                "sits, convolution's advantage, has nothing to find here"
            )
        elif not moves:
            reason = f"the {items} are aligned in time, so one weight per step reads them ({where})"
        else:
            reason = (
                f"the pattern moves ({where}), yet with {results['sizes']['train']} training {items} the CNN did "
                "not turn its filters' reach into accuracy"
            )
        lines.append(f"Why the MLP {verb}: {reason}; {shifted}.")
    lines.append(
        _claim(
            "Time-shift robustness (a CNN tolerates a pattern moved in time better)",
            cnn_drop + MARGIN < mlp_drop,
            f"accuracy lost at a {share:.0%} shift: CNN {points(-cnn_drop)}, MLP {points(-mlp_drop)}",
        )
    )
    fewer = cnn["parameters"] < mlp["parameters"]
    lines.append(
        _claim(
            "Parameter efficiency (weight sharing gives more accuracy per parameter)",
            fewer and cnn["test_accuracy"] >= mlp["test_accuracy"] - margin,
            f"CNN {cnn['parameters']:,} parameters for {percent(cnn['test_accuracy'])}, MLP {mlp['parameters']:,} for "
            f"{percent(mlp['test_accuracy'])}; the CNN spends {cost}, since each weight is reused at every step",
        )
    )
    for model, label in ((cnn, "CNN"), (mlp, "MLP")):
        lines.append(
            f"Fit ({label}): train accuracy {percent(model['train_accuracy'])}, test {percent(model['test_accuracy'])} "
            f"(gap {points(model['train_accuracy'] - model['test_accuracy'])})."
        )
    return lines
