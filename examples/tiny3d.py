"""A 3D CNN defined outside the suite, registered for every measurement it makes.

    python benchmarks/run.py --import examples/tiny3d.py --models tiny3d --measure cost,memory,speed
    python benchmarks/run.py --import examples/tiny3d.py --models tiny3d,mfnet --measure accuracy
    python benchmarks/report.py --import examples/tiny3d.py

Three residual-free stages of (2+1)D-factorised convs, then global pooling and a classifier:
small enough to train on the motion benchmark in a minute on a laptop CPU.
"""

from torch import nn

import models


def conv_bn_relu(cin: int, cout: int, kernel, stride, padding) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, kernel, stride, padding, bias=False),
                         nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class Tiny3D(nn.Module):
    def __init__(self, *, num_classes: int = 400, width: int = 32):
        super().__init__()
        layers, cin = [], 3
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            stride = (1, 2, 2) if i == 0 else (2, 2, 2)
            layers += [conv_bn_relu(cin, cout, (1, 3, 3), stride, (0, 1, 1)),  # space
                       conv_bn_relu(cout, cout, (3, 1, 1), 1, (1, 0, 0))]  # time
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):  # (N, 3, T, H, W)
        return self.classifier(self.pool(self.features(x)).flatten(1))


@models.register_model(input_shape=(3, 16, 112, 112), num_classes=400, display_name="Tiny3D (example)",
                       min_input=(3, 4, 16, 16), family="example")
def tiny3d(*, num_classes: int = 400, **kwargs) -> nn.Module:
    return Tiny3D(num_classes=num_classes, **kwargs)
