"""The Python pipeline a user would write, timed like `gnlctl bench`.

    python3 tools/pybench.py --model BUNDLE [--threads 1,2] [--n 50] [--mqtt HOST:PORT]
    python3 tools/pybench.py --compare GO.jsonl PY.jsonl

ai_edge_litert's interpreter, cv2/numpy preprocessing written the obvious
way (cvtColor, resize, float maths per pixel, np.round for int8), the same
post-processing, and a paho-mqtt publish of the JSON result per frame (QoS
0, like gnld's result topic). One JSON line per thread count, with the keys
gnlctl bench prints, plus publish_ms; peak RSS is each run's own (VmHWM reset
before it). `--compare` prints every run side by side with the ratios
(tools/bench, `make bench`).
"""

from __future__ import annotations

import argparse
import json
import os
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


def reset_peak_rss() -> None:
    """VmHWM back to the current resident set (Linux 4.0+), as gnlctl bench
    does, so that each run's peak is its own."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def bench(bundle: Path, threads: int, n: int, frame: np.ndarray, client) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    reset_peak_rss()

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
            "peak_rss_mb": peak_rss_mb(), "delegate": "python"}


def connect(addr: str):
    import paho.mqtt.client as mqtt

    host, port = addr.rsplit(":", 1)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pybench-{os.getpid()}")
    client.connect(host, int(port), keepalive=30)
    client.loop_start()
    return client


def compare(go_path: Path, py_path: Path) -> None:
    """Every run side by side per thread count, then the ratios the targets
    are stated in (docs/PERFORMANCE.md)."""
    runs = [json.loads(line) for path in (go_path, py_path) for line in path.read_text().splitlines() if line.strip()]
    head = f"{'threads':>7}  {'run':<16} {'normalize':>9} {'invoke':>8} {'post':>7} {'total':>8} {'fps':>6} {'GMAC/s':>7} {'peak RSS':>8}"
    print(head)
    gmac = next((r["gmac"] for r in runs if r.get("gmac")), 0.0)
    for t in sorted({r["threads"] for r in runs}):
        rows = [r for r in runs if r["threads"] == t]
        for r in rows:
            name = "python litert" if r["delegate"] == "python" else "gnld " + r["delegate"]
            rate = gmac / (r["invoke_ms"] / 1000) if gmac else 0.0
            print(f"{t:>7}  {name:<16} {r['normalize_ms']:>9.2f} {r['invoke_ms']:>8.2f} {r['post_ms']:>7.2f} "
                  f"{r['total_ms']:>8.2f} {r['fps']:>6.1f} {rate:>7.1f} {r['peak_rss_mb']:>7.0f}M")
        by = {r["delegate"]: r for r in rows}
        notes = []
        if "xnnpack" in by and "python" in by:
            notes.append(f"gnld xnnpack total / python total = {by['xnnpack']['total_ms'] / by['python']['total_ms']:.2f}")
        if "xnnpack" in by and "builtin" in by:
            notes.append(f"builtin invoke / xnnpack invoke = {by['builtin']['invoke_ms'] / by['xnnpack']['invoke_ms']:.1f}x")
        if "gpu" in by and "xnnpack" in by:
            notes.append(f"xnnpack invoke / gpu invoke = {by['xnnpack']['invoke_ms'] / by['gpu']['invoke_ms']:.2f}x")
        for n in notes:
            print(f"{t:>7}  {n}")
    if gmac:
        print(f"model: {gmac:.3f} GMAC per frame (convolutions, fully connected, matmul; gnlctl inspect)")
    for d in dict.fromkeys(r["delegate"] for r in runs if r.get("placement")):
        print(f"placement, {d}: {next(r['placement'] for r in runs if r['delegate'] == d)}")


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
