"""Flip test-time augmentation: does averaging the map over flipped views pay?

    tools/sidroot run python3 models/studies/tta.py CHECKPOINT_OR_BUNDLE DATA OUT.json

Scores the test set clean and under VAND 2.0 (seed 0, as `gnl test`) with
the plain map and with the mean of the maps of 4 views (identity, left-right,
up-down, both), each flipped back before averaging. Everything else is
`gnl test`'s: the same post-processing, metrics and perturbation draws.
The cost on a device is the number of views: 4 invokes per frame.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gnl.data import test_samples  # noqa: E402
from gnl.evaluate import load_model, score_condition  # noqa: E402

FLIPS = {"id": (), "lr": (1,), "ud": (0,), "both": (0, 1)}  # view -> axes flipped


def flip(a, view):
    """`a` (H x W [x C]) seen in `view`; flipping twice gives `a` back."""
    axes = FLIPS[view]
    return np.ascontiguousarray(np.flip(a, axis=axes)) if axes else a


class FlipTTA:
    """A Scorer whose raw map is the mean over flipped views of another's."""

    def __init__(self, inner, views):
        self.inner, self.views = inner, views
        self.spec, self.blur_sigma = inner.spec, inner.blur_sigma

    def raw_map(self, bgr):
        return np.mean([flip(self.inner.raw_map(flip(bgr, v)), v) for v in self.views], axis=0)


def main() -> int:
    model, data, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    loaded = load_model(model)
    samples = test_samples(data)
    result = {"model": model, "views": {}}
    for name, views in (("plain", ["id"]), ("flip4", list(FLIPS))):
        scorer = FlipTTA(loaded.scorer, views)
        result["views"][name] = {}
        for condition in ("clean", "vand2"):
            t0 = time.time()
            run = score_condition(scorer, samples, condition, 0)
            m = run.metrics(loaded.threshold)
            m.pop("verdict", None)
            m["seconds"] = round(time.time() - t0, 1)
            result["views"][name][condition] = m
            print(name, condition, {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()},
                  flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
