"""What every tiny T5 / mT5 oracle fixture does to its HF model before saving it (test_t5, test_decode, test_lora).

HF initialises T5's layer-norm weights to 1, so with them as they are a checkpoint that maps one norm onto
another (self / cross / mlp / final) gives the same logits as the right mapping: no oracle could catch it.
Every other T5 parameter (embeddings, projections, relative-position biases) is drawn at random already.
"""
import torch


def perturb_norms(model, seed: int = 0, scale: float = 0.5):
  """In place: each 1-D parameter (T5 has no biases: these are its RMSNorm weights) += scale * N(0, 1).

  Draws from its own generator, so a fixture's other random draws do not shift. Returns the model.
  """
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    vectors = [(n, p) for n, p in model.named_parameters() if p.ndim == 1]
    assert vectors and all('layer_norm' in n for n, _ in vectors), [n for n, _ in vectors]
    for _, p in vectors:
      p.add_(scale * torch.randn(p.shape, generator=g))
  return model
