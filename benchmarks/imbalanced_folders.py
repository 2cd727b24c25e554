"""The imbalanced and few-a-class folders the class-balance measurements train on, made from the
shared data sets as folders of symbolic links (nothing is copied), so anyone can rerun them:

    python benchmarks/imbalanced_folders.py OUT [--datasets ../shared/datasets]

OUT/dogs-cats-1to20/{cats,dogs}: all 4,000 dogs of petimages180 and every 20th of its cats (200);
OUT/dogs-cats-1to5/{cats,dogs}:  all 4,000 dogs and every 5th cat (800);
OUT/imagenette-longtail/<class>: imagenette-3k's classes in sorted order, class k keeping
                                 round(n_k * 0.05 ** (k / 9)) of its photos but the last 15
                                 (285 down to 14: a 20:1 long tail, as Cao et al. 2019 make
                                 CIFAR-10-LT);
OUT/imagenette-longtail-val/<class>: the last 15 photos of each class: a balanced held-out set;
OUT/dogs-cats-N/{cats,dogs}:     the first N cats and N dogs of petimages180, N = 10, 30, 100, 300;
OUT/imagenette-N/<class>:        the first N photos of each imagenette-3k class, N = 10, 30, 100,
                                 and `all`: all but its last 50 (236 to 250);
OUT/imagenette-val50/<class>:    the last 50 photos of each class, which no imagenette-N holds.
The balanced held-out photos for dogs vs. cats are catsdogs/train (1,000 of each, other indices
of the same Kaggle set), which no folder here holds."""

from __future__ import annotations

import argparse
from pathlib import Path

IMAGES = (".jpg", ".jpeg", ".png")


def images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGES)


def link_all(files: list[Path], folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        target = folder / f.name
        if not target.exists():
            target.symlink_to(f.resolve())
    return len(files)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--datasets", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    a = p.parse_args()
    pets = a.datasets / "petimages180"
    for every, name in ((20, "dogs-cats-1to20"), (5, "dogs-cats-1to5")):
        dogs = link_all(images(pets / "dogs"), a.out / name / "dogs")
        cats = link_all(images(pets / "cats")[::every], a.out / name / "cats")
        print(f"{a.out / name}: {dogs} dogs, {cats} cats")
    nette = a.datasets / "imagenette-3k"
    classes = sorted(d for d in nette.iterdir() if d.is_dir())
    for k, folder in enumerate(classes):
        files = images(folder)
        pool, held_out = files[:-15], files[-15:]
        keep = max(1, round(len(pool) * 0.05 ** (k / (len(classes) - 1))))
        link_all(pool[:keep], a.out / "imagenette-longtail" / folder.name)
        link_all(held_out, a.out / "imagenette-longtail-val" / folder.name)
        print(f"{folder.name}: {keep} of {len(pool)}")
    few_a_class(pets, nette, classes, a.out)


def few_a_class(pets: Path, nette: Path, classes: list[Path], out: Path) -> None:
    """The few-photos-a-class folders (a companion measurement: what training from scratch reaches
    with 10 to 300 photos a class)."""
    for n in (10, 30, 100, 300):
        for kind in ("cats", "dogs"):
            link_all(images(pets / kind)[:n], out / f"dogs-cats-{n}" / kind)
    for folder in classes:
        files = images(folder)
        pool = files[:-50]
        link_all(files[-50:], out / "imagenette-val50" / folder.name)
        for n in (10, 30, 100, None):
            link_all(pool[:n], out / f"imagenette-{n or 'all'}" / folder.name)
    print(f"{out}: dogs-cats-{{10,30,100,300}}, imagenette-{{10,30,100,all}}, imagenette-val50")


if __name__ == "__main__":
    main()
