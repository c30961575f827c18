import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pygltflib
import pytest
import torch
import trimesh

from instant3d.render.color import srgb_to_linear
from instant3d.export.mesh import ExportError, export_glb, export_obj_zip, rasterize_uv
from instant3d.testing.analytic import AnalyticSource, box, front_back_sphere, snowman, sphere

ROOT = Path(__file__).resolve().parent.parent


def validate(path: Path) -> dict:
    """The Khronos glTF validator's report (npm package gltf-validator, installed by `npm install`)."""
    if not (ROOT / "node_modules" / "gltf-validator").is_dir():
        raise RuntimeError("the glTF validator is not installed: run `npm install` in the repository root")
    node = shutil.which("node") or "node"
    result = subprocess.run([node, str(ROOT / "tests" / "validate_gltf.mjs"), str(path)], capture_output=True,
                            text=True, cwd=ROOT, check=True)
    return json.loads(result.stdout)


def chamfer(mesh: trimesh.Trimesh, scene, truth: np.ndarray) -> float:
    """Symmetric point-to-surface Chamfer distance: mesh samples to the exact surface (|sdf|), and samples of
    the exact surface to the mesh (trimesh's closest-point query). Free of point-sampling noise."""
    samples = trimesh.sample.sample_surface(mesh, 5000, seed=0)[0]
    to_truth = scene.sdf(torch.as_tensor(samples, dtype=torch.float32)).abs().mean().item()
    _, to_mesh, _ = trimesh.proximity.closest_point_naive(mesh, truth)  # brute force over all triangles
    return 0.5 * (to_truth + float(np.mean(to_mesh)))


def load_mesh(path) -> trimesh.Trimesh:
    return trimesh.load(path, force="mesh", process=False)


@pytest.mark.parametrize(
    "scene, options",
    [(sphere(), {}), (box(), {"vertex_colors": True}), (snowman(), {"texture_size": 256, "target_faces": 2000}),
     (front_back_sphere(), {"threshold": "auto", "resolution": 64})],
)
def test_glbs_are_valid_by_the_khronos_validator(tmp_path, scene, options):
    result = export_glb(AnalyticSource(scene), tmp_path / "a.glb", **options)
    report = validate(result.path)
    assert report["issues"]["numErrors"] == 0, report["issues"]["messages"]
    assert report["issues"]["numWarnings"] == 0, report["issues"]["messages"]


def test_sphere_geometry_and_face_budget(tmp_path):
    # the analytic density is 40 * sigmoid(-sdf / 0.01): its half-density level 20 is the true surface
    result = export_glb(AnalyticSource(sphere(radius=0.5)), tmp_path / "s.glb", target_faces=3000, threshold=20.0)
    mesh = load_mesh(result.path)
    assert len(mesh.faces) <= 3000
    truth = torch.nn.functional.normalize(torch.randn(2000, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    assert chamfer(mesh, sphere(radius=0.5), 0.5 * truth.numpy()) < 0.002  # an eighth of a grid cell
    welded = mesh.copy()
    welded.merge_vertices(merge_tex=True, merge_norm=True)  # UV seams split vertices on purpose
    assert welded.is_watertight and welded.volume > 0  # closed, with outward-facing triangles


def test_cube_geometry(tmp_path):
    # a sharp edge: half the interior (20) is the true surface, and auto goes down to the thin-part bound, 16.6,
    # a fifth of a grid cell further out
    result = export_glb(AnalyticSource(box(half=0.4)), tmp_path / "c.glb", threshold="auto")
    mesh = load_mesh(result.path)
    assert len(mesh.faces) <= 5000
    truth = trimesh.sample.sample_surface(trimesh.creation.box(extents=(0.8, 0.8, 0.8)), 2000, seed=1)[0]
    assert result.threshold == pytest.approx(np.log(2) / (2.0 / 48), rel=0.01)  # the box is 2 wide
    # at 16.6 the surface lies where 40 * sigmoid(-sdf / 0.01) = 16.6, 0.0034 out (a fifth of a grid cell; at the
    # half level, 20, the Chamfer distance is 0.0002); edges are rounded by the grid and decimation
    assert chamfer(mesh, box(half=0.4), truth) < 0.0034 + 0.001


def _texture_at_surface(mesh: trimesh.Trimesh, count: int = 4000):
    """Points spread over the surface and the (linear) texture colour at each, read bilinearly from the PNG."""
    rng = np.random.default_rng(0)
    faces = rng.integers(0, len(mesh.faces), count)
    w = rng.dirichlet([1, 1, 1], count)[..., None]
    points = (mesh.vertices[mesh.faces[faces]] * w).sum(1)
    uv = (mesh.visual.uv[mesh.faces[faces]] * w).sum(1)
    image = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"), dtype=np.float64) / 255
    size = image.shape[0]
    x, y = uv[:, 0] * size - 0.5, (1 - uv[:, 1]) * size - 0.5  # trimesh gives OpenGL-style uv (v up)
    x0, y0 = np.floor(x).astype(int).clip(0, size - 2), np.floor(y).astype(int).clip(0, size - 2)
    fx, fy = (x - x0).clip(0, 1)[:, None], (y - y0).clip(0, 1)[:, None]
    colour = (image[y0, x0] * (1 - fx) * (1 - fy) + image[y0, x0 + 1] * fx * (1 - fy)
              + image[y0 + 1, x0] * (1 - fx) * fy + image[y0 + 1, x0 + 1] * fx * fy)
    return points, srgb_to_linear(colour)


def test_texture_holds_the_albedo_on_each_side_and_no_empty_texels(tmp_path):
    red, blue = (0.8, 0.1, 0.05), (0.05, 0.2, 0.7)
    result = export_glb(AnalyticSource(front_back_sphere(front=red, back=blue)), tmp_path / "fb.glb")
    points, colour = _texture_at_surface(load_mesh(result.path))
    front, back = points[:, 2] > 0.08, points[:, 2] < -0.08
    assert np.abs(colour[front] - red).max() < 0.05
    assert np.abs(colour[back] - blue).max() < 0.05
    # no black (unfilled) texels anywhere on the surface: seam padding works
    assert colour.sum(axis=1).min() > 0.3


def test_vertex_colours_are_linear(tmp_path):
    result = export_glb(AnalyticSource(sphere(rgb=(0.2, 0.5, 0.8))), tmp_path / "vc.glb", vertex_colors=True)
    mesh = load_mesh(result.path)
    colours = mesh.visual.vertex_colors[:, :3] / 255.0
    assert np.abs(colours - [0.2, 0.5, 0.8]).max() < 0.01


def test_front_feature_points_to_plus_z_in_gltf_coordinates(tmp_path):
    result = export_glb(AnalyticSource(snowman()), tmp_path / "snow.glb")
    gltf = pygltflib.GLTF2().load(str(result.path))
    prim = gltf.meshes[0].primitives[0]
    acc = gltf.accessors[prim.attributes.POSITION]
    view = gltf.bufferViews[acc.bufferView]
    blob = gltf.binary_blob()
    positions = np.frombuffer(blob[view.byteOffset + (acc.byteOffset or 0):][: acc.count * 12], dtype="<f4")
    positions = positions.reshape(-1, 3)
    tip = positions[positions[:, 2].argmax()]
    assert tip[2] > 0.45 and abs(tip[0]) < 0.05 and abs(tip[1] - 0.3) < 0.08  # the carrot nose, at head height
    assert positions[:, 1].min() < -0.65 and positions[:, 1].max() > 0.5  # upright: body below, head above


def test_pygltflib_and_trimesh_read_one_textured_mesh(tmp_path):
    result = export_glb(AnalyticSource(sphere()), tmp_path / "s.glb")
    gltf = pygltflib.GLTF2().load(str(result.path))
    assert len(gltf.meshes) == 1 and len(gltf.meshes[0].primitives) == 1 and len(gltf.materials) == 1
    attrs = gltf.meshes[0].primitives[0].attributes
    assert attrs.POSITION is not None and attrs.NORMAL is not None and attrs.TEXCOORD_0 is not None
    material = gltf.materials[0]
    assert material.pbrMetallicRoughness.baseColorTexture is not None
    assert gltf.images[0].mimeType == "image/png"
    mesh = load_mesh(result.path)
    assert mesh.visual.kind == "texture" and mesh.visual.material.baseColorTexture is not None
    assert result.faces == len(mesh.faces)


def test_obj_zip_has_the_same_geometry_and_texture(tmp_path):
    source = AnalyticSource(front_back_sphere())
    glb = export_glb(source, tmp_path / "m.glb")
    result = export_obj_zip(source, tmp_path / "m.zip")
    with zipfile.ZipFile(result.path) as zf:
        names = zf.namelist()
        assert "model.obj" in names and "model.mtl" in names and any(n.endswith(".png") for n in names)
        zf.extractall(tmp_path / "obj")
    obj = trimesh.load(tmp_path / "obj" / "model.obj", force="mesh", process=False)
    assert obj.visual.kind == "texture"
    assert result.faces == glb.faces and len(obj.faces) == glb.faces
    assert "map_Kd" in (tmp_path / "obj" / "model.mtl").read_text()


def test_rasterizer_covers_a_triangle_like_brute_force():
    uv = np.array([[0.1, 0.1], [0.9, 0.2], [0.3, 0.8]])
    face_map, bary = rasterize_uv(uv, np.array([[0, 1, 2]]), 32)
    for r in range(32):
        for c in range(32):
            p = np.array([(c + 0.5) / 32, 1 - (r + 0.5) / 32])
            m = np.array([[uv[1, 0] - uv[0, 0], uv[2, 0] - uv[0, 0]], [uv[1, 1] - uv[0, 1], uv[2, 1] - uv[0, 1]]])
            l1, l2 = np.linalg.solve(m, p - uv[0])
            inside = l1 >= 1e-9 and l2 >= 1e-9 and l1 + l2 <= 1 - 1e-9
            if inside:
                assert face_map[r, c] == 0 and np.allclose(bary[r, c], [1 - l1 - l2, l1, l2], atol=1e-9)
            elif min(l1, l2, 1 - l1 - l2) < -1e-6:
                assert face_map[r, c] == -1


def test_empty_field_names_the_density_range(tmp_path):
    empty = AnalyticSource(sphere(radius=-1.0))  # negative radius: nothing inside
    with pytest.raises(ExportError, match=r"density never crosses the threshold 10.*ranges from"):
        export_glb(empty, tmp_path / "e.glb")
    with pytest.raises(ExportError, match="Try a threshold between them"):
        export_glb(AnalyticSource(sphere()), tmp_path / "e.glb", threshold=1000.0)
    assert not (tmp_path / "e.glb").exists()


def test_absurd_options_are_refused_with_the_limit(tmp_path):
    src = AnalyticSource(sphere())
    with pytest.raises(ExportError, match="from 16 to 384"):
        export_glb(src, tmp_path / "x.glb", resolution=10000)
    with pytest.raises(ExportError, match="from 64 to 4096"):
        export_glb(src, tmp_path / "x.glb", texture_size=100000)
    with pytest.raises(ExportError, match="from 100 to 200000"):
        export_glb(src, tmp_path / "x.glb", target_faces=5)
    with pytest.raises(ExportError, match="unknown export options"):
        export_glb(src, tmp_path / "x.glb", colour="red")
    with pytest.raises(ExportError, match="'auto'"):
        export_glb(src, tmp_path / "x.glb", threshold="high")


def test_unwritable_path_is_a_clear_error_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ExportError, match="cannot write"):
        export_glb(AnalyticSource(sphere()), blocker / "model.glb", resolution=32)
    (tmp_path / "folder.glb").mkdir()
    with pytest.raises(ExportError, match="cannot write.*is a folder"):
        export_glb(AnalyticSource(sphere()), tmp_path / "folder.glb", resolution=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder.glb"]  # no temp files left


def test_pipeline_output_exports(tiny_pipeline, tmp_path):
    out = tiny_pipeline("a red cube", seed=0)
    result = out.export_glb(tmp_path / "t.glb", threshold="auto", resolution=32, texture_size=128)
    assert validate(result.path)["issues"]["numErrors"] == 0
    assert set(result.timings) == {"grid", "marching_cubes", "cleanup", "decimate", "uv", "bake", "write"}
