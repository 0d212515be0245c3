"""A scenario: a small town's streets, stations at intersections, bikes riding about, and thefts."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

from firmware_sim.radio import PathLoss
from firmware_sim.roads import Point, Projection, RoadNetwork, path_to, point_along, split_at
from firmware_sim.tag import Tag
from firmware_sim.tag_v2 import ChipMemory, TagBeaconV2, TagV2
from protocol.frames import Beacon, BeaconV2

ChipKind = Literal["v1", "v2"]
KMH = 1000.0 / 3600.0
RIDE_SPEED_KMH = (15.0, 25.0)
THIEF_SPEED_KMH = 30.0
MAX_SUBSTEP_S = 0.5

_SURNAMES = [
    "Wang",
    "Li",
    "Zhang",
    "Liu",
    "Chen",
    "Yang",
    "Huang",
    "Zhao",
    "Wu",
    "Zhou",
    "Xu",
    "Sun",
    "Ma",
    "Zhu",
    "Hu",
    "Guo",
    "He",
    "Lin",
    "Gao",
    "Luo",
]
_GIVEN_NAMES = [
    "Wei",
    "Fang",
    "Na",
    "Min",
    "Jing",
    "Lei",
    "Yang",
    "Jie",
    "Tao",
    "Ming",
    "Xiuying",
    "Jun",
    "Yan",
    "Li",
    "Qiang",
    "Hui",
    "Ping",
    "Gang",
    "Hao",
    "Yu",
]


class TownError(ValueError):
    """A town that cannot be built as asked, or a bike or station it does not have."""


@dataclass(frozen=True, slots=True)
class Station:
    """A reading point at an intersection; antenna 1 faces `antenna_bearing_deg`, antenna 0 the other way."""

    station_id: str
    name: str
    lat: float
    lon: float
    x_m: float
    y_m: float
    antenna_bearing_deg: float


@dataclass(eq=False)
class Bike:
    """A registered e-bike with its tag, somewhere on the town's roads."""

    bike_no: int
    plate: str  # ASCII-safe, e.g. HZ-12345
    plate_cn: str  # as on the plate, e.g. 浙A·12345
    owner: str
    tag: Tag | TagV2
    projection: Projection = field(repr=False)
    x_m: float = 0.0
    y_m: float = 0.0
    speed_mps: float = 0.0
    riding: bool = False
    stolen: bool = False
    pause_s: float = 0.0
    # Where the bike is on the network: along the edge from node _edge[0] to _edge[1].
    _edge: tuple[int, int] = (0, 0)
    _along_m: float = 0.0
    _route: list[Point] = field(default_factory=list, repr=False)
    _route_leg: int = 0
    _leg_done_m: float = 0.0
    _destination: tuple[tuple[int, int], float] = ((0, 0), 0.0)

    @property
    def tag_id(self) -> int:
        """The 32-bit id of the bike's chip."""
        return self.tag.tag_id

    @property
    def chip_kind(self) -> ChipKind:
        """Whether the bike's chip beacons its tag id (v1) or rotating ephemeral ids (v2)."""
        return "v2" if isinstance(self.tag, TagV2) else "v1"

    @property
    def lat(self) -> float:
        """Current latitude."""
        return self.projection.to_latlon(self.x_m, self.y_m)[0]

    @property
    def lon(self) -> float:
        """Current longitude."""
        return self.projection.to_latlon(self.x_m, self.y_m)[1]

    def _advance(self, dt_s: float) -> bool:
        """Ride `dt_s` along the route; True when the bike has just arrived."""
        left = self.speed_mps * dt_s
        route = self._route
        while left > 0.0:
            a, b = route[self._route_leg], route[self._route_leg + 1]
            seg = math.dist(a, b)
            if left < seg - self._leg_done_m:
                self._leg_done_m += left
                f = self._leg_done_m / seg
                self.x_m, self.y_m = a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f
                return False
            left -= seg - self._leg_done_m
            self._route_leg += 1
            self._leg_done_m = 0.0
            self.x_m, self.y_m = b
            if self._route_leg == len(route) - 1:
                return True
        return False


class Town:
    """Streets, stations and bikes; `step` moves time on and says which station heard which beacon."""

    def __init__(
        self,
        network: RoadNetwork,
        stations: list[Station],
        bikes: list[Bike],
        rng: random.Random,
        *,
        path_loss: PathLoss,
        pause_s: tuple[float, float],
    ) -> None:
        self.network = network
        self.stations = stations
        self.bikes = bikes
        self.path_loss = path_loss
        self.pause_s = pause_s
        self.now_s = 0.0
        self._rng = rng
        self._by_no = {b.bike_no: b for b in bikes}
        self._by_station_id = {s.station_id: s for s in stations}
        self._edges = sorted(network.geometry)
        # Coarse grid of range-sized cells: only stations in a tag's cell or the 8 around it can hear it.
        self._cell_m = path_loss.range_m
        self._near: dict[tuple[int, int], list[Station]] = defaultdict(list)
        for s in stations:
            cx, cy = self._cell(s.x_m, s.y_m)
            for gx in (cx - 1, cx, cx + 1):
                for gy in (cy - 1, cy, cy + 1):
                    self._near[(gx, gy)].append(s)
        ex, ey = network.east
        axis = (ex - ey, ey + ex)  # between the street directions: north-east in grid terms
        norm = math.hypot(*axis)
        self._antenna_axis = (axis[0] / norm, axis[1] / norm)
        self.roads: list[list[tuple[float, float]]] = [
            [network.projection.to_latlon(x, y) for x, y in line] for line in network.polylines()
        ]

    @classmethod
    def generate(
        cls,
        seed: int,
        stations: int = 20,
        bikes: int = 200,
        *,
        centre: tuple[float, float] = (30.274, 120.155),
        spacing_m: tuple[float, float] = (250.0, 400.0),
        path_loss: PathLoss | None = None,
        pause_s: tuple[float, float] = (60.0, 900.0),
        riding_fraction: float = 0.3,
    ) -> Town:
        """Build a town deterministically from a seed (same seed, same town, same beacons)."""
        if stations < 1:
            raise TownError(f"a town needs at least one station, not {stations}")
        if not 0 <= bikes <= 90_000:
            raise TownError(f"bike count {bikes} outside 0..90000 (five-digit plates)")
        rng = random.Random(seed)
        network = RoadNetwork.generate(
            rng, min_nodes=max(16, math.ceil(stations * 2.4)), centre=centre, spacing_m=spacing_m
        )
        town_stations = _place_stations(network, stations)
        loss = path_loss or PathLoss()
        edges = sorted(network.geometry)
        tag_ids: list[int] = []
        taken: set[int] = set()
        while len(tag_ids) < bikes:
            tag_id = rng.getrandbits(32)
            if 0 < tag_id < 0xFFFFFFFF and tag_id not in taken:
                taken.add(tag_id)
                tag_ids.append(tag_id)
        plates = rng.sample(range(10_000, 100_000), bikes)
        town_bikes = []
        for n, (tag_id, plate) in enumerate(zip(tag_ids, plates, strict=True)):
            battery = rng.uniform(2400.0, 2500.0) if rng.random() < 0.03 else rng.uniform(2600.0, 3100.0)
            tag = Tag(tag_id, rng, interval_s=rng.uniform(1.5, 2.5), battery_mv=battery, counter=rng.randrange(0x10000))
            u, v = rng.choice(edges)
            along = rng.uniform(0.1, 0.9) * network.length[(u, v)]
            x, y = point_along(network.edge_points(u, v), along)
            owner = f"{rng.choice(_SURNAMES)} {rng.choice(_GIVEN_NAMES)}"
            town_bikes.append(
                Bike(
                    n + 1,
                    f"HZ-{plate}",
                    f"浙A·{plate}",
                    owner,
                    tag,
                    network.projection,
                    x_m=x,
                    y_m=y,
                    _edge=(u, v),
                    _along_m=along,
                )
            )
        town = cls(network, town_stations, town_bikes, rng, path_loss=loss, pause_s=pause_s)
        for bike in town_bikes:
            if rng.random() < riding_fraction:
                town._start_trip(bike)
            else:
                bike.pause_s = rng.uniform(0.0, pause_s[1])
        return town

    def station(self, station_id: str) -> Station:
        """The station with this id."""
        try:
            return self._by_station_id[station_id]
        except KeyError:
            raise TownError(f"no station {station_id!r} in this town") from None

    def bike(self, bike_no: int) -> Bike:
        """The bike with this number."""
        try:
            return self._by_no[bike_no]
        except KeyError:
            raise TownError(f"no bike number {bike_no} in this town") from None

    def bike_to_steal(self, chip_kind: ChipKind | None = None) -> Bike:
        """A parked, not yet stolen bike (with a chip of that kind, if given) as close to a station as any, so its
        theft is seen at once."""
        parked = self.parked_near_stations(chip_kind)
        if not parked:
            raise TownError("no parked bike left to steal")
        return parked[0]

    def parked_near_stations(self, chip_kind: ChipKind | None = None) -> list[Bike]:
        """The parked, not stolen bikes (with a chip of that kind, if given), the nearest to a station first."""
        parked = [b for b in self.bikes if not b.riding and not b.stolen and chip_kind in (None, b.chip_kind)]
        if not self.stations:
            return []

        def to_nearest_station(b: Bike) -> tuple[float, int]:
            return (min(math.hypot(b.x_m - s.x_m, b.y_m - s.y_m) for s in self.stations), b.bike_no)

        return sorted(parked, key=to_nearest_station)

    def fit_v2(
        self, chip: ChipMemory, *, epoch_unix_s: float, clock_offset_s: float = 0.0, drift_ppm: float = 0.0
    ) -> Bike:
        """Put the fitted v2 chip on the bike whose chip has its serial, instead of its v1 chip: it beacons from now on,
        `epoch_unix_s` being the true time now, its clock `clock_offset_s` off and drifting `drift_ppm`."""
        bike = next((b for b in self.bikes if b.tag_id == chip.serial), None)
        if bike is None:
            raise TownError(f"no bike in this town carries chip {chip.serial:08X}")
        old = bike.tag
        tag = chip.tag(
            self._rng, epoch_unix_s=epoch_unix_s - self.now_s, clock_offset_s=clock_offset_s, drift_ppm=drift_ppm
        )
        tag.next_beacon_at_s, tag.moving, tag.tampered = old.next_beacon_at_s, old.moving, old.tampered
        bike.tag = tag
        return bike

    def step(self, dt_s: float) -> dict[str, list[Beacon | BeaconV2]]:
        """Advance `dt_s` seconds; the beacons each station heard meanwhile (silent stations are absent)."""
        heard: dict[str, list[Beacon | BeaconV2]] = {}
        while dt_s > 0:
            dt = min(dt_s, MAX_SUBSTEP_S)
            dt_s -= dt
            self._move(dt)
            self._listen(heard)
        return heard

    def theft(self, bike: Bike | int, *, tamper: bool = False) -> Bike:
        """A thief rides the bike away fast towards the far side of town, then hides it."""
        if isinstance(bike, int):
            bike = self.bike(bike)
        bike.stolen = True
        if tamper:
            bike.tag.tamper()
        if bike.riding:
            self._park_here(bike)
        u = bike._edge[0]
        dist, _ = self.network.shortest_paths(u)
        far = max(dist, key=lambda n: (dist[n], -n))
        nxt = self.network.neighbours[far][0]
        self._start_trip(
            bike,
            destination=((far, nxt), min(30.0, self.network.length[_key(far, nxt)] / 2)),
            speed_mps=THIEF_SPEED_KMH * KMH,
        )
        return bike

    def _cell(self, x: float, y: float) -> tuple[int, int]:
        return (math.floor(x / self._cell_m), math.floor(y / self._cell_m))

    def _move(self, dt: float) -> None:
        self.now_s += dt
        for bike in self.bikes:
            if bike.riding:
                if bike._advance(dt):
                    self._arrive(bike)
            else:
                bike.pause_s -= dt
                if bike.pause_s <= 0.0 and not bike.stolen:
                    self._start_trip(bike)

    def _listen(self, heard: dict[str, list[Beacon | BeaconV2]]) -> None:
        rng = self._rng
        loss = self.path_loss
        ax, ay = self._antenna_axis
        now = self.now_s
        for bike in self.bikes:
            sent = bike.tag.poll(now)
            if not sent:
                continue
            for station in self._near.get(self._cell(bike.x_m, bike.y_m), ()):
                dx, dy = bike.x_m - station.x_m, bike.y_m - station.y_m
                distance = math.hypot(dx, dy)
                if distance > loss.range_m:
                    continue
                antenna = 1 if dx * ax + dy * ay >= 0 else 0
                for tb in sent:
                    rssi = loss.rssi_dbm(distance, rng)
                    if rssi is None:
                        continue
                    if isinstance(tb, TagBeaconV2):
                        frame: Beacon | BeaconV2 = tb.frame(rssi, antenna)
                    else:
                        frame = Beacon(tb.tag_id, tb.counter, tb.flags, rssi, antenna)
                    heard.setdefault(station.station_id, []).append(frame)

    def _arrive(self, bike: Bike) -> None:
        bike.riding = False
        bike.tag.moving = False
        bike.speed_mps = 0.0
        bike._edge, bike._along_m = bike._destination
        lo, hi = self.pause_s
        # A thief hides the bike for hours; an owner parks for a while and rides on.
        bike.pause_s = 6 * 3600.0 if bike.stolen else self._rng.uniform(lo, hi)

    def _park_here(self, bike: Bike) -> None:
        """Stop a riding bike where it is, at the start of its current leg's edge position."""
        best = min(self._edges, key=lambda e: _distance_to(self.network.geometry[e], (bike.x_m, bike.y_m)))
        points = self.network.geometry[best]
        along = _along_of(points, (bike.x_m, bike.y_m))
        bike.x_m, bike.y_m = point_along(points, along)
        bike._edge, bike._along_m = best, along
        bike.riding = False

    def _start_trip(
        self,
        bike: Bike,
        destination: tuple[tuple[int, int], float] | None = None,
        speed_mps: float | None = None,
    ) -> None:
        """Route the bike from where it is parked to a destination (random if none) and set off."""
        net = self.network
        rng = self._rng
        u, v = bike._edge
        if destination is None:
            a, b = rng.choice(self._edges)
            while {a, b} == {u, v}:
                a, b = rng.choice(self._edges)
            destination = ((a, b), rng.uniform(0.15, 0.85) * net.length[(a, b)])
        (a, b), dest_along = destination
        here = net.edge_points(u, v)
        to_u, to_v = split_at(here, bike._along_m)
        to_u = to_u[::-1]
        there = net.edge_points(a, b)
        from_a, from_b = split_at(there, dest_along)
        from_b = from_b[::-1]
        starts = ((u, to_u), (v, to_v))
        ends = ((a, from_a), (b, from_b))
        best: tuple[float, list[Point]] | None = None
        for start, lead_in in starts:
            dist, prev = net.shortest_paths(start)
            for end, lead_out in ends:
                cost = _length(lead_in) + dist[end] + _length(lead_out)
                if best is None or cost < best[0]:
                    nodes = path_to(prev, start, end)
                    points = list(lead_in)
                    for p, q in zip(nodes, nodes[1:], strict=False):
                        points += net.edge_points(p, q)[1:]
                    points += lead_out[1:]
                    best = (cost, points)
        assert best is not None
        route = [best[1][0]]
        for point in best[1][1:]:
            if math.dist(point, route[-1]) > 1e-6:
                route.append(point)
        if len(route) < 2:
            route.append(route[0])
        bike._route, bike._route_leg, bike._leg_done_m = route, 0, 0.0
        bike._destination = destination
        bike.speed_mps = speed_mps or rng.uniform(*RIDE_SPEED_KMH) * KMH
        bike.riding = True
        bike.tag.moving = True


def v2_bikes(town: Town, share: float) -> list[Bike]:
    """The bikes that carry v2 chips when `share` of the town's do: those with the lowest tag ids (the ids are drawn at
    random, so this is a random pick that the demo and the town's process make alike from the seed)."""
    if not 0.0 <= share <= 1.0:
        raise TownError(f"a share of v2 chips is between 0 and 1, not {share}")
    return sorted(town.bikes, key=lambda b: b.tag_id)[: round(len(town.bikes) * share)]


def _key(u: int, v: int) -> tuple[int, int]:
    return (min(u, v), max(u, v))


def _length(points: list[Point]) -> float:
    return sum(math.dist(p, q) for p, q in zip(points, points[1:], strict=False))


def _distance_to(points: list[Point], p: Point) -> float:
    """Distance from a point to a polyline."""
    return min(_segment_distance(a, b, p)[0] for a, b in zip(points, points[1:], strict=False))


def _segment_distance(a: Point, b: Point, p: Point) -> tuple[float, float]:
    """Distance from p to segment ab, and how far along ab its foot lies."""
    abx, aby = b[0] - a[0], b[1] - a[1]
    seg2 = abx * abx + aby * aby
    t = 0.0 if seg2 == 0 else max(0.0, min(1.0, ((p[0] - a[0]) * abx + (p[1] - a[1]) * aby) / seg2))
    fx, fy = a[0] + abx * t, a[1] + aby * t
    return math.hypot(p[0] - fx, p[1] - fy), t * math.sqrt(seg2)


def _along_of(points: list[Point], p: Point) -> float:
    """How far along a polyline the point nearest to p lies."""
    best, best_along, walked = math.inf, 0.0, 0.0
    for a, b in zip(points, points[1:], strict=False):
        d, t = _segment_distance(a, b, p)
        if d < best:
            best, best_along = d, walked + t
        walked += math.dist(a, b)
    return best_along


def _place_stations(network: RoadNetwork, count: int) -> list[Station]:
    """Spread stations over crossings (busiest first), farthest-point style, ids north-west to south-east."""
    crossings = [n for n in network.neighbours if network.is_crossing(n)]
    if count > len(crossings):
        raise TownError(f"{count} stations asked for but the town has {len(crossings)} crossings")
    nodes = network.nodes
    centre_node = min(crossings, key=lambda n: (math.hypot(*nodes[n]), n))
    chosen = [centre_node]
    nearest = {n: math.dist(nodes[n], nodes[centre_node]) for n in crossings}
    while len(chosen) < count:
        # Prefer four-way crossings: they see the most traffic.
        pick = max(
            (n for n in crossings if n not in chosen),
            key=lambda n: (nearest[n] * (1.0 if len(network.neighbours[n]) >= 4 else 0.8), -n),
        )
        chosen.append(pick)
        for n in crossings:
            nearest[n] = min(nearest[n], math.dist(nodes[n], nodes[pick]))
    chosen.sort(key=lambda n: (-(n // network.cols), n % network.cols))  # grid rows run south to north
    ex, ey = network.east
    bearing = math.degrees(math.atan2(ex - ey, ey + ex)) % 360.0
    stations = []
    for k, n in enumerate(chosen, start=1):
        x, y = nodes[n]
        lat, lon = network.projection.to_latlon(x, y)
        ew, ns = network.street_names(n)
        stations.append(Station(f"st-{k:03d}", f"{ew} / {ns}", lat, lon, x, y, round(bearing, 1)))
    return stations
