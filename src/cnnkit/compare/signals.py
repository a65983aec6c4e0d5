"""``cnnkit compare`` on time series and audio: the data kind's default CNN against an MLP, over several seeds.

The image study's perturbations (rotation, scale, brightness) and its depth ladder are
image facts; what decides between a CNN and an MLP on a signal is *where* the pattern
sits. An MLP learns one weight per time step, so it does well when the classes differ
in level or shape at fixed positions and badly when the telling pattern moves in time;
a CNN's shared filters and global pooling find it anywhere. Wang et al. (2017) measured
both: their MLP beat the FCN on ECG200 (heartbeats aligned by the R peak) and lost badly
on sets such as OSULeaf, whose leaf outlines start at arbitrary points.

So the study measures, on the same splits and with one budget (``cnnkit train``'s
settings for the kind of data): both models' test accuracy over ``budget.seeds`` seeds;
their accuracy on the test series shifted in time by 5, 10 and 20% of the length; and two
model-free facts of the data (:func:`fixed_position_facts`): how well a fixed-position
template (the nearest class-mean series) classifies, and how far each training series
sits in time from its class's mean shape. :func:`cnnkit.compare.verdict.signal_verdict`
turns them into which model to use and why.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from statistics import mean, pstdev
from typing import Any

import torch
from torch import nn

from cnnkit.compare.budget import Budget
from cnnkit.compare.study import Study, _cap, write_study
from cnnkit.compute import select_device
from cnnkit.config import AUDIO_TRAINING, DEFAULT_MODELS
from cnnkit.data.series import SeriesSet
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import AudioPreprocessing, SeriesPreprocessing
from cnnkit.training.prepare import series_settings
from cnnkit.understand.summary import count_multiply_adds

MLPS = {"series": "mlp1d", "audio": "mlp_logmel"}  # Wang et al.'s MLP baseline, on the series or on log-mels
SHIFTS = (0.05, 0.1, 0.2)  # of the length; alternate series move forwards and backwards
ENVELOPE_FRAMES = 100  # an audio clip's loudness profile for the model-free facts: raw samples do not align


def signal_budget(modality: str, train_count: int, given: dict[str, Any]) -> Budget:
    """``cnnkit train``'s settings for ``modality`` (``config.SERIES_*``, ``AUDIO_TRAINING``), overridden by ``given``.

    Series get ``training.prepare.series_settings`` (batches of a tenth of the series, 2 to 16,
    lr 1e-3, batch 16's epochs of about 600 steps); audio 20 epochs of batch 32 at lr 3e-3.
    Both models of the study get the same.
    """
    if modality == "series":
        settled = series_settings(train_count)
    else:
        settled = {key: value for key, value in AUDIO_TRAINING.items() if key in ("epochs", "batch_size", "lr")}
    return Budget(**{**settled, **given})


def load_signal_study(
    data: str, modality: str, given: dict[str, Any], data_dir: str | None, device: str, keywords: str | None = None
) -> Study:
    """Series (a UCR/aeon pair, CSV, NPY) or audio (WAV class folders, a speech built-in; ``keywords``: its task)."""
    from cnnkit.data import load_data
    from cnnkit.data.speech import check_keywords, clip_format, load_audio

    check_keywords(data, keywords)
    model_kwargs: dict[str, Any] = {}
    if modality == "series":
        splits = load_data(data)
        preprocessing = SeriesPreprocessing(splits.channels, splits.length)
    else:
        audio_format = clip_format(data)
        splits = load_audio(data, audio_format, data_dir=data_dir, keywords=keywords)
        preprocessing = AudioPreprocessing(audio_format.sample_rate, audio_format.clip_samples, audio_format.pad,
                                           audio_format.crop)  # fmt: skip
        model_kwargs = {"sample_rate": audio_format.sample_rate}  # as cnnkit train records it
    budget = signal_budget(modality, len(splits.train), given)
    if budget.epochs < 1 or budget.seeds < 1 or budget.train_size < 20 or budget.test_size < 1:
        raise CnnkitError("compare needs --epochs >= 1, --seeds >= 1, --train-size >= 20 and --test-size >= 1")
    if len(splits.train) == 0 or len(splits.test) == 0:
        raise CnnkitError(f"{data}: compare needs training and test series; this data has {len(splits.test)} test")
    train, test = _cap(splits.train, budget.train_size, budget.seed), _cap(splits.test, budget.test_size, budget.seed)
    val = splits.val if len(splits.val) else test
    return Study(train, val, test, preprocessing, budget, select_device(device), model_kwargs)


def shift_in_time(values: torch.Tensor, share: float, fill_edges: bool) -> torch.Tensor:
    """Series (N, C, L) moved by ``share`` of L: even rows later, odd rows earlier.

    What moves in from outside is the series' own first or last value (``fill_edges``, for
    series at rest before and after) or silence (zeros, for audio).
    """
    steps = max(1, round(share * values.shape[-1]))
    out = values.clone()
    later, earlier = values[0::2], values[1::2]
    out[0::2, :, steps:] = later[..., :-steps]
    out[0::2, :, :steps] = later[..., :1] if fill_edges else 0.0
    out[1::2, :, :-steps] = earlier[..., steps:]
    out[1::2, :, -steps:] = earlier[..., -1:] if fill_edges else 0.0
    return out


def _profile(values: torch.Tensor, audio: bool) -> torch.Tensor:
    """(N, C, L) series as they are, or clips as their loudness envelope (N, 1, ENVELOPE_FRAMES)."""
    if not audio:
        return values.float()
    return nn.functional.adaptive_avg_pool1d(values.float().abs(), ENVELOPE_FRAMES)


def fixed_position_facts(train: SeriesSet, test: SeriesSet, audio: bool = False) -> dict[str, float]:
    """Model-free facts that say whether the classes differ at fixed positions or the pattern moves.

    Returns:
        ``template_accuracy``: test accuracy of the nearest class-mean series (Euclidean), a
        classifier that reads fixed positions only; ``median_lag``: the median, over the
        training series, of the shift (in steps; envelope frames for audio) that best aligns
        each with its class's mean by cross-correlation, and ``lag_share`` the same as a share
        of the length.
    """
    x, y = _profile(train.values, audio), train.labels
    means = torch.stack(
        [x[y == k].mean(0) if (y == k).any() else torch.zeros_like(x[0]) for k in range(len(train.classes))]
    )
    distances = torch.cdist(_profile(test.values, audio).flatten(1), means.flatten(1))  # (N_test, K)
    template = float((distances.argmin(1) == test.labels).double().mean())
    length = x.shape[-1]
    series = x.mean(1) - x.mean((1, 2))[:, None]  # (N, L): channel mean, its level removed
    centres = means.mean(1)[y] - means.mean(1)[y].mean(1, keepdim=True)
    spectrum = torch.fft.rfft(series, 2 * length) * torch.fft.rfft(centres, 2 * length).conj()
    correlation = torch.fft.irfft(spectrum, 2 * length)  # (N, 2L): lag t at index t, lag -t at 2L - t
    lags = torch.arange(2 * length)
    lags = torch.where(lags < length, lags, lags - 2 * length)
    allowed = lags.abs() < length // 2
    best = lags[correlation.masked_fill(~allowed, -math.inf).argmax(1)].abs().double()
    median = float(best.median())
    return {"template_accuracy": template, "median_lag": median, "lag_share": median / length, "length": length}


def measure_signals(study: Study, data: str, modality: str, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Both models over every seed, their accuracy under time shifts, and the data's fixed-position facts."""
    budget, started = study.budget, time.perf_counter()
    shape = tuple(study.preprocessing.input_shape)
    names = {"cnn": DEFAULT_MODELS[modality], "mlp": MLPS[modality]}
    audio = modality == "audio"
    results: dict[str, Any] = {
        "kind": "signals",
        "modality": modality,
        "data": data,
        "input_shape": list(shape),
        "classes": len(study.train.classes),
        "sizes": {"train": len(study.train), "val": len(study.val), "test": len(study.test)},
        "budget": asdict(budget),
        "device": str(study.device),
        "models": {},
        "shift": {"shares": list(SHIFTS), "steps": [max(1, round(s * shape[-1])) for s in SHIFTS]},
    }
    shifted = [
        SeriesSet(shift_in_time(study.test.values, share, not audio), study.test.lengths, study.test.labels,
                  study.test.classes, study.test.sources)
        for share in SHIFTS
    ]  # fmt: skip
    seeds = list(range(budget.seed, budget.seed + budget.seeds))
    for key, name in names.items():
        runs = []
        for seed in seeds:
            seeded = replace(study, budget=replace(budget, seed=seed))
            model, seconds = seeded.fit(name)
            runs.append(
                {
                    "seed": seed,
                    "test_accuracy": study.accuracy(model),
                    "train_accuracy": study.accuracy(model, study.train),
                    "train_seconds": seconds,
                    "shifted": [study.accuracy(model, part) for part in shifted],
                }
            )
            say(f"{name} seed {seed}: test accuracy {runs[-1]['test_accuracy']:.2%} ({seconds:.1f}s)")
        accuracies = [run["test_accuracy"] for run in runs]
        results["models"][key] = {
            "name": name,
            "parameters": sum(p.numel() for p in model.parameters()),
            "multiply_adds": count_multiply_adds(model, shape),
            "test_accuracy": mean(accuracies),
            "test_accuracy_std": pstdev(accuracies),
            "train_accuracy": mean(run["train_accuracy"] for run in runs),
            "train_seconds": mean(run["train_seconds"] for run in runs),
            "runs": runs,
        }
        results["shift"][key] = [mean(run["shifted"][i] for run in runs) for i in range(len(SHIFTS))]
    results["data_facts"] = fixed_position_facts(study.train, study.test, audio)
    results["seconds"] = time.perf_counter() - started
    return results


def compare_signals(
    data: str,
    modality: str,
    given: dict[str, Any] | None = None,
    out: str | Path = "runs",
    name: str | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    say: Callable[[str], None] = print,
    keywords: str | None = None,
) -> tuple[dict[str, Any], Path]:
    """Run the signal study and write its report under ``out/name``, with the image study's folder rules.

    Args:
        data: Time series (a UCR or aeon TRAIN/TEST pair, CSV, NPY) or audio (WAV class folders, a speech built-in).
        modality: ``series`` or ``audio`` (``cnnkit.training.prepare.data_modality`` of ``data``).
        given: Budget keys the caller set (``epochs``, ``batch_size``, ``lr``, ``seed``, ``seeds``, ...); the
            rest are ``cnnkit train``'s for the kind of data.
        out: Folder of the report directory. Defaults to ``runs``.
        name: Report directory name. Defaults to ``compare``, ``compare2``, ...
        data_dir: Folder holding a built-in speech set.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        say: Where progress lines go. Defaults to ``print``.
        keywords: speech-commands' keyword task, as ``cnnkit train --keywords`` takes it. Defaults to None.

    Example:
        >>> results, folder = compare_signals("GunPoint/", "series", {"seeds": 5})
        >>> results["verdict"][0]
    """
    from cnnkit.compare.verdict import signal_verdict

    study = load_signal_study(data, modality, given or {}, data_dir, device, keywords)

    def produce() -> dict[str, Any]:
        results = measure_signals(study, data, modality, say)
        return {**results, "verdict": signal_verdict(results)}

    return write_study(out, name, produce)
