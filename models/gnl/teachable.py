"""`gnl teachable`: make a bundle's memory of normal patches teachable on the device.

    gnl teachable BUNDLE

A false alarm that a technician marks on gnld's page becomes normal to the
model without a training run: gnld writes the frame's own patch descriptors
into the memory's bank (docs/REVIEW.md). For that, gnld needs two things
the converter does not give:

- the descriptors the memory compares, for any frame: the input of the
  memory's 1x1 convolutions (gnl/memory.py, `Memory.nearest`: the
  teacher's patches, projected and scaled) becomes the graph's second
  output, `[1, h, w, dims]` float32 at the memory's stride. The map (output
  0) is unchanged, bit for bit: no operator is added or removed.
- where the bank lies in model.tflite: each chunk's convolution holds
  `2 b` as its filter `[rows, 1, 1, dims]` and `-|b|^2` as its bias
  `[rows]`, float32. model.json's `memory.teach` lists, per chunk, the byte
  offsets of both in the file, so that gnld rewrites bank rows in place
  (BUNDLE.md, "Teaching").

`gnl export` (and so `gnl fit`) calls `make_teachable` on every bundle with
a memory; `gnl teachable` upgrades a bundle exported before, in place (a
new version: model.tflite changed). The convolutions are found by
structure, not by name: 1x1 float convolutions sharing one input whose
output channels add up to `memory.size`, and whose biases are minus the
squared half-filters, which only the memory's are.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

OUTPUT_NAME = "memory_descriptors"


def _schema():
    from ai_edge_litert import schema_py_generated as schema
    return schema


def _conv_code(model) -> set[int]:
    s = _schema()
    return {i for i, c in enumerate(model.operatorCodes)
            if max(c.builtinCode, c.deprecatedBuiltinCode) == s.BuiltinOperator.CONV_2D}


def _memory_convs(model, size: int) -> tuple[int, list[tuple[int, int, int]]]:
    """(input tensor, [(filter buffer, bias buffer, rows)]) of the memory's chunk convolutions."""
    s = _schema()
    g = model.subgraphs[0]
    convs = _conv_code(model)
    groups: dict[int, list] = {}
    for op in g.operators:
        if op.opcodeIndex not in convs or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        f, b = g.tensors[op.inputs[1]], g.tensors[op.inputs[2]]
        shape = [int(v) for v in f.shape]
        if f.type != s.TensorType.FLOAT32 or b.type != s.TensorType.FLOAT32 or len(shape) != 4 or shape[1:3] != [1, 1]:
            continue
        groups.setdefault(int(op.inputs[0]), []).append((f.buffer, b.buffer, shape[0], shape[3]))
    for inp, chunks in groups.items():
        if sum(c[2] for c in chunks) != size:
            continue
        ok = True
        for fb, bb, rows, dims in chunks:
            w = np.frombuffer(bytes(model.buffers[fb].data), np.float32).reshape(rows, dims)
            bias = np.frombuffer(bytes(model.buffers[bb].data), np.float32)
            ok &= np.allclose(bias, -((w / 2) ** 2).sum(1), rtol=1e-4, atol=1e-4 * float(np.abs(bias).max() + 1e-12))
        if ok:
            return inp, [(fb, bb, rows) for fb, bb, rows, _ in chunks]
    raise ValueError(f"no memory convolutions found: want 1x1 float CONV_2Ds on one input with {size} output "
                     f"channels in all and bias -|filter/2|^2 (gnl/memory.py); was the bundle exported by gnl export?")


def _data_offset(model_bytes: bytes, buffer_index: int) -> int:
    """Byte offset in the file of buffer `buffer_index`'s data."""
    s = _schema()
    buf = s.Model.GetRootAs(model_bytes, 0).Buffers(buffer_index)
    tab = buf._tab  # the generated reader has no offset accessor; DataAsNumpy uses the same position
    return tab.Vector(tab.Offset(4))


class _AlignedBuilder:
    """A flatbuffers Builder that puts every byte vector (the buffers' data)
    on a 16-byte boundary, as TFLite's schema asks (`force_align: 16`) and
    the converter does; the generated Python packer aligns them to 1."""

    def __new__(cls, size: int):
        import flatbuffers

        class Builder(flatbuffers.Builder):
            align16 = False

            def CreateNumpyVector(self, x):  # noqa: N802 (the library's name)
                self.align16 = x.dtype == np.uint8
                try:
                    return super().CreateNumpyVector(x)
                finally:
                    self.align16 = False

            def StartVector(self, elemSize, numElems, alignment):  # noqa: N802,N803
                return super().StartVector(elemSize, numElems, 16 if self.align16 else alignment)

        return Builder(size)


def _serialize(model) -> bytes:
    builder = _AlignedBuilder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def make_teachable(model_path: Path, memory_size: int) -> dict[str, Any]:
    """Rewrite `model_path` with the memory's descriptors as a second output;
    return model.json's `memory.teach`. Idempotent."""
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    s = _schema()
    model = fbu.read_model_from_bytearray(bytearray(Path(model_path).read_bytes()))
    g = model.subgraphs[0]
    inp, chunks = _memory_convs(model, memory_size)
    if inp not in g.outputs:
        g.outputs = list(g.outputs) + [inp]
        for sig in model.signatureDefs or []:
            m = s.TensorMapT()
            m.name, m.tensorIndex = OUTPUT_NAME, inp
            sig.outputs = list(sig.outputs or []) + [m]
    out = _serialize(model)
    Path(model_path).write_bytes(out)
    shape = [int(v) for v in g.tensors[inp].shape]
    layout = []
    for fb, bb, rows in chunks:
        fo, bo = _data_offset(out, fb), _data_offset(out, bb)
        w = np.frombuffer(out, np.float32, rows * shape[3], fo)
        if not np.array_equal(w, np.frombuffer(bytes(model.buffers[fb].data), np.float32)):
            raise RuntimeError(f"{model_path}: filter offset {fo} does not hold the filter")
        if fo % 16 or bo % 16:
            raise RuntimeError(f"{model_path}: bank buffers at {fo}, {bo}: not 16-byte aligned")
        layout.append({"filter_offset": fo, "bias_offset": bo, "rows": rows})
    return {"output": list(g.outputs).index(inp), "height": shape[1], "width": shape[2], "dims": shape[3],
            "chunks": layout}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="bundle folder with a memory (model.json memory.size)")


def run(args: argparse.Namespace) -> int:
    meta_path = args.bundle / "model.json"
    meta = json.loads(meta_path.read_text())
    if "memory" not in meta:
        raise SystemExit(f"{args.bundle}: the model has no memory of normal patches (model.json has no 'memory'); "
                         f"only models fit with --memory can be taught")
    if not meta["memory"].get("dims"):
        raise SystemExit(f"{args.bundle}: a full-width memory (model.json memory has no 'dims') cannot be taught: "
                         f"the converter folds its frame into the bank; fit with --memory-dims (the default)")
    model_path = args.bundle / meta["model_file"]
    teach = make_teachable(model_path, int(meta["memory"]["size"]))
    sha = hashlib.sha256(model_path.read_bytes()).hexdigest()
    if sha != meta["model_sha256"]:
        meta["previous_version"] = meta["version"]
        meta["version"] = f"{datetime.date.today():%Y%m%d}-{sha[:8]}"
        meta["model_sha256"] = sha
    meta["memory"]["teach"] = teach
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    sig = args.bundle / "signature.json"
    if sig.exists():
        sig.unlink()
        print(f"{sig}: removed (model.tflite changed); sign again with `gnlctl sign`")
    print(f"{args.bundle}: teachable, version {meta['version']} ({len(teach['chunks'])} bank chunks, "
          f"descriptors [{teach['height']}x{teach['width']}x{teach['dims']}] as output {teach['output']})")
    return 0
