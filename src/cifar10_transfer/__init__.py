"""CIFAR-10 transfer learning with Keras 3: data, models, training, evaluation and plots."""

__version__ = "0.1.0"
