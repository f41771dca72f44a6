# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter ``kubevirt_host_devices``: the KubeVirt CR's ``permittedHostDevices`` and mdev configuration."""

from __future__ import annotations

DOCUMENTATION = r"""
name: kubevirt_host_devices
version_added: 0.1.0
author: gpuvirt.host maintainers (@gpuvirt)
short_description: KubeVirt permittedHostDevices and mediatedDevicesConfiguration for a cluster's nodes
description:
  - Takes the topologies of M(gpuvirt.host.topology_info) of every node of the cluster, as a dict of
    Kubernetes node names to topologies (or one topology, for a single host), and returns the
    C(spec.configuration) keys of the KubeVirt CR that let VMIs request the nodes' GPUs -
    C(permittedHostDevices.pciHostDevices) (C(pciVendorSelector), C(resourceName)),
    C(permittedHostDevices.mediatedDevices) (C(mdevNameSelector), C(resourceName)) and
    C(mediatedDevicesConfiguration).
  - The KubeVirt CR is a custom resource, so a patch of it is a JSON merge patch, which replaces every list
    it names. Make one export of all the nodes and apply it once (C(run_once)); a patch per host keeps
    only the last host's devices and types. With a dict of nodes, each node gets its own
    C(nodeMediatedDeviceTypes) entry (C(nodeSelector) C(kubernetes.io/hostname) set to the node name, so
    name the nodes as their C(kubernetes.io/hostname) label does) and the permitted devices are the union
    of the nodes', each once. A selector must find a ready device on at least one node.
  - KubeVirt's PCI device plugin offers, on every node, every device whose vendor:device ID is a permitted
    C(pciVendorSelector) and that is bound to vfio-pci, or (KubeVirt 1.9 or later) that is an NVIDIA
    virtual function on the C(nvidia) driver with a vGPU type set, all under the one C(resourceName). It
    cannot select by address or by vGPU profile. So the devices must be ready as for every export (IOMMU
    on, a group of their own, not the boot VGA device, not host-critical, not in use, bound to vfio-pci
    with their companion functions), a device on a variant VFIO driver (C(nvgrace_gpu_vfio_pci)) is
    refused, as the plugin never offers it, and the filter refuses when the devices KubeVirt would offer
    under one ID, on any node given, differ in what they are (virtual functions with different vGPU
    types, or a whole GPU and vGPU virtual functions). It adds a note naming the devices the selector
    admits that the spec did not name (other devices of the same ID, on any node).
  - "Who owns the mdevs, O(spec.mdev_owner): V(kubevirt) (default) - virt-handler creates the types in
    C(mediatedDevicesConfiguration) and deletes every mdev of any other type on the node (also when that key
    is absent, and on every node the configuration names no types for), so the collection prepares only
    parents, VFs and drivers; the filter refuses when a node holds mdevs of types not listed, as virt-handler
    would delete them. V(gpuvirt.host) - the collection creates the mdevs (M(gpuvirt.host.mdev)) and the
    export sets C(mediatedDevicesConfiguration.enabled) to false and returns the C(DisableMDEVConfiguration)
    feature gate too, so virt-handler leaves them alone before and after KubeVirt 1.8; the types must have
    free mdevs. KubeVirt reads C(enabled) from 1.8; an older KubeVirt drops the unknown field and needs the
    gate, which 1.8 and later still honour as deprecated."
  - C(mdevNameSelector) is the type's C(name) (the type ID when the driver gives no name), as virt-handler
    matches it. C(resourceName) defaults to the vendor's domain and the pci.ids or type name
    (V(nvidia.com/GA102GL_A10), V(nvidia.com/NVIDIA_A10-4Q)); for NVIDIA vGPU virtual functions, to the vGPU
    profile (V(nvidia.com/NVIDIA_L40S-8Q)). One resource name stands for one selector - two selectors (PCI or
    mdev) of one resource name are refused.
positional: _input, spec
options:
  _input:
    description:
      - A dict of Kubernetes node names to the C(topology) returned by M(gpuvirt.host.topology_info) (or the
        registered result) of each node; or one topology, for a single host.
    type: raw
    required: true
  spec:
    description: What to permit.
    type: dict
    required: true
    suboptions:
      pci_devices:
        description: GPUs to pass through whole, each a PCI address, a vendor:device ID or a model name.
        type: list
        elements: str
      mdev_types:
        description: mdev types, each a type ID or name.
        type: list
        elements: str
      mdev_owner:
        description: Who creates and removes the mdevs.
        type: str
        choices: [kubevirt, gpuvirt.host]
        default: kubevirt
      node_selector:
        description:
          - Node labels of a single topology; the types then go to C(nodeMediatedDeviceTypes) for those
            nodes. With a dict of nodes, each node's entry selects its C(kubernetes.io/hostname), and this
            option is refused.
        type: dict
      resource_names:
        description:
          - Resource names by vendor:device, mdev type name or vGPU profile name (V(NVIDIA L40S-8Q)), replacing
            the defaults.
        type: dict
      resource_domain:
        description:
          - Domain of the default resource names, for a vendor whose backend names none (those of NVIDIA,
            AMD and Intel name C(nvidia.com), C(amd.com) and C(intel.com)).
        type: str
      host:
        description: The host's name, used in messages (a single topology; the node names are used otherwise).
        type: str
"""

EXAMPLES = r"""
# Once for the cluster: every node registered its topology as host_topology, and the inventory names the
# nodes as their kubernetes.io/hostname label does.
- name: Read the KubeVirt CR's feature gates
  kubernetes.core.k8s_info:
    api_version: kubevirt.io/v1
    kind: KubeVirt
    name: kubevirt
    namespace: kubevirt
  register: kubevirt_cr
  run_once: true
  delegate_to: localhost

- name: Permit the A10 vGPU profile on every node, KubeVirt creating the mdevs (one patch for all nodes)
  kubernetes.core.k8s:
    state: patched
    merge_type: merge
    api_version: kubevirt.io/v1
    kind: KubeVirt
    name: kubevirt
    namespace: kubevirt
    definition:
      spec:
        configuration: >-
          {{ kubevirt_gpus.configuration | combine({'developerConfiguration': {'featureGates':
             kubevirt_cr.resources[0].spec.configuration.developerConfiguration.featureGates | default([])
             | union(kubevirt_gpus.feature_gates)}}) }}
  vars:
    kubevirt_nodes: "{{ groups['kubevirt_nodes'] }}"
    kubevirt_gpus: >-
      {{ dict(kubevirt_nodes | zip(kubevirt_nodes | map('extract', hostvars, ['host_topology', 'topology'])))
         | gpuvirt.host.kubevirt_host_devices({'mdev_types': ['NVIDIA A10-4Q']}) }}
  run_once: true
  delegate_to: localhost
"""

RETURN = r"""
_value:
  description: The CR keys and what they mean.
  type: dict
  contains:
    configuration:
      description: C(permittedHostDevices) and C(mediatedDevicesConfiguration), to merge into C(spec.configuration).
      type: dict
    feature_gates:
      description:
        - Feature gates the configuration needs, to add to C(developerConfiguration.featureGates) -
          C(HostDevices) for PCI host devices, C(DisableMDEVConfiguration) with O(spec.mdev_owner=gpuvirt.host).
      type: list
      elements: str
    skipped:
      description:
        - GPUs a selector matched that are not ready - C(device) and C(reasons), and C(node) with a dict of
          nodes.
      type: list
      elements: dict
    mdev_owner:
      description: V(kubevirt) or V(gpuvirt.host).
      type: str
    notes:
      description:
        - Why the mdevs belong to whom, the KubeVirt version vGPU virtual functions need, and the devices a
          C(pciVendorSelector) admits that the spec did not name.
      type: list
      elements: str
"""


def kubevirt_host_devices(topology, spec=None):
    """``spec.configuration`` keys of the KubeVirt CR for the devices and mdev types ``spec`` names, on one
    host or on every node of a dict of node names to topologies."""
    # Imported when called: to find any of the collection's filters, Ansible loads every file of
    # plugins/filter, compiled from source, in the worker process of each task that uses one.
    from ansible_collections.gpuvirt.host.plugins.plugin_utils import kubevirt

    return kubevirt.kubevirt_host_devices(topology, spec)


class FilterModule:
    """gpuvirt.host KubeVirt export."""

    def filters(self):
        return {"kubevirt_host_devices": kubevirt_host_devices}
