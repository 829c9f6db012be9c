"""The examples of docs/examples/, run at reduced size: their outcomes, not just that they run.

Each example is imported by path (docs/ is not a package) and its `main` (or its parts) called
with small sizes. A test is skipped when its example's library (Equinox, Flax, optax: the
`examples` extra) is not installed.
"""

import importlib.util
import pathlib

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "docs" / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gp_regression_equinox_recovers_the_lengthscale():
    pytest.importorskip("equinox")
    pytest.importorskip("optax")
    gp = load_example("gp_regression_equinox")
    # A fixed seed: the lengthscale recovery is a statistical outcome (a GP fit to one random
    # data set, trained with random Hutchinson probes). With this size and number of steps,
    # seeds 0..7 all recover the lengthscale within 17% and the noise within 8%.
    out = gp.main(size=200, steps=60, probes=8, learning_rate=0.1, seed=0, verbose=False)
    assert out["nll_after"] < out["nll_before"] - 0.5, out  # the exact NLL per point
    assert abs(out["lengthscale"] - out["true_lengthscale"]) <= 0.2 * out["true_lengthscale"], out
    assert abs(out["noise"] - out["true_noise"]) <= 0.2 * out["true_noise"], out
    # The posterior mean (solve + K @ v) agrees with the dense float64 formula.
    assert out["prediction_error"] <= 1e-6, out


@pytest.mark.parametrize("k", [7, 4])  # 4: majority-vote ties too (lowest class wins)
def test_knn_spirals_matches_brute_force(rng, k):
    knn = load_example("knn_spirals")
    out = knn.main(size=611, test_size=157, k=k, seed=int(rng.integers(2**31)), verbose=False)
    np.testing.assert_array_equal(out["predicted"], out["brute_force"])
    assert out["label_mismatches"] == 0 and out["neighbour_mismatches"] == 0, out
    assert out["accuracy"] >= 0.8, out  # the classifier works (spirals are learnable by kNN)


def test_kernel_attention_flax_matches_dense_attention(rng):
    pytest.importorskip("flax")
    pytest.importorskip("optax")
    attention = load_example("kernel_attention_flax")
    seed = int(rng.integers(2**31))
    # Forward only: jaxkeops vs jax.nn.dot_product_attention, float32, outputs of size ~1.
    model = attention.KernelAttention(16, 2, rngs=attention.nnx.Rngs(seed))
    x = rng.normal(size=(2, 13, 16)).astype(np.float32)
    context = rng.normal(size=(2, 21, 16)).astype(np.float32)  # cross-attention: S != T
    for args in ((x,), (x, context)):
        ours, dense = model(*args), model(*args, dense=True)
        assert ours.shape == dense.shape
        np.testing.assert_allclose(ours, dense, rtol=0, atol=1e-5)


def test_kernel_attention_flax_trains(rng):
    pytest.importorskip("flax")
    pytest.importorskip("optax")
    attention = load_example("kernel_attention_flax")
    seed = int(rng.integers(2**31))
    comparison = attention.compare_with_dense(batch=2, length=13, d_model=16, num_heads=2,
                                              seed=seed)
    assert comparison["output_error"] <= 1e-5, comparison
    # Gradients with respect to every projection agree with those through the dense layer
    # (float32: entries of size ~1e-2, compared with an absolute 1e-5).
    for name, error in comparison["gradient_errors"].items():
        assert error <= 1e-5, (name, comparison)
    out = attention.train(batch=2, length=13, d_model=16, num_heads=2, steps=10, seed=seed,
                          verbose=False)
    assert out["loss_after"] < out["loss_before"], out
    # Gradients reach every projection, the query and key ones through the softmax.
    for name, norm in out["first_gradient_norms"].items():
        assert np.isfinite(norm) and norm > 0, (name, out)


def test_api_reference_lists_every_public_name():
    """docs/api.md has a row for every name of `jaxkeops.__all__` and every public attribute
    and operator of LazyTensor (a new public name without a line there fails here)."""
    import jaxkeops
    from jaxkeops import LazyTensor

    text = (EXAMPLES.parent / "api.md").read_text()
    boilerplate = {"__init__", "__dict__", "__doc__", "__module__", "__weakref__",
                   "__array_priority__"}
    names = set(jaxkeops.__all__) | {"__version__"} | {
        name for klass in LazyTensor.__mro__[:-1] for name in vars(klass)  # mixins included
        if (not name.startswith("_") or (name.startswith("__") and name.endswith("__")))
        and name not in boilerplate
    }
    missing = sorted(n for n in names if f"| `{n}` |" not in text and f"`{n}`" not in text)
    assert not missing, f"docs/api.md does not list {missing}"
