"""Named training recipes: plain values, chosen on validation splits carved from training data.

``squeezenet train --recipe NAME`` starts from one of these and any flag overrides a value;
without ``--recipe`` the recipe named after ``--dataset`` is used (``shapes`` when nothing is
given). A recipe with no other flag reproduces its row of the README's results table. The
evidence for each value is in benchmarks/RESULTS.md, under the anchor beside it.
"""

RECIPES: dict[str, dict] = {
    # The default job: learns a synthetic set visibly in about two minutes on 2 CPU cores.
    "shapes": dict(
        dataset="shapes", arch="squeezenet1_1", image_size=32, small_input=True, batch_norm=True,
        bypass="simple", final_relu=False, epochs=7, batch_size=128, optimizer="sgd", lr=0.1,
        weight_decay=5e-4, schedule="onecycle", warmup_epochs=1, label_smoothing=0.0, augment="flip",
    ),
    # The outline's own configuration: noise images, Adam at 1e-3, batch 32, 5 epochs, faithful net.
    "noise": dict(
        dataset="noise", arch="squeezenet1_1", image_size=224, epochs=5, batch_size=32,
        optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant", warmup_epochs=0,
        augment="none",
    ),
    # 14.5 minutes of training on all 60,000 images (inside a 15-minute budget on 2 CPU cores);
    # --val-fraction 0.1 carves a validation split again. RESULTS.md#fashion-mnist-recipe
    "fashion-mnist": dict(
        dataset="fashion-mnist", arch="squeezenet1_1", image_size=28, small_input=True,
        batch_norm=True, bypass="simple", final_relu=False, batch_size=256, lr=0.2, weight_decay=5e-4,
        schedule="onecycle", warmup_epochs=1, epochs=12, time_budget=870.0, val_fraction=0.0,
        label_smoothing=0.1,
        dropout=0.0,  # no gain, and its mask costs 8% of a CPU step: RESULTS.md#fashion-mnist-dropout
        augment="crop", crop_pad=1, tta=True, tta_shift=1,  # 1 px shifts: RESULTS.md#fashion-mnist-crop1
        optimizer="muon", muon_lr=0.05,  # Muon on the Fire filters: RESULTS.md#fashion-mnist-muon
    ),
    # 44.5 minutes of training on every training image (inside a 45-minute
    # budget); --val-fraction 0.1111 carves a validation split again. RESULTS.md#cifar10-recipe
    "cifar10": dict(
        dataset="cifar10", arch="squeezenet1_1", image_size=32, small_input=True, batch_norm=True,
        bypass="simple", final_relu=False, batch_size=256, lr=0.2, weight_decay=5e-4,
        schedule="onecycle", warmup_epochs=2, epochs=45, time_budget=2670.0, val_fraction=0.0,
        label_smoothing=0.1, augment="crop", tta=True,
        dropout=0.0,  # within noise, and 8% of a CPU step: RESULTS.md#cifar10-dropout
        crop_pad=2,  # easier crops for a capacity-bound net: RESULTS.md#cifar10-crop-pad
        pool_after="conv1,fire3,fire7",  # downsample late (the paper's strategy 3): RESULTS.md#cifar10-late-pool
        squeeze_ratio=0.25,  # twice v1.1's squeeze widths: RESULTS.md#cifar10-squeeze-ratio
        erase=0.25, tta_shift=2,  # random erasing, with 2 px shifted views at eval: RESULTS.md#cifar10-erasing
        optimizer="muon", muon_lr=0.05,  # Muon on the Fire filters: RESULTS.md#cifar10-muon
    ),
    # Photos of one's own (the ImageNet layout, any size and aspect) from scratch, the default for
    # --dataset folder: 128 px crops of images stored at 146 px, 14.5 minutes of training on all of
    # them. Chosen on Imagewoof's train/ (RESULTS.md#photos-recipe).
    "folder": dict(
        dataset="folder", arch="squeezenet1_1", image_size=128, crop_pct=0.875, batch_norm=True,
        bypass="simple", final_relu=False, dropout=0.0, batch_size=128, lr=0.1, weight_decay=5e-4,
        schedule="onecycle", warmup_epochs=1, epochs=20, time_budget=870.0, val_fraction=0.0,
        label_smoothing=0.1, augment="rrc", rrc_scale=0.25, tta=True,
        optimizer="muon", muon_lr=0.1,  # Muon on the Fire filters: RESULTS.md#photos-muon
        squeeze_ratio=0.25,  # twice v1.1's squeeze widths, at about the same speed: RESULTS.md#photos-squeeze-ratio
    ),
    # Fine-tuning torchvision's ImageNet weights (--weights torchvision): the faithful v1.1 they
    # fit, at their 224 px of 256, the classifier replaced.
    "finetune": dict(
        dataset="folder", arch="squeezenet1_1", image_size=224, crop_pct=0.875, batch_norm=False,
        bypass="none", final_relu=True, dropout=0.5, batch_size=64, optimizer="sgd", lr=0.01,
        weight_decay=1e-4, schedule="cosine", warmup_epochs=1, epochs=10, label_smoothing=0.1,
        augment="rrc", rrc_scale=0.25, tta=True,
    ),
}
