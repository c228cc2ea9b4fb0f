/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * platpass-vfio: VFIO for platform devices that cannot master the bus,
 * registered with an emulated IOMMU.
 */
#ifndef PLATPASS_VFIO_H
#define PLATPASS_VFIO_H

#include <linux/mod_devicetable.h>
#include <linux/mutex.h>
#include <linux/types.h>

#include "vfio_platform_private.h"

struct platpass_vfio_device;

/**
 * struct platpass_reg_filter - a register whose writes are filtered
 * @offset: byte offset of the register in region 0
 * @clear: bits forced to zero in every value written (DMA request enables)
 *
 * Filtered registers are 32 bits wide. The page holding one is never offered
 * for mmap, so every write to it goes through platpass_vfio_write().
 */
struct platpass_reg_filter {
	u32 offset;
	u32 clear;
};

/**
 * struct platpass_ip - what platpass-vfio knows about one IP block
 * @name: name used in messages
 * @amba_id: AMBA peripheral ID (0: not a primecell)
 * @amba_mask: bits of the peripheral ID that identify the IP
 * @min_size: region 0 must hold at least this many bytes
 * @filters: registers whose writes are filtered
 * @num_filters: number of @filters
 * @slave_dma_neutralised: @filters stop the device from raising DMA
 *	requests, so a node wired to a DMA engine ("dmas") is accepted
 * @reset: quiesce the device (interrupts off, outputs idle)
 *
 * Only IP blocks that cannot master the bus have an entry: a device with no
 * entry is refused.
 */
struct platpass_ip {
	const char *name;
	u32 amba_id;
	u32 amba_mask;
	resource_size_t min_size;
	const struct platpass_reg_filter *filters;
	unsigned int num_filters;
	bool slave_dma_neutralised;
	void (*reset)(struct platpass_vfio_device *pdev, void __iomem *base);
};

/**
 * struct platpass_vfio_device - a device bound to platpass-vfio
 * @vdev: the vfio-platform device (regions, interrupts, device ops)
 * @ip: the IP block's entry
 * @reg_shift: register stride (log2 bytes) for IPs that take it from firmware
 * @reg_io_width: register access width in bytes, same
 */
struct platpass_vfio_device {
	struct vfio_platform_device vdev;
	const struct platpass_ip *ip;
	u32 reg_shift;
	u32 reg_io_width;
};

extern const struct of_device_id platpass_vfio_of_match[];

const struct platpass_ip *platpass_vfio_match(struct device *dev);
int platpass_vfio_check(struct device *dev, const struct platpass_ip *ip,
			resource_size_t size);
int platpass_vfio_register(struct device *dev, const struct platpass_ip *ip,
			   const struct vfio_device_ops *ops);
void platpass_vfio_unregister(struct device *dev);
int platpass_vfio_init_common(struct platpass_vfio_device *pdev);
void platpass_vfio_release(struct vfio_device *core_vdev);
int platpass_vfio_open_device(struct vfio_device *core_vdev);
ssize_t platpass_vfio_write(struct vfio_device *core_vdev,
			    const char __user *buf, size_t count,
			    loff_t *ppos);
int platpass_vfio_mmap(struct vfio_device *core_vdev,
		       struct vm_area_struct *vma);

int platpass_vfio_platform_init(void);
void platpass_vfio_platform_exit(void);
#if IS_ENABLED(CONFIG_ARM_AMBA)
int platpass_vfio_amba_init(void);
void platpass_vfio_amba_exit(void);
#else
static inline int platpass_vfio_amba_init(void) { return 0; }
static inline void platpass_vfio_amba_exit(void) { }
#endif

#endif /* PLATPASS_VFIO_H */
