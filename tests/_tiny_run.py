"""The smallest training run the CLI makes: 32 px, ngf 4, three scales, two steps of batch 2 on
a few procedural synthetic pairs; a few seconds on a CPU. Appended to a `dynast-train` command
line (the last value of a flag wins)."""

TINY_RUN = [
    "--model.image_size", "32", "--data.image_size", "32", "--model.ngf", "4",
    "--model.num_scales", "3", "--model.ndf", "8", "--model.disc_layers", "3",
    "--data.train_length", "8", "--data.test_length", "4", "--data.textures", "procedural",
    "--train.eval_pairs", "4", "--train.eval_batch_size", "4", "--train.sample_rows", "2",
    "--train.log_every", "2", "--train.sample_every", "100", "--train.checkpoint_every", "100",
    "--train.batch_size", "2", "--max-steps", "2",
]  # fmt: skip
