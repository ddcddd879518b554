"""The outline's own training loop (../shared/seed/), reproduced as written, for a baseline.

Its network stops after fire5 (plus one "final" Fire and conv10); its data set makes a fresh
3x224x224 noise image per __getitem__; batch 32, Adam 1e-3. Only the timing is used.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.utils.data import DataLoader, Dataset


class FireModule(nn.Module):
    def __init__(self, in_channels, squeeze_channels, expand1x1_channels, expand3x3_channels):
        super().__init__()
        self.squeeze = nn.Conv2d(in_channels, squeeze_channels, kernel_size=1)
        self.expand1x1 = nn.Conv2d(squeeze_channels, expand1x1_channels, kernel_size=1)
        self.expand3x3 = nn.Conv2d(squeeze_channels, expand3x3_channels, kernel_size=3, padding=1)

    def forward(self, x):
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.expand1x1(x)), F.relu(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, kernel_size=7, stride=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True))
        self.features.add_module("fire2", FireModule(96, 16, 64, 64))
        self.features.add_module("fire3", FireModule(128, 16, 64, 64))
        self.features.add_module("fire4", FireModule(128, 32, 128, 128))
        self.features.add_module("maxpool4", nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True))
        self.features.add_module("fire5", FireModule(256, 32, 128, 128))
        self.features.add_module("final_fire", FireModule(256, 64, 256, 256))
        self.final_conv = nn.Conv2d(512, self.num_classes, kernel_size=1)
        self.classifier = nn.Sequential(nn.Dropout(p=0.5), self.final_conv, nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x):
        return self.classifier(self.features(x)).view(x.size(0), self.num_classes)


class SyntheticDataset(Dataset):
    def __init__(self, num_samples, num_classes):
        self.num_samples, self.num_classes = num_samples, num_classes

    def __len__(self):
        return self.num_samples

    def __getitem__(self, idx):
        return torch.randn(3, 224, 224), torch.randint(0, self.num_classes, (1,))


def run(batches: int = 6, warmup: int = 1) -> float:
    """Images per second of the outline's loop over ``batches`` timed batches."""
    import time

    model = SqueezeNet()
    loader = DataLoader(SyntheticDataset(1000, 10), batch_size=32, shuffle=True)
    optimizer = optim.Adam(model.parameters(), lr=0.001)
    criterion = nn.CrossEntropyLoss()
    seen, t0 = 0, None
    for i, (images, labels) in enumerate(loader):
        if i == warmup:
            t0, seen = time.perf_counter(), 0
        optimizer.zero_grad()
        outputs = model(images)
        loss = criterion(outputs, labels.squeeze())
        loss.backward()
        optimizer.step()
        seen += len(images)
        if i == warmup + batches - 1:
            break
    return seen / (time.perf_counter() - t0)
