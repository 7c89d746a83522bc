"""The cluster-images flow on scikit-learn's digits, as a table: scores equal scikit-learn's,
the registered model labels its training images as training did, inputs read once."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.datasets import load_digits

from kmflow.jobs.image_clusters.inputs import load_images
from kmflow.params import ImageClusterParams

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def digits_csv(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray, np.ndarray]:
    d = load_digits()
    x = (d.data * 255 / 16).round().astype(np.uint8)
    frame = pd.DataFrame(x, columns=[f"pixel{i + 1}" for i in range(64)])
    frame.insert(0, "label", d.target)
    path = tmp_path_factory.mktemp("digits") / "digits.csv"
    frame.to_csv(path, index=False)
    return str(path), x, d.target


def test_table_of_images_is_read_once(digits_csv, tmp_path) -> None:
    path, x, y = digits_csv
    params = ImageClusterParams(
        source=[path], image_shape="8x8", label_column="label", store=str(tmp_path)
    )
    first = load_images(params)
    assert first.n_images == 1797
    assert first.shape == (8, 8, 1)
    assert not first.reused
    np.testing.assert_array_equal(first.rows().compute(), x)
    np.testing.assert_array_equal(first.label_codes(), y)
    assert load_images(params).reused


def test_cluster_images_flow_on_digits(digits_csv, tmp_path, monkeypatch) -> None:
    from kmflow.cluster import connect
    from kmflow.config import ClusterSettings
    from kmflow.flows.cluster_images import cluster_images_flow
    from kmflow.jobs.image_clusters.inputs import load_images as load
    from kmflow.storage.registry import ModelRegistry

    path, _, y = digits_csv
    monkeypatch.setenv("KMFLOW_REGISTRY__URL", str(tmp_path / "models"))
    params = ImageClusterParams(
        source=[path],
        image_shape="8x8",
        label_column="label",
        store=str(tmp_path / "store"),
        features="raw,pca:20",
        k="10",
        model="digits",
    )
    with connect(ClusterSettings(n_workers=2, threads_per_worker=1)):
        result = cluster_images_flow(params)
    assert result.version == 1
    assert result.promoted
    assert result.n_images == 1797
    model = ModelRegistry(str(tmp_path / "models")).load("digits", "champion")
    assert model.record.kind == "images"
    labels = model.predict(load(params).rows().compute())
    assert np.bincount(labels, minlength=10).tolist() == result.sizes
    # every external metric equals scikit-learn's on the same labels
    m = result.metrics
    assert m["ari"] == pytest.approx(skm.adjusted_rand_score(y, labels), abs=1e-12)
    assert m["ami"] == pytest.approx(skm.adjusted_mutual_info_score(y, labels), abs=1e-10)
    assert m["nmi"] == pytest.approx(skm.normalized_mutual_info_score(y, labels), abs=1e-12)
    assert m["fmi"] == pytest.approx(skm.fowlkes_mallows_score(y, labels), abs=1e-12)
    assert m["ari"] > 0.5  # pca:20 k-means on digits: about 0.67
    assert sum(map(sum, result.contingency["table"])) == 1797
    # the report step: written next to the model, from the registry (a sample kept with it)
    from kmflow.core.report_sample import SAMPLE_FILE
    from kmflow.reports.build import build_report

    assert SAMPLE_FILE in model.record.artifacts
    report = build_report(ModelRegistry(str(tmp_path / "models")), "digits", 1)
    assert report.picture("scatter").data["n"] == 1797  # every image (at most 2,000 kept)
    page = tmp_path / "models" / "digits" / "reports" / "v000001" / "report.html"
    assert page.read_text().count('<img src="data:image/png;base64,') == len(report.pictures)
    reasons = {m.name: m.reason for m in report.missing}
    assert set(reasons) == {"sweep", "drift"}
    assert "fitted one k (k=10)" in reasons["sweep"]
