"""Object detection: boxes with class labels and scores, evaluated by COCO's mean average precision."""
