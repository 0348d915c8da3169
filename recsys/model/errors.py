"""Errors about a trained model (no TensorFlow needed to catch them)."""


class UnusableModelError(RuntimeError):
    """Training ended with a model that must not be published: its embeddings are not
    finite (the training diverged), or it does worse than recommending the most popular
    movies on the validation users (``train.min_recall_vs_popular``)."""
