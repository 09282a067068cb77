"""airbench94 in PyTorch, on our split: is a shortfall the Keras port's or the data's?

A diagnostic, not part of the product: it needs PyTorch, which the project does not depend on.
It follows airbench94 (Keller Jordan, arXiv:2404.00498) as published: frozen 2x2 whitening with a
learnable bias for 3 epochs, conv groups 64/256/256 with dirac init, BatchNorm (eps 1e-12,
momentum 0.6, no scale), GELU, label smoothing 0.2, Nesterov SGD on a summed loss with
BatchNorm biases at 64x the learning rate, warm-up and linear decay, look-ahead every 5 steps,
alternating flip, 2-pixel reflect translation, TTA with flips and 1-pixel shifts. It trains on the
split that ``bench/export_split.py`` writes, so its validation accuracy is comparable with
``metadata.json``'s.

    python3 -m venv .venv-reference && .venv-reference/bin/pip install torch numpy
    .venv/bin/python bench/export_split.py --data ../shared/data/cifar10-train-jpeg.tar.gz
    .venv-reference/bin/python bench/airbench94_reference.py --epochs 10
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
BATCH_SIZE = 1024
LR = 11.5  # per 1024 examples, on a summed loss
MOMENTUM = 0.85
WEIGHT_DECAY = 0.0153
BIAS_SCALE = 64.0
LABEL_SMOOTHING = 0.2
WHITEN_BIAS_EPOCHS = 3
WARMUP, LR_START, LR_END = 0.23, 0.2, 0.07
TRANSLATE = 2
WIDTHS = (64, 256, 256)
BN_MOMENTUM = 0.6  # PyTorch's convention: the weight of the new batch
LOGIT_SCALE = 1 / 9
LOOKAHEAD_EVERY, LOOKAHEAD_BASE, LOOKAHEAD_POW = 5, 0.95, 3
WHITENING_IMAGES = 5000


class BatchNorm(nn.BatchNorm2d):
    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=1e-12, momentum=BN_MOMENTUM)
        self.weight.requires_grad = False


class DiracConv(nn.Conv2d):
    """3x3 'same' conv whose first in_channels filters start as the identity."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__(channels_in, channels_out, 3, padding="same", bias=False)
        nn.init.dirac_(self.weight.data[:channels_in])


def conv_group(channels_in: int, channels_out: int) -> list[nn.Module]:
    return [DiracConv(channels_in, channels_out), nn.MaxPool2d(2), BatchNorm(channels_out), nn.GELU(),
            DiracConv(channels_out, channels_out), BatchNorm(channels_out), nn.GELU()]


def make_net(widths: tuple[int, int, int] = WIDTHS) -> nn.Sequential:
    whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)
    whiten.weight.requires_grad = False
    nn.init.zeros_(whiten.bias)
    head = nn.Linear(widths[2], 10, bias=False)
    return nn.Sequential(whiten, nn.GELU(), *conv_group(24, widths[0]), *conv_group(widths[0], widths[1]),
                         *conv_group(widths[1], widths[2]), nn.MaxPool2d(3), nn.Flatten(), head)


def normalize(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    pixels = torch.tensor(images, device=device).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(CIFAR10_MEAN, device=device).view(1, 3, 1, 1)
    return (pixels - mean) / torch.tensor(CIFAR10_STD, device=device).view(1, 3, 1, 1)


def init_whitening(conv: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4) -> None:
    patches = images.unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, 3 * 2 * 2)
    eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0).reshape(-1, 3, 2, 2)
    scaled = eigenvectors / torch.sqrt(eigenvalues + eps).view(-1, 1, 1, 1)
    conv.weight.data[:] = torch.cat((scaled, -scaled))


def translated(padded: torch.Tensor) -> torch.Tensor:
    """A random crop of each padded image: shifts of -TRANSLATE..TRANSLATE pixels."""
    size = padded.shape[-1] - 2 * TRANSLATE
    shifts = torch.randint(0, 2 * TRANSLATE + 1, (len(padded), 2), device=padded.device)
    out = torch.empty(*padded.shape[:2], size, size, device=padded.device)
    for dy in range(2 * TRANSLATE + 1):
        for dx in range(2 * TRANSLATE + 1):
            chosen = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            out[chosen] = padded[chosen, :, dy:dy + size, dx:dx + size]
    return out


def lr_factor(step: int, total: int) -> float:
    warmup_steps = int(total * WARMUP)
    if step < warmup_steps:
        return LR_START + (1 - LR_START) * step / warmup_steps
    return 1 + (LR_END - 1) * (step - warmup_steps) / (total - warmup_steps)


def make_optimizer(net: nn.Sequential, total_steps: int) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """airbench's Nesterov SGD, BatchNorm biases at BIAS_SCALE x the rate, with its warm-up and decay."""
    # airbench's parametrisation: lr and decay per 1024 examples, for a summed loss.
    kilostep_scale = 1024 * (1 + 1 / (1 - MOMENTUM))
    lr, decay = LR / kilostep_scale, WEIGHT_DECAY * BATCH_SIZE / kilostep_scale
    bn_biases = [p for name, p in net.named_parameters() if p.requires_grad and p.ndim == 1 and name != "0.bias"]
    others = [p for p in net.parameters() if p.requires_grad and all(p is not b for b in bn_biases)]
    optimizer = torch.optim.SGD([dict(params=bn_biases, lr=lr * BIAS_SCALE, weight_decay=decay / (lr * BIAS_SCALE)),
                                 dict(params=others, lr=lr, weight_decay=decay / lr)],
                                momentum=MOMENTUM, nesterov=True)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps))


class Lookahead:
    """airbench's weight averaging: every LOOKAHEAD_EVERY steps the weights (BatchNorm statistics too) become
    an average kept across steps, free early on and strong at the end; ``finish`` leaves the average."""

    def __init__(self, net: nn.Module, total_steps: int) -> None:
        self.net = net
        self.decays = LOOKAHEAD_BASE**LOOKAHEAD_EVERY * (torch.arange(total_steps + 1) / total_steps) ** LOOKAHEAD_POW
        self.average = {k: v.clone() for k, v in net.state_dict().items()}

    def step(self, step: int) -> None:
        if step % LOOKAHEAD_EVERY == 0:
            self._pull(self.decays[step].item())

    def finish(self) -> None:
        self._pull(1.0)

    def _pull(self, decay: float) -> None:
        for averaged, current in zip(self.average.values(), self.net.state_dict().values(), strict=True):
            if current.dtype == torch.float32:
                averaged.lerp_(current, 1 - decay)
                current.copy_(averaged)


def descend(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
            lookahead: Lookahead, step: int) -> int:
    """One optimiser step on ``loss``, with the schedule and the averaging moved on; the new step count."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    lookahead.step(step + 1)
    return step + 1


def evaluate(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, tta: bool, autocast: bool) -> float:
    def mirrored(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * net(x).float() + 0.5 * net(x.flip(-1)).float()

    net.eval()
    logits = []
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        for batch in images.split(1000):
            batch = batch.contiguous(memory_format=torch.channels_last)
            if not tta:
                logits.append(net(batch).float())
                continue
            padded = F.pad(batch, (1,) * 4, mode="reflect")
            shifted = 0.5 * mirrored(padded[:, :, :32, :32]) + 0.5 * mirrored(padded[:, :, 2:, 2:])
            logits.append(0.5 * mirrored(batch) + 0.5 * shifted)
    net.train()
    return (torch.cat(logits).argmax(1) == labels).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description="airbench94 (PyTorch) on the exported split")
    parser.add_argument("--split", type=Path, default=Path("/tmp/cifar10-split.npz"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                        help="bf16: autocast, as the Keras recipe trains; fp32: full precision")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    autocast = args.precision == "bf16"

    split = np.load(args.split)
    train_images, train_labels = normalize(split["train_images"]), torch.tensor(split["train_labels"]).long()
    val_images, val_labels = normalize(split["val_images"]), torch.tensor(split["val_labels"]).long()

    net = make_net().to(memory_format=torch.channels_last)
    init_whitening(net[0], train_images[torch.randperm(len(train_images))[:WHITENING_IMAGES]])

    steps_per_epoch = len(train_images) // BATCH_SIZE  # drop_last, as airbench
    total_steps = steps_per_epoch * args.epochs
    optimizer, scheduler = make_optimizer(net, total_steps)
    lookahead = Lookahead(net, total_steps)
    padded = F.pad(train_images, (TRANSLATE,) * 4, mode="reflect")
    first_flip = torch.rand(len(train_images)) < 0.5
    step, started = 0, time.perf_counter()
    for epoch in range(args.epochs):
        net[0].bias.requires_grad = epoch < WHITEN_BIAS_EPOCHS
        images = translated(padded)
        flip = first_flip ^ bool(epoch % 2)  # alternating: each image is mirrored every other epoch
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        order = torch.randperm(len(images))
        for i in range(steps_per_epoch):
            batch = order[i * BATCH_SIZE:(i + 1) * BATCH_SIZE]
            with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                logits = net(images[batch].contiguous(memory_format=torch.channels_last)).float() * LOGIT_SCALE
            loss = F.cross_entropy(logits, train_labels[batch], label_smoothing=LABEL_SMOOTHING, reduction="sum")
            step = descend(loss, optimizer, scheduler, lookahead, step)
        if epoch == args.epochs - 1:
            lookahead.finish()
        val_accuracy = evaluate(net, val_images, val_labels, False, autocast)
        print(f"epoch {epoch + 1}: val {val_accuracy:.4f}, {time.perf_counter() - started:.0f} s", flush=True)
    print(json.dumps({"epochs": args.epochs, "precision": args.precision, "seed": args.seed,
                      "val_accuracy": round(val_accuracy, 4),
                      "val_accuracy_tta": round(evaluate(net, val_images, val_labels, True, autocast), 4),
                      "train_seconds": round(time.perf_counter() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()
