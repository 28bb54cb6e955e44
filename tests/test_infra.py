"""Cluster infra and images, checked without Docker or Kubernetes (neither runs here).

Every YAML under infra/ parses; the RayCluster has the shape KubeRay's CRD requires; the
cluster-launcher config passes Ray's own validation (the check `ray up` makes before it
touches a cloud); every image tag is the project's version and every Ray version the
pinned one; the Dockerfiles pass a small linter, each of whose rules is shown to fire
on a bad Dockerfile.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "infra"
DOCKER = REPO / "docker"
CLUSTER_LAUNCHER = INFRA / "ray" / "cluster.yaml"
KUBERAY = INFRA / "ray" / "kuberay-raycluster.yaml"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "gpu": DOCKER / "Dockerfile.gpu"}
GPU_LOCK = DOCKER / "requirements-gpu.txt"

IMAGE = re.compile(r"^ghcr\.io/autosafe/autosafe-factory-(?P<kind>cpu|gpu):(?P<tag>[A-Za-z0-9._-]+)$")
IMAGE_KEYS = {"image", "head_image", "worker_image"}
GPU = "nvidia.com/gpu"


def project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def pins(text: str) -> dict[str, str]:
    """name -> version of every `name==version` line (comments and extras dropped)."""
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[re.sub(r"[-_.]+", "-", re.sub(r"\[.*\]", "", name).strip()).lower()] = version.strip()
    return out


def constraints() -> dict[str, str]:
    return pins((REPO / "constraints.txt").read_text())


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


# --- images and versions in any YAML ---------------------------------------------------


def walk(node, path=""):
    """(path, key, value) of every mapping entry, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")


def image_problems(doc, version: str) -> list[str]:
    """Every image reference must be one of the project's images, tagged with `version`."""
    problems = []
    for path, key, value in walk(doc):
        if key not in IMAGE_KEYS:
            continue
        match = IMAGE.match(str(value))
        if match is None:
            problems.append(f"{path}.{key}: {value!r} is not a project image with a tag")
        elif match["tag"] != version:
            problems.append(f"{path}.{key}: tag {match['tag']!r} is not the project version {version!r}")
    return problems


def ray_versions_in(text: str) -> list[str]:
    """The versions in every `ray==X`, `ray[extra]==X` or "Ray X.Y.Z" in `text`."""
    return re.findall(r"(?:(?<![\w-])ray(?:\[[\w,]+\])?==|\bRay )([0-9]+\.[0-9]+\.[0-9]+)", text)


def test_every_yaml_under_infra_parses_to_a_mapping():
    files = sorted(INFRA.rglob("*.yaml")) + sorted(INFRA.rglob("*.yml"))
    assert CLUSTER_LAUNCHER in files and KUBERAY in files
    for path in files:
        assert isinstance(load_yaml(path), dict), path


@pytest.mark.parametrize("path", [CLUSTER_LAUNCHER, KUBERAY], ids=lambda p: p.name)
def test_every_image_is_a_project_image_tagged_with_the_project_version(path):
    doc = load_yaml(path)
    assert image_problems(doc, project_version()) == []
    images = [value for _, key, value in walk(doc) if key in IMAGE_KEYS]
    assert {IMAGE.match(i)["kind"] for i in images} == {"cpu", "gpu"}


def test_an_image_tag_other_than_the_project_version_is_reported():
    doc = {"a": [{"image": "ghcr.io/autosafe/autosafe-factory-gpu:latest"}], "head_image": "rayproject/ray:2.60.0"}
    problems = image_problems(doc, "0.1.0")
    assert len(problems) == 2
    assert "tag 'latest'" in problems[0] and "not a project image" in problems[1]


def test_every_ray_version_is_the_pinned_one():
    ray = constraints()["ray"]
    assert load_yaml(KUBERAY)["spec"]["rayVersion"] == ray
    assert pins(GPU_LOCK.read_text())["ray"] == ray
    for path in [*DOCKERFILES.values(), INFRA / "ray" / "README.md"]:
        assert ray_versions_in(path.read_text()), path
    for path in [CLUSTER_LAUNCHER, KUBERAY, *DOCKERFILES.values(), INFRA / "ray" / "README.md"]:
        assert set(ray_versions_in(path.read_text())) <= {ray}, path
    assert ray_versions_in("pip install 'ray[default]==2.9.0' ray==2.60.0; Ray 2.61.1, Ray 2.52 on") == [
        "2.9.0",
        "2.60.0",
        "2.61.1",
    ]


# --- KubeRay RayCluster ------------------------------------------------------------------

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
QUANTITY = {
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|[kMGTPE]i?)?$"},
    ]
}
RESOURCE_LIST = {"type": "object", "additionalProperties": QUANTITY}
CONTAINER = {
    "type": "object",
    "required": ["name", "image", "resources"],
    "properties": {
        "name": {"type": "string", "pattern": DNS_LABEL},
        "image": {"type": "string", "minLength": 1},
        "resources": {
            "type": "object",
            "required": ["limits"],
            "properties": {"requests": RESOURCE_LIST, "limits": RESOURCE_LIST},
        },
        "env": {"type": "array", "items": {"type": "object", "required": ["name"]}},
    },
}
POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["containers"],
            "properties": {"containers": {"type": "array", "minItems": 1, "items": CONTAINER}},
        }
    },
}
# `ray start` flags as KubeRay's CRD types them: a map of strings.
RAY_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}
REPLICAS = {"type": "integer", "minimum": 0}
# The subset of KubeRay's ray.io/v1 RayCluster CRD (openAPIV3Schema) this project uses.
RAYCLUSTER_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayCluster"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": DNS_LABEL, "maxLength": 63}},
        },
        "spec": {
            "type": "object",
            "required": ["rayVersion", "headGroupSpec", "workerGroupSpecs"],
            "properties": {
                "rayVersion": {"type": "string", "pattern": r"^[0-9]+\.[0-9]+\.[0-9]+$"},
                "enableInTreeAutoscaling": {"type": "boolean"},
                "autoscalerOptions": {
                    "type": "object",
                    "properties": {
                        "version": {"enum": ["v1", "v2"]},
                        "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                        "idleTimeoutSeconds": {"type": "integer", "minimum": 0},
                    },
                },
                "authOptions": {
                    "type": "object",
                    "properties": {"mode": {"enum": ["disabled", "token"]}, "secretName": {"type": "string"}},
                },
                "headGroupSpec": {
                    "type": "object",
                    "required": ["rayStartParams", "template"],
                    "properties": {
                        "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                        "rayStartParams": RAY_START_PARAMS,
                        "template": POD_TEMPLATE,
                    },
                },
                "workerGroupSpecs": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"],
                        "properties": {
                            "groupName": {"type": "string", "pattern": DNS_LABEL},
                            "replicas": REPLICAS,
                            "minReplicas": REPLICAS,
                            "maxReplicas": REPLICAS,
                            "rayStartParams": RAY_START_PARAMS,
                            "template": POD_TEMPLATE,
                        },
                    },
                },
            },
        },
    },
}


def gpus(resources: dict, side: str) -> int:
    return int(resources.get(side, {}).get(GPU, 0))


def raycluster_problems(doc: dict) -> list[str]:
    """What KubeRay would reject or misrun: schema errors first, then what a schema cannot say."""
    validator = jsonschema.Draft202012Validator(RAYCLUSTER_SCHEMA)
    problems = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]
    if problems:
        return problems
    spec = doc["spec"]
    head = spec["headGroupSpec"]["template"]["spec"]["containers"]
    if any(gpus(c["resources"], "limits") for c in head):
        problems.append("headGroupSpec: the head asks for a GPU")
    names = [g["groupName"] for g in spec["workerGroupSpecs"]]
    if len(set(names)) != len(names):
        problems.append(f"workerGroupSpecs: group names repeat: {names}")
    for group in spec["workerGroupSpecs"]:
        where = f"workerGroupSpecs[{group['groupName']}]"
        low, high = group["minReplicas"], group["maxReplicas"]
        if not low <= group.get("replicas", low) <= high:
            got = f"{low}, {group.get('replicas')}, {high}"
            problems.append(f"{where}: needs minReplicas <= replicas <= maxReplicas, got {got}")
        for c in group["template"]["spec"]["containers"]:
            match = IMAGE.match(c["image"])
            gpu_image = match is not None and match["kind"] == "gpu"
            limit = gpus(c["resources"], "limits")
            if gpu_image and limit < 1:
                problems.append(f"{where}.{c['name']}: runs the GPU image without a {GPU} limit")
            if limit and not gpu_image:
                problems.append(f"{where}.{c['name']}: has a {GPU} limit but not the GPU image")
            # Kubernetes takes extended resources only with requests equal to limits.
            if GPU in c["resources"].get("requests", {}) and gpus(c["resources"], "requests") != limit:
                problems.append(f"{where}.{c['name']}: {GPU} requests differ from limits")
    return problems


def test_the_raycluster_has_the_shape_kuberay_requires():
    assert raycluster_problems(load_yaml(KUBERAY)) == []


def test_the_raycluster_autoscales_gpu_groups_between_bounds_with_token_auth():
    spec = load_yaml(KUBERAY)["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    gpu_groups = [
        g for g in spec["workerGroupSpecs"] if gpus(g["template"]["spec"]["containers"][0]["resources"], "limits")
    ]
    assert len(gpu_groups) >= 1
    assert all(g["maxReplicas"] >= 1 for g in gpu_groups)


def kuberay_with(change) -> dict:
    doc = copy.deepcopy(load_yaml(KUBERAY))
    change(doc["spec"])
    return doc


def _worker(spec, name):
    return next(g for g in spec["workerGroupSpecs"] if g["groupName"] == name)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: _worker(s, "gpu-1x").update(minReplicas=3, maxReplicas=2), "minReplicas <= replicas <= maxReplicas"),
        (lambda s: s["headGroupSpec"]["template"]["spec"]["containers"][0].pop("image"), "'image' is a required"),
        (
            lambda s: _worker(s, "gpu-8x")["template"]["spec"]["containers"][0]["resources"]["limits"].pop(GPU),
            "without a nvidia.com/gpu limit",
        ),
        (
            lambda s: _worker(s, "gpu-8x")["template"]["spec"]["containers"][0]["resources"]["requests"].update(
                {GPU: "4"}
            ),
            "requests differ from limits",
        ),
        (lambda s: s["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}), "is not of type 'string'"),
        (lambda s: s.pop("rayVersion"), "'rayVersion' is a required"),
        (lambda s: _worker(s, "cpu").pop("groupName"), "'groupName' is a required"),
    ],
    ids=["replicas-out-of-bounds", "no-image", "gpu-image-without-gpu", "gpu-requests-differ", "non-string-param",
         "no-ray-version", "no-group-name"],
)
def test_a_broken_raycluster_is_reported(change, expected):
    problems = raycluster_problems(kuberay_with(change))
    assert any(expected in p for p in problems), problems


# --- Ray cluster launcher ----------------------------------------------------------------


def launcher_problems(config: dict) -> list[str]:
    """The keys this project relies on, then Ray's own validation of the prepared config."""
    problems = []
    for key in ("cluster_name", "max_workers", "provider", "available_node_types", "head_node_type", "docker"):
        if key not in config:
            problems.append(f"{key}: missing")
    if problems:
        return problems
    if "type" not in config["provider"]:
        problems.append("provider.type: missing")
    if "image" not in config["docker"]:
        problems.append("docker.image: missing")
    types = config["available_node_types"]
    if config["head_node_type"] not in types:
        problems.append(f"head_node_type: {config['head_node_type']!r} is not in available_node_types")
    for name, node in types.items():
        for key in ("resources", "node_config"):
            if not isinstance(node.get(key), dict):
                problems.append(f"available_node_types.{name}.{key}: missing")
        if name == config["head_node_type"]:
            continue
        low, high = node.get("min_workers"), node.get("max_workers")
        if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high <= config["max_workers"]):
            rule = "0 <= min_workers <= max_workers <= the global max_workers"
            problems.append(f"available_node_types.{name}: needs {rule}")
    if problems:
        return problems
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except (ValueError, RuntimeError, AssertionError, jsonschema.ValidationError) as exc:
        problems.append(f"ray: {str(exc).splitlines()[0]}")
    return problems


def test_the_cluster_launcher_config_passes_rays_validation():
    assert launcher_problems(load_yaml(CLUSTER_LAUNCHER)) == []


def test_the_cluster_launcher_has_a_cpu_head_and_gpu_workers_that_scale_from_zero():
    config = load_yaml(CLUSTER_LAUNCHER)
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert "--num-cpus=0" in " ".join(config["head_start_ray_commands"])
    gpu_types = [t for t in types.values() if t["resources"].get("GPU")]
    assert gpu_types and all(t["min_workers"] == 0 < t["max_workers"] for t in gpu_types)
    assert IMAGE.match(config["docker"]["image"])["kind"] == "gpu"
    assert IMAGE.match(config["docker"]["head_image"])["kind"] == "cpu"


def test_the_cluster_launcher_gives_every_node_the_token_through_a_mounted_directory():
    config = load_yaml(CLUSTER_LAUNCHER)
    options = config["docker"]["run_options"]
    env = dict(o.removeprefix("--env ").split("=", 1) for o in options if o.startswith("--env "))
    assert env["RAY_AUTH_MODE"] == "token"
    home = "/home/autosafe/"
    token_dir = str(Path(env["RAY_AUTH_TOKEN_PATH"]).parent)
    assert token_dir.startswith(home)
    assert "~/" + token_dir.removeprefix(home) in config["file_mounts"]


def launcher_with(change) -> dict:
    config = copy.deepcopy(load_yaml(CLUSTER_LAUNCHER))
    change(config)
    return config


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c.update(head_node_type="nope"), "head_node_type: 'nope' is not in available_node_types"),
        (lambda c: c["available_node_types"]["gpu_l40s"].update(min_workers=9), "gpu_l40s: needs 0 <= min_workers"),
        (lambda c: c["docker"].pop("image"), "docker.image: missing"),
        (lambda c: c["available_node_types"]["cpu"].pop("resources"), "cpu.resources: missing"),
        (lambda c: c.pop("cluster_name"), "cluster_name: missing"),
        (lambda c: c["docker"].update(gpu_image="x"), "ray: Additional properties are not allowed"),
    ],
    ids=["unknown-head-type", "min-above-max", "no-docker-image", "no-resources", "no-cluster-name", "unknown-key"],
)
def test_a_broken_cluster_launcher_config_is_reported(change, expected):
    problems = launcher_problems(launcher_with(change))
    assert any(expected in p for p in problems), problems


# --- Dockerfile linter -------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined; comments and parser directives dropped."""
    out, pending, start = [], "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        # Docker drops comment and empty lines, inside continuations too.
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append(Instruction(start, keyword.upper(), args.strip()))
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    out: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def _words(args: str) -> list[str]:
    if args.startswith("["):
        return json.loads(args)
    return args.split()


def shell_commands(run_args: str) -> list[list[str]]:
    """The simple commands of a RUN, split at `&&`, `||`, `;`, `|` and parentheses."""
    if run_args.startswith("["):
        return [json.loads(run_args)]
    lexer = shlex.shlex(run_args, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token and set(token) <= set("&|;()"):
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    if current:
        commands.append(current)
    return commands


PIP_VALUE_OPTIONS = {
    "-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url", "-f", "--find-links",
    "-t", "--target", "--prefix", "--root", "--platform", "--python-version", "--implementation", "--abi",
    "--src", "--python", "--report", "--cache-dir", "--upgrade-strategy", "--trusted-host", "--progress-bar",
}


def pip_install_args(command: list[str]) -> list[str] | None:
    """The arguments after `install` when `command` is a pip (or `uv pip`) install, else None."""
    for i, word in enumerate(command[:-1]):
        if (Path(word).name in ("pip", "pip3") or (word == "-m" and command[i + 1] in ("pip", "pip3"))) and (
            "install" in command[i + 1 : i + 3]
        ):
            return command[command.index("install", i) + 1 :]
    return None


def unpinned_requirements(args: list[str]) -> list[str]:
    """Requirements of a pip install that pin nothing: no `==`, no `-c` file, not a local path."""
    requirements, constrained, i = [], False, 0
    while i < len(args):
        word = args[i]
        option = word.split("=", 1)[0]
        if option in ("-c", "--constraint"):
            constrained = True
        if word in ("-e", "--editable"):
            requirements.append(args[i + 1])
            i += 2
        elif option in PIP_VALUE_OPTIONS:
            i += 1 if "=" in word else 2
        elif word.startswith("-"):
            i += 1
        else:
            requirements.append(word)
            i += 1
    if constrained:
        return []
    local = re.compile(r"^(\.|/|~)|\.whl$")
    return [r for r in requirements if "==" not in r and not local.search(r)]


@dataclass(frozen=True)
class Finding:
    rule: str
    line: int
    message: str


def lint_dockerfile(text: str) -> list[Finding]:
    """Findings of the house rules for images; an empty list means the Dockerfile passes."""
    instructions = parse_dockerfile(text)
    found: list[Finding] = []
    all_stages = stages(instructions)
    aliases: set[str] = set()
    for stage in all_stages:
        head = stage[0]
        words = [w for w in head.args.split() if not w.startswith("--")]
        image = words[0] if words else ""
        if image not in aliases and image != "scratch":
            name_tag = image.split("@", 1)[0].rsplit("/", 1)[-1]
            tag = name_tag.split(":", 1)[1] if ":" in name_tag else None
            if "$" in image:
                found.append(Finding("pinned-base", head.line, f"{image}: a variable base cannot be checked"))
            elif "@sha256:" not in image and (tag is None or tag == "latest"):
                found.append(Finding("pinned-base", head.line, f"{image}: pin a tag other than latest"))
        if len(words) >= 3 and words[1].lower() == "as":
            aliases.add(words[2])
    if len(all_stages) < 2:
        found.append(Finding("multi-stage", 1, "build in one stage and copy the result into another"))
    for ins in instructions:
        if ins.keyword == "RUN":
            for command in shell_commands(ins.args):
                args = pip_install_args(command)
                if args is not None and (loose := unpinned_requirements(args)):
                    found.append(Finding("pinned-pip", ins.line, f"pin {', '.join(loose)} (== or -c constraints)"))
        if ins.keyword == "ADD":
            sources = [w for w in _words(ins.args) if not w.startswith("--")][:-1]
            if any("://" in s or s.startswith("git@") for s in sources):
                found.append(Finding("no-add-url", ins.line, "ADD of a URL: download in a RUN with a checksum"))
    final = all_stages[-1] if all_stages else []
    users = [ins for ins in final if ins.keyword == "USER"]
    if not users or users[-1].args.split(":")[0] in ("root", "0"):
        line = users[-1].line if users else 1
        found.append(Finding("non-root-user", line, "the final stage must run as a non-root USER"))
    gives_files = any(
        (ins.keyword in ("COPY", "ADD") and "--chown=" in ins.args)
        or (ins.keyword == "RUN" and any(c and c[0] == "chown" for c in shell_commands(ins.args)))
        for ins in final
    )
    if not gives_files:
        found.append(Finding("chown", 1, "give the non-root user its files: COPY --chown or chown"))
    if not any(ins.keyword in ("ENTRYPOINT", "CMD") for ins in final):
        found.append(Finding("entrypoint", 1, "the final stage needs an ENTRYPOINT or CMD"))
    return found


GOOD = """\
# syntax=docker/dockerfile:1
FROM python:3.12.3-slim AS build
RUN python -m pip install -c constraints.txt . \\
    && pip install uv==0.13.9
FROM python:3.12.3-slim
COPY --from=build --chown=1000:1000 /opt/venv /opt/venv
USER 1000:1000
CMD ["autosafe", "--help"]
"""


def test_a_dockerfile_that_keeps_every_rule_passes():
    assert lint_dockerfile(GOOD) == []


@pytest.mark.parametrize(
    ("rule", "bad"),
    [
        ("pinned-base", GOOD.replace("FROM python:3.12.3-slim\n", "FROM python:latest\n")),
        ("pinned-base", GOOD.replace("FROM python:3.12.3-slim AS build", "FROM python AS build")),
        ("pinned-base", GOOD.replace("FROM python:3.12.3-slim AS build", "FROM $BASE AS build")),
        ("multi-stage", "FROM python:3.12.3-slim\nCOPY --chown=1000 . /app\nUSER 1000\nCMD [\"autosafe\"]\n"),
        ("non-root-user", GOOD.replace("USER 1000:1000", "USER root")),
        ("non-root-user", GOOD.replace("USER 1000:1000\n", "")),
        ("non-root-user", GOOD.replace("USER 1000:1000", "USER 0:0")),
        ("pinned-pip", GOOD.replace("pip install uv==0.13.9", "pip install uv")),
        ("pinned-pip", GOOD.replace("python -m pip install -c constraints.txt .", "python -m pip install vllm>=0.26")),
        ("pinned-pip", GOOD.replace("&& pip install uv==0.13.9", "&& uv pip install --upgrade torch")),
        ("no-add-url", GOOD.replace("USER", "ADD https://example.com/model.bin /opt/model.bin\nUSER")),
        ("chown", GOOD.replace("--chown=1000:1000 ", "")),
        ("entrypoint", GOOD.replace('CMD ["autosafe", "--help"]\n', "")),
    ],
    ids=["latest", "untagged", "variable", "one-stage", "root", "no-user", "uid-0", "bare-name", "range", "uv",
         "add-url", "no-chown", "no-cmd"],
)
def test_each_rule_fires_on_a_dockerfile_that_breaks_it(rule, bad):
    assert {f.rule for f in lint_dockerfile(bad)} == {rule}


def test_the_linter_joins_continuation_lines_and_skips_comments():
    text = "FROM a:1 AS b\n# RUN pip install loose\nRUN true \\\n    && pip install \\\n    loose\n"
    instructions = parse_dockerfile(text)
    assert [(i.line, i.keyword) for i in instructions] == [(1, "FROM"), (3, "RUN")]
    assert [f.rule for f in lint_dockerfile(text) if f.line == 3] == ["pinned-pip"]


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_the_project_dockerfiles_pass_the_linter(kind):
    assert lint_dockerfile(DOCKERFILES[kind].read_text()) == []


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_the_image_label_carries_the_project_version(kind):
    labels = " ".join(i.args for i in parse_dockerfile(DOCKERFILES[kind].read_text()) if i.keyword == "LABEL")
    assert re.findall(r'org\.opencontainers\.image\.version="([^"]+)"', labels) == [project_version()]


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_every_path_a_dockerfile_copies_from_the_context_exists(kind):
    for ins in parse_dockerfile(DOCKERFILES[kind].read_text()):
        if ins.keyword == "COPY" and "--from=" not in ins.args:
            for source in [w for w in ins.args.split() if not w.startswith("--")][:-1]:
                assert (REPO / source).exists(), f"{DOCKERFILES[kind].name}:{ins.line}: {source}"


def test_both_images_run_the_same_python_so_ray_accepts_their_nodes_together():
    # Ray refuses a node whose Python differs from the head's down to the patch level;
    # both images take Python from the same Ubuntu release's packages.
    releases = set()
    for path in DOCKERFILES.values():
        final = stages(parse_dockerfile(path.read_text()))[-1]
        match = re.search(r"ubuntu:?(\d\d\.\d\d)", final[0].args)
        assert match, f"{path.name}: the final stage is not an Ubuntu image"
        releases.add(match[1])
        installs = [c for i in final if i.keyword == "RUN" for c in shell_commands(i.args) if "install" in c]
        assert any("python3" in c for c in installs), f"{path.name}: python3 does not come from Ubuntu"
    assert len(releases) == 1


def test_the_cpu_image_installs_torch_and_the_project_like_the_makefile():
    text = DOCKERFILES["cpu"].read_text()
    assert f"torch=={constraints()['torch']}" in text
    assert "pip install -c constraints.txt ." in text


def test_the_gpu_lock_pins_everything_and_departs_from_constraints_only_where_it_says():
    lock = pins(GPU_LOCK.read_text())
    lines = [l for l in GPU_LOCK.read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert len(lines) == len(lock), "every line of the lock is name==version"
    assert lock["vllm"] == "0.26.0" and lock["deepspeed"] == "0.19.8" and lock["torch"] == "2.11.0"
    header = "\n".join(l for l in GPU_LOCK.read_text().splitlines() if l.startswith("#"))
    departures = {name for name, version in lock.items() if constraints().get(name, version) != version}
    assert departures == {"torch", "triton", "apache-tvm-ffi", "protobuf", "numpy"}
    for name in departures:
        assert f"#   {name} {lock[name]}" in header or f", {name} {lock[name]}" in header, name
    dockerfile = DOCKERFILES["gpu"].read_text()
    assert f"torch=={lock['torch']} torchvision=={lock['torchvision']} torchaudio=={lock['torchaudio']}" in dockerfile


def test_the_build_context_leaves_out_the_virtualenv_and_caches():
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert {".venv", ".git", "**/__pycache__"} <= set(ignored)
