"""``visattn blocks``: every registered attention block, its parameters and output shape."""

from __future__ import annotations

from collections.abc import Sequence

from visattn.attention import build_attention, list_attention
from visattn.cli.main import new_parser
from visattn.errors import ConfigError


def main(argv: Sequence[str] | None = None, *, prog: str = "visattn blocks") -> int:
    parser = new_parser(prog, "Print every registered attention block: parameters at a channel count and the "
                              "output shape.", "example:\n  {prog} --channels 64 --size 8\n")
    parser.add_argument("--channels", type=int, default=256, help="(default: 256)")
    parser.add_argument("--size", type=int, default=14, help="feature-map height and width (default: 14)")
    args = parser.parse_args(argv)
    if args.channels < 1 or args.size < 1:
        raise ConfigError(f"--channels and --size must be >= 1, got {args.channels} and {args.size}")
    import torch  # after the flags: --help imports no torch

    x = torch.randn(2, args.channels, args.size, args.size)
    print(f"{'block':<14} {'params':>10}  output shape (input {tuple(x.shape)})")
    for name in list_attention():
        block = build_attention(name, args.channels).eval()
        with torch.no_grad():
            shape = tuple(block(x).shape)
        print(f"{name:<14} {sum(p.numel() for p in block.parameters()):>10,}  {shape}")
    return 0
