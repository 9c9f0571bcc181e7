"""MAR network family."""

from lazygen.models.mar.diffloss import DiffLoss, SimpleMLPAdaLN
from lazygen.models.mar.mar import MAR, MAR_PRESETS, MARArch

__all__ = ["MAR", "MAR_PRESETS", "MARArch", "DiffLoss", "SimpleMLPAdaLN"]
