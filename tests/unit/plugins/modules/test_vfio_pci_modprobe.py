# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``vfio_pci``'s modprobe.d file among the host's own configuration, read as libkmod reads it.

modprobe uses only the first ``softdep`` line of a module (``kmod_module_get_softdeps()``), in the order
of the files' names across the modprobe.d folders, with depmod's ``modules.softdep`` sorted among them.
So each of our softdep lines keeps the modules of the host's line for that module, and a host line that
modprobe reads first and that leaves vfio-pci out is named in a warning. A line that ends in a backslash
goes on on the next line (``getline_wrapped()``)."""

from __future__ import annotations

import os

from ansible_collections.gpuvirt.host.plugins.module_utils import modprobe, vfio
from ansible_collections.gpuvirt.host.tests.sim.mdev_kernel import KernelSim
from ansible_collections.gpuvirt.host.tests.sim.pci_kernel import PciKernel
from ansible_collections.gpuvirt.host.tests.unit.plugins.modules.test_vfio_pci import (
    GPU,
    MODPROBE,
    MODULES,
    RELEASE,
    assert_second_run_changes_nothing,
    read,
    warnings,
)

AUDIO_FIX = "softdep snd_hda_intel pre: snd_hda_codec_realtek post: snd_hda_codec_hdmi\n"
NVIDIA_OWN = "# Soft dependencies extracted from modules themselves.\nsoftdep nvidia pre: ecdh_generic ecdsa_generic\n"


def host(make_host, files):
    return make_host("desktop_dgpu", kernel={"modules": MODULES}, files=files)


def test_an_audio_softdep_read_before_ours_is_named_and_kept_in_ours(make_host, vfio_pci):
    # alsa-base.conf sorts before gpuvirt-vfio.conf: modprobe uses its line and ignores ours.
    root = host(make_host, {"etc/modprobe.d/alsa-base.conf": AUDIO_FIX})
    result = vfio_pci(root, devices=[GPU])
    assert result["rc"] == 0, result
    (warning,) = [w for w in warnings(result) if "softdep" in w]
    assert warning.startswith("/etc/modprobe.d/alsa-base.conf has a softdep line for snd_hda_intel")
    assert "put vfio-pci at the start of that line's pre: list (softdep snd_hda_intel pre: vfio-pci " \
           "snd_hda_codec_realtek post: snd_hda_codec_hdmi)" in warning
    conf = read(root, MODPROBE)
    assert "softdep snd_hda_intel pre: vfio-pci snd_hda_codec_realtek post: snd_hda_codec_hdmi\n" in conf
    # Once the host's line loads vfio-pci first, there is nothing to say.
    with open(os.path.join(root, "etc/modprobe.d/alsa-base.conf"), "w") as handle:
        handle.write("softdep snd_hda_intel pre: vfio-pci snd_hda_codec_realtek post: snd_hda_codec_hdmi\n")
    again = vfio_pci(root, devices=[GPU])
    assert again["changed"] is False and not [w for w in warnings(again) if "softdep" in w]


def test_a_drivers_own_softdep_read_after_ours_is_kept_in_ours(make_host, vfio_pci):
    # nvidia.ko's MODULE_SOFTDEP("pre: ecdh_generic,ecdsa_generic"): depmod writes it to modules.softdep,
    # which sorts after gpuvirt-vfio.conf, so ours is the line modprobe uses and must carry it.
    root = host(make_host, {"lib/modules/%s/modules.softdep" % RELEASE: NVIDIA_OWN,
                            "usr/lib/modprobe.d/snd.conf": AUDIO_FIX})
    again = assert_second_run_changes_nothing(vfio_pci, root, devices=[GPU])
    conf = read(root, MODPROBE)
    assert "softdep nvidia pre: vfio-pci ecdh_generic ecdsa_generic\n" in conf
    assert "softdep snd_hda_intel pre: vfio-pci snd_hda_codec_realtek post: snd_hda_codec_hdmi\n" in conf
    assert "amdgpu" not in conf and "i915" not in conf, "no other vendor's GPU drivers for an NVIDIA GPU"
    assert not [w for w in warnings(again) if "softdep" in w]
    assert modprobe.first_softdeps(root, RELEASE)["nvidia"].pre == ["vfio-pci", "ecdh_generic", "ecdsa_generic"]


def test_a_continued_options_line_of_another_file_is_seen(make_host, vfio_pci):
    # vfio.conf sorts after ours: its ids= list is the one vfio-pci keeps at boot.
    root = host(make_host, {"etc/modprobe.d/vfio.conf": "options vfio-pci \\\n    ids=1002:73bf,1002:ab28\n"})
    result = vfio_pci(root, devices=[GPU])
    assert result["rc"] == 0, result
    assert any(w.startswith("/etc/modprobe.d/vfio.conf also sets vfio-pci ids=1002:73bf,1002:ab28;")
               for w in warnings(result)), warnings(result)


def test_the_files_modprobe_reads_in_its_order(make_host):
    root = host(make_host, {
        "usr/lib/modprobe.d/50-a.conf": "softdep amdgpu pre: a\n",
        "etc/modprobe.d/50-a.conf": "# the administrator's copy hides the vendor's\n",
        "usr/local/lib/modprobe.d/10-local.conf": "softdep amdgpu pre: \\\n local\n",
        "lib/modprobe.d/zz.conf": "softdep amdgpu pre: z\n",
        "run/modprobe.d/.hidden.conf": "softdep amdgpu pre: hidden\n",
        "etc/modprobe.d/notes.txt": "softdep amdgpu pre: txt\n",
        "lib/modules/%s/modules.softdep" % RELEASE: "softdep snd-hda-intel pre: own\n",
    })
    assert modprobe.config_files(root, RELEASE) == [
        "usr/local/lib/modprobe.d/10-local.conf", "etc/modprobe.d/50-a.conf",
        "lib/modules/%s/modules.softdep" % RELEASE, "lib/modprobe.d/zz.conf"]
    assert modprobe.first_softdeps(root, RELEASE)["amdgpu"].pre == ["local"]
    assert modprobe.first_softdeps(root, RELEASE, skip=("usr/local/lib/modprobe.d/10-local.conf",))["amdgpu"].pre \
        == ["z"]
    assert modprobe.first_softdeps(root, RELEASE)["snd_hda_intel"].pre == ["own"]


def test_a_vendor_added_to_the_collection_changes_no_file_where_its_gpus_are_not_passed_through(
        make_host, vfio_pci, monkeypatch):
    # Another vendor's driver in the registry: a host passing an NVIDIA GPU through keeps its file as it is,
    # so that upgrading the collection rebuilds no initramfs.
    root = host(make_host, {})
    kernel = PciKernel(KernelSim(root))
    assert vfio_pci(root, kernel=kernel, devices=[GPU])["changed"] is True
    before = read(root, MODPROBE)
    monkeypatch.setattr(vfio, "SOFTDEP_DRIVERS", ("acmegpu",) + vfio.SOFTDEP_DRIVERS)
    again = vfio_pci(root, kernel=kernel, devices=[GPU])
    assert again["changed"] is False and read(root, MODPROBE) == before, again


def test_softdep_lines_a_file_already_has_are_kept(make_host, vfio_pci):
    # A file written when every vendor's drivers were listed keeps them: no change, no initramfs rebuild.
    root = host(make_host, {})
    kernel = PciKernel(KernelSim(root))
    assert vfio_pci(root, kernel=kernel, devices=[GPU])["changed"] is True
    # As earlier releases wrote it: every vendor's drivers, in the registry's order.
    widened = vfio.render_modprobe_conf(vfio.modprobe_ids(read(root, MODPROBE)), vfio.SOFTDEP_DRIVERS)
    assert "softdep amdgpu pre: vfio-pci\n" in widened and widened != read(root, MODPROBE)
    with open(os.path.join(root, MODPROBE), "w") as handle:
        handle.write(widened)
    again = vfio_pci(root, kernel=kernel, devices=[GPU])
    assert again["changed"] is False and read(root, MODPROBE) == widened, again
