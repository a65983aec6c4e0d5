"""The labelled images (or time series, or audio clips) a trained model is evaluated on, with its class indices."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from cnnkit.data import BUILTINS, load_data
from cnnkit.data.folder import has_split_folders, read_folder
from cnnkit.data.imageset import ImageSet, SkippedFile
from cnnkit.data.series import SeriesSet, has_test_file, is_series, load_series
from cnnkit.data.speech import AUDIO_BUILTINS, is_audio, load_audio
from cnnkit.data.wav import AudioFormat
from cnnkit.errors import CnnkitError


def labelled_images(
    data: str | None, split: str, classes: list[str] | None, size: tuple[int, int, str], config: dict
) -> tuple[ImageSet, list[SkippedFile]]:
    """The labelled images a trained model is evaluated on, and any skipped files.

    The images are relabelled to the model's ``classes`` (None keeps the data's own, as
    retrieval needs) and decoded at its ``size``
    (img_size, channels, resize rule). ``data`` defaults to the data named in the model's
    training ``config``; the rules are those of ``Classifier.evaluate``.
    """
    if split not in ("train", "val", "test"):
        raise CnnkitError(f"unknown split {split!r}; use train, val or test")
    img_size, channels, resize = size
    trained_on = config.get("data")
    data = data or trained_on
    if data is None:
        raise CnnkitError("this checkpoint does not record its training data; pass --data")
    if data not in BUILTINS and is_series(data):
        raise CnnkitError(f"{data} holds time series, and this model reads images; give labelled images")
    if data not in BUILTINS and is_audio(data):
        raise CnnkitError(f"{data} holds audio, and this model reads images; give labelled images")
    if takes_split(data, config):
        splits = load_data(
            data,
            img_size,
            channels,
            resize,
            config.get("val_split", 0.1),
            config.get("test_split", 0.2),
            config.get("data_dir") if data == trained_on else None,
        )
        return relabel(getattr(splits, split), classes, data), splits.skipped
    return read_folder(
        Path(data).expanduser(),
        img_size,
        channels,
        resize,
        workers=os.cpu_count() or 1,
        classes=classes,
    )


def labelled_series(
    data: str | None, split: str, classes: list[str], read: tuple[int, bool], config: dict
) -> SeriesSet:
    """The labelled series a series model is evaluated on, read as its training set was.

    ``read`` is the model's (channels, z-normalise). ``data`` defaults to the training data
    in ``config``; that, or a set with its own TEST file, is split as in training (the TEST
    file, else the recorded shares), and any other series file is evaluated whole.
    """
    if split not in ("train", "val", "test"):
        raise CnnkitError(f"unknown split {split!r}; use train, val or test")
    channels, normalize = read
    data = data or config.get("data")
    if data is None:
        raise CnnkitError("this checkpoint does not record its training data; pass --data")
    split_as_trained = takes_split(data, config)
    shares = (config.get("val_split", 0.1), config.get("test_split", 0.2)) if split_as_trained else (0.0, 0.0)
    splits = load_series(data, *shares, normalize)
    if splits.channels != channels:
        raise CnnkitError(f"{data}: series of {splits.channels} channel(s), and the model reads {channels}")
    return relabel(getattr(splits, split) if split_as_trained else splits.train, classes, data)


def labelled_audio(
    data: str | None, split: str, classes: list[str], clip_rule: dict, config: dict
) -> tuple[SeriesSet, list[SkippedFile]]:
    """The labelled clips an audio model is evaluated on, decoded by its ``clip_rule``, and the files skipped.

    ``clip_rule`` holds the run's rate, clip length and pad/crop rule (``AudioFormat.facts`` keys, as the
    checkpoint's preprocessing records them). ``data`` defaults to the training data in ``config``; that,
    a built-in or a folder with split subfolders is split as in training, any other WAV folder is read whole.
    """
    if split not in ("train", "val", "test"):
        raise CnnkitError(f"unknown split {split!r}; use train, val or test")
    trained_on = config.get("data")
    data = data or trained_on
    if data is None:
        raise CnnkitError("this checkpoint does not record its training data; pass --data")
    if data in BUILTINS or not is_audio(data):
        held = "images" if data in BUILTINS or Path(data).expanduser().is_dir() else "no audio"
        raise CnnkitError(
            f"{data} holds {held}, and this model reads audio; give a folder of WAV files, one subfolder per class"
        )
    audio_format = AudioFormat.from_facts(clip_rule)
    own = data == trained_on  # the run's own split rule (a speaker fold, the shares) and data folder
    if takes_split(data, config):
        splits = load_audio(
            data,
            audio_format,
            config.get("split_by") if own else None,
            config.get("fold") if own else None,
            config.get("val_split", 0.1),
            config.get("test_split", 0.2),
            config.get("data_dir") if own else None,
            background=config.get("background") or 0.0,  # the run's own _background_ clips of that split
            keywords=config.get("keywords") if own else None,  # the run's keyword task: its classes, _silence_
        )
        clips = getattr(splits, split)
    else:
        splits = load_audio(data, audio_format, val_split=0.0, test_split=0.0)
        clips = splits.train
    return relabel(clips, classes, data), splits.skipped


def takes_split(data: str | None, config: dict) -> bool:
    """Whether :func:`labelled_images` takes a split of ``data`` (default: the training data in ``config``).

    Built-in datasets, folders with train/val/test subfolders, series with their own TEST
    file and the model's own training data (split as in training) are split; any other
    folder or series file is evaluated whole.
    """
    trained_on = config.get("data")
    data = data or trained_on
    if data is None:
        return False
    if data in BUILTINS or data in AUDIO_BUILTINS:
        return True
    same_folder = (
        trained_on is not None
        and trained_on not in BUILTINS
        and Path(data).expanduser().resolve() == Path(trained_on).expanduser().resolve()
    )
    own_split = has_test_file(data) if is_series(data) else has_split_folders(Path(data).expanduser())
    return same_folder or own_split


def relabel(images: ImageSet | SeriesSet, classes: list[str] | None, data: str) -> ImageSet | SeriesSet:
    """Map the dataset's class indices (of images or series) onto the model's ``classes``, by name; None keeps them."""
    if classes is None or images.classes == classes:
        return images
    unknown = sorted(set(images.classes) - set(classes))
    if unknown:
        raise CnnkitError(f"{data} has classes the model does not know: {', '.join(unknown)}")
    mapping = torch.tensor([classes.index(name) for name in images.classes])
    return dataclasses.replace(images, labels=mapping[images.labels], classes=classes)
