"""The ioctls of the kernel's uapi headers the syscall-log importer understands, by number and by name.

Numbers are built as the headers build them (``_IOC(dir, type, nr, size)`` of ``asm-generic/ioctl.h``:
``dir << 30 | size << 16 | type << 8 | nr``), from:

* ``include/uapi/linux/iommufd.h``: ``IOMMUFD_TYPE ';'``, every command ``_IO(IOMMUFD_TYPE, IOMMUFD_CMD_*)`` with
  ``IOMMUFD_CMD_BASE = 0x80``: DESTROY 0x80, IOAS_ALLOC 0x81, IOAS_ALLOW_IOVAS 0x82, IOAS_COPY 0x83,
  IOAS_IOVA_RANGES 0x84, IOAS_MAP 0x85, IOAS_UNMAP 0x86, OPTION 0x87, VFIO_IOAS 0x88, HWPT_ALLOC 0x89,
  GET_HW_INFO 0x8a, HWPT_SET_DIRTY_TRACKING 0x8b, HWPT_GET_DIRTY_BITMAP 0x8c, HWPT_INVALIDATE 0x8d,
  FAULT_QUEUE_ALLOC 0x8e, IOAS_MAP_FILE 0x8f, VIOMMU_ALLOC 0x90, VDEVICE_ALLOC 0x91, IOAS_CHANGE_PROCESS 0x92,
  VEVENTQ_ALLOC 0x93, HW_QUEUE_ALLOC 0x94;
* ``include/uapi/linux/vfio.h``: ``VFIO_TYPE ';'``, ``VFIO_BASE 100``; VFIO_DEVICE_GET_INFO +7, VFIO_DEVICE_RESET
  +11, VFIO_DEVICE_FEATURE +17, VFIO_DEVICE_BIND_IOMMUFD +18, VFIO_DEVICE_ATTACH_IOMMUFD_PT +19,
  VFIO_DEVICE_DETACH_IOMMUFD_PT +20, all ``_IO``;
* ``include/uapi/linux/kvm.h``: ``KVMIO 0xAE``; KVM_CREATE_VM ``_IO(0x01)``, KVM_CREATE_VCPU ``_IO(0x41)``,
  KVM_SET_USER_MEMORY_REGION ``_IOW(0x46, struct kvm_userspace_memory_region)`` (32 bytes),
  KVM_SET_USER_MEMORY_REGION2 ``_IOW(0x49, struct kvm_userspace_memory_region2)`` (160 bytes: slot, flags,
  guest_phys_addr, memory_size, userspace_addr, guest_memfd_offset, guest_memfd, pad1, pad2[14]),
  KVM_RUN ``_IO(0x80)``, KVM_CREATE_DEVICE ``_IOWR(0xe0, struct kvm_create_device)`` (12 bytes).

The struct fields the importer reads keep their uapi names (``out_viommu_id``, ``virt_id``, ``dev_id``, ...), as
strace prints them when it decodes a struct.
"""

from __future__ import annotations

__all__ = ["BY_NUMBER", "IOCTLS", "ioc"]

IOC_NONE, IOC_WRITE, IOC_READ = 0, 1, 2
IOMMUFD_TYPE = VFIO_TYPE = ord(";")  # 0x3b: VFIO and IOMMUFD share the type, their numbers do not overlap
VFIO_BASE = 100
KVMIO = 0xAE


def ioc(direction: int, type_: int, nr: int, size: int) -> int:
    """``_IOC`` of asm-generic/ioctl.h (x86, arm64, riscv: 2 direction bits, 14 size bits)."""
    return (direction << 30) | (size << 16) | (type_ << 8) | nr


_IOMMUFD_CMDS = (
    "DESTROY",
    "IOAS_ALLOC",
    "IOAS_ALLOW_IOVAS",
    "IOAS_COPY",
    "IOAS_IOVA_RANGES",
    "IOAS_MAP",
    "IOAS_UNMAP",
    "OPTION",
    "VFIO_IOAS",
    "HWPT_ALLOC",
    "GET_HW_INFO",
    "HWPT_SET_DIRTY_TRACKING",
    "HWPT_GET_DIRTY_BITMAP",
    "HWPT_INVALIDATE",
    "FAULT_QUEUE_ALLOC",
    "IOAS_MAP_FILE",
    "VIOMMU_ALLOC",
    "VDEVICE_ALLOC",
    "IOAS_CHANGE_PROCESS",
    "VEVENTQ_ALLOC",
    "HW_QUEUE_ALLOC",
)

IOCTLS: dict[str, int] = {
    **{f"IOMMU_{cmd}": ioc(IOC_NONE, IOMMUFD_TYPE, 0x80 + i, 0) for i, cmd in enumerate(_IOMMUFD_CMDS)},
    "VFIO_DEVICE_GET_INFO": ioc(IOC_NONE, VFIO_TYPE, VFIO_BASE + 7, 0),
    "VFIO_DEVICE_RESET": ioc(IOC_NONE, VFIO_TYPE, VFIO_BASE + 11, 0),
    "VFIO_DEVICE_FEATURE": ioc(IOC_NONE, VFIO_TYPE, VFIO_BASE + 17, 0),
    "VFIO_DEVICE_BIND_IOMMUFD": ioc(IOC_NONE, VFIO_TYPE, VFIO_BASE + 18, 0),
    "VFIO_DEVICE_ATTACH_IOMMUFD_PT": ioc(IOC_NONE, VFIO_TYPE, VFIO_BASE + 19, 0),
    "VFIO_DEVICE_DETACH_IOMMUFD_PT": ioc(IOC_NONE, VFIO_TYPE, VFIO_BASE + 20, 0),
    "KVM_CREATE_VM": ioc(IOC_NONE, KVMIO, 0x01, 0),
    "KVM_CREATE_VCPU": ioc(IOC_NONE, KVMIO, 0x41, 0),
    "KVM_SET_USER_MEMORY_REGION": ioc(IOC_WRITE, KVMIO, 0x46, 32),
    "KVM_SET_USER_MEMORY_REGION2": ioc(IOC_WRITE, KVMIO, 0x49, 160),
    "KVM_RUN": ioc(IOC_NONE, KVMIO, 0x80, 0),
    "KVM_CREATE_DEVICE": ioc(IOC_READ | IOC_WRITE, KVMIO, 0xE0, 12),
}

BY_NUMBER: dict[int, str] = {number: name for name, number in IOCTLS.items()}
