"""How far do the frozen teacher's maps move under bf16 autocast, and what
does a teacher pass cost in each precision?

    tools/sidroot run python3 models/studies/bf16_teacher.py DATA OUT.json

`gnl fit --precision bf16` runs the teacher under autocast too (the cached
clean views and each step's augmented views alike), while the exported
bundle's teacher computes in fp32. This reads the gap on 16 real training
images at 256x256 (EfficientNet-Lite0, the default teacher): relative L2
error and 1-cos per location against fp32, per level, and the median of 5
teacher passes (batch 16) in each precision. A one-off reading for
models/RESULTS.md ("bf16 autocast against fp32").
"""
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gnl import train as gtrain  # noqa: E402
from gnl.data import train_images  # noqa: E402
from gnl.device import autocast  # noqa: E402
from gnl.preprocess import InputSpec  # noqa: E402
from gnl.teacher import build_teacher  # noqa: E402


def median_seconds(fn, n: int = 5) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[n // 2]


def main() -> int:
    data, out = sys.argv[1], Path(sys.argv[2])
    torch.manual_seed(0)
    teacher = build_teacher().eval()
    spec = InputSpec(256, 256, mean=tuple(teacher.mean), std=tuple(teacher.std))
    x = gtrain.to_batch(gtrain.load_images(train_images(data)[:16], 256), spec)

    def bf16_pass():
        with autocast(torch.device("cpu"), torch.bfloat16):  # as gnl fit --precision bf16
            return teacher(x)

    result: dict = {"images": 16, "image_size": 256, "levels": []}
    with torch.no_grad():
        for a, b in zip(teacher(x), bf16_pass()):
            b = b.float()
            dist = 1 - F.cosine_similarity(a, b, dim=1)
            result["levels"].append({
                "shape": list(a.shape), "relative_l2_error": round(float((a - b).norm() / a.norm()), 4),
                "one_minus_cos_mean": float(dist.mean()), "one_minus_cos_max": float(dist.max())})
        result["teacher_pass_seconds"] = {"fp32": round(median_seconds(lambda: teacher(x)), 3),
                                          "bf16": round(median_seconds(bf16_pass), 3)}
    print(json.dumps(result, indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
