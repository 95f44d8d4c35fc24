"""The machinery of one run, shared by ``ltsam train`` and ``ltsam finetune``: the run folder's file names,
the runtime (device, threads, seeding, precision, DDP), epoch records and their sinks, checkpoints and the
epoch loop. Each module has one job; the trainer and the stage runner keep only what is their own."""
