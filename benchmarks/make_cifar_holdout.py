"""Split the CIFAR-10 JPEG training set (../shared/data) into train (45,000) and a holdout
"test" (5,000) folder, once, by a fixed seed. Recipes are chosen on validation splits carved
from the 45,000; the holdout is evaluated only after the recipe is fixed (the real test split
is not on this machine on purpose).

    tar xzf ../shared/data/cifar10-jpeg-train.tar.gz -C data/cifar10
    python benchmarks/make_cifar_holdout.py data/cifar10/train data/cifar10-holdout
"""

import random
import sys
from pathlib import Path


def main(src: str, dst: str, holdout_per_class: int = 500, seed: int = 20261128) -> None:
    src_root, dst_root = Path(src), Path(dst)
    rng = random.Random(seed)
    for class_dir in sorted(p for p in src_root.iterdir() if p.is_dir()):
        files = sorted(class_dir.iterdir())
        rng.shuffle(files)
        for split, chosen in (("test", files[:holdout_per_class]), ("train", files[holdout_per_class:])):
            out = dst_root / split / class_dir.name
            out.mkdir(parents=True, exist_ok=True)
            for f in chosen:
                target = out / f.name
                if not target.exists():
                    target.symlink_to(f.resolve())
    print(f"{dst_root}: train {sum(1 for _ in (dst_root / 'train').rglob('*.jpg'))}, "
          f"test {sum(1 for _ in (dst_root / 'test').rglob('*.jpg'))}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
