"""The Python pipeline a user would write, timed like `gnlctl bench`.

    python3 tools/pybench.py --model BUNDLE [--threads 1,2] [--n 50] [--mqtt HOST:PORT]
    python3 tools/pybench.py --compare GO.jsonl PY.jsonl

ai_edge_litert's interpreter, cv2/numpy preprocessing written the obvious
way (cvtColor, resize, float maths per pixel, np.round for int8), the same
post-processing, and a paho-mqtt publish of the JSON result per frame (QoS
0, like gnld's result topic). One JSON line per thread count, with the keys
gnlctl bench prints, plus publish_ms. `--compare` prints the medians side by
side with the Go/Python ratio (tools/bench, `make bench`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np


def load_frame(path: str | None) -> tuple[np.ndarray, str]:
    if not path and os.environ.get("MTD"):
        files = sorted((Path(os.environ["MTD"]) / "test" / "good").glob("*.jpg"))
        path = str(files[0]) if files else None
    if path:
        return cv2.imread(path, cv2.IMREAD_COLOR), path
    frame = np.zeros((768, 1024, 3), np.uint8)
    cv2.circle(frame, (512, 384), 200, (128, 128, 128), -1)
    return frame, "synthetic 1024x768"


def bench(bundle: Path, threads: int, n: int, frame: np.ndarray, client) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    meta = json.loads((bundle / "model.json").read_text())
    spec, post = meta["input"], meta["postprocess"]
    interp = Interpreter(model_path=str(bundle / meta["model_file"]), num_threads=threads)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    mean, std = np.array(spec["mean"], np.float32), np.array(spec["std"], np.float32)
    size, sigma, thr = (spec["width"], spec["height"]), post["blur_sigma"], meta["threshold"]["value"]
    times: dict[str, list[float]] = {k: [] for k in ("normalize", "invoke", "post", "publish", "total")}
    for i in range(5 + n):
        t0 = time.perf_counter()
        rgb = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), size, interpolation=cv2.INTER_LINEAR)
        x = (rgb.astype(np.float32) / 255.0 - mean) / std
        if inp["dtype"] != np.float32:
            scale, zp = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale) + zp, info.min, info.max).astype(inp["dtype"])
        interp.set_tensor(inp["index"], x[None])
        t1 = time.perf_counter()
        interp.invoke()
        t2 = time.perf_counter()
        m = interp.get_tensor(out["index"])[0, :, :, 0].astype(np.float32)
        if out["dtype"] != np.float32:
            scale, zp = out["quantization"]
            m = (m - zp) * scale
        m = cv2.GaussianBlur(cv2.resize(m, size, interpolation=cv2.INTER_LINEAR), (0, 0), sigma, sigmaY=sigma)
        score = float(m.max())
        t3 = time.perf_counter()
        if client is not None:
            payload = json.dumps({"camera": "bench", "score": score, "anomalous": score >= thr,
                                  "model": meta["version"], "frame_time": time.time()})
            client.publish("gnl/bench/bench/result", payload, qos=0)
        t4 = time.perf_counter()
        if i >= 5:
            for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                times[k].append(v * 1000)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"model": str(bundle), "threads": threads, "n": n,
            "normalize_ms": med["normalize"], "invoke_ms": med["invoke"], "post_ms": med["post"],
            "publish_ms": med["publish"], "total_ms": med["total"], "fps": 1000 / med["total"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def connect(addr: str):
    import paho.mqtt.client as mqtt

    host, port = addr.rsplit(":", 1)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pybench-{os.getpid()}")
    client.connect(host, int(port), keepalive=30)
    client.loop_start()
    return client


def compare(go_path: Path, py_path: Path) -> None:
    go = {r["threads"]: r for r in map(json.loads, go_path.read_text().splitlines())}
    py = {r["threads"]: r for r in map(json.loads, py_path.read_text().splitlines())}
    print(f"{'threads':>7} {'stage':>10} {'Go ms':>9} {'Python ms':>10} {'Go/Python':>10}")
    for t in sorted(go.keys() & py.keys()):
        for k in ("normalize_ms", "invoke_ms", "post_ms", "total_ms"):
            print(f"{t:>7} {k[:-3]:>10} {go[t][k]:>9.2f} {py[t][k]:>10.2f} {go[t][k] / py[t][k]:>10.2f}")
        print(f"{t:>7} {'publish':>10} {'-':>9} {py[t]['publish_ms']:>10.2f}")
        print(f"{t:>7} {'fps':>10} {go[t]['fps']:>9.1f} {py[t]['fps']:>10.1f} {go[t]['fps'] / py[t]['fps']:>10.2f}")
        print(f"{t:>7} {'peak RSS':>10} {go[t]['peak_rss_mb']:>8.0f}M {py[t]['peak_rss_mb']:>9.0f}M "
              f"{go[t]['peak_rss_mb'] / py[t]['peak_rss_mb']:>10.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--image")
    parser.add_argument("--mqtt", help="HOST:PORT of a broker to publish results to")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("GO_JSONL", "PY_JSONL"))
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
        return 0
    if args.model is None:
        parser.error("--model BUNDLE is required")
    frame, _ = load_frame(args.image)
    client = connect(args.mqtt) if args.mqtt else None
    for t in (int(s) for s in args.threads.split(",")):
        print(json.dumps(bench(args.model, t, args.n, frame, client)), flush=True)
    if client is not None:
        client.loop_stop()
        client.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
