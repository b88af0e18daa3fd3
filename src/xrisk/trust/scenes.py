"""Procedural driving scenes with exact ground truth, drawn with Pillow (the ``vision`` extra).

A :class:`Scene` is the ground truth: road (2 or 3 lanes, the ego car in the right-hand one of
two or the middle one of three), vehicles (type, colour, brand, plate, VIN, lane, distance),
pedestrians (age group, clothing, on a sidewalk or crossing), a traffic light and a sign,
weather, time of day, sensor noise, and for long-tail scenes one rare hazard (an animal, debris,
cones or a flooded road). :func:`sample_scene` draws one from a seed; :func:`render_scene` draws
it as a ``256 x 192`` (default) front-camera picture seen from the ego car: a perspective road,
vehicles from behind with readable plates (``ABC1234``) on the near ones, pedestrians drawn by
size and posture (children smaller, elderly with a cane), the lit lamp of the traffic light, a
stop / yield / speed-limit sign, rain streaks, fog, snow, darkness and headlights at night.

The ground truth is exact by construction: the sampler rejects layouts where an object would be
less than half visible (hidden behind a nearer one or off the picture), so "a scene with N
vehicles" shows N vehicles; :func:`object_masks` returns every object's pixels for checking.

Example:
    >>> scene = sample_scene(seed=3)
    >>> image = render_scene(scene)
    >>> image.size, len(scene.vehicles) == scene.count("vehicles")
    ((256, 192), True)
"""

from __future__ import annotations

import random
import string
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

__all__ = [
    "VEHICLE_COLORS", "VEHICLE_KINDS", "BRANDS", "PEDESTRIAN_GROUPS", "CLOTHING", "WEATHERS", "TIMES_OF_DAY",
    "LIGHT_STATES", "SIGNS", "LONG_TAIL_HAZARDS", "CITIES", "STREETS", "Vehicle", "Pedestrian", "Scene",
    "random_plate", "random_vin", "sample_scene", "render_scene", "object_masks", "AUX_CLASSES", "cell_labels",
]

VEHICLE_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (200, 32, 32), "blue": (36, 72, 205), "white": (238, 238, 238), "black": (28, 28, 30),
    "silver": (165, 170, 178), "yellow": (232, 200, 36), "green": (40, 150, 64),
}
VEHICLE_KINDS: tuple[str, ...] = ("car", "suv", "truck", "bus")
BRANDS: tuple[str, ...] = ("toyota", "ford", "bmw", "tesla", "volvo")
PEDESTRIAN_GROUPS: tuple[str, ...] = ("child", "adult", "elderly")
CLOTHING: dict[str, tuple[int, int, int]] = {
    "orange": (240, 130, 30), "purple": (130, 50, 160), "teal": (20, 150, 150), "brown": (120, 80, 40),
}
WEATHERS: tuple[str, ...] = ("clear", "rain", "fog", "snow")
TIMES_OF_DAY: tuple[str, ...] = ("day", "dusk", "night")
LIGHT_STATES: tuple[str, ...] = ("red", "yellow", "green")
SIGNS: tuple[str, ...] = ("stop", "yield", "speed")
LONG_TAIL_HAZARDS: tuple[str, ...] = ("animal", "debris", "cones", "flood")
CITIES: tuple[str, ...] = ("Riverton", "Lakeside", "Maplewood", "Oakridge", "Brookfield", "Fairview", "Hillcrest",
                           "Westport")
STREETS: tuple[str, ...] = ("Elm Street", "Main Street", "Harbor Road", "Mill Lane", "Station Avenue", "Park Road")

_VIN_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"  # VINs never use I, O, Q
_HORIZON = 0.42  # horizon height as a fraction of the picture height
_KIND_SHAPE = {"car": (0.7, 0.55), "suv": (0.76, 0.7), "truck": (0.82, 0.92), "bus": (0.88, 1.02)}  # width of lane, h/w


def random_plate(rng: random.Random) -> str:
    """A plate ``ABC1234`` (three letters, four digits)."""
    return "".join(rng.choice(string.ascii_uppercase) for _ in range(3)) + "".join(
        rng.choice(string.digits) for _ in range(4))


def random_vin(rng: random.Random) -> str:
    """A 17-character vehicle identification number (letters I, O, Q excluded)."""
    return "".join(rng.choice(_VIN_ALPHABET) for _ in range(17))


@dataclass(frozen=True)
class Vehicle:
    """A vehicle seen from behind: ``scale`` in (0, 1] grows as it gets closer."""

    kind: str
    color: str
    brand: str
    plate: str
    vin: str
    lane: int
    scale: float


@dataclass(frozen=True)
class Pedestrian:
    """A pedestrian: ``place`` is ``"left sidewalk"``, ``"right sidewalk"`` or ``"crossing"``."""

    group: str
    clothing: str
    place: str
    scale: float
    offset: float  # position along the sidewalk / crosswalk, in [0, 1]


@dataclass(frozen=True)
class Scene:
    """The ground truth of one picture (see the module notes); ``seed`` fixes every random detail."""

    seed: int
    width: int = 256
    height: int = 192
    lanes: int = 2
    time_of_day: str = "day"
    weather: str = "clear"
    vehicles: tuple[Vehicle, ...] = ()
    pedestrians: tuple[Pedestrian, ...] = ()
    traffic_light: str | None = None
    sign: str | None = None
    speed_limit: int | None = None
    crosswalk: bool = False
    crosswalk_scale: float = 0.62
    hazard: str | None = None
    noise: float = 0.0
    ego_plate: str = ""
    ego_vin: str = ""
    city: str = ""
    street: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ego_lane(self) -> int:
        """Index of the ego car's lane (0 = leftmost)."""
        return 1

    def closest_ahead(self) -> Vehicle | None:
        """The nearest vehicle in the ego lane, or None."""
        ahead = [v for v in self.vehicles if v.lane == self.ego_lane]
        return max(ahead, key=lambda v: v.scale) if ahead else None

    def count(self, what: str) -> int:
        """``"vehicles"`` or ``"pedestrians"``."""
        return len(self.vehicles) if what == "vehicles" else len(self.pedestrians)

    def crossing(self) -> bool:
        """Whether a pedestrian crosses the road in front of the ego car."""
        return any(p.place == "crossing" for p in self.pedestrians)

    def ego_action(self) -> str:
        """What the ego car should do: ``"stop"``, ``"slow down"`` or ``"keep going"``.

        Stop for a red light, a stop sign, a crossing pedestrian, an animal or debris; slow down
        for a yellow light, a close vehicle ahead (scale >= 0.7), fog, snow, cones or a flood.
        """
        if self.traffic_light == "red" or self.sign == "stop" or self.crossing() or self.hazard in ("animal", "debris"):
            return "stop"
        ahead = self.closest_ahead()
        if (self.traffic_light == "yellow" or (ahead is not None and ahead.scale >= 0.7)
                or self.weather in ("fog", "snow") or self.hazard in ("cones", "flood")):
            return "slow down"
        return "keep going"

    def to_dict(self) -> dict[str, Any]:
        """Plain-data ground truth (JSON-ready)."""
        return asdict(self)


# ----------------------------------------------------------------------------- geometry
def _geometry(scene: Scene) -> tuple[float, float, float, float]:
    """(centre x, horizon y, road half-width at the horizon, at the bottom)."""
    w, h = scene.width, scene.height
    return w / 2, h * _HORIZON, w * 0.05, w * 0.47


def _y_at(scene: Scene, s: float) -> float:
    _, yh, _, _ = _geometry(scene)
    return yh + (scene.height - yh) * s


def _half_width(scene: Scene, s: float) -> float:
    _, _, hw0, hw1 = _geometry(scene)
    return hw0 + (hw1 - hw0) * s


def _lane_center(scene: Scene, lane: int, s: float) -> float:
    cx = _geometry(scene)[0]
    hw = _half_width(scene, s)
    return cx - hw + (lane + 0.5) * (2 * hw / scene.lanes)


def _vehicle_box(scene: Scene, v: Vehicle) -> tuple[float, float, float, float]:
    lane_w = 2 * _half_width(scene, v.scale) / scene.lanes
    wf, hf = _KIND_SHAPE[v.kind]
    w = lane_w * wf
    h = w * hf
    x = _lane_center(scene, v.lane, v.scale)
    bottom = _y_at(scene, v.scale)
    return x - w / 2, bottom - h, x + w / 2, bottom


def _pedestrian_box(scene: Scene, p: Pedestrian) -> tuple[float, float, float, float]:
    s = scene.crosswalk_scale if p.place == "crossing" else p.scale
    bottom = _y_at(scene, s)
    height = scene.height * 0.42 * s * (0.62 if p.group == "child" else 1.0)
    width = height * 0.36
    hw = _half_width(scene, s)
    cx = _geometry(scene)[0]
    if p.place == "crossing":
        x = cx - hw * 0.8 + p.offset * hw * 1.6
    elif p.place == "left sidewalk":
        x = cx - hw - width * (0.9 + 1.2 * p.offset)
    else:
        x = cx + hw + width * (0.9 + 1.2 * p.offset)
    return x - width / 2, bottom - height, x + width / 2, bottom


def _light_box(scene: Scene) -> tuple[float, float, float, float]:
    cx, yh, _, _ = _geometry(scene)
    x = cx + _half_width(scene, 0.35) + scene.width * 0.06
    return x - 7, yh - scene.height * 0.32, x + 7, yh - scene.height * 0.32 + 36


def _sign_box(scene: Scene) -> tuple[float, float, float, float]:
    cx, yh, _, _ = _geometry(scene)
    x = cx - _half_width(scene, 0.45) - scene.width * 0.07
    y = yh - scene.height * 0.12
    return x - 9, y - 9, x + 9, y + 9


def _hazard_box(scene: Scene) -> tuple[float, float, float, float]:
    s = 0.55
    x = _lane_center(scene, scene.ego_lane, s)
    y = _y_at(scene, s)
    w = 2 * _half_width(scene, s) / scene.lanes * 0.55
    if scene.hazard == "flood":
        return _geometry(scene)[0] - _half_width(scene, 0.75), _y_at(scene, 0.5), \
            _geometry(scene)[0] + _half_width(scene, 0.75), _y_at(scene, 0.75)
    return x - w / 2, y - w * 0.6, x + w / 2, y


def _objects(scene: Scene) -> list[tuple[str, float, tuple[float, float, float, float]]]:
    """(name, depth scale, box) of every countable object, drawn far to near."""
    out = []
    for i, v in enumerate(scene.vehicles):
        out.append((f"vehicle{i}", v.scale, _vehicle_box(scene, v)))
    for i, p in enumerate(scene.pedestrians):
        out.append((f"pedestrian{i}", scene.crosswalk_scale if p.place == "crossing" else p.scale,
                    _pedestrian_box(scene, p)))
    if scene.hazard is not None and scene.hazard != "flood":
        out.append(("hazard", 0.55, _hazard_box(scene)))
    return sorted(out, key=lambda o: o[1])


def _box_mask(box: tuple[float, float, float, float], w: int, h: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    x0, y0, x1, y1 = (int(round(c)) for c in box)
    m[max(0, y0):max(0, min(h, y1)), max(0, x0):max(0, min(w, x1))] = True
    return m


def _visible_enough(scene: Scene, min_fraction: float = 0.5) -> bool:
    objs = _objects(scene)
    w, h = scene.width, scene.height
    for i, (_, _, box) in enumerate(objs):
        full = (box[2] - box[0]) * (box[3] - box[1])
        own = _box_mask(box, w, h)
        if full <= 0 or own.sum() < min_fraction * full:
            return False  # (mostly) off the picture
        covered = np.zeros((h, w), dtype=bool)
        for _, _, nearer in objs[i + 1:]:
            covered |= _box_mask(nearer, w, h)
        if (own & ~covered).sum() < min_fraction * own.sum():
            return False
    return True


# ----------------------------------------------------------------------------- sampling
def sample_scene(seed: int, *, long_tail: bool = False, width: int = 256, height: int = 192,
                 pedestrians: int | None = None, vehicle_ahead: bool | None = None) -> Scene:
    """A random scene (deterministic in ``seed``), re-drawn until every object is at least half visible.

    Args:
        seed: the seed.
        long_tail: add one rare hazard (animal, debris, cones, flood) and favour rare conditions.
        width, height: picture size in pixels.
        pedestrians: force this many pedestrians (0-3; default random).
        vehicle_ahead: force a vehicle in the ego lane (True) or none there (False).
    """
    rng = random.Random(seed)
    for _attempt in range(200):
        scene = _draw_layout(rng, seed, long_tail, width, height, pedestrians, vehicle_ahead)
        if _visible_enough(scene):
            return scene
    raise RuntimeError(f"could not place the objects of scene {seed} visibly")  # pragma: no cover


def _draw_layout(rng: random.Random, seed: int, long_tail: bool, width: int, height: int,
                 n_ped: int | None, vehicle_ahead: bool | None) -> Scene:
    lanes = rng.choice((2, 3))
    weather = rng.choices(WEATHERS, weights=(4, 2, 1, 1) if not long_tail else (1, 1, 2, 2))[0]
    time_of_day = rng.choices(TIMES_OF_DAY, weights=(5, 2, 2) if not long_tail else (1, 1, 2))[0]
    n_veh = rng.choices((0, 1, 2, 3), weights=(2, 4, 3, 2))[0]
    vehicles = []
    for _ in range(n_veh):
        vehicles.append(Vehicle(
            kind=rng.choices(VEHICLE_KINDS, weights=(5, 3, 2, 1))[0], color=rng.choice(list(VEHICLE_COLORS)),
            brand=rng.choice(BRANDS), plate=random_plate(rng), vin=random_vin(rng), lane=rng.randrange(lanes),
            scale=round(rng.uniform(0.28, 0.88), 3)))
    if vehicle_ahead is True and not any(v.lane == 1 for v in vehicles):
        vehicles.append(Vehicle(
            kind=rng.choices(VEHICLE_KINDS, weights=(5, 3, 2, 1))[0], color=rng.choice(list(VEHICLE_COLORS)),
            brand=rng.choice(BRANDS), plate=random_plate(rng), vin=random_vin(rng), lane=1,
            scale=round(rng.uniform(0.45, 0.88), 3)))
    if vehicle_ahead is False:
        vehicles = [v for v in vehicles if v.lane != 1]
    count = n_ped if n_ped is not None else rng.choices((0, 1, 2, 3), weights=(4, 4, 2, 1))[0]
    peds = []
    for _ in range(count):
        place = rng.choices(("left sidewalk", "right sidewalk", "crossing"), weights=(2, 2, 1))[0]
        peds.append(Pedestrian(group=rng.choice(PEDESTRIAN_GROUPS), clothing=rng.choice(list(CLOTHING)), place=place,
                               scale=round(rng.uniform(0.45, 0.9), 3), offset=round(rng.random(), 3)))
    light = rng.choice(LIGHT_STATES) if rng.random() < 0.5 else None
    sign = rng.choice(SIGNS) if rng.random() < 0.4 else None
    hazard = rng.choice(LONG_TAIL_HAZARDS) if long_tail else None
    if hazard in ("animal", "debris", "cones"):  # keep the ego lane's hazard spot free of vehicles
        vehicles = [v for v in vehicles if v.lane != 1 or v.scale > 0.72 or v.scale < 0.4]
    return Scene(
        seed=seed, width=width, height=height, lanes=lanes, time_of_day=time_of_day, weather=weather,
        vehicles=tuple(sorted(vehicles, key=lambda v: v.scale)), pedestrians=tuple(peds), traffic_light=light,
        sign=sign, speed_limit=rng.choice((30, 50, 70)) if sign == "speed" else None,
        crosswalk=any(p.place == "crossing" for p in peds) or rng.random() < 0.2,
        crosswalk_scale=round(rng.uniform(0.55, 0.72), 3), hazard=hazard, noise=round(rng.uniform(0.0, 2.5), 2),
        ego_plate=random_plate(rng), ego_vin=random_vin(rng), city=rng.choice(CITIES), street=rng.choice(STREETS))


# ----------------------------------------------------------------------------- drawing
def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1
        return ImageFont.load_default()


def _plate_font() -> Any:
    from PIL import ImageFont

    return ImageFont.load_default_imagefont()


def _draw_vehicle(d: Any, scene: Scene, v: Vehicle, night: bool) -> None:
    x0, y0, x1, y1 = _vehicle_box(scene, v)
    w, h = x1 - x0, y1 - y0
    body = VEHICLE_COLORS[v.color]
    wheel_h = h * 0.14
    d.rectangle((x0 + w * 0.08, y1 - wheel_h, x0 + w * 0.28, y1), fill=(15, 15, 15))
    d.rectangle((x1 - w * 0.28, y1 - wheel_h, x1 - w * 0.08, y1), fill=(15, 15, 15))
    d.rounded_rectangle((x0, y0, x1, y1 - wheel_h * 0.6), radius=max(1, int(w * 0.08)), fill=body,
                        outline=(10, 10, 10))
    glass = (60, 70, 85) if not night else (25, 28, 35)
    if v.kind in ("car", "suv"):
        d.rectangle((x0 + w * 0.15, y0 + h * 0.1, x1 - w * 0.15, y0 + h * 0.42), fill=glass)
    elif v.kind == "bus":
        for k in range(3):
            d.rectangle((x0 + w * (0.08 + 0.29 * k), y0 + h * 0.08, x0 + w * (0.3 + 0.29 * k), y0 + h * 0.38),
                        fill=glass)
    else:  # truck: box with a small rear window strip
        d.rectangle((x0 + w * 0.1, y0 + h * 0.08, x1 - w * 0.1, y0 + h * 0.2), fill=glass)
    lamp = (255, 40, 40) if night else (190, 20, 20)
    d.rectangle((x0 + w * 0.04, y0 + h * 0.5, x0 + w * 0.16, y0 + h * 0.62), fill=lamp)
    d.rectangle((x1 - w * 0.16, y0 + h * 0.5, x1 - w * 0.04, y0 + h * 0.62), fill=lamp)
    # plate: white; near vehicles (>= 50 px wide) carry the string in a crisp bitmap font
    readable = w >= 50
    pw, ph = (max(46.0, w * 0.56), 13.0) if readable else (max(6.0, w * 0.56), max(3.0, w * 0.1))
    px0, py0 = (x0 + x1) / 2 - pw / 2, y0 + h * 0.62
    d.rectangle((px0, py0, px0 + pw, py0 + ph), fill=(245, 245, 240), outline=(40, 40, 40))
    if readable:
        f = _plate_font()
        tw = d.textlength(v.plate, font=f)
        d.text((round((x0 + x1) / 2 - tw / 2), round(py0 + 1)), v.plate, fill=(10, 10, 10), font=f)
    if w >= 40:  # brand badge above the plate
        f = _font(7)
        tw = d.textlength(v.brand.upper(), font=f)
        d.text(((x0 + x1) / 2 - tw / 2, y0 + h * 0.47), v.brand.upper(), fill=(235, 235, 235)
               if v.color in ("black", "blue", "red", "green") else (20, 20, 20), font=f)


def _draw_pedestrian(d: Any, scene: Scene, p: Pedestrian) -> None:
    x0, y0, x1, y1 = _pedestrian_box(scene, p)
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    skin = (224, 172, 130)
    hair = (200, 200, 205) if p.group == "elderly" else (60, 40, 25)
    head = h * 0.18
    d.ellipse((cx - head / 2, y0, cx + head / 2, y0 + head), fill=skin)
    d.pieslice((cx - head / 2, y0, cx + head / 2, y0 + head), 180, 360, fill=hair)
    color = CLOTHING[p.clothing]
    lean = w * 0.15 if p.group == "elderly" else 0.0
    d.polygon([(cx - w * 0.35 + lean, y0 + head), (cx + w * 0.35 + lean, y0 + head), (cx + w * 0.4, y0 + h * 0.62),
               (cx - w * 0.4, y0 + h * 0.62)], fill=color)
    legs = (40, 40, 60)
    stride = w * (0.35 if p.place == "crossing" else 0.15)
    d.line((cx - w * 0.12, y0 + h * 0.62, cx - w * 0.12 - stride, y1), fill=legs, width=max(1, int(w * 0.2)))
    d.line((cx + w * 0.12, y0 + h * 0.62, cx + w * 0.12 + stride, y1), fill=legs, width=max(1, int(w * 0.2)))
    if p.group == "elderly":  # cane
        d.line((cx + w * 0.55, y0 + h * 0.45, cx + w * 0.7, y1), fill=(90, 60, 30), width=max(1, int(w * 0.1)))


def _draw_hazard(d: Any, scene: Scene, rng: random.Random) -> None:
    x0, y0, x1, y1 = _hazard_box(scene)
    w, h = x1 - x0, y1 - y0
    if scene.hazard == "animal":  # a deer: body, legs, neck, head, antlers
        brown = (140, 90, 45)
        d.ellipse((x0 + w * 0.1, y0 + h * 0.25, x1 - w * 0.2, y0 + h * 0.65), fill=brown)
        for fx in (0.2, 0.35, 0.6, 0.72):
            d.line((x0 + w * fx, y0 + h * 0.55, x0 + w * fx, y1), fill=brown, width=max(1, int(w * 0.05)))
        d.line((x1 - w * 0.3, y0 + h * 0.35, x1 - w * 0.12, y0 + h * 0.1), fill=brown, width=max(1, int(w * 0.07)))
        d.ellipse((x1 - w * 0.2, y0, x1, y0 + h * 0.2), fill=brown)
        d.line((x1 - w * 0.12, y0, x1 - w * 0.2, y0 - h * 0.2), fill=(90, 60, 30), width=1)
    elif scene.hazard == "debris":  # fallen logs and rocks
        for k in range(3):
            yy = y0 + h * (0.35 + 0.2 * k)
            d.rounded_rectangle((x0 + w * 0.05 * k, yy, x1 - w * 0.1 * k, yy + h * 0.18), radius=2, fill=(110, 75, 40))
        d.ellipse((x0 + w * 0.6, y0 + h * 0.1, x0 + w * 0.9, y0 + h * 0.4), fill=(120, 120, 115))
    elif scene.hazard == "cones":
        for k in range(3):
            cx = x0 + w * (0.15 + 0.35 * k)
            d.polygon([(cx, y0 + h * 0.1), (cx - w * 0.12, y1), (cx + w * 0.12, y1)], fill=(250, 120, 20))
            d.rectangle((cx - w * 0.06, y0 + h * 0.5, cx + w * 0.06, y0 + h * 0.62), fill=(250, 250, 250))
    elif scene.hazard == "flood":
        d.rectangle((x0, y0, x1, y1), fill=(70, 110, 160))
        for _ in range(12):
            xx, yy = rng.uniform(x0, x1), rng.uniform(y0, y1)
            d.line((xx, yy, xx + 8, yy), fill=(170, 200, 230), width=1)


def _draw_light(d: Any, scene: Scene) -> None:
    x0, y0, x1, y1 = _light_box(scene)
    cx = (x0 + x1) / 2
    d.line((cx, y1, cx, _y_at(scene, 0.35)), fill=(60, 60, 60), width=2)
    d.rectangle((x0, y0, x1, y1), fill=(25, 25, 25))
    for k, state in enumerate(("red", "yellow", "green")):
        on = {"red": (255, 30, 30), "yellow": (255, 200, 0), "green": (30, 230, 60)}[state]
        off = (55, 55, 55)
        yy = y0 + 2 + k * 11.3
        d.ellipse((cx - 5, yy, cx + 5, yy + 10), fill=on if scene.traffic_light == state else off)


def _draw_sign(d: Any, scene: Scene) -> None:
    x0, y0, x1, y1 = _sign_box(scene)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    d.line((cx, y1, cx, _y_at(scene, 0.45)), fill=(90, 90, 90), width=2)
    if scene.sign == "stop":
        d.regular_polygon((cx, cy, 9), 8, rotation=22.5, fill=(200, 20, 20), outline=(255, 255, 255))
        f = _font(6)
        d.text((cx - d.textlength("STOP", font=f) / 2, cy - 4), "STOP", fill=(255, 255, 255), font=f)
    elif scene.sign == "yield":
        d.polygon([(x0, y0), (x1, y0), (cx, y1)], fill=(255, 255, 255), outline=(200, 20, 20), width=2)
    else:
        d.ellipse((x0, y0, x1, y1), fill=(255, 255, 255), outline=(200, 20, 20), width=2)
        f = _font(8)
        txt = str(scene.speed_limit)
        d.text((cx - d.textlength(txt, font=f) / 2, cy - 5), txt, fill=(0, 0, 0), font=f)


def render_scene(scene: Scene, *, omit: str | None = None) -> Any:
    """Draw ``scene`` as an RGB PIL image (``omit``: name of one object to leave out, for checks)."""
    from PIL import Image, ImageDraw

    rng = random.Random(scene.seed * 7919 + 17)
    w, h = scene.width, scene.height
    cx, yh, hw0, hw1 = _geometry(scene)
    night = scene.time_of_day == "night"
    sky = {"day": (135, 190, 235), "dusk": (235, 150, 95), "night": (18, 22, 48)}[scene.time_of_day]
    ground = {"day": (95, 150, 80), "dusk": (80, 110, 60), "night": (25, 35, 25)}[scene.time_of_day]
    if scene.weather == "snow":
        ground = (225, 228, 232) if not night else (120, 124, 130)
    img = Image.new("RGB", (w, h), sky)
    d = ImageDraw.Draw(img)
    d.rectangle((0, yh, w, h), fill=ground)
    for k in range(6):  # buildings on the horizon
        bx = k * w / 6 + rng.uniform(0, 8)
        bh = rng.uniform(0.08, 0.2) * h
        shade = 70 if night else 150
        d.rectangle((bx, yh - bh, bx + w / 7, yh), fill=(shade, shade - 10, shade - 20))
    road = (85, 85, 90) if not night else (45, 45, 50)
    side = (160, 160, 155) if not night else (80, 80, 80)
    d.polygon([(cx - hw0 - 4, yh), (cx + hw0 + 4, yh), (cx + hw1 + 24, h), (cx - hw1 - 24, h)], fill=side)
    d.polygon([(cx - hw0, yh), (cx + hw0, yh), (cx + hw1, h), (cx - hw1, h)], fill=road)
    for lane in range(1, scene.lanes):  # dashed lane lines
        for k in range(8):
            s0, s1 = k / 8, k / 8 + 0.06
            xa = cx - _half_width(scene, s0) + lane * 2 * _half_width(scene, s0) / scene.lanes
            xb = cx - _half_width(scene, s1) + lane * 2 * _half_width(scene, s1) / scene.lanes
            d.line((xa, _y_at(scene, s0), xb, _y_at(scene, s1)), fill=(240, 240, 240), width=1 if s0 < 0.4 else 2)
    if scene.crosswalk:
        s0, s1 = scene.crosswalk_scale - 0.05, scene.crosswalk_scale
        for k in range(9):
            f0, f1 = k / 9, k / 9 + 0.06
            pts = [(cx - _half_width(scene, s) + f * 2 * _half_width(scene, s), _y_at(scene, s))
                   for s, f in ((s0, f0), (s0, f1), (s1, f1), (s1, f0))]
            d.polygon(pts, fill=(235, 235, 235))
    if scene.hazard == "flood" and omit != "hazard":
        _draw_hazard(d, scene, rng)
    if scene.traffic_light is not None and omit != "light":
        _draw_light(d, scene)
    if scene.sign is not None and omit != "sign":
        _draw_sign(d, scene)
    for name, _, _ in _objects(scene):
        if name == omit:
            continue
        if name.startswith("vehicle"):
            _draw_vehicle(d, scene, scene.vehicles[int(name[7:])], night)
        elif name.startswith("pedestrian"):
            _draw_pedestrian(d, scene, scene.pedestrians[int(name[10:])])
        else:
            _draw_hazard(d, scene, rng)
    arr = np.asarray(img).astype(np.float32)
    if scene.weather == "fog":
        arr = arr * 0.55 + 200 * 0.45
    if night:
        arr = arr * 0.8
    if scene.weather in ("rain", "snow"):
        overlay = Image.new("RGB", (w, h))
        od = ImageDraw.Draw(overlay)
        for _ in range(70 if scene.weather == "rain" else 90):
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            if scene.weather == "rain":
                od.line((x, y, x - 2, y + 7), fill=(120, 130, 160), width=1)
            else:
                od.ellipse((x, y, x + 2, y + 2), fill=(250, 250, 250))
        mask = np.asarray(overlay).sum(axis=2, keepdims=True) > 0
        arr = np.where(mask, np.asarray(overlay).astype(np.float32) * 0.85 + arr * 0.15, arr)
    if scene.noise > 0:
        nrng = np.random.default_rng(scene.seed)
        arr = arr + nrng.normal(0.0, scene.noise, size=arr.shape)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def object_masks(scene: Scene) -> dict[str, np.ndarray]:
    """Pixels each countable object changes: ``{name: bool mask}`` (render with and without it)."""
    full = np.asarray(render_scene(scene)).astype(np.int16)
    out = {}
    for name, _, _ in _objects(scene):
        without = np.asarray(render_scene(scene, omit=name)).astype(np.int16)
        out[name] = np.abs(full - without).sum(axis=2) > 0
    return out


def with_fields(scene: Scene, **changes: Any) -> Scene:
    """A copy of ``scene`` with fields replaced (e.g. another weather)."""
    return replace(scene, **changes)


#: Classes of :func:`cell_labels`: background, a vehicle of each colour, a pedestrian of each age
#: group, the traffic light in each state, each sign, a hazard.
AUX_CLASSES: tuple[str, ...] = (
    "background", *(f"vehicle:{c}" for c in VEHICLE_COLORS), *(f"pedestrian:{g}" for g in PEDESTRIAN_GROUPS),
    *(f"light:{s}" for s in LIGHT_STATES), *(f"sign:{s}" for s in SIGNS), "hazard",
)


def cell_labels(scene: Scene, rows: int, cols: int) -> np.ndarray:
    """A ``rows x cols`` grid of :data:`AUX_CLASSES` indices: what covers each cell's centre, or has its own
    centre in the cell (the nearest object wins). Used as auxiliary supervision by the in-library VQA model (it learns where things are)."""
    out = np.zeros((rows, cols), dtype=np.int64)
    ys = (np.arange(rows) + 0.5) * scene.height / rows
    xs = (np.arange(cols) + 0.5) * scene.width / cols

    def paint(box: tuple[float, float, float, float], label: str) -> None:
        x0, y0, x1, y1 = box
        r = (ys >= y0) & (ys <= y1)
        c = (xs >= x0) & (xs <= x1)
        out[np.ix_(r, c)] = AUX_CLASSES.index(label)
        cy, cx = int((y0 + y1) / 2 * rows / scene.height), int((x0 + x1) / 2 * cols / scene.width)
        if 0 <= cy < rows and 0 <= cx < cols:  # a small object still marks the cell of its centre
            out[cy, cx] = AUX_CLASSES.index(label)

    if scene.traffic_light is not None:
        paint(_light_box(scene), f"light:{scene.traffic_light}")
    if scene.sign is not None:
        paint(_sign_box(scene), f"sign:{scene.sign}")
    if scene.hazard == "flood":
        paint(_hazard_box(scene), "hazard")
    for name, _, box in _objects(scene):  # far to near: nearer objects overwrite
        if name.startswith("vehicle"):
            paint(box, f"vehicle:{scene.vehicles[int(name[7:])].color}")
        elif name.startswith("pedestrian"):
            paint(box, f"pedestrian:{scene.pedestrians[int(name[10:])].group}")
        else:
            paint(box, "hazard")
    return out
