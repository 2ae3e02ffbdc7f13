"""GNL (Generalized Normality Learning) model toolchain for gnld."""

__version__ = "0.1.0"
