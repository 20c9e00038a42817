"""The drawing room (``common.draw``): each primitive draws where it should and nowhere else, and nothing
a caller can hand it (a box out of the frame, turned inside out, not a number) raises."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import numpy.typing as npt
import pytest

from common.draw import BLACK, WHITE, draw_box, draw_label, draw_line, draw_zones, in_pixels, text_colour_for

GREY = 100
RED = (0, 0, 255)
GREEN = (0, 220, 0)


def canvas(height: int = 240, width: int = 320) -> npt.NDArray[np.uint8]:
    return np.full((height, width, 3), GREY, np.uint8)


def changed(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    return (image != GREY).any(axis=2)  # type: ignore[no-any-return]


def is_colour(pixel: npt.NDArray[np.uint8], colour: tuple[int, int, int]) -> bool:
    return bool((pixel.astype(int) == colour).all())


def test_in_pixels_scales_x_by_width_and_y_by_height() -> None:
    assert in_pixels((0.5, 0.25), 320, 240) == (160.0, 60.0)
    assert in_pixels((0.1, 0.2, 0.3, 0.4), 100, 50) == pytest.approx((10.0, 10.0, 30.0, 20.0))


def test_text_colour_reads_on_its_background() -> None:
    assert text_colour_for(RED) == WHITE
    assert text_colour_for(GREEN) == BLACK
    assert text_colour_for(BLACK) == WHITE
    assert text_colour_for(WHITE) == BLACK


def test_a_box_changes_its_edge_only() -> None:
    image = canvas()
    draw_box(image, (100, 80, 200, 160), GREEN, thickness=2)
    assert is_colour(image[80, 150], GREEN) and is_colour(image[160, 150], GREEN)  # top and bottom edges
    assert is_colour(image[120, 100], GREEN) and is_colour(image[120, 200], GREEN)  # left and right edges
    assert not changed(image)[85:156, 105:196].any()  # the inside is untouched
    drawn = np.argwhere(changed(image))
    assert drawn[:, 0].min() >= 78 and drawn[:, 0].max() <= 162  # nothing outside the edge's thickness
    assert drawn[:, 1].min() >= 98 and drawn[:, 1].max() <= 202


def test_a_boxs_label_sits_on_a_filled_background_above_it() -> None:
    image = canvas()
    draw_box(image, (100.4, 80.2, 200.0, 160.0), RED, thickness=2, label="person #3", scale=0.5)
    rows, cols = np.nonzero(changed(image)[:79])  # above the box's top edge (y 80): the label only
    assert rows.min() >= 50 and rows.max() == 78, "on the box's top edge, a line of text high"
    assert cols.min() == 100 and 150 < cols.max() < 195, "from the box's left edge, as wide as the text"
    label = image[rows.min() : 79, 100 : cols.max() + 1]
    assert (label == RED).all(axis=2).mean() > 0.6, "a filled background"
    text = np.all(label > 200, axis=2)  # white on red: black would not read
    assert text.sum() > 30, "the text, in white"
    assert text[-2:].sum() == 0 and text[:2].sum() == 0, "the text (descenders too) inside its background"


def test_a_label_alone_is_text_on_its_background_and_kept_inside_the_top_and_left() -> None:
    image = canvas()
    draw_label(image, "people: 17", (-30, 5), BLACK, text_colour=WHITE, scale=1.0, thickness=2)
    drawn = np.argwhere(changed(image))
    assert drawn[:, 0].min() == 0 and drawn[:, 1].min() == 0  # moved in, not cut off
    assert (image[drawn[:, 0], drawn[:, 1]] == 0).all(axis=1).sum() > 0.5 * len(drawn)  # mostly the background
    assert ((image > 200).all(axis=2)).sum() > 50  # and white text on it
    assert drawn[:, 0].max() < 60 and drawn[:, 1].max() < 250


def test_a_zone_is_tinted_inside_and_outlined() -> None:
    image = canvas()
    square = [(50.0, 50.0), (150.0, 50.0), (150.0, 150.0), (50.0, 150.0)]
    colour = (60, 180, 255)
    draw_zones(image, [square], colour, alpha=0.25, thickness=2)
    inside = image[100, 100].astype(float)
    assert np.abs(inside - (0.25 * np.array(colour) + 0.75 * GREY)).max() <= 1  # lightly: the picture shows
    assert is_colour(image[50, 100], colour)  # the outline, in full
    assert not changed(image)[155:].any() and not changed(image)[:, 155:].any()  # outside untouched
    assert not changed(image)[:45].any() and not changed(image)[:, :45].any()


def test_overlapping_zones_are_tinted_once() -> None:
    image = canvas()
    left = [(20, 20), (120, 20), (120, 120), (20, 120)]
    right = [(80, 20), (180, 20), (180, 120), (80, 120)]
    draw_zones(image, [left, right], WHITE, alpha=0.5, thickness=1)
    assert is_colour(image[70, 50], image[70, 100]) and is_colour(image[70, 150], image[70, 100])


@pytest.mark.parametrize(("side", "below"), [("right", True), ("left", False)])
def test_a_line_with_its_arrow_to_the_in_side(side: Literal["left", "right"], below: bool) -> None:
    image = canvas()
    colour = (255, 200, 0)
    draw_line(image, (20, 120), (300, 120), colour, thickness=3, in_side=side, arrow_length=40)
    assert is_colour(image[120, 40], colour) and is_colour(image[120, 280], colour)
    arrow_below, arrow_above = bool(changed(image)[125:170, 150:170].any()), bool(changed(image)[70:115, 150:170].any())
    # walking from left to right with y down, the right-hand side is below the line
    assert (arrow_below, arrow_above) == (below, not below)
    assert not changed(image)[:60].any() and not changed(image)[180:].any()  # 40 px long, no more


def test_a_line_without_in_side_has_no_arrow() -> None:
    image = canvas()
    draw_line(image, (20, 120), (300, 120), GREEN, thickness=3)
    assert not changed(image)[:115].any() and not changed(image)[125:].any()


@pytest.mark.parametrize(
    "box",
    [
        (400.0, 300.0, 500.0, 400.0),  # wholly outside
        (-50.0, -50.0, -10.0, -10.0),
        (100.0, 100.0, 100.0, 100.0),  # a point
        (200.0, 150.0, 100.0, 50.0),  # corners swapped
        (-1e12, -1e12, 1e12, 1e12),  # past what OpenCV takes
        (math.nan, 0.0, 10.0, 10.0),
        (0.0, math.inf, 10.0, 10.0),
    ],
)
def test_a_degenerate_or_outside_box_does_not_raise(box: tuple[float, float, float, float]) -> None:
    image = canvas()
    draw_box(image, box, GREEN, thickness=2, label="far away")  # wholly outside: no label either
    draw_line(image, box[:2], box[2:], GREEN, in_side="left")
    draw_line(image, box[:2], box[:2], GREEN, in_side="right")  # no length: no arrow
    draw_zones(image, [[box[:2], box[2:], (box[0], box[3])]], GREEN)
    draw_zones(image, [], GREEN)
    if box[0] >= 320 or box[2] < 0:  # outside the frame: nothing to see
        assert not changed(image).any()
    draw_label(image, "", box[:2], GREEN)


def test_a_box_half_out_of_the_frame_draws_the_part_inside() -> None:
    image = canvas()
    draw_box(image, (250, -40, 400, 100), GREEN, thickness=2, label="half")
    assert is_colour(image[100, 300], GREEN)  # the bottom edge, inside
    assert changed(image)[:20, 250:].any()  # the label moved down into the picture
    assert not changed(image)[:, :245].any()
