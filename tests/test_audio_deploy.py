"""Deploying an audio run: predict WAV files from the run or its ONNX export, export with parity, serve uploads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from test_audio_train import CLIP, RATE, make_tone_folder
from test_export import WITHOUT_TORCH
from test_serve_browser import CHROMIUM, CHROMIUM_FLAGS, start_server  # noqa: F401 (start_server: a fixture)
from test_wav import BAD_INPUT

import cnnkit
from cnnkit.cli.main import main
from cnnkit.data.wav import read_wav, write_wav
from cnnkit.deploy.onnx_runtime import AUDIO_INPUT, open_model
from cnnkit.modelinfo import AudioPreprocessing

pytest.importorskip("onnxruntime", reason="the deploy extra (pip install -e '.[test]') provides onnxruntime")

BAD_FILES = {"not_a_wav.wav": "text", "empty.wav": "empty", "corrupt_header.wav": "zero channels"}


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bcresnet trained one epoch on tones and noise (0.25 s clips at 16 kHz), in-process: seconds, not minutes."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a loaded 2-core machine spins torch's pool (conftest's one_thread, module-wide)
    try:
        folder = make_tone_folder(tmp_path_factory.mktemp("tones") / "tones", per_class=8)
        out = tmp_path_factory.mktemp("audio_runs")
        flags = {"epochs": 1, "batch_size": 8, "clip_seconds": 0.25, "max_bad_share": 0.2}
        return cnnkit.train(data=str(folder), out=str(out), name="tones", verbose=False, **flags).dir
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def audio_export(audio_run: Path) -> tuple[Path, str]:
    """``export_onnx`` of the run to a named .onnx file, and the lines it printed."""
    import contextlib
    import io

    from cnnkit.deploy.export import export_onnx

    path = audio_run.parent / "exports" / "tones.onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        export_onnx(audio_run, out=path)
    return path, printed.getvalue()


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """New WAVs: a tone at the run's rate, a stereo 8 kHz tone, a 2-s tone (8 clips long) and the bad files."""
    folder = tmp_path_factory.mktemp("recordings")
    time = np.arange(2 * RATE) / RATE
    tone = (0.5 * np.sin(2 * np.pi * 440 * time))[:, None]
    write_wav(folder / "tone.wav", tone[:CLIP], RATE)
    write_wav(folder / "stereo_8k.wav", np.repeat(tone[: CLIP // 2 : 2], 2, axis=1), 8000)
    write_wav(folder / "long.wav", tone, RATE)
    for name, case in BAD_FILES.items():
        (folder / name).write_bytes(BAD_INPUT[case][0])
    return folder


def predicted(capsys: pytest.CaptureFixture, *args: str) -> tuple[list[dict], str]:
    assert main(["predict", *args, "--json"]) == 0
    captured = capsys.readouterr()
    return [json.loads(line) for line in captured.out.splitlines()], captured.err


@pytest.mark.slow
def test_predict_audio_folder_skips_bad_files_and_says_which_were_cropped(audio_run, recordings, capsys):
    records, err = predicted(capsys, str(audio_run), str(recordings))
    assert [Path(r["path"]).name for r in records] == ["long.wav", "stereo_8k.wav", "tone.wav"]
    classes = set(cnnkit.load(audio_run, device="cpu").classes)
    for record in records:
        assert set(record) == {"path", "labels", "probabilities"}  # the image classifier's record, not a copy
        assert set(record["labels"]) <= classes and record["probabilities"] == sorted(record["probabilities"])[::-1]
    lines = err.splitlines()
    for name, case in BAD_FILES.items():
        [line] = [line for line in lines if name in line]
        assert line.startswith("warning: skipped WAV file") and BAD_INPUT[case][1] in line
    [note] = [line for line in lines if line.startswith("note:")]
    assert "long.wav is 2.00 s, longer than the model's 0.25 s clip: classified its centre 0.25 s" in note
    assert len(lines) == len(BAD_FILES) + 1  # one line per skipped file and per cropped file, nothing else


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("not_a_wav.wav", "not_a_wav.wav is not a WAV file (no RIFF/WAVE header)"),
        ("empty.wav", "empty.wav is not a WAV file (it is empty)"),
        ("corrupt_header.wav", "corrupt_header.wav: corrupt WAV header (0 channels)"),
        ("missing.wav", "WAV file not found"),
    ],
)
def test_predict_audio_bad_file_is_one_line_and_exit_2(audio_run, recordings, capsys, name, says):
    assert main(["predict", str(audio_run), str(recordings / name)]) == 2
    captured = capsys.readouterr()
    assert says in captured.err and captured.err.count("\n") == 1 and not captured.out


@pytest.mark.slow
def test_predict_out_writes_the_csv_for_single_files_too(audio_run, recordings, tmp_path, capsys):
    records, _ = predicted(capsys, str(audio_run), str(recordings / "tone.wav"), "--out", str(tmp_path / "p.csv"))
    rows = (tmp_path / "p.csv").read_text().splitlines()  # --out was ignored unless a folder was given
    assert rows[0].startswith("path,label_1,probability_1") and rows[1].split(",")[:2] == [
        records[0]["path"],
        records[0]["labels"][0],
    ]


@pytest.mark.slow
def test_export_audio_checks_parity_on_validation_clips_and_takes_waveforms(audio_export):
    path, printed = audio_export
    assert "parity on" in printed and "validation clips: max |logit difference|" in printed
    session, info = open_model(path)
    assert info.preprocessing == AudioPreprocessing(RATE, CLIP, "end", "centre")
    graph_input = session.get_inputs()[0]
    assert graph_input.name == AUDIO_INPUT and graph_input.type == "tensor(float)"
    assert graph_input.shape[1] == 1 and not isinstance(graph_input.shape[2], int)  # any window a spotter slides
    report = json.loads(path.with_name("tones.export.json").read_text())
    assert report["parity"]["passed"] and report["parity"]["compared"] == "validation clips"


@pytest.mark.slow
def test_export_audio_int8_quantizes_the_convolutions_and_keeps_the_front_end_float(audio_run, audio_export, tmp_path):
    import onnx

    from cnnkit.deploy.onnx_runtime import OnnxClassifier
    from cnnkit.deploy.quantize import calibration_images, float_nodes, quantize_int8

    clips = calibration_images(cnnkit.load(audio_run, device="cpu"))  # what export --int8 calibrates on
    assert clips.dtype == np.float32 and clips.shape[1:] == (1, CLIP)
    quantize_int8(audio_export[0], tmp_path / "tones.int8.onnx", clips)
    logits = OnnxClassifier(tmp_path / "tones.int8.onnx").run(clips)
    assert logits.shape == (len(clips), len(cnnkit.load(audio_export[0]).classes)) and np.isfinite(logits).all()
    front = set(float_nodes(onnx.load(str(audio_export[0])).graph))
    graph = onnx.load(str(tmp_path / "tones.int8.onnx")).graph
    assert {"Conv", "MatMul", "Log"} <= {node.op_type for node in graph.node if node.name in front}  # still float
    dequantized = {name for node in graph.node if node.op_type == "DequantizeLinear" for name in node.output}
    layers = [node for node in graph.node if node.op_type in ("Conv", "Gemm") and node.name not in front]
    assert layers and all(set(node.input) & dequantized for node in layers)  # the network's layers compute in int8
    assert not any(set(node.input) & dequantized for node in graph.node if node.name in front)


@pytest.mark.slow
def test_predict_audio_export_agrees_with_the_run_without_torch(audio_run, audio_export, recordings):
    command = [sys.executable, "-c", WITHOUT_TORCH, "predict", str(audio_export[0]), str(recordings), "--json"]
    blocked = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert blocked.returncode == 0, blocked.stderr
    exported = [json.loads(line) for line in blocked.stdout.splitlines()]
    paths = sorted(recordings.glob("*.wav"))
    reference, failures, notes = cnnkit.load(audio_run, device="cpu").predict_clips(paths)
    assert len(failures) == len(BAD_FILES) and len(notes) == 1 and "note: " + notes[0] in blocked.stderr
    assert [r["path"] for r in exported] == [p.source for p in reference]
    assert [r["labels"] for r in exported] == [p.labels for p in reference]
    difference = np.abs(np.array([r["probabilities"] for r in exported]) - [p.probabilities for p in reference])
    assert difference.max() <= 1e-4


@pytest.fixture(scope="module")
def audio_clients(audio_run, audio_export):
    pytest.importorskip("fastapi", reason="the deploy extra provides fastapi")
    pytest.importorskip("httpx", reason="the test extra provides httpx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # starlette suggests httpx2
        from fastapi.testclient import TestClient

    from cnnkit.deploy.serve.app import create_app

    classifiers = [cnnkit.load(audio_run, device="cpu"), cnnkit.load(audio_export[0])]
    return [(classifier, TestClient(create_app(classifier))) for classifier in classifiers]


@pytest.mark.slow
def test_serve_audio_predicts_wav_uploads_and_refuses_bad_ones(audio_clients, recordings):
    for classifier, client in audio_clients:
        tone = (recordings / "stereo_8k.wav").read_bytes()
        form = client.post("/predict?top_k=2", files={"file": ("tone.wav", tone, "audio/wav")})
        raw = client.post("/predict?top_k=2", content=tone, headers={"content-type": "audio/wav"})
        assert form.status_code == raw.status_code == 200 and form.json() == raw.json()
        [expected] = classifier.predict(tone, top_k=2)
        assert form.json()["labels"] == expected.labels and form.json()["note"] is None
        long = client.post("/predict", content=(recordings / "long.wav").read_bytes()).json()
        assert long["note"].startswith("the upload is 2.00 s, longer than the model's 0.25 s clip")
        for name, (status, says) in {
            "empty.wav": (400, "empty body"),
            "not_a_wav.wav": (415, "not a WAV file"),
            "corrupt_header.wav": (400, "cannot decode the WAV file: the upload: corrupt WAV header (0 channels)"),
        }.items():
            refused = client.post("/predict", content=(recordings / name).read_bytes())
            assert refused.status_code == status and refused.json()["detail"].startswith(says), name
        assert client.get("/health").json()["explain"] is False  # Grad-CAM overlays are for image models
        page = client.get("/").text
        assert 'id="record"' in page and 'accept="audio/wav' in page and "0.25 s mono 16000 Hz audio" in page


@pytest.mark.slow
def test_serve_command_takes_an_audio_run(audio_run, monkeypatch, capsys):
    uvicorn = pytest.importorskip("uvicorn")
    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.append(app))
    assert main(["serve", str(audio_run), "--port", "8765"]) == 0
    assert [route.path for route in served[0].routes if route.path == "/predict"] == ["/predict"]
    assert "serving" in capsys.readouterr().out


FAKE_MICROPHONE = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]  # no permission prompt
# Keeps the bytes of the file the page posts (Playwright cannot read a multipart body of a Blob).
KEEP_UPLOAD = """{
  const send = window.fetch;
  window.fetch = async (url, options) => {
    window.uploaded = Array.from(new Uint8Array(await options.body.get("file").arrayBuffer()));
    return send(url, options);
  };
}"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} is missing: apt-get install chromium")
def test_serve_audio_page_records_the_microphone_and_posts_a_16_bit_wav(audio_clients, start_server, tmp_path):  # noqa: F811
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="the test extra provides playwright")
    classifier, client = audio_clients[1]
    url = start_server(client.app) + "/"
    time = np.arange(2 * 48_000) / 48_000
    write_wav(tmp_path / "microphone.wav", (0.5 * np.sin(2 * np.pi * 440 * time))[:, None], 48_000)  # what it hears
    microphone = [*FAKE_MICROPHONE, f"--use-file-for-fake-audio-capture={tmp_path / 'microphone.wav'}"]
    with sync_playwright.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS + microphone)
        try:
            page = browser.new_page()
            page.add_init_script(KEEP_UPLOAD)
            page.goto(url)
            assert page.text_content("#record") == "Record 0.25 s from the microphone"
            page.click("#record")
            page.wait_for_function("document.getElementById('top-label').textContent !== 'none yet'", timeout=15_000)
            assert page.text_content("#status") == "recording.wav"  # no error, and not cropped
            shown = page.text_content("#top-label")
            (tmp_path / "recording.wav").write_bytes(bytes(page.evaluate("window.uploaded")))
        finally:
            browser.close()
    samples, info = read_wav(tmp_path / "recording.wav")
    assert info.codec == "PCM 16-bit" and info.channels == 1 and 0.1 < info.seconds <= 0.25 + 1e-9  # one clip
    spectrum = np.abs(np.fft.rfft(samples[:, 0]))
    assert abs(spectrum.argmax() * info.sample_rate / len(samples) - 440) < 20  # the tone it heard, through opus
    assert shown == classifier.predict(tmp_path / "recording.wav")[0].label


@pytest.mark.slow
def test_models_shows_the_input_audio_models_are_counted_on(capsys):
    assert main(["models", "--task", "classify"]) == 0  # each model built once: the table is the JSON's rows
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["bcresnet"][1:3] == rows["m5"][1:3] == ["audio", "1x16000"]  # mono waveforms, 1 s at 16 kHz
    assert rows["m5"][4] == "558,090"  # the summary's count of m5 with 10 classes: one input channel, not three
