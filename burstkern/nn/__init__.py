"""burstkern.nn: drop-in modules on burstkern ops, state-dict compatible with their usual peers."""

from .deform_conv import DeformConv2d, ModulatedDeformConv2d  # noqa: F401
from .sft import SFT, ScaleShiftGroupNorm, SPADEGroupNorm  # noqa: F401
