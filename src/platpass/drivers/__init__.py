"""Driver layer: one module per device family, on the shared code in :mod:`.common`.

Add a built-in driver module by listing it here; each module exports ``DRIVERS``.
"""

BUILTIN_MODULES: tuple[str, ...] = (
    "allwinner",
    "amlogic",
    "arm_sbsa",
    "broadcom",
    "fsl_layerscape",
    "imx",
    "marvell",
    "qcom",
    "qcom_geni",
    "renesas",
    "rockchip",
    "snps_dw",
    "ti",
    "xilinx",
)
