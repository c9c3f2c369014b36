"""compressor's built-in plugins, installed under the import name ``compressor_plugins``.

The folder is ``plugins/`` in the repository; ``pyproject.toml`` maps it to the package
``compressor_plugins`` (setuptools ``package-dir``) so that it never collides with another
top-level ``plugins`` module. Each module listed in :data:`PLUGINS` is an ordinary plugin that
imports only :mod:`compressor.plugin_api`, exactly as a third-party package would; the core
loads them by these names and never imports them itself. Families:

* ``optim`` — sgd/adamw, schedules, SAM, CrAM;      * ``prune`` — magnitude, GMP, one-shot;
* ``nm`` — N:M operator, gradual N:M, ``inspect``;  * ``blocks`` — blocks, unification, ADMM;
* ``channel`` — channel (Torch-Pruning), heads, neurons; * ``evaluate`` — one-shot, realised;
* ``export`` — state_dict, pruned, semi-structured, hf, compressed-tensors,
  sparse, onnx (and the ``deployment`` evaluator); * ``zoo`` — models, datasets, tasks,
  and torchvision's (``vision``: imported only when used);
* ``posttrain`` — Wanda, SparseGPT, quant/GPTQ, the quantized export (data-aware one-shot);
* ``launch`` — where a study's trials run: ``local`` (``--jobs N``), ``submitit`` (Slurm).
* ``log`` — the loggers of a recipe's ``log:`` (TensorBoard, CSV, MLflow: imported when used).
"""

PLUGINS: tuple[str, ...] = (
    "compressor_plugins.optim.torch_optimizers",
    "compressor_plugins.optim.schedules",
    "compressor_plugins.prune.magnitude",
    "compressor_plugins.prune.gmp",
    "compressor_plugins.nm.operator",
    "compressor_plugins.nm.gradual",
    "compressor_plugins.nm.check",
    "compressor_plugins.export.semi_structured",
    "compressor_plugins.blocks.view",
    "compressor_plugins.blocks.unify",
    "compressor_plugins.blocks.admm",
    "compressor_plugins.zoo.models",
    "compressor_plugins.zoo.datasets",
    "compressor_plugins.zoo.tasks",
    "compressor_plugins.zoo.files",
    "compressor_plugins.zoo.hf",
    "compressor_plugins.export.state_dict",
    "compressor_plugins.optim.sam",
    "compressor_plugins.optim.cram",
    "compressor_plugins.evaluate.oneshot",
    "compressor_plugins.zoo.resnet",
    "compressor_plugins.channel.operator",
    "compressor_plugins.channel.transformer",
    "compressor_plugins.export.pruned",
    "compressor_plugins.export.onnx_export",
    "compressor_plugins.export.deployment",
    "compressor_plugins.evaluate.realised",
    "compressor_plugins.zoo.vision",
    "compressor_plugins.posttrain.wanda",
    "compressor_plugins.posttrain.sparsegpt",
    "compressor_plugins.posttrain.quant",
    "compressor_plugins.posttrain.export",
    "compressor_plugins.export.hf",
    "compressor_plugins.export.compressed_tensors",
    "compressor_plugins.export.sparse",
    "compressor_plugins.launch.local",
    "compressor_plugins.launch.submitit",
    "compressor_plugins.log.tensorboard",
    "compressor_plugins.log.csv",
    "compressor_plugins.log.mlflow",
)
"""Built-in plugin modules, in registration order."""
