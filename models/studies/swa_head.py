"""Does averaging the segmentation head's weights over one run's stage-2
snapshots (SWA) beat its last snapshot?

Average the segmentation head's weights over kept stage-2 snapshots of
one run (stochastic weight averaging, Izmailov et al. 2018, without its
BatchNorm refresh: running statistics are averaged too), keep the student,
and write a snapshot `epochs.py score --full` reads.

    tools/sidroot run python3 models/studies/swa_head.py OUT.pt SNAP.pt SNAP.pt ...

A one-off reading for models/RESULTS.md, not part of the toolchain.
"""
import sys
import torch

out, snaps = sys.argv[1], sys.argv[2:]
cks = [torch.load(p, map_location="cpu", weights_only=True) for p in snaps]
state = dict(cks[0]["state_dict"])
for k, v in state.items():
    if k.startswith("segmentation.") and v.is_floating_point():
        state[k] = sum(c["state_dict"][k] for c in cks) / len(cks)
    elif k.startswith("segmentation."):  # num_batches_tracked
        state[k] = cks[-1]["state_dict"][k]
    elif not all(torch.equal(v, c["state_dict"][k]) for c in cks):
        raise SystemExit(f"{k} differs between the snapshots: they must share one student")
torch.save({"config": cks[0]["config"], "state_dict": state, "epoch": cks[0]["epoch"], "seg_step": "swa",
            "held_out": cks[0]["held_out"]}, out)
print(f"wrote {out}: head averaged over {len(snaps)} snapshots")
