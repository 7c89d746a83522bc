"""scikit-learn's own estimator checks, each one a test case.

Every check fits on tiny in-memory data many times. They run in this process on Dask's threads,
as the CLI's small jobs do (no cluster starts, no client is used even if one is open), so the
whole set takes seconds.
"""

from __future__ import annotations

import dask
import numpy as np
import pytest
import sklearn.exceptions
from sklearn.utils.estimator_checks import parametrize_with_checks

import kmflow
from kmflow.estimator import SKLEARN_EXPECTED_FAILED_CHECKS, KMeans


def _expected_failed_checks(estimator: KMeans) -> dict[str, str]:
    return SKLEARN_EXPECTED_FAILED_CHECKS


@parametrize_with_checks(
    [KMeans(n_clusters=3)],
    expected_failed_checks=_expected_failed_checks,
    xfail_strict=True,
)
def test_sklearn_estimator_check(estimator, check) -> None:
    with dask.config.set(scheduler="threads"):
        check(estimator)


def test_the_expected_failure_is_scikit_learns_own_for_kmeans() -> None:
    # The only check kmflow is excused from is one scikit-learn excuses its own KMeans from.
    assert set(SKLEARN_EXPECTED_FAILED_CHECKS) == {"check_sample_weight_equivalence_on_dense_data"}
    assert (
        "randomised"
        in SKLEARN_EXPECTED_FAILED_CHECKS["check_sample_weight_equivalence_on_dense_data"]
    )


def test_not_fitted_is_both_kmflows_and_scikit_learns_error() -> None:
    X = np.arange(12, dtype=float).reshape(6, 2)
    for method in ("predict", "transform", "score"):
        with pytest.raises(kmflow.NotFittedError, match="not fitted yet") as info:
            getattr(KMeans(2), method)(X)
        assert isinstance(info.value, sklearn.exceptions.NotFittedError)
        assert isinstance(info.value, kmflow.KmflowError)


def test_labels_are_the_training_rows_nearest_final_centers() -> None:
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(c, 0.3, size=(40, 2)) for c in (0.0, 5.0, 10.0)])
    km = KMeans(3, random_state=0).fit(X)
    assert km.labels_.dtype == np.int32
    assert km.labels_.shape == (120,)
    np.testing.assert_array_equal(km.labels_, km.predict(X))
    np.testing.assert_array_equal(np.bincount(km.labels_), [40, 40, 40])
    np.testing.assert_array_equal(KMeans(3, random_state=0).fit_predict(X), km.labels_)


def test_inputs_scikit_learn_accepts_or_refuses_in_its_words() -> None:
    X = np.random.default_rng(1).normal(size=(30, 2))
    as_objects = KMeans(2, random_state=0).fit(X.astype(object))
    np.testing.assert_array_equal(
        as_objects.cluster_centers_, KMeans(2, random_state=0).fit(X).cluster_centers_
    )
    from scipy import sparse

    with pytest.raises(kmflow.InvalidInputError, match="sparse input is not supported"):
        KMeans(2).fit(sparse.csr_matrix(X))
    with pytest.raises(kmflow.InvalidInputError, match="Complex data not supported"):
        KMeans(2).fit(X + 1j)
    with pytest.raises(kmflow.InvalidInputError, match="Reshape your data"):
        KMeans(2).fit(X[:, 0])
    with pytest.raises(kmflow.InvalidInputError, match=r"0 feature\(s\) \(shape=\(30, 0\)\)"):
        KMeans(2).fit(X[:, :0])
    with pytest.raises(TypeError, match="not a number"):
        KMeans(2).fit(np.array([[1.0, {"a": 1}]] * 3, dtype=object))
