#!/usr/bin/env python3
"""Checks every rdmabus command line in the units and manifests against the binary's --help.

    check_cli.py RDMABUS_BINARY FILE...

FILE: systemd units (ExecStart= and the other Exec*= lines whose program is rdmabus) and
Kubernetes manifests (container args, where the image's ENTRYPOINT is rdmabus, and exec
probes that run rdmabus). For each command line: the subcommand must be one `rdmabus --help`
lists, and every option (-x, --long, --long=value) one that `rdmabus SUBCOMMAND --help` lists.
Exits 1 naming each unknown one, 0 when all are known.
"""

import pathlib
import re
import shlex
import subprocess
import sys

import yaml

OPTION = re.compile(r"^\s+(?:-([A-Za-z0-9]), )?--([A-Za-z0-9][A-Za-z0-9-]*)")
SHORT_ONLY = re.compile(r"^\s+-([A-Za-z0-9])\s")
COMMAND = re.compile(r"^\s+([a-z][a-z0-9-]*)\s{2,}\S")


def help_text(binary, *args):
    r = subprocess.run([binary, *args, "--help"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        sys.exit(f"check_cli: `{binary} {' '.join(args)} --help` failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def subcommands(binary):
    out, cmds, inside = help_text(binary), set(), False
    for line in out.splitlines():
        if line.startswith("Commands:"):
            inside = True
        elif inside and line and not line[0].isspace():
            inside = False
        elif inside:
            m = COMMAND.match(line)
            if m:
                cmds.add(m.group(1))
    cmds.discard("help")
    return cmds


def options(binary, cmd):
    longs, shorts = set(), set()
    for line in help_text(binary, cmd).splitlines():
        m = OPTION.match(line)
        if m:
            if m.group(1):
                shorts.add(m.group(1))
            longs.add(m.group(2))
        else:
            m = SHORT_ONLY.match(line)
            if m:
                shorts.add(m.group(1))
    return longs, shorts


def from_unit(path):
    """Command lines of Exec*= whose program is rdmabus, joined over continuation lines."""
    lines, cur = [], ""
    for raw in path.read_text().splitlines():
        s = raw.strip()
        if not cur and (not s or s[0] in "#;"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        lines.append(cur + s)
        cur = ""
    found = []
    for n, line in enumerate(lines):
        key, _, value = line.partition("=")
        if not key.strip().startswith("Exec") or not value.strip():
            continue
        argv = shlex.split(value)
        prog = argv[0].lstrip("-@:+!")
        if pathlib.PurePath(prog).name == "rdmabus":
            found.append((f"{path.name}: {key.strip()}", argv[1:]))
    return found


def from_manifest(path):
    found = []
    for doc in yaml.safe_load_all(path.read_text()):
        spec = (((doc or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
        for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            where = f"{path.name}: {doc['kind']}/{doc['metadata']['name']} {c.get('name')}"
            cmd = [str(x) for x in c.get("command") or []]
            args = [str(x) for x in c.get("args") or []]
            if not cmd:
                found.append((f"{where} args", args))  # the image's ENTRYPOINT is rdmabus
            elif pathlib.PurePath(cmd[0]).name == "rdmabus":
                found.append((f"{where} command", cmd[1:] + args))
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                pc = [str(x) for x in ((c.get(probe) or {}).get("exec") or {}).get("command") or []]
                if pc and pathlib.PurePath(pc[0]).name == "rdmabus":
                    found.append((f"{where} {probe}", pc[1:]))
    return found


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    binary, files = argv[0], [pathlib.Path(f) for f in argv[1:]]
    cmds = subcommands(binary)
    if not cmds:
        sys.exit(f"check_cli: no subcommands found in `{binary} --help`")
    cache, errors, checked = {}, [], 0
    for f in files:
        lines = from_manifest(f) if f.suffix in (".yaml", ".yml") else from_unit(f)
        for where, args in lines:
            checked += 1
            if not args or args[0] not in cmds:
                errors.append(f"{where}: subcommand {args[:1]} is not one of {sorted(cmds)}")
                continue
            longs, shorts = cache.setdefault(args[0], options(binary, args[0]))
            for a in args[1:]:
                if a == "--":
                    break
                if a.startswith("--"):
                    if a[2:].split("=", 1)[0] not in longs:
                        errors.append(f"{where}: `rdmabus {args[0]}` has no option {a.split('=', 1)[0]}")
                elif a.startswith("-") and len(a) > 1 and not a[1].isdigit():
                    if a[1] not in shorts:
                        errors.append(f"{where}: `rdmabus {args[0]}` has no option -{a[1]}")
    for e in errors:
        print(f"check_cli: {e}", file=sys.stderr)
    if checked == 0:
        print("check_cli: no rdmabus command line found", file=sys.stderr)
        return 1
    if errors:
        return 1
    print(f"check_cli: {checked} rdmabus command lines, every option known to {binary}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
