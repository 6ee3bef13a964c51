"""Settings shared by the training tests: a tiny network and a few fast steps."""

#: A tiny SegResNet (no dropout, so runs are reproducible) and patches small enough for 2 cores.
TINY = {
    "init_filters": 8,
    "blocks_down": [1, 1, 1, 1],
    "blocks_up": [1, 1, 1],
    "dropout_prob": None,
}
FAST = [
    "epochs=1",
    "steps_per_epoch=1",
    "batch_size=1",
    "samples_per_case=2",
    "patch_size=[16,16,16]",
    "val_roi_size=[64,64,40]",
    "warmup_epochs=0",
    "num_workers=0",
    "augment=light",
    "val_every=1",
]
