"""The models pit-sampler ships: a compact masked-diffusion transformer (:mod:`.transformer`), the
scikit-learn 8x8 digits data, metrics and training (:mod:`.digits`, :mod:`.train_digits`), the
shipped weights (``weights/``) and the command-line demo (:mod:`.demo`). The sampler library
(``pit_sampler`` itself) does not import this subpackage."""

from .transformer import PRETRAINED, WEIGHTS_DIR, MaskedDiffusionTransformer, load_model, load_pretrained
from .transformer import masked_diffusion_loss, save_model, weights_metadata

__all__ = [
    "MaskedDiffusionTransformer",
    "masked_diffusion_loss",
    "save_model",
    "load_model",
    "load_pretrained",
    "weights_metadata",
    "PRETRAINED",
    "WEIGHTS_DIR",
]
