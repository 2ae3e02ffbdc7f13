"""Teaching false alarms (gnld's review page, package teach): what it costs.

    python3 models/studies/teach_false_alarms.py [--bundle models/default] [--data ../shared/data/mtd]
        [--vand2 out/eval/vand2-data] [--gnlctl bin/gnlctl] [--work out/teach-study]
        [--out models/studies/teach_false_alarms.json]

For each condition, the good test images the bundle flags are taught at
once with `gnlctl teach` (what an operator does on the review page, one
frame at a time there), then every test image is scored by the bundle and
by the taught version (`gnlctl infer`, gnld's pipeline) and compared:

- clean: the MTD test set, at the bundle's clean-only threshold
  (threshold.clean: what a camera on steady light uses, README), since at
  the drift policy's threshold the default bundle flags no clean good tile;
- vand2: the VAND 2.0 test set that `make eval` dumps (`--vand2`, written
  by tools/evaluate as OUT/vand2-data), at the bundle's threshold.

Reported per condition: the taught frames' scores before and after, the
false alarms on the good images not taught, recall at the threshold, and
image AUROC over all images and over the images not taught (the taught
ones are in the test set: counting them flatters the taught model).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def infer(gnlctl: str, bundle: Path, folders: list[Path]) -> dict[tuple[str, str], float]:
    out = subprocess.run([gnlctl, "infer", "--model", str(bundle), *map(str, folders)], check=True,
                         capture_output=True, text=True).stdout
    scores = {}
    for line in out.splitlines():
        d = json.loads(line)
        p = Path(d["image"])
        scores[(p.parent.name, p.name)] = d["score"]
    return scores


def auroc(pos: list[float], neg: list[float]) -> float:
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return 100 * wins / (len(pos) * len(neg))


def summary(scores: dict, taught: set[str], threshold: float) -> dict:
    good = [v for (c, f), v in scores.items() if c == "good"]
    rest = [v for (c, f), v in scores.items() if c == "good" and f not in taught]
    bad = [v for (c, f), v in scores.items() if c != "good"]
    return {"image_auroc": round(auroc(bad, good), 2), "image_auroc_not_taught": round(auroc(bad, rest), 2),
            "false_alarms_not_taught": sum(v >= threshold for v in rest), "good_not_taught": len(rest),
            "recall": sum(v >= threshold for v in bad), "defects": len(bad)}


def condition(name: str, gnlctl: str, bundle: Path, test: Path, threshold: float, work: Path) -> dict:
    folders = sorted(p for p in test.iterdir() if p.is_dir())
    before = infer(gnlctl, bundle, folders)
    flagged = sorted(f for (c, f), v in before.items() if c == "good" and v >= threshold)
    out = work / name
    subprocess.run(["rm", "-rf", str(out)], check=True)
    run = subprocess.run([gnlctl, "teach", "--model", str(bundle), "--out", str(out), "--threshold", repr(threshold),
                          *[str(test / "good" / f) for f in flagged]], check=True, capture_output=True, text=True)
    frames = [json.loads(line) for line in run.stdout.splitlines()]
    after = infer(gnlctl, out, folders)
    taught = set(flagged)
    return {"condition": name, "threshold": round(threshold, 4), "taught": frames,
            "teach_log": run.stderr.strip().splitlines()[-1],
            "before": summary(before, taught, threshold), "after": summary(after, taught, threshold)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, default=Path("models/default"))
    ap.add_argument("--data", type=Path, default=Path("../shared/data/mtd"))
    ap.add_argument("--vand2", type=Path, default=Path("out/eval/vand2-data"))
    ap.add_argument("--gnlctl", default="bin/gnlctl")
    ap.add_argument("--work", type=Path, default=Path("out/teach-study"))
    ap.add_argument("--out", type=Path, default=Path("models/studies/teach_false_alarms.json"))
    a = ap.parse_args()
    meta = json.loads((a.bundle / "model.json").read_text())
    th = meta["threshold"]
    rows = [condition("clean", a.gnlctl, a.bundle, a.data / "test", th.get("clean", th["value"]), a.work)]
    if (a.vand2 / "test").is_dir():
        rows.append(condition("vand2", a.gnlctl, a.bundle, a.vand2 / "test", th["value"], a.work))
    else:
        print(f"{a.vand2}: no VAND 2.0 test set; run `make eval` first (it writes OUT/vand2-data)", file=sys.stderr)
    result = {"bundle": str(a.bundle), "version": meta["version"], "command": " ".join(sys.argv), "conditions": rows}
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    for r in rows:
        b, t = r["before"], r["after"]
        print(f"{r['condition']}: {len(r['taught'])} false alarms taught at {r['threshold']}; "
              f"AUROC not taught {b['image_auroc_not_taught']} -> {t['image_auroc_not_taught']}, "
              f"false alarms on the rest {b['false_alarms_not_taught']} -> {t['false_alarms_not_taught']} of {b['good_not_taught']}, "
              f"recall {b['recall']} -> {t['recall']} of {b['defects']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
