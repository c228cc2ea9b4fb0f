// SPDX-License-Identifier: GPL-2.0-only
/*
 * platpass-vfio: VFIO for platform devices that cannot master the bus.
 *
 * vfio-platform needs an IOMMU, or no-IOMMU mode, which taints the kernel
 * and needs CAP_SYS_RAWIO: a device that can write memory could otherwise be
 * told to write anywhere. A UART, an RTC, a GPIO bank or a watchdog cannot
 * write memory at all, but no generic code can know that: the firmware of
 * many SoCs describes bus masters with no DMA property. So this driver
 * accepts only IP blocks listed in its table of blocks known not to master
 * the bus, each entry holding what it takes to keep the block that way, and
 * registers them with an emulated IOMMU: userspace gets /dev/vfio/N, a type1
 * container records DMA mappings and pins nothing, and the kernel is not
 * tainted.
 *
 * Regions, mmap, read/write and interrupts (eventfds, automasked level
 * lines, virqfd unmask) are vfio-platform's, from vfio-platform-base.
 */
#include <linux/io.h>
#include <linux/iommu.h>
#include <linux/module.h>
#include <linux/of.h>
#include <linux/of_device.h>
#include <linux/property.h>
#include <linux/uaccess.h>
#include <linux/vfio.h>

#include "platpass_vfio.h"

/* On the node: the device masters memory, or is a DMA controller. */
static const char * const platpass_master_props[] = {
	"iommus", "iommu-map", "msi-parent", "msi-map", "#dma-cells",
	"dma-coherent", "dma-ranges", "memory-region",
};

/* On an ancestor (a bus or wrapper): its children master through it. */
static const char * const platpass_ancestor_props[] = {
	"iommus", "iommu-map", "msi-parent", "msi-map",
};

static const char *platpass_find_prop(const struct device_node *np,
				      const char * const *props, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (of_property_present(np, props[i]))
			return props[i];
	return NULL;
}

/**
 * platpass_vfio_match - the table entry of a device's IP block
 * @dev: the device
 *
 * The table is deliberately not the driver's of_match_table: devices are
 * given to this driver only with driver_override, never by matching.
 *
 * Return: the entry, or NULL when the IP block is not known.
 */
const struct platpass_ip *platpass_vfio_match(struct device *dev)
{
	const struct of_device_id *id;

	id = of_match_device(platpass_vfio_of_match, dev);
	return id ? id->data : NULL;
}

/**
 * platpass_vfio_check - refuse a device that might master the bus
 * @dev: the device
 * @ip: its entry (NULL when unknown)
 * @size: size of its first MMIO region
 *
 * Return: 0 when the device may be registered, else a negative errno, with
 * the reason logged.
 */
int platpass_vfio_check(struct device *dev, const struct platpass_ip *ip,
			resource_size_t size)
{
	struct device_node *np = dev->of_node, *parent;
	const char *prop, *compat = "";
	struct iommu_group *group;

	group = iommu_group_get(dev);
	if (group) {
		iommu_group_put(group);
		dev_err(dev, "behind an IOMMU: refused, use vfio-platform\n");
		return -EBUSY;
	}
	if (!np) {
		dev_err(dev, "no device tree node: refused\n");
		return -ENODEV;
	}
	if (!ip) {
		of_property_read_string(np, "compatible", &compat);
		dev_err(dev, "no entry for %pOF (compatible \"%s\"): refused, only IP blocks known not to master the bus are accepted\n",
			np, compat);
		return -ENODEV;
	}
	prop = platpass_find_prop(np, platpass_master_props,
				  ARRAY_SIZE(platpass_master_props));
	if (prop) {
		dev_err(dev, "%pOF has \"%s\": it may master the bus, refused\n",
			np, prop);
		return -EPERM;
	}
	if (of_property_present(np, "dmas") && !ip->slave_dma_neutralised) {
		dev_err(dev, "%pOF has \"dmas\" and a %s cannot be kept from raising DMA requests: refused\n",
			np, ip->name);
		return -EPERM;
	}
	for (parent = of_get_parent(np); parent;
	     parent = of_get_next_parent(parent)) {
		prop = platpass_find_prop(parent, platpass_ancestor_props,
					  ARRAY_SIZE(platpass_ancestor_props));
		if (prop) {
			dev_err(dev, "ancestor %pOF has \"%s\": its children may master the bus, refused\n",
				parent, prop);
			of_node_put(parent);
			return -EPERM;
		}
	}
	if (size < ip->min_size) {
		dev_err(dev, "%pa bytes of registers, a %s has %#llx: refused\n",
			&size, ip->name, (unsigned long long)ip->min_size);
		return -EINVAL;
	}
	return 0;
}

static struct platpass_vfio_device *
to_platpass_vfio(struct vfio_platform_device *vdev)
{
	return container_of(vdev, struct platpass_vfio_device, vdev);
}

/*
 * Region 0 mapped in the kernel. The first reset, from open_device, maps it
 * before userspace can reach the device, so vfio-platform-base's own lazy
 * mapping never races with this one; vfio-platform-base unmaps it on close.
 */
static void __iomem *platpass_vfio_regs(struct vfio_platform_device *vdev)
{
	struct vfio_platform_region *reg;

	if (!vdev->num_regions)
		return NULL;
	reg = &vdev->regions[0];
	if (reg->type != VFIO_PLATFORM_REGION_TYPE_MMIO)
		return NULL;
	if (!reg->ioaddr)
		reg->ioaddr = ioremap(reg->addr, reg->size);
	return reg->ioaddr;
}

static int platpass_vfio_reset(struct vfio_platform_device *vdev)
{
	struct platpass_vfio_device *pdev = to_platpass_vfio(vdev);
	void __iomem *base = platpass_vfio_regs(vdev);

	if (!base)
		return -ENOMEM;
	pdev->ip->reset(pdev, base);
	return 0;
}

/**
 * platpass_vfio_init_common - set up a device for its entry
 * @pdev: the device; the bus code has filled in the vfio-platform fields
 *
 * Return: 0 or a negative errno.
 */
int platpass_vfio_init_common(struct platpass_vfio_device *pdev)
{
	struct vfio_platform_device *vdev = &pdev->vdev;
	struct device *dev = vdev->vdev.dev;
	int ret;

	pdev->ip = platpass_vfio_match(dev);
	if (!pdev->ip)
		return -ENODEV;
	pdev->reg_shift = 0;
	pdev->reg_io_width = 1;
	device_property_read_u32(dev, "reg-shift", &pdev->reg_shift);
	device_property_read_u32(dev, "reg-io-width", &pdev->reg_io_width);

	/*
	 * The reset is the entry's, not one of vfio-platform's reset modules,
	 * so their lookup may fail. Before upstream commit 168a9c91fe0a it
	 * fails with -ENOENT even when no reset is required; vdev->device is
	 * set once the firmware part has succeeded.
	 */
	vdev->reset_required = false;
	ret = vfio_platform_init_common(vdev);
	if (ret == -ENOENT && vdev->device)
		ret = 0;
	if (ret)
		return ret;
	vdev->of_reset = platpass_vfio_reset;
	vdev->reset_required = true;
	return 0;
}

/**
 * platpass_vfio_release - vfio_device_ops.release
 * @core_vdev: the VFIO device
 */
void platpass_vfio_release(struct vfio_device *core_vdev)
{
	struct vfio_platform_device *vdev =
		container_of(core_vdev, struct vfio_platform_device, vdev);

	vfio_platform_release_common(vdev);
	vfio_free_device(core_vdev);
}

/**
 * platpass_vfio_open_device - vfio_device_ops.open_device
 * @core_vdev: the VFIO device
 *
 * vfio-platform's, which also resets the device; a region holding a filtered
 * register is then not offered for mmap.
 *
 * Return: 0 or a negative errno.
 */
int platpass_vfio_open_device(struct vfio_device *core_vdev)
{
	struct vfio_platform_device *vdev =
		container_of(core_vdev, struct vfio_platform_device, vdev);
	int ret;

	ret = vfio_platform_open_device(core_vdev);
	if (ret)
		return ret;
	if (to_platpass_vfio(vdev)->ip->num_filters && vdev->num_regions)
		vdev->regions[0].flags &= ~VFIO_REGION_INFO_FLAG_MMAP;
	return 0;
}

/**
 * platpass_vfio_mmap - vfio_device_ops.mmap
 * @core_vdev: the VFIO device
 * @vma: the mapping asked for
 *
 * Return: 0 or a negative errno; -EINVAL for a region with filtered
 * registers.
 */
int platpass_vfio_mmap(struct vfio_device *core_vdev,
		       struct vm_area_struct *vma)
{
	struct vfio_platform_device *vdev =
		container_of(core_vdev, struct vfio_platform_device, vdev);
	u64 index = vma->vm_pgoff >> (VFIO_PLATFORM_OFFSET_SHIFT - PAGE_SHIFT);

	if (index == 0 && to_platpass_vfio(vdev)->ip->num_filters)
		return -EINVAL;
	return vfio_platform_mmap(core_vdev, vma);
}

static const struct platpass_reg_filter *
platpass_vfio_filter(const struct platpass_ip *ip, u64 index, u64 off,
		     size_t count)
{
	unsigned int i;

	if (index != 0)
		return NULL;
	for (i = 0; i < ip->num_filters; i++)
		if (off < ip->filters[i].offset + sizeof(u32) &&
		    ip->filters[i].offset < off + count)
			return &ip->filters[i];
	return NULL;
}

/**
 * platpass_vfio_write - vfio_device_ops.write
 * @core_vdev: the VFIO device
 * @buf: what to write
 * @count: how many bytes
 * @ppos: where (region index << VFIO_PLATFORM_OFFSET_SHIFT | offset)
 *
 * A write that touches a filtered register must be exactly that 32-bit
 * register; its value is written with the entry's bits cleared. Anything
 * else is vfio-platform's write.
 *
 * Return: bytes written or a negative errno.
 */
ssize_t platpass_vfio_write(struct vfio_device *core_vdev,
			    const char __user *buf, size_t count,
			    loff_t *ppos)
{
	struct vfio_platform_device *vdev =
		container_of(core_vdev, struct vfio_platform_device, vdev);
	const struct platpass_reg_filter *filter;
	u64 index = VFIO_PLATFORM_OFFSET_TO_INDEX(*ppos);
	u64 off = *ppos & VFIO_PLATFORM_OFFSET_MASK;
	void __iomem *base;
	u32 val;

	filter = platpass_vfio_filter(to_platpass_vfio(vdev)->ip, index, off,
				      count);
	if (!filter)
		return vfio_platform_write(core_vdev, buf, count, ppos);
	if (off != filter->offset || count != sizeof(val))
		return -EINVAL;
	if (copy_from_user(&val, buf, sizeof(val)))
		return -EFAULT;
	base = platpass_vfio_regs(vdev);
	if (!base)
		return -ENOMEM;
	iowrite32(val & ~filter->clear, base + off);
	return sizeof(val);
}

/**
 * platpass_vfio_register - register a checked device with VFIO
 * @dev: the device
 * @ip: its entry
 * @ops: the bus's VFIO device ops
 *
 * The caller has enabled runtime PM (the AMBA bus does it for its drivers).
 *
 * Return: 0 or a negative errno.
 */
int platpass_vfio_register(struct device *dev, const struct platpass_ip *ip,
			   const struct vfio_device_ops *ops)
{
	struct platpass_vfio_device *pdev;
	int ret;

	pdev = vfio_alloc_device(platpass_vfio_device, vdev.vdev, dev, ops);
	if (IS_ERR(pdev))
		return PTR_ERR(pdev);
	dev_set_drvdata(dev, pdev);
	/*
	 * No IOMMU translates for the device and none is needed: it cannot
	 * master the bus. The emulated IOMMU gives userspace a type1
	 * container whose DMA mappings are recorded and never pinned.
	 */
	ret = vfio_register_emulated_iommu_dev(&pdev->vdev.vdev);
	if (ret) {
		vfio_put_device(&pdev->vdev.vdev);
		return ret;
	}
	dev_info(dev, "%s: VFIO device with an emulated IOMMU\n", ip->name);
	return 0;
}

/**
 * platpass_vfio_unregister - undo platpass_vfio_register()
 * @dev: the device
 */
void platpass_vfio_unregister(struct device *dev)
{
	struct platpass_vfio_device *pdev = dev_get_drvdata(dev);

	vfio_unregister_group_dev(&pdev->vdev.vdev);
	vfio_put_device(&pdev->vdev.vdev);
}

static int __init platpass_vfio_init(void)
{
	int ret;

	ret = platpass_vfio_platform_init();
	if (ret)
		return ret;
	ret = platpass_vfio_amba_init();
	if (ret)
		platpass_vfio_platform_exit();
	return ret;
}
module_init(platpass_vfio_init);

static void __exit platpass_vfio_exit(void)
{
	platpass_vfio_amba_exit();
	platpass_vfio_platform_exit();
}
module_exit(platpass_vfio_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("VFIO for platform devices that cannot master the bus, with an emulated IOMMU");
