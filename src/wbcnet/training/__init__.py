"""The training tasks: the classifier (classifier.py, `wbcnet train`), self-supervised pretraining,
distillation, the finder's training, and hyperparameter search (tune.py), with their configs.
"""
