// SPDX-License-Identifier: GPL-2.0-only
/*
 * platpass-vfio on the platform bus. Bind with driver_override:
 *   echo platpass-vfio-platform > /sys/bus/platform/devices/X/driver_override
 *   echo X > /sys/bus/platform/drivers/platpass-vfio-platform/bind
 */
#include <linux/platform_device.h>
#include <linux/pm_runtime.h>
#include <linux/vfio.h>

#include "platpass_vfio.h"

static struct resource *
platpass_platform_resource(struct vfio_platform_device *vdev, int i)
{
	return platform_get_mem_or_io(vdev->opaque, i);
}

static int platpass_platform_irq(struct vfio_platform_device *vdev, int i)
{
	return platform_get_irq_optional(vdev->opaque, i);
}

static int platpass_platform_init_dev(struct vfio_device *core_vdev)
{
	struct platpass_vfio_device *pdev =
		container_of(core_vdev, struct platpass_vfio_device, vdev.vdev);
	struct platform_device *plat = to_platform_device(core_vdev->dev);

	pdev->vdev.opaque = plat;
	pdev->vdev.name = dev_name(&plat->dev);
	pdev->vdev.flags = VFIO_DEVICE_FLAGS_PLATFORM;
	pdev->vdev.get_resource = platpass_platform_resource;
	pdev->vdev.get_irq = platpass_platform_irq;
	return platpass_vfio_init_common(pdev);
}

static const struct vfio_device_ops platpass_platform_ops = {
	.name		= "platpass-vfio-platform",
	.init		= platpass_platform_init_dev,
	.release	= platpass_vfio_release,
	.open_device	= platpass_vfio_open_device,
	.close_device	= vfio_platform_close_device,
	.ioctl		= vfio_platform_ioctl,
	.read		= vfio_platform_read,
	.write		= platpass_vfio_write,
	.mmap		= platpass_vfio_mmap,
};

static int platpass_platform_probe(struct platform_device *plat)
{
	const struct platpass_ip *ip = platpass_vfio_match(&plat->dev);
	struct resource *res = platform_get_mem_or_io(plat, 0);
	int ret;

	ret = platpass_vfio_check(&plat->dev, ip, res ? resource_size(res) : 0);
	if (ret)
		return ret;
	pm_runtime_enable(&plat->dev);
	ret = platpass_vfio_register(&plat->dev, ip, &platpass_platform_ops);
	if (ret)
		pm_runtime_disable(&plat->dev);
	return ret;
}

static int platpass_platform_remove(struct platform_device *plat)
{
	platpass_vfio_unregister(&plat->dev);
	pm_runtime_disable(&plat->dev);
	return 0;
}

static struct platform_driver platpass_platform_driver = {
	.probe		= platpass_platform_probe,
	.remove		= platpass_platform_remove,
	.driver	= {
		.name	= "platpass-vfio-platform",
	},
	.driver_managed_dma = true,
};

int platpass_vfio_platform_init(void)
{
	return platform_driver_register(&platpass_platform_driver);
}

void platpass_vfio_platform_exit(void)
{
	platform_driver_unregister(&platpass_platform_driver);
}
