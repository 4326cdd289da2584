"""Per-class object readout settings fit to the truth (training.readout_fit)."""
import numpy as np
import pytest

from vlm2_ros.model.object_memory import ObjectBox
from vlm2_ros.training.readout_fit import fit_readout, match_counts

CLASSES = ("room", "lamp", "bed")


def box(k: int, x: float, y: float) -> ObjectBox:
    return ObjectBox(k, (x, y, 0.5), (0.5, 0.5, 0.5))


def test_boxes_match_objects_one_to_one_within_the_radius():
    lamp = box(1, 1.0, 1.0)
    assert match_counts([box(1, 1.2, 1.0)], [lamp]) == (1, 0, 0)
    assert match_counts([box(1, 1.2, 1.0), box(1, 0.8, 1.0)], [lamp]) == (1, 1, 0)   # a second box is extra
    assert match_counts([box(1, 3.0, 1.0)], [lamp]) == (0, 1, 1)                     # 2 m off: not it
    assert match_counts([], [lamp]) == (0, 0, 1)
    # the nearest pairs first: each of two lamps gets the box beside it
    assert match_counts([box(1, 1.0, 1.0), box(1, 2.2, 1.0)], [lamp, box(1, 2.0, 1.0)]) == (2, 0, 0)


def readings(*tokens) -> np.ndarray:
    """[M, K+4] readings of (class, share, x, y, frame) tokens, the rest of each share the room's."""
    rows = np.zeros((len(tokens), len(CLASSES) + 4))
    for row, (k, share, x, y, frame) in zip(rows, tokens):
        row[k], row[0] = share, 1 - share
        row[len(CLASSES):] = (x, y, 0.5, frame)
    return rows


def test_each_class_gets_the_share_and_radius_that_find_its_objects_once():
    """A lamp's tokens show it at a share of 0.2; a bed's spread over 2.4 m; a stray label calls a
    wall a bed at 0.35. One threshold and radius (0.3, 1 m) miss the lamp, split the bed and keep
    the stray box; the fit takes 0.15 for the lamp, 0.5 and 3 m for the bed."""
    scene = readings((1, 0.2, 1.0, 1.0, 2), (1, 0.2, 1.1, 1.0, 3),
                     (2, 0.9, 4.0, 2.0, 5), (2, 0.9, 5.2, 2.0, 5), (2, 0.9, 6.4, 2.0, 6),
                     (2, 0.35, 8.0, 8.0, 7))
    truth = [box(0, 5.0, 5.0), box(1, 1.05, 1.0), box(2, 5.2, 2.0)]
    fit = fit_readout([(scene, truth)], CLASSES, current=((0.3,) * 3, (1.0,) * 3), shares=(0.15, 0.3, 0.5),
                      radii_m=(1.0, 3.0), progress=False)
    assert fit["object_readout"] == {"class_min_share": {"lamp": 0.15, "bed": 0.5},
                                     "class_merge_radius_m": {"lamp": 1.0, "bed": 3.0}}
    lamp, bed = fit["classes"]["lamp"], fit["classes"]["bed"]
    assert (lamp["matched"], lamp["extra"], lamp["missed"], lamp["f1"]) == (1, 0, 0, 1.0)
    assert (bed["matched"], bed["extra"], bed["missed"], bed["f1"]) == (1, 0, 0, 1.0)
    assert lamp["current"]["missed"] == 1 and bed["current"]["extra"] == 3          # two halves and the stray
    with pytest.raises(ValueError, match=r"\[M,7\]"):
        fit_readout([(scene[:, :5], truth)], CLASSES, progress=False)
    with pytest.raises(ValueError, match="no samples"):
        fit_readout([], CLASSES, progress=False)
