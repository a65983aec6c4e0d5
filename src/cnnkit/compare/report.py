"""The ``cnnkit compare`` report: ``results.json``, PNG plots, and the same tables in Markdown and HTML."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from cnnkit.compare.depth import DEFAULT_WIDTHS
from cnnkit.understand.robustness import UNITS

LABELS = {"cnn": "CNN (convnet)", "mlp": "MLP"}
COLOURS = {"cnn": "tab:blue", "mlp": "tab:orange"}


def _plot_summary(results: dict[str, Any], path: Path) -> None:
    from cnnkit.understand import figures

    plt = figures.pyplot()
    panels = [
        ("parameters", "parameters"),
        ("multiply_adds", "multiply-adds per image"),
        ("train_seconds", "training seconds"),
        ("test_accuracy", "test accuracy"),
    ]
    figure, axes_row = plt.subplots(1, len(panels), figsize=(13, 3.2))
    for axes, (key, title) in zip(axes_row, panels):
        values = [results["models"][m][key] for m in LABELS]
        bars = axes.bar(list(LABELS.values()), values, color=list(COLOURS.values()))
        axes.bar_label(bars, [f"{v:.1%}" if key == "test_accuracy" else f"{v:,.3g}" for v in values], fontsize=8)
        axes.set_title(title, fontsize=10)
        axes.tick_params(labelsize=8)
    figures.save(figure, path)


def _plot_data_efficiency(results: dict[str, Any], path: Path) -> None:
    from cnnkit.understand import figures

    plt = figures.pyplot()
    efficiency = results["data_efficiency"]
    figure, axes = plt.subplots(figsize=(5.5, 3.8))
    for key, label in LABELS.items():
        axes.plot(efficiency["train_images"], efficiency[key], "o-", label=label, color=COLOURS[key])
    axes.set(xscale="log", xlabel="training images (log scale)", ylabel="test accuracy", title="data efficiency")
    axes.grid(alpha=0.3)
    axes.legend()
    figures.save(figure, path)


def _plot_robustness(results: dict[str, Any], path: Path) -> None:
    from cnnkit.understand import figures

    plt = figures.pyplot()
    figure, axes_row = plt.subplots(1, len(UNITS), figsize=(16, 3.4), sharey=True)
    for axes, (kind, unit) in zip(axes_row, UNITS.items()):
        for key, label in LABELS.items():
            points = results["robustness"][key][kind]
            axes.plot([p[0] for p in points], [p[1] for p in points], "o-", label=label, color=COLOURS[key])
            axes.axhline(results["robustness"][key]["clean"], color=COLOURS[key], ls="--", lw=0.8)
        axes.set(title=kind, xlabel=unit)
        axes.grid(alpha=0.3)
    axes_row[0].set_ylabel("test accuracy (dashed: clean)")
    axes_row[0].legend(fontsize=8)
    figures.save(figure, path)


def _plot_overfitting(results: dict[str, Any], path: Path) -> None:
    from cnnkit.understand import figures

    plt = figures.pyplot()
    figure, axes = plt.subplots(figsize=(6.5, 3.8))
    names, train, val = [], [], []
    for key, label in LABELS.items():
        for setting in ("plain", "regularised"):
            row = results["overfitting"][key][setting]
            names.append(f"{label}\n{setting}")
            train.append(row["train_accuracy"])
            val.append(row["val_accuracy"])
    positions = range(len(names))
    axes.bar([p - 0.2 for p in positions], train, width=0.4, label="train")
    axes.bar([p + 0.2 for p in positions], val, width=0.4, label="validation")
    axes.set_xticks(list(positions), names, fontsize=8)
    axes.set(ylim=(min(val + train) - 0.05, 1.0), ylabel="accuracy", title="train/validation gap")
    axes.legend(fontsize=8)
    figures.save(figure, path)


def _plot_depth(results: dict[str, Any], path: Path) -> None:
    from cnnkit.understand import figures

    plt = figures.pyplot()
    figure, axes = plt.subplots(figsize=(5.5, 3.8))
    depth = results["depth"]
    axes.plot([r["conv_layers"] for r in depth], [r["test_accuracy"] for r in depth], "o-", color=COLOURS["cnn"])
    for row in depth:
        widths = "/".join(map(str, row["widths"]))
        axes.annotate(f"{widths} channels", (row["conv_layers"], row["test_accuracy"]), fontsize=7)
    axes.axhline(results["models"]["mlp"]["test_accuracy"], color=COLOURS["mlp"], ls="--", label="MLP")
    axes.set(xlabel="convolution layers", ylabel="test accuracy", title="depth at matched parameter counts")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figures.save(figure, path)


PLOTS = {
    "summary.png": _plot_summary,
    "data_efficiency.png": _plot_data_efficiency,
    "robustness.png": _plot_robustness,
    "overfitting.png": _plot_overfitting,
    "depth.png": _plot_depth,
}


def _tables(results: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]], str, str]]:
    """(section title, header, rows, plot file, note) for each part of the report."""
    models = results["models"]
    summary = [
        [
            LABELS[key],
            f"{m['parameters']:,}",
            f"{m['multiply_adds']:,}",
            f"{m['train_seconds']:.1f}",
            f"{m['test_accuracy']:.2%}",
        ]
        for key, m in models.items()
    ]
    efficiency = results["data_efficiency"]
    data_rows = [
        [f"{f:.0%}", str(n), f"{c:.2%}", f"{m:.2%}"]
        for f, n, c, m in zip(efficiency["fractions"], efficiency["train_images"], efficiency["cnn"], efficiency["mlp"])
    ]
    robustness_rows = [["clean", "", *(f"{results['robustness'][k]['clean']:.2%}" for k in LABELS)]]
    for kind, unit in UNITS.items():
        for index, (level, _) in enumerate(results["robustness"]["cnn"][kind]):
            accuracies = [f"{results['robustness'][k][kind][index][1]:.2%}" for k in LABELS]
            robustness_rows.append([kind, f"{level:g} {unit}", *accuracies])
    overfitting_rows = [
        [LABELS[key], setting, f"{row['train_accuracy']:.2%}", f"{row['val_accuracy']:.2%}", f"{row['gap'] * 100:+.1f}"]
        for key in LABELS
        for setting, row in results["overfitting"][key].items()
    ]
    target = results["depth_match"]["parameters"]
    depth_rows = [
        [
            str(r["stages"]),
            "/".join(map(str, r["widths"])),
            str(r["conv_layers"]),
            f"{r['parameters']:,} ({(r['parameters'] / target - 1) * 100:+.1f}%)",
            f"{r['multiply_adds']:,}",
            f"{r['test_accuracy']:.2%}",
        ]
        for r in results["depth"]
    ]
    return [
        (
            "Size, cost and accuracy",
            ["model", "parameters", "multiply-adds", "train s", "test acc"],
            summary,
            "summary.png",
            "",
        ),
        ("Data efficiency", ["share", "train images", "CNN", "MLP"], data_rows, "data_efficiency.png", ""),
        (
            "Robustness (test accuracy)",
            ["perturbation", "level", "CNN", "MLP"],
            robustness_rows,
            "robustness.png",
            "",
        ),
        (
            "Overfitting",
            ["model", "regularisation", "train acc", "val acc", "gap (pp)"],
            overfitting_rows,
            "overfitting.png",
            "",
        ),
        (
            "Depth (CNN, matched parameter counts)",
            ["stages", "widths", "conv layers", "parameters (vs target)", "multiply-adds", "test acc"],
            depth_rows,
            "depth.png",
            _depth_note(results["depth_match"]),
        ),
    ]


def _depth_note(match: dict[str, Any]) -> str:
    note = (
        f"Each depth has the default widths ({'/'.join(map(str, DEFAULT_WIDTHS))}) scaled by one factor, chosen so "
        f"its parameter count is within ±{match['tolerance']:.0%} of the default network's {match['parameters']:,}: "
        "the rows differ in depth, not in size."
    )
    for row in match["left_out"]:
        note += (
            f" {row['stages']} stage(s) left out: with at most {match['max_width']:,} channels a layer, it reaches "
            f"{row['parameters']:,} parameters."
        )
    return note


def _setup(results: dict[str, Any]) -> str:
    budget, sizes = results["budget"], results["sizes"]
    return (
        f"Data `{results['data']}`: {sizes['train']} train / {sizes['val']} val / {sizes['test']} test images of "
        f"shape {'x'.join(map(str, results['image_shape']))}, {results['classes']} classes. Both models: "
        f"{budget['epochs']} epochs, batch {budget['batch_size']}, AdamW one-cycle lr {budget['lr']}, seed "
        f"{budget['seed']}, on {results['device']}. The whole study took {results['seconds']:.0f} s."
    )


def _plot_signal_study(results: dict[str, Any], path: Path) -> None:
    """Left: each seed's test accuracy and the mean; right: accuracy as the test series are shifted in time."""
    from cnnkit.understand import figures

    plt = figures.pyplot()
    figure, (seeds_axes, shift_axes) = plt.subplots(1, 2, figsize=(10, 3.6))
    for position, (key, model) in enumerate(results["models"].items()):
        accuracies = [run["test_accuracy"] for run in model["runs"]]
        seeds_axes.bar(position, model["test_accuracy"], color=COLOURS[key], alpha=0.5)
        seeds_axes.plot([position] * len(accuracies), accuracies, "o", color=COLOURS[key])
        shares = [0.0, *results["shift"]["shares"]]
        shift_axes.plot(shares, [model["test_accuracy"], *results["shift"][key]], "o-", color=COLOURS[key],
                        label=model["name"])  # fmt: skip
    names = [model["name"] for model in results["models"].values()]
    seeds_axes.set_xticks(range(len(names)), names)
    seeds_axes.set(ylabel="test accuracy", title="test accuracy (dots: seeds)", ylim=(0, 1))
    shift_axes.set(xlabel="shift (share of the length)", ylabel="test accuracy", title="time shifts", ylim=(0, 1))
    shift_axes.grid(alpha=0.3)
    shift_axes.legend(fontsize=8)
    figures.save(figure, path)


def _signal_tables(results: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]], str, str]]:
    models, shift, facts = results["models"], results["shift"], results["data_facts"]
    summary = [
        [
            f"{LABELS[key]}: {m['name']}",
            f"{m['parameters']:,}",
            f"{m['multiply_adds']:,}",
            f"{m['train_seconds']:.1f}",
            f"{m['test_accuracy']:.2%} ± {m['test_accuracy_std'] * 100:.1f}",
            ", ".join(f"{run['test_accuracy']:.1%}" for run in m["runs"]),
        ]
        for key, m in models.items()
    ]
    shifts = [["none", *(f"{models[k]['test_accuracy']:.2%}" for k in models)]]
    shifts += [
        [f"{share:.0%} ({steps} steps)", *(f"{shift[k][i]:.2%}" for k in models)]
        for i, (share, steps) in enumerate(zip(shift["shares"], shift["steps"]))
    ]
    where = [[f"{facts['template_accuracy']:.2%}", f"{facts['median_lag']:g}", f"{facts['lag_share']:.1%}"]]
    return [
        (
            "Size, cost and accuracy",
            ["model", "parameters", "multiply-adds", "train s (mean)", "test acc (mean ± std)", "seeds"],
            summary,
            "summary.png",
            "",
        ),
        (
            "Time shifts (test accuracy, mean over seeds)",
            ["shift", *(models[k]["name"] for k in models)],
            shifts,
            "",
            "Even test series moved later, odd ones earlier; the edge value (silence for audio) moves in.",
        ),
        (
            "Where the pattern sits (no model)",
            ["fixed-position template accuracy", "median lag to class mean", "as share of length"],
            where,
            "",
            "Template: the nearest class-mean series. Lag: the shift that best aligns each training series with its "
            "class's mean (cross-correlation; audio: loudness envelopes).",
        ),
    ]


def _signal_setup(results: dict[str, Any]) -> str:
    budget, sizes = results["budget"], results["sizes"]
    return (
        f"Data `{results['data']}` ({results['modality']}): {sizes['train']} train / {sizes['val']} val / "
        f"{sizes['test']} test, input {'x'.join(map(str, results['input_shape']))}, {results['classes']} classes. "
        f"Both models: {budget['epochs']} epochs, batch {budget['batch_size']}, AdamW one-cycle lr {budget['lr']}, "
        f"seeds {budget['seed']} to {budget['seed'] + budget['seeds'] - 1}, on {results['device']}. "
        f"The whole study took {results['seconds']:.0f} s."
    )


def _parts(results: dict[str, Any]) -> tuple[str, str, list, dict]:
    """The title, the setup line, the tables and the plots of an image, a signal or a synthetic-image study."""
    if results.get("kind") == "synthetic":
        from cnnkit.compare.synthetic_report import synthetic_parts

        return synthetic_parts(results)
    title = "CNN or MLP? `cnnkit compare` report"
    if results.get("kind") == "signals":
        return title, _signal_setup(results), _signal_tables(results), {"summary.png": _plot_signal_study}
    return title, _setup(results), _tables(results), PLOTS


def to_markdown(results: dict[str, Any]) -> str:
    """The report as Markdown, with the plots as relative image links."""
    heading, setup, tables, _ = _parts(results)
    lines = [f"# {heading}", "", setup, "", "## Verdict", ""]
    lines += [f"- {sentence}" for sentence in results["verdict"]]
    for title, header, rows, plot, note in tables:
        lines += ["", f"## {title}", *(["", note] if note else []), ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines += ["", f"![{title}]({plot})"] if plot else []
    return "\n".join(lines) + "\n"


def to_html(results: dict[str, Any]) -> str:
    from cnnkit.understand import figures

    heading, setup, tables, _ = _parts(results)
    parts = [f"<p>{html.escape(setup)}</p><h2>Verdict</h2><ul>"]
    parts += [f"<li>{html.escape(sentence)}</li>" for sentence in results["verdict"]]
    parts.append("</ul>")
    for title, header, rows, plot, note in tables:
        paragraph = f"<p>{html.escape(note)}</p>" if note else ""
        image = f'<img src="{plot}" alt="">' if plot else ""
        parts.append(f"<h2>{html.escape(title)}</h2>{paragraph}{figures.html_table(header, rows)}{image}")
    return figures.html_page(heading.replace("`", ""), "".join(parts))


def write_compare_report(results: dict[str, Any], out_dir: Path) -> None:
    """Write ``results.json``, ``report.md``, ``report.html`` and the PNG plots into ``out_dir``.

    The plots are drawn in matplotlib's default style, not the user's ``matplotlibrc``: a
    report looks the same on every machine, and a configured font that is missing or a
    constrained layout (which ``tight_layout`` replaces with a warning) cannot flood the
    console.
    """
    from cnnkit.understand import figures

    with figures.pyplot().style.context("default"):
        for name, plot in _parts(results)[3].items():
            plot(results, out_dir / name)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    (out_dir / "report.md").write_text(to_markdown(results))
    (out_dir / "report.html").write_text(to_html(results))
