"""The training losses of a head over a padded batch (weight 0: a padding row). Pure functions
of the logits; train.py's step and the loss-surface analysis read them (train re-exports them)."""
import jax.numpy as jnp
import optax


def weighted_xent(logits, labels, weight):
  """Mean cross-entropy over the real (weight 1) examples of a padded batch."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  return jnp.sum(ce * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def weighted_mse(logits, labels, weight):
  """Mean squared error of a one-output (regression) head over the real examples of a batch."""
  err = logits[..., 0].astype(jnp.float32) - labels.astype(jnp.float32)
  return jnp.sum(err * err * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def task_loss(logits, labels, weight):
  """The training loss of a head: MSE for one output (regression, e.g. STS-B), else
  cross-entropy over the classes. The choice is static (the logits' shape)."""
  if logits.shape[-1] == 1:
    return weighted_mse(logits, labels, weight)
  return weighted_xent(logits, labels, weight)
