"""Packaging facts: import ig3d pulls in neither torch nor onnxruntime; kernels.info() answers
without a GPU; the CLI prints it."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ig3d


def test_import_is_light(tmp_path):
    code = ("import sys, ig3d; heavy = [m for m in ('torch', 'onnxruntime', 'tensorrt', 'PIL') if m in sys.modules];"
            "print(heavy)")
    # run outside the checkout so the installed package is imported, not the source tree
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_version():
    assert isinstance(ig3d.__version__, str) and ig3d.__version__.count(".") == 2


def test_kernels_info():
    info = ig3d.kernels.info()
    assert info["cpu_isa"] in ("avx512", "avx2", "sse2", "generic")
    assert info["cpu_isa"] == info["cpu_isas_supported"][0]
    assert isinstance(info["cuda_compiled"], bool)
    assert isinstance(info["cuda_devices"], int) and info["cuda_devices"] >= 0
    assert info["num_threads"] >= 1


def test_cli_info(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ig3d.cli", "info"], capture_output=True, text=True, check=True,
                         cwd=tmp_path)
    facts = json.loads(out.stdout)
    assert facts["version"] == ig3d.__version__ and "cpu_isa" in facts


@pytest.mark.skipif(os.environ.get("IG3D_EXPECT_CUDA") != "1", reason="set IG3D_EXPECT_CUDA=1 where nvcc must have been used")
def test_cuda_launcher_was_compiled():
    """CI builds with IG3D_CUDA=ON and checks the CUDA launcher really is in the module."""
    assert ig3d.kernels.info()["cuda_compiled"] is True


# --- `import ig3d` is enough; the version lives in one place; the extras bring what their features import

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _dist(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower()


def test_import_ig3d_is_enough_for_every_documented_name(tmp_path):
    """Every public ``ig3d.x.y`` the README names resolves after a bare ``import ig3d`` (no ``import
    ig3d.hub``); sub-modules appear in ``dir(ig3d)``."""
    names = sorted({m.rstrip(".") for m in re.findall(r"\big3d\.[A-Za-z_][\w.]*", (ROOT / "README.md").read_text())
                    if not any(part.startswith("_") for part in m.split("."))})
    names += ["ig3d.hub.fetch", "ig3d.hub.missing_weights_error", "ig3d.convert.convert", "ig3d.io.load_image",
              "ig3d.engines.cache_root", "ig3d.results.FaceResult", "ig3d.labels"]
    assert "ig3d.hub.fetch" in names
    code = ("import functools, json, ig3d\n"
            f"names = {names!r}\n"
            "bad = []\n"
            "for n in names:\n"
            "    try:\n"
            "        functools.reduce(getattr, n.split('.')[1:], ig3d)\n"
            "    except AttributeError as e:\n"
            "        bad.append(f'{n}: {e}')\n"
            "print(json.dumps(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert json.loads(out.stdout) == []
    assert {"hub", "convert", "io", "models"} <= set(dir(ig3d))
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        ig3d.no_such_name  # noqa: B018


def test_version_is_defined_once():
    from importlib.metadata import version

    from ig3d import _version

    assert ig3d.__version__ is _version.__version__
    assert version("ig3d") == ig3d.__version__  # what pip installed says the same
    project = _pyproject()
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    provider = project["tool"]["scikit-build"]["metadata"]["version"]
    assert provider["input"] == "ig3d/_version.py"
    assigned = [p.relative_to(ROOT).as_posix() for p in (ROOT / "ig3d").rglob("*.py")
                if re.search(r"^__version__\s*=", p.read_text(), re.M)]
    assert assigned == ["ig3d/_version.py"]


def test_build_reads_the_version_from_the_package(tmp_path):
    """The build backend's metadata (what a wheel would say) carries ig3d/_version.py's version and
    every extra, without compiling anything."""
    pytest.importorskip("scikit_build_core", reason="the build backend (pip install scikit-build-core)")
    code = ("import sys; from scikit_build_core.build import prepare_metadata_for_build_wheel as m; "
            "print(m(sys.argv[1]))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    if r.returncode != 0 and "CMake" in r.stderr and "not found" in r.stderr:
        pytest.skip("the build backend needs CMake")
    assert r.returncode == 0, r.stderr
    meta = (tmp_path / r.stdout.strip().splitlines()[-1] / "METADATA").read_text()
    assert re.search(r"^Version: (.+)$", meta, re.M).group(1) == ig3d.__version__
    extras = set(re.findall(r"^Provides-Extra: (.+)$", meta, re.M))
    assert {"torch", "convert", "train", "video", "test"} <= extras


def _third_party_imports(path: Path):
    """(module, extra or None) for what ``path`` imports: plain imports -> None, ``require(m, extra, ...)``
    -> extra. Imports inside ``try: ... except ImportError`` (optional, with a fallback) are left out."""
    tree = ast.parse(path.read_text())
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                or isinstance(h.type, ast.Tuple) and any(getattr(e, "id", "") in ("ImportError", "ModuleNotFoundError")
                                                         for e in h.type.elts)
                for h in node.handlers):
            guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    found = []
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.Import):
            found += [(a.name.split(".")[0], None) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], None))
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "require" and len(node.args) >= 2
              and all(isinstance(a, ast.Constant) for a in node.args[:2])):
            found.append((node.args[0].value.split(".")[0], node.args[1].value))
    return [(m, extra) for m, extra in found
            if m not in sys.stdlib_module_names and m not in ("ig3d", "__future__")]


def test_the_convert_extra_brings_everything_the_converters_import():
    """Every third-party module that ig3d.convert and ig3d.models import is a dependency of ig3d or
    comes with the ``convert`` extra; every ``require(module, extra)`` in ig3d names an extra that
    brings that module."""
    from ig3d._optional import PACKAGES

    project = _pyproject()["project"]
    core = {_dist(r) for r in project["dependencies"]}
    extras = {k: {_dist(r) for r in v} for k, v in project["optional-dependencies"].items()}
    assert {"torch", "onnx", "flatbuffers", "h5py"} <= extras["convert"]
    assert extras["train"] == {"torch"} and "torch" in extras["torch"]
    # video: PyAV decodes, OpenVINO runs the landmark model that tracking runs on every frame
    assert extras["video"] == {"av", "openvino"} and extras["openvino"] == {"openvino"}
    for path in sorted((ROOT / "ig3d" / "convert").glob("*.py")) + sorted((ROOT / "ig3d" / "models").glob("*.py")):
        for module, _ in _third_party_imports(path):
            dist = PACKAGES.get(module, module).lower()
            assert dist in core or dist in extras["convert"], f"{path.name} imports {module}: not in ig3d[convert]"
    for path in sorted((ROOT / "ig3d").rglob("*.py")):
        for module, extra in _third_party_imports(path):
            if extra is not None:
                dist = PACKAGES.get(module, module).lower()
                assert dist in extras.get(extra, set()), f"{path.name}: require({module!r}, {extra!r})"


def test_the_extras_the_readme_names_exist():
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"""(?:\.|ig3d)\[([a-z,]+)\]""", readme))
    extras = set(_pyproject()["project"]["optional-dependencies"])
    assert named and {e for group in named for e in group.split(",")} <= extras, named
    assert '".[torch]"' not in readme.split("## The Ig3D presets")[1].split("```python")[0], \
        "the conversion install command must name the convert extra"


def test_a_missing_optional_package_names_its_extra(monkeypatch):
    from ig3d._optional import MissingOptionalDependency, require

    monkeypatch.setitem(sys.modules, "onnx", None)  # what `import onnx` meets when it is not installed
    with pytest.raises(ImportError, match=r"ig3d convert needs the optional package onnx: "
                                          r"pip install 'ig3d\[convert\]'") as info:
        require("onnx", "convert", "ig3d convert")
    assert isinstance(info.value, MissingOptionalDependency)
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ImportError, match=r"pip install 'ig3d\[video\]'"):
        require("av", "video", "video input")
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"needs the package pillow: pip install pillow"):
        require("PIL", None, "decoding images")
    assert require("numpy", None, "anything") is np


def test_an_installed_but_broken_package_is_not_called_missing(monkeypatch):
    import importlib

    from ig3d._optional import require

    def broken(name, package=None):
        raise ImportError("libonnx.so: cannot open shared object file")

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(ImportError, match="installed but failed to import .*libonnx.so"):
        require("onnx", "convert", "ig3d convert")


def test_the_converters_say_which_extra_they_need(tmp_path):
    """Importing a converter or the torch networks without their package: the error names the extra."""
    code = ("import sys\n"
            "sys.modules[sys.argv[1]] = None\n"
            "try:\n"
            "    __import__(sys.argv[2])\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    for blocked, module, extra in [("flatbuffers", "ig3d.convert.tflite", "convert"),
                                   ("onnx", "ig3d.convert.tflite", "convert"),
                                   ("torch", "ig3d.models.smirk", "torch")]:
        r = subprocess.run([sys.executable, "-c", code, blocked, module], capture_output=True, text=True,
                           cwd=tmp_path, timeout=120)
        assert f"needs the optional package {blocked}: pip install 'ig3d[{extra}]'" in r.stdout, r.stdout + r.stderr


def test_core_stub_matches_the_module():
    """ig3d/_core.pyi declares exactly what the compiled module has, with the same argument names."""
    core = ig3d.kernels.core()
    stub = ast.parse((ROOT / "ig3d" / "_core.pyi").read_text())
    funcs = {n.name: n for n in stub.body if isinstance(n, ast.FunctionDef)}
    classes = {n.name: n for n in stub.body if isinstance(n, ast.ClassDef)}
    public = {n for n in dir(core) if not n.startswith("_")}
    assert set(funcs) | set(classes) == public

    def stub_args(fn: ast.FunctionDef):
        a = fn.args
        return [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg != "self"]

    def runtime_args(obj, name):
        sig = obj.__doc__.strip().splitlines()[0]  # pybind11: "name(a: T, b: T = x) -> R"
        assert sig.startswith(name + "("), sig
        inner = sig[len(name) + 1: sig.rindex(")")]
        return [p.split(":")[0].strip() for p in re.split(r",(?![^\[]*\])", inner) if p.strip()
                and p.split(":")[0].strip() not in ("self", "*")]

    for name, fn in funcs.items():
        assert stub_args(fn) == runtime_args(getattr(core, name), name), name
    head = classes["Head"]
    members = {n.name: n for n in head.body if isinstance(n, ast.FunctionDef)}
    runtime = {n for n in dir(core.Head) if not n.startswith("_")}
    assert set(members) - {"__init__"} == runtime
    for name in ("__init__", "forward"):
        assert stub_args(members[name]) == runtime_args(getattr(core.Head, name), name), name
