"""Which parts of a GNL map should be summed? Read two ways: image AUROC of every
subset of {level 1, 2, 3 1-cos, segmentation} on the held-back normal images
against synthetic-anomaly versions of them (normal images only: what a
recipe could use), and on the data set's test split (its labels: reference).

    tools/sidroot run python3 models/studies/subsets.py out/model/checkpoint.pt ../shared/data/mtd out/study/subsets.json

A one-off reading for models/RESULTS.md, not part of the toolchain.
"""
import itertools, json, sys
from pathlib import Path
import numpy as np, torch, cv2
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gnl.model import load_checkpoint, cosine_distance, _resize
from gnl.data import test_samples, load_image, train_images
from gnl.preprocess import InputSpec, to_tensor, postprocess, read_bgr
from gnl.metrics import image_auroc
from gnl.holdout import split_holdout
from gnl.synth import synthesize

ck, data, out_json = sys.argv[1:4]
model = load_checkpoint(ck)
seed = int(torch.load(ck, map_location="cpu", weights_only=True)["config"].get("seed", 0))
size = model.config.image_size
spec = InputSpec(size, size, mean=tuple(model.teacher.mean), std=tuple(model.teacher.std))
NAMES = ["l1", "l2", "l3", "seg"]
SUBSETS = [s for r in range(1, 5) for s in itertools.combinations(NAMES, r)]

def parts(imgs):
    out = []
    with torch.inference_mode():
        for i in range(0, len(imgs), 16):
            x = torch.from_numpy(np.stack([to_tensor(b, spec) for b in imgs[i:i+16]]))
            f = model.features(x)
            hw = f.teacher[0].shape[-2:]
            lv = [_resize(cosine_distance(t, s), hw) for t, s in zip(f.teacher, f.student)]
            seg = torch.sigmoid(f.seg_logits)
            for j in range(x.shape[0]):
                out.append({"l1": lv[0][j, 0].numpy(), "l2": lv[1][j, 0].numpy(), "l3": lv[2][j, 0].numpy(), "seg": seg[j, 0].numpy()})
    return out

def scores(ps):
    return {"+".join(s): np.array([postprocess(sum(p[k] for k in s), spec)[1] for p in ps]) for s in SUBSETS}

_, held = split_holdout(train_images(data), seed)
rng = np.random.default_rng(123)
normal = [cv2.resize(read_bgr(p), (size, size), interpolation=cv2.INTER_LINEAR) for p in held]
synth = [synthesize(b, rng)[0] for b in normal for _ in range(2)]
sn, ss = scores(parts(normal)), scores(parts(synth))
samples = test_samples(data)
labels = np.array([s.anomalous for s in samples], int)
st = scores(parts([load_image(s.path) for s in samples]))
res = {}
for k in sn:
    y = np.r_[np.zeros(len(sn[k])), np.ones(len(ss[k]))]
    res[k] = {"synthetic": round(image_auroc(y, np.r_[sn[k], ss[k]]), 4), "test": round(image_auroc(labels, st[k]), 4)}
    print(f"{k:16s} {res[k]}", flush=True)
json.dump(res, open(out_json, "w"), indent=1)
