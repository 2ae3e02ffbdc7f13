"""`gnl fit` on 2 processes (torchrun) against 1 process and the spread of two seeds.

    python3 models/studies/torchrun_parity.py [--data ../shared/data/mtd] [--work out/torchrun-parity]
        [--epochs 4] [--seg-steps 150] [--out models/studies/torchrun_parity.json]

Three short fits of the same recipe (no memory: it is built on rank 0 alone
after training, so the processes do not touch it): one process with seed
111, one process with seed 112, and two processes (gnl.torchrun, gloo on the
CPU) with seed 111. Each checkpoint is then scored in float on the MTD test
set (`gnl test --float`). Two processes match one when their difference is
within the difference between the two seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def fit(name: str, procs: int, seed: int, a: argparse.Namespace) -> dict:
    out = a.work / name
    args = ["fit", "--data", str(a.data), "--out", str(out), "--epochs", str(a.epochs), "--patience", "0",
            "--seg-steps", str(a.seg_steps), "--memory", "0", "--seed", str(seed), "--no-export", "--device", "cpu"]
    if procs == 1:
        cmd = [sys.executable, "-m", "gnl", *args]
    else:
        cmd = [sys.executable, "-m", "gnl.torchrun", "--standalone", "--local-addr", "127.0.0.1",
               "--nproc_per_node", str(procs), "-m", "gnl", *args]
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    seconds = time.monotonic() - t0
    report = out / "test.json"
    subprocess.run([sys.executable, "-m", "gnl", "test", "--data", str(a.data), "--model", str(out / "checkpoint.pt"),
                    "--perturb", "none", "--float", "--json", str(report)], check=True,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    info = json.loads((out / "train.json").read_text())
    test = json.loads(report.read_text())
    clean = test["metrics"]["float"]["clean"]
    return {"name": name, "processes": procs, "seed": seed, "fit_seconds": round(seconds),
            "stage1_loss": [round(e["loss"], 5) for e in info["losses"]["stage1"]],
            "synthetic_auroc": round(info["calibration"]["synthetic_auroc"], 4),
            "threshold": round(info["calibration"]["threshold"], 4),
            "image_auroc": round(100 * clean["image_auroc"], 2), "pixel_auroc": round(100 * clean["pixel_auroc"], 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/mtd"))
    ap.add_argument("--work", type=Path, default=Path("out/torchrun-parity"))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seg-steps", type=int, default=150)
    ap.add_argument("--out", type=Path, default=Path("models/studies/torchrun_parity.json"))
    a = ap.parse_args()
    rows = [fit("one-111", 1, 111, a), fit("one-112", 1, 112, a), fit("two-111", 2, 111, a)]
    one, seed, two = rows
    spread = {k: round(abs(one[k] - seed[k]), 4) for k in ("image_auroc", "pixel_auroc", "synthetic_auroc")}
    diff = {k: round(abs(one[k] - two[k]), 4) for k in spread}
    result = {"command": " ".join(sys.argv), "runs": rows, "seed_spread": spread, "two_vs_one": diff,
              "within_spread": {k: diff[k] <= spread[k] for k in spread}}
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
