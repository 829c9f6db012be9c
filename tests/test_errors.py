"""Bad input fails at trace time with a message naming what was seen and what was expected."""

import jax
import numpy as np
import pytest

from jaxkeops import LazyTensor, Pm, Vi, Vj


def test_dimension_mismatch_names_both_dims():
    x = Vi(np.ones((5, 3)))
    y = Vj(np.ones((6, 4)))
    with pytest.raises(ValueError, match=r"3 and 4"):
        x - y
    with pytest.raises(ValueError, match=r"3 and 4"):
        x | y
    with pytest.raises(ValueError, match=r"3 and 4"):
        x.sqdist(y)


def test_inconsistent_sizes():
    with pytest.raises(ValueError, match=r"M .*5 and 6"):
        Vi(np.ones((5, 3))) + Vi(np.ones((6, 3)))


def test_ambiguous_2d_array():
    with pytest.raises(ValueError, match=r"ambiguous.*Vi"):
        LazyTensor(np.ones((5, 3)))


def test_dense_3d_array_rejected():
    with pytest.raises(ValueError, match=r"\(5, 4, 3\).*\(M, 1, D\)"):
        LazyTensor(np.ones((5, 4, 3)))


def test_integer_dtype_rejected():
    with pytest.raises(TypeError, match=r"int.*float32 or float64"):
        Vi(np.ones((5, 3), dtype=np.int32))


def test_mixed_dtypes_rejected():
    F = Vi(np.ones((5, 3), np.float32)) - Vj(np.ones((4, 3), np.float64))
    with pytest.raises(TypeError, match=r"float32.*float64|float64.*float32"):
        F.sum(1)


def test_bad_axis():
    F = Vi(np.ones((5, 3))).sqdist(Vj(np.ones((4, 3))))
    with pytest.raises(ValueError, match=r"axis=3"):
        F.sum(3)


def test_errors_inside_jit_are_raised_at_trace_time():
    @jax.jit
    def f(x, y):
        return (Vi(x) - Vj(y)).sum(1)

    with pytest.raises(ValueError, match=r"3 and 2"):
        f(np.ones((5, 3)), np.ones((4, 2)))


def test_vi_needs_2d():
    with pytest.raises(ValueError, match=r"Vi\(x\).*\(5,\).*2-d"):
        Vi(np.ones(5))
    with pytest.raises(ValueError, match=r"Pm\(p\).*\(2, 2\)"):
        Pm(np.ones((2, 2)))


def test_new_ops_dimension_mismatches_name_both_dims():
    x = Vi(np.ones((5, 3)))
    y = Vj(np.ones((6, 4)))
    cases = [
        (lambda: x.atan2(y), r"3 and 4"),
        (lambda: x == y, r"3 and 4"),
        (lambda: x < y, r"3 and 4"),
        (lambda: x.clamp(y, 1.0), r"3, 4"),
        (lambda: x.ifelse(1.0, y), r"3, 1 and 4|3, 1, 4"),
        (lambda: x ** y, r"4.*3|3.*4"),
        (lambda: x.matvecmult(y), r"3.*4"),
        (lambda: y.vecmatmult(x), r"3.*4"),
        (lambda: x.weightedsqnorm(y), r"4.*3"),
        (lambda: x.keops_tensordot(y, (3,), (4,), (0,), (0,)), r"\[3\].*\[4\]"),
        (lambda: x.keops_tensordot(y, (3,), (2, 3), (), ()), r"operand dimensions 3 and 4"),
    ]
    for build, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            build()


def test_indexing_errors():
    x = Vi(np.ones((5, 3)))
    with pytest.raises(ValueError, match=r"index 3 is out of bounds \[0, 3\)"):
        x.elem(3)
    with pytest.raises(ValueError, match=r"\[2, 4\).*\[0, 3\)"):
        x.extract(2, 2)
    with pytest.raises(ValueError, match=r"step 2"):
        x[0:3:2]
    with pytest.raises(ValueError, match=r"last \(feature\) axis"):
        x[0, 1]
    with pytest.raises(ValueError, match=r"OneHot.*dimension is 3; expected 1"):
        x.one_hot(4)
    with pytest.raises(TypeError, match=r"round\(d\).*0.5"):
        x.round(0.5)
    with pytest.raises(ValueError, match=r"dim=0"):
        x.norm(0)
    with pytest.raises(ValueError, match=r"\[3\] and \[1, 3\]"):
        x.keops_kron(x, (3,), (1, 3))
    with pytest.raises(ValueError, match=r"perm=\[0, 0\]"):
        x.keops_tensordot(x, (3,), (3,), (), (), (0, 0))


def test_half_and_single_precision_mixed_rejected():
    F = Vi(np.ones((5, 3), np.float16)) * Vj(np.ones((4, 3), np.float32))
    with pytest.raises(TypeError, match=r"float16.*float32"):
        F.sum(0)
