# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read a nova.conf with Nova's own option definitions and parsers; print what Nova understood as JSON.

Runs in the venv that holds Nova (see requirements-nova.txt):
``python nova_parse.py FILE [DEVICES.json]``. ``DEVICES.json`` is a list of PCI device dicts
(``vendor_id``, ``product_id``, ``address``, ``parent_addr``); for each, the output says which
``device_spec`` entries match it, through Nova's ``PciDeviceSpec.match``.
"""

from __future__ import annotations

import json
import sys
import warnings


def main(path, devices_path=None):
    warnings.simplefilter("ignore")
    import nova.conf
    from nova.pci import request, whitelist

    conf = nova.conf.CONF
    conf(["--config-file", path], project="nova", default_config_files=[])
    allowed = whitelist.Whitelist(conf.pci.device_spec)
    aliases = request.get_alias_from_config()
    nova.conf.devices.register_dynamic_opts(conf)
    groups = {}
    for type_id in conf.devices.enabled_mdev_types:
        group = conf["mdev_%s" % type_id]
        groups[type_id] = {
            "device_addresses": list(group.device_addresses),
            "mdev_class": group.mdev_class,
            "max_instances": group.max_instances,
        }
    matches = []
    if devices_path:
        with open(devices_path) as handle:
            for device in json.load(handle):
                matches.append([index for index, spec in enumerate(allowed.specs) if spec.match(device)])
    print(
        json.dumps(
            {
                "device_spec_count": len(allowed.specs),
                "aliases": {name: {"numa_policy": policy, "specs": specs} for name, (policy, specs) in aliases.items()},
                "enabled_mdev_types": list(conf.devices.enabled_mdev_types),
                "mdev_groups": groups,
                "matches": matches,
            },
            sort_keys=True,
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
