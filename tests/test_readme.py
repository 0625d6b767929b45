"""Every shell command of README.md runs (issue 11): documentation cannot drift from the code.

The commands are read from README's ```bash blocks (continuation lines joined, comments dropped) and each runs
in smoke form, in README order, in a workspace laid out like the repository (``configs/`` linked, generated
data where README names real data):

* ``lightning`` / ``defectfm`` run in this process through ``common.cli.main``;
* Lightning runs get the model family's tiny preset stacked after the experiment config (before any trainer
  preset, so ``configs/trainer/debug.yaml`` stays last), small images, no DataLoader workers, and fits without
  the debug preset one epoch; the tiny stage-1/stage-2 presets' ``callbacks: []`` is undone by putting back
  the experiment's own ModelCheckpoint callbacks (later commands read the checkpoints where README says);
* placeholders become real things: ``EXPERIMENT.yaml`` the demo config, ``--ckpt_path ...`` the stage-2
  checkpoint of the stage-2 fit above it, ``/data/my_line`` and ``/data/new_batch`` generated folders,
  ``../shared/data/neu_seg`` generated NEU-Seg-like data;
* a command needing another's output (a checkpoint, an ONNX file, a manifest) runs that one first if needed.

Only the commands in :data:`SKIPPED` (a GPU cluster, or this test suite itself) and :data:`SLOW` are not run
in the fast suite; both are listed here explicitly, and each must still be in the README.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml

from common.cli import main
from common.data.demo import generate_demo_dataset
from tests.conftest import REPO, blob_pair, write_image

README = REPO / "README.md"

SKIPPED = {  # README command -> why it cannot run here (the list may not grow silently)
    "make test": "runs this test suite itself",
    "srun --nodes=4 --ntasks-per-node=8 --gpus-per-node=8 lightning fit --config configs/stage1_diffusion.yaml "
    "--config configs/trainer/multinode.yaml --trainer.num_nodes 4":
        "SLURM, 4 nodes x 8 GPUs (tests/test_cli.py stacks the debug preset on multinode.yaml instead)",
    "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
    "'.whl/*.whl' '&&' export 'PYTHONPATH=$PWD:/tmp/site' HF_HUB_OFFLINE=1 '&&' python3 -m benchmarks.gpu":
        "a bare GPU machine with the wheels of make gpu-wheels (tests/benchmarks/test_gpu_check.py runs the same "
        "script with --dry)",
}
SERVER = ("starts a server that runs until stopped, or talks to one (tests/serve/ start the same command on a free "
          "loopback port and send these requests)")
for _served in ("defectfm serve --ckpt_path runs/demo/checkpoints/last.ckpt --port 8000",
                "curl -s -F image=@data/demo/plate/test/scratch/000.png -F id=line1-0001 http://127.0.0.1:8000/predict",
                "curl -s -F image=@data/demo/plate/test/scratch/000.png -F 'defect_types=[good,scratch,dent]' "
                "-F image_threshold=0.6 -F overlay=true http://127.0.0.1:8000/predict",
                "curl -s http://127.0.0.1:8000/info",
                "defectfm serve --ckpt_path runs/folder/checkpoints/last.ckpt --review_dir runs/new_batch --port 8000"):
    SKIPPED[_served] = SERVER
SKIPPED["lightning fit --config configs/clipmdc/folder.yaml --data.init_args.reader.init_args.root runs/new_batch "
        "--data.init_args.reader.init_args.labels_csv labels.csv"] = (
    "needs the labels CSV of an operator's review session (tests/serve/test_review.py reviews a predict run over "
    "HTTP and runs this command on the CSV it wrote)")
SLOW = {  # README command -> why it takes minutes (runs with -m slow)
    "make demo": "installs the project and trains the demo model (offline_real) for real",
    "make demo-diffusion": "trains the demo VAE and stage-1 U-Net for about 15 minutes (run here with --quick)",
}

TINY = {  # experiment config prefix -> the family's tiny preset
    "configs/clipmdc/": "configs/clipmdc/model/tiny.yaml",
    "configs/stage1_diffusion.yaml": "configs/diffdefect/stage1_tiny.yaml",
    "configs/diffdefect/stage1_": "configs/diffdefect/stage1_tiny.yaml",
    "configs/diffdefect/stage2_": "configs/diffdefect/stage2_tiny.yaml",
}
PLACEHOLDERS = {"EXPERIMENT.yaml": "configs/clipmdc/demo.yaml", "...": "runs/stage2/checkpoints/last.ckpt"}
LIGHTNING = ("fit", "validate", "test", "predict")


def readme_commands() -> list[str]:
    """The commands of README's ```bash blocks, one string each, in order."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                commands.append(shlex.join(argv))
    return commands


COMMANDS = readme_commands()


def test_readme_has_the_commands_it_should() -> None:
    assert len(COMMANDS) >= 15
    assert any(c.startswith("defectfm predict --ckpt_path") for c in COMMANDS)
    assert any("configs/clipmdc/folder.yaml" in c for c in COMMANDS)
    for listed in [*SKIPPED, *SLOW]:  # a skip for a command README no longer has is stale: remove it
        assert listed in COMMANDS, f"{listed!r} is listed in tests/test_readme.py but no longer in README.md"


# ---------------------------------------------------------------------------- workspace
def _neu_like(root: Path, rng: np.random.Generator) -> None:
    (root / "labels.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "labels.txt").write_text("__ignore__\n_background_\ninclusions\npatches\nscratches\n")
    for split, n in (("train", 6), ("val", 3), ("test", 3)):
        for i in range(n):
            img, m = blob_pair(rng)
            write_image(root / "img_dir" / split / f"{i:06d}.jpg", img)
            write_image(root / "ann_dir" / split / f"{i:06d}.png", m.astype(np.uint8) * (1 + i % 3))


def _my_line(root: Path, rng: np.random.Generator) -> None:
    for cls, n in (("good", 6), ("scratch", 4), ("dent", 4)):
        for i in range(n):
            write_image(root / cls / f"{cls}_{i}.png", blob_pair(rng, defect=cls != "good")[0])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<tmp>/repo`` (the working directory: ``configs`` linked, ``data/demo`` generated) next to
    ``<tmp>/shared/data/neu_seg``, plus the folders README's placeholders name."""
    tmp = tmp_path_factory.mktemp("readme")
    repo = tmp / "repo"
    repo.mkdir()
    (repo / "configs").symlink_to(REPO / "configs")
    rng = np.random.default_rng(0)
    generate_demo_dataset(repo / "data" / "demo", image_size=48, n_train_good=3, n_test_good=2, n_test_defect=2)
    _neu_like(tmp / "shared" / "data" / "neu_seg", rng)
    _my_line(tmp / "my_line", rng)
    for i in range(3):
        write_image(tmp / "new_batch" / ("sub" if i else "") / f"new_{i}.png", blob_pair(rng)[0])
    return repo


# ---------------------------------------------------------------------------- smoke forms
def _configs(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]


def _tiny_for(config: str) -> str | None:
    return next((tiny for prefix, tiny in TINY.items() if config.startswith(prefix)), None)


def _with_tiny(argv: list[str]) -> list[str]:
    """Stacks the tiny preset after the last experiment config (trainer presets stay after it)."""
    configs = _configs(argv)
    experiment = [c for c in configs if not c.startswith("configs/trainer/")]
    tiny = _tiny_for(experiment[0]) if experiment else None
    if tiny is None or tiny in configs:
        return argv
    at = max(i for i, a in enumerate(argv) if a == "--config" and argv[i + 1] in experiment) + 2
    return [*argv[:at], "--config", tiny, *argv[at:]]


def _checkpoints_back(argv: list[str]) -> list[str]:
    """The experiment's ModelCheckpoint callbacks, put back after a tiny preset that empties the callbacks."""
    configs = _configs(argv)
    tinies = [yaml.safe_load((REPO / c).read_text()) for c in configs if c in TINY.values()]
    if not any(((t or {}).get("trainer") or {}).get("callbacks") == [] for t in tinies):
        return []
    own = ((yaml.safe_load((REPO / configs[0]).read_text()) or {}).get("trainer") or {}).get("callbacks") or []
    kept = [cb for cb in own if cb.get("class_path", "").endswith("ModelCheckpoint")]
    return ["--trainer.callbacks", json.dumps(kept)] if kept else []


DEMO_SIZES = ["--image-size", "48", "--n-train-good", "3", "--n-test-good", "2", "--n-test-defect", "2"]
"""The workspace's demo data (:func:`workspace`): ``defectfm demo-data`` in smoke form writes the same."""


def _usage_brackets(argv: list[str]) -> list[str]:
    """A usage line's optional groups (``[--shards]``, ``[--names FILE]``) are run, without their brackets; a
    value such as ``"[good,dent]"`` is no group."""
    out, inside = [], False
    for a in argv:
        if a.startswith("[-"):
            inside, a = True, a[1:]
        if inside and a.endswith("]"):
            inside, a = False, a[:-1]
        out.append(a)
    return out


def _globs(argv: list[str], repo: Path) -> list[str]:
    """Shell globs expanded in the workspace; of data configs (``configs/data/*.yaml``) only those whose data the
    workspace has (the generated demo and NEU-Seg-like data)."""
    out = []
    for a in argv:
        if "*" not in a:
            out.append(a)
            continue
        for match in sorted(repo.glob(a)):
            cfg = yaml.safe_load(match.read_text()) or {}
            reader = (((cfg.get("data") or {}).get("init_args") or {}).get("reader") or {}).get("init_args") or {}
            if "root" not in reader or (repo / reader["root"]).exists():
                out.append(str(match.relative_to(repo)))
    return out


def smoke(command: str, repo: Path) -> list[str]:
    """The smoke-form arguments of ``common.cli.main`` for one README command."""
    tmp = repo.parent
    argv = _globs(_usage_brackets(shlex.split(command)), repo)
    argv = [PLACEHOLDERS.get(a, a) for a in argv]
    argv = [a.replace("/data/my_line", str(tmp / "my_line")).replace("/data/new_batch", str(tmp / "new_batch"))
            for a in argv]
    program, args = argv[0], argv[1:]
    assert program in ("lightning", "defectfm"), f"no smoke form for README command {command!r}: add one here"
    sub = args[0]
    if sub in LIGHTNING and "--input" not in args:
        args = _with_tiny(args)
        experiment = _configs(args)[0]
        debug = "configs/trainer/debug.yaml" in _configs(args)
        extra = ["--trainer.enable_progress_bar", "false"]
        if experiment.startswith("configs/clipmdc/"):
            extra += ["--data.init_args.image_size", "64", "--data.init_args.num_workers", "0"]
        if sub == "fit" and not debug and "--print_config" not in args:
            extra += ["--trainer.max_epochs", "1", "--trainer.logger", "false", *_checkpoints_back(args)]
            if experiment.startswith("configs/stage1_diffusion"):  # README trains it on precomputed latents
                extra += ["--data.init_args.mode", "latents", "--trainer.max_steps", "2"]
        return [*args[:-1], *extra, args[-1]] if args[-1] == "--print_config" else [*args, *extra]
    if sub == "predict":  # defectfm predict --input ...
        return [*args, "--num_workers", "0", "--trainer.enable_progress_bar", "false"]
    if sub in ("export", "precompute"):
        tiny = _tiny_for(_configs(args)[0])
        args = [*args, "--config", tiny] if tiny else args
        if sub == "export" and tiny == TINY["configs/clipmdc/"]:  # the tiny ViT's native size: no resampled
            size = repo / "export_size.yaml"  # position embedding in the graph (tests/clipmdc/test_export.py)
            size.write_text("data:\n  init_args:\n    image_size: 160\n")
            args = [*args, "--config", str(size)]
        return [*args, "--device", "cpu", "--num-workers", "0"] if sub == "precompute" else args
    if sub == "demo-data":
        return [*args, *DEMO_SIZES]
    if sub == "sample":  # two denoising steps of the tiny U-Net instead of README's 25
        args = [("2" if i and args[i - 1] == "--steps" else a) for i, a in enumerate(args)]
        return [*args, "--device", "cpu"]
    return args


PRODUCES = {  # an output later commands read -> how to recognise the README command writing it
    "runs/demo/checkpoints/last.ckpt": lambda c: c.startswith("lightning fit --config configs/clipmdc/demo.yaml")
    and "debug.yaml" not in c and "--print_config" not in c,
    "runs/folder/checkpoints/last.ckpt": lambda c: c.startswith("lightning fit --config configs/clipmdc/folder.yaml"),
    "model.onnx": lambda c: c.startswith("defectfm export"),
    "data/demo_pairs.jsonl": lambda c: c.startswith("defectfm captions"),
    "data/latents": lambda c: c.startswith("defectfm precompute"),
    "runs/stage1/checkpoints/last.ckpt": lambda c: c.startswith("lightning fit --config configs/stage1_diffusion.yaml")
    and "debug.yaml" not in c,
    "runs/stage2/checkpoints/last.ckpt": lambda c: c.startswith("lightning fit --config configs/diffdefect/stage2_")
    and "debug.yaml" not in c,
    "corpus/manifest.jsonl": lambda c: c.startswith("defectfm corpus") and "--out corpus" in c,
    "runs/generalist/checkpoints/last.ckpt": lambda c: c.startswith("lightning fit --config configs/clipmdc/generalist"),
    "runs/bracket.ckpt": lambda c: c.startswith("defectfm newline") and "runs/bracket.ckpt" in c,
}


def run(command: str, repo: Path, monkeypatch: pytest.MonkeyPatch, depth: int = 0) -> None:
    """Runs the smoke form of ``command`` in ``repo``, after the commands whose outputs it reads."""
    argv = smoke(command, repo)
    for output, writes in PRODUCES.items():
        if output in argv and not writes(command) and not (repo / output).exists():
            producer = next((c for c in COMMANDS if writes(c)), None)
            assert producer is not None and depth < 3, f"{command!r} reads {output}, which no README command writes"
            run(producer, repo, monkeypatch, depth + 1)
    monkeypatch.chdir(repo)
    try:
        code = main(argv)
    except SystemExit as e:  # --print_config
        code = e.code or 0
    assert code == 0, f"README command failed: {command}\n(smoke form: {shlex.join(argv)})"
    for output, writes in PRODUCES.items():
        if writes(command):
            assert (repo / output).exists(), f"{command!r} should write {output} (README reads it there)"


def _case(command: str) -> object:
    if command in SKIPPED:
        return pytest.param(command, marks=pytest.mark.skip(reason=SKIPPED[command]))
    if command in SLOW:
        return pytest.param(command, marks=pytest.mark.slow)
    return command


@pytest.mark.parametrize("command", [_case(c) for c in COMMANDS], ids=[f"{i:02d}" for i in range(len(COMMANDS))])
def test_readme_command(command: str, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if command == "make demo":  # the Makefile's demo: generated data, fit, test, predict (one epoch here)
        from common.demo import main as demo_main

        monkeypatch.chdir(workspace)
        demo_main(["--data", "data/make_demo", "--max-epochs", "1"])
        assert (workspace / "runs" / "demo" / "predict" / "predictions.jsonl").is_file()
        return
    if command == "make demo-diffusion":  # the Makefile's diffusion demo, as a smoke run (tiny counts and steps)
        from diffdefect.stage1.demo import main as diffusion_demo_main

        monkeypatch.chdir(workspace)
        diffusion_demo_main(["--corpus", "data/demo_stage1", "--out", "runs/demo_diffusion", "--quick"])
        assert (workspace / "runs" / "demo_diffusion" / "grid.png").is_file()
        return
    run(command, workspace, monkeypatch)
