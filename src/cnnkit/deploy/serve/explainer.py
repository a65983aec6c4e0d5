"""Grad-CAM overlays for the prediction service's ``?explain=true``, each on a private copy of the model."""

from __future__ import annotations

import base64
import copy
import queue


class Explainer:
    """Grad-CAM overlays, each computed on a private copy of the model that no other request touches.

    Grad-CAM registers a forward hook on the target layer and runs a backward pass; on the
    shared model that hook would also fire inside concurrent plain predictions (which run
    without gradients, and fail) and could record another request's activations. A copy
    is made the first time a worker needs one and reused after, so there are at most as
    many copies as requests explained at once (``max_concurrency``).
    """

    def __init__(self, classifier) -> None:
        self.classifier = classifier
        self.idle: queue.SimpleQueue = queue.SimpleQueue()

    def _private_copy(self):
        try:
            return self.idle.get_nowait()
        except queue.Empty:
            private = copy.copy(self.classifier)  # shares the (read-only) class names and preprocessing
            private.model = copy.deepcopy(self.classifier.model)
            return private

    def overlay(self, pixels, class_index: int) -> str:
        """A PNG data URL of the Grad-CAM of ``class_index`` over the uint8 image ``pixels`` (1, C, H, W)."""
        from cnnkit.understand.explain import overlay_png

        private = self._private_copy()
        try:
            png = overlay_png(private, pixels, class_index)
        finally:
            self.idle.put(private)
        return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
