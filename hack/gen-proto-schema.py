#!/usr/bin/env python3
"""Generate src/sim/proto_schema.rs: the protobuf layout (field numbers and wire types) of every
message the simulated API server decodes from `application/vnd.kubernetes.protobuf` bodies, with
each field's JSON name.

Inputs, both crate sources in the local cargo registry:
  - k8s-pb 0.9.0: prost bindings generated from the Kubernetes 1.35 .proto files (field numbers,
    wire types); not a dependency of this crate: `cargo info k8s-pb@0.9.0` puts its source there;
  - k8s-openapi 0.29.0 (a dependency): the JSON names, which fields are required (Go always
    serializes them), and which message fields are Go embedded structs (inlined in JSON).

Usage: python3 hack/gen-proto-schema.py > src/sim/proto_schema.rs && cargo fmt
"""

import glob
import os
import re
import sys

REGISTRY = os.path.expanduser("~/.cargo/registry/src")
K8S_PB = "k8s-pb-0.9.0"
K8S_OPENAPI = "k8s-openapi-0.29.0"
OPENAPI_VERSION = "v1_35"

# The kinds the simulated API server serves (src/sim/registry.rs builtins).
ROOTS = [
    ("v1", "Namespace"), ("v1", "Pod"), ("v1", "Service"), ("v1", "ConfigMap"), ("v1", "Secret"),
    ("v1", "PersistentVolumeClaim"), ("v1", "ServiceAccount"), ("v1", "Event"), ("v1", "Endpoints"),
    ("apps/v1", "Deployment"), ("apps/v1", "ReplicaSet"), ("apps/v1", "StatefulSet"), ("batch/v1", "Job"),
    ("coordination.k8s.io/v1", "Lease"), ("policy/v1", "PodDisruptionBudget"), ("events.k8s.io/v1", "Event"),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"), ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
    ("rbac.authorization.k8s.io/v1", "Role"), ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
]

# Messages whose JSON form is not an object of their fields.
SPECIAL = {
    "apimachinery.pkg.apis.meta.v1.Time": "Time",
    "apimachinery.pkg.apis.meta.v1.MicroTime": "MicroTime",
    "apimachinery.pkg.api.resource.Quantity": "Quantity",
    "apimachinery.pkg.util.intstr.IntOrString": "IntOrString",
    "apimachinery.pkg.runtime.RawExtension": "RawJson",
    "apimachinery.pkg.apis.meta.v1.FieldsV1": "RawJson",
    "apiextensions_apiserver.pkg.apis.apiextensions.v1.Json": "RawJson",
    "apiextensions_apiserver.pkg.apis.apiextensions.v1.JsonSchemaPropsOrArray": "SchemaOrArray",
    "apiextensions_apiserver.pkg.apis.apiextensions.v1.JsonSchemaPropsOrBool": "SchemaOrBool",
    "apiextensions_apiserver.pkg.apis.apiextensions.v1.JsonSchemaPropsOrStringArray": "SchemaOrStringArray",
}

# Go pointer fields whose zero value a client sets on purpose (a Deployment of 0 replicas): kept
# when zero, where other optional scalars are dropped as Go's omitempty drops them.
KEEP_ZERO = {
    ("api.apps.v1.DeploymentSpec", "replicas"),
    ("api.apps.v1.ReplicaSetSpec", "replicas"),
    ("api.apps.v1.StatefulSetSpec", "replicas"),
}

SCALARS = {"string": "Str", "bytes": "Bytes", "int32": "Int32", "int64": "Int64", "bool": "Bool", "double": "Double"}


def find(name):
    hits = glob.glob(os.path.join(REGISTRY, "*", name))
    if not hits:
        sys.exit(f"{name} not found under {REGISTRY}: run `cargo fetch`")
    return hits[0]


def split_type(text, start):
    """The field type from `start` to the ',' that ends it (at bracket depth 0)."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif c == "," and depth == 0:
            return text[start:i], i
    return text[start:], len(text)


def resolve(module, ty):
    """The full message name a Rust type path refers to, from module `module` (a list)."""
    ty = re.sub(r"\s+", "", ty)
    for wrapper in ("::core::option::Option<", "::prost::alloc::vec::Vec<", "::prost::alloc::boxed::Box<"):
        while ty.startswith(wrapper):
            ty = ty[len(wrapper):-1].rstrip(",")
    if "BTreeMap<" in ty:
        ty = ty[ty.index("BTreeMap<") + len("BTreeMap<"):-1]
        ty = ty.split(",", 1)[1].rstrip(",")
        return resolve(module, ty)
    parts = ty.split("::")
    if parts[0] == "crate":
        return ".".join(parts[1:])
    base = list(module)
    while parts and parts[0] == "super":
        base.pop()
        parts = parts[1:]
    return ".".join(base + parts)


def parse_pb(root):
    messages, kinds = {}, {}
    for path in glob.glob(os.path.join(root, "**", "mod.rs"), recursive=True):
        module = os.path.relpath(os.path.dirname(path), root).split(os.sep)
        text = open(path).read()
        for m in re.finditer(r"\npub struct (\w+) \{(?:\}|(.*?)\n\})", text, re.S):
            name, body = m.group(1), m.group(2) or ""
            fields = []
            for fm in re.finditer(r"#\[prost\((.*?)\)\]\s*pub (?:r#)?(\w+):", body, re.S):
                attr, field = fm.group(1), fm.group(2)
                ty, _ = split_type(body, fm.end())
                tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
                kind = attr.split(",")[0].strip()
                repeated = "repeated" in attr.split(",")[1:2][0] if "," in attr else False
                if kind.startswith("btree_map"):
                    value = re.search(r'btree_map = "string, (\w+)"', attr).group(1)
                    if value == "message":
                        fields.append((tag, field, "MsgMap", resolve(module, ty), False))
                    else:
                        fields.append((tag, field, {"string": "StrMap", "bytes": "BytesMap"}[value], None, False))
                elif kind == "message":
                    fields.append((tag, field, "Msg", resolve(module, ty), repeated))
                else:
                    scalar = kind.split(" ")[0]
                    fields.append((tag, field, SCALARS[scalar], None, repeated))
            messages[".".join(module + [name])] = fields
        for m in re.finditer(
            r'impl crate::Resource for (\w+) \{\s*const API_VERSION: &\'static str = "(.*?)";.*?const KIND: &\'static str = "(.*?)";',
            text,
            re.S,
        ):
            kinds[(m.group(2), m.group(3))] = ".".join(module + [m.group(1)])
    return messages, kinds


def parse_openapi(root):
    """(module, struct) -> {rust field: (json name, required)}."""
    out = {}
    for path in glob.glob(os.path.join(root, "**", "*.rs"), recursive=True):
        text = open(path).read()
        module = os.path.relpath(os.path.dirname(path), root).split(os.sep)
        for m in re.finditer(r"\npub struct (\w+) \{(?:\}|(.*?)\n\})", text, re.S):
            name, body = m.group(1), (m.group(2) or "") + "\n"
            required = {}
            for fm in re.finditer(r"\n    pub (?:r#)?(\w+): (.*?),\n", body):
                required[fm.group(1).rstrip("_")] = not fm.group(2).startswith("Option<")
            names = {}
            for fm in re.finditer(r'"([^"]+)" => Field::Key_(\w+),', text):
                names[fm.group(2).rstrip("_")] = fm.group(1)
            out[(".".join(module), name.lower())] = {norm(f): (names.get(f), required[f]) for f in required}
    return out


def norm(field):
    """k8s-pb and k8s-openapi split acronyms differently (non_resource_ur_ls, non_resource_urls)."""
    return field.replace("_", "").lower()


# Fields k8s-openapi names differently from the proto field.
RENAMED = {
    ("apiextensions_apiserver.pkg.apis.apiextensions.v1.JsonSchemaProps", "ref"): "refpath",
}


def lower_camel(snake):
    head, *rest = snake.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def main():
    messages, kinds = parse_pb(os.path.join(find(K8S_PB), "src"))
    openapi = parse_openapi(os.path.join(find(K8S_OPENAPI), "src", OPENAPI_VERSION))
    order, seen, todo = [], set(), []
    roots = []
    for api_version, kind in ROOTS:
        name = kinds.get((api_version, kind))
        if name is None:
            sys.exit(f"k8s-pb has no {api_version} {kind}")
        roots.append((api_version, kind, name))
        todo.append(name)
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        if name not in messages:
            sys.exit(f"k8s-pb has no message {name}")
        seen.add(name)
        order.append(name)
        for _, _, _, target, _ in messages[name]:
            if target:
                todo.append(target)
    index = {name: i for i, name in enumerate(order)}
    guessed = []
    # Messages of Go embedded structs (VolumeSource in Volume, ProbeHandler in Probe): k8s-openapi
    # has no type of their own, their fields are the embedding type's.
    host = {}
    for name in order:
        module, _, struct = name.rpartition(".")
        own = openapi.get((module, struct.lower()))
        if own is None:
            continue
        for tag, field, kind, target, repeated in messages[name]:
            if kind == "Msg" and not repeated and RENAMED.get((name, field), norm(field)) not in own:
                host.setdefault(target, own)
    out = [
        "//! Generated by `hack/gen-proto-schema.py` from k8s-pb 0.9 (the Kubernetes 1.35 .proto files) and",
        "//! k8s-openapi 0.29 (JSON names): do not edit. The layout of every message the simulated API server",
        "//! decodes from a protobuf body.",
        "",
        "use super::proto_layout::{Field, Message, Special, Ty};",
        "",
        "/// Every message, by index.",
        "pub(super) static MESSAGES: &[Message] = &[",
    ]
    for name in order:
        module, _, struct = name.rpartition(".")
        json_names = openapi.get((module, struct.lower()), host.get(name))
        special = SPECIAL.get(name, "None")
        fields = []
        for tag, field, kind, target, repeated in sorted(messages[name]):
            key = RENAMED.get((name, field), norm(field))
            json, required = (json_names or {}).get(key, (None, False))
            inline = False
            if json is None and special == "None":
                if json_names is not None and kind == "Msg" and not repeated:
                    # A Go embedded struct: its fields are the parent's in JSON.
                    inline = True
                    json = ""
                else:
                    json = lower_camel(field)
                    guessed.append(f"{name}.{field} -> {json}")
            elif json is None:
                json = lower_camel(field)
            ty = f"Ty::{kind}({index[target]})" if target else f"Ty::{kind}"
            keep = "true" if required or (name, field) in KEEP_ZERO else "false"
            fields.append(
                f"Field {{ tag: {tag}, json: {json!r}, ty: {ty}, repeated: {'true' if repeated else 'false'}, keep_zero: {keep}, inline: {'true' if inline else 'false'} }}".replace("'", '"')
            )
        out.append(f"    // {index[name]}")
        out.append(f'    Message {{ name: "{name}", special: Special::{special}, fields: &[{", ".join(fields)}] }},')
    out.append("];")
    out.append("")
    out.append("/// The kinds a protobuf body may carry: (apiVersion, kind, message).")
    out.append("pub(super) static KINDS: &[(&str, &str, usize)] = &[")
    for api_version, kind, name in roots:
        out.append(f'    ("{api_version}", "{kind}", {index[name]}),')
    out.append("];")
    print("\n".join(out))
    for g in guessed:
        print(f"guessed JSON name: {g}", file=sys.stderr)


main()
