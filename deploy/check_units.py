#!/usr/bin/env python3
"""Checks what deploy/README.md promises about the systemd units, beyond systemd's own checks.

    check_units.py SYSUSERS_FILE UNIT...

systemd-analyze verify says whether a unit parses; this says whether it keeps the promises:
it runs as the user the sysusers file creates, gets the key as a credential and passes it
with --key-file from $CREDENTIALS_DIRECTORY (never the environment), has an unlimited
memlock limit, reaches the verbs devices, and keeps the sandbox. Exits 1 naming every broken
promise, 0 when there is none.
"""

import pathlib
import shlex
import sys

errors = []


def parse(path):
    """{section: [(key, value), ...]}, continuation lines joined, comments dropped."""
    sections, cur, pending = {}, None, ""
    for raw in path.read_text().splitlines():
        s = raw.strip()
        if not pending and (not s or s[0] in "#;"):
            continue
        if s.endswith("\\"):
            pending += s[:-1] + " "
            continue
        s, pending = pending + s, ""
        if s.startswith("[") and s.endswith("]"):
            cur = sections.setdefault(s[1:-1], [])
        elif cur is not None and "=" in s:
            k, _, v = s.partition("=")
            cur.append((k.strip(), v.strip()))
    return sections


def values(sec, key):
    return [v for k, v in sec if k == key]


def last(sec, key):
    v = values(sec, key)
    return v[-1] if v else None


def sysusers_users(path):
    users = set()
    for line in path.read_text().splitlines():
        f = shlex.split(line, comments=True)
        if len(f) >= 2 and f[0] in ("u", "u!"):
            users.add(f[1])
    return users


def check(path, users):
    def bad(msg):
        errors.append(f"{path.name}: {msg}")

    svc = parse(path).get("Service")
    if svc is None:
        bad("no [Service] section")
        return
    user = last(svc, "User")
    if user not in users:
        bad(f"User={user} is not a user the sysusers file creates ({sorted(users)})")
    if last(svc, "DynamicUser") in ("yes", "true", "1"):
        bad("DynamicUser= and a sysusers user contradict each other")
    creds = values(svc, "LoadCredential")
    if "psk:/etc/rdmabus/psk" not in creds:
        bad("no LoadCredential=psk:/etc/rdmabus/psk")
    execs = values(svc, "ExecStart")
    if len(execs) != 1:
        bad(f"want one ExecStart=, found {len(execs)}")
    for e in execs:
        argv = shlex.split(e)
        keys = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--key-file"]
        if keys != ["${CREDENTIALS_DIRECTORY}/psk"] and keys != ["%d/psk"]:
            bad(f"ExecStart passes --key-file {keys}: want ${{CREDENTIALS_DIRECTORY}}/psk")
    for k in ("Environment", "EnvironmentFile", "PassEnvironment", "SetCredential"):
        for v in values(svc, k):
            if "RDMABUS_PSK" in v or k == "SetCredential":
                bad(f"{k}={v}: the key must come from LoadCredential=, never the environment or the unit")
    if last(svc, "LimitMEMLOCK") != "infinity":
        bad("LimitMEMLOCK is not infinity: verbs cannot register its rings")
    if not any("infiniband_verbs" in v or "/dev/infiniband" in v for v in values(svc, "DeviceAllow")):
        bad("no DeviceAllow= for the verbs devices (/dev/infiniband/uverbs*)")
    if last(svc, "PrivateDevices") in ("yes", "true", "1"):
        bad("PrivateDevices= hides /dev/infiniband and the host's /dev/shm")
    if last(svc, "PrivateNetwork") in ("yes", "true", "1"):
        bad("PrivateNetwork= cuts verbs and the shm transport's abstract socket")
    want = {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "DevicePolicy": "closed",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
    }
    for k, v in want.items():
        if last(svc, k) != v:
            bad(f"{k}={last(svc, k)!r}, want {v!r}")
    if "2" not in (last(svc, "RestartPreventExitStatus") or "").split():
        bad("RestartPreventExitStatus lacks 2: a bad configuration would restart in a loop")


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    sysusers, units = pathlib.Path(argv[0]), [pathlib.Path(a) for a in argv[1:]]
    users = sysusers_users(sysusers)
    if not users:
        errors.append(f"{sysusers.name}: creates no user")
    for u in units:
        check(u, users)
    for e in errors:
        print(f"check_units: {e}", file=sys.stderr)
    if errors:
        return 1
    print(f"check_units: {len(units)} units, every promise kept")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
