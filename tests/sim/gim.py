# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""AMD's GIM host driver probing its GPUs (github.com/amd/MxGPU-Virtualization: gim_shim, gim_config.c).

GIM binds the GPUs it supports and calls ``pci_enable_sriov`` itself at probe, GPU ``x`` (in PCI order)
getting ``vf_num[x]`` VFs (``module_param_array(vf_num, uint, ..., 0444)``: ``vf_num=N0,N1,...``, 1 to
31 each) within the device's ``sriov_totalvfs``. A GPU past the end of the list gets its last value
(``set_array_value`` in gim_config.c fills the rest of the array with it: ``vf_num=8`` is 8 on every
GPU); without ``vf_num`` every GPU gets GIM's default, ``VF_NUMBER__DEFAULT`` (1, gim_config.h) as
:data:`DEFAULT_VF_NUM` (``/etc/gim_config`` is not read here). GIM has no
``sriov_configure``, so writing another count to ``sriov_numvfs`` fails ``ENOENT``
(:meth:`sriov_kernel.SriovKernel.configure`); the VFs have no host driver (amdgpu is blacklisted).
"""

from __future__ import annotations

import os

try:
    from ansible_collections.gpuvirt.host.tests.sim.mdev_kernel import KernelSim
    from ansible_collections.gpuvirt.host.tests.sim.sriov_kernel import SriovKernel
except ImportError:  # run as the fake modprobe: tests/sim is on sys.path
    from mdev_kernel import KernelSim
    from sriov_kernel import SriovKernel

MODULE = "gim"
DEFAULT_VF_NUM = 1


def _gim_gpus(root):
    bus = os.path.join(root, "sys/bus/pci/devices")
    found = []
    for pf in sorted(os.listdir(bus)):
        link = os.path.join(bus, pf, "driver")
        if (os.path.exists(os.path.join(bus, pf, "sriov_totalvfs")) and os.path.islink(link)
                and os.path.basename(os.readlink(link)) == MODULE):
            found.append(pf)
    return found


def probe(root):
    """GIM enables the VFs of each GPU it drives; returns ``{pf: VF count}``."""
    try:
        with open(os.path.join(root, "sys/module/gim/parameters/vf_num"), encoding="ascii") as handle:
            values = [v for v in handle.read().strip().split(",") if v]
    except FileNotFoundError:
        values = []
    sriov = SriovKernel(KernelSim(root))
    done = {}
    for index, pf in enumerate(_gim_gpus(root)):
        value = values[min(index, len(values) - 1)] if values else ""
        wanted = int(value) if value.isdigit() else DEFAULT_VF_NUM
        count = min(wanted, int(sriov.read(pf, "sriov_totalvfs")))
        sriov.configure(pf, sriov_configure=False, vf_driver=None)
        if not sriov.vfs_of(pf):
            sriov.create_vfs(pf, count)
        done[pf] = len(sriov.vfs_of(pf))
    return done
