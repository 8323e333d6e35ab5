"""LeNet-5 (LeCun et al. 1998) with ReLU and max pooling, as it is trained today.

    conv 5x5 (C1) -> ReLU -> maxpool 2 -> conv 5x5 (C2) -> ReLU -> maxpool 2 -> fc 120 -> fc 84 -> fc
On 32x32 inputs this is the original geometry (C2 gives 16 x 5 x 5 = 400 features). Smaller images
get 'same' padding: 28x28 (MNIST) pads C1 by 2, as is customary; 8x8 and 16x16 (scikit-learn digits)
also pad C2 so that the second pooling still has a 2x2 window to work on.

Options: blur_pool=True makes both poolings anti-aliased (max pool stride 1, then a stride-2 BlurPool2d;
see layers.BlurPool2d); head='gap' replaces the three fully connected layers with global average
pooling and one linear layer (a head that sees no positions, only channel means).
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from .layers import Layers, check_image_size, conv_out


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 32,
                 channels: Sequence[int] = (6, 16), hidden: Sequence[int] = (120, 84), backend: str = "fastconv",
                 blur_pool: bool = False, head: str = "fc"):
        super().__init__()
        check_image_size("LeNet5", image_size, 4)
        if head not in ("fc", "gap"):
            raise ValueError(f"fastconv.models.LeNet5: head must be 'fc' or 'gap', got {head!r}")
        L = Layers(backend)
        c1, c2 = channels
        pad1 = 0 if image_size >= 32 else 2
        size = conv_out(image_size, 5, 1, pad1) // 2
        pad2 = 0 if size >= 6 else 2
        size = conv_out(size, 5, 1, pad2) // 2
        self.features = nn.Sequential(
            L.Conv2dReLU(in_channels, c1, 5, padding=pad1),
            L.max_pool(c1, 2, blur=blur_pool),
            L.Conv2dReLU(c1, c2, 5, padding=pad2),
            L.max_pool(c2, 2, blur=blur_pool),
        )
        if head == "gap":
            self.classifier = nn.Sequential(L.global_avg_pool(), nn.Linear(c2, num_classes))
            return
        h1, h2 = hidden
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * size * size, h1), nn.ReLU(inplace=True),
            nn.Linear(h1, h2), nn.ReLU(inplace=True),
            nn.Linear(h2, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
