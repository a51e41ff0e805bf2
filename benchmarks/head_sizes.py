"""Head sizes per method: trainable parameters of the backbone and of everything else (projectors,
predictors, prototypes, IConE's table), and the frozen copies (EMA teachers), for the backbones of
the speed tables. Prints a markdown table.

    python benchmarks/head_sizes.py [--instances 1000]
"""

from __future__ import annotations

import argparse

from icone.build import build_method, resolve_for_samples
from icone.config import build_config
from icone.methods import registry

BACKBONES = [("smallcnn", 16, (1, 28, 28)), ("resnet18", 32, (1, 28, 28)), ("resnet18", 32, (1, 28, 28, 28))]


def sizes(method: str, backbone: str, width: int, shape: tuple[int, ...], instances: int) -> tuple[int, int, int]:
    config = build_config(
        None, [f"method={method}", f"model.backbone={backbone}", f"model.width={width}", "data.source=digits"]
    )
    config = resolve_for_samples(config, shape, instances)
    model = build_method(config, instances)
    encoder = {id(p) for p in model.backbone.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    heads = sum(p.numel() for p in trainable if id(p) not in encoder)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return sum(p.numel() for p in model.backbone.parameters()), heads, frozen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1000)
    args = parser.parse_args()
    columns = [f"{b} w{w} {len(s) - 1}D" for b, w, s in BACKBONES]
    print("| method | " + " | ".join(f"{c}: heads (frozen)" for c in columns) + " |")
    print("|---|" + "---|" * len(columns))
    floor = None
    for method in registry():
        cells = []
        for backbone, width, shape in BACKBONES:
            encoder, heads, frozen = sizes(method, backbone, width, shape, args.instances)
            cells.append(f"{heads / 1e6:.2f} M ({frozen / 1e6:.2f} M)")
            floor = floor or {}
            floor[(backbone, width, len(shape))] = encoder
        print(f"| {method} | " + " | ".join(cells) + " |")
    print()
    print(
        "Backbones alone: "
        + ", ".join(f"{c} {floor[(b, w, len(s))] / 1e6:.2f} M" for c, (b, w, s) in zip(columns, BACKBONES))
    )


if __name__ == "__main__":
    main()
