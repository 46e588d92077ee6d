"""Tasks: a model plus its losses, visualisations and pretrained weights, in the shape the shared trainer
(`handobj_jax.train.trainer.Task`) drives. Tasks import models and losses, never jobs or input pipelines."""
