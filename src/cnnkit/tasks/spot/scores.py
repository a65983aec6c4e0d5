"""Class posteriors of every window of a long waveform: the model slid over it, in chunks of windows.

Two ways, one answer per window (B, K) of softmax posteriors:

- **pooled** (the fast one): a network whose head averages a feature map over time and then
  applies a linear classifier (``global avg pool -> flatten -> linear``, as bcresnet's) and whose
  feature frames are its log-mel frames computes that map once over a chunk's whole span, and each
  window's logits are the classifier of the mean of its own frames. Overlapping windows share their
  convolutions: with a 1 s window and a 0.1 s hop this does about a tenth of the work, and a
  window alone in its span (the first of a recording, a one-window recording) scores as
  ``model(window)`` does, to float rounding. A window inside a span sees the audio round it
  where it was trained on zeros beyond its edges: a difference of context only, measured on
  the spotting benchmark.
- **windows**: any other network (m5, an MLP) is given each window as a clip, batched.

Speed, on one thread: the pooled network is small (BC-ResNet-1: 9k weights), so a chunk's span
alone costs more in per-operation overhead (Python, dispatch, kernel set-up) than in arithmetic.
The pooled way therefore runs the spans of :data:`POOLED_SPANS` chunks through the network as one
batch: a span alone took 2.4 times as long per chunk (one thread, a long recording). The batch
always has that many rows, the missing ones zeros (a stream's chunk comes alone and pays for
them): the network's numbers for a row depend on the batch's shape (a reduction is summed in
another order at another batch size) but never on the other rows, so a chunk scores the same to
the last bit whether it came with others (a file) or alone (a stream).
"""

from __future__ import annotations

import torch
from torch import nn

POOLED_SPANS = 8  # chunks per forward pass in the pooled way: per chunk, 1 took 2.4x the time of 8 (16 no faster)


def frame_hop(model: nn.Module, window: int) -> int | None:
    """The samples per feature frame when ``model`` can be pooled (see the module docstring), else None."""
    frontend, head = getattr(model, "frontend", None), getattr(model, "head", None)
    hop = getattr(frontend, "hop_length", None)
    if hop is None or not hasattr(model, "forward_features") or not isinstance(head, nn.Sequential):
        return None
    layers = list(head)
    if len(layers) != 3 or not isinstance(layers[1], nn.Flatten) or not isinstance(layers[2], nn.Linear):
        return None
    if not isinstance(layers[0], (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
        return None
    with torch.inference_mode():
        frames = model.forward_features(torch.zeros(1, 1, window)).shape[-1]
    return hop if frames == 1 + window // hop else None  # one feature frame per log-mel frame


class WindowScorer:
    """Posteriors (N, K) of windows of ``window`` samples starting every ``hop`` samples.

    Args:
        model: A classifier of (B, 1, window) waveforms, in eval mode.
        window: Samples per window (the run's clip).
        hop: Samples between window starts; the pooled way needs a multiple of the frame hop.
        batch_size: Windows per forward pass in the windows way. Defaults to 64.
    """

    def __init__(self, model: nn.Module, window: int, hop: int, batch_size: int = 64) -> None:
        self.model, self.window, self.hop, self.batch_size = model, window, hop, batch_size
        frames = frame_hop(model, window)
        self.frame_hop = frames if frames is not None and hop % frames == 0 else None

    @property
    def way(self) -> str:
        return "pooled" if self.frame_hop else "windows"

    def span(self, count: int) -> int:
        """Samples that ``count`` consecutive windows cover."""
        return (count - 1) * self.hop + self.window

    def score(self, samples: torch.Tensor, count: int) -> torch.Tensor:
        """Posteriors (count, K) of the ``count`` windows starting at 0, hop, ... of ``samples`` (>= span(count),)."""
        return self.score_chunks(samples, count, 1)[0]

    @torch.inference_mode()
    def score_chunks(self, samples: torch.Tensor, count: int, chunks: int) -> list[torch.Tensor]:
        """Posteriors (count, K) of each of ``chunks`` consecutive chunks of ``count`` windows, the first at 0.

        Chunk ``i`` holds the windows starting at ``i * count * hop``, ``+ hop``, ...; ``samples``
        must reach the end of the last one (``(chunks - 1) * count * hop + span(count)``).
        """
        stride, span = count * self.hop, self.span(count)
        if not self.frame_hop:
            return [self._windows(samples[i * stride : i * stride + span], count) for i in range(chunks)]
        found = []
        for first in range(0, chunks, POOLED_SPANS):
            spans = samples.new_zeros(POOLED_SPANS, 1, span)  # (POOLED_SPANS, 1, span): rows past the last chunk stay 0
            taken = min(POOLED_SPANS, chunks - first)
            for row in range(taken):
                start = (first + row) * stride
                spans[row, 0] = samples[start : start + span]
            features = self.model.forward_features(spans)  # (POOLED_SPANS, F, 1, frames) or (POOLED_SPANS, F, frames)
            found += [self._pooled(features[row], count) for row in range(taken)]
        return found

    def _windows(self, samples: torch.Tensor, count: int) -> torch.Tensor:
        windows = samples.unfold(0, self.window, self.hop)[:count]  # (count, window), a view
        logits = [self.model(windows[i : i + self.batch_size, None]) for i in range(0, count, self.batch_size)]
        return torch.cat(logits).float().softmax(1)

    def _pooled(self, features: torch.Tensor, count: int) -> torch.Tensor:
        features = features.reshape(features.shape[0], -1)  # (F, frames) of one span
        per_window = 1 + self.window // self.frame_hop
        step = self.hop // self.frame_hop
        # running sums give each window's mean in one subtraction: (F, frames + 1)
        sums = torch.nn.functional.pad(features.double().cumsum(1), (1, 0))
        starts = torch.arange(count) * step
        means = (sums[:, starts + per_window] - sums[:, starts]) / per_window  # (F, count)
        classifier = self.model.head[-1]
        return classifier(means.T.to(features.dtype)).float().softmax(1)
