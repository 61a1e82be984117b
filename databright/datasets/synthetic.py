"""A deterministic synthetic exchange period: the data behind ``databright demo``.

One linear binary classification task in 8 features, seeded, split into what three contributors
send and what the trainer validates on:

* ``alice`` — clean rows;
* ``bob`` — clean rows with 30 % of the labels flipped, plus a few rows that break the contract
  (a missing label, a feature out of range) so quarantine has something to show;
* ``carol`` — mostly exact copies of alice's rows (refused at ingest, credit stays with alice)
  and a few rows of her own;
* the trainer's validation file — clean rows drawn from the same distribution.

Everything is a pure function of the seed, so two runs produce byte-identical files.

Also here, for the image tasks: ``bar_images`` — small grey-level images, each a bright bar on a
noisy background, labelled by the bar's direction (horizontal 1, vertical 0), as a table of pixel
columns in row-major order (``pixel_columns``: ``p00`` … ``p77`` for 8 × 8, the ``image-8x8-v1``
contract) plus ``label``. The label is learnable from local patterns only (a 3 × 3 filter sees a
bar's direction wherever the bar lies), not from any single pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

FEATURES = tuple(f"f{i}" for i in range(8))


@dataclass(frozen=True)
class SyntheticPeriod:
    """Where the generated files are, and what was planted in them (for the demo's narrative)."""

    contributions: dict[str, Path]  # owner -> CSV file
    validation: Path
    flipped_label_rows: dict[str, int]
    planted_duplicates: dict[str, int]
    planted_bad_rows: dict[str, int]


def _draw(rng: np.random.Generator, weights: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(0.0, 1.0, size=(n, len(FEATURES))).round(4)
    margin = x @ weights + rng.normal(0.0, 0.5, size=n)
    return x, (margin > 0).astype(np.int64)


def _write_csv(path: Path, x: np.ndarray, y: list[str]) -> Path:
    lines = [",".join((*FEATURES, "label"))]
    lines += [",".join([*(f"{v:.4f}" for v in row), label]) for row, label in zip(x, y, strict=True)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_period(
    out_dir: Path,
    *,
    seed: int = 7,
    clean_rows: int = 400,
    noisy_rows: int = 400,
    flip_fraction: float = 0.3,
    copied_rows: int = 240,
    own_rows: int = 60,
    validation_rows: int = 300,
) -> SyntheticPeriod:
    """Write the three contributors' CSV files and the validation file into ``out_dir``."""
    if not 0.0 <= flip_fraction <= 1.0:
        raise ValueError(f"flip_fraction must be within [0, 1], got {flip_fraction}")
    if copied_rows > clean_rows:
        raise ValueError(f"carol cannot copy {copied_rows} rows out of alice's {clean_rows}")
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    weights = rng.normal(0.0, 1.0, size=len(FEATURES))

    x_alice, y_alice = _draw(rng, weights, clean_rows)

    x_bob, y_bob = _draw(rng, weights, noisy_rows)
    flipped = rng.choice(noisy_rows, size=round(flip_fraction * noisy_rows), replace=False)
    y_bob[flipped] = 1 - y_bob[flipped]
    bob_labels = [str(v) for v in y_bob]
    # Rows that break the contract: a missing label and a feature far out of its range.
    x_bad, y_bad = _draw(rng, weights, 3)
    x_bad[1, 2] = 999.0
    bad_labels = ["", str(y_bad[1]), "7"]

    copies = rng.choice(clean_rows, size=copied_rows, replace=False)
    x_own, y_own = _draw(rng, weights, own_rows)
    x_carol = np.vstack([x_alice[copies], x_own])
    y_carol = np.concatenate([y_alice[copies], y_own])
    order = rng.permutation(len(x_carol))

    x_val, y_val = _draw(rng, weights, validation_rows)

    files = {
        "alice": _write_csv(out_dir / "alice.csv", x_alice, [str(v) for v in y_alice]),
        "bob": _write_csv(out_dir / "bob.csv", np.vstack([x_bob, x_bad]), bob_labels + bad_labels),
        "carol": _write_csv(out_dir / "carol.csv", x_carol[order], [str(v) for v in y_carol[order]]),
    }
    validation = _write_csv(out_dir / "validation.csv", x_val, [str(v) for v in y_val])
    return SyntheticPeriod(
        contributions=files,
        validation=validation,
        flipped_label_rows={"bob": len(flipped)},
        planted_duplicates={"carol": copied_rows},
        planted_bad_rows={"bob": len(bad_labels)},
    )


def pixel_columns(height: int = 8, width: int = 8) -> tuple[str, ...]:
    """Column names of a ``height`` × ``width`` image's pixels in row-major order: ``p{row}{column}``,
    each index zero-padded to the digits of the longer side (``p00`` … ``p77`` for 8 × 8)."""
    if min(height, width) < 1:
        raise ValueError(f"an image needs at least one row and one column, got {height} × {width}")
    digits = len(str(max(height, width) - 1))
    return tuple(f"p{r:0{digits}d}{c:0{digits}d}" for r in range(height) for c in range(width))


def bar_images(n: int, *, seed: int, height: int = 8, width: int = 8, noise: float = 0.25) -> pd.DataFrame:
    """``n`` grey-level images, pixels in ``[0, 1]`` rounded to 4 decimals, and a 0/1 ``label``.

    Each image is uniform noise in ``[0, noise]`` with one bright bar (intensity 0.6–1.0 added,
    clipped at 1) at a random row (``label`` 1, horizontal) or column (0, vertical), covering a
    random run of at least half that side. Labels are drawn with probability 1/2 each. A pure
    function of the arguments.
    """
    if n < 0 or min(height, width) < 2 or not 0.0 <= noise <= 1.0:
        raise ValueError(
            f"bar_images needs n >= 0, images of at least 2 × 2 and noise within [0, 1]; got n={n}, "
            f"{height} × {width}, noise={noise}"
        )
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, noise, size=(n, height, width))
    labels = rng.integers(0, 2, size=n)
    for image, horizontal in zip(images, labels.tolist(), strict=True):
        # A horizontal bar lies along a row: draw it in the transposed view of the image.
        view = image if horizontal else image.T
        side = view.shape[1]
        length = int(rng.integers(-(-side // 2), side + 1))
        start = int(rng.integers(0, side - length + 1))
        view[int(rng.integers(0, view.shape[0])), start : start + length] += rng.uniform(0.6, 1.0)
    pixels = np.clip(images, 0.0, 1.0).round(4).reshape(n, height * width)
    frame = pd.DataFrame(pixels, columns=list(pixel_columns(height, width)))
    frame["label"] = labels.astype(np.int64)
    return frame
