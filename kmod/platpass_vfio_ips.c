// SPDX-License-Identifier: GPL-2.0-only
/*
 * The IP blocks platpass-vfio accepts: none of them can master the bus. Each
 * entry says how to quiesce the block (interrupts off, outputs idle) and
 * which registers could make it raise DMA requests to a DMA engine.
 */
#include <linux/io.h>
#include <linux/of.h>
#include <linux/sizes.h>

#include "platpass_vfio.h"

/* ARM PL011 UART */
#define UART011_LCRH		0x2c
#define UART011_CR		0x30
#define UART011_IMSC		0x38
#define UART011_ICR		0x44
#define UART011_DMACR		0x48
#define UART011_ICR_ALL		0x7ff
#define UART011_DMACR_ALL	0x7	/* RXDMAE | TXDMAE | DMAONERR */

static void platpass_pl011_reset(struct platpass_vfio_device *pdev,
				 void __iomem *base)
{
	writel(0, base + UART011_IMSC);
	writel(UART011_ICR_ALL, base + UART011_ICR);
	writel(0, base + UART011_DMACR);
	writel(0, base + UART011_CR);	/* disabled: TX idle, RTS/DTR off */
	writel(0, base + UART011_LCRH);	/* FIFOs off and flushed */
}

/* A PL011 raises DMA requests only while UARTDMACR enables them. */
static const struct platpass_reg_filter platpass_pl011_filters[] = {
	{ .offset = UART011_DMACR, .clear = UART011_DMACR_ALL },
};

static const struct platpass_ip platpass_pl011 = {
	.name = "PL011",
	.amba_id = 0x00041011,
	.amba_mask = 0x000fffff,
	.min_size = SZ_4K,
	.filters = platpass_pl011_filters,
	.num_filters = ARRAY_SIZE(platpass_pl011_filters),
	.slave_dma_neutralised = true,
	.reset = platpass_pl011_reset,
};

/* ARM PL031 RTC */
#define RTC_IMSC		0x10
#define RTC_ICR			0x1c

static void platpass_pl031_reset(struct platpass_vfio_device *pdev,
				 void __iomem *base)
{
	writel(0, base + RTC_IMSC);
	writel(1, base + RTC_ICR);
}

static const struct platpass_ip platpass_pl031 = {
	.name = "PL031",
	.amba_id = 0x00041031,
	.amba_mask = 0x000fffff,
	.min_size = SZ_4K,
	.reset = platpass_pl031_reset,
};

/* ARM PL061 GPIO */
#define GPIODIR			0x400
#define GPIOIE			0x410
#define GPIOIC			0x41c

static void platpass_pl061_reset(struct platpass_vfio_device *pdev,
				 void __iomem *base)
{
	writel(0, base + GPIOIE);
	writel(0xff, base + GPIOIC);
	writel(0, base + GPIODIR);	/* every pin an input */
}

static const struct platpass_ip platpass_pl061 = {
	.name = "PL061",
	.amba_id = 0x00041061,
	.amba_mask = 0x000fffff,
	.min_size = SZ_4K,
	.reset = platpass_pl061_reset,
};

/* ARM SP805 watchdog */
#define WDTCONTROL		0x08
#define WDTINTCLR		0x0c
#define WDTLOCK			0xc00
#define WDTLOCK_UNLOCK		0x1acce551

static void platpass_sp805_reset(struct platpass_vfio_device *pdev,
				 void __iomem *base)
{
	writel(WDTLOCK_UNLOCK, base + WDTLOCK);
	writel(0, base + WDTCONTROL);	/* interrupt and reset output off */
	writel(1, base + WDTINTCLR);
	writel(0, base + WDTLOCK);
}

static const struct platpass_ip platpass_sp805 = {
	.name = "SP805",
	.amba_id = 0x00141805,
	.amba_mask = 0x001fffff,
	.min_size = SZ_4K,
	.reset = platpass_sp805_reset,
};

/*
 * 16550-compatible UARTs, the DesignWare APB UART among them. Firmware gives
 * the register stride and width. A DesignWare UART's DMA handshake has no
 * enable bit, so a node with "dmas" is refused.
 */
#define UART_IER		1
#define UART_FCR		2
#define UART_LCR		3
#define UART_MCR		4
#define UART_LCR_DLAB		0x80
#define UART_FCR_CLEAR		0x07	/* enable, clear RX and TX FIFOs */

static u8 platpass_8250_in(struct platpass_vfio_device *pdev,
			   void __iomem *base, unsigned int reg)
{
	void __iomem *addr = base + (reg << pdev->reg_shift);

	return pdev->reg_io_width == 4 ? readl(addr) : readb(addr);
}

static void platpass_8250_out(struct platpass_vfio_device *pdev,
			      void __iomem *base, unsigned int reg, u8 val)
{
	void __iomem *addr = base + (reg << pdev->reg_shift);

	if (pdev->reg_io_width == 4)
		writel(val, addr);
	else
		writeb(val, addr);
}

static void platpass_8250_reset(struct platpass_vfio_device *pdev,
				void __iomem *base)
{
	u8 lcr = platpass_8250_in(pdev, base, UART_LCR);

	platpass_8250_out(pdev, base, UART_LCR, lcr & ~UART_LCR_DLAB);
	platpass_8250_out(pdev, base, UART_IER, 0);
	platpass_8250_out(pdev, base, UART_MCR, 0);	/* RTS/DTR/OUT2 off */
	platpass_8250_out(pdev, base, UART_FCR, UART_FCR_CLEAR);
	platpass_8250_out(pdev, base, UART_FCR, 0);
}

static const struct platpass_ip platpass_8250 = {
	.name = "16550 UART",
	.min_size = 8,
	.reset = platpass_8250_reset,
};

static const struct platpass_ip platpass_dw_apb_uart = {
	.name = "DesignWare APB UART",
	.min_size = 0x100,
	.reset = platpass_8250_reset,
};

const struct of_device_id platpass_vfio_of_match[] = {
	{ .compatible = "arm,pl011", .data = &platpass_pl011 },
	{ .compatible = "arm,pl031", .data = &platpass_pl031 },
	{ .compatible = "arm,pl061", .data = &platpass_pl061 },
	{ .compatible = "arm,sp805", .data = &platpass_sp805 },
	{ .compatible = "snps,dw-apb-uart", .data = &platpass_dw_apb_uart },
	{ .compatible = "ns16550a", .data = &platpass_8250 },
	{ .compatible = "ns16550", .data = &platpass_8250 },
	{ }
};
