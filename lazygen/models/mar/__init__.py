"""MAR network family."""

from lazygen.models.mar.diffloss import DiffLoss, SimpleMLPAdaLN
from lazygen.models.mar.mar import MAR, MARArch

__all__ = ["MAR", "MARArch", "DiffLoss", "SimpleMLPAdaLN"]
