"""Print every registered attention block: parameters at a channel count and the output shape."""

from __future__ import annotations

import argparse

import torch

import visattn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--size", type=int, default=14, help="feature-map height and width")
    args = parser.parse_args()
    x = torch.randn(2, args.channels, args.size, args.size)
    print(f"{'block':<14} {'params':>10}  output shape (input {tuple(x.shape)})")
    for name in visattn.list_attention():
        block = visattn.build_attention(name, args.channels).eval()
        with torch.no_grad():
            shape = tuple(block(x).shape)
        print(f"{name:<14} {sum(p.numel() for p in block.parameters()):>10,}  {shape}")


if __name__ == "__main__":
    main()
