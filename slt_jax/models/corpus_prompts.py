"""Per-corpus prompts: one model serving several corpora (sign / spoken languages) of a data.mixture.

Each corpus may have its own model.prompt / model.tgt_lang (default_config.mixture_corpus), so the models hold
a table of token ids per corpus (contract.corpus_names order) and each row takes its corpus's row of it
(batch['corpus'] i32[B]). A model whose corpora share one prompt keeps its plain tuple of ids (no table: the
same params and graph as a single-corpus model).

  table = PromptTable.of([(1, 5, 6), (1, 7)], 'model.prompt')   # None when every corpus has the same ids
  ids, mask = table.take(batch['corpus'])                        # i32[B, 3], bool[B, 3], left-padded
"""
import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class PromptTable:
  """Token ids per corpus (rows[c]: corpus c's), padded to one width; hashable (a static module attribute).

  what: the config field the ids come from (for the error of a batch without a corpus).
  """
  rows: tuple  # tuple[tuple[int, ...], ...]
  what: str

  @classmethod
  def of(cls, rows: Sequence[Sequence[int]], what: str) -> Optional['PromptTable']:
    """The table of rows, or None when every corpus has the same ids (the model keeps rows[0])."""
    rows = tuple(tuple(int(i) for i in r) for r in rows)
    return cls(rows, what) if len(set(rows)) > 1 else None

  @property
  def width(self) -> int:
    return max(len(r) for r in self.rows)

  def padded(self, left: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """-> (ids i32[NC, W], mask bool[NC, W]): each row padded (id 0, mask False) on the left or the right."""
    w = self.width
    ids, mask = np.zeros((len(self.rows), w), np.int32), np.zeros((len(self.rows), w), bool)
    for c, r in enumerate(self.rows):
      span = slice(w - len(r), w) if left else slice(0, len(r))
      ids[c, span], mask[c, span] = r, True
    return ids, mask

  def take(self, corpus: Optional[jax.Array], left: bool = True) -> tuple[jax.Array, jax.Array]:
    """corpus i32[B] -> (ids i32[B, W], mask bool[B, W]) of the rows' corpora (padded as `padded`)."""
    if corpus is None:
      raise ValueError(f'{self.what} differs between the corpora ({len(self.rows)} of them): each row needs its '
                       "corpus, batch['corpus'] i32[B] (contract.Batch; the input pipeline adds it, decoding "
                       'takes corpus=, translate --corpus=NAME)')
    ids, mask = self.padded(left)
    corpus = jnp.asarray(corpus, jnp.int32)
    return jnp.asarray(ids)[corpus], jnp.asarray(mask)[corpus]
