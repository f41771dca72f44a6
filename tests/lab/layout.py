# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's layout file (layout.yml) as the tests use it: device names to guest addresses."""

from __future__ import annotations

import os

import yaml

LAYOUT_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "layout.yml")


class Layout:
    def __init__(self, path=LAYOUT_FILE):
        with open(path, encoding="utf-8") as handle:
            self.data = yaml.safe_load(handle)
        self.devices = [d for d in self.data["devices"] if d.get("address")]
        self.by_name = {d["name"]: d for d in self.devices}
        self.expect = self.data["expect"]

    def address(self, name):
        return self.by_name[name]["address"]

    def addresses(self, names):
        return sorted(self.address(n) for n in names)

    def shared_groups(self):
        """Each expected multi-device IOMMU group as a sorted list of addresses."""
        return [self.addresses(group) for group in self.expect["shared_groups"]]

    def alone(self):
        """Addresses of the devices expected in an IOMMU group of their own."""
        shared = {a for group in self.shared_groups() for a in group}
        return sorted(d["address"] for d in self.devices if d["address"] not in shared)

    def gpus(self):
        """Expected GPU verdicts, with names resolved to addresses."""
        out = []
        for gpu in self.expect["gpus"]:
            entry = dict(gpu, address=self.address(gpu["name"]))
            if "bind_together" in gpu:
                entry["bind_together"] = self.addresses(gpu["bind_together"])
            if "shares_group_with" in gpu:
                entry["shares_group_with"] = self.addresses(gpu["shares_group_with"])
            out.append(entry)
        return out

    def sriov(self):
        return [dict(pf, address=self.address(pf["name"])) for pf in self.expect["sriov"]]

    def role(self, role):
        return [d for d in self.devices if d.get("role") == role]
