"""The image-8x8-v1 contract (an image as a row of pixels) and the synthetic bar images that meet it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from databright.config import Settings
from databright.datasets import Column, load_contract
from databright.datasets.contract_tools import check_file
from databright.datasets.synthetic import bar_images, pixel_columns

KIND = "image-8x8-v1"


def test_the_contract_is_64_bounded_pixels_in_row_major_order_and_a_binary_label(settings: Settings) -> None:
    contract = load_contract(settings.contracts_dir, KIND)
    schema = contract.schema
    pixels = tuple(f"p{r}{c}" for r in range(8) for c in range(8))
    assert pixels == pixel_columns(8, 8) and pixels[:3] == ("p00", "p01", "p02") and pixels[8] == "p10"
    assert schema.names == (*pixels, "label") and schema.features == pixels and schema.label == "label"
    assert all(c == Column(name, "float", False) for c, name in zip(schema.columns, pixels, strict=False))
    assert schema.column("label") == Column("label", "int", False)
    rules: dict[str, list] = {}
    for e in contract.suite_json["expectations"]:
        rules.setdefault(e["type"], []).append(e["kwargs"])
    assert {k["column"] for k in rules["expect_column_values_to_not_be_null"]} == set(schema.names)
    assert {
        (k["column"], k["min_value"], k["max_value"]) for k in rules["expect_column_values_to_be_between"]
    } == {(p, 0.0, 1.0) for p in pixels}
    assert rules["expect_column_values_to_be_in_set"] == [{"column": "label", "value_set": [0, 1]}]


def test_pixel_columns_pad_indices_to_the_longer_side() -> None:
    assert pixel_columns(2, 3) == ("p00", "p01", "p02", "p10", "p11", "p12")
    assert pixel_columns(12, 2)[:3] == ("p0000", "p0001", "p0100") and len(pixel_columns(12, 2)) == 24
    with pytest.raises(ValueError, match="at least one row"):
        pixel_columns(0, 4)


def test_bar_images_are_deterministic_bounded_and_labelled_by_the_bar(settings: Settings) -> None:
    frame = bar_images(400, seed=5)
    pd.testing.assert_frame_equal(frame, bar_images(400, seed=5))
    assert not frame.equals(bar_images(400, seed=6))
    assert list(frame.columns) == list(load_contract(settings.contracts_dir, KIND).schema.names)
    pixels = frame.drop(columns="label").to_numpy()
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    np.testing.assert_array_equal(pixels, pixels.round(4))
    assert set(frame["label"]) == {0, 1} and 150 < frame["label"].sum() < 250
    # The signal is the bar's direction: the brightest row beats the brightest column exactly when
    # the label is 1 (horizontal), on each of these 400 images: the labels follow the bars.
    images = pixels.reshape(-1, 8, 8)
    horizontal = images.mean(2).max(1) > images.mean(1).max(1)
    np.testing.assert_array_equal(horizontal, frame["label"].to_numpy() == 1)
    # ...and no single pixel gives it away: every pixel's mean is within noise of the same value
    # whatever the label.
    by_label = [pixels[frame["label"].to_numpy() == k].mean(0) for k in (0, 1)]
    assert np.abs(by_label[0] - by_label[1]).max() < 0.15


def test_bar_images_meet_the_contract_and_broken_pixels_are_quarantined(
    settings: Settings, tmp_path: Path
) -> None:
    contract = load_contract(settings.contracts_dir, KIND)
    frame = bar_images(50, seed=1)
    path = tmp_path / "images.csv"
    frame.to_csv(path, index=False)
    report = check_file(contract, path)
    assert (report.rows_received, report.rows_passed, report.quarantined) == (50, 50, ())

    frame.loc[3, "p45"] = 1.5  # brighter than white
    frame.loc[7, "label"] = 2
    frame.to_csv(path, index=False)
    report = check_file(contract, path)
    assert [(q.row_number, q.column, q.expectation) for q in report.quarantined] == [
        (4, "p45", "expect_column_values_to_be_between"),
        (8, "label", "expect_column_values_to_be_in_set"),
    ]
