"""Procedural synthetic faces: the pipeline's embedded default dataset (no downloads, no real people).

Identity is drawn once per person from a seeded RNG: face shape, eye/brow/nose/mouth geometry, iris,
skin and hair colour, hairstyle, fixed moles/freckles/blotches, shifted by the recorded sensitive
attributes `sex` and `skin`. Each image re-draws what a model must ignore: pose, scale, position,
lighting, expression, background, clothing, noise and occasional occluders.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

SEXES = ("female", "male")
SKINS = ("light", "medium", "dark")
SUPERSAMPLE = 4  # draw at 4x, then LANCZOS-downsample: cheap anti-aliasing

# Seed-stream tags: SeedSequence pads short entropy with zeros, so identity and image streams
# get distinct tags to never collide ([seed, k, 0] vs [seed, k, 1, j]).
_IDENTITY_STREAM = 0
_IMAGE_STREAM = 1

Color = tuple[float, float, float]

# (lightest, darkest) skin tone per `skin` class; an identity picks a point between them.
_SKIN_RANGES: dict[str, tuple[Color, Color]] = {
    "light": ((246, 214, 190), (222, 176, 146)),
    "medium": ((204, 156, 116), (168, 118, 82)),
    "dark": ((132, 88, 60), (78, 50, 34)),
}
_HAIR_COLORS: dict[str, Color] = {
    "black": (22, 18, 16), "dark_brown": (58, 38, 26), "brown": (104, 70, 44),
    "blonde": (210, 172, 108), "auburn": (148, 66, 32), "grey": (168, 164, 158),
}
_IRIS_COLORS: dict[str, Color] = {
    "dark_brown": (48, 28, 18), "brown": (92, 56, 30), "hazel": (128, 98, 48),
    "green": (74, 118, 68), "blue": (74, 116, 170), "grey": (118, 128, 140),
}
_HAIR_COLOR_WEIGHTS = {  # per skin class, in _HAIR_COLORS order
    "light": (0.12, 0.26, 0.24, 0.22, 0.10, 0.06),
    "medium": (0.40, 0.34, 0.16, 0.03, 0.03, 0.04),
    "dark": (0.72, 0.20, 0.02, 0.00, 0.00, 0.06),
}
_IRIS_COLOR_WEIGHTS = {  # per skin class, in _IRIS_COLORS order
    "light": (0.10, 0.22, 0.16, 0.16, 0.26, 0.10),
    "medium": (0.40, 0.38, 0.12, 0.06, 0.02, 0.02),
    "dark": (0.70, 0.26, 0.04, 0.00, 0.00, 0.00),
}
_HAIR_STYLE_WEIGHTS = {  # in (buzz, short, medium, long) order
    "female": (0.00, 0.15, 0.35, 0.50),
    "male": (0.20, 0.60, 0.15, 0.05),
}
_HAIR_STYLES = ("buzz", "short", "medium", "long")
_OCCLUDERS = ("sunglasses", "hand", "hat", "scarf")


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate; (seed, identity index, image index) alone decide every pixel."""

    identities: int = 300
    images_per_identity: int = 12
    size: int = 64  # output image side in px, RGB
    seed: int = 0
    occluder_prob: float = 0.1

    def __post_init__(self):
        if self.identities < 1 or self.images_per_identity < 1:
            raise ValueError("identities and images_per_identity must be >= 1")
        if self.size < 16:
            raise ValueError(f"size must be >= 16 px, got {self.size}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 0.0 <= self.occluder_prob <= 1.0:
            raise ValueError(f"occluder_prob must be in [0, 1], got {self.occluder_prob}")


@dataclass(frozen=True)
class Mark:
    """A fixed skin mark (mole, freckle or blotch) at a face-relative position."""

    u: float
    v: float
    radius: float
    color: Color
    alpha: int


@dataclass(frozen=True)
class Identity:
    """Everything that stays fixed across one person's images. Lengths are in face units:
    u (horizontal) and v (vertical, down) span -1..1 over the face's half-width/half-height."""

    sex: str
    skin: str
    skin_color: Color
    width: float  # face half-width, relative to a reference face
    height: float
    jaw: float  # jaw width at the chin line relative to the cheeks
    chin: float  # how far the chin reaches below the face centre
    eye_v: float
    eye_dx: float
    eye_w: float
    eye_aspect: float
    iris_color: Color
    brow_gap: float
    brow_thickness: float
    brow_angle: float  # degrees, positive = outer end up
    brow_color: Color
    nose_len: float
    nose_w: float
    mouth_gap: float  # from nose tip down to mouth
    mouth_w: float
    lip_thickness: float
    lip_color: Color
    hair_color: Color
    hair_style: str
    hairline: float
    hair_part: float  # horizontal shift of the hairline arc
    fringe: bool
    beard: str  # "", "stubble", "moustache" or "full"
    marks: tuple[Mark, ...]


@dataclass(frozen=True)
class Shot:
    """Everything that changes from one image of a person to the next."""

    roll: float  # degrees, in-plane rotation
    yaw: float  # -1..1 scaled: squashes the face and shifts features sideways
    scale: float
    dx: float  # translation in output pixels
    dy: float
    smile: float
    mouth_open: float
    eye_open: float
    brow_raise: float
    bg_top: Color
    bg_bottom: Color
    clothes: Color
    light_angle: float
    light_strength: float
    brightness: float
    contrast: float
    tint: Color
    noise_sigma: float
    occluder: str  # "" or one of _OCCLUDERS
    occluder_color: Color
    occluder_u: float
    occluder_v: float
    hand_skin: str


# --------------------------------------------------------------------------- sampling


def _mix(a: Color, b: Color, t: float) -> Color:
    return tuple(x + (y - x) * t for x, y in zip(a, b))


def _jitter(rng: np.random.Generator, color: Color, amount: float) -> Color:
    return tuple(float(c) for c in np.clip(np.asarray(color) + rng.normal(0, amount, 3), 0, 255))


def _pick(rng: np.random.Generator, names, weights) -> str:
    p = np.asarray(weights, dtype=float)
    return str(names[rng.choice(len(names), p=p / p.sum())])


def _sample_marks(rng: np.random.Generator, skin: str, skin_color: Color) -> tuple[Mark, ...]:
    """A few moles, freckles (light skin, some identities) and low-contrast blotches."""
    marks = []
    mole_color = _mix(skin_color, (60, 35, 25), 0.6)
    for _ in range(rng.integers(1, 5)):
        u, v = rng.uniform(-0.7, 0.7), rng.uniform(-0.35, 0.8)
        marks.append(Mark(u, v, rng.uniform(0.035, 0.06), mole_color, 230))
    if skin == "light" and rng.random() < 0.35:
        freckle_color = _mix(skin_color, (150, 85, 50), 0.5)
        for _ in range(rng.integers(8, 16)):
            u, v = rng.uniform(-0.6, 0.6), rng.uniform(0.0, 0.35)
            marks.append(Mark(u, v, rng.uniform(0.02, 0.035), freckle_color, 170))
    for _ in range(rng.integers(1, 4)):
        u, v = rng.uniform(-0.55, 0.55), rng.uniform(-0.3, 0.6)
        tone = _mix(skin_color, (170, 60, 60) if rng.random() < 0.5 else (60, 40, 30), 0.35)
        marks.append(Mark(u, v, rng.uniform(0.14, 0.3), tone, int(rng.integers(60, 110))))
    return tuple(marks)


def _sample_beard(rng: np.random.Generator, sex: str) -> str:
    if sex != "male" or rng.random() > 0.4:
        return ""
    return _pick(rng, ("stubble", "moustache", "full"), (0.45, 0.2, 0.35))


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw one person. `sex` and `skin` come first and shift the geometry and colour draws."""
    sex = SEXES[int(rng.integers(2))]
    skin = SKINS[int(rng.integers(3))]
    male = sex == "male"
    skin_color = _jitter(rng, _mix(*_SKIN_RANGES[skin], rng.uniform()), 4)
    hair_color = _jitter(rng, _HAIR_COLORS[_pick(rng, list(_HAIR_COLORS), _HAIR_COLOR_WEIGHTS[skin])], 8)
    iris_color = _jitter(rng, _IRIS_COLORS[_pick(rng, list(_IRIS_COLORS), _IRIS_COLOR_WEIGHTS[skin])], 8)
    lip_red = rng.uniform(0.45, 0.7) if not male else rng.uniform(0.2, 0.4)
    hair_style = _pick(rng, _HAIR_STYLES, _HAIR_STYLE_WEIGHTS[sex])
    return Identity(
        sex=sex,
        skin=skin,
        skin_color=skin_color,
        width=rng.uniform(0.86, 1.08) + (0.04 if male else 0.0),
        height=rng.uniform(0.88, 1.08),
        jaw=rng.uniform(0.74, 0.95) if male else rng.uniform(0.55, 0.78),
        chin=rng.uniform(0.95, 1.1),
        eye_v=rng.uniform(-0.16, 0.0),
        eye_dx=rng.uniform(0.32, 0.46),
        eye_w=rng.uniform(0.12, 0.19),
        eye_aspect=rng.uniform(0.4, 0.62),
        iris_color=iris_color,
        brow_gap=rng.uniform(0.14, 0.26),
        brow_thickness=rng.uniform(0.055, 0.09) if male else rng.uniform(0.03, 0.055),
        brow_angle=rng.uniform(-12, 16),
        brow_color=_mix(hair_color, (20, 15, 12), 0.35),
        nose_len=rng.uniform(0.26, 0.44),
        nose_w=rng.uniform(0.1, 0.2) + (0.02 if male else 0.0),
        mouth_gap=rng.uniform(0.15, 0.26),
        mouth_w=rng.uniform(0.26, 0.44),
        lip_thickness=rng.uniform(0.03, 0.06) + (0.0 if male else 0.015),
        lip_color=_mix(skin_color, (185, 55, 70), lip_red),
        hair_color=hair_color,
        hair_style=hair_style,
        hairline=rng.uniform(-0.72, -0.42) - (0.1 if male and rng.random() < 0.25 else 0.0),
        hair_part=rng.uniform(-0.3, 0.3),
        fringe=bool(hair_style != "buzz" and rng.random() < (0.45 if not male else 0.2)),
        beard=_sample_beard(rng, sex),
        marks=_sample_marks(rng, skin, skin_color),
    )


def _random_color(rng: np.random.Generator, low: float = 20, high: float = 235) -> Color:
    return tuple(float(c) for c in rng.uniform(low, high, 3))


def sample_shot(rng: np.random.Generator, occluder_prob: float) -> Shot:
    """Draw the nuisances of one image: pose, lighting, expression, scene, noise, occluder."""
    bg_base = _mix(_random_color(rng, 30, 225), (128, 128, 128), 0.6)
    # Always draw the occluder kind, so occluder_prob changes nothing else in the image.
    occluded = rng.random() < occluder_prob
    occluder = _OCCLUDERS[int(rng.integers(len(_OCCLUDERS)))]
    return Shot(
        roll=float(np.clip(rng.normal(0, 6), -12, 12)),
        yaw=float(np.clip(rng.normal(0, 0.12), -0.25, 0.25)),
        scale=rng.uniform(0.9, 1.1),
        dx=rng.uniform(-3, 3),
        dy=rng.uniform(-3, 3),
        smile=rng.uniform(-0.04, 0.12),
        mouth_open=rng.uniform(0.02, 0.09) if rng.random() < 0.3 else 0.0,
        eye_open=0.15 if rng.random() < 0.05 else rng.uniform(0.6, 1.1),
        brow_raise=rng.uniform(-0.03, 0.07),
        bg_top=bg_base,
        bg_bottom=_jitter(rng, bg_base, 25),
        clothes=_random_color(rng),
        light_angle=rng.uniform(0, 2 * math.pi),
        light_strength=rng.uniform(0.0, 0.4),
        brightness=rng.uniform(0.85, 1.15),
        contrast=rng.uniform(0.8, 1.1),
        tint=tuple(float(t) for t in rng.uniform(0.93, 1.07, 3)),
        noise_sigma=rng.uniform(2.0, 7.0),
        occluder=occluder if occluded else "",
        occluder_color=_random_color(rng),
        occluder_u=rng.uniform(-0.5, 0.5),
        occluder_v=rng.uniform(0.2, 0.7),
        hand_skin=SKINS[int(rng.integers(len(SKINS)))],
    )


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class FaceFrame:
    """Maps face units (u, v, depth) to canvas pixels under one shot's pose. Depth says how far a
    feature sticks out of the face plane, so yaw shifts the nose more than the eyes."""

    cx: float
    cy: float
    half_w: float
    half_h: float
    cos: float
    sin: float
    yaw: float

    @classmethod
    def for_shot(cls, ident: Identity, shot: Shot, canvas: int) -> FaceFrame:
        rad = math.radians(shot.roll)
        s = shot.scale * canvas
        return cls(
            cx=canvas * 0.5 + shot.dx * SUPERSAMPLE,
            cy=canvas * 0.54 + shot.dy * SUPERSAMPLE,
            half_w=0.25 * s * ident.width,
            half_h=0.33 * s * ident.height,
            cos=math.cos(rad),
            sin=math.sin(rad),
            yaw=shot.yaw,
        )

    def points(self, u, v, depth: float = 0.0) -> list[tuple[float, float]]:
        u, v = np.asarray(u, dtype=float), np.asarray(v, dtype=float)
        x = (u * (1 - 0.5 * abs(self.yaw)) + self.yaw * depth) * self.half_w
        y = v * self.half_h
        xs = self.cx + x * self.cos - y * self.sin
        ys = self.cy + x * self.sin + y * self.cos
        return list(zip(xs.tolist(), ys.tolist()))

    def ellipse(self, u: float, v: float, ru: float, rv: float, depth: float = 0.0, n: int = 24):
        """An ellipse in face units as a polygon, so it rotates with the head."""
        t = np.linspace(0, 2 * math.pi, n, endpoint=False)
        return self.points(u + ru * np.cos(t), v + rv * np.sin(t), depth)

    def stroke(self, length: float) -> int:
        """A face-unit line width (measured along u) in whole canvas pixels, at least 1."""
        return max(1, int(length * self.half_w))


def _face_outline(ident: Identity, n: int = 56) -> tuple[np.ndarray, np.ndarray]:
    """Head outline in face units: round cranium, tapering to the jaw and chin below the centre."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    u, v = np.cos(t), np.sin(t)
    lower = v > 0
    taper = 1 - (1 - ident.jaw) * v[lower] ** 2
    u[lower] *= taper
    v[lower] *= ident.chin
    return u, v


# --------------------------------------------------------------------------- drawing


def _rgba(color: Color, alpha: int = 255) -> tuple[int, int, int, int]:
    return (*(int(round(c)) for c in color), alpha)


def _draw_background(shot: Shot, canvas: int) -> Image.Image:
    t = np.linspace(0.0, 1.0, canvas, dtype=np.float32)[:, None, None]
    top, bottom = np.asarray(shot.bg_top, np.float32), np.asarray(shot.bg_bottom, np.float32)
    rows = top + (bottom - top) * t  # canvas x 1 x 3
    img = np.broadcast_to(rows, (canvas, canvas, 3)).astype(np.uint8)
    return Image.fromarray(img, "RGB")


def _shade(color: Color, amount: float) -> Color:
    return _mix(color, (0, 0, 0), amount)


def _band(u: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed outline between two curves sampled at the same u (top left-to-right, bottom back)."""
    return np.concatenate([u, u[::-1]]), np.concatenate([top, bottom[::-1]])


def _draw_back_hair(d: ImageDraw.ImageDraw, f: FaceFrame, ident: Identity):
    """Hair behind the head for styles that reach the jaw or the shoulders."""
    if ident.hair_style not in ("medium", "long"):
        return
    color = _rgba(ident.hair_color)
    bottom, spread = (0.75, 1.2) if ident.hair_style == "medium" else (1.6, 1.3)
    d.polygon(f.ellipse(0, -0.12, spread, 1.0), fill=color)
    us = [-spread, spread, spread * 1.05, -spread * 1.05]
    d.polygon(f.points(us, [-0.1, -0.1, bottom, bottom]), fill=color)


def _draw_body(d: ImageDraw.ImageDraw, f: FaceFrame, ident: Identity, shot: Shot):
    neck = f.points([-0.38, 0.38, 0.42, -0.42], [0.6, 0.6, 1.5, 1.5])
    d.polygon(neck, fill=_rgba(_shade(ident.skin_color, 0.18)))
    shoulders = f.points([-0.45, 0.45, 2.4, 2.4, -2.4, -2.4], [1.3, 1.3, 1.75, 3.0, 3.0, 1.75])
    d.polygon(shoulders, fill=_rgba(shot.clothes))


def _draw_ears(d: ImageDraw.ImageDraw, f: FaceFrame, ident: Identity):
    if ident.hair_style == "long":
        return
    for side in (-1, 1):
        if side * f.yaw < -0.15:  # the far ear hides behind the head
            continue
        d.polygon(f.ellipse(side * 0.98, 0.02, 0.13, 0.22), fill=_rgba(_shade(ident.skin_color, 0.08)))


def _draw_face_skin(d: ImageDraw.ImageDraw, f: FaceFrame, ident: Identity):
    u, v = _face_outline(ident)
    d.polygon(f.points(u, v), fill=_rgba(ident.skin_color))


def _draw_marks(d: ImageDraw.ImageDraw, f: FaceFrame, ident: Identity):
    for m in ident.marks:
        outline = f.ellipse(m.u, m.v, m.radius, m.radius * 0.9, depth=0.2, n=16)
        d.polygon(outline, fill=_rgba(m.color, m.alpha))


def _draw_hair_cap(d: ImageDraw.ImageDraw, f: FaceFrame, ident: Identity):
    """Hair over the top of the head, then forehead skin re-drawn below a curved hairline."""
    buzz = ident.hair_style == "buzz"
    hair = _rgba(_mix(ident.hair_color, ident.skin_color, 0.45) if buzz else ident.hair_color)
    volume = 1.1 if ident.hair_style == "short" else 1.03
    t = np.linspace(math.pi, 2 * math.pi, 28)
    cap_u = np.concatenate([volume * np.cos(t), [1.02, -1.02]])
    cap_v = np.concatenate([-0.1 + volume * np.sin(t), [-0.05, -0.05]])
    d.polygon(f.points(cap_u, cap_v), fill=hair)
    top = ident.hairline
    d.polygon(f.ellipse(ident.hair_part * 0.3, top + 0.6, 0.8, 0.6, n=32), fill=_rgba(ident.skin_color))
    if ident.fringe:
        side = 1 if ident.hair_part >= 0 else -1
        us = np.array([-0.85, 0.8, 0.75, 0.1, -0.55]) * side
        vs = top + np.array([-0.1, -0.1, 0.12, 0.3, 0.18])
        d.polygon(f.points(us, vs), fill=hair)


def _draw_eyes(d: ImageDraw.ImageDraw, f: FaceFrame, ident: Identity, shot: Shot):
    """Socket shadow, eye white, iris and pupil (clipped by how open the eye is), upper lid line."""
    lash = _rgba((30, 22, 20))
    ew, v = ident.eye_w, ident.eye_v
    eh = max(ew * ident.eye_aspect * shot.eye_open, 0.008)
    iris_r = ew * 0.5
    for side in (-1, 1):
        u = side * ident.eye_dx
        iris_u = u + shot.yaw * 0.15  # gaze follows the head turn a little
        socket = f.ellipse(u, v, ew * 1.15, eh * 1.5 + 0.02, depth=0.2)
        d.polygon(socket, fill=_rgba(_shade(ident.skin_color, 0.15)))
        white = f.ellipse(u, v, ew, eh, depth=0.25)
        d.polygon(white, fill=_rgba((236, 234, 228)), outline=lash, width=f.stroke(0.02))
        iris = f.ellipse(iris_u, v, iris_r, min(iris_r * 1.1, eh), depth=0.25, n=20)
        d.polygon(iris, fill=_rgba(ident.iris_color))
        pupil = f.ellipse(iris_u, v, iris_r * 0.45, min(iris_r * 0.5, eh * 0.8), depth=0.25, n=12)
        d.polygon(pupil, fill=_rgba((12, 10, 10)))
        lid = f.points([u - ew, u, u + ew], [v, v - eh * 1.05, v], depth=0.25)
        d.line(lid, fill=lash, width=f.stroke(0.035))


def _draw_brows(d: ImageDraw.ImageDraw, f: FaceFrame, ident: Identity, shot: Shot):
    """Tapered bars: thickness and angle are identity, the raise is expression."""
    th = ident.brow_thickness
    base_v = ident.eye_v - ident.brow_gap - shot.brow_raise
    for side in (-1, 1):
        inner_u = side * (ident.eye_dx - ident.eye_w * 0.9)
        outer_u = side * (ident.eye_dx + ident.eye_w * 1.2)
        rise = math.tan(math.radians(ident.brow_angle)) * abs(outer_u - inner_u)
        us = [inner_u, outer_u, outer_u, inner_u]
        vs = [base_v - th / 2, base_v - rise - th * 0.2, base_v - rise + th * 0.2, base_v + th / 2]
        d.polygon(f.points(us, vs, depth=0.25), fill=_rgba(ident.brow_color))


def _draw_nose(d: ImageDraw.ImageDraw, f: FaceFrame, ident: Identity):
    shade = _rgba(_mix(ident.skin_color, (40, 20, 10), 0.35), 200)
    tip_v = ident.eye_v + ident.nose_len
    w = ident.nose_w
    ridge = f.points([0.06, 0.09, w * 0.6], [ident.eye_v + 0.05, tip_v - 0.08, tip_v], depth=0.6)
    d.line(ridge, fill=shade, width=f.stroke(0.03))
    tip_highlight = _mix(ident.skin_color, (255, 230, 210), 0.12)
    d.polygon(f.ellipse(0, tip_v, w * 0.55, 0.06, depth=0.7), fill=_rgba(tip_highlight))
    for side in (-1, 1):
        d.polygon(f.ellipse(side * w * 0.5, tip_v + 0.03, w * 0.28, 0.035, depth=0.6, n=12), fill=shade)


def _mouth_curves(ident: Identity, shot: Shot, n: int = 13):
    """Lip and mouth-gap outlines in face units; smile bends the centre line up at the corners."""
    x = np.linspace(-1, 1, n)
    u = x * ident.mouth_w * (1 + shot.smile)
    centre_v = ident.eye_v + ident.nose_len + ident.mouth_gap - shot.smile * (x**2 - 0.5)
    bulge = np.sqrt(1 - x**2)
    gap = shot.mouth_open * 0.5 * bulge
    lip = ident.lip_thickness * bulge
    lips = _band(u, centre_v - lip - gap, centre_v + lip * 1.3 + gap)
    opening = _band(u, centre_v - gap, centre_v + gap)
    return lips, opening, (u, centre_v)


def _draw_mouth(d: ImageDraw.ImageDraw, f: FaceFrame, ident: Identity, shot: Shot):
    lips, opening, (u, centre_v) = _mouth_curves(ident, shot)
    d.polygon(f.points(*lips, depth=0.3), fill=_rgba(ident.lip_color))
    if shot.mouth_open > 0:
        d.polygon(f.points(*opening, depth=0.3), fill=_rgba((60, 20, 25)))
    else:
        seam = f.points(u, centre_v + ident.lip_thickness * 0.15, depth=0.3)
        d.line(seam, fill=_rgba(_shade(ident.lip_color, 0.5)), width=f.stroke(0.02))


def _draw_beard(d: ImageDraw.ImageDraw, f: FaceFrame, ident: Identity):
    """Stubble or a full beard over the jaw (cut by a line from the sideburns over the upper
    lip), and a moustache."""
    if not ident.beard:
        return
    mouth_v = ident.eye_v + ident.nose_len + ident.mouth_gap
    stubble = ident.beard == "stubble"
    if ident.beard in ("stubble", "full"):
        u, v = _face_outline(ident)
        jaw = v > 0.05
        cut = ident.mouth_w * 1.25
        us = np.concatenate([u[jaw], [-cut, 0.0, cut]])
        vs = np.concatenate([v[jaw], [mouth_v - 0.06, mouth_v - 0.1, mouth_v - 0.06]])
        d.polygon(f.points(us, vs), fill=_rgba(ident.hair_color, 65 if stubble else 235))
    mw = ident.mouth_w * 1.1
    moustache = f.points([-mw, 0, mw, 0], mouth_v + np.array([0.02, -0.1, 0.02, -0.04]), depth=0.35)
    d.polygon(moustache, fill=_rgba(ident.hair_color, 95 if stubble else 240))


def _draw_occluder(d: ImageDraw.ImageDraw, f: FaceFrame, ident: Identity, shot: Shot):
    color = _rgba(shot.occluder_color)
    if shot.occluder == "sunglasses":
        dark = _rgba(_shade(shot.occluder_color, 0.85))
        for side in (-1, 1):
            lens = f.ellipse(side * ident.eye_dx, ident.eye_v, ident.eye_w * 1.6, ident.eye_w * 1.1, 0.3)
            d.polygon(lens, fill=dark)
        bridge_v = ident.eye_v - 0.04
        d.line(f.points([-1.0, 1.0], [bridge_v, bridge_v], depth=0.3), fill=dark, width=f.stroke(0.05))
    elif shot.occluder == "hand":
        tone = _rgba(_mix(*_SKIN_RANGES[shot.hand_skin], 0.5))
        u, v = shot.occluder_u, shot.occluder_v
        d.polygon(f.ellipse(u, v + 0.2, 0.38, 0.32, depth=0.8), fill=tone)
        for i in range(4):
            d.polygon(f.ellipse(u - 0.27 + 0.18 * i, v - 0.12, 0.08, 0.22, depth=0.8, n=12), fill=tone)
    elif shot.occluder == "hat":
        d.polygon(f.points([-1.1, 1.1, 1.0, -1.0], [-0.45, -0.45, -1.3, -1.3]), fill=color)
        d.polygon(f.points([-1.45, 1.45, 1.45, -1.45], [-0.5, -0.5, -0.36, -0.36]), fill=color)
    elif shot.occluder == "scarf":
        d.polygon(f.points([-1.2, 1.2, 1.3, -1.3], [0.58, 0.58, 1.6, 1.6], depth=0.3), fill=color)


def _draw_scene(ident: Identity, shot: Shot, canvas: int) -> Image.Image:
    img = _draw_background(shot, canvas)
    d = ImageDraw.Draw(img, "RGBA")  # RGBA mode: fills with alpha < 255 blend into the image
    f = FaceFrame.for_shot(ident, shot, canvas)
    _draw_back_hair(d, f, ident)
    _draw_body(d, f, ident, shot)
    _draw_ears(d, f, ident)
    _draw_face_skin(d, f, ident)
    _draw_marks(d, f, ident)
    _draw_hair_cap(d, f, ident)
    _draw_beard(d, f, ident)
    _draw_eyes(d, f, ident, shot)
    _draw_brows(d, f, ident, shot)
    _draw_nose(d, f, ident)
    _draw_mouth(d, f, ident, shot)
    if shot.occluder:
        _draw_occluder(d, f, ident, shot)
    return img


def _photograph(img: Image.Image, shot: Shot, size: int, rng: np.random.Generator) -> np.ndarray:
    """Downsample, then apply camera effects: directional light, brightness/contrast, tint, noise."""
    small = np.asarray(img.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32)
    grid = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    ramp = math.cos(shot.light_angle) * grid[None, :] + math.sin(shot.light_angle) * grid[:, None]
    lit = small * (1 + 0.5 * shot.light_strength * ramp)[:, :, None]
    lit = ((lit - 128.0) * shot.contrast + 128.0) * shot.brightness * np.asarray(shot.tint, np.float32)
    lit += rng.normal(0.0, shot.noise_sigma, lit.shape).astype(np.float32)
    return np.clip(np.rint(lit), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- public API


def _identity_rng(cfg: SyntheticConfig, identity_index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([cfg.seed, identity_index, _IDENTITY_STREAM]))


def _image_rng(cfg: SyntheticConfig, identity_index: int, image_index: int) -> np.random.Generator:
    entropy = [cfg.seed, identity_index, _IMAGE_STREAM, image_index]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def render_identity(cfg: SyntheticConfig, identity_index: int) -> tuple[list[np.ndarray], dict]:
    """All images (HxWx3 uint8) of one identity and its attributes dict {"sex": ..., "skin": ...}.

    Seeded by (seed, identity_index[, image_index]) only, so identity k is the same whatever
    cfg.identities is."""
    if identity_index < 0:
        raise ValueError(f"identity_index must be >= 0, got {identity_index}")
    ident = sample_identity(_identity_rng(cfg, identity_index))
    canvas = cfg.size * SUPERSAMPLE
    images = []
    for j in range(cfg.images_per_identity):
        rng = _image_rng(cfg, identity_index, j)
        shot = sample_shot(rng, cfg.occluder_prob)
        images.append(_photograph(_draw_scene(ident, shot, canvas), shot, cfg.size, rng))
    return images, {"sex": ident.sex, "skin": ident.skin}


def identity_name(identity_index: int, identities: int) -> str:
    """Zero-padded so that lexical order is numeric order ("id_0007")."""
    return f"id_{identity_index:0{max(4, len(str(identities - 1)))}d}"


def _save_png(arr: np.ndarray, path: Path):
    # Pillow writes no timestamp or metadata chunks by default; fixed options keep bytes stable.
    Image.fromarray(arr, "RGB").save(path, format="PNG", optimize=False, compress_level=6)


def _write_into(folder: Path, cfg: SyntheticConfig, progress: bool):
    digits = max(2, len(str(cfg.images_per_identity - 1)))
    rows = []
    for k in tqdm(range(cfg.identities), desc="synthetic faces", unit="id", disable=not progress):
        name = identity_name(k, cfg.identities)
        images, attrs = render_identity(cfg, k)
        (folder / name).mkdir()
        for j, arr in enumerate(images):
            _save_png(arr, folder / name / f"{j:0{digits}d}.png")
        rows.append((name, attrs["sex"], attrs["skin"]))
    with open(folder / "attributes.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(("identity_name", "sex", "skin"))
        writer.writerows(sorted(rows))


def write_dataset(out_dir: str | Path, cfg: SyntheticConfig, progress: bool = True) -> Path:
    """Write out_dir/<identity_name>/<NN>.png for every identity and out_dir/attributes.csv
    (identity_name,sex,skin; one row per identity, sorted).

    Atomic: everything is built in a temporary sibling folder and os.replace'd into place at the
    end, so a failed or interrupted run never leaves a half-written dataset nor touches an existing
    one. Raises FileExistsError if out_dir exists and is non-empty (the caller decides)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} already exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _write_into(tmp, cfg, progress)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a dataset folder should not be
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); rename onto a directory is not portable
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
