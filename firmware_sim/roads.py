"""A town's road network: a slightly irregular street grid, its geometry and shortest routes."""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass

METRES_PER_DEGREE = 111_320.0

Point = tuple[float, float]  # (x_m east, y_m north) of the town centre

_ROAD_NAMES = [
    "Qingchun",
    "Fengqi",
    "Tiyuchang",
    "Wensan",
    "Wener",
    "Wenyi",
    "Jiefang",
    "Qingtai",
    "Huancheng",
    "Wulin",
    "Zhongshan",
    "Yan'an",
    "Jianguo",
    "Zhonghe",
    "Moganshan",
    "Hushu",
    "Xueyuan",
    "Jiaogong",
    "Gudun",
    "Baochu",
    "Beishan",
    "Nanshan",
    "Hefang",
    "Pinghai",
    "Qiutao",
    "Kaixuan",
    "Shaoxing",
    "Desheng",
    "Genshan",
    "Wangjiang",
    "Fuxing",
    "Binsheng",
    "Jiangnan",
    "Xixing",
    "Changhe",
    "Dongxin",
]


class RoadError(ValueError):
    """A road network that cannot be built as asked."""


@dataclass(frozen=True, slots=True)
class Projection:
    """Local metres around a centre to (lat, lon) and back (equirectangular; fine over a town)."""

    lat0: float
    lon0: float

    def to_latlon(self, x_m: float, y_m: float) -> tuple[float, float]:
        """(lat, lon) of a point given in metres east and north of the centre."""
        lat = self.lat0 + y_m / METRES_PER_DEGREE
        lon = self.lon0 + x_m / (METRES_PER_DEGREE * math.cos(math.radians(self.lat0)))
        return (lat, lon)


@dataclass(frozen=True, slots=True)
class Street:
    """One named street: a chain of road segments; several pieces if blocks are missing."""

    name: str
    pieces: list[list[int]]  # node ids along each piece


def polyline_length(points: list[Point]) -> float:
    """Length of a polyline in metres."""
    return sum(math.dist(a, b) for a, b in zip(points, points[1:], strict=False))


def point_along(points: list[Point], distance_m: float) -> Point:
    """The point `distance_m` along a polyline (clamped to its ends)."""
    left = max(0.0, distance_m)
    for a, b in zip(points, points[1:], strict=False):
        seg = math.dist(a, b)
        if left <= seg and seg > 0:
            f = left / seg
            return (a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f)
        left -= seg
    return points[-1]


def split_at(points: list[Point], distance_m: float) -> tuple[list[Point], list[Point]]:
    """Cut a polyline at `distance_m` into the part before and the part after (both include the cut)."""
    left = max(0.0, distance_m)
    for i, (a, b) in enumerate(zip(points, points[1:], strict=False)):
        seg = math.dist(a, b)
        if left <= seg:
            f = left / seg if seg > 0 else 0.0
            cut = (a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f)
            return points[: i + 1] + [cut], [cut] + points[i + 1 :]
        left -= seg
    return list(points), [points[-1]]


class RoadNetwork:
    """Intersections (nodes) joined by road segments (edges), each with its polyline geometry."""

    def __init__(self, projection: Projection, nodes: list[Point], cols: int, rows: int) -> None:
        self.projection = projection
        self.nodes = nodes
        self.cols = cols
        self.rows = rows
        self.geometry: dict[tuple[int, int], list[Point]] = {}
        self.length: dict[tuple[int, int], float] = {}
        self.neighbours: dict[int, list[int]] = {n: [] for n in range(len(nodes))}
        self.streets: list[Street] = []
        # Unit vector along the grid's east-west streets (the grid is slightly rotated).
        self.east = (1.0, 0.0)

    @classmethod
    def generate(
        cls,
        rng: random.Random,
        *,
        min_nodes: int,
        centre: tuple[float, float] = (30.274, 120.155),
        spacing_m: tuple[float, float] = (250.0, 400.0),
        missing_fraction: float = 0.08,
    ) -> RoadNetwork:
        """A grid-ish street network with at least `min_nodes` intersections."""
        if min_nodes < 4:
            raise RoadError(f"a town needs at least 4 intersections, not {min_nodes}")
        cols = math.ceil(math.sqrt(min_nodes * 1.2))
        rows = math.ceil(min_nodes / cols)
        xs = _cumulative(rng, cols, spacing_m)
        ys = _cumulative(rng, rows, spacing_m)
        angle = math.radians(rng.uniform(-12.0, 12.0))
        cos_a, sin_a = math.cos(angle), math.sin(angle)
        nodes: list[Point] = []
        for j in range(rows):
            for i in range(cols):
                x = xs[i] + rng.uniform(-25.0, 25.0)
                y = ys[j] + rng.uniform(-25.0, 25.0)
                nodes.append((x * cos_a - y * sin_a, x * sin_a + y * cos_a))
        net = cls(Projection(*centre), nodes, cols, rows)
        net.east = (cos_a, sin_a)
        candidates = [(n, n + 1) for n in range(len(nodes)) if n % cols < cols - 1]
        candidates += [(n, n + cols) for n in range(len(nodes) - cols)]
        for u, v in candidates:
            net._add_edge(rng, u, v)
        net._remove_some(rng, missing_fraction)
        net._name_streets(rng)
        return net

    def _add_edge(self, rng: random.Random, u: int, v: int) -> None:
        a, b = self.nodes[u], self.nodes[v]
        points = [a, b]
        if rng.random() < 0.35:
            # A gentle bend mid-block, so streets are not ruler-straight.
            length = math.dist(a, b)
            off = rng.uniform(-12.0, 12.0)
            nx, ny = -(b[1] - a[1]) / length, (b[0] - a[0]) / length
            f = rng.uniform(0.35, 0.65)
            points = [a, (a[0] + (b[0] - a[0]) * f + nx * off, a[1] + (b[1] - a[1]) * f + ny * off), b]
        self.geometry[(u, v)] = points
        self.length[(u, v)] = polyline_length(points)
        self.neighbours[u].append(v)
        self.neighbours[v].append(u)

    def _drop_edge(self, u: int, v: int) -> None:
        del self.geometry[(u, v)], self.length[(u, v)]
        self.neighbours[u].remove(v)
        self.neighbours[v].remove(u)

    def _remove_some(self, rng: random.Random, fraction: float) -> None:
        """Drop a few blocks (parks, rivers, estates) while every intersection stays reachable."""
        edges = sorted(self.geometry)
        rng.shuffle(edges)
        to_remove = int(len(edges) * fraction)
        for u, v in edges:
            if to_remove == 0:
                break
            if len(self.neighbours[u]) <= 2 or len(self.neighbours[v]) <= 2:
                continue  # keep dead ends out: every intersection stays on a through route
            geometry = self.geometry[(u, v)]
            self._drop_edge(u, v)
            if self._connected():
                to_remove -= 1
            else:
                self.geometry[(u, v)] = geometry
                self.length[(u, v)] = polyline_length(geometry)
                self.neighbours[u].append(v)
                self.neighbours[v].append(u)

    def _connected(self) -> bool:
        seen = {0}
        todo = [0]
        while todo:
            for m in self.neighbours[todo.pop()]:
                if m not in seen:
                    seen.add(m)
                    todo.append(m)
        return len(seen) == len(self.nodes)

    def _name_streets(self, rng: random.Random) -> None:
        names = list(_ROAD_NAMES)
        rng.shuffle(names)
        needed = self.rows + self.cols
        names += [f"Road No. {k}" for k in range(1, needed - len(names) + 1)]
        lines = [[j * self.cols + i for i in range(self.cols)] for j in range(self.rows)]
        lines += [[j * self.cols + i for j in range(self.rows)] for i in range(self.cols)]
        for k, line in enumerate(lines):
            pieces: list[list[int]] = []
            piece = [line[0]]
            for a, b in zip(line, line[1:], strict=False):
                if self.has_edge(a, b):
                    piece.append(b)
                else:
                    if len(piece) > 1:
                        pieces.append(piece)
                    piece = [b]
            if len(piece) > 1:
                pieces.append(piece)
            suffix = "Rd" if k < self.rows else "St"
            self.streets.append(Street(f"{names[k]} {suffix}", pieces))

    def has_edge(self, u: int, v: int) -> bool:
        """Whether a road segment joins two intersections directly."""
        return (min(u, v), max(u, v)) in self.geometry

    def edge_points(self, u: int, v: int) -> list[Point]:
        """The polyline from intersection u to intersection v."""
        if u < v:
            return self.geometry[(u, v)]
        return self.geometry[(v, u)][::-1]

    def street_names(self, node: int) -> tuple[str, str]:
        """The east-west and north-south street through an intersection."""
        row, col = divmod(node, self.cols)
        return (self.streets[row].name, self.streets[self.rows + col].name)

    def is_crossing(self, node: int) -> bool:
        """Whether an east-west and a north-south street both pass through the node."""
        ns = self.neighbours[node]
        return any(abs(m - node) == 1 for m in ns) and any(abs(m - node) == self.cols for m in ns)

    def polylines(self) -> list[list[Point]]:
        """Every street piece as one polyline in metres."""
        out = []
        for street in self.streets:
            for piece in street.pieces:
                points = [self.nodes[piece[0]]]
                for a, b in zip(piece, piece[1:], strict=False):
                    points += self.edge_points(a, b)[1:]
                out.append(points)
        return out

    def shortest_paths(self, source: int) -> tuple[dict[int, float], dict[int, int]]:
        """Dijkstra from one intersection: distance to every node and the predecessor on the way."""
        dist = {source: 0.0}
        prev: dict[int, int] = {}
        heap = [(0.0, source)]
        while heap:
            d, u = heapq.heappop(heap)
            if d > dist[u]:
                continue
            for v in self.neighbours[u]:
                nd = d + self.length[(min(u, v), max(u, v))]
                if nd < dist.get(v, math.inf):
                    dist[v] = nd
                    prev[v] = u
                    heapq.heappush(heap, (nd, v))
        return dist, prev


def path_to(prev: dict[int, int], source: int, target: int) -> list[int]:
    """The node sequence from source to target out of a Dijkstra predecessor map."""
    path = [target]
    while path[-1] != source:
        path.append(prev[path[-1]])
    return path[::-1]


def _cumulative(rng: random.Random, count: int, spacing_m: tuple[float, float]) -> list[float]:
    """`count` positions with random gaps in `spacing_m`, centred on zero."""
    pos = [0.0]
    for _ in range(count - 1):
        pos.append(pos[-1] + rng.uniform(*spacing_m))
    mid = pos[-1] / 2
    return [p - mid for p in pos]
