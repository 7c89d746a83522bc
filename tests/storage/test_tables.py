"""read_table: CSV, TSV, Parquet from files, folders, globs and S3; rows, fingerprint, errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest

from kmflow.errors import SourceNotFoundError, TableError
from kmflow.storage.tables import ROW, read_table, table_format


@pytest.fixture(autouse=True)
def _sync_scheduler():
    with dask.config.set(scheduler="synchronous"):
        yield


def _frame(n: int, start: int = 0) -> pd.DataFrame:
    i = np.arange(start, start + n)
    return pd.DataFrame(
        {
            "id": i.astype(str),
            "spend ($)": [("" if k % 5 == 0 else f"{k * 1.5}") for k in i],
            "plan (tier)": np.array(["gold", "silver", "bronze"])[i % 3],
        }
    )


def _write_csv(path: Path, df: pd.DataFrame) -> Path:
    df.to_csv(path, index=False)
    return path


def test_csv_file_text_columns_and_global_rows(tmp_path):
    path = _write_csv(tmp_path / "a.csv", _frame(300))
    table = read_table(str(path), blocksize=1024)
    assert table.format == "csv"
    assert table.files == [str(path)]
    assert table.n_rows == 300
    assert table.columns == ("id", "spend ($)", "plan (tier)")
    assert table.frame.npartitions >= 3
    assert sum(table.partition_rows) == 300
    df = table.frame.compute()
    assert df.index.name == ROW
    assert df.index.dtype == np.int64
    np.testing.assert_array_equal(df.index.to_numpy(), np.arange(300))
    np.testing.assert_array_equal(df["id"].astype(int).to_numpy(), np.arange(300))
    assert df["spend ($)"].iloc[0] == ""  # a blank cell stays text, never NaN
    assert all(pd.api.types.is_string_dtype(t) for t in df.dtypes)
    assert table.frame.known_divisions
    np.testing.assert_array_equal(table.row_starts(), np.cumsum((0, *table.partition_rows[:-1])))
    assert table.frame.loc[137].compute()["id"].tolist() == ["137"]


def test_folder_and_glob_contiguous_rows_across_files(tmp_path):
    _write_csv(tmp_path / "b.csv", _frame(100, start=100))
    _write_csv(tmp_path / "a.csv", _frame(100, start=0))
    gz = tmp_path / "sub" / "c.csv.gz"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(_frame(50, start=200).to_csv(index=False).encode()))
    (tmp_path / "notes.txt").write_text("not a table")
    table = read_table(str(tmp_path), blocksize=1024)
    assert [Path(f).name for f in table.files] == ["a.csv", "b.csv", "c.csv.gz"]
    df = table.frame.compute()
    np.testing.assert_array_equal(df.index.to_numpy(), np.arange(250))
    np.testing.assert_array_equal(df["id"].astype(int).to_numpy(), np.arange(250))
    globbed = read_table(str(tmp_path / "*.csv"), blocksize=1024)
    assert globbed.n_rows == 200
    assert [Path(f).name for f in globbed.files] == ["a.csv", "b.csv"]


def test_tsv(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("a b\t$c\n1\tx,y\n2\t\n")
    df = read_table(str(path)).frame.compute()
    assert df.columns.tolist() == ["a b", "$c"]
    assert df["$c"].tolist() == ["x,y", ""]


def test_parquet_folder_row_groups_and_types(tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    for k in range(2):
        df = pd.DataFrame({"x": np.arange(k * 70, (k + 1) * 70), "name": ["n"] * 70})
        df.to_parquet(folder / f"part.{k}.parquet", row_group_size=30)
    (folder / "_SUCCESS").write_text("")
    table = read_table(str(folder))
    assert table.format == "parquet"
    assert table.partition_rows == (30, 30, 10, 30, 30, 10)
    df = table.frame.compute()
    np.testing.assert_array_equal(df.index.to_numpy(), np.arange(140))
    np.testing.assert_array_equal(df["x"].to_numpy(), np.arange(140))
    assert df["x"].dtype == np.int64


def test_fingerprint_stable_and_changed_by_one_byte(tmp_path):
    path = _write_csv(tmp_path / "a.csv", _frame(50))
    first = read_table(str(path)).fingerprint
    assert len(first) == 64
    assert read_table(str(path), blocksize=1024).fingerprint == first
    copy = tmp_path / "copy" / "b.csv"
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    assert read_table(str(copy)).fingerprint == first  # names do not count
    data = bytearray(path.read_bytes())
    data[-2] = ord("x") if data[-2] != ord("x") else ord("y")
    path.write_bytes(bytes(data))
    assert read_table(str(path)).fingerprint != first


def test_s3_csv_and_parquet(s3_bucket, tmp_path):
    import s3fs

    bucket, options = s3_bucket
    fs = s3fs.S3FileSystem(**options)
    local = _write_csv(tmp_path / "a.csv", _frame(120))
    fs.put(str(local), f"{bucket}/exports/a.csv")
    fs.put(str(local), f"{bucket}/exports/b.csv")
    _frame(40).to_parquet(tmp_path / "p.parquet")
    fs.put(str(tmp_path / "p.parquet"), f"{bucket}/pq/p.parquet")
    table = read_table(f"{bucket}/exports/", storage_options=options, blocksize=1024)
    assert table.files == [f"{bucket}/exports/a.csv", f"{bucket}/exports/b.csv"]
    assert table.n_rows == 240
    np.testing.assert_array_equal(table.frame.compute().index.to_numpy(), np.arange(240))
    twin = tmp_path / "twin.csv"
    twin.write_bytes(local.read_bytes())
    assert table.fingerprint == read_table([str(local), str(twin)]).fingerprint
    globbed = read_table(f"{bucket}/exports/b*.csv", storage_options=options)
    assert globbed.fingerprint == read_table(str(local)).fingerprint
    pq = read_table(f"{bucket}/pq", storage_options=options)
    assert pq.n_rows == 40
    with pytest.raises(SourceNotFoundError, match="missing"):
        read_table(f"{bucket}/missing/*.csv", storage_options=options)


# --------------------------------------------------------------------------- bad input


def test_missing_file_and_empty_glob(tmp_path):
    with pytest.raises(SourceNotFoundError, match=r"nope\.csv"):
        read_table(str(tmp_path / "nope.csv"))
    with pytest.raises(SourceNotFoundError, match=r"no file matches .*\*\.csv"):
        read_table(str(tmp_path / "*.csv"))
    (tmp_path / "only.txt").write_text("x")
    with pytest.raises(SourceNotFoundError, match="no table file"):
        read_table(str(tmp_path))


def test_unsupported_extension_and_mixed_formats(tmp_path):
    (tmp_path / "a.xlsx").write_bytes(b"PK")
    with pytest.raises(TableError, match=r"a\.xlsx: unsupported file type"):
        read_table(str(tmp_path / "a.xlsx"))
    _write_csv(tmp_path / "b.csv", _frame(3))
    _frame(3).to_parquet(tmp_path / "c.parquet")
    with pytest.raises(TableError, match=r"mixes table formats: .*b\.csv \(csv\) and .*c\.parquet"):
        read_table([str(tmp_path / "b.csv"), str(tmp_path / "c.parquet")])


def test_empty_and_header_only(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(TableError, match=r"empty\.csv: empty file \(0 bytes\)"):
        read_table(str(tmp_path / "empty.csv"))
    (tmp_path / "head.csv").write_text("a,b\n")
    with pytest.raises(TableError, match=r"head\.csv: a header but no data rows"):
        read_table(str(tmp_path / "head.csv"))
    (tmp_path / "empty.parquet").write_bytes(b"")
    with pytest.raises(TableError, match=r"empty\.parquet: empty file \(0 bytes\)"):
        read_table(str(tmp_path / "empty.parquet"))


@pytest.mark.parametrize(
    ("bad_line", "n_fields"), [("7,8,9,10", 4), ("7", 1)], ids=["too-many", "too-few"]
)
def test_malformed_line_names_file_and_line(tmp_path, bad_line, n_fields):
    lines = ["a,b,c"] + [f"{i},{i},{i}" for i in range(200)]
    lines.insert(151, bad_line)  # line 152 of the file
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        TableError, match=rf"bad\.csv: line 152 has {n_fields} fields, the header has 3"
    ):
        read_table(str(path), blocksize=1024)


def test_different_csv_headers(tmp_path):
    (tmp_path / "a.csv").write_text("x,y\n1,2\n")
    (tmp_path / "b.csv").write_text("x,z\n1,2\n")
    with pytest.raises(
        TableError,
        match=r"a\.csv and .*b\.csv have different columns \(only in the first: 'y'; "
        r"only in the second: 'z'\)",
    ):
        read_table(str(tmp_path))


def test_duplicate_and_unnamed_header_columns(tmp_path):
    (tmp_path / "d.csv").write_text("x,y,x\n1,2,3\n")
    with pytest.raises(TableError, match=r"d\.csv: duplicate column name 'x'"):
        read_table(str(tmp_path / "d.csv"))
    (tmp_path / "u.csv").write_text("x,,z\n1,2,3\n")
    with pytest.raises(TableError, match=r"u\.csv: column 2 of the header has no name"):
        read_table(str(tmp_path / "u.csv"))


def test_parquet_schemas_differ(tmp_path):
    pd.DataFrame({"x": [1, 2], "y": [1.0, 2.0]}).to_parquet(tmp_path / "a.parquet")
    pd.DataFrame({"x": ["1", "2"], "z": [1.0, 2.0]}).to_parquet(tmp_path / "b.parquet")
    with pytest.raises(TableError) as info:
        read_table(str(tmp_path))
    message = str(info.value)
    assert "a.parquet" in message
    assert "b.parquet" in message
    assert "'y' only in the first" in message
    assert "'z' only in the second" in message
    assert "'x' is int64 in the first and" in message
    assert "\n" not in message


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"this is not parquet at all")
    with pytest.raises(TableError, match=r"bad\.parquet: not a readable Parquet file"):
        read_table(str(path))


def test_table_format():
    assert table_format("x/Y.CSV") == "csv"
    assert table_format("y.tsv.gz") == "tsv"
    assert table_format("p.pq") == "parquet"
    assert table_format("notes.txt") is None
