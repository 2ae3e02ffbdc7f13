"""evaluate.py / predict.py end to end on a tiny synthetic MVTec folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import torch
import torch.nn.functional as F
from torch import nn

from gnl import evaluate, predict
from gnl.data import test_samples
from gnl.preprocess import InputSpec
from gnl.report import GRID_CELL
from test_data import make_mvtec

TINY_BUNDLE = Path(__file__).resolve().parents[1] / "testdata" / "tiny"


class BrightSpot(nn.Module):
    """A real (tiny) detector: squared distance of the input from the normal grey level,
    averaged over channels and pooled to stride 4 — the synthetic defects are bright."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d((x - x.median()).pow(2).mean(1, keepdim=True), 4)


def test_scores_separate_synthetic_defects(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path, n_good=4, n_defect=4, size=(64, 64))
    samples = test_samples(root)
    scorer = evaluate.TorchScorer(BrightSpot(), InputSpec(width=64, height=64), blur_sigma=1.0)
    run = evaluate.score_condition(scorer, samples, "clean", seed=0, grid_rows=[0, 5])
    m = run.metrics()
    assert m["image_auroc"] == 1.0 and m["image_f1max"] == 1.0
    assert m["pixel_auroc"] > 0.95 and m["aupro"] > 0.8
    assert sorted(run.grid) == [0, 5] and run.maps[0].shape == (64, 64)
    # Perturbed runs are reproducible for a seed.
    a = evaluate.score_condition(scorer, samples, "vand2", seed=3)
    b = evaluate.score_condition(scorer, samples, "vand2", seed=3)
    assert a.scores == b.scores and a.scores != run.scores


def _checkpoint(path: Path) -> Path:
    """A real (untrained) GNL checkpoint at 64x64, in `gnl fit`'s format."""
    from gnl.model import GNLConfig, build_model

    torch.manual_seed(0)
    cfg = GNLConfig(image_size=64, seg_width=8)
    torch.save({"config": cfg.as_dict(), "state_dict": build_model(cfg).trainable_state_dict()}, path)
    return path


def test_cli_float_and_int8_side_by_side(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "data", n_good=3, n_defect=3, size=(64, 64))
    ckpt = _checkpoint(tmp_path / "model.pt")
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    out, grid = tmp_path / "r.json", tmp_path / "grid.png"
    args = parser.parse_args(["--data", str(root), "--model", str(ckpt), str(TINY_BUNDLE),
                              "--perturb", "all", "--limit", "5", "--json", str(out),
                              "--grid", str(grid)])
    assert evaluate.run(args) == 0
    res = json.loads(out.read_text())
    assert res["test_images"] == 5 and set(res["metrics"]) == {"float", "int8"}
    for kind in ("float", "int8"):
        assert list(res["metrics"][kind]) == ["clean", "vand2", "brightness", "contrast", "defocus", "noise"]
        for m in res["metrics"][kind].values():
            for k in ("image_auroc", "image_f1max", "pixel_auroc", "aupro"):
                assert 0.0 <= m[k] <= 1.0
    img = cv2.imread(str(grid))
    n_rows = len(evaluate.grid_rows(evaluate.subset(test_samples(root), 5)))
    assert img.shape == (n_rows * GRID_CELL, (2 + 2 * 6) * GRID_CELL, 3)

    only = parser.parse_args(["--data", str(root), "--model", str(ckpt), str(TINY_BUNDLE),
                              "--int8", "--json", str(out)])
    assert evaluate.run(only) == 0
    assert set(json.loads(out.read_text())["metrics"]) == {"int8"}


def test_predict_writes_heatmaps(tmp_path: Path, capsys) -> None:
    root = make_mvtec(tmp_path / "data", n_good=1, n_defect=1, size=(64, 48))
    images = [root / "test" / "good" / "000.png", root / "test" / "spot" / "000.png"]
    images[1] = images[1].rename(images[1].with_name("spot0.png"))
    parser = argparse.ArgumentParser()
    predict.add_arguments(parser)
    args = parser.parse_args([*map(str, images), "--model", str(TINY_BUNDLE), "--out", str(tmp_path / "o")])
    assert predict.run(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(l.split("\t")[1].split()[1] in ("normal", "anomalous") for l in lines)
    for p in images:
        heat = cv2.imread(str(tmp_path / "o" / f"{p.stem}_heatmap.png"))
        assert heat.shape == (48, 64, 3)


def test_dump_is_what_gnl_test_scores(tmp_path: Path) -> None:
    """`--dump` writes the vand2 set exactly as scored; scoring the dump as plain data
    (Python here, `gnlctl eval --perturb vand2` in Go) gives the vand2 numbers."""
    root = make_mvtec(tmp_path / "data", n_good=3, n_defect=4, size=(56, 40))
    # A JPEG source: the dump must still be PNG (lossless) under the same stem.
    src = root / "test" / "good" / "001.png"
    cv2.imwrite(str(src.with_suffix(".jpg")), cv2.imread(str(src)))
    src.unlink()
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    dump, a, b = tmp_path / "dump", tmp_path / "a.json", tmp_path / "b.json"
    args = parser.parse_args(["--data", str(root), "--model", str(TINY_BUNDLE), "--perturb", "vand2",
                              "--seed", "7", "--limit", "6", "--dump", str(dump), "--json", str(a)])
    assert evaluate.run(args) == 0
    marker = json.loads((dump / "perturb.json").read_text())
    assert (marker["perturb"], marker["seed"], marker["source"]) == ("vand2", 7, str(root.resolve()))
    assert marker["images"] == 6 and json.loads(a.read_text())["dump"] == str(dump.resolve())

    # Pixel for pixel what score_condition perturbs, in the same order, same names.
    samples = evaluate.subset(test_samples(root), 6)
    dumped = test_samples(dump)
    assert [(s.label, s.path.name) for s in dumped] == [(s.label, s.path.stem + ".png") for s in samples]
    for (s, img, mask), d in zip(evaluate.perturbed(samples, "vand2", 7), dumped, strict=True):
        assert (cv2.imread(str(d.path)) == img).all()
        if s.anomalous:
            assert (cv2.imread(str(d.mask_path), cv2.IMREAD_GRAYSCALE) == mask * 255).all()
            assert mask.any()

    # Scored as plain data, the dump gives the vand2 metrics (and maps) of the first run.
    args = parser.parse_args(["--data", str(dump), "--model", str(TINY_BUNDLE), "--json", str(b)])
    assert evaluate.run(args) == 0
    first, second = json.loads(a.read_text()), json.loads(b.read_text())
    drop = lambda m: {k: v for k, v in m.items() if k != "seconds"}  # noqa: E731
    assert drop(second["metrics"]["int8"]["clean"]) == drop(first["metrics"]["int8"]["vand2"])
    assert second["data_perturb"]["seed"] == 7
    scorer = evaluate.TorchScorer(BrightSpot(), InputSpec(width=56, height=40), blur_sigma=1.0)
    r1 = evaluate.score_condition(scorer, samples, "vand2", seed=7)
    r2 = evaluate.score_condition(scorer, dumped, "clean", seed=0)
    assert r1.scores == r2.scores and all((x == y).all() for x, y in zip(r1.maps, r2.maps))

    # Rewriting an earlier dump is fine; anything else needs --perturb vand2 and a fresh folder.
    args = parser.parse_args(["--data", str(root), "--model", str(TINY_BUNDLE), "--perturb", "all",
                              "--limit", "3", "--dump", str(dump)])
    assert evaluate.run(args) == 0 and len(test_samples(dump)) == 3
    for bad in (["--dump", str(tmp_path / "x")], ["--perturb", "vand2", "--dump", str(root / "test")]):
        args = parser.parse_args(["--data", str(root), "--model", str(TINY_BUNDLE), *bad])
        try:
            evaluate.run(args)
        except SystemExit as e:
            assert "--dump" in str(e)
        else:
            raise AssertionError(f"{bad}: no error")


def test_verdicts_count_false_alarms_and_recall_per_class() -> None:
    classes = ["good"] * 4 + ["crack"] * 2 + ["fray"] * 3
    scores = [0.1, 0.2, 0.9, 0.3, 0.95, 0.4, 0.8, 0.85, 0.2]
    v = evaluate.verdicts(classes, scores, threshold=0.8)
    assert v["false_alarms"] == 1 and v["good_images"] == 4 and v["false_alarm_rate"] == 0.25
    assert v["detected"] == 3 and v["defect_images"] == 5 and v["recall"] == 0.6
    assert v["recall_per_class"] == {"crack": 0.5, "fray": round(2 / 3, 4)}


def test_topk_mean_is_the_mean_of_the_largest_pixels() -> None:
    import numpy as np

    m = np.zeros((10, 10), np.float32)
    m[0, 0], m[5, 5] = 4.0, 2.0
    assert evaluate.topk_mean(m, 0.02) == 3.0
    assert evaluate.topk_mean(m, 0.0) == 4.0  # at least one pixel
