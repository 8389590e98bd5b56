#!/usr/bin/env python3
"""Checks what deploy/k8s/README.md promises about the manifests, beyond their schema.

    check_manifests.py FILE_OR_DIR...

kubernetes-validate checks each object against the Kubernetes schema; this checks what a
schema cannot: the NetworkAttachmentDefinitions (a CRD it has no schema for) carry valid CNI
JSON, and the objects agree with each other and keep the promises that make RDMA work and the
key safe. Exits 1 naming every broken promise, 0 when there is none.
"""

import ipaddress
import json
import pathlib
import re
import sys

import yaml

NAMESPACE = "rdmabus"
RDMA_RESOURCE = "rdma/hca_shared_devices_a"
HUGEPAGES = "hugepages-2Mi"
SECRET = "rdmabus-psk"
NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
WORKLOADS = ("Deployment", "DaemonSet")

errors = []


def error(where, msg):
    errors.append(f"{where}: {msg}")


def load(paths):
    docs = []
    for p in paths:
        p = pathlib.Path(p)
        files = sorted(p.glob("*.yaml")) if p.is_dir() else [p]
        for f in files:
            try:
                for i, d in enumerate(yaml.safe_load_all(f.read_text())):
                    if d is not None:
                        docs.append((f"{f.name}#{i}", d))
            except yaml.YAMLError as e:
                error(f.name, f"not YAML: {e}")
    return docs


def name_of(d):
    return f"{d.get('kind')}/{(d.get('metadata') or {}).get('name')}"


def check_nads(docs):
    """NetworkAttachmentDefinitions: name -> (ipam type, ipam dict)."""
    nads = {}
    for where, d in docs:
        if d.get("kind") != "NetworkAttachmentDefinition":
            continue
        where = f"{where} {name_of(d)}"
        if d.get("apiVersion") != "k8s.cni.cncf.io/v1":
            error(where, f"apiVersion {d.get('apiVersion')!r}, want k8s.cni.cncf.io/v1")
        raw = (d.get("spec") or {}).get("config")
        if not isinstance(raw, str):
            error(where, "spec.config must be a string of CNI JSON")
            continue
        try:
            cfg = json.loads(raw)
        except json.JSONDecodeError as e:
            error(where, f"spec.config is not valid JSON: {e}")
            continue
        if not isinstance(cfg, dict):
            error(where, "spec.config is not a JSON object")
            continue
        for key in ("cniVersion", "type"):
            if not cfg.get(key):
                error(where, f"CNI config has no {key!r}")
        if cfg.get("name") != d["metadata"]["name"]:
            error(where, f"CNI name {cfg.get('name')!r} differs from metadata.name")
        if cfg.get("type") == "macvlan" and not cfg.get("master"):
            error(where, "macvlan without a master (the RoCE netdev)")
        ipam = cfg.get("ipam") or {}
        kind = ipam.get("type")
        if kind == "whereabouts":
            try:
                ipaddress.ip_network(ipam.get("range", ""), strict=False)
                for x in ipam.get("exclude", []):
                    ipaddress.ip_network(x, strict=False)
            except ValueError as e:
                error(where, f"whereabouts range or exclude: {e}")
                continue
        elif kind == "static":
            addrs = ipam.get("addresses") or []
            if len(addrs) != 1:
                error(where, "static IPAM wants exactly one address (the publisher's)")
                continue
            try:
                ipaddress.ip_interface(addrs[0].get("address", ""))
            except ValueError as e:
                error(where, f"static address: {e}")
                continue
        else:
            error(where, f"IPAM {kind!r}: want whereabouts (subscribers) or static (publisher)")
            continue
        nads[d["metadata"]["name"]] = (kind, ipam)
    return nads


def in_whereabouts_pool(ip, ipam):
    net = ipaddress.ip_network(ipam["range"], strict=False)
    if ip not in net:
        return False
    if any(ip in ipaddress.ip_network(x, strict=False) for x in ipam.get("exclude", [])):
        return False
    for bound, inside in (("range_start", lambda b: ip >= b), ("range_end", lambda b: ip <= b)):
        if bound in ipam and not inside(ipaddress.ip_address(ipam[bound])):
            return False
    return True


def pod_spec(d):
    return ((d.get("spec") or {}).get("template") or {}).get("spec") or {}


def check_workload(where, d, nads, config, images):
    tmpl = (d.get("spec") or {}).get("template") or {}
    spec = pod_spec(d)
    ann = (tmpl.get("metadata") or {}).get("annotations") or {}
    nets = [n.strip() for n in str(ann.get(NETWORKS_ANNOTATION, "")).split(",") if n.strip()]
    if not nets:
        error(where, f"no {NETWORKS_ANNOTATION} annotation: the pod would have no RoCE interface")
    for n in nets:
        if n.split("/")[-1].split("@")[0] not in nads:
            error(where, f"network {n!r} is no NetworkAttachmentDefinition here")
    if spec.get("automountServiceAccountToken") is not False:
        error(where, "automountServiceAccountToken should be false (rdmabus needs no API access)")
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    containers = spec.get("containers") or []
    if not containers:
        error(where, "no containers")
    for c in containers:
        cw = f"{where} container {c.get('name')}"
        images.append((cw, c.get("image")))
        check_container(cw, c, volumes, config, nets, nads)
    return nets


def check_container(cw, c, volumes, config, nets, nads):
    sc = c.get("securityContext") or {}
    caps = sc.get("capabilities") or {}
    if "IPC_LOCK" not in (caps.get("add") or []):
        error(cw, "IPC_LOCK not added: registered RDMA memory could not be pinned")
    if "ALL" not in (caps.get("drop") or []):
        error(cw, "capabilities.drop lacks ALL")
    extra = set(caps.get("add") or []) - {"IPC_LOCK"}
    if extra:
        error(cw, f"capabilities added beyond IPC_LOCK: {sorted(extra)}")
    if sc.get("privileged"):
        error(cw, "privileged")
    if sc.get("allowPrivilegeEscalation") is not False:
        error(cw, "allowPrivilegeEscalation must be false")
    if sc.get("readOnlyRootFilesystem") is not True:
        error(cw, "readOnlyRootFilesystem must be true")
    # An added capability reaches a non-root process only through file or ambient
    # capabilities, which this image does not use: IPC_LOCK needs uid 0 (README.md).
    if "IPC_LOCK" in (caps.get("add") or []) and sc.get("runAsUser") != 0:
        error(cw, f"IPC_LOCK with runAsUser {sc.get('runAsUser')!r}: added capabilities are "
                  "lost at exec for a non-root user; run as 0 (README.md, Capabilities)")

    res = c.get("resources") or {}
    lim, req = res.get("limits") or {}, res.get("requests") or {}
    if int(lim.get(RDMA_RESOURCE, 0) or 0) < 1:
        error(cw, f"no {RDMA_RESOURCE} in limits: the pod gets no RDMA device")
    for r in ("cpu", "memory"):
        if r not in lim:
            error(cw, f"no {r} limit")
    for r in (RDMA_RESOURCE, HUGEPAGES):
        if r in req and str(req[r]) != str(lim.get(r)):
            error(cw, f"{r}: requests {req[r]!r} differ from limits {lim.get(r)!r}")
    if HUGEPAGES in lim and "memory" not in lim and "cpu" not in lim:
        error(cw, "hugepages need a cpu or memory limit beside them")

    mounts = {m.get("mountPath"): m for m in c.get("volumeMounts") or []}

    def volume_at(path):
        m = mounts.get(path)
        return (m, volumes.get(m.get("name"))) if m else (None, None)

    _, shm = volume_at("/dev/shm")
    if not shm or (shm.get("emptyDir") or {}).get("medium") != "Memory":
        error(cw, "/dev/shm is not an emptyDir with medium: Memory")
    _, huge = volume_at("/dev/hugepages")
    if HUGEPAGES in lim and (not huge or (huge.get("emptyDir") or {}).get("medium") != "HugePages-2Mi"):
        error(cw, f"{HUGEPAGES} requested but /dev/hugepages is no emptyDir medium HugePages-2Mi")
    if huge and HUGEPAGES not in lim:
        error(cw, f"a hugepages volume without {HUGEPAGES} in limits")

    # The key: a Secret volume, read-only, owner-only, whose file --key-file names.
    key_files = set()
    for path, m in mounts.items():
        v = volumes.get(m.get("name")) or {}
        sec = v.get("secret")
        if not sec or sec.get("secretName") != SECRET:
            continue
        if not m.get("readOnly"):
            error(cw, f"the key's volume at {path} is not mounted readOnly")
        mode = sec.get("defaultMode")
        if mode is None or mode & 0o077:
            error(cw, f"the key's defaultMode {mode!r} lets group or others read it (want 0400)")
        items = sec.get("items") or [{"path": "psk"}]
        key_files |= {f"{path.rstrip('/')}/{i.get('path')}" for i in items}
    if not key_files:
        error(cw, f"Secret {SECRET} is not mounted")
    args = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
    given = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--key-file"]
    given += [a.split("=", 1)[1] for a in args if a.startswith("--key-file=")]
    if not given:
        error(cw, "no --key-file in the args")
    for g in given:
        if g not in key_files:
            error(cw, f"--key-file {g} is not the mounted Secret's file ({sorted(key_files)})")
    for e in c.get("env") or []:
        if e.get("name") == "RDMABUS_PSK" or ((e.get("valueFrom") or {}).get("secretKeyRef")):
            error(cw, f"env {e.get('name')}: the key must come as a file, never the environment")
    for e in c.get("envFrom") or []:
        if e.get("secretRef"):
            error(cw, "envFrom a Secret: the key must come as a file, never the environment")

    # $(VAR) in args must be defined, or Kubernetes passes it on literally.
    defined = {e.get("name") for e in c.get("env") or []}
    for e in c.get("envFrom") or []:
        ref = (e.get("configMapRef") or {}).get("name")
        if ref in config:
            defined |= set(config[ref])
        elif ref:
            error(cw, f"envFrom ConfigMap {ref!r} does not exist here")
    for a in args:
        for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", a):
            if var not in defined:
                error(cw, f"$({var}) in args is defined nowhere")

    # Where it connects or listens: the publisher's static address, and the probes too.
    values = {}
    for ref in [(e.get("configMapRef") or {}).get("name") for e in c.get("envFrom") or []]:
        values.update(config.get(ref, {}))
    pub_addr = values.get("PUBLISHER_ADDR")
    statics = [ipam["addresses"][0]["address"].split("/")[0]
               for n in nets for k, ipam in [nads.get(n.split("/")[-1], (None, None))] if k == "static"]
    for flag in ("--listen", "--connect"):
        for i, a in enumerate(args[:-1]):
            if a == flag and args[i + 1] != "$(PUBLISHER_ADDR)":
                error(cw, f"{flag} {args[i + 1]}: want $(PUBLISHER_ADDR) from the ConfigMap")
    if "--listen" in args and pub_addr and statics and pub_addr.rsplit(":", 1)[0] not in statics:
        error(cw, f"listens on {pub_addr} but its static RoCE address is {statics}")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        cmd = [str(x) for x in ((c.get(probe) or {}).get("exec") or {}).get("command") or []]
        for i, a in enumerate(cmd[:-1]):
            if a == "--connect" and cmd[i + 1] != pub_addr:
                error(cw, f"{probe} connects to {cmd[i + 1]}, PUBLISHER_ADDR is {pub_addr}")


def main(argv):
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    docs = load(argv)
    if not docs:
        error("manifests", "none found")
    for where, d in docs:
        for k in ("apiVersion", "kind"):
            if not d.get(k):
                error(where, f"no {k}")
        md = d.get("metadata") or {}
        if not md.get("name"):
            error(where, "no metadata.name")
        if d.get("kind") != "Namespace" and md.get("namespace") != NAMESPACE:
            error(f"{where} {name_of(d)}", f"namespace {md.get('namespace')!r}, want {NAMESPACE}")
    kinds = [d.get("kind") for _, d in docs]
    if not any(d.get("kind") == "Namespace" and d["metadata"].get("name") == NAMESPACE for _, d in docs):
        error("manifests", f"no Namespace {NAMESPACE}")
    for k in ("Deployment", "DaemonSet", "ConfigMap", "NetworkAttachmentDefinition"):
        if k not in kinds:
            error("manifests", f"no {k}")

    nads = check_nads(docs)
    config = {d["metadata"]["name"]: {k: str(v) for k, v in (d.get("data") or {}).items()}
              for _, d in docs if d.get("kind") == "ConfigMap"}
    for name, data in config.items():
        if "RDMABUS_PSK" in data:
            error(f"ConfigMap/{name}", "holds RDMABUS_PSK: the key belongs in a Secret file")

    # The publisher's address: in the ConfigMap, the static NAD, outside the subscribers' pool.
    statics = {n: ipam for n, (k, ipam) in nads.items() if k == "static"}
    pools = {n: ipam for n, (k, ipam) in nads.items() if k == "whereabouts"}
    addrs = {data["PUBLISHER_ADDR"] for data in config.values() if "PUBLISHER_ADDR" in data}
    if len(addrs) != 1:
        error("ConfigMap", f"want one PUBLISHER_ADDR, found {sorted(addrs)}")
    for addr in addrs:
        host, _, port = addr.rpartition(":")
        if not port.isdigit() or not 0 < int(port) < 65536:
            error("ConfigMap", f"PUBLISHER_ADDR {addr!r} has no port")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            error("ConfigMap", f"PUBLISHER_ADDR {addr!r}: {host!r} is no IP address")
            continue
        static_ips = {ipaddress.ip_interface(i["addresses"][0]["address"]).ip for i in statics.values()}
        if ip not in static_ips:
            error("ConfigMap", f"PUBLISHER_ADDR {addr} is no static NAD's address ({sorted(map(str, static_ips))})")
        for n, ipam in pools.items():
            if in_whereabouts_pool(ip, ipam):
                error(f"NetworkAttachmentDefinition/{n}", f"may hand the publisher's {ip} to a subscriber")
            if ip not in ipaddress.ip_network(ipam["range"], strict=False):
                error(f"NetworkAttachmentDefinition/{n}", f"{ip} is outside {ipam['range']}: subscribers cannot reach it on-link")

    images, roles = [], {}
    for where, d in docs:
        if d.get("kind") in WORKLOADS:
            where = f"{where} {name_of(d)}"
            roles[d["kind"]] = check_workload(where, d, nads, config, images)
    for n in roles.get("Deployment", []):
        if n.split("/")[-1] not in statics:
            error("Deployment", f"the publisher joins {n!r}, not a static-address network")
    for n in roles.get("DaemonSet", []):
        if n.split("/")[-1] not in pools:
            error("DaemonSet", f"subscribers join {n!r}, not a whereabouts network")
    distinct = {i for _, i in images}
    if len(distinct) > 1:
        error("images", "containers use different images: " + ", ".join(f"{w}: {i}" for w, i in images))
    for w, i in images:
        if not i or ":" not in i.rsplit("/", 1)[-1] or i.endswith(":latest"):
            error(w, f"image {i!r}: want an explicit tag, not latest")

    for e in errors:
        print(f"check_manifests: {e}", file=sys.stderr)
    if errors:
        return 1
    print(f"check_manifests: {len(docs)} objects, every promise kept")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
