"""MF-Net's fast path: the plain architecture (``mfnet.py``) on the suite's kernel library
(``kernels/``). What ``models.create_model("mfnet")`` builds; the two stay apart so that the
model file is the paper's architecture and the library knows no model.

- channels last: the input made channels-last on entry (the layout every fast conv wants);
- its 1x1x1 convs kept on oneDNN at batch 1 (PyTorch's own kernels, ``OneDNNPointwiseConv3d``);
- ``kernels.optimize``: fiber convs, pointwise convs, BatchNorm + ReLU and the multi-fiber
  units on the suite's kernels.

``fiber_kernel=False`` is the stock model (footnote 5's), ``channels_last=False`` the plain
reference path every fast one is tested against.
"""

from models import kernels, mfnet
from models.kernels.blocks import FusedMultiFiberUnit

kernels.register_block(mfnet.MultiFiberUnit, FusedMultiFiberUnit)


def mfnet3d(*, channels_last: bool = True, fiber_kernel: bool | None = None, **kwargs) -> mfnet.MFNet:
    """Table 2's 3D MF-Net on its fastest path. ``fiber_kernel``: the suite's kernels (None:
    with the channels-last path, so the reference path stays plain)."""
    model = mfnet.mfnet3d(channels_last=channels_last, **kwargs)
    if channels_last:
        kernels.pin_pointwise_to_onednn(model)
    if channels_last if fiber_kernel is None else fiber_kernel:
        kernels.optimize(model)
    return model
