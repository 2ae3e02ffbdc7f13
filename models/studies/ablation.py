#!/usr/bin/env python3
"""What does each change to the default recipe do, trained and scored alike?

The model ablation of models/RESULTS.md: one `gnl fit` + `gnl test` per row.

    models/studies/ablation.py --data DIR --out DIR [--rows r1,r2] [--parallel N]
                      [--device auto|cpu|cuda] [--max-minutes M] [--weights-dir DIR]

Each row changes one thing against the recipe `gnl fit` uses by default
(ROWS below); every row is trained with `--no-export` and scored in float by
`gnl test --perturb vand2` (clean and VAND 2.0), so all rows share one
protocol. Rows run `--parallel` at a time (on a GPU machine with many
cores; on 2 CPU cores use 1). `--weights-dir` holds teacher weight files
named <backbone>.pth or <backbone>.npz (passed as --teacher-weights), for
machines without the weights packages or ../shared/weights. Writes
OUT/<row>/{checkpoint.pt,train.json,test.json,fit.log,test.log},
OUT/summary.json (one record per row) and OUT/slim/<row>.pt (weights +
config + calibration only, for export elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# name -> (gnl fit arguments, what the row changes)
ROWS: dict[str, tuple[list[str], str]] = {
    "old-recipe": (["--epochs", "14", "--patience", "0", "--rotation-fill", "114"],
                   "the previous default: 14 epochs, grey-114 rotation fill"),
    "fill-black-14ep": (["--epochs", "14", "--patience", "0"], "black rotation fill (as the test), 14 epochs"),
    "converged-256": ([], "train to the plateau (the new default), 256x256"),
    "converged-384": (["--image-size", "384"], "384x384 input"),
    "converged-512": (["--image-size", "512"], "512x512 input"),
    "lite1-256": (["--backbone", "efficientnet-lite1"], "EfficientNet-Lite1 teacher"),
    "lite2-256": (["--backbone", "efficientnet-lite2"], "EfficientNet-Lite2 teacher"),
    "lite2-384": (["--backbone", "efficientnet-lite2", "--image-size", "384"], "Lite2 teacher at 384x384"),
    "resnet50v2-256": (["--backbone", "resnet50-v2"], "ResNet50-v2 teacher (stages 1-3, ../shared/weights)"),
    "rd4ad-256": (["--method", "rd4ad"], "plain RD4AD (clean images, global loss, no seg head), converged"),
    "converged-256-fp32": (["--precision", "fp32"], "fp32 instead of bf16 autocast (where auto picks bf16)"),
}


def backbone_of(args: list[str]) -> str:
    return args[args.index("--backbone") + 1] if "--backbone" in args else "efficientnet-lite0"


def run_row(name: str, a: argparse.Namespace) -> dict:
    fit_args, what = ROWS[name]
    out = a.out / name
    out.mkdir(parents=True, exist_ok=True)
    extra = list(fit_args)
    files = [a.weights_dir / f"{backbone_of(fit_args)}{s}" for s in (".pth", ".npz")] if a.weights_dir else []
    extra += next((["--teacher-weights", str(w)] for w in files if w.is_file()), [])
    fit = [sys.executable, "-m", "gnl", "fit", "--data", str(a.data), "--out", str(out), "--no-export",
           "--device", a.device, "--max-minutes", str(a.max_minutes), *extra, *a.fit_extra.split()]
    test = [sys.executable, "-m", "gnl", "test", "--data", str(a.data), "--model", str(out / "checkpoint.pt"),
            "--perturb", "vand2", "--device", a.device, "--json", str(out / "test.json")]
    if a.test_limit:
        test += ["--limit", str(a.test_limit)]
    rec: dict = {"row": name, "changes": what, "fit": " ".join(fit[1:]), "test": " ".join(test[1:])}
    models = str(Path(__file__).resolve().parents[1])  # gnl, for `python -m gnl`
    pythonpath = os.pathsep.join(filter(None, [models, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": pythonpath}
    for key, cmd in (("fit", fit), ("test", test)):
        t0 = time.time()
        with open(out / f"{key}.log", "w") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        rec[f"{key}_seconds"] = round(time.time() - t0, 1)
        if rc != 0:
            rec["error"] = f"{key} exited {rc}: " + (out / f"{key}.log").read_text()[-800:]
            return rec
    train = json.loads((out / "train.json").read_text())
    rec["train"] = {k: train[k] for k in ("epochs_done", "seg_steps_done", "calibration", "runs")}
    rec["train"]["stage1_last"] = train["losses"]["stage1"][-1] if train["losses"]["stage1"] else None
    rec["metrics"] = json.loads((out / "test.json").read_text())["metrics"]
    import torch

    ck = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    (a.out / "slim").mkdir(exist_ok=True)
    torch.save({k: ck[k] for k in ("config", "state_dict", "epoch", "seg_step", "history", "held_out",
                                   "calibration")}, a.out / "slim" / f"{name}.pt")
    return rec


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {list(ROWS)}")
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-minutes", type=float, default=75.0, help="gnl fit --max-minutes for every row")
    p.add_argument("--weights-dir", type=Path, default=None)
    p.add_argument("--fit-extra", default="", help="more gnl fit arguments for every row (smoke runs)")
    p.add_argument("--test-limit", type=int, default=None, help="gnl test --limit (smoke runs)")
    a = p.parse_args()
    rows = [r for r in a.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    a.out.mkdir(parents=True, exist_ok=True)
    done: list[dict] = []
    lock = threading.Lock()

    def one(row: str) -> dict:
        rec = run_row(row, a)
        with lock:  # summary.json grows as rows finish, so a cut-off run keeps what it did
            done.append(rec)
            (a.out / "summary.json").write_text(json.dumps(done, indent=2) + "\n")
        return rec

    with ThreadPoolExecutor(a.parallel) as pool:
        results = list(pool.map(one, rows))
    for r in results:
        if "error" in r:
            print(f"{r['row']:18s} ERROR {r['error'][-300:]}")
            continue
        m = r["metrics"]["float"]
        c, v = m["clean"], m["vand2"]
        print(f"{r['row']:18s} clean AUROC {100 * c['image_auroc']:.2f} (topk {100 * c['image_auroc_topk']:.2f}) "
              f"F1 {100 * c['image_f1max']:.2f} P-AUROC {100 * c['pixel_auroc']:.2f} PRO {100 * c['aupro']:.2f} | "
              f"vand2 {100 * v['image_auroc']:.2f} (topk {100 * v['image_auroc_topk']:.2f}) | "
              f"epochs {r['train']['epochs_done']} {r['train']['runs'][-1]['stopped_by']} "
              f"fit {r['fit_seconds']} s | verdict {c.get('verdict', {}).get('false_alarms')} FA, "
              f"recall {c.get('verdict', {}).get('recall')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
