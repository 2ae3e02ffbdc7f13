"""Where should EfficientNet-Lite's levels be read: block outputs (the
default) or the next block's expansion (1x1 conv -> BN -> ReLU6, 6x the
channels)?

    tools/sidroot run python3 models/studies/lite_taps.py DATA OUT.json [IMAGE_SIZE] [BANK_SIZE]

The block outputs are MBConv's linear bottlenecks (24/40/112 channels, no
activation); the expansion that follows is where the network spreads them
out again (144/240/672). ResNet50-v2 gained from the same move (levels read
through the next unit's BN -> ReLU: 87.3 vs 86.1). Scored with
`gnl teacher-check`'s frozen-teacher kNN (same bank, pooling and image score).
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gnl.data import test_samples, train_images  # noqa: E402
from gnl.metrics import image_auroc, image_auroc_per_class  # noqa: E402
from gnl import teacher as T  # noqa: E402
from gnl.teacher import bank_subset, build_teacher, knn_image_scores  # noqa: E402


def expanded_forward(body):
    """body.forward that returns, at each level end, the next block's expansion."""
    def forward(x):
        net = body.net
        x = F.relu6(net._bn0(net._conv_stem(x)))
        out = []
        for i, b in enumerate(net._blocks):
            if i - 1 in body.ends:
                out.append(F.relu6(b._bn0(b._expand_conv(x))))
            if len(out) == len(body.ends):
                return out
            x = b(x)
        raise RuntimeError("the last level has no following block")
    return forward


def main() -> int:
    data, out = sys.argv[1], Path(sys.argv[2])
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 256
    bank_size = int(sys.argv[4]) if len(sys.argv) > 4 else 16384
    train = train_images(data)
    bank_paths = bank_subset(train, 200)
    samples = test_samples(data)
    labels = np.array([s.anomalous for s in samples])
    classes = np.array([s.label for s in samples])
    result = {"image_size": size, "bank_size": bank_size}
    for taps in ("block", "expanded"):
        torch.manual_seed(0)
        truncate = T.EfficientNetLite.truncate
        if taps == "expanded":  # keep the block after the last level: its expansion is read
            T.EfficientNetLite.truncate = lambda net, n: truncate(net, n + 1)
        teacher = build_teacher()
        T.EfficientNetLite.truncate = truncate
        if taps == "expanded":
            teacher.body.forward = expanded_forward(teacher.body)
        t0 = time.time()
        scores = knn_image_scores(teacher, bank_paths, [s.path for s in samples], size, bank_size, 0)
        result[taps] = {
            "image_auroc": round(image_auroc(labels, scores), 4),
            "per_class": image_auroc_per_class(classes, scores),
            "seconds": round(time.time() - t0),
        }
        print(taps, result[taps], flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
