"""Every command in README.md and docs/*.md composes with Hydra and passes its script's validation (no run).

A command is a ``python <script>.py ...`` / ``torchrun ... <script>.py ...`` / ``vitquant-<script> ...`` line
(``VAR=value`` prefixes and a ``$`` prompt allowed) in a fenced shell code block (``bash``, ``sh``, ``console``
or no language), or an inline code span that starts with one. It is composed with the compose API from
``vitquant.cli.CONF_DIR`` and the config name the script's ``run()`` hands to ``preflight``, then checked with
the validation function the script uses, so a renamed key, a missing ``+`` or a removed option fails CI.

Conventions for examples (also in docs/architecture.md, "Documentation"):
* ``<placeholder>``, ``$VAR`` / ``${VAR}`` and a value ``...`` (``data.root=...``) stand for a value the reader
  fills in: they become ``placeholder`` (so ``model=...`` fails: no such model; name one).
* a lone ``...`` stands for "your other overrides": it is dropped and the rest is checked.
* paths need not exist and ``device=cuda`` need not have a GPU: validation runs with file checks and CUDA
  availability answering yes, so it checks names, values and ranges, not this machine.
* ``-m`` sweeps: each comma list is composed value by value (the others at their first value).
* ``hydra.*`` / ``hydra/...`` overrides (launcher, sweep folder) are composed once more with Hydra's own config
  (``return_hydra_config``), so a launcher option or key that does not exist fails too.
* ``<!-- docs-test: skip -->`` on the line before a code fence exempts that block (say why next to it).
"""
from __future__ import annotations

import functools
import importlib
import pathlib
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

import vitquant.config
import vitquant.qat.config
from vitquant.cli import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
SKIP_MARK = "<!-- docs-test: skip -->"
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh"}
SCRIPT = re.compile(r"^(?:.*/)?(calibrate|evaluate|train|export|soft_labels)\.py$|^vitquant-(calibrate|evaluate|train|"
                    r"export|soft-labels)$")
SHELL_SEPARATORS = {"&&", "||", ";", "|", ">", ">>", "2>", "&"}
LAUNCH = re.compile(r"^(\$|[A-Za-z_][A-Za-z0-9_]*=\S*|\S*python3?|torchrun|srun|-\S+)$")  # what may precede a script
HYDRA_OWN = ("hydra.", "hydra/", "+hydra", "~hydra")


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    script: str
    overrides: tuple[str, ...]
    multirun: bool

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.script} {' '.join(self.overrides)}"


def shell_snippets(text: str) -> list[tuple[int, str]]:
    """(line number, text) of each command of a shell code block (``\\`` continuations joined) and of each
    inline code span outside code blocks that starts with a command (it may wrap over lines)."""
    lines = text.splitlines()
    snippets: list[tuple[int, str]] = []
    prose = list(lines)  # the text with code blocks blanked, for the inline spans
    i = 0
    while i < len(lines):
        fence = re.match(r"^\s*```+\s*(\S*)", lines[i])
        if not fence:
            i += 1
            continue
        skip = i > 0 and lines[i - 1].strip() == SKIP_MARK
        lang, start = fence.group(1).lower(), i
        i += 1
        while i < len(lines) and not re.match(r"^\s*```", lines[i]):
            i += 1
        prose[start:i + 1] = [""] * (i + 1 - start)
        if not skip and lang in SHELL_LANGS:
            command, first = "", start + 2
            for k in range(start + 1, i):
                command += lines[k].rstrip()
                if command.endswith("\\"):
                    command = command[:-1] + " "
                    continue
                snippets.append((first, command))
                command, first = "", k + 2
        i += 1
    text = "\n".join(prose)
    for span in re.finditer(r"`([^`]+)`", text):
        if re.match(r"(python \S+\.py|torchrun |vitquant-|make )", span.group(1)):
            snippets.append((text.count("\n", 0, span.start()) + 1, " ".join(span.group(1).split())))
    return snippets


def fill_placeholders(token: str) -> str:
    token = re.sub(r"=\.\.\.$", "=placeholder", token)
    token = re.sub(r"<[^<>]+>", "placeholder", token)
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", "placeholder", token)


def commands_in(path: Path) -> list[Command]:
    found = []
    for line_no, snippet in shell_snippets(path.read_text()):
        snippet = re.sub(r"(^|\s)#.*$", "", snippet)  # a shell comment
        try:
            tokens = shlex.split(snippet)
        except ValueError:
            continue
        for k, token in enumerate(tokens):
            match = SCRIPT.match(token)
            if not match or not all(LAUNCH.match(t) for t in tokens[:k]):
                continue
            args = []
            for arg in tokens[k + 1:]:
                if arg in SHELL_SEPARATORS:
                    break
                args.append(arg)
            multirun = any(a in ("-m", "--multirun") for a in args)
            overrides = tuple(fill_placeholders(a) for a in args if a not in ("-m", "--multirun", "..."))
            name = (match.group(1) or match.group(2)).replace("-", "_")
            found.append(Command(str(path.relative_to(REPO)), line_no, name, overrides, multirun))
    return found


ALL_COMMANDS = [c for doc in DOCS for c in commands_in(doc)]


def script_contract(script: str, monkeypatch) -> tuple[str, object]:
    """The (config name, validation function) the script's ``run()`` passes to ``preflight``, by calling it
    with ``preflight`` recorded and ``main`` stubbed, so the test follows the scripts as they change."""
    module = importlib.import_module(f"vitquant.cli.{script}")
    seen: dict[str, object] = {}
    monkeypatch.setattr(module, "preflight", lambda name, validate, argv=None: seen.update(name=name, v=validate))
    monkeypatch.setattr(module, "main", lambda: None)
    module.run()
    return seen["name"], seen["v"]


def expanded(overrides: tuple[str, ...], multirun: bool) -> list[list[str]]:
    """The override lists to compose: one, or for a sweep each value of each comma list (others at their first)."""
    kept = [o for o in overrides if not o.startswith(HYDRA_OWN)]
    if not multirun:
        return [kept]
    parsed = OverridesParser.create().parse_overrides(kept)
    values = [list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.input_line] for o in parsed]
    keys = [f"{o.get_key_element()}=" if o.is_sweep_override() else "" for o in parsed]
    first = [k + v[0] for k, v in zip(keys, values)]
    runs = [first]
    for j, (key, options) in enumerate(zip(keys, values)):
        for value in options[1:]:
            runs.append(first[:j] + [key + value] + first[j + 1:])
    return runs


# The model and data a documented checkpoint of each task was calibrated with (see ``documented_runs``).
TASK_RUNS = {"classification": ("vit_cifar", "cifar10"), "detection": ("mask_rcnn_swin_tiny", "coco"),
             "instance_segmentation": ("mask_rcnn_swin_tiny", "coco"),
             "semantic_segmentation": ("upernet_swin_tiny", "ade20k")}


@functools.cache
def documented_runs() -> dict[str, DictConfig]:
    """The run config inside an example's ``quantized.pt``, per task: a calibration of that task's model."""
    runs = {}
    for task, (model, data) in TASK_RUNS.items():
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            runs[task] = compose("calibrate", overrides=[f"task={task}", f"model={model}", f"data={data}",
                                                         "data.root=/data"])
    return runs


def documented_run(value: str, key: str) -> DictConfig:
    """An example checkpoint's run config: the task its path names (``outputs/<task>/...``), else classification."""
    return next((cfg for task, cfg in documented_runs().items() if f"/{task}/" in f"/{value}"),
                documented_runs()["classification"])


def files_and_gpu_present(monkeypatch) -> None:
    """Validation checks names, values and ranges; the paths, files and the GPU of an example are the reader's.
    A path with an extension counts as a file (a name without one, such as an mm config name, is looked up as
    the package would); weights files count as readable and quantized checkpoints as ``documented_run``'s."""
    def present(real, file: bool = False):
        def check(self: pathlib.Path, *args, **kwargs) -> bool:
            if str(self.absolute()).startswith(sys.prefix):  # installed packages' own files (mm configs)
                return real(self, *args, **kwargs)
            return bool(self.suffix) or real(self, *args, **kwargs) if file else True
        return check

    for name in ("exists", "is_dir", "is_file"):
        monkeypatch.setattr(pathlib.Path, name, present(getattr(pathlib.Path, name), file=name == "is_file"))
    monkeypatch.setattr(pathlib.Path, "mkdir", lambda self, *a, **k: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for module in (vitquant.config, vitquant.qat.config):
        monkeypatch.setattr(module, "check_weights", lambda value, key: None)
        monkeypatch.setattr(module, "read_run_config", documented_run)


def test_docs_have_commands():
    scripts = {c.script for c in ALL_COMMANDS}
    assert {"calibrate", "evaluate", "train", "export", "soft_labels"} <= scripts, scripts


def check(command: Command, monkeypatch, tmp_path: Path) -> None:
    """Compose ``command`` (each job of a sweep) and run its script's validation; raise what the script would."""
    config_name, validate = script_contract(command.script, monkeypatch)
    monkeypatch.chdir(tmp_path)
    for overrides in expanded(command.overrides, command.multirun):
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=overrides)
        documented_runs()  # composed before the file system is stubbed
        with monkeypatch.context() as patched:
            files_and_gpu_present(patched)
            validate(cfg)
        cfg.out_dir = str(tmp_path)  # ${hydra:runtime.output_dir} has no value under the compose API
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    hydra_own = [o for o in command.overrides if o.startswith(HYDRA_OWN)]
    if hydra_own:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            compose(config_name, overrides=expanded(command.overrides, command.multirun)[0] + hydra_own,
                    return_hydra_config=True)


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=str)
def test_documented_command_composes_and_validates(command: Command, monkeypatch, tmp_path):
    check(command, monkeypatch, tmp_path)


BROKEN = """
```bash
python calibrate.py method=minmax quantizer@method.quantizers.post_softmax=dfq   # minmax names no post_softmax
python calibrate.py model=deit_smal bits=4
python train.py qat=vvtq resume=sometimes
vitquant-calibrate -m method=minmax,percentil
python export.py checkpoint=<run>/quantized.pt hydra.launcher.partiton=gpu
```
<!-- docs-test: skip -->
```bash
python calibrate.py method=nothing   # exempt
```
"""


def test_broken_examples_are_caught(monkeypatch, tmp_path):
    doc = REPO / "tests" / "broken_example.md"  # commands_in wants a path under the repo
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: BROKEN)
    commands = commands_in(doc)
    monkeypatch.undo()
    assert [c.script for c in commands] == ["calibrate", "calibrate", "train", "calibrate", "export"]
    for command in commands:
        with pytest.raises(Exception):  # noqa: B017 (Hydra, OmegaConf and UserError: whatever the script reports)
            check(command, monkeypatch, tmp_path)


def method_examples() -> list[tuple[str, str]]:
    """(doc, YAML text) of every ``yaml`` code block that defines a PTQ method (a ``Recipe``)."""
    return [(str(doc.relative_to(REPO)), block) for doc in DOCS
            for block in re.findall(r"```yaml\n(.*?)```", doc.read_text(), flags=re.S)
            if "vitquant.methods.Recipe" in block]


@pytest.mark.parametrize("doc,text", method_examples(), ids=lambda v: v if v.endswith(".md") else "")
def test_documented_method_config_builds_a_recipe(doc, text, tmp_path):
    import shutil

    from vitquant.pipelines.common import build_recipe

    conf = shutil.copytree(CONF_DIR, tmp_path / "conf")
    name = yaml_name(text)
    (conf / "method" / f"{name}.yaml").write_text(text)
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = compose("calibrate", overrides=[f"method={name}"])
    assert build_recipe(cfg.method).name == name


def yaml_name(text: str) -> str:
    return re.search(r"^name: (\S+)$", text, flags=re.M).group(1)


def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", (REPO / "Makefile").read_text(), flags=re.M))


def make_targets_used(text: str) -> set[str]:
    return {t for _, s in shell_snippets(text) for t in re.findall(r"(?:^|\s)make ([a-z][\w-]*)", s)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_documented_make_targets_exist(doc: Path):
    unknown = make_targets_used(doc.read_text()) - make_targets()
    assert not unknown, f"{doc.name} names make targets the Makefile lacks: {sorted(unknown)}"


def test_unknown_make_target_is_caught():
    text = "Run `make bench-foo`, then\n```bash\nmake demo\n```\n"
    assert make_targets_used(text) - make_targets() == {"bench-foo"}


def test_readme_starts_with_demo_and_test():
    first_block = (REPO / "README.md").read_text().split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line.strip()]
    assert commands[:2] == ["make demo", "make test"], commands
