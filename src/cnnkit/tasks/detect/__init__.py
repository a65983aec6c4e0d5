"""Object detection: boxes with class labels and scores, evaluated by COCO's mean average precision.

The task's facts, without PyTorch: which epoch-row keys pick a run's best epoch, and the
detector a run trains when ``--model`` is not given.
"""

# The best epoch has the highest val mAP@[.5:.95]; mAP@0.5 breaks ties (tasks.monitor_score's convention).
MONITOR = ("val_map", "val_map50")

# cnnkit's compact stride-4 detector (models/detector.py): built for 20-40 px objects on small images and CPUs.
DEFAULT_DETECTOR = "boxnet"

# Input side when --img-size is not given: the side every detector's anchors and receptive fields are set for.
DEFAULT_IMG_SIZE = 320
