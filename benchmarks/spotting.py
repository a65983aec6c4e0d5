"""Keyword spotting (issue 16): spoken digits found in a long recording of held-out clips; an hour of noise.

What ``cnnkit spot`` does, measured three ways on FSDD (the Free Spoken Digit Dataset):

1. **F1** (target at least 0.90): the test takes of the run's split (takes 0-4 of every digit and
   speaker, never trained on, nor chosen on) are joined in a shuffled order into one long recording,
   each word after a gap of 1-2 s of noise (white and pink, ``--noise-db`` RMS, also under the
   words), and spotted; a detection hits a word of the same digit when its middle lies within the
   word, widened by 0.5 s (``tasks/spot/metrics.py``). Written as ``long.wav`` and ``long.csv`` so
   ``cnnkit spot RUN long.wav --labels long.csv --out DIR`` repeats it and draws the DET curve.
2. **Speed** (target at least 100x real time on one core): seconds of audio spotted per second of
   wall clock with ``torch.set_num_threads(1)``, over the long recording and the hour of noise.
3. **False alarms per hour** on an hour of speech-free noise: minutes of silence, white and pink
   noise at levels from -70 to -20 dBFS, in turn, fed block by block as a stream would be.

The run is trained here (``cnnkit.train`` with its audio defaults: bcresnet, the background class,
the ``auto`` augmentation, 20 epochs) unless ``--run`` gives one; ``--epochs`` shortens it for a
check, ``--augments`` changes the augmentation. For FSDD ``auto`` mixes white or pink noise into
80% of the training clips at -5 to 30 dB SNR (``data/audio_augment.AUTO_AUDIO_WITHOUT_BACKGROUND``):
FSDD's words end in digital zeros and the background clips never do, so without noise a model
learns "any noise floor means background", and its quietest speaker (theo, about -49 dBFS over a
1-s clip) lies 4 dB under this benchmark's -45 dBFS noise. Time it on an idle machine; on a
shared one the speed is meaningless.

``--select`` chooses that augmentation without a test take: it links takes 5-49 into a scratch
folder, trains each ``--augments`` value there (validation carved from those takes, as a
standard-split run carves it), and spots the long recording of the validation words at
``--noise-db`` in white, pink and mixed noise, with hits by speaker, the clean validation accuracy
and the false alarms in ``--noise-minutes`` of noise.

    python benchmarks/spotting.py --data-dir ../shared/data/fsdd                     # train, then measure
    python benchmarks/spotting.py --data-dir ../shared/data/fsdd --run runs/spotting/fsdd   # measure a run
    python benchmarks/spotting.py --data-dir ../shared/data/fsdd --epochs 1 --noise-minutes 1   # a check
    python benchmarks/spotting.py --data-dir ../shared/data/fsdd --select --epochs 12 --noise-minutes 5 \\
        --out runs/spotting_select --augments auto shift=0.1,gain=6,noise=0.8,snr_min=10,snr_max=40
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from audio_pipeline import cpu_model

import cnnkit
from cnnkit.data.background import BACKGROUND_CLASS, pink_noise, white_noise
from cnnkit.data.series import SeriesSet
from cnnkit.data.speech import FSDD, FSDD_NAME, FSDD_TEST_INDICES, load_spoken_digits, locate_speech
from cnnkit.data.wav import AudioFormat, write_wav
from cnnkit.tasks.spot import SpotRun, SpotSettings, Word, load_run, score_detections, spot_blocks

GAP_SECONDS = (1.0, 2.0)
NOISE_LEVELS_DB = (-70.0, -20.0)


def noise(samples: int, decibels: float, rng: np.random.Generator, colour: str = "mix") -> np.ndarray:
    """Noise (samples,) at ``decibels`` RMS below full scale: white, pink, or ``mix`` (half of each in power)."""
    rms = 10 ** (decibels / 20)
    if colour != "mix":
        return (white_noise if colour == "white" else pink_noise)(samples, rms, rng)
    return white_noise(samples, rms / np.sqrt(2), rng) + pink_noise(samples, rms / np.sqrt(2), rng)


def long_recording(
    clips: SeriesSet, rate: int, noise_db: float, seed: int, colour: str = "mix"
) -> tuple[np.ndarray, list[Word], list[int]]:
    """``clips`` in a shuffled order, each after a noise gap, over noise: (samples,), the words, the clips' order."""
    rng = np.random.default_rng(seed)
    pieces, words, position = [], [], 0
    order = rng.permutation(len(clips)).tolist()
    for index in order:
        gap = round(rng.uniform(*GAP_SECONDS) * rate)
        clip = clips.values[index, 0, : int(clips.lengths[index])].numpy()
        pieces += [np.zeros(gap, np.float32), clip]
        start, end = (position + gap) / rate, (position + gap + len(clip)) / rate
        words.append(Word(clips.classes[int(clips.labels[index])], start, end))
        position += gap + len(clip)
    tail = np.zeros(round(GAP_SECONDS[0] * rate), np.float32)
    samples = np.concatenate([*pieces, tail])
    samples += noise(len(samples), noise_db, rng, colour)
    return np.clip(samples, -1, 1), words, order


def noise_hour(minutes: float, rate: int, seed: int):
    """Blocks of one minute (at most) of speech-free noise, the kinds and levels in turn."""
    rng = np.random.default_rng(seed + 1)
    total = round(minutes * 60 * rate)
    for start in range(0, total, 60 * rate):
        samples = min(60 * rate, total - start)
        kind = (start // (60 * rate)) % 3
        level = rng.uniform(*NOISE_LEVELS_DB)
        if kind == 0:
            yield white_noise(samples, 10 ** (-90 / 20), rng)  # dither: a quiet room's digital silence
        else:
            yield (white_noise if kind == 1 else pink_noise)(samples, 10 ** (level / 20), rng)


def timed(spotter, blocks) -> tuple[list, float]:
    started = time.perf_counter()
    found = list(spot_blocks(spotter, blocks))
    return found, time.perf_counter() - started


def train(args: argparse.Namespace, augment: str, data_dir: str | None, out: Path, name: str) -> cnnkit.Run:
    """A run of ``cnnkit.train`` on spoken-digits with the audio defaults but ``augment`` (and ``--epochs``)."""
    overrides = {"epochs": args.epochs} if args.epochs else {}
    data = {"data": "spoken-digits", "data_dir": data_dir, "out": str(out), "name": name}
    return cnnkit.train(**data, seed=args.seed, augment=augment, verbose=False, **overrides)


def spot_recording(run: SpotRun, clips: SeriesSet, noise_db: float, seed: int, colour: str = "mix") -> dict:
    """F1, hits, misses and false alarms of ``run`` on the long recording of ``clips``, and its hits by speaker."""
    samples, words, order = long_recording(clips, run.sample_rate, noise_db, seed, colour)
    found, _ = timed(run.spotter(SpotSettings()), iter([samples]))
    speakers = [FSDD_NAME.match(source).group(2) for source in clips.sources]
    by_speaker = {}
    for speaker in sorted(set(speakers)):
        own = [word for word, index in zip(words, order) if speakers[index] == speaker]
        by_speaker[speaker] = f"{score_detections(found, own, 1.0).hits}/{len(own)}"
    metrics = score_detections(found, words, len(samples) / run.sample_rate).to_dict()
    return {key: metrics[key] for key in ("f1", "hits", "misses", "false_alarms")} | {"hits_by_speaker": by_speaker}


def select(args: argparse.Namespace) -> None:
    """Each ``--augments`` value trained on FSDD's training takes alone and spotted on their validation words.

    Takes 5-49 are linked into a scratch folder, so no test take (0-4) is read at all; the run
    carves its validation takes from them (10%, stratified) as a standard-split run does, and
    those words, never trained on, make the long recording, at ``--noise-db`` in each colour.
    """
    out = Path(args.out)
    train_only = out / "train_only"
    recordings = train_only / "recordings"
    recordings.mkdir(parents=True, exist_ok=True)
    for path in (locate_speech(FSDD, args.data_dir) / "recordings").iterdir():
        match = FSDD_NAME.match(path.name)
        if match and int(match.group(3)) not in FSDD_TEST_INDICES and not (recordings / path.name).exists():
            (recordings / path.name).symlink_to(path.resolve())
    for number, augment in enumerate(args.augments):
        trained = train(args, augment, str(train_only), out, f"select{number}")
        clean = trained.history[trained.best_epoch - 1]["val_acc"]  # words and background clips, no noise added
        run = load_run(trained.dir)
        val = load_spoken_digits(str(train_only), AudioFormat(run.sample_rate, run.sample_rate)).val
        row = {"augment": augment, "epochs": len(trained.history), "clean_val_acc": round(100 * clean, 2)}
        for colour in ("mix", "white", "pink"):
            row[f"{colour}@{args.noise_db:g}dB"] = spot_recording(run, val, args.noise_db, args.seed, colour)
        alarms, _ = timed(run.spotter(SpotSettings()), noise_hour(args.noise_minutes, run.sample_rate, args.seed))
        row["noise_false_alarms"] = f"{len(alarms)} in {args.noise_minutes:g} min"
        print(json.dumps(row), flush=True)


def measure(args: argparse.Namespace) -> None:
    """Train (unless ``--run``), then spot the test takes' long recording and the hour of noise."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trained = None if args.run else train(args, args.augments[0], args.data_dir, out, "fsdd")
    run_dir = args.run or trained.dir
    run = load_run(run_dir)
    settings = SpotSettings(threshold=args.threshold)
    test = load_spoken_digits(args.data_dir, AudioFormat(run.sample_rate, run.sample_rate)).test
    samples, words, _ = long_recording(test, run.sample_rate, args.noise_db, args.seed)
    write_wav(out / "long.wav", samples, run.sample_rate)
    (out / "long.csv").write_text(
        "label,start,end\n" + "".join(f"{w.label},{w.start:.3f},{w.end:.3f}\n" for w in words)
    )
    seconds = len(samples) / run.sample_rate
    found, elapsed = timed(run.spotter(settings), iter([samples]))
    metrics = score_detections(found, words, seconds)
    alarms, noise_elapsed = timed(run.spotter(settings), noise_hour(args.noise_minutes, run.sample_rate, args.seed))
    results = {
        "run": str(run_dir),
        "background_class": BACKGROUND_CLASS in run.classes,
        "clip_test_accuracy": round(100 * trained.test.accuracy, 2) if trained and trained.test else None,
        "settings": vars(settings),
        "long_recording": {"seconds": round(seconds, 1), **metrics.to_dict()},
        "x_real_time_one_thread": round(seconds / elapsed, 1),
        "noise": {
            "minutes": args.noise_minutes,
            "false_alarms": len(alarms),
            "false_alarms_per_hour": round(len(alarms) / (args.noise_minutes / 60), 2),
            "x_real_time_one_thread": round(args.noise_minutes * 60 / noise_elapsed, 1),
            "labels": sorted({d.label for d in alarms}),
        },
        "cpu": cpu_model(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    again = f"cnnkit spot {run_dir} {out / 'long.wav'} --labels {out / 'long.csv'} --out {out}"
    print(f"repeat it and draw the DET curve: {again}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="folder holding FSDD's recordings/ (default: cnnkit's lookup)")
    parser.add_argument("--run", help="an audio run trained on spoken-digits' standard split (default: train one)")
    parser.add_argument("--epochs", type=int, help="training epochs (default: cnnkit's audio default)")
    parser.add_argument(
        "--augments", nargs="+", default=["auto"], help="--augment of training (default: auto); --select compares each"
    )
    parser.add_argument("--out", default="runs/spotting", help="folder for the run, long.wav, long.csv, results.json")
    parser.add_argument("--threshold", type=float, default=SpotSettings().threshold)
    parser.add_argument("--noise-db", type=float, default=-45.0, help="RMS of the noise between and under the words")
    parser.add_argument("--noise-minutes", type=float, default=60.0, help="minutes of speech-free noise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--select", action="store_true", help="compare --augments on validation words alone")
    args = parser.parse_args()
    torch.set_num_threads(1)  # training and spotting alike: the speeds are one core's
    (select if args.select else measure)(args)


if __name__ == "__main__":
    main()
