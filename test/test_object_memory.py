"""Perceived objects in the oracle's layout (model.object_memory)."""
import pytest
import torch

from vlm2_ros.model.object_memory import ROOM_CLASS, ObjectBox, object_tokens, perceive_objects

CLASSES = 4     # the room and three categories


def tokens_showing(category: int, share: float, points: list, frame: int):
    """Readings of tokens that each give `category` a share of `share` (the rest to the room)."""
    shares = torch.zeros(len(points), CLASSES)
    shares[:, category] = share
    shares[:, ROOM_CLASS] += 1 - share
    return shares, torch.tensor(points, dtype=torch.float32), torch.full((len(points),), frame)


def perceive(*groups, **kwargs):
    shares, points, frames = (torch.cat(parts) for parts in zip(*groups))
    return perceive_objects(shares, points, frames, **kwargs)


def test_tokens_of_one_category_group_by_place_into_boxes_in_the_order_first_seen():
    walls = tokens_showing(ROOM_CLASS, 1.0, [[0, 0, 0], [6, 4, 3], [3, 2, 0], [0, 4, 3]], frame=0)
    chair_a = tokens_showing(1, 0.9, [[1.0, 1.0, 0.4], [1.2, 1.0, 0.6]], frame=7)
    chair_b = tokens_showing(1, 0.8, [[4.0, 3.0, 0.5]], frame=3)      # 3.6 m from chair_a: another chair
    table = tokens_showing(2, 0.6, [[1.1, 1.1, 0.7]], frame=9)        # beside chair_a, another category
    faint = tokens_showing(3, 0.3, [[5.0, 1.0, 0.5]], frame=1)        # below min_share: nothing
    room, *objects = perceive(walls, chair_a, chair_b, table, faint, min_share=0.5, merge_radius_m=1.0,
                              room_quantile=0.0)
    assert room.semantic_class == ROOM_CLASS
    assert room.centre == pytest.approx((3.0, 2.0, 1.5)) and room.size == pytest.approx((6.0, 4.0, 3.0))
    assert [(o.semantic_class, o.first_seen) for o in objects] == [(1, 3), (1, 7), (2, 9)]
    chair = objects[1]
    assert chair.centre == pytest.approx((1.1, 1.0, 0.5), abs=1e-5)   # equal shares: the plain mean
    assert chair.size == pytest.approx((0.2, 0.1, 0.2), abs=1e-5)     # 2 std per axis, at least 0.1 m
    assert chair.support == pytest.approx(1.8)
    # a wider merge radius makes the two chairs one object, first seen at the earlier sighting
    room, *objects = perceive(walls, chair_a, chair_b, table, faint, merge_radius_m=5.0)
    assert [(o.semantic_class, o.first_seen) for o in objects] == [(1, 3), (2, 9)]
    # the faint one counts at a lower share; max_boxes keeps the best-supported objects beside the room
    room, *objects = perceive(walls, chair_a, chair_b, table, faint, min_share=0.25, max_boxes=3)
    assert [(o.semantic_class, o.first_seen) for o in objects] == [(1, 3), (1, 7)]


def test_peaks_make_one_box_of_an_object_spread_along_a_ray_and_none_of_a_stray_label():
    """An object whose tokens scatter 2.4 m along the viewing ray (the depth's error) is one
    peak where the greedy grouping splits it; two chairs 3 m apart stay two; a single token that
    calls a wall a lamp, where many others see the wall, makes no box."""
    along_ray = tokens_showing(1, 0.9, [[2.0 + 0.3 * i, 1.0, 0.5] for i in range(9)], frame=4)
    other_chair = tokens_showing(1, 0.9, [[2.5, 4.0, 0.5], [2.6, 4.1, 0.5]], frame=6)
    wall = tokens_showing(ROOM_CLASS, 1.0, [[6.0, 0.1 * i, 1.0] for i in range(20)], frame=2)
    stray = tokens_showing(3, 0.6, [[6.0, 1.0, 1.0]], frame=5)
    scene = (along_ray, other_chair, wall, stray)
    greedy = perceive(*scene, min_share=0.5, merge_radius_m=1.0)[1:]
    assert sum(o.semantic_class == 1 for o in greedy) == 3 and any(o.semantic_class == 3 for o in greedy)  # split
    room, *objects = perceive(*scene, min_share=0.5, merge_radius_m=1.0, grouping="peaks")
    assert [(o.semantic_class, o.first_seen) for o in objects] == [(1, 4), (1, 6)]
    assert objects[0].centre[0] == pytest.approx(3.2, abs=0.35)       # near the middle of the spread
    # the tokens within 1 m of the peak make the box (7 of the 9: the two ends are further)
    assert objects[0].support == pytest.approx(0.9 * 7) and objects[1].support == pytest.approx(1.8)
    with pytest.raises(ValueError, match="grouping"):
        perceive(*scene, grouping="nearest")


def test_a_perceived_memory_is_written_like_the_oracle_and_bad_input_is_named():
    boxes = [ObjectBox(ROOM_CLASS, (3.0, 2.0, 1.5), (6.0, 4.0, 3.0)), ObjectBox(2, (1.0, 1.0, 0.5), (0.4, 0.4, 1.0))]
    memory = object_tokens(boxes, CLASSES, tokens=5, dim=16, scale_m=2.0)
    assert memory.shape == (1, 5, 16)
    assert memory[0, 1, :CLASSES].tolist() == [0, 0, 1, 0]
    assert memory[0, 1, CLASSES:CLASSES + 6].tolist() == pytest.approx([0.5, 0.5, 0.25, 0.2, 0.2, 0.5])
    assert not memory[0, 2:].any() and not memory[..., CLASSES + 6:].any()
    with pytest.raises(ValueError, match="channels"):
        object_tokens(boxes, CLASSES, tokens=5, dim=CLASSES + 5, scale_m=2.0)
    with pytest.raises(ValueError, match="more than"):
        object_tokens(boxes, CLASSES, tokens=1, dim=16, scale_m=2.0)
    with pytest.raises(ValueError, match="must agree"):
        perceive_objects(torch.zeros(3, CLASSES), torch.zeros(2, 3), torch.zeros(3))


def test_the_order_channel_holds_each_objects_rank_by_first_sighting():
    # frames 40, 7, 7, 900: ranks over the three distinct sightings; the room 0; a long run's
    # frame indices do not stretch the channel
    boxes = [ObjectBox(ROOM_CLASS, (3.0, 2.0, 1.5), (6.0, 4.0, 3.0)),
             ObjectBox(1, (1.0, 1.0, 0.5), (0.4, 0.4, 1.0), first_seen=40),
             ObjectBox(2, (2.0, 1.0, 0.5), (0.4, 0.4, 1.0), first_seen=7),
             ObjectBox(3, (3.0, 1.0, 0.5), (0.4, 0.4, 1.0), first_seen=7),
             ObjectBox(1, (4.0, 1.0, 0.5), (0.4, 0.4, 1.0), first_seen=900)]
    plain = object_tokens(boxes, CLASSES, tokens=6, dim=16, scale_m=2.0)
    ordered = object_tokens(boxes, CLASSES, tokens=6, dim=16, scale_m=2.0, order_channel=True)
    order = CLASSES + 6
    assert ordered[0, :, order].tolist() == [0.0, 0.5, 0.0, 0.0, 1.0, 0.0]
    # the channel is the only change, and without it the shipped layout is unchanged
    assert torch.equal(ordered[..., :order], plain[..., :order]) and not plain[..., order:].any()
    assert not ordered[..., order + 1:].any()
    one = object_tokens(boxes[:2], CLASSES, tokens=2, dim=16, scale_m=2.0, order_channel=True)
    assert one[0, :, order].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match=f"needs {CLASSES + 7} channels"):
        object_tokens(boxes, CLASSES, tokens=6, dim=CLASSES + 6, scale_m=2.0, order_channel=True)


def test_per_class_settings_find_a_small_object_and_keep_a_large_one_whole():
    """A lamp never fills half a patch; a bed's tokens spread over 2.4 m. One threshold and radius
    miss the lamp or split the bed; a value per class (room, chair, lamp, bed) does neither."""
    lamp = tokens_showing(2, 0.2, [[1.0, 1.0, 1.2], [1.1, 1.0, 1.3]], frame=2)
    bed = tokens_showing(3, 0.9, [[4.0, 2.0, 0.4], [5.2, 2.0, 0.4], [6.4, 2.0, 0.4]], frame=5)
    one_value = perceive(lamp, bed, min_share=0.3, merge_radius_m=1.0)[1:]
    assert [o.semantic_class for o in one_value] == [3, 3, 3]
    per_class = perceive(lamp, bed, min_share=[0.5, 0.5, 0.15, 0.5], merge_radius_m=[1.0, 1.0, 1.0, 3.0])[1:]
    assert [(o.semantic_class, o.first_seen) for o in per_class] == [(2, 2), (3, 5)]
    with pytest.raises(ValueError, match="one per class"):
        perceive(lamp, bed, min_share=[0.5, 0.5])
