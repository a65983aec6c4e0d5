"""Object detection: boxes with class labels and scores, evaluated by COCO's mean average precision.

The task's facts, without PyTorch: which epoch-row keys pick a run's best epoch, and the
detector and batch size a run trains with when ``--model`` and ``--batch-size`` are not given.
"""

# The best epoch has the highest val mAP@[.5:.95]; mAP@0.5 breaks ties (tasks.monitor_score's convention).
MONITOR = ("val_map", "val_map50")

# cnnkit's compact stride-4 detector (models/detector.py): built for 20-40 px objects on small images and CPUs.
DEFAULT_DETECTOR = "boxnet"

# Images per step when --batch-size is not given. Chosen on the validation split of the composited-photo
# benchmark (benchmarks/detect_reference.py, 1,200 training images, 3 epochs, idle 2-core Xeon): val mAP
# 0.084 at 16 against 0.026 at 8 and 0.024 at the image default of 64, whose 19 steps an epoch are too few.
DEFAULT_BATCH_SIZE = 16

# Input side when --img-size is not given: the side every detector's anchors and receptive fields are set for.
DEFAULT_IMG_SIZE = 320
