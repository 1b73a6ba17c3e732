"""Classic recommenders, the only home of these algorithms: ``model=popularity|random|item_knn|user_knn|ease``
and the evaluate stage's baselines.

Each module holds one algorithm, its scipy form where it has one, and its model (fit in closed
form, scored in TensorFlow): ``popularity``, ``random``, ``knn`` (item_knn / user_knn: one cosine
kNN along an axis), ``ease``; ``base`` has what they share and ``baselines`` fits the configured
baselines.
"""

from recpipe.models.classic import ease, knn, popularity, random  # noqa: F401  (registration)
from recpipe.models.classic.base import ClosedFormModel
from recpipe.models.classic.baselines import CLASSIC_MODELS, fit_baselines, fit_classic

__all__ = ["CLASSIC_MODELS", "ClosedFormModel", "fit_baselines", "fit_classic"]
