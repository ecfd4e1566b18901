"""The shared triangle rasteriser: geometry against closed-form facts and the numpy reference."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpe_data import render

coord = st.floats(2.0, 60.0, allow_nan=False, width=32)


def _area_perim(tri):
    a, b, c = tri
    area = abs((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])) / 2
    perim = sum(np.hypot(*(p - q)) for p, q in ((a, b), (b, c), (c, a)))
    return area, perim


@settings(max_examples=60, deadline=None)
@given(st.lists(coord, min_size=6, max_size=6))
def test_triangle_pixel_count_matches_area(xy):
    tri = np.array(xy, dtype=np.float64).reshape(3, 2)
    area, perim = _area_perim(tri)
    verts = np.c_[tri, np.ones(3)]
    ras = render.rasterize(verts, [[0, 1, 2]], 64, 64)
    n = int((ras.face_id == 0).sum())
    # pixel centres inside a convex shape: the unit squares around them lie between K shrunk and K grown by
    # half a pixel square, so |N - A| <= (sqrt(2)/2) * perimeter + 1
    assert abs(n - area) <= np.sqrt(2) / 2 * perim + 1


def test_triangle_count_exact_case():
    # right triangle with legs 20 along the pixel grid, hypotenuse through pixel centres: 21 * 22 / 2 centres
    verts = np.array([[10, 10, 1], [30, 10, 1], [10, 30, 1]], float)
    ras = render.rasterize(verts, [[0, 1, 2]], 50, 50)
    assert (ras.face_id == 0).sum() == 21 * 22 // 2


@settings(max_examples=40, deadline=None)
@given(st.lists(coord, min_size=6, max_size=6), st.lists(coord, min_size=6, max_size=6),
       st.floats(0.5, 50), st.floats(0.5, 50), st.booleans())
def test_nearer_triangle_wins_in_any_order(a, b, za, zb, swap):
    if abs(za - zb) < 1e-3:
        return
    ta, tb = np.array(a, float).reshape(3, 2), np.array(b, float).reshape(3, 2)
    verts = np.r_[np.c_[ta, np.full(3, za)], np.c_[tb, np.full(3, zb)]]
    faces = [[0, 1, 2], [3, 4, 5]]
    if swap:
        faces = faces[::-1]
    ras = render.rasterize(verts, faces, 64, 64)
    cov_a = render.rasterize(verts, [[0, 1, 2]], 64, 64).face_id == 0
    cov_b = render.rasterize(verts, [[3, 4, 5]], 64, 64).face_id == 0
    both = cov_a & cov_b
    near_face = faces.index([0, 1, 2] if za < zb else [3, 4, 5])
    assert (ras.face_id[both] == near_face).all()
    assert (ras.depth[both] == np.float32(min(za, zb))).all()
    assert ((ras.face_id >= 0) == (cov_a | cov_b)).all()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-5, 70, allow_nan=False), min_size=9, max_size=9))
def test_barycentrics_sum_to_one_and_reproduce_positions(v):
    verts = np.array(v, float).reshape(3, 3)
    verts[:, 2] = np.abs(verts[:, 2]) + 1
    ras = render.rasterize(verts, [[0, 1, 2]], 64, 64)
    m = ras.face_id >= 0
    if not m.any():
        return
    assert np.allclose(ras.bary[m].sum(-1), 1, atol=1e-5)
    assert (ras.bary[m] >= 0).all()
    pos = render.interpolate(ras, verts)
    ys, xs = np.nonzero(m)
    assert np.allclose(pos[m][:, 0], xs, atol=2e-3) and np.allclose(pos[m][:, 1], ys, atol=2e-3)
    assert np.allclose(pos[m][:, 2], ras.depth[m], rtol=1e-5, atol=1e-3)


def _grid_mesh(n=6, size=40.0, off=3.0, seed=0):
    """A jittered n x n quad grid split into triangles (shared edges everywhere)."""
    rng = np.random.default_rng(seed)
    g = np.linspace(off, off + size, n)
    xx, yy = np.meshgrid(g, g)
    pts = np.c_[xx.ravel(), yy.ravel()]
    inner = (pts > off) & (pts < off + size)
    pts = pts + rng.uniform(-2, 2, pts.shape) * inner.all(1, keepdims=True)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    faces = np.r_[np.c_[a, b, d], np.c_[a, d, c]]
    return np.c_[pts, rng.uniform(1, 10, len(pts))], faces


def test_watertight_shared_edges():
    # integer vertices put many pixel centres exactly on shared edges: none may be dropped
    verts = np.array([[5, 5, 1], [25, 5, 1], [25, 25, 1], [5, 25, 1], [15, 15, 1]], float)
    faces = [[0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]]
    ras = render.rasterize(verts, faces, 32, 32)
    inside = np.zeros((32, 32), bool)
    inside[5:26, 5:26] = True
    assert ((ras.face_id >= 0) == inside).all()
    verts, faces = _grid_mesh()
    ras = render.rasterize(verts, faces, 48, 48)
    assert (ras.face_id[3:44, 3:44] >= 0).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numba_matches_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    verts = np.c_[rng.uniform(-5, 45, (60, 2)), rng.uniform(1, 9, 60)]
    faces = rng.integers(0, 60, (80, 3))
    for cull in (False, True):
        a = render.rasterize(verts, faces, 40, 44, cull=cull)
        b = render.rasterize_reference(verts, faces, 40, 44, cull=cull)
        assert (a.face_id == b.face_id).all()
        assert np.array_equal(a.bary, b.bary) and np.array_equal(a.depth, b.depth)
        w = render.rasterize(verts, faces, 40, 44, window=(7, 3, 30, 35), cull=cull)
        assert w.window == (7, 3, 30, 35)
        assert (w.face_id == a.face_id[3:35, 7:30]).all() and np.array_equal(w.depth, a.depth[3:35, 7:30])


def _cube(c=(30, 30, 50), r=12.0):
    v = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float) * r + c
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    f = []
    for a, b, cc, d in quads:
        f += [(a, b, cc), (a, cc, d)]
    f = np.array(f)
    vol = np.einsum("ij,ij->i", v[f[:, 0]] - c, np.cross(v[f[:, 1]] - c, v[f[:, 2]] - c)).sum()
    return v, (f if vol > 0 else f[:, ::-1])


def test_back_face_culling_of_a_closed_mesh_changes_nothing():
    from hpe_data import pose

    v, f = _cube()
    c = v.mean(0)
    for ang in [(0, 0, 0), (20, 35, 10), (-40, 70, -25)]:
        vr = (v - c) @ pose.to_matrix(*ang).T + c
        a = render.rasterize(vr, f, 64, 64)
        b = render.rasterize(vr, f, 64, 64, cull=True)
        assert (a.face_id == b.face_id).all() and (a.face_id >= 0).sum() > 300
        # culled faces are exactly those whose outward normal points away from the viewer (+z)
        n = np.cross(vr[f[:, 1]] - vr[f[:, 0]], vr[f[:, 2]] - vr[f[:, 0]])
        drawn = np.unique(b.face_id[b.face_id >= 0])
        assert (n[drawn, 2] < 0).all()


def test_soft_alpha_of_a_square():
    x0, x1, y0, y1 = 10.3, 40.7, 12.6, 33.2
    verts = np.array([[x0, y0, 1], [x1, y0, 1], [x1, y1, 1], [x0, y1, 1]], float)
    faces = [[0, 1, 2], [0, 2, 3]]
    s = 4
    a = render.coverage(verts, faces, 48, 52, supersample=s)
    xs, ys = np.arange(52), np.arange(48)
    fx = np.clip(np.minimum(xs + 0.5, x1) - np.maximum(xs - 0.5, x0), 0, 1)
    fy = np.clip(np.minimum(ys + 0.5, y1) - np.maximum(ys - 0.5, y0), 0, 1)
    truth = fy[:, None] * fx[None, :]
    assert np.abs(a - truth).max() <= 2.0 / s
    assert (a[truth == 1] == 1).all() and (a[truth == 0] == 0).all()
    frac = (a > 0) & (a < 1)
    assert frac.any() and ((truth[frac] > 0) & (truth[frac] < 1)).all()
    assert abs(a.sum() - (x1 - x0) * (y1 - y0)) < 2 * (x1 - x0 + y1 - y0) / s
    # a sub-window gives the same alpha as the matching crop
    w = render.coverage(verts, faces, 48, 52, window=(8, 10, 30, 40), supersample=s)
    assert np.array_equal(w, a[10:40, 8:30])


def test_lambert_and_normals():
    v, f = _cube()
    n = render.vertex_normals(v, f)
    assert np.allclose(np.linalg.norm(n, axis=1), 1)
    assert (np.einsum("ij,ij->i", n, v - v.mean(0)) > 0).all()  # outward
    sh = render.lambert(np.array([[0, 0, -1.0], [0, 0, 1.0], [1, 0, 0]]), [0, 0, -2], ambient=0.2)
    assert np.allclose(sh, [1.0, 0.2, 0.2])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="verts"):
        render.rasterize(np.zeros((3, 2)), [[0, 1, 2]], 4, 4)
    with pytest.raises(ValueError, match="outside"):
        render.rasterize(np.zeros((3, 3)), [[0, 1, 5]], 4, 4)


def test_depth_at_samples_the_zbuffer_anywhere():
    rng = np.random.default_rng(5)
    verts = np.c_[rng.uniform(0, 40, (50, 2)), rng.uniform(1, 9, 50)]
    faces = rng.integers(0, 50, (70, 3))
    ras = render.rasterize(verts, faces, 40, 40)
    yy, xx = np.mgrid[0:40, 0:40]
    d = render.depth_at(verts, faces, np.c_[xx.ravel(), yy.ravel()])
    assert np.array_equal(d.reshape(40, 40).astype(np.float32), ras.depth)
    # off the pixel lattice: a tilted plane triangle z = 1 + 0.1 x + 0.2 y, and a point outside it
    tri = np.array([[0, 0], [30, 0], [0, 30]], float)
    v = np.c_[tri, 1 + 0.1 * tri[:, 0] + 0.2 * tri[:, 1]]
    p = np.array([[3.3, 7.7], [10.25, 4.5], [29.0, 29.0]])
    z = render.depth_at(v, [[0, 1, 2]], p)
    assert np.allclose(z[:2], 1 + 0.1 * p[:2, 0] + 0.2 * p[:2, 1]) and np.isinf(z[2])


@pytest.mark.parametrize("s", [2, 4, 8])
def test_band_coverage_equals_full_supersampling(s):
    verts, faces = _grid_mesh(n=8, size=30.0, off=4.3, seed=s)
    a = render.coverage(verts, faces, 40, 40, supersample=s)
    b = render.coverage_full(verts, faces, 40, 40, supersample=s)
    assert np.array_equal(a, b)
    # total alpha is the covered area (the outline is the jittered square's boundary quads)
    e1, e2 = verts[faces[:, 1], :2] - verts[faces[:, 0], :2], verts[faces[:, 2], :2] - verts[faces[:, 0], :2]
    area = np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).sum() / 2
    assert abs(a.sum() - area) < 4 * 30.0 / s


def _flat_faces_mesh(seed, n_faces=60, size=44):
    """Random overlapping triangles, each flat at its own depth (depths 0.05 apart: no ties)."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-5, size + 5, (n_faces, 3, 2))
    z = rng.permutation(n_faces) * 0.05 + 1.0
    verts = np.concatenate([xy, np.repeat(z[:, None, None], 3, 1)], 2).reshape(-1, 3)
    return verts, np.arange(3 * n_faces).reshape(-1, 3)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_zbuffer_same_winners_as_rasterize_and_gates_occluders(seed):
    verts, faces = _flat_faces_mesh(seed)
    full = render.rasterize(verts, faces, 40, 44, window=(3, 2, 41, 38))
    fid, depth = render.zbuffer(verts, faces, 40, 44, window=(3, 2, 41, 38))
    assert fid.dtype == np.int32 and (fid == full.face_id).all() and np.array_equal(depth, full.depth)
    # occluders (faces[gate:]) only count where faces[:gate] drew: there they win as in the full z-buffer
    gate = 25
    first = render.rasterize(verts, faces[:gate], 40, 44, window=(3, 2, 41, 38)).face_id >= 0
    gid, gdepth = render.zbuffer(verts, faces, 40, 44, window=(3, 2, 41, 38), gate=gate)
    assert (gid[first] == full.face_id[first]).all() and (gid[~first] == -1).all()
    assert np.array_equal(gdepth[first], full.depth[first]) and np.isinf(gdepth[~first]).all()
    assert (gid[first] >= gate).any()  # some occluder really is in front somewhere
    with pytest.raises(ValueError, match="gate"):
        render.zbuffer(verts, faces, 40, 44, gate=len(faces) + 1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-3, 50, allow_nan=False), min_size=6, max_size=6), st.integers(0, 3))
def test_slivers_and_grid_aligned_edges_match_the_reference(xy, snap):
    # thin, near-horizontal and pixel-centre-aligned triangles: the row spans must not lose a pixel
    tri = np.array(xy).reshape(3, 2)
    if snap:
        tri = np.round(tri * snap) / snap
    tri[2] = tri[0] + (tri[2] - tri[0]) * 1e-3 if snap == 3 else tri[2]  # a sliver
    verts = np.c_[tri, [1.0, 2.0, 3.0]]
    a = render.rasterize(verts, [[0, 1, 2]], 48, 48)
    with np.errstate(divide="ignore", invalid="ignore"):  # a sliver's edge sums may cancel to 0 (NaN depth)
        b = render.rasterize_reference(verts, [[0, 1, 2]], 48, 48)
    assert (a.face_id == b.face_id).all() and np.array_equal(a.bary, b.bary)


def test_attribute_planes_interpolate_like_barycentrics():
    verts, faces = _grid_mesh(n=7, size=36.0, off=4.0, seed=3)
    attr = np.random.default_rng(4).uniform(-2, 5, (len(verts), 3))
    ras = render.rasterize(verts, faces, 46, 46)
    planes = render.attribute_planes(verts, np.asarray(faces, np.int64), attr, len(faces))
    ys, xs = np.nonzero(ras.face_id >= 0)
    P = planes[ras.face_id[ys, xs]]  # (n, k, 3)
    got = P[..., 0] * xs[:, None] + P[..., 1] * ys[:, None] + P[..., 2]
    want = render.interpolate(ras, attr)[ys, xs]
    assert np.allclose(got, want, atol=1e-4)
    # a degenerate face gets zero planes
    assert (render.attribute_planes(np.zeros((3, 3)), np.array([[0, 1, 2]]), np.ones((3, 1)), 1) == 0).all()
