"""Feature chains of whole images: parsing, each step against its reference, determinism per
seed, the stored form (JSON + arrays, no pickle), dask = numpy, UMAP placement of new rows."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
from skimage.feature import hog
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from kmflow.core.preprocessing import load_preprocessor
from kmflow.errors import InvalidInputError
from kmflow.jobs.image_clusters.features import (
    ImageFeatures,
    Pca,
    Umap,
    fit_features,
    parse_chain,
    umap_fit_neighbors,
)
from kmflow.params import DEFAULT_IMAGE_FEATURES

SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    return (d.images * 255 / 16).round().astype(np.uint8), d.target


def _roundtrip(feats: ImageFeatures) -> ImageFeatures:
    spec = json.loads(json.dumps(feats.to_json()))
    prep = load_preprocessor(spec, feats.arrays(), n_features=feats.n_features)
    assert isinstance(prep, ImageFeatures)
    return prep


def test_parse_chain_normalises_and_checks_order() -> None:
    steps = parse_chain(" HOG , pca:30,umap:5 ")
    assert ",".join(map(str, steps)) == "hog,pca:30,umap:5"
    assert steps[1] == Pca(30)
    assert steps[2] == Umap(5)
    parse_chain(DEFAULT_IMAGE_FEATURES, shape=SHAPE)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("pca:20", "no extractor"),
        ("raw,pca", "needs a number of components"),
        ("raw,pca:0", "positive integer"),
        ("raw,umap:2,pca:2", "must be the last step"),
        ("raw,pca:5,hog", "extractors come first"),
        ("raw,raw", "appears twice"),
        ("raww", "did you mean 'raw'"),
        ("raw,pca:100", "asks for 100 components but receives only 64"),
    ],
)
def test_bad_chains_are_one_clear_line(spec: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message) as info:
        parse_chain(spec, shape=SHAPE)
    assert "\n" not in str(info.value)


def test_hog_too_small_for_the_images() -> None:
    with pytest.raises(InvalidInputError, match="hog needs images of at least"):
        parse_chain("hog", shape=(3, 3, 1))


def test_raw_and_hog_equal_their_references(digits) -> None:
    x, _ = digits
    raw = fit_features("raw", x[:50], shape=SHAPE, seed=0)
    np.testing.assert_allclose(raw.transform(x[:50]), x[:50].reshape(50, -1) / 255.0)
    h = fit_features("hog", x[:20], shape=SHAPE, seed=0)
    want = np.stack(
        [
            hog(
                im / 255.0,
                orientations=9,
                pixels_per_cell=(2, 2),
                cells_per_block=(2, 2),
                block_norm="L2-Hys",
            )
            for im in x[:20]
        ]
    )
    np.testing.assert_allclose(h.transform(x[:20]), want, atol=1e-12)
    assert h.n_features == want.shape[1] == 3 * 3 * 36


def test_pca_equals_scikit_learn_up_to_sign(digits) -> None:
    x, _ = digits
    feats = fit_features("raw,pca:10", x, shape=SHAPE, seed=0)
    ref = PCA(n_components=10).fit_transform(x.reshape(len(x), -1) / 255.0)
    got = np.asarray(feats.transform(x))
    signs = np.sign((got * ref).sum(axis=0))
    np.testing.assert_allclose(got, ref * signs, atol=1e-9)


def test_color_histogram_sums_to_one() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(5, 6, 6, 3), dtype=np.uint8)
    feats = fit_features("color", rgb, shape=(6, 6, 3), seed=0)
    out = np.asarray(feats.transform(rgb))
    assert out.shape == (5, 64)
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    one = np.zeros((1, 6, 6, 3), dtype=np.uint8)
    one[0, ..., 0] = 255  # pure red: bin (3, 0, 0)
    assert np.asarray(feats.transform(one))[0].argmax() == 3 * 16


def test_dask_input_gives_the_same_features(digits) -> None:
    x, _ = digits
    feats = fit_features("hog,std,pca:8", x, shape=SHAPE, seed=3)
    lazy = da.from_array(x.reshape(len(x), -1), chunks=(400, 64))
    np.testing.assert_allclose(feats.transform(lazy).compute(), feats.transform(x), atol=1e-12)
    # fitted on the cluster (dask-ml's PCA): the leading components agree with scikit-learn's
    # to about 1e-4 relative (measured: 9e-4 absolute at most on values up to 6)
    fitted_on_dask = fit_features("hog,std,pca:8", lazy, shape=SHAPE, seed=3)
    np.testing.assert_allclose(
        np.asarray(fitted_on_dask.transform(x))[:, :3],
        np.asarray(feats.transform(x))[:, :3],
        atol=2e-3,
    )


def test_stored_form_round_trips_and_rejects_damage(digits) -> None:
    x, _ = digits
    feats = fit_features("raw,hog,std,pca:6", x[:300], shape=SHAPE, seed=0)
    back = _roundtrip(feats)
    assert back.chain == feats.chain
    assert back.n_features == 6
    np.testing.assert_array_equal(back.transform(x[300:400]), feats.transform(x[300:400]))
    arrays = feats.arrays()
    assert all(isinstance(a, np.ndarray) and a.dtype != object for a in arrays.values())
    broken = dict(arrays)
    broken.pop(next(iter(broken)))
    with pytest.raises(InvalidInputError, match="lack array"):
        ImageFeatures.from_json(feats.to_json(), broken)


def test_wrong_images_are_clear_errors(digits) -> None:
    x, _ = digits
    feats = fit_features("raw", x[:10], shape=SHAPE, seed=0)
    with pytest.raises(InvalidInputError):
        feats.transform(np.zeros((3, 9, 9), dtype=np.uint8))
    with pytest.raises(InvalidInputError):
        feats.transform(np.full((2, 64), np.nan))
    with pytest.raises(InvalidInputError):
        feats.transform(np.full((2, 64), 300))


def test_umap_is_deterministic_and_places_training_images_where_training_did(digits) -> None:
    x, _ = digits
    a = fit_features("raw,pca:20,umap:3", x[:600], shape=SHAPE, seed=7)
    b = fit_features("raw,pca:20,umap:3", x[:600], shape=SHAPE, seed=7)
    ea, eb = a.arrays(), b.arrays()
    assert sorted(ea) == sorted(eb)
    for name in ea:
        np.testing.assert_array_equal(ea[name], eb[name])
    stored = _roundtrip(a)
    (emb_name,) = [n for n in ea if n.endswith("_embedding")]
    embedding = ea[emb_name]
    # the training images (all distinct here) come back exactly at their embedding
    placed = np.asarray(stored.transform(x[:600]), dtype=np.float32)
    np.testing.assert_array_equal(placed, embedding)
    # new images land inside the embedding's range, near training neighbours
    new = np.asarray(stored.transform(x[600:700]))
    assert new.shape == (100, 3)
    assert np.isfinite(new).all()
    lo, hi = embedding.min(axis=0), embedding.max(axis=0)
    assert ((new >= lo - 1e-6) & (new <= hi + 1e-6)).all()


def test_umap_neighbourhood_grows_with_the_square_root_of_the_collection() -> None:
    assert [umap_fit_neighbors(n) for n in (4, 12, 100, 200, 400, 1797, 10**6)] == [
        3,
        11,
        15,
        15,
        20,
        40,
        40,
    ]


def test_too_few_images_for_a_reducer(digits) -> None:
    x, _ = digits
    with pytest.raises(InvalidInputError, match="training images"):
        fit_features("raw,pca:20", x[:5], shape=SHAPE, seed=0)
