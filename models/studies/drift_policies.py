"""The bundles of each drift policy side by side, as gnld scores them: the
first table of models/RESULTS.md ("Drift policies").

    python3 models/studies/drift_policies.py --out models/studies/drift_policies.json BUNDLE...

Reads each bundle's model.json (after `make eval EVAL_ARGS="BUNDLE --checkpoint
CKPT --perturb vand2 --record"` has recorded its metrics): the drift policy,
the threshold (and the clean-only one beside it), and per condition (clean,
VAND 2.0) the image AUROC and, at the bundle's threshold, false alarms and
recall of gnld's own pipeline (gnlctl eval), of the int8 model in Python and
of the float checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def row(bundle: Path) -> dict:
    m = json.loads((bundle / "model.json").read_text())
    th = m["threshold"]
    out = {"bundle": str(bundle), "version": m["version"],
           "policy": (m.get("drift_policy") or {}).get("name", "legacy"),
           "threshold": round(th["value"], 4), "clean_threshold": round(th.get("clean", th["value"]), 4),
           "epochs": m["training"]["epochs"], "command": m["metrics"].get("measured_on", {}).get("command", "")}
    for kind in ("gnlctl_int8", "int8", "float"):
        for cond in ("clean", "vand2"):
            r = m["metrics"].get(kind, {}).get(cond)
            if not r:
                continue
            v = r["verdict"]
            out[f"{kind}.{cond}"] = {"image_auroc": round(100 * r["image_auroc"], 2), "pixel_auroc": round(100 * r["pixel_auroc"], 2),
                                     "false_alarms": v["false_alarms"], "good": v["good_images"],
                                     "detected": v["detected"], "defects": v["defect_images"]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("bundles", nargs="+", type=Path)
    a = ap.parse_args()
    rows = [row(b) for b in a.bundles]
    a.out.write_text(json.dumps({"command": "python3 models/studies/drift_policies.py --out " + str(a.out) + " " +
                                 " ".join(map(str, a.bundles)), "rows": rows}, indent=1) + "\n")
    for r in rows:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
