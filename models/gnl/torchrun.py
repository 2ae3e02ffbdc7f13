"""torchrun, for a PyTorch built without libuv (Debian's): `python3 -m gnl.torchrun ARGS`.

    python3 -m gnl.torchrun --standalone --nproc_per_node 2 -m gnl fit --data DIR --out OUT

This is PyTorch's own launcher (torch.distributed.run), unchanged but for
one thing: the rendezvous stores it creates do not ask for libuv
(gnl/distributed.py, NoLibuvStore). PyTorch asks for libuv by default, and
torchrun's rendezvous paths ignore USE_LIBUV=0, so on a build without libuv
plain `torchrun` stops with "use_libuv was requested but PyTorch was built
without libuv support". Where PyTorch has libuv (the PyPI wheels) this is
plain torchrun.
"""

from __future__ import annotations

import sys

from torch.distributed import run

from gnl.distributed import without_libuv


def main() -> None:
    without_libuv()
    sys.argv[0] = "torchrun"
    run.main()


if __name__ == "__main__":
    main()
