"""Surface materials (textures with tiling periods in metres) shared by every room of one building."""

from __future__ import annotations

import numpy as np

from datasets.synthetic import textures as T
from datasets.synthetic.raycast import Surface

_PASTELS = ["#e8e4d8", "#dfe6e9", "#f0e6d2", "#d9e4dd", "#e6dada", "#d6dce8", "#ece8e1"]


class Materials:
    """All surface materials of one building, created once (so identical furniture repeats exactly)."""

    def __init__(self, bank: T.TextureBank, rng: np.random.Generator) -> None:
        H = T.hexcol
        b = bank
        self.rng = rng
        self.white = Surface(b.add("paint_white", lambda: T.plain_texture(rng, H("#efeee9"), 0.015)), (2.0, 2.0))
        self.jamb = self.white
        cols = list(rng.permutation(_PASTELS))
        self.walls = [
            Surface(b.add("wall_plain0", lambda: T.plain_texture(rng, H(cols[0]), 0.02)), (2.0, 2.0)),
            Surface(b.add("wall_stripes", lambda: T.stripes_texture(rng, H(cols[1]), H("#b9c4c9"), 12)), (3.0, 3.0)),
            # 24 x 12 bricks of random tone per 2.7 m tile: repetitive, but not a 0.9 m grating
            Surface(b.add("wall_brick", lambda: T.brick_texture(rng, H("#9c5b44"), H("#cfc8bc"), 24, 12)),
                    (2.7, 2.7)),
            Surface(b.add("wall_plaster", lambda: T.noise_texture(rng, H(cols[2]), H("#b8b0a0"), 0.22)), (2.5, 2.5)),
            Surface(b.add("wall_plain1", lambda: T.plain_texture(rng, H(cols[3]), 0.03)), (2.0, 2.0)),
            Surface(b.add("wall_stripes2", lambda: T.stripes_texture(rng, H("#e9e1cf"), H(cols[4]), 16, True)),
                    (2.0, 2.0)),
        ]
        self.floors = [
            Surface(b.add("floor_tiles", lambda: T.tiles_texture(rng, H("#c9c3b6"), H("#6e6a63"), 4)), (2.0, 2.0)),
            Surface(b.add("floor_wood", lambda: T.wood_texture(rng, H("#a0703f"), H("#6b4423"), 8)), (1.6, 1.6)),
            Surface(b.add("floor_carpet", lambda: T.noise_texture(rng, H("#5d6b7a"), H("#2f3a45"), 0.35, 1.2)),
                    (1.0, 1.0)),
            Surface(b.add("floor_checker", lambda: T.tiles_texture(rng, H("#d8d4cc"), H("#8a847a"), 2, 0.02, 0.25)),
                    (1.2, 1.2)),
            Surface(b.add("floor_concrete", lambda: T.noise_texture(rng, H("#9a9a94"), H("#6c6c66"), 0.3)), (3.0, 3.0)),
        ]
        self.ceiling = Surface(b.add("ceiling_panels", lambda: T.tiles_texture(rng, H("#e4e4e0"), H("#a8a8a4"), 2,
                                                                                0.03, 0.02)), (1.2, 1.2))
        self.wood = Surface(b.add("wood", lambda: T.wood_texture(rng, H("#b78852"), H("#7a5230"), 5)), (1.0, 1.0))
        self.dark_wood = Surface(b.add("wood_dark", lambda: T.wood_texture(rng, H("#6a4a32"), H("#3b281b"), 7)),
                                 (0.8, 0.8))
        self.metal = Surface(b.add("metal", lambda: T.noise_texture(rng, H("#9aa0a6"), H("#6d7378"), 0.15, 3.0)),
                             (1.0, 1.0))
        self.laminate = Surface(b.add("laminate", lambda: T.noise_texture(rng, H("#e8e6e0"), H("#c9c6bd"), 0.2, 1.5)),
                                (1.0, 1.0))
        self.fabric = Surface(b.add("fabric", lambda: T.noise_texture(rng, H("#3d5a80"), H("#1d2d44"), 0.4, 0.8)),
                              (0.5, 0.5))
        self.black = Surface(b.add("plastic_black", lambda: T.noise_texture(rng, H("#2a2a2c"), H("#111113"), 0.2)),
                             (1.0, 1.0))
        self.book = Surface(b.add("book", lambda: T.stripes_texture(rng, H("#d0cfc8"), H("#8a8676"), 3, False)),
                            (0.3, 0.3))
        self.cardboard = Surface(b.add("cardboard", lambda: T.noise_texture(rng, H("#b48a5a"), H("#8c6a42"), 0.25)),
                                 (0.6, 0.6))
        self.leaves = Surface(b.add("leaves", lambda: T.noise_texture(rng, H("#4f8a3c"), H("#1f3f18"), 0.6, 1.0)),
                              (0.4, 0.4))
        self.lamp = Surface(b.add("lamp", lambda: T.plain_texture(rng, H("#ffffff"), 0.0)), None, (1.8, 1.8, 1.7))
        self.whiteboard = Surface(b.add("whiteboard", lambda: T.plain_texture(rng, H("#f4f6f6"), 0.01)), None)
        self.clothes = [Surface(b.add(f"clothes{i}", lambda c=c: T.noise_texture(rng, H(c), H("#202020"), 0.3, 1.0)),
                                (0.5, 0.5)) for i, c in enumerate(["#8b2f2f", "#2f5d8b", "#3f6b3f"])]
        self.skin = Surface(b.add("skin", lambda: T.noise_texture(rng, H("#d8a888"), H("#a87858"), 0.2)), (0.3, 0.3))
        self.posters = [Surface(b.add(f"poster{i}", lambda: T.poster_texture(rng)), None) for i in range(8)]
        self.photos: list[tuple[Surface, float]] = []
        for name in T.PHOTO_NAMES:
            img, aspect = T.load_photo(name, bank.size)
            self.photos.append((Surface(b.add(f"photo_{name}", lambda img=img: img), None), aspect))
        self.screen = self.photos[[n for n in T.PHOTO_NAMES].index("page")][0]
        self.book_tints = [tuple(float(v) for v in rng.uniform(0.25, 1.15, 3)) for _ in range(12)]
