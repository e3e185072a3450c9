"""Small checks of the benchmark helpers: the all-reduce model and the PyTorch peer."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import allreduce_model as arm  # noqa: E402


def test_ring_bytes_and_time():
    size = 100e6
    assert arm.ring_bytes_per_device(1, size) == 0.0
    assert arm.ring_bytes_per_device(2, size) == pytest.approx(size)
    assert arm.ring_bytes_per_device(8, size) == pytest.approx(1.75 * size)
    # Bandwidth term tends to 2 S / BW; latency adds 2 (N-1) alpha.
    assert arm.ring_time_s(1024, size, 1e9) == pytest.approx(2 * size / 1e9, rel=1e-3)
    assert arm.ring_time_s(4, size, 1e9, alpha=1e-3) == pytest.approx(1.5 * size / 1e9 + 6e-3)
    with pytest.raises(ValueError, match="n must be"):
        arm.ring_bytes_per_device(0, size)
    with pytest.raises(ValueError, match="bw"):
        arm.ring_time_s(2, size, 0.0)


def test_hierarchical_reduces_to_ring_in_one_node_and_beats_flat_ring():
    size = 25.6e6 * 4
    assert arm.hierarchical_time_s(8, size, 450e9, 50e9) == pytest.approx(
        arm.ring_time_s(8, size, 450e9))
    assert arm.hierarchical_time_s(64, size, 450e9, 50e9) < arm.ring_time_s(64, size, 50e9)
    with pytest.raises(ValueError, match="multiple"):
        arm.hierarchical_time_s(12, size, 450e9, 50e9)


def test_markdown_section_replaced_in_place(tmp_path):
    md = tmp_path / "B.md"
    md.write_text(f"head\n{arm.MD_START}\nold\n{arm.MD_END}\ntail\n")
    arm.write_markdown_section("new table", md)
    text = md.read_text()
    assert "old" not in text and "new table" in text
    assert text.startswith("head\n") and text.endswith("tail\n")


def test_torch_peer_matches_flax_forward_and_lars_step():
    torch = pytest.importorskip("torch")
    import jax
    import jax.numpy as jnp
    import optax
    import torch_peer

    from lars_jax.alias import lars
    from lars_jax.models import create_model

    model = create_model("resnet8", num_classes=10)
    x = np.random.RandomState(0).randn(4, 8, 8, 3).astype(np.float32)
    variables = jax.device_get(model.init(jax.random.key(0), jnp.asarray(x), train=False))
    tmodel = torch_peer.create_model("resnet8", 10)
    n_tensors = len(list(tmodel.parameters())) + sum(
        1 for n, _ in tmodel.named_buffers() if not n.endswith("num_batches_tracked"))
    assert torch_peer.load_flax_variables(tmodel, variables) == n_tensors == 37
    tmodel.train()
    logits = model.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])[0]
    tlogits = tmodel(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).detach().numpy()
    np.testing.assert_allclose(tlogits, np.asarray(logits), rtol=1e-4, atol=1e-4)

    # LARS: same update as lars_jax.lars (paper form, ndim <= 1 excluded) over two steps.
    rng = np.random.RandomState(1)
    params = {"k": rng.randn(3, 3, 4, 5).astype(np.float32), "b": rng.randn(5).astype(np.float32)}
    grads = [{k: rng.randn(*v.shape).astype(np.float32) for k, v in params.items()}
             for _ in range(2)]
    hp = dict(lr=0.5, momentum=0.9, weight_decay=1e-3, trust_coefficient=0.02)
    tx = lars(hp["lr"], weight_decay=hp["weight_decay"],
              trust_coefficient=hp["trust_coefficient"], momentum=hp["momentum"])
    p, s = jax.tree.map(jnp.asarray, params), None
    s = tx.init(p)
    tp = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
    opt = torch_peer.LARS(tp.values(), **hp)
    for g in grads:
        u, s = tx.update(jax.tree.map(jnp.asarray, g), s, p)
        p = optax.apply_updates(p, u)
        for k, t in tp.items():
            t.grad = torch.from_numpy(g[k].copy())
        opt.step()
    for k in params:
        np.testing.assert_allclose(tp[k].detach().numpy(), np.asarray(p[k]), rtol=1e-5,
                                   atol=1e-6)
    assert not np.allclose(np.asarray(p["k"]), params["k"])  # it did move
    with pytest.raises(ValueError, match="momentum"):
        torch_peer.LARS(tp.values(), lr=0.1, momentum=1.0)


def test_torch_peer_mlp_matches_flax_in_float64():
    pytest.importorskip("torch")
    import bench_peer_pytorch

    hp = dict(lr=0.1, wd=5e-4, tc=0.01, m=0.9)
    chk = bench_peer_pytorch.check_agreement("mlp2", hp, batch=16, device="cpu")
    assert chk["conv_tensor"] == "Dense_1/kernel"
    assert chk["max_rel_diff_of_update"] < 1e-6
    assert chk["conv_update_norm"] > 0
    np.testing.assert_allclose(chk["jax_losses"], chk["torch_losses"], rtol=1e-6)
