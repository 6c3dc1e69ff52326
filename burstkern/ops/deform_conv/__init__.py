from .op import deform_conv2d

__all__ = ["deform_conv2d"]
