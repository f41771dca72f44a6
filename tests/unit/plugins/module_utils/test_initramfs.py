# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import os
import shutil

import pytest
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args
from uki_image import write_uki  # tests/fixtures, on the path (conftest)

from ansible_collections.gpuvirt.host.plugins.module_utils import host as host_model
from ansible_collections.gpuvirt.host.plugins.module_utils import initramfs, uki

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "fixtures", "initramfs")
DEBIAN = "6.1.0-18-amd64"
ROCKY = "5.14.0-362.8.1.el9_3.x86_64"
FEDORA = "6.9.7-200.fc40.x86_64"
ARCH = "6.9.7-arch1-1"


def listing(name):
    with open(os.path.join(FIXTURES, "listings", name)) as handle:
        return handle.read()


@pytest.fixture
def tree(tmp_path):
    def copy(name):
        target = str(tmp_path / name)
        if not os.path.isdir(target):
            shutil.copytree(os.path.join(FIXTURES, name), target, symlinks=True)
        return target

    return copy


@pytest.fixture
def module():
    """A real AnsibleModule: run_command and get_bin_path as a module sees them."""
    with patch_module_args({}):
        return AnsibleModule(argument_spec={})


@pytest.fixture
def as_host(monkeypatch):
    """Rebuilding only happens when root is this host's /; let the fixture tree stand in for it."""
    monkeypatch.setattr(host_model, "is_live_root", lambda root: True)


# ------------------------------------------------------------------------------ module lists


@pytest.mark.parametrize(
    "release, virqfd",
    [
        ("6.1.0-18-amd64", True),
        ("5.15.0-91-generic", True),
        ("4.18.0-513.5.1.el8_9.x86_64", True),
        ("6.2.0", False),
        ("6.2.0-39-generic", False),
        ("6.8.4-2-pve", False),
        ("6.10.3-arch1-1", False),
    ],
)
def test_vfio_virqfd_only_before_6_2(release, virqfd):
    expected = ["vfio", "vfio_iommu_type1", "vfio_pci"] + (["vfio_virqfd"] if virqfd else [])
    assert initramfs.vfio_modules(release) == expected


def test_module_list_of_the_release_wins_over_its_version(tree):
    # a 5.14 kernel whose vfio_virqfd was merged into vfio (a backport): listing it would break dracut
    assert initramfs.vfio_modules(ROCKY) == ["vfio", "vfio_iommu_type1", "vfio_pci", "vfio_virqfd"]
    assert initramfs.vfio_modules(ROCKY, tree("rocky9-dracut")) == ["vfio", "vfio_iommu_type1", "vfio_pci"]
    assert initramfs.vfio_modules(DEBIAN, tree("debian-initramfs-tools"))[-1] == "vfio_virqfd"
    # no module data for the release below root: the version decides
    assert initramfs.vfio_modules("6.1.0-99-amd64", tree("debian-initramfs-tools"))[-1] == "vfio_virqfd"


@pytest.mark.parametrize("release", ["", "linux", "v6.1", None])
def test_not_a_release(release):
    with pytest.raises(initramfs.InitramfsError, match="is not a kernel release"):
        initramfs.vfio_modules(release)


def test_available_modules_merge_loadable_and_builtin(tree):
    names = initramfs.available_modules(tree("debian-initramfs-tools"), DEBIAN)
    assert {"vfio", "vfio_pci", "vfio_pci_core", "vfio_virqfd", "irqbypass", "pci_stub", "fb"} <= names
    assert initramfs.available_modules(tree("debian-initramfs-tools"), "9.9.9") is None


# ------------------------------------------------------------------------------ detection and paths


@pytest.mark.parametrize(
    "name, tool",
    [
        ("debian-initramfs-tools", "update-initramfs"),
        ("rocky9-dracut", "dracut"),
        ("fedora-dracut-kernel-install", "dracut"),
        ("arch-mkinitcpio", "mkinitcpio"),
    ],
)
def test_detect_tool(tree, name, tool):
    assert initramfs.detect_tool(tree(name)) == tool


def test_no_tool_fails_clearly(tree):
    with pytest.raises(initramfs.InitramfsError, match="no initramfs tool found below .*install one"):
        initramfs.detect_tool(tree("no-tool"))


def test_an_ostree_system_is_refused_though_dracut_is_installed(tree):
    root = tree("rocky9-dracut")
    os.makedirs(os.path.join(root, "run"))
    open(os.path.join(root, "run/ostree-booted"), "w").close()
    with pytest.raises(initramfs.InitramfsError, match="boots an OSTree deployment .* rpm-ostree builds it"):
        initramfs.detect_tool(root)


def test_unknown_tool_name(tree):
    with pytest.raises(initramfs.InitramfsError, match="unknown initramfs tool 'genkernel'"):
        initramfs.image_path(tree("no-tool"), DEBIAN, "genkernel")


def test_image_paths(tree):
    debian = tree("debian-initramfs-tools")
    assert initramfs.image_path(debian, DEBIAN) == os.path.join(debian, "boot/initrd.img-" + DEBIAN)
    rocky = tree("rocky9-dracut")
    assert initramfs.image_path(rocky, ROCKY) == os.path.join(rocky, "boot/initramfs-%s.img" % ROCKY)
    fedora = tree("fedora-dracut-kernel-install")
    assert initramfs.image_path(fedora, FEDORA) == os.path.join(
        fedora, "efi/5b8a1c2d3e4f40718293a4b5c6d7e8f9/%s/initrd" % FEDORA
    )
    arch = tree("arch-mkinitcpio")
    assert initramfs.image_path(arch, ARCH) == os.path.join(arch, "boot/initramfs-linux.img")


def test_kernel_installs_image_is_found_under_its_entry_token(tree):
    # /etc/kernel/entry-token names kernel-install's folders (here the OS ID), not the machine ID.
    fedora = tree("fedora-dracut-kernel-install")
    os.rename(os.path.join(fedora, "efi/5b8a1c2d3e4f40718293a4b5c6d7e8f9"), os.path.join(fedora, "efi/fedora"))
    os.makedirs(os.path.join(fedora, "etc/kernel"))
    with open(os.path.join(fedora, "etc/kernel/entry-token"), "w") as handle:
        handle.write("fedora\n")
    assert initramfs.image_path(fedora, FEDORA) == os.path.join(fedora, "efi/fedora/%s/initrd" % FEDORA)
    assert initramfs.releases_with_image(fedora) == [FEDORA]


def test_regenerate_commands(tree):
    debian = tree("debian-initramfs-tools")
    assert initramfs.regenerate_command(debian, DEBIAN) == ["update-initramfs", "-u", "-k", DEBIAN]
    os.unlink(os.path.join(debian, "boot/initrd.img-" + DEBIAN))
    assert initramfs.regenerate_command(debian, DEBIAN) == ["update-initramfs", "-c", "-k", DEBIAN]
    rocky = tree("rocky9-dracut")
    assert initramfs.regenerate_command(rocky, ROCKY) == [
        "dracut",
        "--force",
        os.path.join(rocky, "boot/initramfs-%s.img" % ROCKY),
        ROCKY,
    ]
    arch = tree("arch-mkinitcpio")
    assert initramfs.regenerate_command(arch, ARCH) == ["mkinitcpio", "-p", "linux"]
    os.unlink(os.path.join(arch, "etc/mkinitcpio.d/linux.preset"))
    assert initramfs.regenerate_command(arch, ARCH) == [
        "mkinitcpio",
        "-k",
        ARCH,
        "-g",
        os.path.join(arch, "boot/initramfs-linux.img"),
    ]


# ------------------------------------------------------------------------------ regenerate


def test_regenerate_runs_the_tool(tree, module, fake_commands, as_host):
    root = tree("debian-initramfs-tools")
    path = fake_commands.install("update-initramfs")
    assert initramfs.regenerate(module, root, DEBIAN) == [path, "-u", "-k", DEBIAN]
    assert fake_commands.calls() == [["update-initramfs", "-u", "-k", DEBIAN]]


def test_regenerate_failure_says_why(tree, module, fake_commands, as_host):
    root = tree("rocky9-dracut")
    fake_commands.install("dracut", stderr="dracut-install: Failed to find module 'vfio_virqfd'\n", rc=1)
    with pytest.raises(initramfs.InitramfsError, match="dracut --force .* failed \\(rc 1\\): dracut-install: Failed"):
        initramfs.regenerate(module, root, ROCKY)


def test_regenerate_refuses_an_image_tree(tree, module, fake_commands):
    root = tree("arch-mkinitcpio")
    fake_commands.install("mkinitcpio")
    with pytest.raises(initramfs.InitramfsError, match="is not this host's root; run mkinitcpio -p linux inside"):
        initramfs.regenerate(module, root, ARCH)
    assert fake_commands.calls() == []


def test_regenerate_without_the_tool_on_this_host(tree, module, as_host):
    with pytest.raises(initramfs.InitramfsError, match="mkinitcpio was not found on this host; install mkinitcpio"):
        initramfs.regenerate(module, tree("arch-mkinitcpio"), ARCH)


# ------------------------------------------------------------------------------ listings and verification


def test_listings_parse_to_paths():
    debian = initramfs.parse_listing("update-initramfs", listing("lsinitramfs.txt"))
    assert "etc/modprobe.d/gpuvirt-vfio.conf" in debian
    assert "." not in debian
    dracut = initramfs.parse_listing("dracut", listing("lsinitrd.txt"))
    assert dracut[:3] == ["early_cpio", "kernel", "kernel/x86/microcode/GenuineIntel.bin"]
    assert "dev/console" in dracut
    assert "bin" in dracut and "bin -> usr/bin" not in dracut
    assert "systemd" not in dracut and "bash" not in dracut
    assert "usr/lib/modules/%s/kernel/virt/lib/irqbypass.ko.xz" % ROCKY in dracut
    arch = initramfs.parse_listing("mkinitcpio", listing("lsinitcpio.txt"))
    assert arch[0] == "buildconfig"
    assert "etc/modprobe.d/gpuvirt-vfio.conf" in arch


def test_verify_image_initramfs_tools(tree, module, fake_commands):
    root = tree("debian-initramfs-tools")
    fake_commands.install("lsinitramfs", stdout=listing("lsinitramfs.txt"))
    check = initramfs.verify_image(
        module,
        root,
        DEBIAN,
        modules=initramfs.vfio_modules(DEBIAN, root),
        files=["/etc/modprobe.d/gpuvirt-vfio.conf", "/lib/modules/%s/modules.dep" % DEBIAN],
    )
    assert check.ok
    assert check.tool == "update-initramfs"
    assert check.image == os.path.join(root, "boot/initrd.img-" + DEBIAN)
    assert fake_commands.calls() == [["lsinitramfs", check.image]]


def test_verify_image_reports_what_is_missing(tree, module, fake_commands):
    root = tree("rocky9-dracut")
    fake_commands.install("lsinitrd", stdout=listing("lsinitrd.txt"))
    check = initramfs.verify_image(
        module,
        root,
        ROCKY,
        modules=["vfio", "vfio-pci", "vfio_iommu_type1", "pci_stub"],
        files=["/etc/modprobe.d/gpuvirt-vfio.conf", "/etc/modprobe.d/other.conf"],
    )
    assert not check.ok
    assert check.missing_modules == ["vfio_iommu_type1"]
    assert check.builtin_modules == ["pci_stub"]
    assert check.missing_files == ["/etc/modprobe.d/other.conf"]


@pytest.mark.parametrize("name", ["lsinitrd-squashfs.txt", "lsinitrd-erofs.txt"])
def test_an_image_with_a_squashed_root_is_read_through_it(tree, module, fake_commands, name):
    # dracut's squash modules put the image's files in squash-root.img or erofs-root.img; lsinitrd lists
    # them after the cpio part, as unsquashfs -ll or find -ls shows them.
    root = tree("rocky9-dracut")
    fake_commands.install("lsinitrd", stdout=listing(name))
    paths = initramfs.parse_listing("dracut", listing(name))
    assert "etc/modprobe.d/gpuvirt-vfio.conf" in paths and "bin" in paths and "init" in paths
    assert not [path for path in paths if path.startswith(("squashfs-root/", "erofs-root/"))]
    check = initramfs.verify_image(
        module,
        root,
        ROCKY,
        modules=["vfio", "vfio-pci", "vfio_iommu_type1"],
        files=["/etc/modprobe.d/gpuvirt-vfio.conf", "/etc/modprobe.d/other.conf"],
    )
    assert check.missing_modules == ["vfio_iommu_type1"]
    assert check.missing_files == ["/etc/modprobe.d/other.conf"]


def test_verify_image_counts_builtin_vfio(tree, module, fake_commands):
    root = tree("fedora-dracut-kernel-install")
    fake_commands.install("lsinitrd", stdout="")
    check = initramfs.verify_image(module, root, FEDORA, modules=initramfs.vfio_modules(FEDORA, root))
    assert check.ok
    assert check.builtin_modules == ["vfio", "vfio_iommu_type1", "vfio_pci"]
    assert fake_commands.calls() == [
        ["lsinitrd", os.path.join(root, "efi/5b8a1c2d3e4f40718293a4b5c6d7e8f9/%s/initrd" % FEDORA)]
    ]


def test_verify_image_mkinitcpio(tree, module, fake_commands):
    root = tree("arch-mkinitcpio")
    fake_commands.install("lsinitcpio", stdout=listing("lsinitcpio.txt"))
    check = initramfs.verify_image(
        module, root, ARCH, modules=initramfs.vfio_modules(ARCH), files=["etc/modprobe.d/gpuvirt-vfio.conf"]
    )
    assert check.ok, check


def test_missing_image_names_the_command_that_builds_it(tree, module, fake_commands):
    root = tree("debian-initramfs-tools")
    os.unlink(os.path.join(root, "boot/initrd.img-" + DEBIAN))
    fake_commands.install("lsinitramfs")
    with pytest.raises(initramfs.InitramfsError, match="no initramfs image for .*update-initramfs -c -k " + DEBIAN):
        initramfs.list_image(module, root, DEBIAN)
    assert fake_commands.calls() == []


def test_failing_lister(tree, module, fake_commands):
    root = tree("debian-initramfs-tools")
    fake_commands.install("lsinitramfs", stderr="cpio: premature end of archive\n", rc=2)
    with pytest.raises(initramfs.InitramfsError, match="lsinitramfs .* failed \\(rc 2\\): cpio: premature end"):
        initramfs.list_image(module, root, DEBIAN)


def test_releases_with_image(tree):
    debian = tree("debian-initramfs-tools")
    os.makedirs(os.path.join(debian, "lib/modules/6.1.0-9-amd64"))
    with open(os.path.join(debian, "boot/initrd.img-6.1.0-9-amd64"), "w"):
        pass
    os.makedirs(os.path.join(debian, "lib/modules/6.1.0-20-amd64"))  # no image: not covered
    assert initramfs.releases_with_image(debian) == ["6.1.0-9-amd64", DEBIAN]
    assert initramfs.releases_with_image(tree("rocky9-dracut")) == [ROCKY]
    assert initramfs.releases_with_image(tree("fedora-dracut-kernel-install")) == [FEDORA]
    assert initramfs.releases_with_image(tree("arch-mkinitcpio")) == [ARCH]


# ------------------------------------------------------------------------------ unified kernel images


def test_a_unified_kernel_images_sections_are_read_as_objcopy_would(tmp_path):
    path = str(tmp_path / "arch-linux.efi")
    write_uki(path, {".osrel": b"ID=arch\n", ".cmdline": b"root=UUID=7e1f rw quiet\0", ".initrd": b"\x07\x07" * 700})
    assert uki.section(path, ".cmdline") == b"root=UUID=7e1f rw quiet\0"
    assert uki.section(path, ".initrd") == b"\x07\x07" * 700
    assert uki.section(path, ".splash") is None
    with open(path, "r+b") as handle:
        handle.truncate(1200)
    with pytest.raises(uki.UkiError, match="cut short"):
        uki.section(path, ".initrd")
    with open(path, "wb") as handle:
        handle.write(b"\x7fELF" + b"\0" * 100)
    with pytest.raises(uki.UkiError, match="not an EFI executable"):
        uki.section(path, ".initrd")


def uki_host(tree):
    """arch-mkinitcpio whose preset builds unified kernel images only (as archinstall sets it up)."""
    root = tree("arch-mkinitcpio")
    with open(os.path.join(root, "etc/mkinitcpio.d/linux.preset"), "w") as handle:
        handle.write('ALL_kver="/boot/vmlinuz-linux"\nPRESETS=(\'default\' \'fallback\')\n\n'
                     '#default_image="/boot/initramfs-linux.img"\ndefault_uki="/efi/EFI/Linux/arch-linux.efi"\n\n'
                     'fallback_uki="/efi/EFI/Linux/arch-linux-fallback.efi"\nfallback_options="-S autodetect"\n')
    for name in ("initramfs-linux.img", "initramfs-linux-fallback.img"):
        os.unlink(os.path.join(root, "boot", name))
    return root


def test_the_initramfs_in_a_unified_kernel_image_is_the_one_verified(tree, module, fake_commands):
    root = uki_host(tree)
    image = os.path.join(root, "efi/EFI/Linux/arch-linux.efi")
    initrd = b"070701" + b"\0" * 2000
    write_uki(image, {".linux": b"kernel", ".initrd": initrd, ".cmdline": b"rw\0"})
    copy = os.path.join(os.path.dirname(fake_commands.staged_kargs), "listed")
    fake_commands.install("lsinitcpio", stdout=listing("lsinitcpio.txt"),
                          body="open(%r, 'wb').write(open(sys.argv[1], 'rb').read())" % copy)
    assert initramfs.image_path(root, ARCH) == image
    assert initramfs.releases_with_image(root) == [ARCH]
    assert initramfs.regenerate_command(root, ARCH) == ["mkinitcpio", "-p", "linux"]
    check = initramfs.verify_image(
        module, root, ARCH, modules=initramfs.vfio_modules(ARCH), files=["etc/modprobe.d/gpuvirt-vfio.conf"]
    )
    assert check.ok and check.image == image, check
    with open(copy, "rb") as handle:
        assert handle.read() == initrd
    [call] = fake_commands.calls()
    assert call[0] == "lsinitcpio" and not os.path.exists(call[1])  # the extracted copy is removed


def test_a_unified_kernel_image_without_an_initramfs_is_reported(tree, module, fake_commands):
    root = uki_host(tree)
    write_uki(os.path.join(root, "efi/EFI/Linux/arch-linux.efi"), {".linux": b"kernel", ".cmdline": b"rw\0"})
    fake_commands.install("lsinitcpio")
    with pytest.raises(initramfs.InitramfsError, match=r"holds no initramfs \(.initrd section\); rebuild it with "
                       r"mkinitcpio -p linux"):
        initramfs.list_image(module, root, ARCH)
    assert fake_commands.calls() == []


def test_kernel_installs_unified_kernel_image_is_rebuilt_by_kernel_install_and_verified(tree, module, fake_commands):
    # layout=uki: kernel-install runs dracut and ukify; the initramfs that boots is inside the image it
    # puts in <ESP>/EFI/Linux (here with a boot counter).
    root = tree("fedora-dracut-kernel-install")
    os.makedirs(os.path.join(root, "etc/kernel"))
    with open(os.path.join(root, "etc/kernel/install.conf"), "w") as handle:
        handle.write("layout=uki\nuki_generator=ukify\n")
    image = os.path.join(root, "efi/EFI/Linux/5b8a1c2d3e4f40718293a4b5c6d7e8f9-%s+3-0.efi" % FEDORA)
    write_uki(image, {".linux": b"kernel", ".initrd": b"070701" * 300, ".cmdline": b"rw\0"})
    fake_commands.install("lsinitrd", stdout=listing("lsinitrd.txt"))
    assert initramfs.image_path(root, FEDORA) == image
    assert initramfs.regenerate_command(root, FEDORA) == [
        "kernel-install", "add", FEDORA, "/lib/modules/%s/vmlinuz" % FEDORA]
    check = initramfs.verify_image(
        module, root, FEDORA, modules=initramfs.vfio_modules(FEDORA), files=["etc/modprobe.d/gpuvirt-vfio.conf"]
    )
    assert check.image == image and check.ok, check
    [call] = fake_commands.calls()
    assert call[0] == "lsinitrd" and call[1] != image
