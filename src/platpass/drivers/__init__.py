"""Driver layer: one module per device family, on the shared code in :mod:`.common`.

Add a built-in driver module by listing it here; each module exports ``DRIVERS``.
"""

BUILTIN_MODULES: tuple[str, ...] = (
    "allwinner",
    "amlogic",
    "arm_pl011",
    "arm_pl031",
    "arm_pl061",
    "arm_sbsa",
    "arm_sp805",
    "broadcom",
    "cavium",
    "fsl_layerscape",
    "imx",
    "marvell",
    "ns16550",
    "nvidia",
    "qcom",
    "qcom_geni",
    "renesas",
    "rockchip",
    "snps_dw",
    "ti",
    "xilinx",
)
