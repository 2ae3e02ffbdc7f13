"""gnl.memory: the nearest-neighbour map is the brute-force one (the fit that builds it: test_train.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gnl.memory import CHUNK, Memory, balance_weight, coreset, descriptors, mean3x3, principal_axes, project


def _brute_force(mem: Memory, t8: torch.Tensor, t16: torch.Tensor) -> torch.Tensor:
    q = descriptors(t8, t16)
    b, c, h, w = q.shape
    d = torch.cdist(q.permute(0, 2, 3, 1).reshape(-1, c).double(), mem.bank.double()).min(1).values
    return d.reshape(b, 1, h, w).float()


def test_distance_is_the_nearest_bank_descriptor_across_chunks() -> None:
    torch.manual_seed(0)
    t8, t16 = torch.randn(2, 5, 8, 8), torch.randn(2, 7, 4, 4)
    mem = Memory(CHUNK + 300, 12)  # two chunks, the second partial
    mem.set_bank(torch.randn(CHUNK + 300, 12))
    with torch.no_grad():
        got = mem.distance(t8, t16)
    assert got.shape == (2, 1, 8, 8)
    assert torch.allclose(got, _brute_force(mem, t8, t16), atol=1e-4)
    # A query that is in the bank is at distance 0; in the second chunk too.
    q = descriptors(t8, t16)[0, :, 3, 5]
    mem.bank[CHUNK + 7] = q
    with torch.no_grad():
        assert float(mem.distance(t8, t16)[0, 0, 3, 5]) < 1e-2


def test_forward_is_weighted_and_a_zero_weight_adds_nothing() -> None:
    torch.manual_seed(1)
    t8, t16 = torch.randn(1, 5, 8, 8), torch.randn(1, 7, 4, 4)
    mem = Memory(64, 12)
    mem.set_bank(torch.randn(64, 12))
    with torch.no_grad():
        assert float(mem(t8, t16).abs().max()) == 0.0
        mem.weight.fill_(0.5)
        assert torch.allclose(mem(t8, t16), 0.5 * mem.distance(t8, t16))


def test_bank_shape_and_weight_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="bank shape"):
        Memory(8, 4).set_bank(torch.zeros(9, 4))
    with pytest.raises(ValueError, match="do not vary"):
        balance_weight(np.array([1.0, 2.0]), np.array([3.0, 3.0]))
    assert balance_weight(np.array([1.0, 3.0]), np.array([0.0, 4.0])) == pytest.approx(0.5)


def test_coreset_is_the_exact_greedy_k_centre() -> None:
    torch.manual_seed(2)
    x = torch.randn(1500, 16) * torch.rand(1500, 1) * 3
    got = coreset(x, 120, np.random.default_rng(5), batch=16, pool=32).tolist()
    rng = np.random.default_rng(5)  # the same first row
    want = [int(rng.integers(len(x)))]
    nearest = ((x - x[want[0]]) ** 2).sum(1)
    while len(want) < 120:
        j = int(torch.argmax(nearest))
        want.append(j)
        nearest = torch.minimum(nearest, ((x - x[j]) ** 2).sum(1))
    assert got == want


def test_coreset_keeps_a_rare_kind_of_patch_a_random_pick_drops() -> None:
    torch.manual_seed(3)
    common = torch.randn(5000, 8)
    rare = torch.randn(5, 8) * 0.1 + 20.0  # 0.1% of the rows, far from the rest
    x = torch.cat([common, rare])
    got = coreset(x, 50, np.random.default_rng(0))
    assert len(set(got.tolist())) == 50
    assert (got >= 5000).any()
    # Equal rows (a rotation's black corners give many): every row once, none twice.
    same = torch.cat([torch.zeros(40, 8), torch.ones(3, 8)])
    assert sorted(coreset(same, 43, np.random.default_rng(1), batch=8, pool=4).tolist()) == list(range(43))
    with pytest.raises(ValueError, match="coreset of 0"):
        coreset(x, 0, np.random.default_rng(0))


def test_principal_axes_are_the_covariance_eigenvectors_scaled_to_unit_spread() -> None:
    torch.manual_seed(4)
    # Rows in a 3-D subspace of 10 channels, plus a little noise.
    basis = torch.linalg.qr(torch.randn(10, 3))[0].T  # [3, 10], orthonormal
    x = (torch.randn(20000, 3) * torch.tensor([5.0, 2.0, 1.0])) @ basis + 0.01 * torch.randn(20000, 10) + 3.0
    center, projection, scale = principal_axes(x, 3, batch=4096)  # several batches
    assert torch.allclose(center, x.double().mean(0).float(), atol=1e-4)
    y = project(x, center, projection, batch=777)
    assert y.shape == (20000, 3)
    assert float((y * y).sum(1).mean().sqrt()) == pytest.approx(1.0, rel=1e-3)  # unit RMS spread
    # Largest axis first, and the projection keeps distances in the subspace.
    assert float(y[:, 0].var()) > float(y[:, 1].var()) > float(y[:, 2].var())
    d_full = torch.cdist(x[:50], x[50:100])
    assert torch.allclose(scale * torch.cdist(y[:50], y[50:100]), d_full, rtol=1e-2, atol=0.05)
    with pytest.raises(ValueError, match="memory dims"):
        Memory(8, 10, 11)


def test_projected_memory_is_the_nearest_neighbour_in_the_projected_space() -> None:
    torch.manual_seed(5)
    t8, t16 = torch.randn(2, 5, 8, 8), torch.randn(2, 7, 4, 4)
    candidates = descriptors(torch.randn(40, 5, 8, 8), torch.randn(40, 7, 4, 4)).permute(0, 2, 3, 1).reshape(-1, 12)
    mem = Memory(300, 12, dims=4)
    mem.fill(candidates, np.random.default_rng(0))
    assert mem.bank.shape == (300, 4) and float(mem.scale) > 0
    q = project(descriptors(t8, t16).permute(0, 2, 3, 1).reshape(-1, 12), mem.center, mem.projection)
    want = float(mem.scale) * torch.cdist(q.double(), mem.bank.double()).min(1).values.reshape(2, 8, 8)
    with torch.no_grad():
        got = mem.distance(t8, t16)[:, 0]
    assert torch.allclose(got.double(), want, atol=1e-4 * float(mem.scale))
    # The bank is made of projected candidates, picked by the greedy k-centre.
    projected = project(candidates, mem.center, mem.projection)
    assert torch.equal(mem.bank, projected[coreset(projected, 300, np.random.default_rng(0))])


def test_stride_16_compares_2x2_averaged_descriptors() -> None:
    torch.manual_seed(6)
    t8, t16 = torch.randn(1, 5, 8, 8), torch.randn(1, 7, 4, 4)
    mem = Memory(50, 12, dims=6, stride=16)
    mem.fill(torch.randn(400, 12), np.random.default_rng(1))
    with torch.no_grad():
        got = mem.distance(t8, t16)
        want = mem.nearest(torch.nn.functional.avg_pool2d(descriptors(t8, t16), 2))
    assert got.shape == (1, 1, 4, 4) and torch.equal(got, want)
    with pytest.raises(ValueError, match="memory stride"):
        Memory(8, 4, stride=4)


def test_mean3x3_is_the_padded_average_pool() -> None:
    torch.manual_seed(7)
    x = torch.randn(2, 5, 9, 7) * 10
    assert torch.allclose(mean3x3(x), torch.nn.functional.avg_pool2d(x, 3, 1, 1), atol=1e-5)
