"""Model selection on the validation split: the evaluated round a tuning protocol may report, and its test accuracy.

The best test accuracy over rounds picks the round by looking at the test set, so it is an optimistic figure; the
round with the best validation accuracy is chosen without it, and its test accuracy is the honest one to quote."""

import math
from typing import Any


def validation_selected(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The round with the highest validation accuracy (the earliest on a tie) with its validation and test accuracy;
    None when the run held out no validation split (data.val_fraction = 0, every val_accuracy NaN)."""
    scored = [row for row in rows if not math.isnan(row["val_accuracy"])]
    if not scored:
        return None
    best = max(scored, key=lambda row: row["val_accuracy"])  # max keeps the first of equal values
    return {"round": int(best["round"]), "val_accuracy": best["val_accuracy"], "test_accuracy": best["test_accuracy"]}
