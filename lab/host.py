"""The host as iproute2 reports it: an observer independent of the lab's own pyroute2 code."""

from __future__ import annotations

import json
import subprocess


def ip_netns_list() -> set[str]:
    out = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True, check=True)
    return {x["name"] for x in json.loads(out.stdout or "[]")}


def root_link_names() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True)
    return {x["ifname"] for x in json.loads(out.stdout)}
