#!/usr/bin/python
# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: restore_unit
short_description: Install gpuvirt-restore.service, which restores VFs, vGPU types and mediated devices at boot
version_added: 0.1.0
author: gpuvirt.host maintainers (@gpuvirt)
description:
  - Installs the boot-time restore of what M(gpuvirt.host.sriov), M(gpuvirt.host.nvidia_vgpu) and
    M(gpuvirt.host.mdev) record in C(/etc/gpuvirt/host-state.json), and enables it.
  - "The restore is the collection's own target-side code (Python standard library only): this module
    writes exactly the files it imports under O(prefix) (as
    C(ansible_collections/gpuvirt/host/plugins/module_utils/)), taken from the module's own payload, so
    that the controller sends them in one go. Files left from an older version are removed."
  - "The unit, C(/etc/systemd/system/gpuvirt-restore.service), is C(Type=oneshot), ordered
    C(After=systemd-modules-load.service) and C(Before=libvirtd.service virtqemud.service), and wanted by
    C(multi-user.target): VMs start after their devices are back. It runs
    C(python3 -m ansible_collections.gpuvirt.host.plugins.module_utils.restore), which restores VFs (handing
    those recorded with M(gpuvirt.host.sriov)'s C(vfio) to vfio-pci), then vGPU types, then mediated
    devices, reads each back with bounded retries, and logs the time from boot to restored
    (C(journalctl -u gpuvirt-restore), C(/run/gpuvirt/restore.json)). It is ordered
    C(Before=nvidia-mig-manager.service): NVIDIA's SR-IOV must be set up before the GPU instances are created."
  - "Time budget: each item waits up to O(timeout) (the drivers together, from the step's start); the items
    on a device whose driver or VF item failed, and on its VFs, fail at once naming that cause. The whole
    run has a deadline, C(--deadline), of 4 x O(timeout) + O(mdevctl_grace) + 30 s (280 s by default); the
    items left after it fail at once, so the run ends and writes its status file. The unit's
    C(TimeoutStartSec) is that deadline plus 30 s (310 s by default); should systemd still stop the unit
    (SIGTERM), the status file is written with what was done and where it stopped. The late unit has the
    same budget without O(mdevctl_grace) (270 s, C(TimeoutStartSec) 300 s)."
  - "A second unit, C(/etc/systemd/system/gpuvirt-restore-late.service), runs the same code with C(--late)
    C(After=gpuvirt-restore.service nvidia-mig-manager.service) and before libvirt: it writes the MIG-backed
    NVIDIA vGPU types (C(A100-1-5C)), which a VF offers only once nvidia-mig-manager has created their GPU
    instances (with the vGPU manager before 17, the mdevs of such types on the VFs), waiting up to
    O(timeout) for each and naming what is missing otherwise
    (C(journalctl -u gpuvirt-restore-late), C(/run/gpuvirt/restore-late.json)). Without nvidia-mig-manager it
    runs right after the first unit and has nothing to do unless MIG-backed types are recorded."
  - Enabling is done as C(systemctl enable) does it, with the C(multi-user.target.wants) link, so it also
    works on image trees (O(root)). On the live host (O(root=/)) systemd is reloaded when the unit changed,
    and the installed code is imported once with O(python) to prove it runs.
extends_documentation_fragment:
  - gpuvirt.host.attributes
  - gpuvirt.host.attributes.linux
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - Shows the unit file, the list of installed code files with their SHA-256 digests, then the late unit file.
options:
  state:
    description:
      - V(absent) removes both units, their links and the installed code.
    type: str
    choices: [present, absent]
    default: present
  prefix:
    description:
      - The folder that receives the code (the unit's C(PYTHONPATH)), below O(root).
      - An absolute path without C(..), whitespace, quotes, backslashes, C(%), C(;) or C($), which
        systemd would read as unit syntax.
      - A folder of the restore's own, never one where gpuvirt.host is installed as a collection (the
        module refuses it), since the code folder holds only what the restore imports.
      - When the installed unit runs the code from another prefix (an earlier run's), its code folder there is
        emptied of C(.py) files (an earlier release may have shipped files this one does not) and removed, with
        O(state=present) as with O(state=absent); files outside that folder stay. Where a collection has been
        installed at that prefix since, only the files the restore ships are removed.
    type: path
    default: /usr/local/lib/gpuvirt
  python:
    description:
      - The Python 3 (3.9 or later) the unit runs the restore with; an absolute path, with the same
        limits as O(prefix).
    type: path
    default: /usr/bin/python3
  timeout:
    description:
      - Seconds the restore waits for each driver or device to appear; more than 0 and at most 3600.
      - Also sets the run's deadline (4 x O(timeout) + O(mdevctl_grace) + 30 s) and the units'
        C(TimeoutStartSec) (the deadline plus 30 s).
    type: float
    default: 60
  mdevctl_grace:
    description:
      - Seconds the restore leaves mdevctl to start the mdevs it defines before creating them itself
        (only when mdevctl's udev rule can run at all); from 0 to 3600.
    type: float
    default: 10
  root:
    description:
      - The host filesystem root to install into, for image trees and tests. systemd is only reloaded,
        and the code only test-imported, when this is V(/).
      - It must exist; it is never created.
    type: path
    default: /
seealso:
  - module: gpuvirt.host.mdev
  - module: gpuvirt.host.sriov
  - module: gpuvirt.host.nvidia_vgpu
"""

EXAMPLES = r"""
- name: Restore VFs, vGPU types and mdevs at every boot
  gpuvirt.host.restore_unit:

- name: Into an image tree, with a longer wait for slow drivers
  gpuvirt.host.restore_unit:
    root: /srv/images/gpu-host
    timeout: 180
"""

RETURN = r"""
unit:
  description: The unit file.
  returned: always
  type: str
  sample: /etc/systemd/system/gpuvirt-restore.service
late_unit:
  description: The late unit file (the items that need the vendors' services).
  returned: always
  type: str
  sample: /etc/systemd/system/gpuvirt-restore-late.service
enabled:
  description: Whether the units are enabled (wanted by C(multi-user.target)) after the run.
  returned: always
  type: bool
code_dir:
  description: Where the restore code is (would be) installed.
  returned: always
  type: str
  sample: /usr/local/lib/gpuvirt/ansible_collections/gpuvirt/host/plugins/module_utils
code_files:
  description: The code files the restore needs.
  returned: always
  type: list
  elements: str
  sample: [hoststate.py, mdev.py, restore.py, sriov.py, sysfs.py]
files_changed:
  description: Files and links written or removed (to be, in check mode).
  returned: always
  type: list
  elements: str
reboot_required:
  description: Always V(false); the unit acts at the next boot, nothing needs one.
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.gpuvirt.host.plugins.module_utils import modrun  # noqa: E402
from ansible_collections.gpuvirt.host.plugins.module_utils.restore_unit_run import RestoreUnitRun  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["present", "absent"], default="present"),
            prefix=dict(type="path", default="/usr/local/lib/gpuvirt"),
            python=dict(type="path", default="/usr/bin/python3"),
            timeout=dict(type="float", default=60),
            mdevctl_grace=dict(type="float", default=10),
            root=dict(type="path", default="/"),
        ),
        supports_check_mode=True,
    )
    modrun.run(module, RestoreUnitRun)


if __name__ == "__main__":
    main()
