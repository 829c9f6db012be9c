"""k-nearest-neighbour classification of two interleaved spirals with `argKmin`, jitted.

Each test point gets the labels of its K nearest training points (`argKmin` over the symbolic
matrix of squared distances, which is never stored) and takes the majority. The same
prediction is made by brute force (dense distances, a stable argsort) and the labels must be
identical.

Identical, not just close: both implementations must pick the same neighbours, ties included.
The points are snapped to a grid of step 1/64, so that every squared distance is computed
exactly in float32 (a few dyadic digits) by both. Exact ties then really occur (two training
points at the same distance), and both break them the same way: the lowest index first, which
is KeOps' rule for argKmin and that of a stable sort. Majority-vote ties (K even) go to the
lowest class, as `argmax`.

Run: `python docs/examples/knn_spirals.py` (needs only jaxkeops).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxkeops import Vi, Vj

GRID = 1 / 64  # coordinates are multiples of this: squared distances are exact in float32


def make_spirals(n: int, seed: int, noise: float = 0.25):
    """n points on two interleaved spirals (classes 0 and 1, n // 2 each), with noise, in about
    [-4, 4]², snapped to the grid. Returns (points (n, 2) float32, labels (n,) int32)."""
    rng = np.random.default_rng(seed)
    half = n // 2
    labels = np.repeat(np.arange(2), [half, n - half])
    turns = np.sqrt(rng.uniform(0.0, 1.0, size=n)) * 3 * np.pi  # uniform density along the arc
    radius = turns / np.pi
    angle = turns + np.pi * labels  # the second spiral is the first turned by 180°
    points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    points += noise * rng.normal(size=points.shape)
    points = np.round(points / GRID) * GRID
    return jnp.asarray(points, jnp.float32), jnp.asarray(labels, jnp.int32)


def majority_vote(neighbour_labels, num_classes: int):
    """The most frequent label of each row (the lowest one on a tie)."""
    counts = jax.nn.one_hot(neighbour_labels, num_classes, dtype=jnp.int32).sum(axis=1)
    return jnp.argmax(counts, axis=1)


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def knn_predict(x_train, y_train, x_test, *, k: int, num_classes: int = 2):
    """kNN with jaxkeops: (labels (m,), neighbour indices (m, K)). Only K is static."""
    squared_distances = Vi(x_test).sqdist(Vj(x_train))  # symbolic (m, n), never stored
    neighbours = squared_distances.argKmin(k, axis=1)  # (m, K), nearest first
    return majority_vote(y_train[neighbours], num_classes), neighbours


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def knn_predict_brute_force(x_train, y_train, x_test, *, k: int, num_classes: int = 2):
    """The same with the dense (m, n) distance matrix and a stable argsort (ties: lowest index)."""
    squared_distances = jnp.sum((x_test[:, None, :] - x_train[None, :, :]) ** 2, axis=-1)
    neighbours = jnp.argsort(squared_distances, axis=1, stable=True)[:, :k]
    return majority_vote(y_train[neighbours], num_classes), neighbours


def main(size: int = 10000, test_size: int = 2000, k: int = 7, seed: int = 0,
         verbose: bool = True):
    """Classify `test_size` fresh points with `size` training points. Returns a dict: accuracy
    of both predictions against the true classes, the numbers of test points whose labels and
    whose neighbour lists differ between the two (expected 0), how many test points have a
    tie at their K-th distance (where the tie rule decides), and both label arrays."""
    x_train, y_train = make_spirals(size, seed)
    x_test, y_test = make_spirals(test_size, seed + 1)
    predicted, neighbours = knn_predict(x_train, y_train, x_test, k=k)
    brute_force, brute_force_neighbours = knn_predict_brute_force(x_train, y_train, x_test, k=k)

    # Ties at the K-th distance: where the tie rule decides which neighbours are kept.
    dense = jnp.sum((x_test[:, None, :] - x_train[None, :, :]) ** 2, axis=-1)
    sorted_distances = jnp.sort(dense, axis=1)
    kth, next_one = sorted_distances[:, k - 1], sorted_distances[:, k]
    outcome = {
        "accuracy": float(jnp.mean(predicted == y_test)),
        "brute_force_accuracy": float(jnp.mean(brute_force == y_test)),
        "label_mismatches": int(jnp.sum(predicted != brute_force)),
        "neighbour_mismatches": int(jnp.sum(jnp.any(neighbours != brute_force_neighbours, 1))),
        "boundary_ties": int(jnp.sum(kth == next_one)),
        "predicted": np.asarray(predicted),
        "brute_force": np.asarray(brute_force),
    }
    if verbose:
        print(f"{k}-NN on two spirals: {size} training points, {test_size} test points")
        print(f"accuracy {outcome['accuracy']:.4f} (jaxkeops argKmin), "
              f"{outcome['brute_force_accuracy']:.4f} (brute force)")
        print(f"test points whose label / neighbours differ from brute force: "
              f"{outcome['label_mismatches']} / {outcome['neighbour_mismatches']}")
        print(f"test points with a tie at the K-th distance: {outcome['boundary_ties']}")
    return outcome


if __name__ == "__main__":
    main()
