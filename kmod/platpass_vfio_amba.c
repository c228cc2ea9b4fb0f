// SPDX-License-Identifier: GPL-2.0-only
/*
 * platpass-vfio on the AMBA bus (PrimeCell devices). Bind with
 * driver_override:
 *   echo platpass-vfio-amba > /sys/bus/amba/devices/X/driver_override
 *   echo X > /sys/bus/amba/drivers/platpass-vfio-amba/bind
 * The entry is found from the device tree node, and the peripheral ID the
 * hardware reports must be the entry's (an entry without one, such as a
 * 16550, is not a PrimeCell and is refused here).
 */
#include <linux/amba/bus.h>
#include <linux/vfio.h>

#include "platpass_vfio.h"

static struct resource *
platpass_amba_resource(struct vfio_platform_device *vdev, int i)
{
	struct amba_device *adev = vdev->opaque;

	return i == 0 ? &adev->res : NULL;
}

static int platpass_amba_irq(struct vfio_platform_device *vdev, int i)
{
	struct amba_device *adev = vdev->opaque;
	int irq = i < AMBA_NR_IRQS ? adev->irq[i] : 0;

	return irq ? irq : -ENXIO;	/* 0 is no interrupt on AMBA */
}

static int platpass_amba_init_dev(struct vfio_device *core_vdev)
{
	struct platpass_vfio_device *pdev =
		container_of(core_vdev, struct platpass_vfio_device, vdev.vdev);
	struct amba_device *adev = to_amba_device(core_vdev->dev);

	pdev->vdev.opaque = adev;
	pdev->vdev.name = dev_name(&adev->dev);
	pdev->vdev.flags = VFIO_DEVICE_FLAGS_AMBA;
	pdev->vdev.get_resource = platpass_amba_resource;
	pdev->vdev.get_irq = platpass_amba_irq;
	return platpass_vfio_init_common(pdev);
}

static const struct vfio_device_ops platpass_amba_ops = {
	.name		= "platpass-vfio-amba",
	.init		= platpass_amba_init_dev,
	.release	= platpass_vfio_release,
	.open_device	= platpass_vfio_open_device,
	.close_device	= vfio_platform_close_device,
	.ioctl		= vfio_platform_ioctl,
	.read		= vfio_platform_read,
	.write		= platpass_vfio_write,
	.mmap		= platpass_vfio_mmap,
};

static int platpass_amba_probe(struct amba_device *adev,
			       const struct amba_id *id)
{
	const struct platpass_ip *ip = platpass_vfio_match(&adev->dev);
	int ret;

	if (ip && (!ip->amba_mask ||
		   (adev->periphid & ip->amba_mask) != ip->amba_id)) {
		dev_err(&adev->dev, "peripheral ID %08x is not a %s: refused\n",
			adev->periphid, ip->name);
		return -ENODEV;
	}
	ret = platpass_vfio_check(&adev->dev, ip, resource_size(&adev->res));
	if (ret)
		return ret;
	return platpass_vfio_register(&adev->dev, ip, &platpass_amba_ops);
}

static void platpass_amba_remove(struct amba_device *adev)
{
	platpass_vfio_unregister(&adev->dev);
}

/* Empty: devices come to this driver only through driver_override. */
static const struct amba_id platpass_amba_ids[] = {
	{ 0, 0 },
};

static struct amba_driver platpass_amba_driver = {
	.probe		= platpass_amba_probe,
	.remove		= platpass_amba_remove,
	.id_table	= platpass_amba_ids,
	.drv = {
		.name	= "platpass-vfio-amba",
		.owner	= THIS_MODULE,
	},
	.driver_managed_dma = true,
};

int platpass_vfio_amba_init(void)
{
	return amba_driver_register(&platpass_amba_driver);
}

void platpass_vfio_amba_exit(void)
{
	amba_driver_unregister(&platpass_amba_driver);
}
