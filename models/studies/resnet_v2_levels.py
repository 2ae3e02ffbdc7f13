"""Should ResNet50-v2's levels be read raw or through the next unit's BN -> ReLU?

ResNet50-v2's three levels read raw (a pre-activation net's un-normalised
residual sums) or through the next unit's BN -> ReLU (what the next unit
itself reads; `stage4_batchnorm0` for stage 3): frozen-teacher kNN image
AUROC on a data set, by `gnl teacher-check`'s protocol and defaults (256x256
squash, 200 bank images, seed 0) at 16,384 bank descriptors.

    tools/sidroot run python3 models/studies/resnet_v2_levels.py ../shared/data/mtd out/study/resnet_v2_levels.json

The "preact" reading is the teacher's default, so its row is what
`gnl teacher-check --backbone resnet50-v2 --bank-size 16384 --pretrained-only`
prints. A one-off reading for models/RESULTS.md, not part of the toolchain.
"""
import json, sys, time
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gnl.data import test_samples, train_images
from gnl.metrics import image_auroc, image_auroc_per_class
from gnl.teacher import bank_subset, build_teacher, knn_image_scores

data, out_json = sys.argv[1:3]
train = train_images(data)
bank = bank_subset(train, 200)
samples = test_samples(data)
labels = np.array([s.anomalous for s in samples], int)
classes = np.array([s.label for s in samples])
res = {}
for reading in ("preact", "raw"):
    t0 = time.time()
    teacher = build_teacher("resnet50-v2")
    teacher.body.preact_levels = reading == "preact"
    scores = knn_image_scores(teacher, bank, [s.path for s in samples], 256, 16384, 0)
    res[reading] = {"image_auroc": round(image_auroc(labels, scores), 4),
                    "per_class": image_auroc_per_class(classes, scores), "seconds": round(time.time() - t0)}
    print(reading, res[reading], flush=True)
Path(out_json).parent.mkdir(parents=True, exist_ok=True)
Path(out_json).write_text(json.dumps(res, indent=1) + "\n")
