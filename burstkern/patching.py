"""``burstkern.patch(model)``: swap foreign deformable-conv and SFT modules for burstkern's, by one table.

Instance-level (only the given model's submodules change, no class is monkey-patched), reversible
(``result.undo()``), and table-driven: each :class:`Rule` says which foreign modules it recognises (by type or
by structure, so BasicSR / mmcv need not be installed) and how to build the burstkern module with the same
hyper-parameters and state dict. The replacement keeps the original's device, dtype and train/eval mode.

Example::

    >>> result = burstkern.patch(model)      # torchvision DeformConv2d, DCNv2Pack-style, SFTGAN SFTLayer
    >>> print(result)                        # what was swapped
    >>> result.undo()                        # and back
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from . import nn as bnn


@dataclass(frozen=True)
class Rule:
    name: str
    matches: Callable[[nn.Module], bool]
    convert: Callable[[nn.Module], nn.Module]


def _is_burstkern(m: nn.Module) -> bool:
    return type(m).__module__.startswith("burstkern.")


def _match_torchvision_deform(m: nn.Module) -> bool:
    return type(m).__name__ == "DeformConv2d" and type(m).__module__.startswith("torchvision.")


def _convert_torchvision_deform(m: nn.Module) -> nn.Module:
    return bnn.DeformConv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                            m.groups, bias=m.bias is not None)


def _match_dcnv2_pack(m: nn.Module) -> bool:
    # BasicSR DCNv2Pack / mmcv ModulatedDeformConv2dPack: a dense 4-D weight plus an offset-and-mask conv
    return (not _is_burstkern(m) and isinstance(getattr(m, "conv_offset", None), nn.Conv2d)
            and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 4
            and (hasattr(m, "deform_groups") or hasattr(m, "deformable_groups")))


def _convert_dcnv2_pack(m: nn.Module) -> nn.Module:
    og = getattr(m, "deform_groups", None) or getattr(m, "deformable_groups")
    return bnn.ModulatedDeformConv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                                     getattr(m, "groups", 1), og, bias=getattr(m, "bias", None) is not None,
                                     offset_in_channels=m.conv_offset.in_channels)


_SFT_CONVS = ("SFT_scale_conv0", "SFT_scale_conv1", "SFT_shift_conv0", "SFT_shift_conv1")


def _match_sftgan(m: nn.Module) -> bool:
    convs = [getattr(m, n, None) for n in _SFT_CONVS]
    return (not _is_burstkern(m) and all(isinstance(c, nn.Conv2d) and c.kernel_size == (1, 1) for c in convs))


def _convert_sftgan(m: nn.Module) -> nn.Module:
    return bnn.SFT(m.SFT_scale_conv1.out_channels, m.SFT_scale_conv0.in_channels, m.SFT_scale_conv0.out_channels)


RULES: Tuple[Rule, ...] = (
    Rule("torchvision.DeformConv2d", _match_torchvision_deform, _convert_torchvision_deform),
    Rule("DCNv2Pack", _match_dcnv2_pack, _convert_dcnv2_pack),
    Rule("SFTLayer", _match_sftgan, _convert_sftgan),
)


@dataclass
class Swap:
    path: str
    rule: str
    original: nn.Module
    replacement: nn.Module


class PatchResult:
    """What :func:`patch` swapped; ``undo()`` puts the originals back."""

    def __init__(self, model: nn.Module, swaps: List[Swap]):
        self.model = model
        self.swaps = swaps

    def __len__(self) -> int:
        return len(self.swaps)

    def __iter__(self):
        return iter(self.swaps)

    def __repr__(self) -> str:
        lines = [f"PatchResult({len(self.swaps)} modules swapped)"]
        lines += [f"  {s.path or '<root>'}: {type(s.original).__name__} -> {type(s.replacement).__name__} "
                  f"[{s.rule}]" for s in self.swaps]
        return "\n".join(lines)

    def undo(self) -> nn.Module:
        for s in reversed(self.swaps):
            if s.path:
                _set_submodule(self.model, s.path, s.original)
            else:
                self.model = s.original
        self.swaps = []
        return self.model


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)


def _replacement(m: nn.Module, rule: Rule) -> nn.Module:
    new = rule.convert(m)
    new.load_state_dict(m.state_dict(), strict=True)
    ref = next(iter(m.parameters()), None)
    if ref is not None:
        new = new.to(device=ref.device, dtype=ref.dtype)
    return new.train(m.training)


def patch(model: nn.Module, rules: Optional[Sequence[str]] = None) -> PatchResult:
    """Replace every submodule of ``model`` that a rule recognises by its burstkern equivalent.

    Args:
        model: any ``nn.Module``; changed in place (the root too, if it matches: see ``result.model``).
        rules: names from ``burstkern.patching.RULES`` to apply (default: all).

    Returns:
        :class:`PatchResult` listing (path, rule, original, replacement); ``result.undo()`` reverts.
    """
    active = [r for r in RULES if rules is None or r.name in rules]
    if rules is not None:
        unknown = set(rules) - {r.name for r in RULES}
        if unknown:
            raise ValueError(f"unknown patch rules {sorted(unknown)}; known: {[r.name for r in RULES]}")
    swaps: List[Swap] = []
    root = model
    # snapshot the paths first: swapped-in modules are never revisited
    for path, m in list(model.named_modules()):
        if any(path == s.path or path.startswith(s.path + ".") for s in swaps if s.path) or \
                any(not s.path for s in swaps):
            continue
        for rule in active:
            if rule.matches(m):
                new = _replacement(m, rule)
                if path:
                    _set_submodule(model, path, new)
                else:
                    root = new
                swaps.append(Swap(path, rule.name, m, new))
                break
    return PatchResult(root, swaps)
