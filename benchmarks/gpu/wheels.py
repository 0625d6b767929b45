"""``make gpu-wheels``: the wheels a bare GPU machine needs to run ``python -m benchmarks.gpu``.

The lent GPU machine (CPython 3.12, manylinux x86-64, no package registry) has torch, lightning, timm,
transformers, accelerate, onnxruntime, numpy, scipy, pillow, opencv... (:data:`BARE`, read off such a machine)
but not diffusers, open_clip_torch, albumentations, jsonargparse, pycocotools, perlin-numpy or torch-fidelity.
This writes their wheels (and those of their own missing requirements, :data:`PINS`), plus the project's own
wheel, into ``.whl/`` (ignored by git), then checks the set:

* every ``Requires-Dist`` of every wheel (markers evaluated for CPython 3.12 on Linux x86-64, requested extras
  followed, e.g. ``jsonargparse[signatures]``) is met by a wheel of the set or by a package of :data:`BARE`
  (version specifiers checked where the version there is known, :data:`BARE_VERSIONS`);
* one version of each distribution (two make the install fail), every wheel installable on cp312 manylinux;
* the wheels plus the working tree stay far under the 64 MiB a device call carries.

``--check-import`` also installs the same pins (as cp311 wheels, this machine's Python) into a throwaway
``--target`` folder and imports every module the GPU check uses with a Python that cannot see any package
missing from :data:`BARE` except through that folder (a ``sitecustomize`` import blocker), so a wheel left out
of the set fails here instead of on the GPU machine.

On the GPU machine (README, "GPU")::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site && python3 -m benchmarks.gpu
"""

from __future__ import annotations

import argparse
import email.parser
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
WHEEL_DIR = REPO / ".whl"
CARRY_LIMIT_MIB = 64.0
PYTHON_VERSION = "3.12"
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + ["manylinux2014_x86_64",
                                                                                    "manylinux1_x86_64"]

PINS: dict[str, str] = {
    # what the project imports and the bare machine lacks (the versions of this repository's dev venv)
    "diffusers": "0.42.1",
    "open_clip_torch": "3.3.0",
    "albumentations": "2.0.8",
    "jsonargparse": "4.46.0",  # <4.47, as pyproject.toml pins it
    "pycocotools": "2.0.11",
    "perlin-numpy": "0.0.1",  # pure Python; built from its sdist when no wheel is published
    "torch-fidelity": "0.4.0",
    # their requirements that the bare machine lacks too
    "docstring_parser": "0.18.0",  # jsonargparse[signatures]
    "typeshed_client": "2.15.0",  # jsonargparse[signatures]
    "albucore": "0.0.24",  # albumentations
    "pydantic": "2.14.4",  # albumentations
    "pydantic_core": "2.50.5",  # pydantic
    "annotated-types": "0.8.0",  # pydantic
    "typing-inspection": "0.4.5",  # pydantic
    "typing_extensions": "4.16.0",  # pydantic needs >= 4.16.0; the bare machine's version was not read
    "stringzilla": "5.3.2",  # albucore
    "simsimd": "6.5.16",  # albucore
    "ftfy": "6.3.1",  # open_clip
    "wcwidth": "0.9.4",  # ftfy
    "importlib_metadata": "10.2.0",  # diffusers
    "lazy-importer": "0.1.0",  # importlib_metadata
}
"""Distributions carried as wheels, pinned to the versions the test suite runs with here."""

BARE = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flax fonttools formulaic
frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader
lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl
meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp""".split()
"""Python packages of the lent GPU machine's image (read on such a machine, 2026-11-17)."""

BARE_VERSIONS = {
    "accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2", "onnx": "1.23.1", "onnxruntime": "1.30.0",
    "pytorch-lightning": "2.6.6", "lightning": "2.6.6", "safetensors": "0.8.0", "tokenizers": "0.23.2",
    "torch": "2.11.0", "torchmetrics": "1.9.0", "torchvision": "0.26.0", "transformers": "5.17.0", "triton": "3.6.0",
}
"""Versions of some :data:`BARE` packages, as one session's ``pip list`` there showed them."""

TARGET_ENV = {
    "python_version": PYTHON_VERSION, "python_full_version": "3.12.3", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
    "platform_machine": "x86_64", "os_name": "posix", "implementation_version": "3.12.3",
}


def canonical(name: str) -> str:
    from packaging.utils import canonicalize_name

    return str(canonicalize_name(name))


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def download(pins: dict[str, str], dest: Path, python_version: str = PYTHON_VERSION) -> None:
    """``pip download --no-deps --only-binary=:all:`` of each pin for CPython ``python_version`` manylinux x86-64;
    a pin without a compatible wheel is built from its sdist with ``pip wheel --no-deps`` (pure Python only)."""
    dest.mkdir(parents=True, exist_ok=True)
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    for name, version in pins.items():
        spec = f"{name}=={version}"
        try:
            _pip("download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", python_version,
                 "--implementation", "cp", *plat, "-d", str(dest), spec)
        except subprocess.CalledProcessError:
            print(f"no wheel of {spec} for cp{python_version}: building one from its sdist", flush=True)
            _pip("wheel", "-q", "--no-deps", "--no-binary", name, "-w", str(dest), spec)


def build_project(dest: Path) -> Path:
    """``pip wheel --no-deps .``: the project's own wheel (replaces an older one in ``dest``)."""
    for old in dest.glob("defectfm-*.whl"):
        old.unlink()
    leftovers = [p for p in (REPO / "build", REPO / "defectfm.egg-info") if not p.exists()]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            _pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp, str(REPO))
        finally:
            for p in leftovers:  # setuptools builds in the source tree
                shutil.rmtree(p, ignore_errors=True)
        (wheel,) = Path(tmp).glob("defectfm-*.whl")
        return Path(shutil.copy2(wheel, dest))


# ----------------------------------------------------------------------------- checking
def wheel_metadata(path: Path) -> Any:
    """The parsed ``METADATA`` of a wheel."""
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(z.read(name).decode("utf-8"))


def _tags_ok(path: Path) -> bool:
    from packaging.tags import compatible_tags, cpython_tags
    from packaging.utils import parse_wheel_filename

    platforms = [f"manylinux_2_{n}_x86_64" for n in range(17, 40)] + ["manylinux2014_x86_64", "manylinux1_x86_64",
                                                                       "linux_x86_64"]
    supported = set(cpython_tags((3, 12), platforms=platforms)) | set(compatible_tags((3, 12), "cp312", platforms))
    return bool(parse_wheel_filename(path.name)[3] & supported)


def check(folder: Path, extras: dict[str, set[str]] | None = None) -> dict[str, Any]:
    """Resolves every wheel's requirements against the set and :data:`BARE` (see the module docstring).

    Returns:
        ``{"wheels": {name: version}, "problems": [...], "unverified": [...], "mib": size}``; an empty
        ``problems`` list means the set is complete.
    """
    from packaging.requirements import Requirement
    from packaging.version import Version

    wheels = sorted(folder.glob("*.whl"))
    meta = {w: wheel_metadata(w) for w in wheels}
    have: dict[str, list[str]] = {}
    for m in meta.values():
        have.setdefault(canonical(m["Name"]), []).append(m["Version"])
    problems = [f"{n}: {len(v)} versions {v} (keep one)" for n, v in have.items() if len(v) > 1]
    problems += [f"{w.name}: not installable on CPython 3.12 manylinux x86-64" for w in wheels if not _tags_ok(w)]
    bare = {canonical(n) for n in BARE}
    bare_versions = {canonical(k): v for k, v in BARE_VERSIONS.items()}
    problems += [f"{n}: carried although the GPU machine has it" for n in have if n in bare
                 and n != "typing-extensions"]
    unverified: list[str] = []
    wanted = {canonical(k): set(v) for k, v in (extras or {"defectfm": {"signatures"}, "jsonargparse": {"signatures"}}).items()}
    queue = [(canonical(m["Name"]), "") for m in meta.values()]
    for dist, extra in [(d, e) for d, es in wanted.items() for e in es]:
        queue.append((dist, extra))
    seen: set[tuple[str, str]] = set()
    by_name = {canonical(m["Name"]): m for m in meta.values()}
    while queue:
        dist, extra = queue.pop()
        if (dist, extra) in seen or dist not in by_name:
            continue
        seen.add((dist, extra))
        for line in by_name[dist].get_all("Requires-Dist") or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(TARGET_ENV | {"extra": extra}):
                continue
            name = canonical(req.name)
            for e in req.extras:
                queue.append((name, e))
            if name in have:
                v = have[name][0]
                if req.specifier and not req.specifier.contains(Version(v), prereleases=True):
                    problems.append(f"{dist} needs {req}, the set has {name} {v}")
            elif name in bare:
                v = bare_versions.get(name)
                if v is None:
                    if req.specifier:
                        unverified.append(f"{dist} needs {req}: the GPU machine's version is not known")
                elif req.specifier and not req.specifier.contains(Version(v), prereleases=True):
                    problems.append(f"{dist} needs {req}, the GPU machine has {name} {v}")
            else:
                problems.append(f"{dist} needs {req}: neither carried nor on the GPU machine")
    size = sum(w.stat().st_size for w in wheels) / 2**20
    return {"wheels": {n: v[0] for n, v in sorted(have.items())}, "problems": problems,
            "unverified": sorted(set(unverified)), "mib": size}


def tree_mib() -> float:
    """Size of what a device call sends besides the carried folders: tracked and untracked-not-ignored files."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True).stdout.decode().split("\0")
    return sum((REPO / f).stat().st_size for f in out if f and (REPO / f).is_file()) / 2**20


# ----------------------------------------------------------------------------- a bare machine, simulated here
_BLOCKER = '''"""Written by benchmarks.gpu.wheels: makes this Python see only what the bare GPU machine has."""
import re
import sys
from importlib.machinery import PathFinder

SITE = {site!r}
ONLY_SITE = set({only_site!r})
BLOCK = set({block!r})
ONLY_SITE_DISTS = set({only_site_dists!r})
BLOCK_DISTS = set({block_dists!r})


class BareMachinePathFinder:
    """PathFinder that cannot see blocked modules and sees carried ones only in SITE (absent, not broken:
    ``importlib.util.find_spec`` gives None, as on the bare machine)."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if "." not in name:
            if name in BLOCK:
                return None
            if name in ONLY_SITE:
                return PathFinder.find_spec(name, [SITE], target)
        return PathFinder.find_spec(name, path, target)

    @classmethod
    def invalidate_caches(cls):
        return PathFinder.invalidate_caches()

    @classmethod
    def find_distributions(cls, *args, **kwargs):
        for dist in PathFinder.find_distributions(*args, **kwargs):
            name = re.sub(r"[-_.]+", "-", (dist.metadata["Name"] or "")).lower()
            if name in BLOCK_DISTS or (name in ONLY_SITE_DISTS and not str(dist.locate_file("")).startswith(SITE)):
                continue
            yield dist


sys.meta_path[:] = [BareMachinePathFinder if f is PathFinder else f for f in sys.meta_path]
'''

CHECK_IMPORTS = ("benchmarks.gpu.__main__", "common.cli", "diffdefect.stage1.precompute", "clipmdc.presets",
                 "common.data", "common.metrics", "diffdefect", "clipmdc", "jsonargparse", "open_clip", "diffusers",
                 "albumentations", "pycocotools.mask", "perlin_numpy", "torch_fidelity")


def _local_closure(names: set[str]) -> set[str]:
    """``names`` plus, transitively, what their versions installed here require (this machine's huggingface_hub
    may need a package that the GPU machine's older one does not: its counterpart is there, whatever it is)."""
    import importlib.metadata

    from packaging.requirements import Requirement

    out, queue = set(names), list(names)
    while queue:
        try:
            reqs = importlib.metadata.distribution(queue.pop()).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in reqs:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            name = canonical(req.name)
            if name not in out:
                out.add(name)
                queue.append(name)
    return out


def bare_environment(site: Path, blocker_dir: Path, carried: set[str]) -> dict[str, str]:
    """Environment variables under which this Python imports packages the way the bare GPU machine would:
    :data:`BARE` (and what their local versions need) from this interpreter's site-packages, carried
    distributions only from ``site``, nothing else (the metadata check of :func:`check` covers what the local
    versions' extra requirements could hide)."""
    import importlib.metadata

    bare = _local_closure({canonical(n) for n in BARE} - carried)
    only_site, block = [], []
    for module, dists in importlib.metadata.packages_distributions().items():
        names = {canonical(d) for d in dists}
        if "defectfm" in names or not module.isidentifier():
            continue
        if names & carried:
            only_site.append(module)
        elif not names & bare:
            block.append(module)
    installed = {canonical(d.metadata["Name"] or "") for d in importlib.metadata.distributions()}
    blocker_dir.mkdir(parents=True, exist_ok=True)
    (blocker_dir / "sitecustomize.py").write_text(_BLOCKER.format(
        site=str(site), only_site=sorted(only_site), block=sorted(block), only_site_dists=sorted(carried),
        block_dists=sorted(installed - bare - carried - {"defectfm"})))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(blocker_dir), str(REPO), str(site)])
    env["PYTHONNOUSERSITE"] = "1"
    return env


def check_import(dry: bool = False) -> None:
    """Installs the pins (cp3.x wheels of this Python) and the project wheel into a throwaway ``--target``
    folder and imports :data:`CHECK_IMPORTS` (and parses the stage-1 config with the CLI) as on the bare
    machine; with ``dry``, runs ``python -m benchmarks.gpu --dry`` there too.

    Raises:
        subprocess.CalledProcessError: A missing wheel (an import or the run failed).
    """
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    cache = Path(tempfile.gettempdir()) / f"defectfm-wheels-cp{here.replace('.', '')}"
    download(PINS, cache, here)
    carried = {canonical(wheel_metadata(w)["Name"]) for w in cache.glob("*.whl")}
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        project = sorted(WHEEL_DIR.glob("defectfm-*.whl")) or [build_project(Path(tmp))]
        _pip("install", "-q", "--no-index", "--no-deps", "--no-compile", "--target", str(site),
             *map(str, sorted(cache.glob("*.whl"))), *map(str, project))
        env = bare_environment(site, Path(tmp) / "blocker", carried)
        code = "; ".join(f"import {m}" for m in CHECK_IMPORTS) + "; print('imports ok')"
        subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=REPO)
        subprocess.run([sys.executable, "-m", "common.cli", "fit", "--config", "configs/stage1_diffusion.yaml",
                        "--print_config"], env=env, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        print("the stage-1 config parses (LightningCLI + jsonargparse[signatures])", flush=True)
        if dry:
            subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--dry"], env=env, check=True, cwd=REPO)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.wheels", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=WHEEL_DIR, help="wheel folder (default .whl/, ignored by git)")
    p.add_argument("--no-download", action="store_true", help="only check the folder")
    p.add_argument("--check-import", action="store_true", help="also import everything on a simulated bare machine")
    p.add_argument("--check-dry", action="store_true", help="with --check-import: run `benchmarks.gpu --dry` there")
    a = p.parse_args(argv)
    if not a.no_download:
        keep = {f"{canonical(n)}-{v}" for n, v in PINS.items()}
        for old in a.out.glob("*.whl"):  # one version of each: drop wheels of other pins
            n, v = old.name.split("-")[:2]
            if f"{canonical(n)}-{v}" not in keep and not old.name.startswith("defectfm-"):
                old.unlink()
        download(PINS, a.out)
        build_project(a.out)
    res = check(a.out)
    tree = tree_mib()
    total = res["mib"] + tree
    print(json.dumps(res["wheels"], indent=1))
    print(f"{len(res['wheels'])} wheels, {res['mib']:.1f} MiB; working tree {tree:.1f} MiB; "
          f"together {total:.1f} of the {CARRY_LIMIT_MIB:.0f} MiB a device call carries")
    for u in res["unverified"]:
        print(f"unverified: {u}")
    problems = list(res["problems"])
    if total > CARRY_LIMIT_MIB * 0.75:
        problems.append(f"wheels + tree = {total:.1f} MiB: too close to the {CARRY_LIMIT_MIB:.0f} MiB limit")
    for prob in problems:
        print(f"PROBLEM: {prob}", file=sys.stderr)
    if problems:
        return 1
    print("complete: every requirement is carried or on the GPU machine")
    if a.check_import:
        check_import(a.check_dry)
    return 0


if __name__ == "__main__":
    sys.exit(main())
