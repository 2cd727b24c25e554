"""Training: the options (`config`), the recipe from the data (`recipe`), the learning rate and
crop size per step (`schedule`), the optimiser (`optim`), the time budget (`budget`), a run's
set-up (`run`), its loop (`loop`) and what it leaves (`records`), on one process or under torchrun
(`distributed`). Nothing is imported here, so that `resnet.TrainConfig` loads no torch."""
