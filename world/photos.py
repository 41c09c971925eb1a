"""Procedural photos of the demo world's sales, one scene per latent theme.

Each theme is a visibly different scene (sea and sand, a pool with tiles, snowy slopes,
a skyline, fields, a spa interior, rocky peaks, a forest) with randomised composition and
colour, so an image model can tell the themes apart only by looking.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

SIZE = 160


def _jitter(rng, colour, amount=25):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _sky(draw, rng, horizon, top=(90, 150, 225), bottom=(190, 220, 250)):
    top, bottom = _jitter(rng, top), _jitter(rng, bottom)
    for y in range(horizon):
        t = y / max(horizon - 1, 1)
        draw.line([(0, y), (SIZE, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom)))


def _beach(draw, rng):
    horizon = int(rng.integers(40, 80))
    _sky(draw, rng, horizon)
    shore = horizon + int(rng.integers(25, 50))
    draw.rectangle([0, horizon, SIZE, shore], fill=_jitter(rng, (20, 110, 170)))
    draw.polygon([(0, shore), (SIZE, shore - int(rng.integers(-10, 10))), (SIZE, SIZE), (0, SIZE)],
                 fill=_jitter(rng, (225, 200, 140)))
    for _ in range(int(rng.integers(2, 6))):  # waves
        y = int(rng.integers(horizon + 3, shore - 2))
        x = int(rng.integers(0, SIZE - 30))
        draw.line([(x, y), (x + int(rng.integers(15, 40)), y)], fill=(235, 245, 250), width=1)


def _pool(draw, rng):
    draw.rectangle([0, 0, SIZE, SIZE], fill=_jitter(rng, (215, 205, 190)))
    for x in range(0, SIZE, 16):  # deck tiles
        draw.line([(x, 0), (x, SIZE)], fill=(180, 170, 160))
    x0, y0 = int(rng.integers(10, 40)), int(rng.integers(20, 60))
    x1, y1 = SIZE - int(rng.integers(10, 40)), SIZE - int(rng.integers(10, 30))
    draw.rounded_rectangle([x0, y0, x1, y1], radius=int(rng.integers(2, 20)), fill=_jitter(rng, (60, 200, 220)))
    for _ in range(6):
        y = int(rng.integers(y0 + 4, y1 - 4))
        draw.line([(x0 + 4, y), (x1 - 4, y + int(rng.integers(-3, 4)))], fill=(150, 235, 245))


def _ski(draw, rng):
    horizon = int(rng.integers(30, 70))
    _sky(draw, rng, SIZE, top=(70, 120, 210), bottom=(200, 225, 250))
    for _ in range(int(rng.integers(2, 4))):
        peak = int(rng.integers(0, SIZE))
        draw.polygon([(peak - 90, SIZE), (peak, horizon + int(rng.integers(-20, 20))), (peak + 90, SIZE)],
                     fill=_jitter(rng, (245, 248, 252), 8), outline=(200, 210, 225))
    for _ in range(int(rng.integers(3, 8))):  # pines and skiers
        x, y = int(rng.integers(0, SIZE)), int(rng.integers(horizon + 30, SIZE))
        draw.polygon([(x, y - 12), (x - 5, y), (x + 5, y)], fill=(30, 70, 40))


def _city(draw, rng):
    horizon = SIZE
    _sky(draw, rng, horizon, top=(120, 140, 180), bottom=(220, 190, 170))
    x = 0
    while x < SIZE:
        width, height = int(rng.integers(14, 34)), int(rng.integers(50, 140))
        colour = _jitter(rng, (95, 100, 110), 35)
        draw.rectangle([x, SIZE - height, x + width, SIZE], fill=colour)
        for wy in range(SIZE - height + 5, SIZE - 5, 8):
            for wx in range(x + 3, x + width - 3, 6):
                if rng.random() < 0.6:
                    draw.rectangle([wx, wy, wx + 2, wy + 3], fill=(250, 230, 150))
        x += width + int(rng.integers(0, 4))


def _countryside(draw, rng):
    horizon = int(rng.integers(40, 80))
    _sky(draw, rng, SIZE)
    for i in range(4):
        y = horizon + i * int(rng.integers(12, 25))
        draw.ellipse([-60 + int(rng.integers(-30, 30)), y, SIZE + 60, y + 120],
                     fill=_jitter(rng, (110 + 20 * i, 160, 60), 30))
    for _ in range(int(rng.integers(4, 10))):  # hay bales, hedges
        x, y = int(rng.integers(0, SIZE)), int(rng.integers(horizon + 20, SIZE))
        draw.ellipse([x, y, x + 8, y + 6], fill=(200, 170, 80))


def _spa(draw, rng):
    draw.rectangle([0, 0, SIZE, SIZE], fill=_jitter(rng, (200, 170, 140)))
    draw.rectangle([0, int(SIZE * 0.65), SIZE, SIZE], fill=_jitter(rng, (120, 85, 60)))
    for _ in range(int(rng.integers(3, 7))):  # smooth stones and candles
        x, y, r = int(rng.integers(10, SIZE - 10)), int(rng.integers(SIZE * 0.6, SIZE - 10)), int(rng.integers(6, 16))
        draw.ellipse([x - r, y - r // 2, x + r, y + r // 2], fill=_jitter(rng, (60, 60, 65), 15))
    for _ in range(int(rng.integers(2, 5))):
        x, y = int(rng.integers(10, SIZE - 10)), int(rng.integers(SIZE * 0.5, SIZE * 0.7))
        draw.rectangle([x - 3, y - 12, x + 3, y], fill=(245, 240, 225))
        draw.ellipse([x - 2, y - 18, x + 2, y - 12], fill=(255, 190, 60))


def _mountains(draw, rng):
    _sky(draw, rng, SIZE, top=(100, 150, 210), bottom=(210, 225, 240))
    for i in range(3):
        base = SIZE - i * 10
        peak_x, peak_y = int(rng.integers(20, SIZE - 20)), int(rng.integers(15 + 20 * i, 60 + 20 * i))
        draw.polygon([(peak_x - 110, base), (peak_x, peak_y), (peak_x + 110, base)],
                     fill=_jitter(rng, (120 - 20 * i, 105 - 15 * i, 95 - 10 * i), 20))
        draw.polygon([(peak_x - 12, peak_y + 12), (peak_x, peak_y), (peak_x + 12, peak_y + 12)],
                     fill=(240, 240, 245))


def _forest(draw, rng):
    _sky(draw, rng, 40, top=(150, 180, 200), bottom=(190, 210, 200))
    draw.rectangle([0, 40, SIZE, SIZE], fill=_jitter(rng, (40, 80, 35)))
    for _ in range(int(rng.integers(25, 45))):
        x, y = int(rng.integers(-10, SIZE + 10)), int(rng.integers(30, SIZE + 20))
        h = int(rng.integers(25, 60))
        draw.rectangle([x - 2, y - 5, x + 2, y + 6], fill=(80, 55, 30))
        draw.polygon([(x, y - h), (x - h // 3, y), (x + h // 3, y)], fill=_jitter(rng, (25, 95, 40), 20))


SCENES = {"beach": _beach, "pool": _pool, "ski": _ski, "city": _city, "countryside": _countryside,
          "spa": _spa, "mountains": _mountains, "forest": _forest}


def render(theme: str, rng: np.random.Generator) -> Image.Image:
    """A random photo of a ``theme`` scene."""
    image = Image.new("RGB", (SIZE, SIZE))
    SCENES[theme](ImageDraw.Draw(image), rng)
    return image
