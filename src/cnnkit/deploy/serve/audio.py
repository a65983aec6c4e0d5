"""What the prediction service does for an audio model: WAV uploads in, and a page that records.

An audio model's ``POST /predict`` (:func:`cnnkit.deploy.serve.app.create_app`) takes a WAV file,
as the raw body or the multipart field ``file``: the recording a browser makes on the page (its
microphone's samples encoded as 16-bit PCM WAV by the page's script, ``recorder.html``) or any
upload. The file is decoded as ``cnnkit predict`` decodes one, by the run's recorded clip rule
(:meth:`~cnnkit.deploy.classifier.ImageClassifier.decode_clip`: mixed to mono, resampled, padded or
cropped), and the answer is the image classifier's plus a ``note`` when the recording was longer
than the model's clip and so cropped. Statuses: 400 for an empty body or a WAV file that cannot be
decoded (no audio, a corrupt header, a compressed codec: the reason is in the detail), 415 for
bytes that are not a WAV file at all.
"""

from __future__ import annotations

import html
from importlib import resources
from string import Template

import numpy as np
from fastapi import HTTPException

from cnnkit.data.wav import AudioDecodeError, AudioFormat


def check_wav(data: bytes) -> None:
    """Read only the RIFF header: 400 for nothing, 415 for bytes that are not a WAV file."""
    if not data:
        raise HTTPException(400, "empty body: send a WAV file as the body or as the form field 'file'")
    if data[:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        raise HTTPException(
            415, "not a WAV file: send a PCM or float WAV recording (ffmpeg -i in.m4a out.wav converts one)"
        )


def decode_upload(classifier, data: bytes) -> tuple[np.ndarray, str | None]:
    """An uploaded WAV file as a batch of one clip (1, 1, clip_samples), and the note if it was cropped."""
    check_wav(data)
    try:
        clip, note = classifier.decode_clip(data)
    except AudioDecodeError as error:  # a WAV header, but no audio, a corrupt header or an unsupported codec
        reason = str(error).replace("<bytes>", "the upload")
        raise HTTPException(400, f"cannot decode the WAV file: {reason}") from None
    return clip[None], note


def page_values(classifier) -> dict[str, str]:
    """What the classifier page (``page.html``) shows for an audio model: its input, a player, a record button."""
    audio_format = AudioFormat.from_facts(classifier.preprocessing.to_dict())
    seconds = f"{audio_format.clip_seconds:g}"
    recorder = Template(resources.files("cnnkit.deploy.serve").joinpath("recorder.html").read_text(encoding="utf-8"))
    return {
        "subject": "a recording",
        "input": html.escape(f"{seconds} s mono {audio_format.sample_rate} Hz audio"),
        "pick": "a WAV file",
        "accept": "audio/wav,audio/x-wav,.wav,.wave",
        "preview": '<audio id="preview" controls hidden></audio>',
        "recorder": recorder.substitute(clip_seconds=seconds),
    }
