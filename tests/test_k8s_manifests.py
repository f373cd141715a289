"""The Kubernetes side (k8s/): every manifest valid, pinned and consistent with the repo. Offline, fast.

How the overlays are rendered without kubectl: the kustomizations use only `resources` (files or
folders), `namespace`, `images` and inline JSON6902 `patches` (add / replace / remove), and
`render()` below does exactly that, the way `kubectl kustomize` does (images are rewritten in every
`containers` / `initContainers` list, as kustomize does for custom resources too). Any other
kustomize key fails the test, so the renderer and the files cannot drift apart; where kubectl or
kustomize is installed, a test also compares the two renderings.

Then: ray.io resources against KubeRay v1.7.0's CRD JSON schemas (../shared/k8s-schemas/ray.io,
strict on unknown fields), core resources with `kubernetes-validate --strict` (bundled schemas of
one pinned Kubernetes version), the Ray and MLflow versions against pyproject.toml's pins, the
RayJob's entrypoint against the repo (module, preset, overrides), and no credential in any file.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
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
KUSTOMIZE_KEYS = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
CLUSTER_SCOPED = {
    "Namespace",
    "PersistentVolume",
    "StorageClass",
    "ClusterRole",
    "ClusterRoleBinding",
}
RAY_SCHEMA_FILES = {"RayJob": "rayjob_v1.json", "RayCluster": "raycluster_v1.json"}
# An env var name whose `_`-separated part ends with one of these holds a credential
# (HF_TOKEN, AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_PASSWORD; not TOKENIZERS_PARALLELISM).
SECRET_WORDS = ("PASSWORD", "PASSWD", "TOKEN", "SECRET", "KEY", "CREDENTIALS")
URI_WITH_PASSWORD = re.compile(r"\w+://[^/\s:@]+:[^/\s@]+@")


# --------------------------------------------------------------------------- rendering


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def apply_json6902(doc: dict, ops: list[dict]) -> None:
    """RFC 6902 `add`, `replace` and `remove` on ``doc`` in place (what the overlays use)."""
    for op in ops:
        kind = op["op"]
        if kind not in {"add", "replace", "remove"}:
            raise ValueError(f"JSON6902 op {kind!r} is not supported by this renderer")
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


def set_images(node, rule: dict) -> None:
    """kustomize's `images:` rule on every container image found anywhere in ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for container in value:
                    name, suffix = _split_image(container.get("image", ""))
                    if name != rule["name"]:
                        continue
                    if "newTag" in rule:
                        suffix = f":{rule['newTag']}"
                    if "digest" in rule:
                        suffix = f"@{rule['digest']}"
                    container["image"] = rule.get("newName", name) + suffix
            set_images(value, rule)
    elif isinstance(node, list):
        for item in node:
            set_images(item, rule)


def _group(doc: dict) -> str:
    return doc["apiVersion"].rpartition("/")[0]


def _matches(doc: dict, target: dict) -> bool:
    want = {
        "group": _group(doc),
        "version": doc["apiVersion"].rpartition("/")[2],
        "kind": doc["kind"],
        "name": doc["metadata"]["name"],
    }
    return all(want[key] == value for key, value in target.items())


def render(folder: Path) -> list[dict]:
    """What `kubectl kustomize folder` prints, as a list of documents."""
    kust = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kust) - KUSTOMIZE_KEYS
    assert not unknown, f"{folder}: kustomize keys {sorted(unknown)} are not rendered by this test"
    docs: list[dict] = []
    for entry in kust.get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            docs += render(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in kust.get("patches", []):
        assert set(patch) == {"target", "patch"}, f"{folder}: only inline JSON6902 patches"
        ops = yaml.safe_load(patch["patch"])
        assert isinstance(ops, list), f"{folder}: a patch must be a JSON6902 list of operations"
        targets = [d for d in docs if _matches(d, patch["target"])]
        assert targets, f"{folder}: patch target {patch['target']} matches no resource"
        for doc in targets:
            apply_json6902(doc, ops)
    for rule in kust.get("images", []):
        set_images(docs, rule)
    if namespace := kust.get("namespace"):
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = namespace
    return docs


@cache
def _rendered(tree: str) -> str:
    return json.dumps(render(K8S / tree))


def rendered(tree: str) -> list[dict]:
    """A fresh copy of a tree's rendering (tests may mutate it)."""
    return json.loads(_rendered(tree))


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


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


def _workdir() -> str:
    return re.findall(r"^WORKDIR\s+(\S+)", _dockerfile(), re.MULTILINE)[-1]


def _containers(node):
    """Every container (and init container) anywhere in a document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from value
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)


def _pod_specs(node):
    """Every pod spec (a mapping with `containers`) anywhere in a document."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield node
        for value in node.values():
            yield from _pod_specs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _pod_specs(item)


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
            "Service",
        ], tree
        namespaced = [d for d in rendered(tree) if d["kind"] != "Namespace"]
        assert {d["metadata"].get("namespace") for d in namespaced} == {"codiemb"}


@pytest.mark.parametrize("tree", TREES)
def test_ray_resources_match_the_kuberay_schema(tree):
    ray_docs = [d for d in rendered(tree) if _group(d) == "ray.io"]
    assert {d["kind"] for d in ray_docs} == {"RayJob", "RayCluster"}
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
        r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON_TAG\}-\$\{VARIANT\}$",
        _dockerfile(),
        re.MULTILINE,
    )
    for tree in TREES:
        rayjob, raycluster = one(rendered(tree), "RayJob"), one(rendered(tree), "RayCluster")
        assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == pin
        assert raycluster["spec"]["rayVersion"] == pin


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
    variant = tree.rsplit("/", 1)[1]
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
    for doc in (rayjob, raycluster, one(docs, "Deployment")):
        for container in _containers(doc):
            for side in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][side]), container["name"]


def test_the_mlflow_address_is_the_same_everywhere():
    from pipeline.config import load_config

    docs = rendered("overlays/gpu")
    service = one(docs, "Service")
    port = service["spec"]["ports"][0]["port"]
    address = f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local:{port}"
    assert load_config(REPO / "configs" / "cluster.yaml").tracking.uri == address
    env = _runtime_env(one(docs, "RayJob"))["env_vars"]
    assert env["MLFLOW_TRACKING_URI"] == address
    # On a cluster the encoder comes from the Hub: offline mode must be off.
    assert env["HF_HUB_OFFLINE"] == "0"
    for container in _containers(one(docs, "RayCluster")):
        values = {e["name"]: e.get("value") for e in container["env"]}
        assert values["MLFLOW_TRACKING_URI"] == address
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


@pytest.mark.parametrize("tree", TREES)
def test_every_pod_runs_as_non_root(tree):
    for doc in rendered(tree):
        for pod in _pod_specs(doc):
            assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
            assert pod["securityContext"]["runAsUser"] != 0


@pytest.mark.parametrize("tree", TREES)
def test_render_agrees_with_kubectl_kustomize_where_installed(tree):
    if kustomize := shutil.which("kustomize"):
        cmd = [kustomize, "build", str(K8S / tree)]
    elif kubectl := shutil.which("kubectl"):
        cmd = [kubectl, "kustomize", str(K8S / tree)]
    else:
        pytest.skip("neither kustomize nor kubectl is installed")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout

    def key(d):
        return (d["kind"], d["metadata"]["name"])

    theirs = sorted((d for d in yaml.safe_load_all(out) if d), key=key)
    assert sorted(rendered(tree), key=key) == theirs


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
