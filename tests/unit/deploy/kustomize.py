"""A small kustomize, for exactly the features deploy/k8s uses, so the manifests are built and
checked without a kustomize binary. When ``kubectl`` is on PATH a test builds every overlay with
the real thing too and requires the same objects (test_kustomize_model_matches_kubectl).

Modelled: resources (files and directories), components, configMapGenerator and secretGenerator
(files, envs, literals, hash suffixes as kustomize computes them, disableNameSuffixHash), patches
(inline JSON 6902 with a target, including ``test`` ops; inline strategic-merge ``$patch: delete``),
images, labels (metadata only), replacements (a source field copied into target fields chosen by
kind and name, list items picked with ``[name=x]``), and the renaming of ConfigMap/Secret
references in pod specs.
A kustomization using anything else fails loudly rather than being half understood.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "components", "configMapGenerator",
                      "secretGenerator", "generatorOptions", "patches", "images", "labels", "replacements"}
POD_SPEC_PATHS = {
    "Deployment": ("spec", "template", "spec"), "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"), "Job": ("spec", "template", "spec"),
    "Pod": ("spec",),
}
ORIGINAL_NAME = "__original_name__"


class KustomizeError(AssertionError):
    pass


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def build(directory: Path) -> list[dict]:
    """The objects ``kustomize build directory`` would print (order aside)."""
    objs = _build(directory, expect="Kustomization", objs=[])
    for o in objs:
        o.pop(ORIGINAL_NAME, None)
    return objs


def _build(directory: Path, *, expect: str, objs: list[dict]) -> list[dict]:
    path = directory / "kustomization.yaml"
    k = yaml.safe_load(path.read_text())
    unknown = set(k) - KUSTOMIZATION_KEYS
    if unknown:
        raise KustomizeError(f"{path}: uses {sorted(unknown)}, which this model does not know")
    if k.get("kind", "Kustomization") != expect:
        raise KustomizeError(f"{path}: expected kind {expect}, found {k.get('kind')}")
    for res in k.get("resources", []):
        p = (directory / res).resolve()
        if not p.is_relative_to(directory.resolve()) and not p.is_dir():
            raise KustomizeError(f"{path}: {res} is outside the kustomization root (kustomize refuses it)")
        objs += _build(p, expect="Kustomization", objs=[]) if p.is_dir() else load_docs(p)
    for comp in k.get("components", []):
        objs = _build((directory / comp).resolve(), expect="Component", objs=objs)
    options = k.get("generatorOptions", {})
    for gen in k.get("configMapGenerator", []):
        objs.append(_generate("ConfigMap", gen, directory, options))
    for gen in k.get("secretGenerator", []):
        objs.append(_generate("Secret", gen, directory, options))
    for patch in k.get("patches", []):
        objs = _patch(objs, patch, path)
    for image in k.get("images", []):
        _set_image(objs, image)
    for replacement in k.get("replacements", []):
        _replace(objs, replacement, path)
    for entry in k.get("labels", []):
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise KustomizeError(f"{path}: labels with selectors/templates are not modelled")
        for o in objs:
            o.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
    _rename_references(objs)
    return objs


# --- generators ----------------------------------------------------------------------------------

def _generate(kind: str, gen: dict, directory: Path, options: dict) -> dict:
    if set(gen) - {"name", "files", "envs", "literals", "options", "type"}:
        raise KustomizeError(f"{kind} generator {gen['name']}: unmodelled keys {set(gen)}")
    data: dict[str, str] = {}
    for entry in gen.get("files", []):
        key, sep, rel = entry.partition("=")
        rel = rel if sep else key
        key = key if sep else Path(rel).name
        file = (directory / rel).resolve()
        if not file.is_relative_to(directory.resolve()):
            raise KustomizeError(f"{rel}: kustomize only reads files below {directory}")
        data[key] = file.read_text()
    for rel in gen.get("envs", []):
        file = (directory / rel).resolve()
        if not file.is_relative_to(directory.resolve()):
            raise KustomizeError(f"{rel}: kustomize only reads files below {directory}")
        for line in file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                key, sep, value = line.partition("=")
                if not sep:
                    raise KustomizeError(f"{rel}: {line!r} is not KEY=VALUE")
                data[key] = value
    for lit in gen.get("literals", []):
        key, _, value = lit.partition("=")
        data[key] = value
    name = gen["name"]
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}}
    if kind == "Secret":
        obj["type"] = gen.get("type", "Opaque")
        obj["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    else:
        obj["data"] = data
    opts = {**options, **gen.get("options", {})}
    if not opts.get("disableNameSuffixHash"):
        obj["metadata"]["name"] = f"{name}-{content_hash(obj)}"
    obj[ORIGINAL_NAME] = name
    return obj


def content_hash(obj: dict) -> str:
    """kustomize's name suffix (api/hasher): SHA-256 of Go's JSON encoding of kind, name and data
    (and a Secret's type), first ten hex digits with 0 1 3 a e swapped for letters so no number or
    word can form. kustomize 5 looks the name up as the single key "metadata/name", finds nothing
    and hashes an empty name: two generators with the same content get the same suffix."""
    encoded: dict[str, Any] = {"kind": obj["kind"], "name": "", "data": obj["data"]}
    if obj["kind"] == "Secret":
        encoded["type"] = obj["type"]
    text = json.dumps(encoded, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # Go's encoding/json escapes these for HTML safety; they only occur inside strings.
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _rename_references(objs: list[dict]) -> None:
    renamed = {(o["kind"], o[ORIGINAL_NAME]): o["metadata"]["name"] for o in objs if ORIGINAL_NAME in o}
    if not renamed:
        return

    def new(kind: str, name: str) -> str:
        return renamed.get((kind, name), name)

    for spec in pod_specs(objs):
        for v in spec.get("volumes", []):
            if "configMap" in v:
                v["configMap"]["name"] = new("ConfigMap", v["configMap"]["name"])
            if "secret" in v:
                v["secret"]["secretName"] = new("Secret", v["secret"]["secretName"])
            for src in v.get("projected", {}).get("sources", []):
                if "configMap" in src:
                    src["configMap"]["name"] = new("ConfigMap", src["configMap"]["name"])
                if "secret" in src:
                    src["secret"]["name"] = new("Secret", src["secret"]["name"])
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    ref["configMapKeyRef"]["name"] = new("ConfigMap", ref["configMapKeyRef"]["name"])
                if "secretKeyRef" in ref:
                    ref["secretKeyRef"]["name"] = new("Secret", ref["secretKeyRef"]["name"])
            for e in c.get("envFrom", []):
                if "configMapRef" in e:
                    e["configMapRef"]["name"] = new("ConfigMap", e["configMapRef"]["name"])
                if "secretRef" in e:
                    e["secretRef"]["name"] = new("Secret", e["secretRef"]["name"])


def pod_specs(objs: list[dict]) -> list[dict]:
    specs = []
    for o in objs:
        path = POD_SPEC_PATHS.get(o["kind"])
        if path:
            spec = o
            for p in path:
                spec = spec[p]
            specs.append(spec)
    return specs


# --- transformers --------------------------------------------------------------------------------

def _patch(objs: list[dict], patch: dict, where: Path) -> list[dict]:
    if set(patch) - {"target", "patch"}:
        raise KustomizeError(f"{where}: only inline patches are modelled, not {set(patch)}")
    body = yaml.safe_load(patch["patch"])
    if isinstance(body, dict):  # strategic merge: only whole-object deletion is modelled
        if body.get("$patch") != "delete" or set(body) - {"$patch", "apiVersion", "kind", "metadata"}:
            raise KustomizeError(f"{where}: only `$patch: delete` strategic-merge patches are modelled")
        victims = _select(objs, {"kind": body["kind"], "name": body["metadata"]["name"]}, where)
        return [o for o in objs if all(o is not v for v in victims)]
    for o in _select(objs, patch["target"], where):
        for op in body:
            _json_patch_op(o, op, where)
    return objs


def _select(objs: list[dict], target: dict, where: Path) -> list[dict]:
    if set(target) - {"kind", "name"}:
        raise KustomizeError(f"{where}: patch targets by kind and name only")
    found = [o for o in objs if o["kind"] == target["kind"]
             and target["name"] in (o["metadata"]["name"], o.get(ORIGINAL_NAME))]
    if not found:
        raise KustomizeError(f"{where}: patch target {target} matches nothing")
    return found


def _json_patch_op(doc: dict, op: dict, where: Path) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
    parent: Any = doc
    try:
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        key: Any = parts[-1]
        if isinstance(parent, list) and key != "-":
            key = int(key)
        kind = op["op"]
        if kind == "test":
            if parent[key] != op["value"]:
                raise KustomizeError(f"{where}: test failed at {op['path']}: {parent[key]!r} != {op['value']!r}")
        elif kind == "remove":
            del parent[key]
        elif kind == "replace":
            if isinstance(parent, dict) and key not in parent:
                raise KustomizeError(f"{where}: replace of missing {op['path']}")
            parent[key] = copy.deepcopy(op["value"])
        elif kind == "add":
            if isinstance(parent, list):
                parent.append(copy.deepcopy(op["value"])) if key == "-" else parent.insert(key, op["value"])
            else:
                parent[key] = copy.deepcopy(op["value"])
        else:
            raise KustomizeError(f"{where}: JSON patch op {kind} is not modelled")
    except (KeyError, IndexError, TypeError) as exc:
        raise KustomizeError(f"{where}: {op['op']} {op['path']}: no such location ({exc!r})") from None


def _set_image(objs: list[dict], image: dict) -> None:
    for spec in pod_specs(objs):
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            ref = c["image"]
            name = ref.split("@")[0]
            if ":" in name.rsplit("/", 1)[-1]:
                name = name.rsplit(":", 1)[0]
            if name != image["name"]:
                continue
            new = image.get("newName", name)
            if "digest" in image:
                c["image"] = f"{new}@{image['digest']}"
            elif "newTag" in image:
                c["image"] = f"{new}:{image['newTag']}"
            else:
                c["image"] = ref.replace(name, new, 1)


def _replace(objs: list[dict], replacement: dict, where: Path) -> None:
    if set(replacement) - {"source", "targets"} or set(replacement["source"]) - {"kind", "name", "fieldPath"}:
        raise KustomizeError(f"{where}: only source kind/name/fieldPath replacements are modelled")
    source = replacement["source"]
    [obj] = _select(objs, {"kind": source["kind"], "name": source["name"]}, where)
    value = _field(obj, source["fieldPath"], where)
    for target in replacement["targets"]:
        if set(target) - {"select", "fieldPaths"}:
            raise KustomizeError(f"{where}: replacement targets by select and fieldPaths only")
        for o in _select(objs, target["select"], where):
            for field_path in target["fieldPaths"]:
                *parents, last = _field_parts(field_path)
                node = o
                for part in parents:
                    node = _step(node, part, field_path, where)
                if last not in node:
                    raise KustomizeError(f"{where}: replacement target {field_path} does not exist")
                node[last] = value


def _field_parts(field_path: str) -> list[str]:
    return [p for p in field_path.split(".") if p]


def _step(node: Any, part: str, field_path: str, where: Path) -> Any:
    if part.startswith("[") and part.endswith("]"):
        key, _, want = part[1:-1].partition("=")
        found = [item for item in node if isinstance(item, dict) and item.get(key) == want]
        if len(found) != 1:
            raise KustomizeError(f"{where}: {field_path}: {part} matches {len(found)} items")
        return found[0]
    if not isinstance(node, dict) or part not in node:
        raise KustomizeError(f"{where}: {field_path}: no {part}")
    return node[part]


def _field(obj: dict, field_path: str, where: Path) -> Any:
    node: Any = obj
    for part in _field_parts(field_path):
        node = _step(node, part, field_path, where)
    return node
